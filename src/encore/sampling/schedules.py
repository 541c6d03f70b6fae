"""Timestep schedules for flow-matching sampling and training (SPEC §9.1, §9.3–9.5).

Pure functions returning 1-D tensors, t=1 is pure noise and t=0 is data. Inference (turbo tables, shifted
linear base/SFT schedules, custom turbo lists) and training (`sample_training_timesteps`) share this module
so that both sides use one definition of time and shift.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from encore.errors import InvalidRequest

logger = logging.getLogger(__name__)

# The official turbo `generate_audio` hard-codes these literals (SPEC §9.3). They equal
# s·t/(1+(s−1)·t) on linspace(1, 0, 9)[:-1] evaluated in float64; tests check both.
# fmt: off
TURBO_TIMESTEPS: dict[float, tuple[float, ...]] = {
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
    2.0: (
        1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693,
        0.6666666666666666, 0.5454545454545454, 0.4, 0.2222222222222222,
    ),
    3.0: (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3),
}
# fmt: on
"""Fixed 8-step turbo schedules keyed by shift (the final t=0 is implicit)."""

VALID_SHIFTS: tuple[float, ...] = (1.0, 2.0, 3.0)
"""Shifts the turbo tables exist for; any other shift is rounded to the nearest (ties to the lower)."""

# fmt: off
VALID_TIMESTEPS: tuple[float, ...] = (
    1.0, 0.9545454545454546, 0.9333333333333333, 0.9, 0.875,
    0.8571428571428571, 0.8333333333333334, 0.7692307692307693, 0.75,
    0.6666666666666666, 0.6428571428571429, 0.625, 0.5454545454545454,
    0.5, 0.4, 0.375, 0.3, 0.25, 0.2222222222222222, 0.125,
)
# fmt: on
"""The 20 values a custom turbo schedule is snapped to: the union of the three tables, descending."""

MAX_CUSTOM_TIMESTEPS = 20
TRAINING_TIMESTEP_MU = -0.4
TRAINING_TIMESTEP_SIGMA = 1.0


def apply_shift(t: Tensor, shift: float) -> Tensor:
    """Warp timesteps towards t=1: ``s·t / (1 + (s−1)·t)``.

    The operations run in `t`'s dtype in the official order, so a bf16 input reproduces the official bf16
    rounding (SPEC §9.5).

    Args:
        t: Timesteps in [0, 1], any shape and floating dtype.
        shift: Shift factor s > 0; 1 is the identity.

    Returns:
        Warped timesteps, same shape and dtype as `t`.
    """
    if not (shift > 0 and math.isfinite(shift)):
        raise InvalidRequest("diffusion.shift", f"must be a positive finite number, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def nearest_turbo_shift(shift: float) -> float:
    """The turbo table shift used for `shift`: the nearest of 1, 2, 3 (a tie picks the lower one)."""
    if not math.isfinite(shift):
        raise InvalidRequest("diffusion.shift", f"must be finite, got {shift}")
    # min() returns the first minimum, as the official code does, so 1.5 -> 1.0 and 2.5 -> 2.0.
    return min(VALID_SHIFTS, key=lambda s: abs(s - shift))


def turbo_timesteps(
    shift: float = 3.0, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The fixed 8-entry turbo schedule for `shift` (SPEC §9.3).

    Args:
        shift: Requested shift; rounded to the nearest of {1, 2, 3}.
        dtype: Dtype of the returned schedule. `torch.bfloat16` reproduces the official bf16 values
            (e.g. shift 3 -> 0.953125, 0.8984375, ...); float32 keeps the table values.
        device: Device of the returned tensor.

    Returns:
        Tensor [8], descending from 1.0; the solver appends the final t=0 step itself.
    """
    snapped = nearest_turbo_shift(shift)
    if snapped != shift:
        logger.info("turbo shift %s rounded to the nearest table shift %s", shift, snapped)
    return torch.tensor(TURBO_TIMESTEPS[snapped], dtype=dtype, device=device)


