"""LoRA adapters through `Pipeline.generate` and `encore generate --lora` on a tiny random turbo checkpoint.

Adapters are written by hand in the PEFT layout (random A/B, `adapter_config.json`), independently of our writer.
Also: `Pipeline.load_audio` (resampling, channel mapping, errors).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.tiny_pipeline import VAE_1K, write_tiny
from safetensors.torch import save_file
from torch import nn

from encore.audio.io import read_metadata
from encore.errors import AudioError, InvalidRequest
from encore.frontends import cli
from encore.pipeline import adapters as adapters_module
from encore.pipeline.pipeline import Pipeline
from encore.pipeline.request import GenerationRequest, LoraSpec, TextInputs

TEXT = TextInputs(caption="warm lo-fi piano", lyrics="[Instrumental]", duration_s=1.2)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("turbo"), vae=VAE_1K)


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> Pipeline:
    return Pipeline.from_pretrained(checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base(pipe: Pipeline) -> torch.Tensor:
    """Latents of the reference request without adapters, before any adapter was ever loaded."""
    return pipe.generate(_request()).latents


@pytest.fixture(scope="module")
def library(pipe: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: write_adapter(root / name / "adapter", pipe.model.decoder, seed=seed)
            for name, seed in (("style_a", 1), ("style_b", 2))}


def _request(*loras: tuple[Path, float], seed: int = 3) -> GenerationRequest:
    return GenerationRequest(text=TEXT, seeds=(seed,),
                             loras=tuple(LoraSpec(path=str(p), scale=s) for p, s in loras))


def write_adapter(folder: Path, decoder: nn.Module, *, seed: int, rank: int = 2, alpha: float = 4.0,
                  width_offset: int = 0) -> Path:
    """A PEFT-layout adapter with random A/B on every attention projection of `decoder`; `width_offset`
    makes it fit a model whose hidden size is that much larger."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in decoder.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(PROJECTIONS):
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, module.in_features + width_offset, generator=g) * 0.3
            tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features + width_offset, rank, generator=g) * 0.3
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
         "target_modules": list(PROJECTIONS), "bias": "none"}))
    return folder


def _digest(folder: Path) -> str:
    data = (folder / "adapter_model.safetensors").read_bytes() + (folder / "adapter_config.json").read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def _state(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.model.decoder.state_dict().items()}


# --------------------------------------------------------------------------------------------- behaviour


def test_adapter_changes_output_is_recorded_and_removed_afterwards(
        pipe: Pipeline, base: torch.Tensor, library: dict[str, Path]) -> None:
    weights = _state(pipe)
    styled = pipe.generate(_request((library["style_a"], 1.0)))
    assert not torch.allclose(styled.latents, base, atol=1e-3)
    assert styled.params["model"]["loras"] == [{"name": "style_a/adapter", "scale": 1.0,
                                                "sha256": _digest(library["style_a"])}]
    assert styled.params["request"]["loras"] == [{"path": str(library["style_a"]), "scale": 1.0}]
    # Afterwards: adapters switched off at once, base model again bit for bit, base weights never touched.
    assert adapters_module.AdapterSet.of(pipe.model.decoder).active() == []
    assert torch.equal(pipe.generate(_request()).latents, base)
    assert pipe.model_info()["loras"] == []
    after = pipe.model.decoder.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    # Same seed, same adapter: same output (cached adapter).
    assert torch.equal(pipe.generate(_request((library["style_a"], 1.0))).latents, styled.latents)


def test_scale_zero_is_bit_identical_to_base(pipe: Pipeline, base: torch.Tensor, library: dict[str, Path]) -> None:
    result = pipe.generate(_request((library["style_a"], 0.0)))
    assert torch.equal(result.latents, base)
    assert result.params["model"]["loras"][0]["scale"] == 0.0  # still recorded (and the file still checked)


