"""Attention, RMSNorm, SwiGLU and timestep features against straightforward reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from encore.nn.attention import Attention
from encore.nn.embeddings import timestep_sinusoid
from encore.nn.masks import attention_bias
from encore.nn.mlp import SwiGLU
from encore.nn.norm import RMSNorm
from encore.nn.rope import apply_rotary, rope_tables


def _eager(attn: Attention, x: torch.Tensor, ctx: torch.Tensor, rope, mask) -> torch.Tensor:
    b, length, _ = x.shape
    q = attn.q_norm(attn.q_proj(x).view(b, length, attn.num_heads, -1)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(ctx).view(b, ctx.shape[1], attn.num_kv_heads, -1)).transpose(1, 2)
    v = attn.v_proj(ctx).view(b, ctx.shape[1], attn.num_kv_heads, -1).transpose(1, 2)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    group = attn.num_heads // attn.num_kv_heads
    heads = []
    for h in range(attn.num_heads):  # query head h reads kv head h // group
        scores = q[:, h] @ k[:, h // group].transpose(-1, -2) / math.sqrt(attn.head_dim)
        if mask is not None:
            scores = scores + mask[:, 0]
        heads.append(scores.softmax(-1) @ v[:, h // group])
    return attn.o_proj(torch.stack(heads, 1).transpose(1, 2).flatten(2))


def test_self_attention_gqa_matches_eager() -> None:
    attn = Attention(32, 4, 2, 8)
    x = torch.randn(2, 20, 32)
    rope = rope_tables(20, 8, 1e6, device=x.device, dtype=x.dtype)
    pad = torch.ones(2, 20, dtype=torch.long)
    pad[1, 15:] = 0
    mask = attention_bias(20, window=4, padding=pad, dtype=x.dtype, device=x.device)
    torch.testing.assert_close(attn(x, rope=rope, mask=mask), _eager(attn, x, x, rope, mask))


def test_cross_attention_uses_context_without_rope() -> None:
    attn = Attention(32, 8, 2, 8, is_cross=True)
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 13, 32)
    out = attn(x, context=ctx)
    torch.testing.assert_close(out, _eager(attn, x, ctx, None, None))
    torch.testing.assert_close(attn(x, kv=attn.project_kv(ctx)), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="context"):
        attn(x)
    with pytest.raises(ValueError, match="self-attention"):
        Attention(32, 8, 2, 8)(x, context=ctx)


def test_rmsnorm_upcasts_and_casts_back() -> None:
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 16) * 5
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    xb = x.to(torch.bfloat16)
    norm_b = norm.to(torch.bfloat16)
    x32 = xb.float()
    ref = norm_b.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(norm_b(xb), ref)


def test_swiglu() -> None:
    mlp = SwiGLU(8, 12)
    x = torch.randn(4, 8)
    expected = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), expected)


def test_timestep_sinusoid_is_cos_first() -> None:
    t = torch.tensor([0.0, 250.0, 1000.0])
    emb = timestep_sinusoid(t, 256)
    assert emb.shape == (3, 256) and emb.dtype == torch.float32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float64) / 128)
    args = t.double()[:, None] * freqs
    torch.testing.assert_close(emb.double(), torch.cat((args.cos(), args.sin()), -1), atol=2e-4, rtol=0)
    assert torch.equal(emb[0, :128], torch.ones(128))  # t = 0: cos part ones, sin part zeros
    assert torch.equal(emb[0, 128:], torch.zeros(128))
