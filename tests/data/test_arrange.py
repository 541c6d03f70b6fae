from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mido")

from encore.data.arrange import (
    SCALES,
    Chord,
    bass_line,
    comp_part,
    fit_chords,
    melody_line,
    parse_roman,
    progression_chords,
)
from encore.data.score import Note


def test_parse_roman_in_major_and_minor():
    assert parse_roman("I", 0, "major") == (0, "maj")
    assert parse_roman("vi", 0, "major") == (9, "min")
    assert parse_roman("V7", 2, "major") == (9, "dom7")
    assert parse_roman("VI", 9, "minor") == (5, "maj")  # A minor: VI = F
    assert parse_roman("V", 9, "minor") == (4, "maj")  # harmonic-minor dominant E
    assert parse_roman("iiø7", 9, "minor") == (11, "m7b5")
    with pytest.raises(ValueError):
        parse_roman("X", 0, "major")


def test_progression_chords_cycle_and_timing():
    ch = progression_chords(("I", "IV", "V"), 7, "major", 3.0, 4)
    assert [(c.name, c.start, c.dur) for c in ch] == [("G", 0, 3), ("C", 3, 3), ("D", 6, 3), ("G", 9, 3)]


def test_fit_chords_finds_tonic_and_dominant():
    # bar 1 outlines C-E-G, bar 2 outlines G-B-D (C major)
    mel = [Note(i, 1.0, p, 90) for i, p in enumerate((60, 64, 67, 64, 67, 71, 74, 71))]
    ch = fit_chords(mel, 0, "major", 4.0, 8.0)
    assert [c.name for c in ch] == ["C", "G"]


def _in_key(pitches, tonic, mode):
    scale = {(tonic + s) % 12 for s in SCALES[mode]}
    if mode == "minor":
        scale.add((tonic + 11) % 12)  # raised leading tone of the major V
    return all(p % 12 in scale for p in pitches)


@pytest.mark.parametrize("mode", ["major", "minor"])
def test_lines_stay_in_key(mode):
    rng = np.random.default_rng(0)
    tonic = 3
    chords = progression_chords(
        ("i", "iv", "V", "i") if mode == "minor" else ("I", "IV", "V", "I"), tonic, mode, 4.0, 8
    )
    for style in ("root", "root5", "octave8", "pulse8", "sync"):
        assert _in_key([n.pitch for n in bass_line(chords, style, 4.0, rng)], tonic, mode)
    for style in ("block", "pulse", "offbeat", "waltz", "arp8", "arp16", "stab"):
        notes = comp_part(chords, style, 4.0)
        assert notes and _in_key([n.pitch for n in notes], tonic, mode)
    mel = melody_line(chords, tonic, mode, 4.0, rng, register=(60, 81))
    assert len(mel) >= 8 and _in_key([n.pitch for n in mel], tonic, mode)
    assert all(60 <= n.pitch <= 81 and 0 <= n.start < 32 for n in mel)
    # phrase ends (bar 4 and 8) land on the chord root
    for bar_end in (16.0, 32.0):
        last = max((n for n in mel if n.start < bar_end), key=lambda n: n.start)
        assert last.pitch % 12 == [c for c in chords if c.start <= last.start][-1].root


def test_melody_is_deterministic_given_rng():
    chords = [Chord(0, "maj", 0.0, 4.0), Chord(7, "maj", 4.0, 4.0)]
    a = melody_line(chords, 0, "major", 4.0, np.random.default_rng(5))
    b = melody_line(chords, 0, "major", 4.0, np.random.default_rng(5))
    assert a == b
