"""Solvers: Euler/SDE step arithmetic (official bf16 loop), hooks, callbacks and cancellation."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
from torch import Tensor

from encore.errors import Cancelled
from encore.sampling.schedules import linear_renoise_times, shifted_linear_timesteps, turbo_timesteps
from encore.sampling.solvers import (
    StepInfo,
    cover_switch_step,
    injection_steps,
    repaint_injection,
    sample_euler,
    sample_sde,
    switch_velocity_at,
)


def _toy_velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
    # Nonlinear in x and t so step-size rounding shows up in the result.
    return torch.sin(x * 3.0) * t.to(x.dtype) + 0.1 * (step_index + 1)


def _official_turbo_ode(x: Tensor, schedule: list[float], dtype: torch.dtype) -> Tensor:
    """SPEC §9.3/§9.5 loop written out: bf16 schedule, `dt * ones(dtype)`, final `x − v·t_last`."""
    t_sched = torch.tensor(schedule, dtype=dtype)
    n = len(t_sched)
    for i in range(n):
        cur = t_sched[i].item()
        t_cur = cur * torch.ones((x.shape[0],), dtype=dtype)
        v = _toy_velocity(x, t_sched[i], i)
        if i == n - 1:
            return x - v * t_cur.unsqueeze(-1).unsqueeze(-1)
        dt = cur - t_sched[i + 1].item()
        x = x - v * (dt * torch.ones((x.shape[0],), dtype=dtype).unsqueeze(-1).unsqueeze(-1))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_turbo_euler_matches_official_loop_bitwise(dtype: torch.dtype) -> None:
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    schedule = turbo_timesteps(3.0, dtype=dtype)
    got = sample_euler(_toy_velocity, x, schedule)
    want = _official_turbo_ode(x, turbo_timesteps(3.0, dtype=torch.float64).tolist(), dtype)
    assert got.dtype == dtype
    assert torch.equal(got, want)


def test_base_euler_matches_explicit_pairs_bitwise() -> None:
    dtype = torch.bfloat16
    x = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(2)).to(dtype)
    t = shifted_linear_timesteps(4, 3.0, dtype=dtype)
    want = x.clone()
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t)):
        v = _toy_velocity(want, t_cur, i)
        want = want - v * ((t_cur - t_next) * torch.ones((1,), dtype=dtype).view(1, 1, 1))
    assert torch.equal(sample_euler(_toy_velocity, x, t), want)


def _straight_path(x0: Tensor):
    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        # Exact velocity of x_t = t·ε + (1−t)·x0 towards x0.
        return (x - x0) / t.to(x.dtype)

    return velocity


@pytest.mark.parametrize("schedule", [turbo_timesteps(2.0), shifted_linear_timesteps(6, 3.0)])
def test_euler_with_exact_velocity_lands_on_x0(schedule: Tensor) -> None:
    x0 = torch.randn(2, 7, 4, dtype=torch.float64)
    noise = torch.randn(2, 7, 4, dtype=torch.float64)
    got = sample_euler(_straight_path(x0), noise, schedule.double())
    torch.testing.assert_close(got, x0, rtol=0, atol=1e-12)


def test_velocity_sees_schedule_entries_and_step_indices() -> None:
    seen: list[tuple[float, int]] = []

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        assert t.dim() == 0
        seen.append((t.item(), step_index))
        return torch.zeros_like(x)

    sample_euler(velocity, torch.zeros(1, 2, 2), shifted_linear_timesteps(3))
    assert seen == [(1.0, 0), (pytest.approx(2 / 3), 1), (pytest.approx(1 / 3), 2)]
    seen.clear()
    sample_euler(velocity, torch.zeros(1, 2, 2), turbo_timesteps(1.0))
    assert [s[1] for s in seen] == list(range(8)) and seen[-1][0] == 0.125


def test_sde_is_reproducible_from_generator_and_renoises_as_documented() -> None:
    x = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(3))
    schedule = turbo_timesteps(3.0)
    states: list[Tensor] = []

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        states.append(x.clone())
        return _toy_velocity(x, t, step_index)

    out1 = sample_sde(velocity, x, schedule, generator=torch.Generator().manual_seed(9))
    first_states = list(states)
    states.clear()
    out2 = sample_sde(velocity, x, schedule, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out1, out2)
    # State at step 1 = t_1·ε + (1−t_1)·x0̂ with ε the generator's first draw.
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    x0_hat = x - _toy_velocity(x, schedule[0], 0) * schedule[0]
    t1 = schedule[1].item()
    torch.testing.assert_close(first_states[1], t1 * eps + (1 - t1) * x0_hat, rtol=0, atol=0)
    out3 = sample_sde(velocity, x, schedule, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(out1, out3)


def test_sde_base_uses_given_renoise_times() -> None:
    x0 = torch.randn(1, 3, 2, dtype=torch.float64)
    noise = torch.randn(1, 3, 2, dtype=torch.float64)
    schedule = shifted_linear_timesteps(4, 3.0, dtype=torch.float64)
    seen: list[Tensor] = []

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        seen.append(x.clone())
        return _straight_path(x0)(x, t, step_index)

    gen = torch.Generator().manual_seed(4)
    out = sample_sde(velocity, noise, schedule, generator=gen, renoise_times=linear_renoise_times(4))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(seen[1], 0.75 * eps + 0.25 * x0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="renoise_times"):
        sample_sde(velocity, noise, schedule, generator=gen, renoise_times=(0.5,))


def test_cancel_between_steps() -> None:
    token = threading.Event()
    calls: list[int] = []

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        calls.append(step_index)
        token.set()
        return torch.zeros_like(x)

    with pytest.raises(Cancelled):
        sample_euler(velocity, torch.zeros(1, 2, 2), turbo_timesteps(3.0), cancel=token)
    assert calls == [0]


def test_callback_gets_every_step_and_denoised_estimate() -> None:
    got: list[tuple[StepInfo, Tensor, Tensor]] = []
    x = torch.randn(1, 3, 2)
    sample_euler(_toy_velocity, x, turbo_timesteps(1.0), callback=lambda i, x, d: got.append((i, x, d)))
    assert [g[0].index for g in got] == list(range(8))
    assert got[0][0] == StepInfo(index=0, num_steps=8, t=1.0, t_next=0.875)
    assert got[-1][0].t_next == 0.0
    torch.testing.assert_close(got[0][2], x - _toy_velocity(x, torch.tensor(1.0), 0))
    assert torch.equal(got[-1][1], got[-1][2])  # last step lands on its own x0 estimate


def test_bad_schedules_and_velocity_shapes_raise() -> None:
    with pytest.raises(ValueError):
        sample_euler(_toy_velocity, torch.zeros(1, 2, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError):
        sample_euler(_toy_velocity, torch.zeros(1, 2, 2), torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="velocity shape"):
        sample_euler(lambda x, t, i: x[:, :1], torch.zeros(1, 2, 2), torch.tensor([1.0]))


def test_repaint_injection_hook() -> None:
    source = torch.randn(5, 3)
    noise = torch.randn(1, 5, 3)
    mask = torch.tensor([False, True, True, False, False])
    hook = repaint_injection(source, mask, noise, num_steps_injected=2)
    x = torch.randn(1, 5, 3)
    info = StepInfo(index=1, num_steps=4, t=0.75, t_next=0.5)
    out = hook(x, info)
    assert torch.equal(out[:, 1:3], x[:, 1:3])
    assert torch.equal(out[:, [0, 3, 4]], (0.5 * noise + 0.5 * source)[:, [0, 3, 4]])
    assert torch.equal(hook(x, StepInfo(index=2, num_steps=4, t=0.5, t_next=0.25)), x)


def test_repaint_injection_through_the_solver_keeps_source_at_t0() -> None:
    source = torch.randn(6, 2, dtype=torch.float64)
    noise = torch.randn(1, 6, 2, dtype=torch.float64)
    mask = torch.tensor([False, False, True, True, False, False])
    hook = repaint_injection(source, mask, noise, injection_steps(8, 1.0))
    out = sample_euler(_toy_velocity, noise, turbo_timesteps(3.0, dtype=torch.float64), hooks=[hook])
    assert torch.equal(out[0, ~mask], source[~mask])


def test_injection_steps_uses_python_round() -> None:
    assert injection_steps(8, 0.5) == 4
    assert injection_steps(5, 0.5) == 2  # round(2.5) == 2
    assert injection_steps(8, 0.0) == 0


def test_cover_switch() -> None:
    assert cover_switch_step(8, 0.5) == 4
    assert cover_switch_step(8, 0.3) == 2
    assert cover_switch_step(8, 1.0) == 8
    calls: list[str] = []

    def first(x: Tensor, t: Tensor, i: int) -> Tensor:
        calls.append("cover")
        return torch.zeros_like(x)

    def second(x: Tensor, t: Tensor, i: int) -> Tensor:
        calls.append("text")
        return torch.zeros_like(x)

    sample_euler(switch_velocity_at(first, second, 3), torch.zeros(1, 2, 2), turbo_timesteps(3.0))
    assert calls == ["cover"] * 3 + ["text"] * 5


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("kind", ["turbo", "base"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sampler", [sample_euler, sample_sde])
def test_solver_dtype_and_shape_are_kept(shift: float, kind: str, dtype: torch.dtype, sampler) -> None:
    x = torch.randn(2, 3, 4).to(dtype)
    schedule = (
        turbo_timesteps(shift, dtype=dtype)
        if kind == "turbo"
        else shifted_linear_timesteps(3, shift, dtype=dtype)
    )
    kwargs = {"generator": torch.Generator().manual_seed(0)} if sampler is sample_sde else {}
    out = sampler(_toy_velocity, x, schedule, **kwargs)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()


@pytest.mark.parity
@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_euler_matches_diffusers_scheduler(shift: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    # The diffusers ACE-Step pipeline feeds its sigma table to a 1-timestep, shift-1 scheduler (fp32).
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    schedule = turbo_timesteps(shift)
    scheduler.set_timesteps(sigmas=schedule.tolist())
    x = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(3))
    want = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        want = scheduler.step(_toy_velocity(want, schedule[i], i), t, want, return_dict=False)[0]
    assert torch.equal(sample_euler(_toy_velocity, x, schedule), want)
