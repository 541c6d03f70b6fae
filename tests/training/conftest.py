"""Shared fixtures for the personalisation tests: a tiny random checkpoint, synthetic clips, cached latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def write_clips(folder: Path, count: int, *, seconds: float = 2.0, rate: int = 8000, seed: int = 0,
                base_hz: float = 220.0) -> list[Path]:
    """Stereo WAV clips: a decaying tone per beat at a clip-specific pitch, plus a little noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for i in range(count):
        hz = base_hz * 2 ** (i / 12)
        envelope = np.exp(-(t % 0.5) * 6.0)
        x = 0.4 * np.sin(2 * np.pi * hz * t) * envelope + 0.01 * rng.standard_normal(t.shape)
        path = folder / f"clip{i:02d}.wav"
        sf.write(path, np.stack([x, x * 0.9], axis=1).astype(np.float32), rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt"), silence_frames=1000, seed=0)


@pytest.fixture(scope="session")
def tiny_components(tiny_checkpoint: Path):
    from encore.pipeline.loading import load_components

    return load_components(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_components) -> tuple[Path, Path]:
    """(manifest path, latent index path) for 4 equal-length 2 s clips with captions."""
    from encore.data.dataset_builder import BuildOptions, build_dataset
    from encore.data.preprocess import preprocess_manifest

    root = tmp_path_factory.mktemp("dataset")
    clips = write_clips(root / "songs", 4)
    for i, clip in enumerate(clips):
        clip.with_suffix(".caption.txt").write_text(f"tiny test song number {i}")
    manifest = build_dataset(root / "songs", BuildOptions(activation_tag="tinystyle"))
    manifest.root = "songs"
    path = manifest.save(root / "manifest.json")
    index = preprocess_manifest(path, tiny_components, seed=0)
    return path, index


@pytest.fixture(scope="session")
def unit_latents(tmp_path_factory: pytest.TempPathFactory, tiny_dataset) -> Path:
    """The tiny dataset's cache with target latents scaled to unit std.

    The random tiny VAE emits latents with std ~15 (flow-matching loss ~200); the real VAE's latents are O(1)
    (loss ~1). Loss tolerances such as "within 1e-4" are meant at that scale.
    """
    import torch

    from encore.training.data import LatentDataset, LatentShardWriter

    source = LatentDataset(tiny_dataset[1])
    scale = float(torch.cat([source[i].target_latents for i in range(len(source))]).std())
    writer = LatentShardWriter(tmp_path_factory.mktemp("unit_latents"), metadata={"checkpoint": "rescaled"})
    for i in range(len(source)):
        s = source[i]
        writer.add(s.sample_id, s.target_latents / scale, s.context_latents, s.encoder_hidden_states)
    return writer.close()
