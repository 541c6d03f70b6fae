"""Overlap-discard tiling for long VAE encodes and decodes (official `tiled_encode` / `tiled_decode`, SPEC §4).

`plan_tiles` is pure index math. `tiled_decode` / `tiled_encode` run any decode/encode callable window by
window, discard each window's overlap and concatenate the cores. `decode_tiled` / `encode_tiled` apply them to
an `OobleckVAE` with the official chunk sizes. With an overlap wider than the network's receptive field the
result equals the untiled one up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from encore.models.vae import DiagonalGaussian, OobleckVAE

DECODE_CHUNK_FRAMES = 512
"""Official decode chunk in latent frames (`ACESTEP_VAE_DECODE_CHUNK_SIZE` default)."""
DECODE_OVERLAP_FRAMES = 64
"""Official decode overlap per side in latent frames."""
ENCODE_CHUNK_S = 30.0
"""Official encode chunk in seconds (15 s on GPUs with <= 8 GB)."""
ENCODE_OVERLAP_S = 2.0
"""Official encode overlap per side in seconds."""

TileCallback = Callable[[int, int], None]
"""`(tile_index, num_tiles)` after each tile; raise (e.g. `Cancelled`) from it to stop between tiles."""


@dataclass(frozen=True)
class Tile:
    """One window of a tiled pass, in input units (latent frames for decode, samples for encode).

    `[core_start, core_end)` is kept; `[win_start, win_end)` is what the network sees.
    """

    core_start: int
    core_end: int
    win_start: int
    win_end: int

    @property
    def front(self) -> int:
        """Overlap before the core (discarded)."""
        return self.core_start - self.win_start

    @property
    def back(self) -> int:
        """Overlap after the core (discarded)."""
        return self.win_end - self.core_end


def plan_tiles(length: int, chunk: int, overlap: int) -> list[Tile]:
    """Splits `[0, length)` the official way.

    If `length <= chunk` there is one tile covering everything. Otherwise `stride = chunk - 2 * overlap`, there
    are `ceil(length / stride)` cores `[i * stride, min((i + 1) * stride, length))`, and each window extends its
    core by `overlap` on both sides, clipped to `[0, length)`. Windows are at most `chunk` long.

    Raises:
        ValueError: `length < 1`, `overlap < 0`, or `chunk <= 2 * overlap` while tiling is needed.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if length <= chunk:
        return [Tile(0, length, 0, length)]
    stride = chunk - 2 * overlap
    if stride <= 0:
        raise ValueError(f"chunk ({chunk}) must be greater than 2 * overlap ({2 * overlap})")
    tiles = []
    for i in range(math.ceil(length / stride)):
        core_start, core_end = i * stride, min((i + 1) * stride, length)
        tiles.append(Tile(core_start, core_end, max(0, core_start - overlap), min(length, core_end + overlap)))
    return tiles


def _to(t: Tensor, device: torch.device | None) -> Tensor:
    return t if device is None else t.to(device)


def tiled_decode(decode: Callable[[Tensor], Tensor], latents: Tensor, *, hop_samples: int,
                 chunk_frames: int = DECODE_CHUNK_FRAMES, overlap_frames: int = DECODE_OVERLAP_FRAMES,
                 out_device: torch.device | None = None, on_tile: TileCallback | None = None) -> Tensor:
    """Decodes `latents [B, D, T]` window by window.

    Args:
        decode: `[B, D, t] -> [B, C, t * hop_samples]`.
        latents: `[B, D, T]`.
        hop_samples: Samples per latent frame.
        chunk_frames / overlap_frames: Window length and per-side overlap in frames (official 512 / 64).
        out_device: Move each decoded tile here before stitching (e.g. CPU to bound GPU memory).
        on_tile: Called after each tile.

    Returns:
        `[B, C, T * hop_samples]`.

    Raises:
        ValueError: a tile came back with the wrong length.
    """
    if latents.ndim != 3:
        raise ValueError(f"latents must have shape [B, D, T], got {list(latents.shape)}")
    tiles = plan_tiles(latents.shape[-1], chunk_frames, overlap_frames)
    pieces = []
    for i, tile in enumerate(tiles):
        wav = decode(latents[..., tile.win_start:tile.win_end])
        expected = (tile.win_end - tile.win_start) * hop_samples
        if wav.shape[-1] != expected:
            raise ValueError(f"decode returned {wav.shape[-1]} samples for {tile.win_end - tile.win_start} frames; "
                             f"expected {expected} (hop {hop_samples})")
        start = tile.front * hop_samples
        pieces.append(_to(wav[..., start:start + (tile.core_end - tile.core_start) * hop_samples], out_device))
        if on_tile is not None:
            on_tile(i, len(tiles))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


