"""GQA attention with per-head q/k RMSNorm and optional RoPE (AceStepAttention, SPEC §3).

`attend` is the one place that picks the attention kernel (PyTorch SDPA); every model goes through it.
Self-attention applies RoPE to q and k; cross-attention reads keys/values from a context sequence (or a
precomputed `(k, v)` pair) and applies no RoPE. Attention is never causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encore.nn.norm import RMSNorm
from encore.nn.rope import apply_rotary


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention; the single backend switch for the whole package.

    K/V heads are repeated to the query head count explicitly (as the official `repeat_kv` path does) so
    that the masked case can still use a fused memory-efficient kernel on GPU.

    Args:
        q: `[B, H, L, D]`.
        k: `[B, Hkv, S, D]` with `H % Hkv == 0`.
        v: `[B, Hkv, S, D]`.
        mask: Additive float mask broadcastable to `[B, H, L, S]` (same dtype as q), bool keep mask,
            or None.
        scale: Softmax scale (`D ** -0.5` for ACE-Step).

    Returns:
        `[B, H, L, D]`.
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale
    )


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, q/k RMSNorm and (self-attention only) RoPE.

    Parameter names follow the official checkpoint: `q_proj, k_proj, v_proj, o_proj, q_norm, k_norm`.

    Args:
        hidden_size: Model width (queries, and keys/values for self-attention and cross-attention alike:
            the DiT projects the condition to its own width first).
        num_heads: Query heads.
        num_kv_heads: Key/value heads; must divide `num_heads`.
        head_dim: Per-head width.
        eps: RMSNorm epsilon of the q/k norms.
        bias: Whether the projections carry biases (False for every released checkpoint).
        is_cross: Cross-attention (keys/values from a context, no RoPE) instead of self-attention.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        eps: float = 1e-6,
        bias: bool = False,
        is_cross: bool = False,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.is_cross = is_cross
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps=eps)
        self.k_norm = RMSNorm(head_dim, eps=eps)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (k-normed, not rotated) and values of `x` `[B, S, hidden]` -> two `[B, Hkv, S, D]` tensors."""
        shape = (*x.shape[:-1], self.num_kv_heads, self.head_dim)
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attends from `x` `[B, L, hidden]`; returns `[B, L, hidden]`.

        Args:
            x: Query-side hidden states.
            rope: `(cos, sin)` tables `[L, D]` (self-attention only; ignored for cross-attention).
            mask: Additive mask broadcastable to `[B, H, L, S]`, or None.
            context: Cross-attention only: key/value source `[B, S, hidden]`.
            kv: Cross-attention only: precomputed `project_kv(context)`; used instead of `context`.
        """
        q_shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        q = self.q_norm(self.q_proj(x).view(q_shape)).transpose(1, 2)
        if self.is_cross:
            if kv is None:
                if context is None:
                    raise ValueError("cross-attention needs `context` or precomputed `kv`")
                kv = self.project_kv(context)
            k, v = kv
        else:
            if context is not None or kv is not None:
                raise ValueError("self-attention takes no `context`/`kv`")
            k, v = self.project_kv(x)
            if rope is not None:
                cos, sin = rope
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attend(q, k, v, mask=mask, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).flatten(2))
