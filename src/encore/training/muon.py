"""Muon whose Newton-Schulz orthogonalization runs in a chosen dtype (float32 by default).

`torch.optim.Muon` always orthogonalizes in bfloat16. On CPUs without bfloat16 matrix units (the project's
2-core AMD box) a bfloat16 matmul is emulated and runs ~500x slower than float32: the VAE's 74 conv matrices
took 6.5 s per step against 0.6 s for the whole forward and backward pass. This subclass keeps the optimizer's
interface, hyper-parameters and state (`momentum_buffer`), so checkpoints are interchangeable, and only
chooses the dtype of the quintic iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def orthogonalize(
    update: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Approximate `U V^T` of `update = U S V^T` by `steps` quintic Newton-Schulz iterations in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: the Gram matrix is then the small one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so singular values start <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return (x.T if tall else x).to(update.dtype)


def muon_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Per-matrix learning rate, the same rule as `torch.optim.Muon`."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with `ns_dtype` for the orthogonalization (see module docstring)."""

    def __init__(self, params: Iterable[Tensor], *, ns_dtype: torch.dtype = torch.float32, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
