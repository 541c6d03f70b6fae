"""Classifier-free guidance rules for base/SFT sampling: CFG, APG and ADG (SPEC §9.4).

Tensor-level rules combine a conditional and an unconditional velocity; `with_guidance` and
`with_paired_guidance` wrap velocity functions into one guided `VelocityFn`. Batching cond and null into one
model call is the pipeline's job (use `with_paired_guidance` for that). APG's momentum lives in an explicit
`MomentumBuffer` created per sampling run, never on a module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from encore.sampling.solvers import VelocityFn

GuidanceKind = Literal["cfg", "apg", "adg"]

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
ADG_ANGLE_CLIP = 3.14 / 6  # the official literal 3.14, not math.pi


def in_guidance_interval(t: float | Tensor, start: float, end: float) -> bool:
    """Whether guidance applies at time `t`: ``start ≤ t ≤ end`` on the timestep itself (official).

    diffusers 0.42.1 compares ``1 − t`` instead (SPEC §14.3); the two agree for the default [0, 1] but
    mirror each other for any other interval.
    """
    return start <= float(t) <= end


def cfg(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Plain classifier-free guidance ``v_u + scale·(v_c − v_u)`` (official operation order)."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclass
class MomentumBuffer:
    """APG running average ``run = d + momentum·run_prev`` (starts at 0; one per sampling run)."""

    momentum: float = APG_MOMENTUM
    running: Tensor | None = field(default=None, repr=False)

    def update(self, value: Tensor) -> Tensor:
        """Fold `value` into the running average and return the new average."""
        # The official buffer starts from the integer 0, so the first update is `value + (-0.0)` == value.
        self.running = value if self.running is None else value + self.momentum * self.running
        return self.running


def _project(v0: Tensor, v1: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Split `v0` into parts parallel and orthogonal to `v1` over `dims`, in float64, cast back to v0's dtype."""
    a, b = v0.double(), v1.double()
    unit = b / torch.linalg.vector_norm(b, dim=dims, keepdim=True).clamp_min(1e-12)
    parallel = (a * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = a - parallel
    return parallel.to(v0.dtype), orthogonal.to(v0.dtype)


def apg(
    v_cond: Tensor,
    v_uncond: Tensor,
    scale: float,
    *,
    buffer: MomentumBuffer | None = None,
    eta: float = 0.0,
    norm_threshold: float = APG_NORM_THRESHOLD,
    dims: Sequence[int] = (1,),
) -> Tensor:
    """Adaptive projected guidance, official formulation (SPEC §9.4, off-apg `apg_forward`).

    ``d = v_c − v_u`` → momentum (if `buffer`) → clip ``||d||_dims`` to `norm_threshold` → project onto
    `v_c` in float64 → ``v = v_c + (scale − 1)·(d_orth + eta·d_par)``.

    Args:
        v_cond: Conditional velocity [B, T, C].
        v_uncond: Unconditional velocity [B, T, C].
        scale: Guidance scale (official `guidance_scale`; 1 returns `v_cond`).
        buffer: Momentum state carried across steps; None disables momentum.
        eta: Weight of the parallel component (official 0).
        norm_threshold: Norm clip; ≤ 0 disables it.
        dims: Axes of the norm and projection; (1,) is the time axis of [B, T, C], as officially used.

    Returns:
        Guided velocity [B, T, C] in `v_cond`'s dtype.
    """
    axes = tuple(dims)
    diff = v_cond - v_uncond
    if buffer is not None:
        diff = buffer.update(diff)
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(diff, dim=axes, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    parallel, orthogonal = _project(diff, v_cond, axes)
    return v_cond + (scale - 1) * (orthogonal + eta * parallel)


def adg(
    x: Tensor,
    v_cond: Tensor,
    v_uncond: Tensor,
    sigma: float | Tensor,
    scale: float,
    *,
    angle_clip: float = ADG_ANGLE_CLIP,
) -> Tensor:
    """Angle-based dynamic guidance (SPEC §9.4, off-apg `adg_forward` with clipping, without norm).

    Rotates the conditional x0 estimate away from the unconditional one by ``clip(w·θ, ±angle_clip)`` where
    θ is their angle per (b, t) row over channels and ``w = max(scale − 1, 0) + 1e-3``, then converts back
    to a velocity ``(x − x0_new)/σ``. Angles are computed in float64 and the perpendicular split in float32,
    as officially.

    Args:
        x: Current state x_t [B, T, C].
        v_cond: Conditional velocity [B, T, C].
        v_uncond: Unconditional velocity [B, T, C].
        sigma: Current time t_i (> 0), a float or a tensor with 1 or B elements.
        scale: Guidance scale.
        angle_clip: Largest rotation in radians.

    Returns:
        Guided velocity [B, T, C] in `x`'s dtype.
    """
    n, t_len, c = v_cond.shape
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sig = sig.reshape(1, 1, 1).expand(n, 1, 1) if sig.numel() == 1 else sig.reshape(n, 1, 1)
    weight = max(scale - 1, 0.0) + 1e-3
    x0_cond = x - sig * v_cond
    x0_uncond = x - sig * v_uncond
    diff = x0_cond - x0_uncond

    rows_c = x0_cond.reshape(-1, c).double()
    rows_u = x0_uncond.reshape(-1, c).double()
    cos = (
        (rows_c / torch.linalg.norm(rows_c, dim=1, keepdim=True))
        * (rows_u / torch.linalg.norm(rows_u, dim=1, keepdim=True))
    ).sum(dim=1, keepdim=True)
    theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)).view(n, t_len, 1)
    theta_new = torch.clip(weight * theta, -angle_clip, angle_clip)

    d32 = diff.reshape(-1, c).float()
    u32 = x0_uncond.reshape(-1, c).float()
    coef = (d32 * u32).sum(dim=1, keepdim=True) / ((u32 * u32).sum(dim=1, keepdim=True) + 1e-8)
    perp = (d32 - coef * u32).reshape(n, t_len, c)

    sin_theta = torch.sin(theta)
    # Official code multiplies each branch by a 0/1 mask; `where` gives the same values without 0·inf NaNs.
    rotated = torch.where(sin_theta > 1e-3, perp * torch.sin(theta_new) / sin_theta, perp * weight)
    x0_new = torch.cos(theta_new) * x0_cond + rotated
    return ((x - x0_new) / sig).reshape(n, t_len, c).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Velocity-function wrappers
