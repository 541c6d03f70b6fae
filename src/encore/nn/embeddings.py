"""Sinusoidal timestep features (cos-first, SPEC §8.1)."""

from __future__ import annotations

import math

import torch


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Cos-first sinusoidal embedding of (already scaled) timesteps.

    `freqs_j = exp(-ln(max_period) * j / (dim/2))`, `args = t (as float32) * freqs`,
    `emb = cat(cos(args), sin(args))`.

    Args:
        t: `[B]` timesteps in any float dtype (scaling such as `t * 1000` is the caller's, in t's dtype).
        dim: Even embedding width.
        max_period: Longest period.

    Returns:
        float32 `[B, dim]`.
    """
    if dim % 2:
        raise ValueError(f"sinusoid dim must be even, got {dim}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t[:, None].to(torch.float32) * torch.exp(exponent)[None, :]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
