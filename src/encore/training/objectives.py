"""Flow-matching training objective shared by every training recipe (SPEC §9.1).

`x_t = t·noise + (1−t)·x0`, target `v = noise − x0`, timesteps from `sampling.schedules` (one definition of time
for training and sampling), condition dropout to the null embedding. Randomness comes from one generator per
batch item (`item_generators`), so a batch split over several processes draws exactly what one process would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from encore.sampling.schedules import TRAINING_TIMESTEP_MU, TRAINING_TIMESTEP_SIGMA, sample_training_timesteps

CFG_DROPOUT = 0.15
"""Probability of replacing an item's condition by the null condition (official `cfg_ratio`)."""

STREAM_FLOW = 0
"""Generator stream for timesteps, condition dropout, noise and crops."""
STREAM_DROPOUT = 1
"""Generator stream for LoRA dropout masks."""


def mix_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (numpy `SeedSequence`), e.g. `(seed, epoch, index, stream)`."""
    if any(p < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0])


def item_generators(
    seed: int, epoch: int, indices: Sequence[int], stream: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per batch item, seeded from `(seed, epoch, position in the epoch, stream)`.

    Because the seed depends only on the item's position in the epoch, a global batch sharded over processes
    (or resumed from a checkpoint) sees the same random numbers as an unsharded, uninterrupted run.
    """
    return [torch.Generator(device=device).manual_seed(mix_seed(seed, epoch, int(i), stream)) for i in indices]


def noisy_latents(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """`x_t = t·noise + (1−t)·x0` with `x0, noise` `[B, T, C]` and `t` `[B]` (t=1 is pure noise)."""
    tt = t.to(x0.dtype)[:, None, None]
    return tt * noise + (1 - tt) * x0


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Flow velocity `v = noise − x0` `[B, T, C]` (what the DiT predicts)."""
    return noise - x0


@dataclass(frozen=True)
class FlowDraw:
    """The random numbers of one flow-matching step."""

    timesteps: Tensor
    """`[B]` float32 in (0, 1)."""
    keep_condition: Tensor
    """`[B]` bool; False replaces the item's condition by the null condition."""
    noise: Tensor
    """`[B, T, C]` float32 standard normal."""


def draw_flow(
    generators: Sequence[torch.Generator],
    num_frames: int,
    channels: int,
    *,
    cfg_dropout: float = CFG_DROPOUT,
    mu: float = TRAINING_TIMESTEP_MU,
    sigma: float = TRAINING_TIMESTEP_SIGMA,
) -> FlowDraw:
    """Draws timestep, condition-dropout decision and noise per item, in that order, from its own generator.

    Args:
        generators: One CPU generator per item (see `item_generators`); each is advanced.
        num_frames: Latent length T of the (padded) batch.
        channels: Latent channels C.
        cfg_dropout: Probability of dropping the condition.
        mu: Logit-normal mean of the timestep distribution.
        sigma: Logit-normal standard deviation.

    Returns:
        A `FlowDraw` on the CPU.
    """
    if not 0.0 <= cfg_dropout <= 1.0:
        raise ValueError(f"cfg_dropout must be in [0, 1], got {cfg_dropout}")
    ts, keep, noise = [], [], []
    for g in generators:
        ts.append(sample_training_timesteps(1, mu=mu, sigma=sigma, generator=g))
        keep.append(torch.rand((1,), generator=g) >= cfg_dropout)
        noise.append(torch.randn((num_frames, channels), generator=g))
    return FlowDraw(timesteps=torch.cat(ts), keep_condition=torch.cat(keep), noise=torch.stack(noise))


def masked_item_mse(pred: Tensor, target: Tensor, frame_mask: Tensor | None) -> Tensor:
    """Per-item mean squared error over valid frames and all channels, in float32.

    Args:
        pred: `[B, T, C]`.
        target: `[B, T, C]`.
        frame_mask: `[B, T]` bool/0-1 valid frames, or None (all valid).

    Returns:
        `[B]` float32.
    """
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)
    if frame_mask is None:
        return err.mean(dim=1)
    m = frame_mask.to(err.dtype)
    count = m.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError("an item has no valid frames")
    return (err * m).sum(dim=1) / count


def flow_matching_loss(
    decoder: nn.Module,
    target_latents: Tensor,
    context_latents: Tensor,
    encoder_hidden_states: Tensor,
    null_condition: Tensor,
    draw: FlowDraw,
    frame_mask: Tensor | None = None,
) -> Tensor:
    """Per-item flow-matching loss of one batch (SPEC §9.1; r = t, mean-flow off).

    Args:
        decoder: The DiT (or a wrapper with the same call signature), called as
            `decoder(x_t, t, t, encoder_hidden_states, context_latents)`.
        target_latents: Clean latents x0 `[B, T, C]`.
        context_latents: `[B, T, 2C]` = cat(src latents, chunk mask).
        encoder_hidden_states: Packed condition `[B, S, H]`.
        null_condition: `[1, 1, H]` null embedding used where `draw.keep_condition` is False.
        draw: Timesteps, dropout decisions and noise (CPU tensors are moved to the latents' device).
        frame_mask: `[B, T]` valid frames, or None.

    Returns:
        `[B]` float32 per-item losses (mean over valid frames and channels).
    """
    device = target_latents.device
    noise = draw.noise.to(device=device, dtype=target_latents.dtype)
    t = draw.timesteps.to(device)
    keep = draw.keep_condition.to(device)[:, None, None]
    x_t = noisy_latents(target_latents, noise, t)
    null = null_condition.to(encoder_hidden_states.dtype).expand_as(encoder_hidden_states)
    condition = torch.where(keep, encoder_hidden_states, null)
    pred = decoder(x_t, t, t, condition, context_latents)
    return masked_item_mse(pred, velocity_target(target_latents, noise), frame_mask)
