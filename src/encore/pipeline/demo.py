"""The no-download demo checkpoint: the bundled embedded model, else a tiny random-weight one.

`encore demo` uses the embedded model when the package ships it (`demo_model`). Without it, it falls back to a
tiny random model with the real audio geometry that renders noise, not music, and says so. Its VAE keeps the
official 48 kHz stereo output and 1920-sample hop so the demo still exercises the real output path.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from encore.models.vae import VAEConfig
from encore.pipeline import presets
from encore.pipeline.random_checkpoint import DEFAULT_DIT_DIR, write_random_checkpoint

DEMO_CHECKPOINT_DIR = "demo-tiny-random"
DEMO_VAE = VAEConfig.tiny(sampling_rate=48000, downsampling_ratios=(4, 8, 60))
"""Tiny widths, real geometry: 48 kHz, hop 4·8·60 = 1920 samples (25 latent frames per second)."""
_MARKER = ".complete"


def demo_checkpoint(root: str | Path) -> Path:
    """The random demo checkpoint under `root`, written on first use; returns its DiT folder.

    A marker file is written last, so an interrupted first run is redone rather than half-used.
    """
    folder = Path(root) / DEMO_CHECKPOINT_DIR
    marker = folder / _MARKER
    if not marker.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_random_checkpoint(folder, vae_config=DEMO_VAE, seed=0, silence_frames=15000)
        marker.write_text("random tiny demo checkpoint (not trained weights)\n", encoding="utf-8")
    return folder / DEFAULT_DIT_DIR


class DemoModel(NamedTuple):
    """What `encore demo` loads."""

    path: Path
    """Checkpoint folder for `Pipeline.from_pretrained`."""
    random: bool
    """True for the tiny random fallback (noise, not music)."""


def demo_model(cache_root: str | Path) -> DemoModel:
    """The bundled embedded model when present, else the random demo checkpoint under `cache_root`."""
    if presets.embedded_available():
        return DemoModel(presets.embedded_dir(), random=False)
    return DemoModel(demo_checkpoint(cache_root), random=True)
