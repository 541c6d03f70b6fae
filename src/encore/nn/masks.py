"""Attention-mask builders as pure functions (SPEC §3 "Masks").

Boolean helpers return *keep* masks (True = may attend). `additive_mask` turns a keep mask into the official
additive form (0 kept, `finfo(dtype).min` masked). The additive form is what the official SDPA path uses and
it differs from a boolean mask on fully masked rows (those become uniform attention instead of NaN), which
happens for padded lyric queries far from any valid key; models therefore use the additive form.
"""

from __future__ import annotations

import torch


def sliding_band(seq_len: int, window: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Bidirectional band keep mask `|i - j| <= window`, bool `[seq_len, seq_len]` (i = query, j = key)."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    idx = torch.arange(seq_len, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """Key-padding keep mask from a `[B, L]` 1/0 (or bool) mask -> bool `[B, 1, 1, L]`."""
    if mask.ndim != 2:
        raise ValueError(f"padding mask must be [B, L], got shape {tuple(mask.shape)}")
    return mask.to(torch.bool)[:, None, None, :]


def keep_mask(
    seq_len: int,
    *,
    window: int | None = None,
    padding: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Combines an optional sliding band and an optional key-padding mask.

    Args:
        seq_len: Query and key length (self-attention).
        window: Band half-width, or None for full attention.
        padding: Optional `[B, seq_len]` 1/0 mask of valid keys.
        device: Device of the band.

    Returns:
        Bool keep mask broadcastable to `[B, 1, L, L]` (`[1, 1, L, L]` without padding), or None when nothing
        is masked. A band at least as wide as the sequence masks nothing and is dropped (an all-zero additive
        mask changes no value, and leaving it out lets SDPA pick an unmasked kernel).
    """
    keep: torch.Tensor | None = None
    if window is not None and seq_len - 1 > window:
        keep = sliding_band(seq_len, window, device=device)[None, None]
    if padding is not None:
        if padding.shape[-1] != seq_len:
            raise ValueError(f"padding mask length {padding.shape[-1]} != sequence length {seq_len}")
        pad = key_padding(padding)
        keep = pad if keep is None else keep & pad
    return keep


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool keep mask -> additive mask in `dtype`: 0 where kept, `finfo(dtype).min` where masked."""
    out = torch.full(keep.shape, torch.finfo(dtype).min, dtype=dtype, device=keep.device)
    return out.masked_fill(keep, 0.0)


def attention_bias(
    seq_len: int,
    *,
    window: int | None,
    padding: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive mask `[B|1, 1, L, L]` in `dtype` for a self-attention layer, or None for no masking."""
    keep = keep_mask(seq_len, window=window, padding=padding, device=device)
    return None if keep is None else additive_mask(keep, dtype)
