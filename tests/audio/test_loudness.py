"""`encore.audio.loudness`: peak safety, peak normalisation, LUFS target with a true-peak ceiling."""

from __future__ import annotations

import math

import pytest
import torch

from encore.audio.io import load_audio, save_audio
from encore.audio.loudness import (
    Mastering,
    apply_mastering,
    gain_to_db,
    measure_loudness,
    peak_normalize,
    peak_safe,
    true_peak,
)
from encore.errors import InvalidRequest, NumericalError

RATE = 16000


def _noise(seconds: float = 1.0, level: float = 0.1) -> torch.Tensor:
    return level * torch.randn(2, int(seconds * RATE), generator=torch.Generator().manual_seed(0))


def _clicks(seconds: float = 1.5) -> torch.Tensor:
    """Quiet noise with a few loud clicks: high crest factor, so a loud LUFS target hits the peak ceiling."""
    wav = _noise(seconds, 0.01)
    wav[:, :: RATE // 4] = 0.5
    return wav


def test_peak_safe_and_peak_normalize():
    quiet = _noise(0.1, 0.01)
    torch.testing.assert_close(peak_safe(quiet), quiet)
    hot = _noise(0.1, 2.0)
    assert peak_safe(hot).abs().max().item() == pytest.approx(1.0)
    assert gain_to_db(peak_normalize(quiet, -1.0).abs().max().item()) == pytest.approx(-1.0, abs=1e-4)
    torch.testing.assert_close(peak_normalize(torch.zeros(2, 10)), torch.zeros(2, 10))


def test_true_peak_sees_intersample_peaks():
    # A quarter-rate sine sampled at 45 degrees: every sample is at 0.707 of the true amplitude.
    n = torch.arange(4000, dtype=torch.float64)
    wav = torch.sin(2 * math.pi * n / 4 + math.pi / 4).expand(2, -1).contiguous()
    sample_peak = wav.abs().max().item()
    assert sample_peak == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert true_peak(wav, RATE) == pytest.approx(1.0, abs=0.02)


def test_loudness_target_reached(tmp_path):
    wav = _noise(1.5, 0.05)
    out = apply_mastering(wav, RATE, Mastering(loudness_lufs=-23.0, true_peak_dbtp=-1.0))
    assert measure_loudness(out, RATE) == pytest.approx(-23.0, abs=0.05)
    assert gain_to_db(true_peak(out, RATE)) <= -1.0
    path = save_audio(tmp_path / "m.flac", wav, RATE, mastering=Mastering(loudness_lufs=-23.0))
    written, _ = load_audio(path, target_rate=None)
    assert measure_loudness(written, RATE) == pytest.approx(-23.0, abs=0.1)  # after 16-bit quantisation


def test_true_peak_ceiling_wins_over_loudness_target():
    wav = _clicks()  # at -14 LUFS its clicks would exceed -1 dBTP
    out = apply_mastering(wav, RATE, Mastering(loudness_lufs=-14.0, true_peak_dbtp=-1.0))
    assert gain_to_db(true_peak(out, RATE)) == pytest.approx(-1.0, abs=1e-3)
    measured = measure_loudness(out, RATE)
    assert measured is not None and measured < -14.5


def test_loudness_undefined_cases():
    assert measure_loudness(_noise(0.2), RATE) is None  # shorter than one 0.4 s block
    assert measure_loudness(torch.zeros(2, RATE), RATE) is None
    short = _noise(0.2, 0.9)
    out = apply_mastering(short, RATE, Mastering(loudness_lufs=-14.0, true_peak_dbtp=-3.0))
    assert gain_to_db(true_peak(out, RATE)) <= -3.0 + 1e-3


def test_mastering_validation_and_nan():
    with pytest.raises(InvalidRequest, match="loudness_lufs"):
        Mastering(loudness_lufs=5.0)
    with pytest.raises(InvalidRequest, match="peak_dbfs"):
        Mastering(peak_dbfs=-1.0, loudness_lufs=-14.0)
    with pytest.raises(InvalidRequest, match="true_peak_dbtp"):
        Mastering(true_peak_dbtp=1.0)
    bad = _noise(0.1)
    bad[0, 3] = float("nan")
    with pytest.raises(NumericalError):
        apply_mastering(bad, RATE)
