"""Latent shards: write/read round trip, shard splitting, collate padding, bad caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encore.errors import CheckpointError
from encore.training.data import INDEX_NAME, LatentDataset, LatentShardWriter, collate


def _write(folder: Path, lengths: list[int], max_shard_bytes: int = 1 << 30) -> list[tuple[torch.Tensor, ...]]:
    writer = LatentShardWriter(folder, metadata={"checkpoint": "x"}, max_shard_bytes=max_shard_bytes)
    tensors = []
    for i, t in enumerate(lengths):
        g = torch.Generator().manual_seed(i)
        item = (torch.randn(t, 4, generator=g), torch.randn(t, 8, generator=g), torch.randn(3 + i, 6, generator=g))
        writer.add(f"s{i}", *item, info={"caption": f"c{i}"})
        tensors.append(item)
    writer.close()
    return tensors


def test_round_trip_and_shards(tmp_path: Path) -> None:
    expected = _write(tmp_path, [5, 7, 6], max_shard_bytes=200)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len({r["shard"] for r in index["samples"]}) == 3  # tiny shard size: one sample per shard
    assert index["samples"][1]["caption"] == "c1" and index["checkpoint"] == "x"
    ds = LatentDataset(tmp_path)
    assert len(ds) == 3 and (ds.latent_channels, ds.condition_width) == (4, 6)
    for i, item in enumerate(expected):
        got = ds[i]
        assert all(torch.equal(a, b) for a, b in zip(item, (got.target_latents, got.context_latents,
                                                          got.encoder_hidden_states)))


def test_collate_pads_and_masks(tmp_path: Path) -> None:
    _write(tmp_path, [5, 7])
    ds = LatentDataset(tmp_path)
    batch = collate([ds[0], ds[1]])
    assert batch.target_latents.shape == (2, 7, 4) and batch.encoder_hidden_states.shape == (2, 4, 6)
    assert batch.frame_mask.sum(1).tolist() == [5, 7] and batch.encoder_mask.sum(1).tolist() == [3, 4]
    assert float(batch.target_latents[0, 5:].abs().sum()) == 0.0
    crop = ds[1].crop(2, 3)
    assert crop.num_frames == 3 and torch.equal(crop.target_latents, ds[1].target_latents[2:5])


def test_writer_rejects_bad_samples(tmp_path: Path) -> None:
    writer = LatentShardWriter(tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        writer.add("a", torch.full((2, 4), float("nan")), torch.zeros(2, 8), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="disagree"):
        writer.add("a", torch.zeros(2, 4), torch.zeros(3, 8), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="dot-free"):
        writer.add("a.b", torch.zeros(2, 4), torch.zeros(2, 8), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="no samples"):
        writer.close()


def test_broken_caches_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        LatentDataset(tmp_path / "nothing")
    _write(tmp_path, [3, 3])
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    (tmp_path / index["samples"][0]["shard"]).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        LatentDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({**index, "format": "other"}))
    with pytest.raises(CheckpointError, match="encore-latents"):
        LatentDataset(tmp_path)
