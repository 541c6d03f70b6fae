"""Flow-matching objective: interpolation, target, per-item draws (shard invariance), masking, dropout."""

from __future__ import annotations

import pytest
import torch

from encore.training.objectives import (
    FlowDraw,
    draw_flow,
    flow_matching_loss,
    item_generators,
    masked_item_mse,
    mix_seed,
    noisy_latents,
    velocity_target,
)


def test_interpolation_endpoints_and_x0_recovery() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    assert torch.equal(noisy_latents(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(noisy_latents(x0, noise, torch.ones(3)), noise)
    t = torch.tensor([0.2, 0.5, 0.9])
    xt = noisy_latents(x0, noise, t)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(xt - t[:, None, None] * v, x0)  # x0 = x_t - t v (SPEC §9.1)


def test_draws_depend_only_on_the_items_position() -> None:
    whole = draw_flow(item_generators(5, 1, [0, 1, 2, 3], 0), 7, 4)
    part = draw_flow(item_generators(5, 1, [2, 3], 0), 7, 4)
    assert torch.equal(whole.timesteps[2:], part.timesteps)
    assert torch.equal(whole.noise[2:], part.noise)
    assert torch.equal(whole.keep_condition[2:], part.keep_condition)
    other_epoch = draw_flow(item_generators(5, 2, [2, 3], 0), 7, 4)
    assert not torch.equal(other_epoch.noise, part.noise)
    assert mix_seed(1, 2, 3) != mix_seed(1, 3, 2)


def test_timestep_distribution_and_condition_dropout_rate() -> None:
    draw = draw_flow(item_generators(0, 0, range(4000), 0), 1, 1, cfg_dropout=0.15)
    assert float(draw.timesteps.min()) > 0 and float(draw.timesteps.max()) < 1
    # max of two sigmoid(N(-0.4, 1)) draws: mean 0.535 (simulated with 1e6 samples)
    assert abs(float(draw.timesteps.mean()) - 0.535) < 0.02
    assert abs(1 - float(draw.keep_condition.float().mean()) - 0.15) < 0.02
    assert bool(draw_flow(item_generators(0, 0, range(50), 0), 1, 1, cfg_dropout=0.0).keep_condition.all())
    assert not bool(draw_flow(item_generators(0, 0, range(50), 0), 1, 1, cfg_dropout=1.0).keep_condition.any())
    with pytest.raises(ValueError):
        draw_flow(item_generators(0, 0, [0], 0), 1, 1, cfg_dropout=1.5)


def test_masked_mse_ignores_padding() -> None:
    pred = torch.zeros(2, 4, 3)
    target = torch.ones(2, 4, 3)
    target[1, 2:] = 100.0  # padded frames of item 1
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert masked_item_mse(pred, target, mask).tolist() == [1.0, 1.0]
    assert masked_item_mse(pred, torch.ones(2, 4, 3), None).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        masked_item_mse(pred, target, torch.zeros(2, 4, dtype=torch.bool))


def test_loss_uses_noise_minus_x0_and_null_condition_where_dropped() -> None:
    x0 = torch.randn(2, 6, 4)
    ehs = torch.randn(2, 3, 5)
    null = torch.full((1, 1, 5), 7.0)
    draw = FlowDraw(timesteps=torch.tensor([0.3, 0.8]), keep_condition=torch.tensor([True, False]),
                    noise=torch.randn(2, 6, 4))
    seen = {}

    def oracle(x_t, t, r, cond, ctx):  # predicts the exact velocity from x_t: (x_t - x0) / t
        seen["cond"], seen["r"] = cond, r
        return (x_t - x0) / t[:, None, None]

    loss = flow_matching_loss(oracle, x0, torch.zeros(2, 6, 8), ehs, null, draw)
    assert loss.shape == (2,) and float(loss.max()) < 1e-10
    assert torch.equal(seen["cond"][0], ehs[0]) and bool((seen["cond"][1] == 7.0).all())
    assert torch.equal(seen["r"], draw.timesteps)  # r = t (mean-flow off)
