"""Guidance: CFG/APG/ADG against hand-computed examples, the interval rule and the wrappers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from encore.sampling.guidance import (
    MomentumBuffer,
    adg,
    apg,
    apg_rule,
    cfg,
    in_guidance_interval,
    make_rule,
    with_guidance,
    with_paired_guidance,
)
from encore.sampling.schedules import turbo_timesteps
from encore.sampling.solvers import sample_euler


def _col(*values: float) -> Tensor:
    """A [1, T, 1] tensor (batch 1, time T, one channel)."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1)


def test_cfg_formula() -> None:
    out = cfg(_col(2.0, 0.0), _col(1.0, 1.0), 3.0)
    assert out.flatten().tolist() == [4.0, -2.0]


def test_apg_removes_guidance_parallel_to_cond() -> None:
    # d = (3, 4), |d| = 5 > 2.5 -> d = (1.5, 2), which is parallel to v_c: the update vanishes.
    out = apg(_col(3.0, 4.0), _col(0.0, 0.0), 7.0)
    torch.testing.assert_close(out, _col(3.0, 4.0), rtol=0, atol=1e-12)


def test_apg_orthogonal_part_and_momentum_by_hand() -> None:
    buffer = MomentumBuffer()
    # Step 1: d = (1, 1), |d| < 2.5; u = (1, 0): d_orth = (0, 1); v = (1, 0) + 2·(0, 1).
    out1 = apg(_col(1.0, 0.0), _col(0.0, -1.0), 3.0, buffer=buffer)
    assert out1.flatten().tolist() == [1.0, 2.0]
    # Step 2: d = 0, run = 0 + (−0.75)·(1, 1) = (−0.75, −0.75); d_orth = (0, −0.75); v = (1, −1.5).
    out2 = apg(_col(1.0, 0.0), _col(1.0, 0.0), 3.0, buffer=buffer)
    assert out2.flatten().tolist() == [1.0, -1.5]
    assert buffer.running is not None and buffer.running.flatten().tolist() == [-0.75, -0.75]


def test_apg_norm_clip_by_hand() -> None:
    # v_c = (0, 1) along time; d = (10, 0) is orthogonal to it; clipped to norm 2.5 -> (2.5, 0).
    out = apg(_col(0.0, 1.0), _col(-10.0, 1.0), 2.0)
    assert out.flatten().tolist() == [2.5, 1.0]
    # Without the clip the full difference goes through.
    out = apg(_col(0.0, 1.0), _col(-10.0, 1.0), 2.0, norm_threshold=0.0)
    assert out.flatten().tolist() == [10.0, 1.0]


def test_apg_norm_is_over_time_axis_per_channel() -> None:
    # Two channels: channel 0 has a big difference (clipped), channel 1 a small one (kept).
    v_c = torch.zeros(1, 2, 2, dtype=torch.float64)
    v_c[0, 1, :] = 1.0  # both channels point along time index 1
    v_u = v_c.clone()
    v_u[0, 0, 0] = -6.0  # channel 0: d = (6, 0)
    v_u[0, 0, 1] = -1.0  # channel 1: d = (1, 0)
    out = apg(v_c, v_u, 2.0)
    assert out[0, :, 0].tolist() == [2.5, 1.0]
    assert out[0, :, 1].tolist() == [1.0, 1.0]


def test_apg_keeps_input_dtype_and_projects_in_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    v_c = torch.randn(2, 16, 8, generator=gen).to(torch.bfloat16)
    v_u = torch.randn(2, 16, 8, generator=gen).to(torch.bfloat16)
    out = apg(v_c, v_u, 5.0, buffer=MomentumBuffer())
    assert out.dtype == torch.bfloat16
    ref = apg(v_c.double(), v_u.double(), 5.0, buffer=MomentumBuffer())
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)


def test_adg_rotation_by_hand() -> None:
    # σ = 1, x = 0: x̂_c = −v_c = (1, 0), x̂_u = −v_u = (0, 1), θ = π/2.
    x = torch.zeros(1, 1, 2, dtype=torch.float64)
    v_c = torch.tensor([[[-1.0, 0.0]]], dtype=torch.float64)
    v_u = torch.tensor([[[0.0, -1.0]]], dtype=torch.float64)
    scale = 1.5
    w = 0.5 + 1e-3
    theta_new = min(w * math.pi / 2, 3.14 / 6)  # clipped to the official literal 3.14/6
    # perp of d = (1, −1) w.r.t. (0, 1) is (1, −1 + 1/(1 + 1e-8)); sin θ = 1.
    perp = (1.0, -1.0 + 1.0 / (1.0 + 1e-8))
    x_new = (math.cos(theta_new) * 1.0 + perp[0] * math.sin(theta_new), perp[1] * math.sin(theta_new))
    out = adg(x, v_c, v_u, 1.0, scale)
    torch.testing.assert_close(out.flatten(), -torch.tensor(x_new, dtype=torch.float64), rtol=0, atol=1e-7)


