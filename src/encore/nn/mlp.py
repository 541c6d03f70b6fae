"""SwiGLU feed-forward block (Qwen3MLP layout: gate/up/down projections without bias, SPEC §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))`.

    Args:
        hidden_size: Input and output width.
        intermediate_size: Width of the gated hidden layer.
    """

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[..., hidden_size]` -> `[..., hidden_size]`."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
