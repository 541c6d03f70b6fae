"""RMSNorm with an fp32 upcast (Qwen3 style, SPEC §3). Used on hidden states and per head for q/k norm."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm without bias.

    The statistic is computed in float32 and the normalised tensor is cast back to the input dtype *before*
    the weight multiply, as Qwen3RMSNorm does; this ordering matters for bf16 parity.

    Args:
        dim: Size of the normalised (last) dimension.
        eps: Added to the mean square before the reciprocal square root.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises `x` `[..., dim]` over its last dimension; returns the same shape and dtype."""
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
