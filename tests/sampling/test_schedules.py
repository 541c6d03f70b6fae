"""Schedules: the SPEC §9.3 turbo tables, custom-list snapping, base shift and training timesteps."""

from __future__ import annotations

import pytest
import torch

from encore.errors import InvalidRequest
from encore.sampling.schedules import (
    TURBO_TIMESTEPS,
    VALID_TIMESTEPS,
    apply_shift,
    linear_renoise_times,
    nearest_turbo_shift,
    sample_training_timesteps,
    shifted_linear_timesteps,
    snap_custom_timesteps,
    turbo_timesteps,
)

# Literal copies of the official tables (SPEC §9.3, off-model turbo `SHIFT_TIMESTEPS`).
SPEC_TURBO = {
    1.0: [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
    2.0: [1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693,
          0.6666666666666666, 0.5454545454545454, 0.4, 0.2222222222222222],
    3.0: [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3],
}  # fmt: skip
# SPEC §9.5: the same tables after the official bf16 cast.
SPEC_TURBO_BF16 = {
    2.0: [1.0, 0.93359375, 0.85546875, 0.76953125, 0.66796875, 0.546875, 0.400390625, 0.22265625],
    3.0: [1.0, 0.953125, 0.8984375, 0.83203125, 0.75, 0.64453125, 0.5, 0.30078125],
}


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_equal_spec_literals(shift: float) -> None:
    assert list(TURBO_TIMESTEPS[shift]) == SPEC_TURBO[shift]
    assert turbo_timesteps(shift, dtype=torch.float64).tolist() == SPEC_TURBO[shift]


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_equal_shift_formula(shift: float) -> None:
    grid = torch.linspace(1, 0, 9, dtype=torch.float64)[:-1].tolist()
    assert [shift * t / (1 + (shift - 1) * t) for t in grid] == SPEC_TURBO[shift]
    assert apply_shift(torch.linspace(1, 0, 9, dtype=torch.float64)[:-1], shift).tolist() == SPEC_TURBO[shift]


@pytest.mark.parametrize("shift", [2.0, 3.0])
def test_turbo_bf16_matches_official_rounding(shift: float) -> None:
    assert turbo_timesteps(shift, dtype=torch.bfloat16).float().tolist() == SPEC_TURBO_BF16[shift]


@pytest.mark.parametrize(
    ("requested", "table"), [(0.2, 1.0), (1.5, 1.0), (1.51, 2.0), (2.5, 2.0), (2.6, 3.0), (5.0, 3.0)]
)
def test_turbo_shift_rounds_to_nearest_table_ties_low(requested: float, table: float) -> None:
    assert nearest_turbo_shift(requested) == table
    assert turbo_timesteps(requested, dtype=torch.float64).tolist() == SPEC_TURBO[table]


def test_valid_timesteps_are_union_of_tables() -> None:
    union = sorted({t for table in SPEC_TURBO.values() for t in table}, reverse=True)
    assert list(VALID_TIMESTEPS) == union
    assert len(VALID_TIMESTEPS) == 20


def test_snap_custom_timesteps_ui_example() -> None:
    got = snap_custom_timesteps([0.97, 0.76, 0.5, 0.085, 0, 0.0], dtype=torch.float64).tolist()
    assert got == [0.9545454545454546, 0.7692307692307693, 0.5, 0.125]


def test_snap_picks_nearest_valid_value() -> None:
    got = snap_custom_timesteps([0.86, 0.41, 0.26, 0.01], dtype=torch.float64).tolist()
    assert got == [0.8571428571428571, 0.4, 0.25, 0.125]


@pytest.mark.parametrize("values", [[], [0.0, 0.0], [0.5] * 21, [1.2], [-0.1]])
def test_snap_rejects_bad_lists(values: list[float]) -> None:
    with pytest.raises(InvalidRequest) as err:
        snap_custom_timesteps(values)
    assert err.value.field == "diffusion.timesteps"


def test_snap_allows_twenty_values_plus_trailing_zero() -> None:
    assert snap_custom_timesteps([0.5] * 20 + [0.0]).numel() == 20


def test_shifted_linear_endpoints_and_length() -> None:
    t = shifted_linear_timesteps(5, 3.0, dtype=torch.float64)
    assert t.shape == (6,)
    assert t[0].item() == 1.0 and t[-1].item() == 0.0
    assert torch.all(t[1:] < t[:-1])
    base = torch.linspace(1, 0, 6, dtype=torch.float64)
    torch.testing.assert_close(t, 3.0 * base / (1 + 2.0 * base), rtol=0, atol=0)


def test_shifted_linear_shift_one_is_plain_linspace() -> None:
    assert torch.equal(shifted_linear_timesteps(8, 1.0), torch.linspace(1, 0, 9))


def test_shifted_linear_bf16_matches_spec_rounding() -> None:
    t = shifted_linear_timesteps(8, 3.0, dtype=torch.bfloat16)
    assert t.dtype == torch.bfloat16
    assert t.float().tolist() == SPEC_TURBO_BF16[3.0] + [0.0]


def test_shifted_linear_rejects_zero_steps() -> None:
    with pytest.raises(InvalidRequest):
        shifted_linear_timesteps(0)


def test_linear_renoise_times() -> None:
    assert linear_renoise_times(4) == (0.75, 0.5, 0.25, 0.0)


def test_training_timesteps_are_max_of_two_logit_normals() -> None:
    gen = torch.Generator().manual_seed(7)
    t = sample_training_timesteps(5, generator=gen)
    gen = torch.Generator().manual_seed(7)
    a = torch.sigmoid(torch.randn(5, generator=gen) * 1.0 - 0.4)
    b = torch.sigmoid(torch.randn(5, generator=gen) * 1.0 - 0.4)
    assert torch.equal(t, torch.maximum(a, b))


def test_training_timesteps_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    t = sample_training_timesteps(20000, generator=gen, dtype=torch.float64)
    assert 0.0 < t.min() and t.max() < 1.0
    # E[max of two sigmoid(N(-0.4, 1))] is about 0.55 (a single draw has mean about 0.41).
    assert 0.52 < t.mean().item() < 0.58