def snap_custom_timesteps(
    values: Sequence[float], *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Turn a user timestep list into a turbo schedule (SPEC §9.3).

    Trailing zeros are dropped (the solver always ends at t=0), and each value is snapped to the nearest of
    `VALID_TIMESTEPS` (ties pick the larger value, the earlier one in that list, as the official code does).

    Args:
        values: Timesteps in [0, 1], e.g. ``[0.97, 0.76, 0.5, 0.085, 0]``.
        dtype: Dtype of the returned schedule.
        device: Device of the returned tensor.

    Returns:
        Tensor [N] with 1 ≤ N ≤ 20, without a trailing 0.

    Raises:
        InvalidRequest: (field ``diffusion.timesteps``) if a value is outside [0, 1], nothing is left
            after removing trailing zeros, or more than 20 values remain. The official code falls back to
            the shift table or truncates instead; we refuse rather than silently change the request.
    """
    floats = [float(v) for v in values]
    for v in floats:
        if not (0.0 <= v <= 1.0):
            raise InvalidRequest("diffusion.timesteps", f"values must lie in [0, 1], got {v}")
    while floats and floats[-1] == 0.0:
        floats.pop()
    if not floats:
        raise InvalidRequest("diffusion.timesteps", "needs at least one non-zero timestep")
    if len(floats) > MAX_CUSTOM_TIMESTEPS:
        raise InvalidRequest(
            "diffusion.timesteps", f"at most {MAX_CUSTOM_TIMESTEPS} non-zero values, got {len(floats)}"
        )
    snapped = [min(VALID_TIMESTEPS, key=lambda valid: abs(valid - v)) for v in floats]
    if snapped != floats:
        logger.info("custom timesteps snapped to the turbo grid: %s -> %s", floats, snapped)
    return torch.tensor(snapped, dtype=dtype, device=device)


def shifted_linear_timesteps(
    num_steps: int,
    shift: float = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Base/SFT schedule: ``linspace(1, 0, N+1)`` then the shift warp (SPEC §9.4).

    Args:
        num_steps: Number of solver steps N ≥ 1.
        shift: Shift factor; 1 leaves the linear schedule untouched (the warp is skipped, as officially).
        dtype: Dtype in which linspace and the warp are computed; bf16 reproduces the official rounding.
        device: Device of the returned tensor.

    Returns:
        Tensor [N+1] from 1.0 down to exactly 0.0.
    """
    if num_steps < 1:
        raise InvalidRequest("diffusion.num_steps", f"must be >= 1, got {num_steps}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype, device=device)
    if shift != 1.0:
        t = apply_shift(t, shift)
    return t


def linear_renoise_times(num_steps: int) -> tuple[float, ...]:
    """Renoise targets of the official base/SFT SDE sampler: ``1 − (i+1)/N`` for step i (SPEC §9.4).

    The official base SDE renoises to this **unshifted** linear time even when the schedule is shifted;
    pass the result as `renoise_times` to `sample_sde` to reproduce it.
    """
    if num_steps < 1:
        raise InvalidRequest("diffusion.num_steps", f"must be >= 1, got {num_steps}")
    return tuple(1.0 - float(i + 1) / num_steps for i in range(num_steps))


def sample_training_timesteps(
    batch_size: int,
    *,
    mu: float = TRAINING_TIMESTEP_MU,
    sigma: float = TRAINING_TIMESTEP_SIGMA,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training timesteps: the max of two ``sigmoid(N(mu, sigma))`` draws per item (SPEC §9.1).

    The two draws are made in the official order (first `t`, then `r`); with mean-flow off the released
    training code uses ``r = t = max(t, r)``.

    Args:
        batch_size: Number of timesteps B.
        mu: Mean of the logit-normal.
        sigma: Standard deviation of the logit-normal.
        generator: Explicit RNG; its device must match `device`. None uses torch's default generator.
        dtype: Dtype of the draws.
        device: Device of the draws.

    Returns:
        Tensor [B] in (0, 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    first = torch.randn((batch_size,), generator=generator, dtype=dtype, device=device)
    second = torch.randn((batch_size,), generator=generator, dtype=dtype, device=device)
    t = torch.sigmoid(first * sigma + mu)
    r = torch.sigmoid(second * sigma + mu)
    return torch.maximum(t, r)
