"""Rotary position embedding as pure functions (Qwen3 default RoPE, rotate-half convention, SPEC §3).

Tables are computed on the fly in float32 from (positions, head_dim, theta) and cast to the activation
dtype, so nothing here is a module buffer that a `.to(dtype)` could silently downcast.
"""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float, *, device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies `1 / theta^(2j / head_dim)` for j = 0 .. head_dim/2 - 1, float32 `[head_dim/2]`."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotate-half RoPE, got {head_dim}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / head_dim
    return 1.0 / (theta**exponent)


def rope_tables(
    seq_len: int, head_dim: int, theta: float, *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables for positions `0 .. seq_len-1`.

    Args:
        seq_len: Number of positions (each module restarts at 0; positions are never offset).
        head_dim: Rotated width (the full head dim).
        theta: RoPE base.
        device: Where to build the tables.
        dtype: Activation dtype the tables are cast to after the float32 computation.

    Returns:
        `(cos, sin)`, each `[seq_len, head_dim]` with the half-frequency table repeated twice
        (`cat(freqs, freqs)`), in `dtype`.
    """
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, rope_inv_freq(head_dim, theta, device=device))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[a, b] -> [-b, a]` on the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates `x` `[B, heads, L, D]` by tables `[L, D]`: `x * cos + rotate_half(x) * sin` (in x's dtype)."""
    return x * cos + rotate_half(x) * sin
