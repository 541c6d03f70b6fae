"""Finite scalar quantisation for the 5 Hz audio codes (ResidualFSQ with one quantizer, SPEC §7.1-7.2).

Pure functions do the math (soft clamp, rounding to levels, codes <-> indices); `ResidualFSQ` only adds the
learned `project_in` / `project_out` Linears. Levels [8,8,8,5,5,5] give 64 000 codes. Soft clamp and rounding
run in float32; the projections run in the weights' dtype (official behaviour; diffusers runs them in fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _levels(levels: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(levels), dtype=torch.int64, device=device)


def fsq_basis(levels: Sequence[int], *, device: torch.device | None = None) -> torch.Tensor:
    """Mixed-radix basis `cumprod([1, L_0, ..., L_{n-2}])`, int64 `[n]` ([1,8,64,512,2560,12800] here)."""
    lv = list(levels)
    return torch.cumprod(torch.tensor([1, *lv[:-1]], dtype=torch.int64, device=device), dim=0)


def soft_clamp(z: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """`tanh(z / c) * c` with `c_l = 1 + 1/(L_l - 1)` per channel (computed in z's dtype). `z` `[..., n]`."""
    c = 1.0 + 1.0 / (_levels(levels, z.device).to(z.dtype) - 1.0)
    return (z / c).tanh() * c


def quantize_levels(z: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Level index `k = floor((L-1) * (clamp(z,-1,1) + 1) / 2 + 0.5)` in `0..L-1`, int64 `[..., n]`."""
    lm1 = _levels(levels, z.device).to(z.dtype) - 1.0
    bracket = lm1 * (z.clamp(-1.0, 1.0) + 1.0) / 2.0 + 0.5
    return torch.floor(bracket).to(torch.int64)


def levels_to_codes(k: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Level indices `[..., n]` -> code values `k * 2/(L-1) - 1` in [-1, 1], float32."""
    step = 2.0 / (_levels(levels, k.device).to(torch.float32) - 1.0)
    return step * k.to(torch.float32) - 1.0


def codes_to_levels(codes: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Inverse of `levels_to_codes` (rounds to the nearest level), int64 `[..., n]`."""
    lm1 = _levels(levels, codes.device).to(torch.float32) - 1.0
    return torch.round((codes.to(torch.float32) + 1.0) * lm1 / 2.0).to(torch.int64)


def levels_to_indices(k: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Level indices `[..., n]` -> flat code index `sum_l k_l * basis_l` (int64 `[...]`, 0..prod(L)-1)."""
    return (k * fsq_basis(levels, device=k.device)).sum(dim=-1)


def indices_to_levels(indices: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Flat indices `[...]` -> level indices `(idx // basis_l) mod L_l`, int64 `[..., n]`."""
    idx = indices.to(torch.int64)[..., None]
    return (idx // fsq_basis(levels, device=indices.device)) % _levels(levels, indices.device)


def indices_to_codes(indices: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Flat indices `[...]` -> code values float32 `[..., n]`."""
    return levels_to_codes(indices_to_levels(indices, levels), levels)


def codes_to_indices(codes: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Code values `[..., n]` -> flat indices int64 `[...]`."""
    return levels_to_indices(codes_to_levels(codes, levels), levels)


def codebook_size(levels: Sequence[int]) -> int:
    """Number of distinct codes, `prod(levels)`."""
    n = 1
    for v in levels:
        n *= int(v)
    return n


class ResidualFSQ(nn.Module):
    """Residual FSQ with a single quantizer (scale 1), as configured in every ACE-Step checkpoint.

    Args:
        dim: Input/output width (`fsq_dim`, equal to the encoder width).
        levels: Levels per code channel.
    """

    def __init__(self, dim: int, levels: Sequence[int]) -> None:
        super().__init__()
        if any(int(v) < 2 for v in levels):
            raise ValueError(f"FSQ levels must all be >= 2, got {list(levels)}")
        self.levels = tuple(int(v) for v in levels)
        self.project_in = nn.Linear(dim, len(self.levels))
        self.project_out = nn.Linear(len(self.levels), dim)

    @property
    def codebook_size(self) -> int:
        return codebook_size(self.levels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantises `x` `[B, T5, dim]`.

        Returns:
            `quantized [B, T5, dim]` (in project_out's dtype) and `indices [B, T5, 1]` int64 in
            `0..codebook_size-1` (last dim = number of quantizers, as the official tokenizer returns).
        """
        z = soft_clamp(self.project_in(x).to(torch.float32), self.levels)
        k = quantize_levels(z, self.levels)
        codes = levels_to_codes(k, self.levels)
        quantized = self.project_out(codes.to(self.project_out.weight.dtype))
        return quantized, levels_to_indices(k, self.levels)[..., None]

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices `[B, T5]` or `[B, T5, 1]` -> embeddings `[B, T5, dim]` (`project_out(codes)`)."""
        if indices.ndim == 3:
            if indices.shape[-1] != 1:
                raise ValueError(f"expected one quantizer in indices [B, T5, 1], got {tuple(indices.shape)}")
            indices = indices[..., 0]
        if indices.is_floating_point():
            raise ValueError(f"code indices must be integers, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        codes = indices_to_codes(indices, self.levels)
        return self.project_out(codes.to(self.project_out.weight.dtype))
