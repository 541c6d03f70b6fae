"""Planner logits transforms as pure functions over `(B, N)` logits (SPEC §12.3).

Order used by `encore.pipeline.planning`: `apply_cfg` → constraint mask → `apply_repetition_penalty`
→ `apply_top_k` → `apply_top_p` → `sample_tokens(temperature)`. Every function returns a new tensor.
`N` may be the whole vocabulary or a subset of it (head slicing); the maths is the same because
tokens outside the subset would carry -inf anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """LM classifier-free guidance `l_u + scale·(l_c − l_u)` in fp32.

    Args:
        cond: `(B, N)` conditional logits.
        uncond: `(B, N)` unconditional logits.
        scale: guidance scale; the caller skips this when `scale <= 1`.

    Returns:
        `(B, N)` float32 logits.
    """
    c, u = cond.float(), uncond.float()
    return u + scale * (c - u)


def apply_mask(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Set logits where `keep` is False to -inf.

    Args:
        logits: `(B, N)`.
        keep: `(B, N)` or `(N,)` bool, or None to keep everything.
    """
    if keep is None:
        return logits
    return logits.masked_fill(~keep, NEG_INF)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on already-seen tokens: negative logits ×penalty, others ÷penalty.

    Args:
        logits: `(B, N)`.
        seen: `(B, N)` bool, True where the token already occurs in the sequence (prompt included).
        penalty: 1.0 disables the penalty.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the `k` largest logits per row (None or 0 disables; ties at the k-th value are kept)."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest prefix (by descending logit) whose probability mass exceeds `p`.

    The top-1 token is always kept; probabilities come from `softmax(logits)` in fp32 *before*
    temperature, as in the official loop. None or p outside (0, 1) disables the filter.
    """
    if p is None or not 0.0 < p < 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    cum = torch.cumsum(torch.softmax(sorted_logits.float(), dim=-1), dim=-1)
    drop_sorted = cum > p
    # Shift right so the token that crosses p is kept; the top-1 is never dropped.
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def draw_uniforms(generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One uniform in [0, 1) per row, each from its own CPU generator (batch-composition independent).

    Returns:
        `(B,)` float64 on CPU.
    """
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])


def sample_tokens(logits: torch.Tensor, temperature: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one index per row from `softmax(logits / temperature)` by inverse CDF.

    Inverse-CDF sampling with caller-drawn uniforms makes the draw independent of `N` and of the
    device's multinomial kernel, so a subset of rows (head slicing) and the full vocabulary give the
    same index whenever they give the same probabilities. `temperature <= 0` means argmax.

    Args:
        logits: `(B, N)`; each row must have at least one finite entry.
        temperature: softmax temperature.
        uniforms: `(B,)` values in [0, 1).

    Returns:
        `(B,)` long indices into the last dimension.
    """
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1).double()
    cdf = torch.cumsum(probs, dim=-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    # right=True picks the first index whose CDF exceeds the target, i.e. never a zero-probability token.
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)
