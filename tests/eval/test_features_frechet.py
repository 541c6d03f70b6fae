"""Log-mel features and the Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.eval_synth import RATE, synth_song

from encore.eval.features import FEATURE_DIM, N_MELS, clip_features, log_mel, mel_filterbank, to_mono
from encore.eval.frechet import frechet_between, frechet_distance, gaussian_stats


def test_mel_filterbank_covers_every_band_with_unit_area() -> None:
    bank = mel_filterbank(22_050, 2048, 64, 30.0, 11_000.0)
    assert bank.shape == (64, 1025)
    np.testing.assert_allclose(bank.sum(axis=1), 1.0, rtol=1e-5)
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > peaks[0]


def test_log_mel_puts_a_tone_in_the_right_band() -> None:
    t = np.arange(22_050) / 22_050
    low, high = log_mel(np.sin(2 * np.pi * 200 * t)), log_mel(np.sin(2 * np.pi * 4000 * t))
    assert low.shape[1] == N_MELS
    assert low.mean(axis=0).argmax() < high.mean(axis=0).argmax()


def test_features_ignore_gain_and_channels_but_see_timbre() -> None:
    song = synth_song(120, "C major", ("keyboard",), 3.0)
    f = clip_features(song, RATE)
    assert f.shape == (FEATURE_DIM,) and f.dtype == np.float32
    np.testing.assert_allclose(clip_features(0.1 * song, RATE), f, atol=1e-3)
    np.testing.assert_allclose(clip_features(song[0], RATE), f, atol=1e-5)
    drums = clip_features(synth_song(120, "C major", ("drums",), 3.0), RATE)
    assert np.abs(drums - f).mean() > 10 * np.abs(clip_features(0.1 * song, RATE) - f).mean()


def test_to_mono_resamples_and_rejects_bad_shapes() -> None:
    assert to_mono(np.zeros((2, 48_000)), 48_000, 16_000).shape == (16_000,)
    with pytest.raises(ValueError):
        to_mono(np.zeros((1, 2, 3)), 48_000, 16_000)


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    linalg = pytest.importorskip("scipy.linalg")
    (ma, ca), (mb, cb) = gaussian_stats(a), gaussian_stats(b)
    root = linalg.sqrtm(ca @ cb).real
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_frechet_matches_closed_forms_and_scipy() -> None:
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    assert frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])
    ) == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) + 0.5
    assert frechet_between(a, b) == pytest.approx(_scipy_frechet(a, b), rel=1e-6)
    assert frechet_between(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_handles_rank_deficient_sets_and_orders_distances() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((20, 64))  # fewer clips than dimensions: singular covariance
    near = rng.standard_normal((20, 64))
    far = rng.standard_normal((20, 64)) * 3 + 2
    d_near, d_far = frechet_between(near, ref), frechet_between(far, ref)
    assert np.isfinite(d_near) and 0 < d_near < d_far
    with pytest.raises(ValueError):
        gaussian_stats(ref[:1])
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_features_run_on_torch_converted_audio() -> None:
    wav = torch.from_numpy(synth_song(100, "A minor", ("bass",), 2.0)).numpy()
    assert np.isfinite(clip_features(wav, RATE)).all()
