"""`all_finite`: the fast sum check must agree with `torch.isfinite(t).all()` in every case."""

from __future__ import annotations

import pytest
import torch

from encore.pipeline.checkpoint import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_agrees_with_isfinite(dtype: torch.dtype, bad: float | None) -> None:
    t = torch.randn(3_000_001, generator=torch.Generator().manual_seed(0)).to(dtype)
    if bad is not None:
        t[1_234_567] = bad
    assert all_finite(t, chunk=1000) == bool(torch.isfinite(t).all()) == (bad is None)


def test_opposite_infinities_and_overflowing_sums() -> None:
    both = torch.tensor([float("inf"), float("-inf"), 1.0])
    assert not all_finite(both)  # the sum is NaN, the exact pass finds the infinities
    huge = torch.full((8,), 3e38)  # every element finite, the float32 sum overflows to inf
    assert all_finite(huge)
    assert all_finite(torch.empty(0))
