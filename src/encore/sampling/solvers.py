"""Flow-matching solvers (Euler ODE and the official re-noising SDE) and in-loop step hooks (SPEC §9.3–9.7).

Solvers see only a velocity function, the state `x` and a schedule; they never see models, conditioning or
tasks. In-loop edits come in two shapes: a `StepHook` rewrites `x` after a step (repaint injection), and a
velocity combinator picks the velocity function by step index (the cover-strength condition switch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from encore.errors import Cancelled


class VelocityFn(Protocol):
    """``velocity_fn(x, t, step_index) -> v``: the model's velocity at state `x` [B, T, C] and time `t`.

    `t` is a 0-dim tensor holding the schedule entry (schedule dtype and device); `step_index` counts solver
    steps from 0. `v` has the shape and dtype of `x`.
    """

    def __call__(self, x: Tensor, t: Tensor, step_index: int) -> Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """Where a solver step sits in the schedule. Times are Python floats of the schedule entries."""

    index: int
    """Step index i, 0-based."""
    num_steps: int
    """Total number of solver steps N."""
    t: float
    """Time at the start of the step."""
    t_next: float
    """Time the step moves to (0.0 on the last step)."""


class StepHook(Protocol):
    """Rewrites the state after a solver step: ``hook(x, info) -> x`` (same shape and dtype)."""

    def __call__(self, x: Tensor, info: StepInfo) -> Tensor: ...


class StepCallback(Protocol):
    """Observes each finished step: `x` is the new state, `denoised` the step's x0 estimate ``x_t − t·v``."""

    def __call__(self, info: StepInfo, x: Tensor, denoised: Tensor) -> None: ...


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. `threading.Event`."""

    def is_set(self) -> bool: ...


# An update maps (x, v, info) -> (x_next, denoised).
_Update = Callable[[Tensor, Tensor, StepInfo], tuple[Tensor, Tensor]]


def _schedule_steps(timesteps: Tensor) -> list[StepInfo]:
    """Interpret a schedule: a trailing 0 ends it (base/SFT, N+1 points); otherwise a final step to 0 is
    implied (turbo tables and custom lists, whose last step is the direct ``x − v·t`` jump)."""
    if timesteps.dim() != 1 or timesteps.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    values = [float(v) for v in timesteps.tolist()]
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"timesteps must lie in [0, 1], got {values}")
    if values[-1] != 0.0:
        values.append(0.0)
    if len(values) < 2:
        raise ValueError("timesteps must contain at least one step before t=0")
    n = len(values) - 1
    return [StepInfo(index=i, num_steps=n, t=values[i], t_next=values[i + 1]) for i in range(n)]


def _as_step_scalar(value: float, like: Tensor) -> Tensor:
    # The official loop multiplies by `value * ones(dtype)`, i.e. the value rounded to the latent dtype
    # before the product; a Python float would instead be applied at higher precision.
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _run(
    velocity_fn: VelocityFn,
    x: Tensor,
    timesteps: Tensor,
    update: _Update,
    hooks: Sequence[StepHook],
    callback: StepCallback | None,
    cancel: CancelToken | None,
) -> Tensor:
    for info in _schedule_steps(timesteps):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled before sampling step {info.index + 1}/{info.num_steps}")
        v = velocity_fn(x, timesteps[info.index], info.index)
        if v.shape != x.shape:
            raise ValueError(f"velocity shape {tuple(v.shape)} does not match state shape {tuple(x.shape)}")
        x, denoised = update(x, v, info)
        for hook in hooks:
            x = hook(x, info)
        if callback is not None:
            callback(info, x, denoised)
    return x


def sample_euler(
    velocity_fn: VelocityFn,
    x: Tensor,
    timesteps: Tensor,
    *,
    hooks: Sequence[StepHook] = (),
    callback: StepCallback | None = None,
    cancel: CancelToken | None = None,
) -> Tensor:
    """Euler ODE sampling: ``x ← x − v·(t_i − t_{i+1})`` (SPEC §9.3–9.4).

    `dt` is computed from the Python floats of the schedule entries and rounded to `x`'s dtype, as the
    official loop does; the last step to t=0 equals the turbo direct jump ``x − v·t_last``.

    Args:
        velocity_fn: ``(x, t, step_index) -> v``.
        x: Initial noise [B, T, C].
        timesteps: Turbo schedule [N] (no trailing 0) or base schedule [N+1] ending at 0.
        hooks: Applied in order to `x` after every step.
        callback: Called after the hooks with the step info, the new `x` and the step's x0 estimate.
        cancel: Checked before every step.

    Returns:
        Final state (x0) with the shape and dtype of `x`.

    Raises:
        Cancelled: If `cancel.is_set()` becomes true; checked between steps.
    """

    def update(x: Tensor, v: Tensor, info: StepInfo) -> tuple[Tensor, Tensor]:
        denoised = x - v * _as_step_scalar(info.t, x)
        return x - v * _as_step_scalar(info.t - info.t_next, x), denoised

    return _run(velocity_fn, x, timesteps, update, hooks, callback, cancel)


def sample_sde(
    velocity_fn: VelocityFn,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: torch.Generator | None,
    renoise_times: Sequence[float] | None = None,
    hooks: Sequence[StepHook] = (),
    callback: StepCallback | None = None,
    cancel: CancelToken | None = None,
) -> Tensor:
    """Stochastic sampling: predict ``x0 = x − t_i·v`` then renoise ``x = t'·ε + (1 − t')·x0`` (SPEC §9.3–9.4).

    ε is fresh Gaussian noise drawn from `generator` each step (the official code used the global RNG).
    When the renoise time is 0 (the last step) no noise is drawn and the result is x0.

    Args:
        velocity_fn: ``(x, t, step_index) -> v``.
        x: Initial noise [B, T, C].
        timesteps: Turbo schedule [N] or base schedule [N+1] ending at 0.
        generator: Explicit RNG on `x`'s device (None uses torch's default generator).
        renoise_times: Per-step renoise targets t' (length N). None uses the next schedule entry (turbo).
            The official base/SFT SDE uses the unshifted ``linear_renoise_times(N)``.
        hooks: Applied in order to `x` after every step.
        callback: Called after the hooks with the step info, the new `x` and the step's x0 estimate.
        cancel: Checked before every step.

    Returns:
        Final state (x0) with the shape and dtype of `x`.
    """
    if renoise_times is not None:
        num_steps = _schedule_steps(timesteps)[0].num_steps
        if len(renoise_times) != num_steps:
            raise ValueError(f"renoise_times needs {num_steps} entries, got {len(renoise_times)}")

    def update(x: Tensor, v: Tensor, info: StepInfo) -> tuple[Tensor, Tensor]:
        denoised = x - v * _as_step_scalar(info.t, x)
        target = info.t_next if renoise_times is None else float(renoise_times[info.index])
        if target == 0.0:
            return denoised, denoised
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return target * noise + (1.0 - target) * denoised, denoised

    return _run(velocity_fn, x, timesteps, update, hooks, callback, cancel)


# --------------------------------------------------------------------------------------------
# In-loop edits
# --------------------------------------------------------------------------------------------


def injection_steps(num_steps: int, ratio: float) -> int:
    """How many leading steps the repaint injection runs: ``round(ratio·N)`` (Python rounding, as upstream)."""
    if not (0.0 <= ratio <= 1.0):
        raise ValueError(f"injection ratio must be in [0, 1], got {ratio}")
    return round(ratio * num_steps)


def repaint_injection(
    source: Tensor, generate_mask: Tensor, noise: Tensor, num_steps_injected: int
) -> StepHook:
    """Hook that re-imposes the noised source outside the generated region (newer upstream, SPEC §9.7).

    For steps ``i < num_steps_injected``: ``x = where(mask, x, t_next·noise + (1 − t_next)·source)``, so
    kept frames follow the source's own noising path and the generated region sees a consistent context.

    Args:
        source: Clean source latents [T, C] or [B, T, C] on the output grid.
        generate_mask: Bool [T] or [B, T]; True = generated, False = kept.
        noise: The initial noise [B, T, C] used to start sampling.
        num_steps_injected: Steps to inject for, usually ``injection_steps(N, ratio)``.

    Returns:
        A `StepHook`.
    """
    if generate_mask.dtype != torch.bool:
        raise ValueError(f"generate_mask must be bool, got {generate_mask.dtype}")
    mask = generate_mask.unsqueeze(-1)

    def hook(x: Tensor, info: StepInfo) -> Tensor:
        if info.index >= num_steps_injected:
            return x
        noised = info.t_next * noise + (1.0 - info.t_next) * source.to(x.dtype)
        return torch.where(mask, x, noised.to(x.dtype))

    return hook


def cover_switch_step(num_steps: int, cover_strength: float) -> int:
    """First step that uses the non-cover condition: ``int(N·strength)`` (SPEC §9.6)."""
    if not (0.0 <= cover_strength <= 1.0):
        raise ValueError(f"cover_strength must be in [0, 1], got {cover_strength}")
    return int(num_steps * cover_strength)


def switch_velocity_at(first: VelocityFn, second: VelocityFn, switch_step: int) -> VelocityFn:
    """Velocity function that calls `first` for steps ``< switch_step`` and `second` from then on.

    This is the official cover-strength behaviour (SPEC §9.6): `first` is conditioned on the cover
    condition, `second` on the text2music ("non-cover") condition. Any per-condition KV cache belongs to
    the two functions, so switching implies a fresh cache, as officially.
    """

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        return first(x, t, step_index) if step_index < switch_step else second(x, t, step_index)

    return velocity