def test_adg_unclipped_small_angle_by_hand() -> None:
    # θ = 0.2 rad between x̂_c and x̂_u, scale 1.2 -> w = 0.201, θ' = w·θ (below the clip).
    sigma = 0.5
    x = torch.tensor([[[0.3, -0.2]]], dtype=torch.float64)
    a = 0.2
    x0_c = torch.tensor([1.0, 0.0], dtype=torch.float64)
    x0_u = torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64) * 2.0
    v_c = ((x[0, 0] - x0_c) / sigma).view(1, 1, 2)
    v_u = ((x[0, 0] - x0_u) / sigma).view(1, 1, 2)
    w = 0.2 + 1e-3
    d = x0_c - x0_u
    perp = d - (d @ x0_u) / (x0_u @ x0_u + 1e-8) * x0_u
    x_new = math.cos(w * a) * x0_c + perp * math.sin(w * a) / math.sin(a)
    want = (x[0, 0] - x_new) / sigma
    out = adg(x, v_c, v_u, torch.tensor(sigma, dtype=torch.float64), 1.2)
    torch.testing.assert_close(out.flatten(), want, rtol=0, atol=1e-6)


def test_adg_shapes_and_dtype() -> None:
    gen = torch.Generator().manual_seed(1)
    x, v_c, v_u = (torch.randn(2, 5, 64, generator=gen).to(torch.bfloat16) for _ in range(3))
    out = adg(x, v_c, v_u, torch.tensor([0.5, 0.7]), 7.0)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_interval_compares_timestep_itself() -> None:
    assert in_guidance_interval(0.9, 0.5, 1.0)
    assert not in_guidance_interval(0.2, 0.5, 1.0)  # diffusers (1 − t = 0.8) would say yes
    assert in_guidance_interval(torch.tensor(0.5), 0.5, 0.5)


def test_with_guidance_skips_uncond_outside_interval() -> None:
    calls: list[str] = []

    def cond_fn(x: Tensor, t: Tensor, i: int) -> Tensor:
        calls.append("c")
        return torch.ones_like(x)

    def uncond_fn(x: Tensor, t: Tensor, i: int) -> Tensor:
        calls.append("u")
        return torch.zeros_like(x)

    fn = with_guidance(cond_fn, uncond_fn, make_rule("cfg", 2.0), interval=(0.5, 1.0))
    assert torch.equal(fn(torch.zeros(1, 2, 2), torch.tensor(0.9), 0), torch.full((1, 2, 2), 2.0))
    assert torch.equal(fn(torch.zeros(1, 2, 2), torch.tensor(0.3), 1), torch.ones(1, 2, 2))
    assert calls == ["c", "u", "c"]


def test_paired_guidance_runs_pair_only_inside_interval_when_cond_fn_given() -> None:
    pairs, conds = 0, 0

    def pair_fn(x: Tensor, t: Tensor, i: int) -> tuple[Tensor, Tensor]:
        nonlocal pairs
        pairs += 1
        return torch.full_like(x, 2.0), torch.full_like(x, 1.0)

    def cond_fn(x: Tensor, t: Tensor, i: int) -> Tensor:
        nonlocal conds
        conds += 1
        return torch.full_like(x, 2.0)

    x = torch.zeros(1, 3, 2)
    # Turbo shift-1 times 1, .875, ..., .125: five of them lie in [0.5, 1].
    sample_euler(
        with_paired_guidance(pair_fn, apg_rule(3.0), interval=(0.5, 1.0), cond_fn=cond_fn),
        x,
        turbo_timesteps(1.0),
    )
    assert (pairs, conds) == (5, 3)
    pairs = 0
    # Without cond_fn the pair runs every step; the difference is parallel to v_cond, so APG leaves v = 2.
    out = sample_euler(
        with_paired_guidance(pair_fn, apg_rule(3.0), interval=(0.5, 1.0)), x, turbo_timesteps(1.0)
    )
    assert pairs == 8
    torch.testing.assert_close(out, torch.full_like(x, -2.0))


def test_make_rule_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        make_rule("pag", 2.0)  # type: ignore[arg-type]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apg_matches_diffusers_normalized_guidance(dtype: torch.dtype) -> None:
    guiders = pytest.importorskip("diffusers.guiders.adaptive_projected_guidance")
    gen = torch.Generator().manual_seed(5)
    ours, theirs = MomentumBuffer(), guiders.MomentumBuffer(momentum=-0.75)
    for _ in range(4):
        v_c = (torch.randn(2, 40, 64, generator=gen) * 2).to(dtype)
        v_u = (torch.randn(2, 40, 64, generator=gen) * 2).to(dtype)
        got = apg(v_c, v_u, 7.0, buffer=ours)
        want = guiders.normalized_guidance(
            v_c,
            v_u,
            7.0 - 1.0,
            theirs,
            eta=0.0,
            norm_threshold=2.5,
            use_original_formulation=True,
            norm_dim=(1,),
        )
        assert torch.equal(got, want)
