"""Validated checkpoint file I/O: safetensors (header checked by our own parser first), JSON configs,
and a restricted reader for the official `silence_latent.pt` that never runs code from the file.

Every failure raises `encore.errors.CheckpointError(path, message, tensor)`. Nothing is assigned to a
module until the whole state dict has been checked (RELIABILITY §3.5, F5).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from encore.errors import CheckpointError
from encore.pipeline.convert import silence_from_official, silence_to_official
from encore.pipeline.tensor_archive import read_torch_tensor

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own DoS guard; we enforce it before the library sees the file."""
MAX_JSON_BYTES = 16 * 1024 * 1024

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offsets: tuple[int, int]
    """Byte range inside the data section."""


# --------------------------------------------------------------------------- JSON


def read_json(path: str | Path) -> dict[str, Any]:
    """Reads a JSON object file (configs, index files).

    Raises:
        CheckpointError: missing, too large, not UTF-8 JSON, or not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(str(path), f"JSON file larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(str(path), f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(str(path), "expected a JSON object")
    return data


# --------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parses and checks a safetensors header without reading tensor data.

    Checks: header length <= 100 MB and inside the file, JSON object starting with `{`, known dtypes,
    non-negative integer shapes, byte ranges matching shape x itemsize, ranges that tile the data section
    exactly (no overlap, no gap, no truncation, no trailing bytes).

    Returns:
        `(tensors, metadata)`: name -> `TensorInfo`, and the optional `__metadata__` string map.

    Raises:
        CheckpointError: naming the file (and the tensor for per-entry problems).
    """
    p = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(p, f"truncated: {size} bytes is too small for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(p, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise CheckpointError(
                    p, f"truncated: header length {n} runs past the end of the {size}-byte file"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(p, f"cannot read file ({exc})") from exc
    if not raw.startswith(b"{"):
        raise CheckpointError(p, "header is not a JSON object (does not start with '{')")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(p, f"header is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(p, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(p, "__metadata__ must map strings to strings")
    tensors = {name: _parse_entry(p, name, entry) for name, entry in header.items()}
    _check_coverage(p, tensors, size - 8 - n)
    return tensors, metadata


def _parse_entry(path: str, name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(path, "header entry is not an object", name)
    dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise CheckpointError(path, f"unknown dtype {entry.get('dtype')!r}", name)
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(path, f"invalid shape {shape!r}", name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(path, f"invalid data_offsets {offsets!r}", name)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            path,
            f"data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes but shape "
            f"{shape} x {entry['dtype']} needs {nbytes}",
            name,
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), offsets=(offsets[0], offsets[1]))


def _check_coverage(path: str, tensors: Mapping[str, TensorInfo], data_len: int) -> None:
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].offsets):
        start, end = info.offsets
        if start < cursor:
            raise CheckpointError(path, f"data range {list(info.offsets)} overlaps the previous tensor", name)
        if start > cursor:
            raise CheckpointError(path, f"gap of {start - cursor} bytes before this tensor's data", name)
        if end > data_len:
            raise CheckpointError(
                path,
                f"truncated: tensor data ends at byte {end} but the data section has only {data_len} bytes",
                name,
            )
        cursor = end
    if cursor != data_len:
        raise CheckpointError(path, f"{data_len - cursor} unexpected trailing bytes after the last tensor")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads every tensor of a (small) safetensors file onto the CPU, after the header checks."""
    return WeightIndex.from_file(path).read_all()


@dataclass(frozen=True)
class WeightEntry:
    """Where one model tensor comes from: a named tensor in a file, or a tensor already in memory."""

    path: Path
    name: str
    """Tensor name inside `path` (before any key renaming)."""
    dtype: torch.dtype
    shape: tuple[int, ...]
    tensor: torch.Tensor | None = None


@dataclass
class WeightIndex:
    """Model key -> tensor source, built from safetensors headers only (no tensor data read yet)."""

    entries: dict[str, WeightEntry]
    primary: Path
    """The file (or index file) named in errors about missing tensors."""
    locate: Callable[[str], tuple[Path, str]] | None = None
    """Model key -> (file, name in that file) for tensors that are missing; default `(primary, key)`."""

    @classmethod
    def from_file(cls, path: str | Path) -> WeightIndex:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(str(path), "file not found")
        infos, _ = read_safetensors_header(path)
        return cls({k: WeightEntry(path, k, i.dtype, i.shape) for k, i in infos.items()}, path)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], path: str | Path) -> WeightIndex:
        path = Path(path)
        return cls({k: WeightEntry(path, k, t.dtype, tuple(t.shape), t) for k, t in tensors.items()}, path)

    def renamed(self, mapping: Mapping[str, str], inverse: Callable[[str], str] | None = None) -> WeightIndex:
        """A copy with keys renamed by `mapping` (old -> new); keys not in `mapping` are dropped.

        `inverse` maps a new key back to its file name so errors about missing tensors use file names.
        """
        primary = self.primary
        locate = (lambda key: (primary, inverse(key))) if inverse is not None else None
        entries: dict[str, WeightEntry] = {}
        for key, entry in self.entries.items():
            if key not in mapping:
                continue
            new = mapping[key]
            if new in entries:
                # Two file tensors for one model tensor (e.g. both `proj_in.1.weight` and `proj_in.weight`).
                raise CheckpointError(
                    str(entry.path), f"duplicates {entries[new].name!r} (both map to {new!r})", key
                )
            entries[new] = entry
        return WeightIndex(entries, primary, locate)

    def missing_location(self, key: str) -> tuple[Path, str]:
        return self.locate(key) if self.locate is not None else (self.primary, key)

    def path_of(self, key: str) -> Path:
        entry = self.entries.get(key)
        return entry.path if entry is not None else self.primary

    def read_all(self, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Reads tensors onto the CPU (all, or `keys`), opening each file once."""
        return dict(self.iter_tensors(keys))

    def iter_tensors(self, keys: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields `(key, tensor)` one at a time, opening each file once, so a caller that converts and keeps
        each tensor holds one converted model plus one tensor in the file's dtype, never two models."""
        wanted = list(self.entries) if keys is None else keys
        by_file: dict[Path, list[str]] = {}
        for key in wanted:
            entry = self.entries[key]
            if entry.tensor is not None:
                yield key, entry.tensor
            else:
                by_file.setdefault(entry.path, []).append(key)
        for path, keys_in_file in by_file.items():
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for key in keys_in_file:
                        yield key, f.get_tensor(self.entries[key].name)
            except SafetensorError as exc:
                raise CheckpointError(str(path), f"safetensors refused the file ({exc})") from exc


def scan_weights(folder: str | Path, stem: str) -> WeightIndex:
    """Indexes `<folder>/<stem>.safetensors`, or the shards listed by `<stem>.safetensors.index.json`.

    Only headers are read (each fully validated by `read_safetensors_header`).

    Raises:
        CheckpointError: neither file exists, a shard name escapes the folder, a shard is missing, or a tensor
            is not in the shard its index names.
    """
    folder = Path(folder)
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return WeightIndex.from_file(single)
    if not index.is_file():
        raise CheckpointError(str(single), "file not found (and no sharded index next to it)")
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(str(index), "missing or invalid 'weight_map'")
    entries: dict[str, WeightEntry] = {}
    for shard_name in sorted(set(weight_map.values())):
        if Path(shard_name).name != shard_name or shard_name.startswith("."):
            raise CheckpointError(str(index), f"shard name {shard_name!r} is not a plain file name")
        shard = folder / shard_name
        if not shard.is_file():
            raise CheckpointError(str(shard), "shard listed in the index is missing")
        for key, entry in WeightIndex.from_file(shard).entries.items():
            if weight_map.get(key) != shard_name:
                raise CheckpointError(str(shard), f"tensor not listed for this shard in {index.name}", key)
            entries[key] = entry
    for key, shard_name in weight_map.items():
        if key not in entries:
            raise CheckpointError(str(folder / shard_name), "tensor listed in the index is missing", key)
    return WeightIndex(entries, index)


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes tensors atomically (temp file + rename), so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            tmp,
            metadata=dict(metadata) if metadata else None,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- state-dict validation


def validate_weights(index: WeightIndex, expected: Mapping[str, torch.Tensor]) -> None:
    """Checks a weight index against a module's `state_dict()` (meta tensors are fine), reading no data.

    Rules: same key set; same shape; floating-point entries need a floating-point file tensor (any float
    width, cast at load); other entries need the exact dtype.

    Raises:
        CheckpointError: naming the file and the first offending tensor.
    """
    missing = sorted(set(expected) - set(index.entries))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        path, name = index.missing_location(missing[0])
        raise CheckpointError(str(path), f"missing tensor{more}", name)
    unexpected = sorted(set(index.entries) - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        entry = index.entries[unexpected[0]]
        raise CheckpointError(str(entry.path), f"unexpected tensor{more}", entry.name)
    for key, want in expected.items():
        entry = index.entries[key]
        if entry.shape != tuple(want.shape):
            raise CheckpointError(
                str(entry.path),
                f"shape {list(entry.shape)} does not match the model's {list(want.shape)} (model key {key})",
                entry.name,
            )
        if want.is_floating_point() != entry.dtype.is_floating_point or (
            not want.is_floating_point() and entry.dtype != want.dtype
        ):
            raise CheckpointError(
                str(entry.path),
                f"dtype {entry.dtype} is incompatible with the model's {want.dtype} (model key {key})",
                entry.name,
            )


_META_LOCK = threading.RLock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Builds modules with parameters on the meta device while buffers stay real.

    Non-persistent buffers (RoPE tables, FSQ levels) are not in checkpoints, so they must be computed for
    real; parameters are replaced by checkpoint tensors, so initialising them would only waste time and
    memory (a 2B model takes tens of seconds to init on CPU). Patches `nn.Module.register_parameter` for the
    duration, under a lock so concurrent loads do not interleave.
    """
    original = torch.nn.Module.register_parameter

    def register(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    with _META_LOCK:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def read_validated(
    module: torch.nn.Module,
    index: WeightIndex,
    *,
    dtype: torch.dtype,
    check_finite: bool = True,
    lookup_tables: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Validates `index` against `module`, then reads the tensors (float ones cast to `dtype`).

    `lookup_tables` names embedding tables that are read a few rows at a time (a 151 k-token vocabulary is
    600 MB in fp32). They skip the finite check: reading them whole would pull every page of the
    memory-mapped file into RSS, while unchecked they stay on disk until a row is used, and a bad row that is
    used still fails the pipeline's NaN/Inf check on its output.

    Raises:
        CheckpointError: header-level mismatch (before any data is read) or NaN/Inf values.
    """
    validate_weights(index, module.state_dict())
    out: dict[str, torch.Tensor] = {}
    # Streamed: each tensor is read, checked and cast before the next is read, so a bf16 file loaded as
    # fp32 peaks at the fp32 model plus one tensor (reading everything first peaked at both copies).
    for key, t in index.iter_tensors():
        if t.is_floating_point():
            if check_finite and key not in lookup_tables and not all_finite(t):
                entry = index.entries[key]
                raise CheckpointError(str(entry.path), "contains NaN or Inf values", entry.name)
            t = t.to(dtype)
        out[key] = t
    return out


def all_finite(t: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """`torch.isfinite(t).all()` without a whole-tensor boolean temporary.

    A sum is NaN/Inf whenever an element is, so one fast reduction clears almost every tensor; only when it
    is not finite (a bad value, or a legitimate overflow of the sum) are the elements checked exactly, in
    1 M-element chunks (whole-tensor temporaries would fragment the heap and stay in the RSS after loading).
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def assign_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Assigns an already validated state dict (replacing meta parameters, never copying into them)."""
    module.load_state_dict(dict(state), strict=True, assign=True)
    leftover = [
        n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.device.type == "meta"
    ]
    if leftover:
        raise RuntimeError(
            f"{type(module).__name__}: tensors left on the meta device after loading: {leftover[:5]}"
        )


# --------------------------------------------------------------------------- silence latent files

SILENCE_KEY = "silence_latent"
"""Tensor name inside `silence_latent.safetensors` (official layout `[1, C, T]`)."""


def read_silence_file(path: str | Path, channels: int = 64) -> torch.Tensor:
    """Reads `silence_latent.safetensors` or `silence_latent.pt` (official `[1, C, T]`) -> `[T, C]` float32.

    Raises:
        CheckpointError: unreadable file, wrong key set, non-float dtype, or wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if path.suffix == ".safetensors":
        tensors = read_safetensors(path)
        if set(tensors) != {SILENCE_KEY}:
            raise CheckpointError(
                str(path), f"expected exactly one tensor {SILENCE_KEY!r}, found {sorted(tensors)}"
            )
        t = tensors[SILENCE_KEY]
    else:
        t = read_torch_tensor(path)
    try:
        return silence_from_official(t, channels)
    except ValueError as exc:
        raise CheckpointError(str(path), str(exc), SILENCE_KEY) from exc


def convert_silence_latent(pt_path: str | Path, out_safetensors: str | Path) -> Path:
    """Converts the official `silence_latent.pt` to `silence_latent.safetensors` (same `[1, C, T]` layout).

    Returns:
        The written path.
    """
    silence = read_silence_file(pt_path)
    out = Path(out_safetensors)
    write_safetensors(out, {SILENCE_KEY: silence_to_official(silence)}, {"format": "pt"})
    return out
