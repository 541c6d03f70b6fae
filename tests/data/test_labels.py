from __future__ import annotations

import pytest

from encore.data.labels import ClipLabels, InstrumentLabel, all_keyscales, keyscale, parse_keyscale


def test_keyscale_round_trip_all_24_keys():
    keys = all_keyscales()
    assert len(set(keys)) == 24
    for k in keys:
        pc, mode = parse_keyscale(k)
        assert keyscale(pc, mode) == k
    assert keyscale(6, "minor") == "F# minor" and keyscale(10, "major") == "Bb major"


def test_parse_keyscale_accepts_enharmonics_and_rejects_garbage():
    assert parse_keyscale("Gb major") == (6, "major")
    assert parse_keyscale("A♯ minor") == (10, "minor")
    assert parse_keyscale("Cb major") == (11, "major")
    for bad in ("H major", "C dorian", "C", ""):
        with pytest.raises(ValueError):
            parse_keyscale(bad)


def test_labels_dict_round_trip_and_unknown_fields():
    lab = ClipLabels(
        clip_id="clip_000001",
        index=1,
        seed=3,
        source="mma",
        duration=4.0,
        sample_rate=48000,
        bpm=120,
        keyscale="C major",
        time_signature="4/4",
        timesignature="4",
        genre="rock",
        style="8Beat",
        era="",
        instruments=[InstrumentLabel("drums", "standard kit", 0, True, "drums")],
        stems={"drums": "stems/drums.flac"},
        mix="mix.flac",
        midi="clip.mid",
        soundfont="TimGM6mb",
    )
    again = ClipLabels.from_dict(lab.to_dict())
    assert again == lab and again.tracks == ["drums"]
    with pytest.raises(ValueError, match="unknown label fields"):
        ClipLabels.from_dict({**lab.to_dict(), "tempo": 1})
