from __future__ import annotations

import pytest

mido = pytest.importorskip("mido")

from encore.data.score import (
    Note,
    Part,
    Score,
    excerpt,
    nearest_shift,
    read_midi,
    split_drums,
    transpose,
    write_midi,
)


def _score() -> Score:
    mel = Part("melody", [Note(0.0, 1.0, 60, 90), Note(1.0, 0.5, 64, 90), Note(3.5, 1.0, 67, 90)], program=73)
    drums = Part("drums", [Note(0.0, 0.1, 36, 100), Note(1.0, 0.1, 63, 90)], program=0, is_drum=True)
    return Score([mel, drums], (3, 4), 0, "major", 6.0)


def test_nearest_shift_covers_all_pairs_within_a_tritone():
    for a in range(12):
        for b in range(12):
            s = nearest_shift(a, b)
            assert -6 <= s <= 5 and (a + s) % 12 == b


def test_transpose_moves_pitches_and_tonic_but_not_drums():
    t = transpose(_score(), 5)
    assert [n.pitch for n in t.parts[0].notes] == [65, 69, 72]
    assert [n.pitch for n in t.parts[1].notes] == [36, 63]
    assert t.tonic == 5 and t.mode == "major"
    with pytest.raises(ValueError):
        transpose(_score(), 70)


def test_excerpt_shifts_and_cuts():
    e = excerpt(_score(), 1.0, 3.0)
    assert [(n.start, n.dur, n.pitch) for n in e.parts[0].notes] == [(0.0, 0.5, 64), (2.5, 0.5, 67)]
    assert e.length == 3.0


def test_split_drums_separates_kit_from_hand_percussion():
    parts = split_drums(_score().parts[1])
    assert [(p.role, p.track_class, [n.pitch for n in p.notes]) for p in parts] == [
        ("drums", "drums", [36]),
        ("percussion", "percussion", [63]),
    ]


def test_midi_round_trip_keeps_beats_tempo_and_metre(tmp_path):
    path = tmp_path / "x.mid"
    write_midi(_score(), 137.0, path)
    back = read_midi(path)
    assert back.time_sig == (3, 4) and back.bpm == pytest.approx(137.0, rel=1e-5)
    mel = next(p for p in back.parts if not p.is_drum)
    assert mel.program == 73
    assert [(n.start, n.dur, n.pitch) for n in mel.notes] == [(0.0, 1.0, 60), (1.0, 0.5, 64), (3.5, 1.0, 67)]
    assert sorted(n.pitch for p in back.parts if p.is_drum for n in p.notes) == [36, 63]
    # seconds on the wire: the tempo meta converts beats exactly
    now, onsets = 0.0, []
    for msg in mido.MidiFile(str(path)):
        now += msg.time
        if msg.type == "note_on" and msg.channel != 9:
            onsets.append(now)
    assert onsets[1] - onsets[0] == pytest.approx(60.0 / 137.0, abs=1e-3)
    assert onsets[2] - onsets[0] == pytest.approx(3.5 * 60.0 / 137.0, abs=1e-3)
