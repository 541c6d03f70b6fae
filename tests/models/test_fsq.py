"""FSQ math: codes <-> indices over the whole 64 000-code book, quantiser rounding, soft clamp."""

from __future__ import annotations

import pytest
import torch

from encore.models import fsq
from encore.models.fsq import ResidualFSQ

LEVELS = (8, 8, 8, 5, 5, 5)


def test_basis_and_size() -> None:
    assert fsq.fsq_basis(LEVELS).tolist() == [1, 8, 64, 512, 2560, 12800]
    assert fsq.codebook_size(LEVELS) == 64_000


def test_indices_codes_round_trip_all_codes() -> None:
    idx = torch.arange(64_000)
    codes = fsq.indices_to_codes(idx, LEVELS)
    assert codes.shape == (64_000, 6)
    assert torch.equal(fsq.codes_to_indices(codes, LEVELS), idx)
    # Quantising an exact code returns the same code (a fixed point of the rounding).
    assert torch.equal(fsq.levels_to_indices(fsq.quantize_levels(codes, LEVELS), LEVELS), idx)
    # Every code vector is distinct and each channel takes exactly its documented values.
    assert torch.unique(codes, dim=0).shape[0] == 64_000
    expected8 = torch.tensor([-1, -5 / 7, -3 / 7, -1 / 7, 1 / 7, 3 / 7, 5 / 7, 1])
    expected5 = torch.tensor([-1, -0.5, 0, 0.5, 1])
    for ch, want in enumerate([expected8] * 3 + [expected5] * 3):
        torch.testing.assert_close(torch.unique(codes[:, ch]), want)


def test_quantize_levels_bounds_and_rounding() -> None:
    z = torch.tensor([[-5.0, -1.0, -0.99, 0.0, 0.3, 5.0]]).T.expand(-1, 6)
    k = fsq.quantize_levels(z, LEVELS)
    assert k.min() >= 0 and (k <= torch.tensor(LEVELS) - 1).all()
    # level 5: step 0.5 -> 0.0 maps to the middle level 2, 0.3 rounds to 0.5 (level 3)
    assert k[3, 3] == 2 and k[4, 3] == 3 and k[5, 3] == 4 and k[0, 3] == 0


def test_soft_clamp_constants() -> None:
    big = torch.full((1, 6), 1e4)
    torch.testing.assert_close(fsq.soft_clamp(big, LEVELS)[0], torch.tensor([8 / 7] * 3 + [1.25] * 3))
    small = torch.full((1, 6), 1e-3)
    torch.testing.assert_close(fsq.soft_clamp(small, LEVELS), small, rtol=1e-5, atol=0)


def test_residual_fsq_module() -> None:
    q = ResidualFSQ(16, LEVELS)
    x = torch.randn(2, 7, 16) * 10
    quantized, indices = q(x)
    assert quantized.shape == (2, 7, 16) and indices.shape == (2, 7, 1) and indices.dtype == torch.int64
    torch.testing.assert_close(q.get_output_from_indices(indices), quantized, rtol=0, atol=0)
    torch.testing.assert_close(q.get_output_from_indices(indices[..., 0]), quantized, rtol=0, atol=0)
    with pytest.raises(ValueError, match="lie in"):
        q.get_output_from_indices(torch.tensor([[64_000]]))
    with pytest.raises(ValueError, match="integers"):
        q.get_output_from_indices(torch.zeros(1, 2))
