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


def test_nan_in_the_vocabulary_table_fails_at_generation_not_silently(tmp_path) -> None:
    """The caption encoder's embedding table skips the load-time check (it stays memory-mapped); a NaN row
    that a prompt uses must still end in a NumericalError, never in a written noisy file."""
    from helpers.tiny_pipeline import write_tiny
    from safetensors.torch import load_file, save_file

    from encore.errors import NumericalError
    from encore.pipeline.loading import load_pipeline
    from encore.pipeline.request import GenerationRequest, TextInputs

    dit = write_tiny(tmp_path)
    weights = next((tmp_path / "Qwen3-Embedding-0.6B").glob("*.safetensors"))
    sd = load_file(str(weights))
    key = next(k for k in sd if k.endswith("embed_tokens.weight"))
    sd[key].fill_(float("nan"))
    save_file(sd, str(weights))
    pipe = load_pipeline(dit, device="cpu", dtype="float32")  # loads: the table is not read whole
    with pytest.raises(NumericalError):
        pipe.generate(GenerationRequest(text=TextInputs(caption="a tune", duration_s=1.0), seeds=(1,)))
