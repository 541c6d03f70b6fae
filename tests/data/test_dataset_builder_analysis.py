"""Signal labels for the dataset builder: tempo (onset autocorrelation) and key (Krumhansl-Kessler)."""

from __future__ import annotations

import numpy as np
import pytest

from encore.data.analysis import chroma, estimate_key, estimate_tempo

RATE = 22050


def _clicks(bpm: float, seconds: float = 16.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 0.01 * rng.standard_normal(int(seconds * RATE))
    for start in np.arange(0.0, seconds, 60.0 / bpm):
        i = int(start * RATE)
        n = min(600, x.shape[0] - i)
        x[i:i + n] += rng.standard_normal(n) * np.exp(-np.arange(n) / 80.0)
    return 0.3 * x


def _chords(progression: list[list[int]], seconds_each: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds_each * RATE)) / RATE
    parts = [sum(np.sin(2 * np.pi * 440 * 2 ** ((n - 69) / 12) * t) for n in chord) * np.exp(-1.5 * t)
             for chord in progression]
    return 0.2 * np.concatenate(parts)


@pytest.mark.parametrize("bpm", [72, 100, 128, 150])
def test_tempo_of_click_tracks(bpm: int) -> None:
    estimate = estimate_tempo(_clicks(bpm), RATE)
    assert abs(estimate.value - bpm) <= 0.5
    assert estimate.confidence > 0.6


def test_tempo_of_noise_and_short_input_is_unsure() -> None:
    noise = 0.1 * np.random.default_rng(1).standard_normal(16 * RATE)
    assert estimate_tempo(noise, RATE).confidence < 0.2
    assert estimate_tempo(noise[: 2 * RATE], RATE).value is None  # too short for a tempo


@pytest.mark.parametrize("progression, key", [
    ([[60, 64, 67], [65, 69, 72], [67, 71, 74], [60, 64, 67]], "C major"),   # I IV V I in C
    ([[57, 60, 64], [62, 65, 69], [64, 68, 71], [57, 60, 64]], "A minor"),   # i iv V i in A minor
    ([[67, 71, 74], [72, 76, 79], [74, 78, 81], [67, 71, 74]], "G major"),
    ([[63, 67, 70], [68, 72, 75], [70, 74, 77], [63, 67, 70]], "Eb major"),
])
def test_key_of_chord_progressions(progression: list[list[int]], key: str) -> None:
    estimate = estimate_key(_chords(progression * 4), RATE)
    assert estimate.value == key
    assert estimate.confidence > 0.5


def test_key_of_noise_is_unsure_and_chroma_is_normalised() -> None:
    noise = 0.1 * np.random.default_rng(2).standard_normal(8 * RATE)
    assert estimate_key(noise, RATE).confidence < 0.2
    profile = chroma(_chords([[60, 64, 67]] * 4), RATE)
    assert abs(profile.sum() - 1.0) < 1e-6 and set(np.argsort(profile)[-3:]) == {0, 4, 7}  # C, E, G
    assert estimate_key(np.zeros(4 * RATE), RATE).value is None
