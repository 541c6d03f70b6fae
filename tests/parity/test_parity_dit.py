"""Parity: `AceStepDiT` vs diffusers 0.42.1 `AceStepTransformer1DModel` at tiny size (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers.acestep_reference import build_reference, encore_from_reference, max_abs_diff

from encore.models.config import AceStepConfig

pytestmark = pytest.mark.parity


@pytest.mark.parametrize(
    "config",
    [
        AceStepConfig.tiny(num_hidden_layers=4),
        # XL-style geometry: encoder narrower than the decoder, 4:1 GQA.
        AceStepConfig.tiny(hidden_size=48, num_attention_heads=8, num_key_value_heads=2,
                           encoder_hidden_size=32, encoder_intermediate_size=64,
                           encoder_num_attention_heads=4, encoder_num_key_value_heads=2, fsq_dim=32),
    ],
    ids=["2b-like", "xl-like"],
)
def test_dit_matches_diffusers(config: AceStepConfig) -> None:
    ref = build_reference(config)
    ours = encore_from_reference(config, ref).decoder
    gen = torch.Generator().manual_seed(1)
    batch, frames, cond_len = 2, 81, 13  # odd T -> zero pad + crop; 41 patch tokens > window 16
    assert (frames + 1) // 2 > config.sliding_window + 1
    x = torch.randn(batch, frames, 64, generator=gen)
    ctx = torch.randn(batch, frames, 128, generator=gen)
    enc = torch.randn(batch, cond_len, config.enc_hidden_size, generator=gen)
    t = torch.tensor([0.875, 0.3])
    r = torch.tensor([0.875, 0.1])  # r != t exercises time_embed_r on a non-zero input
    with torch.no_grad():
        expected = ref["transformer"](x, t, r, enc, ctx, return_dict=False)[0]
        got = ours(x, t, r, enc, ctx)
        cached = ours(x, t, r, None, ctx, cross_kv=ours.precompute_cross_kv(enc))
    diff, tol = max_abs_diff(got, expected)
    print(f"DiT[{config.hidden_size}/{config.enc_hidden_size}] max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol
    assert torch.equal(cached, got)
