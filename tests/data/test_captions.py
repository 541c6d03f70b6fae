from __future__ import annotations

import numpy as np

from encore.data.captions import instrument_words, make_captions, tempo_words
from encore.data.instruments import classes_in_text
from encore.data.labels import InstrumentLabel

INSTS = [
    InstrumentLabel("drums", "standard kit", 0, True, "drums"),
    InstrumentLabel("bass", "electric bass", 33, False, "bass"),
    InstrumentLabel("woodwinds", "alto sax", 65, False, "lead"),
]


def _caps(seed: int, **kw):
    args = {
        "genre": "bossa nova",
        "bpm": 128,
        "keyscale": "D minor",
        "time_signature": "4/4",
        "era": "1960s",
        "instruments": INSTS,
        "rng": np.random.default_rng(seed),
    }
    args.update(kw)
    return make_captions(**args)


def test_captions_are_deterministic_and_vary_with_seed():
    assert _caps(1) == _caps(1)
    assert len({tuple(_caps(s)) for s in range(8)}) > 4


def test_dense_caption_states_every_fact_and_only_rendered_instruments():
    for seed in range(10):
        dense, medium, sparse = _caps(seed)
        assert "128 BPM" in dense and "D minor" in dense and "4/4" in dense and "bossa nova" in dense.lower()
        assert classes_in_text(dense) == {"drums", "bass", "woodwinds"}
        assert classes_in_text(medium) <= {"drums", "bass", "woodwinds"}
        assert len(sparse) < len(medium) < len(dense) or len(sparse) < len(dense)
        assert "bright" not in dense and "cheerful" not in dense  # minor-mode clip


def test_genre_names_that_contain_an_instrument_word_name_no_instrument():
    assert classes_in_text("A happy Irish fiddle tune track played on nylon guitar") == {"guitar"}
    assert classes_in_text("drum and bass with saw lead and drums") == {"synth", "drums"}
    assert classes_in_text("a fiddle and a bass") == {"strings", "bass"}  # the words alone still count


def test_instrument_words_lead_first_drums_last_and_solo():
    assert instrument_words(INSTS) == ["alto sax", "electric bass", "drums"]
    one = [InstrumentLabel("strings", "violin", 40, False, "melody")]
    quartet = one * 4
    assert any("solo violin" in c for s in range(10) for c in _caps(s, instruments=one))
    assert not any("solo" in c for s in range(10) for c in _caps(s, instruments=quartet))


def test_tempo_words_are_monotone_buckets():
    assert tempo_words(60)[0] == "slow" and tempo_words(170)[0] == "fast"


def test_retime_caption_rewrites_number_and_tempo_word():
    from encore.data.captions import retime_caption

    text = "A moody, brisk western swing track; 4/4 time, G minor, 157 BPM"
    assert retime_caption(text, 157, 120) == "A moody, groovy western swing track; 4/4 time, G minor, 120 BPM"
    assert retime_caption("Brisk and dark, 161 bpm, 1610 BPM", 161, 140) == "Driving and dark, 140 bpm, 1610 BPM"
    assert retime_caption("mid-tempo folk, 90 bpm", 90, 70) == "laid-back folk, 70 bpm"
    assert retime_caption("slow air, 70 BPM", 70, 72) == "slow air, 72 BPM"  # same bin: word kept
    assert retime_caption("folk in G major", 100, 120) == "folk in G major"
