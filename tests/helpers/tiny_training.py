"""Small trained pieces for training-recipe tests (tiny geometry, one optimizer step, CPU)."""

from __future__ import annotations

from pathlib import Path

import torch


def finalized_tiny_vae(root: Path, wav: torch.Tensor, *, silence_seconds: float) -> Path:
    """Trains the tiny VAE geometry for one step on `wav` (`[2, S]` at 8 kHz) under `root/vae`, finalizes it
    into `root/vae_final` and returns that folder."""
    from encore.training.recipes.vae import TensorAudioSource, VAERecipe, VAETrainConfig, finalize_vae

    source = TensorAudioSource([wav])
    run = VAERecipe(
        VAETrainConfig(output_dir=str(root / "vae"), geometry="tiny", max_steps=1, batch_size=1, crop_seconds=0.2,
                       fft_sizes=(64, 32)),
        source=source,
    )  # fmt: skip
    run.setup()
    run.train()
    latest = max((root / "vae" / "checkpoints").iterdir())
    return finalize_vae(latest, root / "vae_final", source, silence_seconds=silence_seconds)
