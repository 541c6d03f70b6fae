"""Export of trained recipe checkpoints to the official layout (`encore.training.embedded.export_embedded`):
the DiT, VAE and silence latent load through `encore.pipeline.loading` with the trained values (in fp16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny_training import finalized_tiny_vae

from encore.training import embedded
from encore.training.recipes.dit import DiTRecipe, DiTTrainConfig, load_dit_checkpoint


def _latest(run: Path) -> Path:
    return max((run / "checkpoints").iterdir())


def _export_tiny(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(export folder, its DiT training checkpoint, its finalized VAE folder) of a one-step tiny run."""
    vae_dir = finalized_tiny_vae(tmp_path, torch.randn(2, 8000) * 0.1, silence_seconds=2.0)
    dit_run = DiTRecipe(
        DiTTrainConfig(
            output_dir=str(tmp_path / "dit"),
            geometry="tiny",
            text_encoder="tiny",
            batch_size=2,
            crop_frames=40,
            max_steps=1,
        ),
        cache=_one_clip_cache(),
    )
    dit_run.setup()
    dit_run.train()

    text_src = tmp_path / "bert"
    encoder, tokenizer = embedded.tiny_sentence_encoder(24)
    encoder.model.save_pretrained(str(text_src))
    tokenizer.save_pretrained(str(text_src))

    dest = embedded.export_embedded(
        tmp_path / "export",
        vae_checkpoint=vae_dir,
        dit_checkpoint=_latest(tmp_path / "dit"),
        text_encoder=text_src,
        dtype=torch.float16,
    )
    return dest, _latest(tmp_path / "dit"), vae_dir


def test_export_writes_the_official_layout(tmp_path: Path) -> None:
    from encore.pipeline.checkpoint import read_silence_file
    from encore.pipeline.loading import load_dit_config, load_model, load_vae, resolve_checkpoint

    dest, dit_checkpoint, _ = _export_tiny(tmp_path)
    assert json.loads((dest / "embedded.json").read_text())["text_encoder"] == embedded.TEXT_ENCODER_DIR
    paths = resolve_checkpoint(dest)
    assert paths.dit.name == embedded.BASE_DIR  # a DiT recipe checkpoint is a base model, and its folder says so
    _vae, vcfg = load_vae(paths.vae, dtype=torch.float32)
    assert vcfg == embedded.vae_config("tiny")
    config = load_dit_config(paths, vcfg)
    model = load_model(paths, config, dtype=torch.float32)
    trained = load_dit_checkpoint(dit_checkpoint).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key].half().float(), atol=0, rtol=0)
    silence = read_silence_file(paths.silence, config.audio_acoustic_hidden_dim)
    assert silence.shape == (50, 8)
    text_weights = (dest / embedded.TEXT_ENCODER_DIR / "model.safetensors").stat().st_size
    assert text_weights > 0 and (dest / embedded.TEXT_ENCODER_DIR / "tokenizer.json").is_file()
    vae_checkpoint = tmp_path / "vae_final"
    for solver, match in (("sde", "is a base model"), ("euler", "must be 'ode' or 'sde'")):
        with pytest.raises(ValueError, match=match):  # refused before anything is written
            embedded.export_embedded(tmp_path / "refused", vae_checkpoint=vae_checkpoint,
                                     dit_checkpoint=dit_checkpoint, turbo_solver=solver)  # fmt: skip
    assert not (tmp_path / "refused").exists()


def test_recipes_start_from_a_released_model(tmp_path: Path) -> None:
    """`init_from`/`teacher` (`load_dit_checkpoint`) and the latent-cache encoder (`load_vae_checkpoint`)
    accept an exported model (official layout) as well as recipe folders, and name the folder otherwise."""
    import shutil

    from encore.errors import CheckpointError
    from encore.pipeline.checkpoint import read_silence_file
    from encore.pipeline.loading import load_vae, resolve_checkpoint
    from encore.training.recipes.vae import load_vae_checkpoint

    dest, dit_checkpoint, vae_dir = _export_tiny(tmp_path)
    trained = load_dit_checkpoint(dit_checkpoint).state_dict()
    for source in (dest, dest / embedded.BASE_DIR):  # the root and the DiT folder both name the model
        released = load_dit_checkpoint(source).state_dict()
        assert released.keys() == trained.keys()
        for key, value in released.items():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, trained[key].half().float(), atol=0, rtol=0)

    run = DiTRecipe(DiTTrainConfig(output_dir=str(tmp_path / "ft"), geometry="tiny", text_encoder="tiny",
                                   init_from=str(dest), batch_size=2, crop_frames=40, max_steps=1),
                    cache=_one_clip_cache())  # fmt: skip
    run.setup()
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value, trained[key].half().float(), atol=0, rtol=0)

    paths = resolve_checkpoint(dest)
    vae, vcfg, silence = load_vae_checkpoint(dest)
    shipped, _ = load_vae(paths.vae, dtype=torch.float32)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, shipped.state_dict()[key]), key
    official_silence = read_silence_file(paths.silence, vcfg.latent_channels)
    assert torch.equal(silence, official_silence) and silence.shape == (50, 8)

    # A finalized folder holding a silence latent copied from a DiT folder ([1, D, T]) reads as [T, D].
    copied = tmp_path / "copied"
    shutil.copytree(paths.vae, copied)
    shutil.copy(paths.silence, copied / "silence_latent.safetensors")
    assert torch.equal(load_vae_checkpoint(copied)[2], official_silence)
    _, _, finalized_silence = load_vae_checkpoint(vae_dir)
    assert finalized_silence.ndim == 2 and finalized_silence.shape[1] == 8

    for loader in (load_dit_checkpoint, load_vae_checkpoint):
        with pytest.raises(CheckpointError, match="neither a") as err:
            loader(tmp_path / "bert")
        assert str(tmp_path / "bert") in str(err.value)


