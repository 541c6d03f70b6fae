from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mido")

from encore.data import sources
from encore.data.arrange import progression_chords
from encore.data.score import Note


def test_parse_meter_keeps_supported_numerators():
    assert sources.parse_meter("6/8") == (6, 8)
    assert sources.parse_meter("C") == (4, 4) and sources.parse_meter("C|") == (2, 2)
    assert sources.parse_meter("9/8") is None and sources.parse_meter("none") is None


def test_signature_major_of_modal_keys():
    assert sources.signature_major("G") == 7
    assert sources.signature_major("Em") == 7
    assert sources.signature_major("Ador") == 7
    assert sources.signature_major("Dmix") == 7
    assert sources.signature_major("Bb") == 10
    with pytest.raises(sources.SourceUnusable):
        sources.signature_major("Hp")


def test_melody_key_from_final_note_and_thirds():
    minor_tune = [Note(float(i), 1.0, p, 80) for i, p in enumerate((69, 72, 76, 72, 71, 69))]
    assert sources.melody_key(minor_tune, sources.signature_major("C")) == (9, "minor")
    major_tune = [Note(float(i), 1.0, p, 80) for i, p in enumerate((60, 64, 67, 64, 62, 60))]
    assert sources.melody_key(major_tune, 0) == (0, "major")
    with pytest.raises(sources.SourceUnusable):
        sources.melody_key([Note(0.0, 1.0, 64, 80)], 0)  # ends on E under a C signature: no plausible tonic


def test_folk_tune_from_abc(abc2midi):
    tunes = sources.abc_tunes(("oneills1850",))
    assert len(tunes) > 1000
    tune = next(t for t in tunes if t.title == "The Enchanted Valley")  # K:Gm, M:2/4
    score = sources.folk_score(tune)
    assert (score.tonic, score.mode, score.time_sig) == (7, "minor", (2, 4))
    assert score.meta["region"] == "Irish" and len(score.parts) == 1 and len(score.parts[0].notes) > 40
    # abc2midi applies the key signature: G minor's Bb/Eb appear, B/E naturals only where marked
    pcs = {n.pitch % 12 for n in score.parts[0].notes}
    assert 10 in pcs


def test_chorale_from_music21(music21_ok, tmp_path):
    score = sources.polyphony_score("bach/bwv10.7.mxl", tmp_path)
    assert len(score.parts) == 4 and score.time_sig == (4, 4)
    assert (score.tonic, score.mode) == (7, "minor")  # BWV 10/7 is in G minor
    assert score.meta["composer"] == "J.S. Bach" and score.meta["era"] == "baroque"
    assert list(tmp_path.iterdir())  # parsed once, cached as JSON
    again = sources.polyphony_score("bach/bwv10.7.mxl", tmp_path)
    assert [len(p.notes) for p in again.parts] == [len(p.notes) for p in score.parts]


@pytest.mark.parametrize("name", ["Waltz", "BossaNova"])
def test_mma_groove_parts_are_deterministic_and_metred(mma, name):
    groove = next(g for g in sources.GROOVES if g.name == name)
    chords = progression_chords(("I", "IV", "V", "I"), 2, "major", float(groove.meter), 4)
    parts = sources.mma_parts(groove, chords, seed=11)
    assert parts == sources.mma_parts(groove, chords, seed=11)
    drums = [p for p in parts if p.is_drum]
    assert drums and all(p.track_class in ("drums", "percussion") for p in drums)
    assert any(not p.is_drum for p in parts)
    end = max(n.start for p in parts for n in p.notes)
    assert end < 4 * groove.meter + 1e-6  # four bars of `meter` beats
    bass = [p for p in parts if p.track_class == "bass"]
    if bass:  # the bass plays the chord roots/fifths of D major's I-IV-V
        assert {n.pitch % 12 for n in bass[0].notes} <= {2, 4, 6, 7, 9, 11, 1}


@pytest.mark.slow
def test_every_groove_renders_with_its_declared_metre(mma):
    """C major for one bar, then G major: with the declared bar length, the harmony changes exactly there."""
    for groove in sources.GROOVES:
        m = float(groove.meter)
        chords = progression_chords(("I", "V", "I", "V"), 0, "major", m, 4)
        parts = sources.mma_parts(groove, chords, seed=1)
        pitched = [n for p in parts if not p.is_drum for n in p.notes]
        assert pitched and max(n.start for p in parts for n in p.notes) < 4 * m + 1e-6, groove.name
        for bar, chord_pcs in ((0, {0, 4, 7}), (1, {7, 11, 2}), (2, {0, 4, 7}), (3, {7, 11, 2})):
            # notes starting in the bar are mostly its chord tones (walking bass adds passing tones)
            in_bar = [
                n.pitch % 12 in chord_pcs for n in pitched if bar * m - 0.3 <= n.start < (bar + 1) * m - 0.3
            ]
            assert in_bar and np.mean(in_bar) >= 0.6, (groove.name, bar, np.mean(in_bar))
