"""Tempo/key estimators on synthetic signals with known answers, and the match/summary rules."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.eval_synth import cadence, clicks, synth_song

from encore.data.labels import all_keyscales
from encore.eval.analysis import (
    analyze_clip,
    key_match,
    key_score,
    key_summary,
    tempo_match,
    tempo_summary,
)


@pytest.mark.parametrize("accent", [1.0, 1.6])
def test_click_tracks_give_their_tempo_at_48k_stereo(accent: float) -> None:
    for bpm in (60, 67, 81, 95, 109, 123, 137, 151, 165, 179):
        wav = np.stack([clicks(bpm, 6.0, 48_000, accent=accent, seed=bpm)] * 2)
        got = analyze_clip(wav, 48_000)
        assert tempo_match(got.bpm, bpm) == "exact", (bpm, got)
        assert got.bpm_confidence > 0.3


def test_cadences_in_all_24_keys_give_their_key() -> None:
    for keyscale in all_keyscales():
        got = analyze_clip(cadence(keyscale, 4.0, 16_000, bpm=240.0), 16_000)
        assert key_match(got.keyscale, keyscale) == "exact", (keyscale, got)


def test_full_synthetic_song_gives_tempo_and_key() -> None:
    got = analyze_clip(synth_song(132, "Bb minor", ("bass", "drums", "keyboard"), 8.0), 16_000)
    assert tempo_match(got.bpm, 132) == "exact" and key_match(got.keyscale, "Bb minor") == "exact"


def test_silence_and_noise_give_no_confident_answer() -> None:
    silent = analyze_clip(np.zeros((2, 48_000 * 5), np.float32), 48_000)
    assert silent.bpm is None and silent.keyscale is None
    noise = analyze_clip(np.random.default_rng(0).standard_normal(22_050 * 6).astype(np.float32), 22_050)
    assert noise.key_confidence < 0.3


def test_tempo_relations() -> None:
    assert tempo_match(123.0, 120) == "exact" and tempo_match(125.5, 120) == "wrong"
    assert tempo_match(240.0, 120) == "double" and tempo_match(61.0, 120) == "half"
    assert tempo_match(180.0, 60) == "triple" and tempo_match(40.5, 120) == "third"
    assert tempo_match(None, 120) == "none"
    with pytest.raises(ValueError):
        tempo_match(120.0, 0)


def test_key_relations_and_enharmonics() -> None:
    assert key_match("C# minor", "Db minor") == "exact"
    assert key_match("A minor", "C major") == "relative" and key_match("Eb major", "C minor") == "relative"
    assert key_match("C minor", "C major") == "parallel"
    assert key_match("G major", "C major") == "fifth" and key_match("F major", "C major") == "fifth"
    assert key_match("D minor", "C major") == "wrong" and key_match("E minor", "C major") == "wrong"
    assert key_match(None, "C major") == "none"
    assert [key_score(m) for m in ("exact", "fifth", "relative", "parallel", "wrong")] == [
        1,
        0.5,
        0.3,
        0.2,
        0,
    ]


def test_summaries_count_each_relation_separately() -> None:
    t = tempo_summary(["exact", "double", "half", "wrong"])
    assert (t["acc1"], t["double"], t["half"], t["acc2"]) == (0.25, 0.25, 0.25, 0.75)
    k = key_summary(["exact", "relative", "parallel", "fifth", "wrong"])
    assert k["exact"] == 0.2 and k["related"] == pytest.approx(0.6)
    assert k["mirex"] == pytest.approx((1 + 0.3 + 0.2 + 0.5) / 5)
    with pytest.raises(ValueError):
        tempo_summary([])
