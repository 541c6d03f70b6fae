"""Beat hints: the phase they write, crops that keep it, the key and instruments they may carry, the errors, and the
config flags that ask for them."""

from __future__ import annotations

import math

import pytest
import torch

from encore.data.instruments import hint_tracks
from encore.errors import InvalidRequest
from encore.models.config import AceStepConfig
from encore.tasks.beat_hints import (
    INSTRUMENT_HINT_TRACKS,
    beat_hints,
    beat_phase,
    instrument_offset,
    instrument_patterns,
    key_offset,
    key_patterns,
    phase_patterns,
)

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


def test_key_patterns_are_orthogonal_to_the_phase_and_to_each_other() -> None:
    for channels in (8, 16, 64):
        patterns = torch.stack([*phase_patterns(channels), *key_patterns(channels)])
        assert torch.equal(patterns @ patterns.T, channels * torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple of 8"):
        key_patterns(12)


def test_key_offset_places_the_tonic_on_the_circle_of_fifths_and_the_mode_apart() -> None:
    cos_p, sin_p, mode_p = key_patterns(16)

    def read(key: str) -> tuple[float, float, float]:
        offset = key_offset(key, 16)
        return float(offset @ cos_p) / 16, float(offset @ sin_p) / 16, float(offset @ mode_p) / 16

    assert read("C major") == pytest.approx((1.0, 0.0, 1.0))
    assert read("A minor") == pytest.approx((math.cos(math.pi / 2), 1.0, -1.0))  # A is three fifths above C
    assert read("G major")[:2] == pytest.approx((math.cos(math.pi / 6), math.sin(math.pi / 6)))  # one fifth
    assert torch.equal(key_offset("F# minor", 16), key_offset("Gb minor", 16))  # enharmonic spellings agree
    notes = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
    offsets = {tuple(key_offset(f"{n} {m}", 16).tolist()) for n in notes for m in ("major", "minor")}
    assert len(offsets) == 24


def test_key_hints_add_the_key_to_every_frame_and_leave_the_phase_alone() -> None:
    plain = beat_hints(SILENCE, 120.0, num_frames=50, sample_rate=48000, hop_samples=1920)
    keyed = beat_hints(SILENCE, 120.0, num_frames=50, sample_rate=48000, hop_samples=1920, keyscale="Eb minor")
    assert torch.allclose(keyed - plain, key_offset("Eb minor", 8).float().expand(50, 8), atol=1e-6)
    for pattern in phase_patterns(8):  # the beat phase reads the same with or without the key
        assert torch.allclose((keyed - plain).double() @ pattern, torch.zeros(50, dtype=torch.float64), atol=1e-5)
    with pytest.raises(InvalidRequest, match="text.keyscale"):
        beat_hints(SILENCE, 120.0, num_frames=5, sample_rate=48000, hop_samples=1920, keyscale="H major")


def test_key_hints_flag_is_written_only_when_set() -> None:
    plain = AceStepConfig.tiny()
    assert "key_hints" not in plain.to_dict()
    flagged = AceStepConfig.from_dict({**plain.to_dict(), "beat_hints": True, "key_hints": True})
    assert flagged.key_hints and flagged.to_dict()["key_hints"] is True


def test_instrument_patterns_fill_the_channels_left_and_read_back_each_track() -> None:
    patterns = torch.stack([*phase_patterns(16), *key_patterns(16), *instrument_patterns(16)])
    assert torch.equal(patterns @ patterns.T, 16 * torch.eye(16, dtype=torch.float64))  # all 16 orthogonal
    assert "vocals" not in INSTRUMENT_HINT_TRACKS and len(INSTRUMENT_HINT_TRACKS) == 11
    offset = instrument_offset(["bass", "drums"], 16)
    read = {t: float(offset @ p) / 16 for t, p in zip(INSTRUMENT_HINT_TRACKS, instrument_patterns(16), strict=True)}
    assert read == {t: pytest.approx(0.5 if t in ("bass", "drums") else -0.5) for t in INSTRUMENT_HINT_TRACKS}
    silence = torch.linspace(-1, 1, 100 * 16).reshape(100, 16)
    kwargs = {"num_frames": 50, "sample_rate": 48000, "hop_samples": 1920, "keyscale": "A minor"}
    keyed = beat_hints(silence, 120.0, **kwargs)
    both = beat_hints(silence, 120.0, **kwargs, tracks=("bass", "drums"))
    assert torch.allclose(both - keyed, offset.float().expand(50, 16), atol=1e-6)
    assert torch.equal(beat_hints(silence, 120.0, **kwargs, tracks=()), keyed)  # nothing named: no offset
    with pytest.raises(InvalidRequest, match="instruments"):
        instrument_offset(["vocals"], 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        instrument_patterns(8)


def test_hint_tracks_reads_the_caption_like_the_labels_do() -> None:
    assert hint_tracks("saw lead, synth bass, synth strings, choir pad and drums, synthwave") == (
        "synth", "bass", "drums")  # fmt: skip
    assert hint_tracks("A warm ballad for grand piano and cello, sung with vocals and a choir") == (
        "strings", "keyboard", "backing_vocals")  # fmt: skip
    assert hint_tracks("an upbeat lo-fi groove") == ()  # "upbeat" is not "beat"


def test_instrument_hints_flag_is_written_only_when_set() -> None:
    plain = AceStepConfig.tiny()
    assert "instrument_hints" not in plain.to_dict()
    flagged = AceStepConfig.from_dict({**plain.to_dict(), "beat_hints": True, "instrument_hints": True})
    assert flagged.instrument_hints and flagged.to_dict()["instrument_hints"] is True
    narrow = {**plain.to_dict(), "audio_acoustic_hidden_dim": 8, "in_channels": 24, "beat_hints": True}
    assert AceStepConfig.from_dict({**narrow, "key_hints": True}).key_hints  # 8 channels carry a key
    with pytest.raises(ValueError, match="config.json: instrument_hints needs a multiple of 16 latent channels"):
        AceStepConfig.from_dict({**narrow, "instrument_hints": True}, source="config.json")