def test_scale_changes_strength(pipe: Pipeline, base: torch.Tensor, library: dict[str, Path]) -> None:
    half = pipe.generate(_request((library["style_a"], 0.5))).latents
    full = pipe.generate(_request((library["style_a"], 1.0))).latents
    double = pipe.generate(_request((library["style_a"], 2.0))).latents
    assert len({tuple(x.flatten()[:64].tolist()) for x in (base, half, full, double)}) == 4


def test_two_adapters_both_apply(pipe: Pipeline, base: torch.Tensor, library: dict[str, Path]) -> None:
    a, b = library["style_a"], library["style_b"]
    only_a = pipe.generate(_request((a, 1.0))).latents
    only_b = pipe.generate(_request((b, 0.7))).latents
    both = pipe.generate(_request((a, 1.0), (b, 0.7)))
    reversed_order = pipe.generate(_request((b, 0.7), (a, 1.0))).latents
    for other in (base, only_a, only_b):
        assert not torch.allclose(both.latents, other, atol=1e-3)
    torch.testing.assert_close(reversed_order, both.latents, rtol=1e-4, atol=1e-4)  # updates add up
    assert [(x["name"], x["scale"]) for x in both.params["model"]["loras"]] == [("style_a/adapter", 1.0),
                                                                              ("style_b/adapter", 0.7)]
    assert torch.equal(pipe.generate(_request()).latents, base)