def _one_clip_cache():
    from encore.training.recipes.dit import CachedClip, LatentCache

    clip = CachedClip(clip_id="c", mix=torch.randn(40, 8), labels={"caption": "x"})
    return LatentCache(clips=[clip], silence=torch.zeros(100, 8), sample_rate=8000, hop_samples=320)


def test_recipes_read_a_diffusers_layout_model(tmp_path: Path) -> None:
    """The diffusers layout (DiT config split over transformer/condition encoder, silence latent as a buffer) gives
    the recipes the same DiT, VAE and silence latent as the pipeline loader."""
    from encore.pipeline.loading import load_components
    from encore.pipeline.random_checkpoint import write_random_checkpoint
    from encore.training.recipes.vae import load_vae_checkpoint

    folder = write_random_checkpoint(tmp_path / "diff", seed=3, layout="diffusers", silence_frames=60)
    reference = load_components(folder, device="cpu", dtype="float32")
    assert reference.paths.layout == "diffusers"
    model = load_dit_checkpoint(folder)
    assert model.config == reference.config
    expected = reference.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    vae, _, silence = load_vae_checkpoint(folder)
    assert torch.equal(silence, reference.silence_latent) and silence.shape[0] == 60
    for key, value in vae.state_dict().items():
        assert torch.equal(value, reference.vae.state_dict()[key]), key


def test_base_and_turbo_export_shares_what_distillation_left_unchanged(tmp_path: Path) -> None:
    """With `base=`, the turbo's file holds only the tensors that differ from the base's, `embedded.json` (version
    2) names the base as the source of the rest, and both DiTs load with exactly their own values; a conversion
    writes the DiT in full and drops the sharing."""
    import dataclasses

    from encore.models.acestep import AceStepModel
    from encore.pipeline import convert
    from encore.pipeline.checkpoint import read_safetensors
    from encore.pipeline.loading import load_components
    from encore.pipeline.saving import convert_checkpoint, write_official_dit

    _, dit_checkpoint, vae_dir = _export_tiny(tmp_path)
    base = load_dit_checkpoint(dit_checkpoint)
    turbo_config = dataclasses.replace(base.config, is_turbo=True, model_version="turbo")
    turbo = AceStepModel(turbo_config)
    turbo.load_state_dict(base.state_dict())
    with torch.no_grad():  # a "distilled" student: only the decoder moved
        for p in turbo.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    silence = torch.zeros(50, 8)
    student = write_official_dit(tmp_path / "student" / embedded.TURBO_DIR, turbo_config,
                                 convert.encore_to_official(turbo.state_dict()), silence)  # fmt: skip
    both = embedded.export_embedded(tmp_path / "both", vae_checkpoint=vae_dir, dit_checkpoint=student,
                                    base_checkpoint=dit_checkpoint, text_encoder=tmp_path / "bert",
                                    turbo_solver="sde")  # fmt: skip

    meta = json.loads((both / "embedded.json").read_text())
    assert meta["version"] == 3 and meta["shared_weights"] == {embedded.TURBO_DIR: embedded.BASE_DIR}
    assert meta["turbo_solver"] == "sde"
    own = read_safetensors(both / embedded.TURBO_DIR / "model.safetensors")
    full = read_safetensors(both / embedded.BASE_DIR / "model.safetensors")
    assert own and set(own) < set(full) and all(k.startswith("decoder.") for k in own)
    for variant, model in (("turbo", turbo), ("base", base)):
        loaded = load_components(both, variant=variant, device="cpu", dtype="float32")
        assert loaded.variant.is_turbo == (variant == "turbo")
        assert loaded.variant.defaults.solver == ("sde" if variant == "turbo" else "ode")
        expected = model.state_dict()
        for key, value in loaded.model.state_dict().items():
            torch.testing.assert_close(value, expected[key].half().float(), atol=0, rtol=0)

    converted = convert_checkpoint(both, tmp_path / "converted", layout="official")
    meta = json.loads((tmp_path / "converted" / "embedded.json").read_text())
    assert meta["version"] == 3 and "shared_weights" not in meta and meta["turbo_solver"] == "sde"
    assert set(read_safetensors(converted / "model.safetensors")) == set(full)
    again = load_components(tmp_path / "converted", device="cpu", dtype="float32").model.state_dict()
    for key, value in turbo.state_dict().items():
        torch.testing.assert_close(again[key], value.half().float(), atol=0, rtol=0)
