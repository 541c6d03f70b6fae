"""AceStepDiT contract: shapes, odd lengths, cross-K/V cache equals recompute, input validation."""

from __future__ import annotations

import pytest
import torch

from encore.models.config import AceStepConfig
from encore.models.dit import AceStepDiT

CONFIG = AceStepConfig.tiny()


def _inputs(batch: int = 2, frames: int = 37, cond: int = 9) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, frames, 64, generator=gen), torch.rand(batch, generator=gen),
            torch.randn(batch, cond, CONFIG.enc_hidden_size, generator=gen),
            torch.randn(batch, frames, 128, generator=gen))


@pytest.mark.parametrize("frames", [1, 2, 37, 40])
def test_output_shape(frames: int) -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, t, enc, ctx = _inputs(frames=frames)
    with torch.no_grad():
        v = dit(x, t, t, enc, ctx)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()


def test_cross_kv_cache_equals_recompute_across_steps() -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, _, enc, ctx = _inputs()
    with torch.no_grad():
        cache = dit.precompute_cross_kv(enc)
        for t in (1.0, 0.75, 0.3):  # the same cache serves every denoising step
            tt = torch.full((2,), t)
            assert torch.equal(dit(x, tt, tt, None, ctx, cross_kv=cache), dit(x, tt, tt, enc, ctx))
        other = dit.precompute_cross_kv(enc + 1)
        tt = torch.full((2,), 0.5)
        assert not torch.equal(dit(x, tt, tt, None, ctx, cross_kv=other), dit(x, tt, tt, enc, ctx))


def test_scalar_timestep_broadcasts() -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, _, enc, ctx = _inputs()
    with torch.no_grad():
        a = dit(x, torch.tensor(0.5), torch.tensor(0.5), enc, ctx)
        b = dit(x, torch.full((2,), 0.5), torch.full((2,), 0.5), enc, ctx)
    assert torch.equal(a, b)


def test_time_embed_r_sees_t_minus_r() -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, _, enc, ctx = _inputs()
    t = torch.full((2,), 0.8)
    with torch.no_grad():
        same = dit(x, t, t, enc, ctx)
        diff = dit(x, t, t - 0.2, enc, ctx)
    assert not torch.equal(same, diff)


def test_batch_items_are_independent() -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, t, enc, ctx = _inputs()
    with torch.no_grad():
        both = dit(x, t, t, enc, ctx)
        first = dit(x[:1], t[:1], t[:1], enc[:1], ctx[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-6)


def test_input_validation() -> None:
    dit = AceStepDiT(CONFIG)
    x, t, enc, ctx = _inputs()
    with pytest.raises(ValueError, match="exactly one"):
        dit(x, t, t, None, ctx)
    with pytest.raises(ValueError, match="exactly one"):
        dit(x, t, t, enc, ctx, cross_kv=dit.precompute_cross_kv(enc))
    with pytest.raises(ValueError, match="context_latents"):
        dit(x, t, t, enc, ctx[:, :-1])
    with pytest.raises(ValueError, match="hidden_states"):
        dit(x[..., :32], t, t, enc, ctx)
    with pytest.raises(ValueError, match="condition batch"):
        dit(x, t, t, enc[:1], ctx)
    with pytest.raises(ValueError, match="timestep"):
        dit(x, torch.rand(3), t, enc, ctx)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        dit.precompute_cross_kv(enc[..., :8])


def test_bf16_runs_in_bf16_and_tracks_fp32() -> None:
    dit = AceStepDiT(CONFIG).eval()
    x, t, enc, ctx = _inputs()
    with torch.no_grad():
        ref = dit(x, t, t, enc, ctx)
        dit.to(torch.bfloat16)
        b = [z.to(torch.bfloat16) for z in (x, t, enc, ctx)]
        out = dit(b[0], b[1], b[1], b[2], b[3])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() <= 0.05 * max(1.0, ref.abs().max().item())