def tiled_encode(encode: Callable[[Tensor], Tensor], wav: Tensor, *, hop_samples: int, chunk_samples: int,
                 overlap_samples: int, out_device: torch.device | None = None,
                 on_tile: TileCallback | None = None) -> Tensor:
    """Encodes `wav [B, C, S]` window by window into frame-aligned features `[B, F, S // hop_samples]`.

    Args:
        encode: `[B, C, s] -> [B, F, s // hop_samples]` (e.g. `OobleckVAE.encode_moments`).
        wav: `[B, C, S]`.
        hop_samples: Samples per latent frame.
        chunk_samples / overlap_samples: Window length and per-side overlap; both multiples of `hop_samples`
            so every window starts on a frame boundary.
        out_device: Move each encoded tile here before stitching.
        on_tile: Called after each tile.

    Raises:
        ValueError: sizes not multiples of the hop, or a tile of the wrong length.
    """
    if wav.ndim != 3:
        raise ValueError(f"wav must have shape [B, C, S], got {list(wav.shape)}")
    for name, value in (("chunk_samples", chunk_samples), ("overlap_samples", overlap_samples)):
        if value % hop_samples:
            raise ValueError(f"{name}={value} must be a multiple of hop_samples={hop_samples}")
    num_samples = wav.shape[-1]
    tiles = plan_tiles(num_samples, chunk_samples, overlap_samples)
    pieces = []
    for i, tile in enumerate(tiles):
        feats = encode(wav[..., tile.win_start:tile.win_end])
        expected = (tile.win_end - tile.win_start) // hop_samples
        if feats.shape[-1] != expected:
            raise ValueError(f"encode returned {feats.shape[-1]} frames for {tile.win_end - tile.win_start} "
                             f"samples; expected {expected} (hop {hop_samples})")
        # Window and core starts are frame-aligned, so core frames are exact; only the last core may end
        # mid-frame, and its partial frame is dropped just as an untiled encode drops it.
        start = tile.front // hop_samples
        stop = start + tile.core_end // hop_samples - tile.core_start // hop_samples
        pieces.append(_to(feats[..., start:stop], out_device))
        if on_tile is not None:
            on_tile(i, len(tiles))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


# --------------------------------------------------------------------------- OobleckVAE wrappers


def decode_tiled(vae: OobleckVAE, latents: Tensor, *, chunk_frames: int = DECODE_CHUNK_FRAMES,
                 overlap_frames: int = DECODE_OVERLAP_FRAMES, out_device: torch.device | None = None,
                 on_tile: TileCallback | None = None) -> Tensor:
    """`vae.decode` with the official 512/64-frame overlap-discard tiling: `[B, D, T] -> [B, C, T * hop]`."""
    return tiled_decode(vae.decode, latents, hop_samples=vae.config.hop_samples, chunk_frames=chunk_frames,
                        overlap_frames=overlap_frames, out_device=out_device, on_tile=on_tile)


def encode_tiled(vae: OobleckVAE, wav: Tensor, *, chunk_s: float = ENCODE_CHUNK_S,
                 overlap_s: float = ENCODE_OVERLAP_S, on_tile: TileCallback | None = None) -> DiagonalGaussian:
    """`vae.encode` with the official 30 s / 2 s tiling: `[B, C, S] -> posterior over [B, D, S // hop]`.

    Tiling runs on the encoder moments, so `.sample(generator)` draws one noise tensor for the whole clip (the
    same draw as an untiled encode). Chunk and overlap are rounded down to whole latent frames.
    """
    cfg = vae.config
    hop = cfg.hop_samples
    chunk = cfg.seconds_to_frames(chunk_s) * hop
    overlap = cfg.seconds_to_frames(overlap_s) * hop
    moments = tiled_encode(vae.encode_moments, wav, hop_samples=hop, chunk_samples=chunk,
                           overlap_samples=overlap, on_tile=on_tile)
    return DiagonalGaussian(moments)
