"""Pure logits transforms of the planner sampler."""

from __future__ import annotations

import torch

from encore.sampling import lm_sampling as S

NEG = float("-inf")


def test_cfg_formula_in_fp32() -> None:
    c = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    u = torch.tensor([[0.5, 3.0]], dtype=torch.bfloat16)
    out = S.apply_cfg(c, u, 2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[1.5, 1.0]]))


def test_repetition_penalty_divides_positive_multiplies_negative() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, NEG]])
    seen = torch.tensor([[True, True, False, True]])
    out = S.apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, NEG]]
    assert S.apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(S.apply_top_k(logits, 2)[0, 2:]).all() and torch.isfinite(S.apply_top_k(logits, 2)[0, :2]).all()
    assert torch.equal(S.apply_top_k(logits, 0), logits) and torch.equal(S.apply_top_k(logits, None), logits)
    kept = torch.isfinite(S.apply_top_p(logits, 0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7 <= 0.8: the token crossing p is kept
    assert torch.isfinite(S.apply_top_p(logits, 0.1))[0].tolist() == [True, False, False, False]  # top-1 always
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(S.apply_top_p(shuffled, 0.7))[0].tolist() == [False, True, False, True]
    assert torch.equal(S.apply_top_p(logits, 1.0), logits)


def test_sampling_never_picks_masked_and_follows_probabilities() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[NEG, 0.0, NEG, float(torch.log(torch.tensor(3.0))), NEG]]).expand(4000, 5)
    u = torch.rand(4000, generator=gen, dtype=torch.float64)
    idx = S.sample_tokens(logits, 1.0, u)
    counts = torch.bincount(idx, minlength=5)
    assert counts[[0, 2, 4]].sum() == 0
    assert abs(counts[3].item() / 4000 - 0.75) < 0.03
    assert S.sample_tokens(logits[:1], 0.0, u[:1]).item() == 3  # greedy
    edge = S.sample_tokens(logits[:2], 1.0, torch.tensor([0.0, 1.0 - 1e-12], dtype=torch.float64))
    assert edge.tolist() == [1, 3]


def test_sample_is_independent_of_padding_with_masked_entries() -> None:
    gen = torch.Generator().manual_seed(1)
    core = torch.randn(3, 50, generator=gen)
    padded = torch.cat([core, torch.full((3, 200), NEG)], dim=-1)
    u = torch.rand(3, generator=gen, dtype=torch.float64)
    assert torch.equal(S.sample_tokens(core, 0.8, u), S.sample_tokens(padded, 0.8, u))


def test_uniforms_come_from_each_rows_generator() -> None:
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = S.draw_uniforms([g1, torch.Generator().manual_seed(3)])
    b = S.draw_uniforms([g2])
    assert a[0] == b[0] and a.dtype == torch.float64