def test_adapters_are_cached_and_reloaded_when_the_file_changes(
        pipe: Pipeline, library: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = adapters_module.read_adapter
    monkeypatch.setattr(adapters_module, "read_adapter", lambda p: calls.append(str(p)) or real(p))
    folder = write_adapter(tmp_path / "changing", pipe.model.decoder, seed=5)
    first = pipe.generate(_request((folder, 1.0)))
    again = pipe.generate(_request((folder, 1.0)))
    assert len(calls) == 1 and torch.equal(first.latents, again.latents)
    write_adapter(folder, pipe.model.decoder, seed=6, rank=3)  # rewritten: new size, new mtime
    changed = pipe.generate(_request((folder, 1.0)))
    assert len(calls) == 2 and not torch.allclose(changed.latents, first.latents, atol=1e-3)
    assert changed.params["model"]["loras"][0]["sha256"] == _digest(folder) != first.params["model"]["loras"][0][
        "sha256"]


def test_cache_keeps_only_recent_adapters(pipe: Pipeline, tmp_path: Path) -> None:
    folders = [write_adapter(tmp_path / f"a{i}", pipe.model.decoder, seed=20 + i) for i in range(3)]
    for folder in folders:
        pipe.generate(_request((folder, 1.0)))
    loaded = adapters_module.AdapterSet.of(pipe.model.decoder)
    assert len(loaded.names) <= adapters_module.CACHED_ADAPTERS
    assert str(folders[-1].resolve()) in loaded and loaded.active() == []
    adapters_module.release(pipe.model.decoder, keep=0)
    assert loaded.names == ()


# --------------------------------------------------------------------------------------------- bad files


def _bad_adapter(case: str, tmp_path: Path, pipe: Pipeline, checkpoint: Path) -> Path:
    """An adapter path that must be refused (the error has to name it)."""
    folder = tmp_path / case
    if case == "missing_folder":
        return folder
    if case == "empty_folder":
        folder.mkdir()
        return folder
    if case == "pickle_only":
        folder.mkdir()
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
        return folder
    if case == "model_checkpoint":  # a safetensors file that is not an adapter: the DiT weights
        return checkpoint / "model.safetensors"
    write_adapter(folder, pipe.model.decoder, seed=9)
    weights = folder / "adapter_model.safetensors"
    if case == "other_width":
        write_adapter(folder, pipe.model.decoder, seed=9, width_offset=16)
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "garbage":
        weights.write_bytes(b"\x00" * 100)
    elif case == "bad_config":
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    return folder


BAD_CASES = {"missing_folder": "not found", "empty_folder": "not found", "pickle_only": "pickle files are never",
             "model_checkpoint": "not a LoRA tensor", "other_width": "do not fit", "truncated": "not a readable",
             "garbage": "not a readable", "bad_config": "use_dora"}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_adapter_is_refused_before_sampling_naming_the_file(
        case: str, pipe: Pipeline, base: torch.Tensor, library: dict[str, Path], checkpoint: Path,
        tmp_path: Path) -> None:
    bad = _bad_adapter(case, tmp_path, pipe, checkpoint)
    stages: list[str] = []
    with pytest.raises(InvalidRequest) as info:
        # A good adapter first: the failure must not leave it switched on.
        pipe.generate(_request((library["style_a"], 1.0), (bad, 1.0)),
                      progress=lambda stage, _: stages.append(stage))
    assert info.value.field == "loras[1].path"
    assert str(bad.resolve()) in str(info.value) or str(bad) in str(info.value)
    assert stages == []  # refused in the resolve stage: nothing was loaded, encoded or sampled
    assert BAD_CASES[case] in str(info.value)
    assert adapters_module.AdapterSet.of(pipe.model.decoder).active() == []
    assert torch.equal(pipe.generate(_request()).latents, base)


def test_duplicate_adapter_is_refused(pipe: Pipeline, library: dict[str, Path]) -> None:
    with pytest.raises(InvalidRequest, match="twice") as info:
        pipe.generate(_request((library["style_a"], 1.0), (library["style_a"], 0.5)))
    assert info.value.field == "loras"


# --------------------------------------------------------------------------------------------- CLI


def test_cli_generate_with_lora(checkpoint: Path, library: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def run(*extra: str) -> tuple[int, str]:
        code = cli.main(["generate", "--checkpoint", str(checkpoint), "--caption", "x", "--duration", "1",
                         "--seed", "4", *extra])
        return code, capsys.readouterr().err

    adapter = library["style_b"]
    assert run("--lora", f"{adapter}:0.5", "-o", str(tmp_path / "lora.wav"))[0] == 0
    assert run("-o", str(tmp_path / "plain.wav"))[0] == 0
    assert run("--lora", f"{adapter}:0", "-o", str(tmp_path / "zero.wav"))[0] == 0
    meta = read_metadata(tmp_path / "lora.wav")
    assert meta["loras"] == [{"name": "style_b/adapter", "scale": 0.5, "sha256": _digest(adapter)}]
    assert meta["request"]["loras"] == [{"path": str(adapter), "scale": 0.5}]
    plain, _ = sf.read(tmp_path / "plain.wav")
    zero, _ = sf.read(tmp_path / "zero.wav")
    styled, _ = sf.read(tmp_path / "lora.wav")
    assert np.array_equal(plain, zero) and not np.array_equal(plain, styled)
    assert read_metadata(tmp_path / "plain.wav")["loras"] == []

    code, err = run("--lora", str(tmp_path / "nowhere"), "-o", str(tmp_path / "bad.wav"))
    assert code == cli.EXIT_USAGE and "--lora" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "bad.wav").exists()


# --------------------------------------------------------------------------------------------- load_audio


def test_load_audio_resamples_and_maps_channels(pipe: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "mono16k.wav"
    t = np.arange(8000) / 16000.0
    sf.write(path, (0.5 * np.sin(2 * np.pi * 50.0 * t)).astype(np.float32), 16000, subtype="FLOAT")
    wav = pipe.load_audio(path)
    assert isinstance(wav, torch.Tensor) and wav.dtype == torch.float32
    assert wav.shape == (2, 500)  # 0.5 s at the tiny VAE's 1 kHz, mono duplicated to stereo
    assert torch.equal(wav[0], wav[1])
    expected = 0.5 * np.sin(2 * np.pi * 50.0 * np.arange(500) / 1000.0)
    np.testing.assert_allclose(wav[0, 20:-20].numpy(), expected[20:-20], atol=0.02)
    with pytest.raises(AudioError, match="absent.wav"):
        pipe.load_audio(tmp_path / "absent.wav")
