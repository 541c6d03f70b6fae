"""Preprocessed training data: VAE latents and condition tensors cached in safetensors shards, and batching.

Layout of a latent folder: `index.json` (format, geometry, one record per sample) plus `shard-NNNNN.safetensors`
files holding `<id>.target_latents [T, C]`, `<id>.context_latents [T, 2C]` and `<id>.encoder_hidden_states [S, H]`.
`LatentShardWriter` writes it (shards then index, each atomically); `LatentDataset` reads it lazily; `collate`
pads a list of samples into a `LatentBatch`. Training never re-encodes audio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encore.errors import CheckpointError

LATENT_FORMAT = "encore-latents"
LATENT_VERSION = 1
INDEX_NAME = "index.json"
TENSOR_NAMES = ("target_latents", "context_latents", "encoder_hidden_states")
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
"""A shard is closed once it holds this many bytes of tensors."""


@dataclass(frozen=True)
class LatentSample:
    """One cached training example."""

    sample_id: str
    target_latents: Tensor
    """`[T, C]` clean VAE latents x0."""
    context_latents: Tensor
    """`[T, 2C]` = cat(src latents, chunk mask)."""
    encoder_hidden_states: Tensor
    """`[S, H]` packed condition (condition-encoder output)."""

    @property
    def num_frames(self) -> int:
        return int(self.target_latents.shape[0])

    def crop(self, offset: int, num_frames: int) -> LatentSample:
        """Frames `[offset, offset + num_frames)` (clamped to the sample)."""
        if offset < 0 or num_frames < 1:
            raise ValueError(f"bad crop offset={offset} num_frames={num_frames}")
        end = min(self.num_frames, offset + num_frames)
        return LatentSample(self.sample_id, self.target_latents[offset:end], self.context_latents[offset:end],
                            self.encoder_hidden_states)


@dataclass(frozen=True)
class LatentBatch:
    """A padded batch of `LatentSample`s."""

    sample_ids: tuple[str, ...]
    target_latents: Tensor
    """`[B, T, C]`, zero past each item's length."""
    context_latents: Tensor
    """`[B, T, 2C]`."""
    encoder_hidden_states: Tensor
    """`[B, S, H]`, zero past each item's condition length."""
    frame_mask: Tensor
    """`[B, T]` bool, True on real frames."""
    encoder_mask: Tensor
    """`[B, S]` bool, True on real condition tokens."""

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentBatch:
        """Moves the tensors (floating ones cast to `dtype` when given)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)

        return LatentBatch(self.sample_ids, move(self.target_latents), move(self.context_latents),
                           move(self.encoder_hidden_states), self.frame_mask.to(device),
                           self.encoder_mask.to(device))


def _pad(tensors: Sequence[Tensor], length: int) -> tuple[Tensor, Tensor]:
    out = tensors[0].new_zeros((len(tensors), length, tensors[0].shape[-1]))
    mask = torch.zeros((len(tensors), length), dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def collate(samples: Sequence[LatentSample], *, num_frames: int | None = None,
            condition_length: int | None = None) -> LatentBatch:
    """Right-pads samples to the longest latent length and condition length in the batch, or to fixed lengths.

    The DiT attends to padded frames and padded condition tokens (as the official model does), so an item's
    output depends on its batch's padding. Fixed lengths (e.g. the dataset's longest) remove that dependence.

    Args:
        samples: The items.
        num_frames: Pad every item to this many frames (must be >= the longest item).
        condition_length: Pad every condition to this many tokens (must be >= the longest).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    frames = max(s.num_frames for s in samples)
    cond = max(int(s.encoder_hidden_states.shape[0]) for s in samples)
    if (num_frames is not None and num_frames < frames) or (condition_length is not None and condition_length < cond):
        raise ValueError(f"fixed lengths ({num_frames}, {condition_length}) are shorter than the batch ({frames}, "
                         f"{cond})")
    frames = num_frames or frames
    cond = condition_length or cond
    target, frame_mask = _pad([s.target_latents for s in samples], frames)
    context, _ = _pad([s.context_latents for s in samples], frames)
    encoder, encoder_mask = _pad([s.encoder_hidden_states for s in samples], cond)
    return LatentBatch(tuple(s.sample_id for s in samples), target, context, encoder, frame_mask, encoder_mask)


# --------------------------------------------------------------------------------------------- writing


