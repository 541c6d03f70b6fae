"""Beat hints: the phase they write, crops that keep it, the errors, and the config flag that asks for them."""

from __future__ import annotations

import math

import pytest
import torch

from encore.errors import InvalidRequest
from encore.models.config import AceStepConfig
from encore.tasks.beat_hints import beat_hints, beat_phase, phase_patterns

SILENCE = torch.linspace(-1, 1, 400 * 8).reshape(400, 8)


def _hints(bpm: float, frames: int, offset: int = 0) -> torch.Tensor:
    return beat_hints(SILENCE, bpm, num_frames=frames, sample_rate=48000, hop_samples=1920, offset_frames=offset)


def test_phase_peaks_on_the_beats() -> None:
    # 150 bpm at 25 frames/s: a beat every 10 frames, so frames 0, 10, 20 ... sit exactly on beats.
    hints = _hints(150.0, 100)
    ones, alternating = phase_patterns(8)
    cos = ((hints - SILENCE[:100]).double() @ ones) / 8
    sin = ((hints - SILENCE[:100]).double() @ alternating) / 8
    assert torch.allclose(cos[::10], torch.ones(10, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(cos[5::10], -torch.ones(10, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(cos**2 + sin**2, torch.ones(100, dtype=torch.float64), atol=1e-5)
    assert float(sin[2]) > 0  # the phase advances (sin leads cos by a quarter beat)


def test_a_crop_keeps_the_phase_of_its_clip() -> None:
    full = _hints(97.0, 300)
    crop = _hints(97.0, 120, offset=150)
    assert torch.allclose(crop - SILENCE[:120], full[150:270] - SILENCE[150:270], atol=1e-5)


def test_phase_counts_beats() -> None:
    phase = beat_phase(251, 120.0, frame_rate=25.0)
    assert math.isclose(float(phase[250]), 20.0)  # 10 s at 120 bpm


def test_patterns_are_orthogonal_and_need_even_channels() -> None:
    ones, alternating = phase_patterns(64)
    assert float(ones @ alternating) == 0.0
    with pytest.raises(ValueError, match="even number"):
        phase_patterns(7)


@pytest.mark.parametrize("bpm", [0.0, -5.0, float("nan")])
def test_bad_bpm_names_the_field(bpm: float) -> None:
    with pytest.raises(InvalidRequest, match="text.bpm"):
        _hints(bpm, 10)


def test_short_silence_is_refused() -> None:
    with pytest.raises(ValueError, match="does not cover"):
        _hints(120.0, 401)


def test_config_flag_is_written_only_when_set() -> None:
    plain = AceStepConfig.tiny()
    assert "beat_hints" not in plain.to_dict()  # official config.json files stay byte-compatible
    flagged = AceStepConfig.from_dict({**plain.to_dict(), "beat_hints": True})
    assert flagged.beat_hints and flagged.to_dict()["beat_hints"] is True
