"""File-level checks: safetensors header validation, sharded indexes, the restricted `.pt` tensor reader."""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from encore.errors import CheckpointError
from encore.pipeline import checkpoint as ckpt
from encore.pipeline.tensor_archive import read_torch_tensor


def _raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def _valid(path: Path) -> Path:
    save_file(
        {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)},
        str(path),
    )
    return path


def test_valid_file_reads_back(tmp_path):
    path = _valid(tmp_path / "ok.safetensors")
    infos, _ = ckpt.read_safetensors_header(path)
    assert infos["a"].shape == (2, 3) and infos["b"].dtype == torch.bfloat16
    tensors = ckpt.read_safetensors(path)
    assert torch.equal(tensors["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


CORRUPTIONS = {
    "zero bytes": lambda p: p.write_bytes(b""),
    "truncated mid-tensor": lambda p: p.write_bytes(_valid(p).read_bytes()[:-5]),
    "trailing bytes": lambda p: p.write_bytes(_valid(p).read_bytes() + b"xx"),
    "header length past end": lambda p: _raw_safetensors(p, {}, length=4096),
    "header length 2^63": lambda p: _raw_safetensors(p, b"{}", length=2**63),
    "header 101 MB": lambda p: _raw_safetensors(p, b"{}", length=101 * 1024 * 1024),
    "header not an object": lambda p: _raw_safetensors(p, b"[1, 2]"),
    "invalid UTF-8": lambda p: _raw_safetensors(p, b'{"\xff": 1}'),
    "invalid JSON": lambda p: _raw_safetensors(p, b"{not json"),
    "unknown dtype": lambda p: _raw_safetensors(
        p, {"t": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"
    ),
    "negative dim": lambda p: _raw_safetensors(
        p, {"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"
    ),
    "offsets vs shape": lambda p: _raw_safetensors(
        p, {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "overlapping tensors": lambda p: _raw_safetensors(
        p,
        {
            "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    ),
    "pt renamed to safetensors": lambda p: torch.save(torch.ones(3), p),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_safetensors_is_refused_quickly(tmp_path, kind):
    path = tmp_path / "model.safetensors"
    CORRUPTIONS[kind](path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        ckpt.read_safetensors(path)
    assert time.perf_counter() - start < 1.0
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_entry_errors_name_the_tensor(tmp_path):
    path = _raw_safetensors(
        tmp_path / "x.safetensors",
        {"enc.w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
        b"\0" * 8,
    )
    with pytest.raises(CheckpointError) as info:
        ckpt.read_safetensors_header(path)
    assert info.value.tensor == "enc.w"


def _index(folder: Path, weight_map: dict[str, str]) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_index_reads_all_shards(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    _index(tmp_path, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    index = ckpt.scan_weights(tmp_path, "model")
    assert index.path_of("b").name == "model-00002-of-00002.safetensors"
    assert torch.equal(index.read_all()["b"], torch.ones(3))


@pytest.mark.parametrize(
    ("weight_map", "message"),
    [
        ({"a": "../escape.safetensors"}, "not a plain file name"),
        ({"a": "missing.safetensors"}, "shard listed in the index is missing"),
        ({"a": "s1.safetensors", "zz": "s1.safetensors"}, "tensor listed in the index is missing"),
        ({"b": "s1.safetensors"}, "not listed for this shard"),
    ],
)
def test_broken_sharded_index_is_refused(tmp_path, weight_map, message):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    _index(tmp_path, weight_map)
    with pytest.raises(CheckpointError, match=message):
        ckpt.scan_weights(tmp_path, "model")


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(CheckpointError) as info:
        ckpt.scan_weights(tmp_path, "model")
    assert info.value.path == str(tmp_path / "model.safetensors")


def test_write_safetensors_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    ckpt.write_safetensors(path, {"x": torch.ones(2, 2).t()})
    assert torch.equal(ckpt.read_safetensors(path)["x"], torch.ones(2, 2))
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]


# --------------------------------------------------------------------------- .pt reader


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(1, 64, 7),
        lambda: torch.randn(1, 7, 64).transpose(1, 2),
        lambda: torch.randn(3, 64, 7, dtype=torch.bfloat16)[1:2],
        lambda: torch.randn(1, 64, 7, dtype=torch.float16),
    ],
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_read_torch_tensor_matches_torch_save(tmp_path, make, protocol):
    t = make()
    torch.save(t, tmp_path / "t.pt", pickle_protocol=protocol)
    got = read_torch_tensor(tmp_path / "t.pt")
    assert got.dtype == t.dtype and got.is_contiguous()
    assert torch.equal(got, t)


class _Payload:
    """Unpickling this object creates `marker` (via builtins.open): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_payload_would_run_if_unpickled(tmp_path):
    # Guards the test below: the payload really executes under a normal unpickler.
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("container", ["torch_zip", "raw"])
def test_malicious_silence_file_is_refused_without_running_code(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "silence_latent.pt"
    if container == "torch_zip":
        torch.save(_Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError) as info:
        ckpt.read_silence_file(path)
    assert info.value.path == str(path)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"silence": torch.zeros(1, 64, 3)}, [torch.zeros(1)], 3.5])
def test_non_tensor_archives_are_refused(tmp_path, obj):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="x.pt"):
        read_torch_tensor(tmp_path / "x.pt")


def test_int_tensor_archive_is_refused(tmp_path):
    torch.save(torch.zeros(1, 64, 3, dtype=torch.int64), tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not allowed"):
        read_torch_tensor(tmp_path / "x.pt")


@pytest.mark.parametrize("shape", [(64, 5), (1, 32, 5), (2, 64, 5), (1, 5, 64)])
def test_wrong_silence_shape_names_file_and_tensor(tmp_path, shape):
    path = tmp_path / "silence_latent.pt"
    torch.save(torch.zeros(shape), path)
    with pytest.raises(CheckpointError) as info:
        ckpt.read_silence_file(path)
    assert info.value.path == str(path) and info.value.tensor == "silence_latent"


def test_convert_silence_latent_round_trip(tmp_path):
    t = torch.randn(1, 64, 11)
    torch.save(t, tmp_path / "silence_latent.pt")
    out = ckpt.convert_silence_latent(tmp_path / "silence_latent.pt", tmp_path / "silence_latent.safetensors")
    assert torch.equal(ckpt.read_safetensors(out)["silence_latent"], t)
    assert torch.equal(ckpt.read_silence_file(out), t[0].T)


def test_silence_safetensors_with_wrong_key_is_refused(tmp_path):
    save_file({"other": torch.zeros(1, 64, 3)}, str(tmp_path / "silence_latent.safetensors"))
    with pytest.raises(CheckpointError, match="exactly one tensor"):
        ckpt.read_silence_file(tmp_path / "silence_latent.safetensors")