@dataclass
class LatentShardWriter:
    """Streams samples into shards; `close()` writes `index.json` last, so a folder with an index is complete.

    Args:
        out_dir: Output folder (created).
        metadata: Extra index fields (checkpoint, dataset manifest, ...), JSON-serialisable.
        max_shard_bytes: Shard size at which a new shard starts.
    """

    out_dir: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    _records: list[dict[str, Any]] = field(default_factory=list, init=False)
    _pending: dict[str, Tensor] = field(default_factory=dict, init=False)
    _pending_bytes: int = field(default=0, init=False)
    _num_shards: int = field(default=0, init=False)
    _geometry: tuple[int, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, sample_id: str, target_latents: Tensor, context_latents: Tensor, encoder_hidden_states: Tensor,
            info: Mapping[str, Any] | None = None) -> None:
        """Adds one sample (tensors `[T, C]`, `[T, 2C]`, `[S, H]`) with free-form JSON `info`."""
        if not sample_id or "." in sample_id or any(r["id"] == sample_id for r in self._records):
            raise ValueError(f"sample id {sample_id!r} must be non-empty, dot-free and unique")
        t, c = target_latents.shape
        if context_latents.shape != (t, 2 * c) or encoder_hidden_states.ndim != 2:
            raise ValueError(f"{sample_id}: shapes target {list(target_latents.shape)}, context "
                             f"{list(context_latents.shape)}, condition {list(encoder_hidden_states.shape)} disagree")
        geometry = (int(c), int(encoder_hidden_states.shape[1]))
        if self._geometry is not None and geometry != self._geometry:
            raise ValueError(f"{sample_id}: geometry {geometry} differs from earlier samples {self._geometry}")
        self._geometry = geometry
        for name, tensor in zip(TENSOR_NAMES, (target_latents, context_latents, encoder_hidden_states)):
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{sample_id}: {name} contains NaN or Inf")
            self._pending[f"{sample_id}.{name}"] = tensor.detach().cpu().contiguous()
            self._pending_bytes += tensor.numel() * tensor.element_size()
        self._records.append({"id": sample_id, "shard": self._shard_name(self._num_shards), "num_frames": int(t),
                              "condition_length": int(encoder_hidden_states.shape[0]), **dict(info or {})})
        if self._pending_bytes >= self.max_shard_bytes:
            self._flush()

    def close(self) -> Path:
        """Writes the last shard and the index; returns the index path."""
        if not self._records:
            raise ValueError("no samples were added")
        self._flush()
        assert self._geometry is not None
        index = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "latent_channels": self._geometry[0],
                 "condition_width": self._geometry[1], **dict(self.metadata), "samples": self._records}
        path = self.out_dir / INDEX_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @staticmethod
    def _shard_name(i: int) -> str:
        return f"shard-{i:05d}.safetensors"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        path = self.out_dir / self._shard_name(self._num_shards)
        tmp = path.with_suffix(".tmp")
        save_file(self._pending, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        self._pending, self._pending_bytes = {}, 0
        self._num_shards += 1


# --------------------------------------------------------------------------------------------- reading


def read_index(path: str | Path) -> dict[str, Any]:
    """Reads and validates `index.json` (a folder may be given).

    Raises:
        CheckpointError: missing/unreadable index, wrong format/version, or a record without its shard.
    """
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(str(path), "latent index not found (run `encore dataset build` with a checkpoint)") \
            from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(str(path), f"not a readable JSON index ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != LATENT_FORMAT:
        raise CheckpointError(str(path), f"not an {LATENT_FORMAT} index")
    if index.get("version") != LATENT_VERSION:
        raise CheckpointError(str(path), f"unsupported version {index.get('version')} (expected {LATENT_VERSION})")
    if not index.get("samples"):
        raise CheckpointError(str(path), "the index lists no samples")
    for record in index["samples"]:
        if not (path.parent / record["shard"]).is_file():
            raise CheckpointError(str(path.parent / record["shard"]), f"shard of sample {record['id']!r} is missing")
    index["_root"] = str(path.parent)
    return index


class LatentDataset:
    """Random access to the samples of a latent folder; shards are memory-mapped on first use.

    Args:
        path: The folder or its `index.json`.
    """

    def __init__(self, path: str | Path) -> None:
        self.index = read_index(path)
        self.root = Path(self.index["_root"])
        self.records: list[dict[str, Any]] = list(self.index["samples"])
        self.latent_channels = int(self.index["latent_channels"])
        self.condition_width = int(self.index["condition_width"])
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> LatentSample:
        from safetensors import SafetensorError

        record = self.records[i]
        handle = self._open(record["shard"])
        sid = record["id"]
        try:
            tensors = [handle.get_tensor(f"{sid}.{name}") for name in TENSOR_NAMES]
        except SafetensorError as exc:
            raise CheckpointError(str(self.root / record["shard"]), f"sample {sid!r} is incomplete ({exc})") from exc
        sample = LatentSample(sid, *tensors)
        if sample.num_frames != record["num_frames"] or sample.target_latents.shape[1] != self.latent_channels:
            raise CheckpointError(str(self.root / record["shard"]), f"sample {sid!r} does not match the index")
        return sample

    def _open(self, shard: str) -> Any:
        from safetensors import SafetensorError, safe_open

        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.root / shard), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(str(self.root / shard), f"not a readable shard ({exc})") from exc
        return self._handles[shard]
