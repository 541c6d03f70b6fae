"""The embedded export (`embedded.json`, MiniLM caption encoder) and the built-in name `embedded`: loading,
generation at 48 kHz stereo, encoder parity with the training recipes, and missing-part errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny_embedded import write_tiny_embedded

import encore
from encore.errors import CheckpointError
from encore.models.text_encoder import SentenceTextEncoder
from encore.pipeline import presets
from encore.pipeline.loading import load_components, load_pipeline, resolve_checkpoint
from encore.pipeline.request import GenerationRequest, TextInputs

TEXT = TextInputs(caption="upbeat jazz piano trio", lyrics="[Verse]\nla la la", language="en", duration_s=1.0)
MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedded(tmp_path_factory.mktemp("embedded") / "export")


@pytest.fixture()
def broken(export: Path, tmp_path: Path) -> Path:
    """A private copy of the export that a test may damage."""
    return Path(shutil.copytree(export, tmp_path / "export"))


def test_export_loads_and_generates_48k_stereo(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline(export, device="cpu", dtype="float32")
    assert isinstance(pipe.text_encoder, SentenceTextEncoder)
    assert pipe.components.paths.embedded and pipe.components.paths.text_encoder == export / MINILM
    assert pipe.components.variant.name == "embedded" and pipe.components.variant.is_turbo
    result = pipe.generate(GenerationRequest(text=TEXT, seeds=(5,)))
    assert result.sample_rate == 48000 and result.audio.shape == (1, 2, 48000)
    assert bool(torch.isfinite(result.audio).all()) and float(result.audio.abs().max()) > 0
    assert result.params["model"]["variant"] == "embedded"


def test_caption_and_lyric_states_match_the_training_encoder(export: Path) -> None:
    """Inference must encode exactly as `training.recipes.dit.TextStates` does (same files, same calls)."""
    from encore.pipeline.pipeline import CAPTION_MAX_TOKENS, Pipeline
    from encore.training.embedded import load_sentence_encoder

    components = load_components(export, device="cpu", dtype="float32")
    caption, lyric = Pipeline(components).prompt_texts(TEXT, "Fill the audio semantic mask.", 1.0)
    train_encoder, train_tokenizer = load_sentence_encoder(export / MINILM)
    ids = components.text_tokenizer(caption, truncation=True, max_length=CAPTION_MAX_TOKENS,
                                     return_tensors="pt").input_ids
    train_ids = train_tokenizer(caption, truncation=True, max_length=CAPTION_MAX_TOKENS, return_tensors="pt")
    assert torch.equal(ids, train_ids.input_ids) and ids[0, 0] == train_tokenizer.cls_token_id
    with torch.no_grad():
        torch.testing.assert_close(components.text_encoder.encode_caption(ids),
                                   train_encoder.encode_caption(ids), atol=0, rtol=0)
        lyric_ids = components.text_tokenizer(lyric, return_tensors="pt").input_ids
        torch.testing.assert_close(components.text_encoder.embed_lyrics(lyric_ids),
                                   train_encoder.embed_lyrics(lyric_ids), atol=0, rtol=0)


def test_dit_folder_and_marker_free_root_also_resolve(broken: Path) -> None:
    assert resolve_checkpoint(broken / "acestep-v15-turbo").text_encoder == broken / MINILM
    (broken / "embedded.json").unlink()
    paths = resolve_checkpoint(broken)
    assert paths.text_encoder == broken / MINILM and not paths.embedded


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (f"{MINILM}/model.safetensors", f"{MINILM}/model.safetensors"),
        (f"{MINILM}/config.json", f"{MINILM}/config.json"),
        (MINILM, MINILM),
        ("vae/config.json", "vae/config.json"),
        ("acestep-v15-turbo/model.safetensors", "acestep-v15-turbo/model.safetensors"),
    ],
)
def test_missing_part_names_the_file(broken: Path, remove: str, named: str) -> None:
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError) as info:
        load_components(broken, device="cpu", dtype="float32")
    assert info.value.path == str(broken / named)


def test_missing_tokenizer_and_bad_marker_are_named(broken: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (broken / MINILM / name).unlink()
    with pytest.raises(CheckpointError, match="tokenizer files not found") as info:
        load_components(broken, device="cpu", dtype="float32")
    assert MINILM in info.value.path
    (broken / "embedded.json").write_text(json.dumps({"format": "encore-embedded", "version": 1,
                                                       "text_encoder": "../elsewhere"}))
    with pytest.raises(CheckpointError, match="plain folder name") as info:
        resolve_checkpoint(broken)
    assert info.value.path == str(broken / "embedded.json")


def test_builtin_name_uses_the_packaged_folder(export: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no local folder called `embedded`
    monkeypatch.setattr(presets, "embedded_dir", lambda: export)
    assert presets.embedded_available()
    assert resolve_checkpoint("embedded").root == export
    absent = tmp_path / "not-bundled"
    monkeypatch.setattr(presets, "embedded_dir", lambda: absent)
    assert not presets.embedded_available()
    with pytest.raises(CheckpointError, match="not bundled") as info:
        resolve_checkpoint("embedded")
    assert info.value.path == str(absent) and "encore download turbo" in str(info.value)


def test_packaged_folder_is_inside_the_package() -> None:
    assert presets.embedded_dir() == Path(encore.__file__).parent / "assets" / "embedded"


@pytest.mark.skipif(not presets.embedded_available(), reason="no bundled model in this install")
def test_bundled_decoder_is_free_of_the_frame_rate_artefact() -> None:
    """The shipped VAE decoder stays on the balanced-upsampling subspace (`balance_upsampling_`): a decoder off
    it buzzes on the 25 Hz harmonics whatever the latents (the second release's moved by up to 0.10 here)."""
    import copy

    from encore.models.vae import balance_upsampling_
    from encore.pipeline.loading import load_vae

    vae, _ = load_vae(presets.embedded_dir() / "vae", dtype=torch.float32)
    assert balance_upsampling_(copy.deepcopy(vae.decoder)) < 1e-3  # fp16 storage rounds at ~3e-5


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_convert_keeps_the_embedded_identity_and_weights(export: Path, tmp_path: Path, layout: str) -> None:
    from encore.pipeline.saving import convert_checkpoint

    out = convert_checkpoint(export, tmp_path / layout, layout=layout)
    assert (tmp_path / layout / presets.EMBEDDED_MARKER).is_file()
    if layout == "official":  # the MiniLM folder keeps its name; no BERT under the Qwen3 folder name
        assert (tmp_path / layout / presets.EMBEDDED_TEXT_ENCODER_DIR).is_dir()
        assert not (tmp_path / layout / presets.TEXT_ENCODER_DIR).exists()
    source, converted = load_components(export), load_components(out)
    assert converted.paths.embedded and converted.variant.name == source.variant.name
    assert converted.variant.preset is None  # never reported as the official release
    for a, b in ((source.text_encoder.model, converted.text_encoder.model), (source.model, converted.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _share(root: Path, version: int = 2, shared: object = None) -> dict[str, torch.Tensor]:
    """Turn the export into a base + turbo pair whose turbo file keeps only its decoder; returns the full file."""
    from encore.pipeline.checkpoint import read_safetensors, write_safetensors

    shutil.copytree(root / "acestep-v15-turbo", root / "acestep-v15-base")
    full = read_safetensors(root / "acestep-v15-turbo" / "model.safetensors")
    own = {k: v for k, v in full.items() if k.startswith("decoder.")}
    write_safetensors(root / "acestep-v15-turbo" / "model.safetensors", own)
    meta = json.loads((root / "embedded.json").read_text())
    meta.update(version=version, shared_weights={"acestep-v15-turbo": "acestep-v15-base"} if shared is None
                else shared)  # fmt: skip
    (root / "embedded.json").write_text(json.dumps(meta))
    return full


def test_shared_weights_fill_in_what_the_turbo_file_leaves_out(export: Path, broken: Path) -> None:
    _share(broken)
    reference = load_components(export, device="cpu", dtype="float32").model.state_dict()
    for source in (broken, broken / "acestep-v15-turbo"):  # the root and the DiT folder alike
        loaded = load_components(source, device="cpu", dtype="float32")
        assert loaded.paths.dit.name == "acestep-v15-turbo"
        state = loaded.model.state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    # The base's own file is complete and is read alone (it holds the full weights it was copied from).
    base = load_components(broken, variant="acestep-v15-base", device="cpu", dtype="float32").model.state_dict()
    assert all(torch.equal(base[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("version", "shared", "match", "named"),
    [
        (4, None, "version 4 unsupported", "embedded.json"),
        (2, ["acestep-v15-base"], "shared_weights must map", "embedded.json"),
        (2, {"acestep-v15-turbo": "../base"}, "plain folder name", "embedded.json"),
        (2, {"acestep-v15-turbo": "acestep-v15-turbo"}, "stores all of its own weights", "embedded.json"),
        (2, {"acestep-v15-turbo": "acestep-v15-base", "acestep-v15-base": "acestep-v15-sft"},
         "stores all of its own weights", "embedded.json"),
        (2, {"acestep-v15-turbo": "acestep-v15-sft"}, "not found", "acestep-v15-sft"),
        (2, {}, "missing", "acestep-v15-turbo/model.safetensors"),  # nothing shared: the turbo file is short
    ],
)
def test_bad_shared_weights_are_named(broken: Path, version: int, shared: object, match: str, named: str) -> None:
    _share(broken, version=version, shared=shared)
    with pytest.raises(CheckpointError, match=match) as info:
        load_components(broken, device="cpu", dtype="float32")
    assert info.value.path == str(broken / named)


@pytest.mark.skipif(not presets.embedded_available(), reason="no bundled model in this install")
def test_bundled_model_holds_turbo_and_base_within_the_budget() -> None:
    """The shipped folder: the turbo (default) and its base teacher, their weights under the 100 MB budget
    because the turbo stores only the tensors distillation changed."""
    from encore.pipeline.loading import shared_weights_source
    from encore.training.embedded import MAX_EXPORT_BYTES

    root = presets.embedded_dir()
    total = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert total <= MAX_EXPORT_BYTES
    turbo, base = resolve_checkpoint("embedded"), resolve_checkpoint("embedded", variant="base")
    assert turbo.dit.name == "acestep-v15-turbo" and base.dit.name == "acestep-v15-base"
    assert shared_weights_source(turbo) == base.dit and shared_weights_source(base) is None


def test_a_dit_folder_refuses_another_variant(broken: Path) -> None:
    folder = broken / "acestep-v15-turbo"
    assert resolve_checkpoint(folder, variant="turbo").dit == folder  # the preset naming this folder
    assert resolve_checkpoint(folder, variant="acestep-v15-turbo").dit == folder
    with pytest.raises(CheckpointError, match="variant 'base' asked for") as info:
        resolve_checkpoint(folder, variant="base")
    assert info.value.path == str(folder)


def test_cache_identity_follows_every_folder_the_cache_comes_from(broken: Path) -> None:
    """A latent/condition cache made with the turbo goes stale when the base it shares weights with, the VAE or
    the silence latent changes, not only when the turbo's own file does."""
    import os

    from encore.data.preprocess import checkpoint_identity

    _share(broken)
    paths = resolve_checkpoint(broken)
    before = checkpoint_identity(paths)
    assert checkpoint_identity(resolve_checkpoint(broken)) == before  # stable when nothing changed
    for changed in (broken / "acestep-v15-base" / "model.safetensors", broken / "vae" / "diffusion_pytorch_model.safetensors",
                    paths.silence):  # fmt: skip
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        after = checkpoint_identity(resolve_checkpoint(broken))
        assert after != before, changed
        before = after


def test_turbo_solver_in_the_marker_is_the_turbos_default(broken: Path) -> None:
    """`"turbo_solver": "sde"` (format version 3): requests that name no solver sample the turbo with SDE,
    recorded in the params so a replay reproduces it; a request naming ODE still gets ODE."""
    from encore.pipeline.request import DiffusionOptions

    plain = load_pipeline(broken, device="cpu", dtype="float32")
    assert plain.components.variant.defaults.solver == "ode"
    ode = plain.generate(GenerationRequest(text=TEXT, seeds=(5,)))
    meta = json.loads((broken / "embedded.json").read_text())
    (broken / "embedded.json").write_text(json.dumps({**meta, "version": 3, "turbo_solver": "sde"}))
    pipe = load_pipeline(broken, device="cpu", dtype="float32")
    assert pipe.components.variant.defaults.solver == "sde"
    sde = pipe.generate(GenerationRequest(text=TEXT, seeds=(5,)))
    assert sde.params["request"]["diffusion"]["solver"] == "sde" and not torch.equal(sde.audio, ode.audio)
    from encore.pipeline.request import request_from_dict

    assert torch.equal(pipe.generate(request_from_dict(sde.params["request"])).audio, sde.audio)  # SDE noise is seeded
    asked = pipe.generate(GenerationRequest(text=TEXT, seeds=(5,), diffusion=DiffusionOptions(solver="ode")))
    assert torch.equal(asked.audio, ode.audio)
    # What `encore eval` reports per row: the settings that ran (a turbo shift of 2.5 snaps to 2).
    from encore.eval.run import sampling_of

    snapped = pipe.generate(GenerationRequest(text=TEXT, seeds=(5,), diffusion=DiffusionOptions(shift=2.5)))
    assert sampling_of(snapped) == {"num_steps": 8, "shift": 2.0, "solver": "sde", "guidance_scale": 1.0}
    (broken / "embedded.json").write_text(json.dumps({**meta, "version": 3, "turbo_solver": "euler"}))
    with pytest.raises(CheckpointError, match="turbo_solver 'euler'") as info:
        load_components(broken, device="cpu", dtype="float32")
    assert info.value.path == str(broken / "embedded.json")
