from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mido")

from encore.data.render import RoomFx, find_soundfont
from encore.data.score import Note, Part
from encore.errors import AudioError

SR = 48_000


@pytest.fixture(scope="module")
def renderer(fluid):
    from encore.data.render import FluidRenderer

    return FluidRenderer(fluid, SR)


def _clicks(bpm: float, beats: int) -> Part:
    return Part("drums", [Note(float(b), 0.1, 37, 120) for b in range(beats)], program=0, is_drum=True)


def _onsets(x: np.ndarray, thresh: float = 0.1) -> np.ndarray:
    """Sample indices where the mono envelope first crosses `thresh` of its peak after a quiet gap."""
    env = np.abs(x).max(axis=0)
    above = env > thresh * env.max()
    idx = np.flatnonzero(above & ~np.r_[False, above[:-1]])
    keep = [i for k, i in enumerate(idx) if k == 0 or i - idx[k - 1] > SR // 20]
    return np.array(keep)


def test_unknown_soundfont_is_a_clear_error():
    with pytest.raises(AudioError, match="unknown soundfont"):
        find_soundfont("NoSuchFont")


@pytest.mark.parametrize("bpm", [60, 97, 180])
def test_rendered_tempo_matches_bpm(renderer, bpm):
    audio = renderer.render([_clicks(bpm, 8)], bpm, 8 * 60 / bpm + 0.3, RoomFx(reverb_send=0))
    onsets = _onsets(audio[0])
    assert len(onsets) == 8
    period = np.diff(onsets) / SR
    np.testing.assert_allclose(
        period, 60.0 / bpm, atol=0.0015
    )  # FluidSynth applies events on 64-frame blocks


def test_render_is_deterministic_and_independent_of_history(renderer):
    parts = [
        Part("melody", [Note(i * 0.5, 0.4, 60 + i % 7, 90) for i in range(8)], program=73),
        _clicks(120, 4),
    ]
    a = renderer.render(parts, 120, 2.0)
    renderer.render([Part("pad", [Note(0, 4, 48, 100)], program=89)], 90, 2.0, RoomFx(chorus_send=120))
    b = renderer.render(parts, 120, 2.0)
    assert a.shape == (2, 2, 2 * SR) and a.dtype == np.float32
    assert np.array_equal(a, b)


def test_parts_render_in_isolation(renderer):
    """Each part has its own audio + effects group, so stems are clean and sum to the mix."""
    mel = Part("melody", [Note(0.0, 1.0, 67, 100)], program=40)
    both = renderer.render([mel, _clicks(120, 2)], 120, 1.5)
    alone = renderer.render([mel, Part("drums", [], 0, True)], 120, 1.5)
    np.testing.assert_allclose(both[0], alone[0], atol=1e-6)
    assert np.abs(alone[1]).max() < 1e-6
    assert np.abs(both[1]).max() > 0.01


def _pitch_hz(x: np.ndarray) -> float:
    mono = x.mean(axis=0)[SR // 10 : SR // 10 + 16384] * np.hanning(16384)
    spec = np.abs(np.fft.rfft(mono, 4 * 16384))
    return float(np.argmax(spec) * SR / (4 * 16384))


@pytest.mark.parametrize(("pitch", "hz"), [(69, 440.0), (72, 523.25)])
def test_rendered_pitch_matches_midi_note(renderer, pitch, hz):
    audio = renderer.render(
        [Part("flute", [Note(0.0, 2.0, pitch, 100)], program=73)], 120, 1.0, RoomFx(0.2, 0.5, 0.0, 0)
    )
    assert _pitch_hz(audio[0]) == pytest.approx(hz, rel=0.015)
