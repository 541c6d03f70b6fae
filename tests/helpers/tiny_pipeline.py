"""Tiny random checkpoints and test audio for pipeline and CLI tests (no network, a few hundred ms each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from encore.models.config import AceStepConfig
from encore.models.vae import VAEConfig
from encore.pipeline.random_checkpoint import write_random_checkpoint

VAE_48K = VAEConfig.tiny(sampling_rate=48000, downsampling_ratios=(4, 8, 60))
"""Tiny VAE with the real geometry: 48 kHz stereo, hop 1920 (25 latent frames per second)."""
VAE_8K = VAEConfig.tiny()
"""Tiny VAE at 8 kHz, hop 320 (also 25 frames per second)."""
VAE_1K = VAEConfig.tiny(sampling_rate=1000, downsampling_ratios=(2, 2, 10))
"""Cheapest tiny VAE: 1 kHz, hop 40, still 25 frames per second. Use it where audio is encoded: a 30 s
reference costs ~1/8 of the 8 kHz encode."""
SILENCE_FRAMES = 2000


def write_tiny(root: Path, *, variant: str = "turbo", vae: VAEConfig = VAE_8K, seed: int = 0) -> Path:
    """Writes a random official-layout checkpoint; returns the DiT folder. `variant`: turbo or base."""
    if variant == "turbo":
        config, dit_dir = AceStepConfig.tiny(), "acestep-v15-turbo"
    else:
        config, dit_dir = AceStepConfig.tiny(is_turbo=False, model_version="base"), "acestep-v15-base"
    return write_random_checkpoint(root, config=config, vae_config=vae, seed=seed, silence_frames=SILENCE_FRAMES,
                                   dit_dir=dit_dir)


def tone(seconds: float, sample_rate: int, *, seed: int = 0, channels: int = 2) -> np.ndarray:
    """A deterministic test signal `[S, channels]` in [-0.8, 0.8]: two sines plus a little noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    cols = [0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.05 * rng.standard_normal(n) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_wav(path: Path, seconds: float, sample_rate: int, *, seed: int = 0, channels: int = 2,
              subtype: str = "PCM_16") -> Path:
    """Writes `tone(...)` to `path` (16-bit PCM by default, so reading it back is exact)."""
    sf.write(path, tone(seconds, sample_rate, seed=seed, channels=channels), sample_rate, subtype=subtype)
    return path