# --------------------------------------------------------------------------------------------


class GuidanceRule(Protocol):
    """``rule(v_cond, v_uncond, x, t) -> v``; `t` is the schedule entry as a 0-dim tensor."""

    def __call__(self, v_cond: Tensor, v_uncond: Tensor, x: Tensor, t: Tensor) -> Tensor: ...


def cfg_rule(scale: float) -> GuidanceRule:
    """`cfg` as a `GuidanceRule`."""

    def rule(v_cond: Tensor, v_uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return cfg(v_cond, v_uncond, scale)

    return rule


def apg_rule(
    scale: float,
    *,
    momentum: float = APG_MOMENTUM,
    norm_threshold: float = APG_NORM_THRESHOLD,
    dims: Sequence[int] = (1,),
) -> GuidanceRule:
    """`apg` as a `GuidanceRule` with its own fresh `MomentumBuffer`: build one rule per sampling run.

    The buffer only advances on steps where the rule is called, i.e. inside the guidance interval, as
    officially.
    """
    buffer = MomentumBuffer(momentum=momentum)

    def rule(v_cond: Tensor, v_uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return apg(v_cond, v_uncond, scale, buffer=buffer, norm_threshold=norm_threshold, dims=dims)

    return rule


def adg_rule(scale: float, *, angle_clip: float = ADG_ANGLE_CLIP) -> GuidanceRule:
    """`adg` as a `GuidanceRule`, with σ = the step's time t_i."""

    def rule(v_cond: Tensor, v_uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return adg(x, v_cond, v_uncond, t, scale, angle_clip=angle_clip)

    return rule


def make_rule(kind: GuidanceKind, scale: float) -> GuidanceRule:
    """The rule for `kind` with official defaults (fresh momentum for APG)."""
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be finite, got {scale}")
    builders: dict[str, Callable[[float], GuidanceRule]] = {"cfg": cfg_rule, "apg": apg_rule, "adg": adg_rule}
    if kind not in builders:
        raise ValueError(f"unknown guidance kind {kind!r}; choose from {sorted(builders)}")
    return builders[kind](scale)


def with_guidance(
    cond_fn: VelocityFn,
    uncond_fn: VelocityFn,
    rule: GuidanceRule,
    *,
    interval: tuple[float, float] = (0.0, 1.0),
) -> VelocityFn:
    """Guided velocity from separate cond and uncond functions.

    Inside `interval` (see `in_guidance_interval`) both are evaluated and combined by `rule`; outside it
    only `cond_fn` runs and its velocity is used unchanged (the official loop also uses ``v_cond`` there).
    Whether guidance is on at all (official: ``guidance_scale > 1``) is the caller's decision.
    """
    start, end = interval

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        v_cond = cond_fn(x, t, step_index)
        if not in_guidance_interval(t, start, end):
            return v_cond
        return rule(v_cond, uncond_fn(x, t, step_index), x, t)

    return velocity


class PairFn(Protocol):
    """``pair_fn(x, t, step_index) -> (v_cond, v_uncond)``, e.g. one batched model call on cat(cond, null)."""

    def __call__(self, x: Tensor, t: Tensor, step_index: int) -> tuple[Tensor, Tensor]: ...


def with_paired_guidance(
    pair_fn: PairFn,
    rule: GuidanceRule,
    *,
    interval: tuple[float, float] = (0.0, 1.0),
    cond_fn: VelocityFn | None = None,
) -> VelocityFn:
    """Guided velocity from a function returning both velocities at once.

    Outside `interval`, `cond_fn` is used when given (saves the null half); otherwise `pair_fn` still runs
    and its conditional half is returned, which is what the official batched loop does.
    """
    start, end = interval

    def velocity(x: Tensor, t: Tensor, step_index: int) -> Tensor:
        inside = in_guidance_interval(t, start, end)
        if not inside and cond_fn is not None:
            return cond_fn(x, t, step_index)
        v_cond, v_uncond = pair_fn(x, t, step_index)
        return rule(v_cond, v_uncond, x, t) if inside else v_cond

    return velocity
