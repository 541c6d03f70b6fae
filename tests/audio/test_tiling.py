"""`encore.audio.tiling`: official tile plans, exact stitching with local operators, tiled ≈ full on the tiny VAE.

Tolerance for the tiny VAE: max |tiled - full| <= 1e-5 x max |full| (fp32). With the overlap wider than the
receptive field the cores see identical inputs, so only conv-algorithm rounding differs.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from encore.audio.tiling import (
    DECODE_CHUNK_FRAMES,
    DECODE_OVERLAP_FRAMES,
    Tile,
    decode_tiled,
    encode_tiled,
    plan_tiles,
    tiled_decode,
    tiled_encode,
)
from encore.models.vae import OobleckVAE, VAEConfig

REL_TOL = 1e-5


def test_official_decode_plan():
    tiles = plan_tiles(1000, DECODE_CHUNK_FRAMES, DECODE_OVERLAP_FRAMES)
    assert tiles == [Tile(0, 384, 0, 448), Tile(384, 768, 320, 832), Tile(768, 1000, 704, 1000)]
    assert plan_tiles(512, 512, 64) == [Tile(0, 512, 0, 512)]  # T <= chunk: one direct decode
    assert tiles[1].front == 64 and tiles[1].back == 64 and tiles[2].back == 0


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="greater than"):
        plan_tiles(100, 20, 10)
    with pytest.raises(ValueError):
        plan_tiles(0, 20, 2)
    with pytest.raises(ValueError):
        plan_tiles(100, 20, -1)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 3000), overlap=st.integers(0, 50), extra=st.integers(1, 400))
def test_plan_properties(length, overlap, extra):
    chunk = 2 * overlap + extra
    tiles = plan_tiles(length, chunk, overlap)
    assert tiles[0].core_start == 0 and tiles[-1].core_end == length
    for a, b in itertools.pairwise(tiles):
        assert a.core_end == b.core_start  # cores partition [0, length) in order
    for t in tiles:
        assert 0 <= t.win_start <= t.core_start < t.core_end <= t.win_end <= length
        assert t.win_end - t.win_start <= chunk
        assert t.front == min(overlap, t.core_start)
        assert t.back == min(overlap, length - t.core_end) or len(tiles) == 1
    if length > chunk:
        assert len(tiles) == math.ceil(length / extra)


def _local_decoder(radius: int, hop: int):
    """A decoder whose output frame depends only on input frames within `radius` (zero padded)."""
    kernel = torch.linspace(0.5, 1.5, 2 * radius + 1, dtype=torch.float64).repeat(3, 1, 1)

    def decode(z: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(z, kernel, padding=radius, groups=3)
        return y.repeat_interleave(hop, dim=-1) + torch.arange(hop, dtype=z.dtype).repeat(z.shape[-1])
    return decode


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 300), radius=st.integers(0, 6), extra=st.integers(1, 40), hop=st.integers(1, 5))
def test_tiled_decode_exact_for_local_operator(frames, radius, extra, hop):
    overlap = radius + 1
    z = torch.randn(2, 3, frames, dtype=torch.float64)
    decode = _local_decoder(radius, hop)
    out = tiled_decode(decode, z, hop_samples=hop, chunk_frames=2 * overlap + extra, overlap_frames=overlap)
    torch.testing.assert_close(out, decode(z), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 120), tail=st.integers(0, 3), radius=st.integers(0, 8),
       extra=st.integers(1, 12), hop=st.integers(1, 4))
def test_tiled_encode_exact_for_local_operator(frames, tail, radius, extra, hop):
    kernel = torch.linspace(-1.0, 1.0, 2 * radius + 1, dtype=torch.float64).view(1, 1, -1)

    def encode(x: torch.Tensor) -> torch.Tensor:  # local filter, then one feature per whole hop
        y = F.conv1d(x.reshape(-1, 1, x.shape[-1]), kernel, padding=radius).reshape(x.shape)
        return F.avg_pool1d(y, hop)

    overlap = hop * (radius // hop + 1)  # whole frames covering the filter radius
    tail = min(tail, hop - 1)
    wav = torch.randn(2, 2, frames * hop + tail, dtype=torch.float64)
    out = tiled_encode(encode, wav, hop_samples=hop, chunk_samples=2 * overlap + extra * hop,
                       overlap_samples=overlap)
    assert out.shape[-1] == wav.shape[-1] // hop
    torch.testing.assert_close(out, encode(wav), rtol=1e-12, atol=1e-12)


def test_tiled_encode_requires_frame_aligned_sizes():
    with pytest.raises(ValueError, match="multiple of hop_samples"):
        tiled_encode(lambda x: x, torch.zeros(1, 1, 100), hop_samples=4, chunk_samples=30, overlap_samples=8)


def test_wrong_tile_length_is_reported():
    with pytest.raises(ValueError, match="expected"):
        tiled_decode(lambda z: z, torch.zeros(1, 2, 10), hop_samples=2, chunk_frames=4, overlap_frames=1)


@pytest.fixture(scope="module")
def tiny_vae() -> OobleckVAE:
    gen = torch.Generator().manual_seed(0)
    vae = OobleckVAE(VAEConfig.tiny())
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return vae.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


def test_tiny_vae_tiled_decode_matches_full(tiny_vae):
    latents = torch.randn(1, tiny_vae.config.latent_channels, 70)
    calls = []
    with torch.no_grad():
        full = tiny_vae.decode(latents)
        # The tiny decoder's receptive field is about 7 frames (measured: overlap 6 -> 7e-3, 8 -> 6e-7).
        tiled = decode_tiled(tiny_vae, latents, chunk_frames=40, overlap_frames=12,
                             on_tile=lambda i, n: calls.append((i, n)))
        too_narrow = decode_tiled(tiny_vae, latents, chunk_frames=20, overlap_frames=2)
    assert tiled.shape == full.shape
    assert calls == [(i, 5) for i in range(5)]
    assert _rel_err(tiled, full) <= REL_TOL
    assert _rel_err(too_narrow, full) > 100 * REL_TOL  # the comparison is sensitive to seams


def test_tiny_vae_tiled_encode_matches_full(tiny_vae):
    cfg = tiny_vae.config
    wav = 0.3 * torch.randn(1, cfg.audio_channels, 36 * cfg.hop_samples + cfg.hop_samples // 2)
    with torch.no_grad():
        full = tiny_vae.encode(wav)
        # The tiny encoder's receptive field is about 5 frames (measured: overlap 4 -> 3e-2, 6 -> 8e-7).
        tiled = encode_tiled(tiny_vae, wav, chunk_s=cfg.frames_to_seconds(26), overlap_s=cfg.frames_to_seconds(8))
    assert tiled.mean.shape == full.mean.shape == (1, cfg.latent_channels, 36)
    assert _rel_err(tiled.mean, full.mean) <= REL_TOL
    assert _rel_err(tiled.std, full.std) <= REL_TOL
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert _rel_err(tiled.sample(gen_a), full.sample(gen_b)) <= REL_TOL


def test_short_input_is_not_tiled(tiny_vae):
    latents = torch.randn(1, tiny_vae.config.latent_channels, 12)
    with torch.no_grad():
        torch.testing.assert_close(decode_tiled(tiny_vae, latents), tiny_vae.decode(latents), rtol=0, atol=0)
