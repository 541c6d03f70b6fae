"""RoPE tables and rotation: definition, norm preservation and relative-position invariance of q.k."""

from __future__ import annotations

import torch

from encore.nn.rope import apply_rotary, rope_inv_freq, rope_tables, rotate_half


def test_tables_match_definition() -> None:
    cos, sin = rope_tables(9, 8, 1e6, device=torch.device("cpu"), dtype=torch.float32)
    assert cos.shape == sin.shape == (9, 8)
    inv = torch.tensor([1e6 ** (-2 * j / 8) for j in range(4)], dtype=torch.float64)
    angles = torch.arange(9, dtype=torch.float64)[:, None] * inv[None]
    assert torch.allclose(cos.double(), torch.cat((angles, angles), -1).cos(), atol=1e-6)
    assert torch.allclose(sin.double(), torch.cat((angles, angles), -1).sin(), atol=1e-6)
    assert rope_inv_freq(8, 1e6).dtype == torch.float32


def test_tables_computed_in_fp32_then_cast() -> None:
    cos32, _ = rope_tables(300, 128, 1e6, device=torch.device("cpu"), dtype=torch.float32)
    cos16, _ = rope_tables(300, 128, 1e6, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert cos16.dtype == torch.bfloat16
    assert torch.equal(cos16, cos32.to(torch.bfloat16))


def test_rotate_half() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


def test_rotation_preserves_norm_and_is_relative() -> None:
    dim, length = 16, 40
    cos, sin = rope_tables(length, dim, 10_000.0, device=torch.device("cpu"), dtype=torch.float64)
    q = torch.randn(dim, dtype=torch.float64)
    k = torch.randn(dim, dtype=torch.float64)
    qs = apply_rotary(q.expand(1, 1, length, dim), cos, sin)[0, 0]
    ks = apply_rotary(k.expand(1, 1, length, dim), cos, sin)[0, 0]
    assert torch.allclose(qs.norm(dim=-1), q.norm().expand(length))
    # q at m, k at n: the score depends on m - n only.
    for m, n, shift in [(3, 1, 10), (0, 7, 25), (12, 12, 20)]:
        assert torch.allclose(qs[m] @ ks[n], qs[m + shift] @ ks[n + shift], atol=1e-10)
    assert not torch.allclose(qs[3] @ ks[1], qs[3] @ ks[2])
