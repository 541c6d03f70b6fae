"""Mask builders and the sliding-window property of attention (zero gradient outside the band)."""

from __future__ import annotations

import pytest
import torch

from encore.nn.attention import Attention
from encore.nn.masks import additive_mask, attention_bias, keep_mask, key_padding, sliding_band
from encore.nn.rope import rope_tables


@pytest.mark.parametrize(("seq_len", "window"), [(1, 0), (7, 0), (10, 3), (40, 16), (5, 128)])
def test_sliding_band_is_abs_distance(seq_len: int, window: int) -> None:
    band = sliding_band(seq_len, window)
    assert band.shape == (seq_len, seq_len) and band.dtype == torch.bool
    for i in range(seq_len):
        for j in range(seq_len):
            assert bool(band[i, j]) == (abs(i - j) <= window)
    # Row widths: 2w+1 in the interior (the official band is 257 keys wide for w = 128).
    if seq_len > 2 * window:
        assert int(band[window].sum()) == 2 * window + 1


def test_sliding_band_rejects_negative_window() -> None:
    with pytest.raises(ValueError, match="window"):
        sliding_band(4, -1)


def test_keep_mask_combines_band_and_padding() -> None:
    pad = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = keep_mask(5, window=1, padding=pad)
    assert keep is not None and keep.shape == (2, 1, 5, 5)
    expected = sliding_band(5, 1)[None, None] & key_padding(pad)
    assert torch.equal(keep, expected)
    assert not keep[0, 0, :, 3:].any()  # padded keys never visible
    assert keep_mask(5) is None
    with pytest.raises(ValueError, match="length"):
        keep_mask(4, padding=pad)


def test_additive_mask_values() -> None:
    keep = torch.tensor([[True, False], [False, True]])
    for dtype in (torch.float32, torch.bfloat16):
        add = additive_mask(keep, dtype)
        assert add.dtype == dtype
        assert add[0, 0] == 0 and add[1, 1] == 0
        assert add[0, 1] == torch.finfo(dtype).min and add[1, 0] == torch.finfo(dtype).min
    cpu = torch.device("cpu")
    assert attention_bias(3, window=None, padding=None, dtype=torch.float32, device=cpu) is None


def test_sliding_attention_has_zero_gradient_outside_band() -> None:
    seq_len, window, hidden = 24, 5, 32
    attn = Attention(hidden, 4, 2, 8)
    x = torch.randn(1, seq_len, hidden, requires_grad=True)
    rope = rope_tables(seq_len, 8, 1e6, device=x.device, dtype=x.dtype)
    mask = attention_bias(seq_len, window=window, padding=None, dtype=x.dtype, device=x.device)
    out = attn(x, rope=rope, mask=mask)
    for i in (0, 7, seq_len - 1):
        (grad,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        per_pos = grad[0].abs().sum(-1)
        inside = torch.tensor([abs(i - j) <= window for j in range(seq_len)])
        assert torch.all(per_pos[~inside] == 0), f"query {i} leaks outside the band"
        assert torch.all(per_pos[inside] > 0), f"query {i} ignores keys inside the band"


def test_fully_masked_rows_use_uniform_attention() -> None:
    """Additive masks (official form) turn a row with no visible key into a uniform average, not NaN."""
    attn = Attention(16, 2, 1, 8)
    x = torch.randn(1, 6, 16)
    pad = torch.tensor([[1, 0, 0, 0, 0, 0]])
    mask = attention_bias(6, window=1, padding=pad, dtype=x.dtype, device=x.device)
    out = attn(x, mask=mask)
    assert torch.isfinite(out).all()


def test_band_wider_than_sequence_is_dropped() -> None:
    assert keep_mask(5, window=4) is None
    assert keep_mask(6, window=4) is not None
    pad = torch.tensor([[1, 1, 0]])
    assert torch.equal(keep_mask(3, window=8, padding=pad), key_padding(pad))
