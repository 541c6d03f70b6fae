"""Export of trained recipe checkpoints to the official layout (`encore.training.embedded.export_embedded`):
the DiT, VAE and silence latent load through `encore.pipeline.loading` with the trained values (in fp16)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers.tiny_training import finalized_tiny_vae

from encore.training import embedded
from encore.training.recipes.dit import DiTRecipe, DiTTrainConfig, load_dit_checkpoint


def _latest(run: Path) -> Path:
    return max((run / "checkpoints").iterdir())


def test_export_writes_the_official_layout(tmp_path: Path) -> None:
    from encore.pipeline.checkpoint import read_silence_file
    from encore.pipeline.loading import load_dit_config, load_model, load_vae, resolve_checkpoint
    from encore.training.recipes.dit import CachedClip, LatentCache

    vae_dir = finalized_tiny_vae(tmp_path, torch.randn(2, 8000) * 0.1, silence_seconds=2.0)

    clip = CachedClip(clip_id="c", mix=torch.randn(40, 8), labels={"caption": "x"})
    cache = LatentCache(clips=[clip], silence=torch.zeros(100, 8), sample_rate=8000, hop_samples=320)
    dit_run = DiTRecipe(
        DiTTrainConfig(
            output_dir=str(tmp_path / "dit"),
            geometry="tiny",
            text_encoder="tiny",
            batch_size=2,
            crop_frames=40,
            max_steps=1,
        ),
        cache=cache,
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
    assert json.loads((dest / "embedded.json").read_text())["text_encoder"] == embedded.TEXT_ENCODER_DIR
    paths = resolve_checkpoint(dest)
    assert paths.dit.name == embedded.TURBO_DIR
    _vae, vcfg = load_vae(paths.vae, dtype=torch.float32)
    assert vcfg == embedded.vae_config("tiny")
    config = load_dit_config(paths, vcfg)
    model = load_model(paths, config, dtype=torch.float32)
    trained = load_dit_checkpoint(_latest(tmp_path / "dit")).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key].half().float(), atol=0, rtol=0)
    silence = read_silence_file(paths.silence, config.audio_acoustic_hidden_dim)
    assert silence.shape == (50, 8)
    text_weights = (dest / embedded.TEXT_ENCODER_DIR / "model.safetensors").stat().st_size
    assert text_weights > 0 and (dest / embedded.TEXT_ENCODER_DIR / "tokenizer.json").is_file()
