"""Render a `Score` to per-part stereo audio with FluidSynth (in-process, via pyfluidsynth + ctypes).

Every part gets its own FluidSynth audio group *and* effects group, so each stem carries its own reverb and
chorus and the stems sum exactly to the full mix. A fresh synth is built per clip (the soundfont samples stay
cached by a long-lived anchor synth), because FluidSynth's chorus/reverb state survives `system_reset` and
would make a clip depend on what was rendered before it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encore.data.score import Part
from encore.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
SOUNDFONT_DIRS: tuple[str, ...] = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts")
"""Where Debian's soundfont packages install (override with ENCORE_SOUNDFONT_DIRS, ':'-separated)."""

SOUNDFONT_FILES: dict[str, str] = {
    "FluidR3_GM": "FluidR3_GM.sf2",  # fluid-soundfont-gm
    "MuseScore_General_Lite": "MuseScore_General_Lite.sf3",  # musescore-general-soundfont-small
    "TimGM6mb": "TimGM6mb.sf2",  # timgm6mb-soundfont
}
"""Known General MIDI soundfonts by name (name → file)."""

_FADE_S = 0.02  # fade at the clip end so a cut note does not click
_BLOCK = 4096  # most frames rendered per fluid_synth_process call


def find_soundfont(name: str) -> Path:
    """Path of a known soundfont by name (see `SOUNDFONT_FILES`) or an existing file path.

    Raises:
        AudioError: when the file is not installed (run ``scripts/setup-data.sh``).
    """
    if name not in SOUNDFONT_FILES:
        path = Path(name)
        if path.is_file():
            return path
        raise AudioError(name, f"unknown soundfont; known: {', '.join(SOUNDFONT_FILES)} or an existing file")
    dirs = os.environ.get("ENCORE_SOUNDFONT_DIRS", "").split(":") + list(SOUNDFONT_DIRS)
    for d in dirs:
        if d and (Path(d) / SOUNDFONT_FILES[name]).is_file():
            return Path(d) / SOUNDFONT_FILES[name]
    raise AudioError(SOUNDFONT_FILES[name], "soundfont not installed (run scripts/setup-data.sh)")


def available_soundfonts() -> list[str]:
    """Names from `SOUNDFONT_FILES` that are installed here."""
    out = []
    for name in SOUNDFONT_FILES:
        try:
            find_soundfont(name)
        except AudioError:
            continue
        out.append(name)
    return out


def _fluidsynth() -> Any:
    try:
        import fluidsynth
    except (ImportError, OSError) as e:
        raise AudioError(
            "libfluidsynth", f"pyfluidsynth/libfluidsynth unavailable ({e}); run scripts/setup-data.sh"
        )
    return fluidsynth


_API: dict[str, Any] = {}


def _api() -> dict[str, Any]:
    """ctypes prototypes pyfluidsynth 1.4 does not wrap (float multi-channel rendering, channel type)."""
    if not _API:
        fs = _fluidsynth()
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        _API["process"] = fs.cfunc(
            "fluid_synth_process", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
            ("nfx", c_int, 1), ("fx", c_void_p, 1), ("nout", c_int, 1), ("out", c_void_p, 1),
        )  # fmt: skip
        _API["channel_type"] = fs.cfunc(
            "fluid_synth_set_channel_type",
            c_int,
            ("synth", c_void_p, 1),
            ("chan", c_int, 1),
            ("type", c_int, 1),
        )
        _API["module"] = fs
        if _API["process"] is None:
            raise AudioError("libfluidsynth", "fluid_synth_process missing (FluidSynth >= 2.0 required)")
    return _API


@dataclass(frozen=True)
class RoomFx:
    """Reverb/chorus of one clip (shared room; per-part sends are CC91/CC93)."""

    reverb_room: float = 0.4
    reverb_damp: float = 0.3
    reverb_level: float = 0.6
    reverb_send: int = 40
    chorus_send: int = 0


class FluidRenderer:
    """Renders parts with one soundfont at `sample_rate`; one instance per worker process.

    Args:
        soundfont: Name from `SOUNDFONT_FILES` or a file path.
        sample_rate: Output rate in Hz.
        gain: FluidSynth master gain (the corpus re-normalises afterwards).
    """

    def __init__(self, soundfont: str, sample_rate: int = SAMPLE_RATE, gain: float = 0.4) -> None:
        self.api = _api()
        self.path = find_soundfont(soundfont)
        self.name = soundfont if soundfont in SOUNDFONT_FILES else self.path.stem
        self.sample_rate = sample_rate
        self.gain = gain
        # The anchor keeps the decoded samples in FluidSynth's sample cache, so per-clip synths load fast.
        self._anchor = self._new_synth(1)
        self._anchor_id = self._anchor.sfload(str(self.path))
        if self._anchor_id < 0:
            raise AudioError(str(self.path), "FluidSynth could not load the soundfont")

    def _new_synth(self, groups: int) -> Any:
        fs = self.api["module"]
        return fs.Synth(
            gain=self.gain,
            samplerate=float(self.sample_rate),
            channels=max(16, groups),
            **{"synth.audio-groups": groups, "synth.audio-channels": groups, "synth.effects-groups": groups},
        )

    def has_preset(self, bank: int, program: int) -> bool:
        """Whether the soundfont defines (bank, program)."""
        return self._anchor.sfpreset_name(self._anchor_id, bank, program) is not None

    def effective_program(self, part: Part) -> int:
        """Program actually played: a missing drum kit falls back to the standard kit 0."""
        if part.is_drum and not self.has_preset(128, part.program):
            return 0
        return part.program

    def render(self, parts: list[Part], bpm: float, seconds: float, fx: RoomFx = RoomFx()) -> np.ndarray:
        """Render each part to its own stereo buffer.

        Args:
            parts: Up to 64 parts; part i plays on MIDI channel i.
            bpm: Quarter-note tempo (converts note beats to seconds).
            seconds: Output length; later notes are dropped and sounding notes are cut with a short fade.
            fx: Room reverb/chorus settings.

        Returns:
            float32 array [P, 2, S] with S = round(seconds * sample_rate).
        """
        n_parts, n_frames = len(parts), round(seconds * self.sample_rate)
        if n_parts == 0:
            return np.zeros((0, 2, n_frames), np.float32)
        synth = self._new_synth(n_parts)
        try:
            sfid = synth.sfload(str(self.path))
            self._setup(synth, sfid, parts, fx)
            out = self._run(synth, self._events(parts, bpm, n_frames), n_parts, n_frames)
        finally:
            synth.delete()
        fade = min(n_frames, round(_FADE_S * self.sample_rate))
        out[:, :, n_frames - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return out

    def _setup(self, synth: Any, sfid: int, parts: list[Part], fx: RoomFx) -> None:
        synth.set_reverb(fx.reverb_room, fx.reverb_damp, 0.8, fx.reverb_level)
        for ch, part in enumerate(parts):
            if part.is_drum and self.api["channel_type"] is not None:
                self.api["channel_type"](synth.synth, ch, 1)  # CHANNEL_TYPE_DRUM
            bank = 128 if part.is_drum else 0
            if synth.program_select(ch, sfid, bank, self.effective_program(part)) != 0:
                raise AudioError(str(self.path), f"no preset bank {bank} program {part.program}")
            synth.cc(ch, 7, part.volume)
            synth.cc(ch, 10, part.pan)
            synth.cc(ch, 91, fx.reverb_send)
            synth.cc(ch, 93, fx.chorus_send)

    def _events(self, parts: list[Part], bpm: float, n_frames: int) -> list[tuple[int, int, int, int, int]]:
        """(frame, is_on, channel, key, velocity) sorted; note-offs before note-ons at the same frame."""
        spb = 60.0 / bpm * self.sample_rate
        events = []
        for ch, part in enumerate(parts):
            for n in part.notes:
                on = round(n.start * spb)
                if on >= n_frames:
                    continue
                off = max(on + 1, round((n.start + n.dur) * spb))
                events.append((on, 1, ch, n.pitch, n.velocity))
                if off < n_frames:
                    events.append((off, 0, ch, n.pitch, 0))
        events.sort()
        return events

    def _run(
        self, synth: Any, events: list[tuple[int, int, int, int, int]], n_parts: int, n_frames: int
    ) -> np.ndarray:
        out = np.zeros((n_parts, 2, n_frames), np.float32)
        base = [(out[g, c].ctypes.data) for g in range(n_parts) for c in range(2)]
        ptr_t = ctypes.c_void_p * (2 * n_parts)
        fx_t = ctypes.c_void_p * (4 * n_parts)
        process, handle = self.api["process"], synth.synth
        now, i = 0, 0
        while now < n_frames:
            while i < len(events) and events[i][0] <= now:
                _, is_on, ch, key, vel = events[i]
                if is_on:
                    synth.noteon(ch, key, vel)
                else:
                    synth.noteoff(ch, key)
                i += 1
            stop = min(n_frames, now + _BLOCK, events[i][0] if i < len(events) else n_frames)
            offs = [b + 4 * now for b in base]
            dry = ptr_t(*offs)
            # Effects of group g (reverb L/R, chorus L/R) are mixed into group g's own dry buffers.
            wet = fx_t(*[offs[2 * g + c] for g in range(n_parts) for c in (0, 1, 0, 1)])
            if process(handle, stop - now, 4 * n_parts, ctypes.cast(wet, ctypes.c_void_p), 2 * n_parts,
                       ctypes.cast(dry, ctypes.c_void_p)) != 0:  # fmt: skip
                raise AudioError("libfluidsynth", "fluid_synth_process failed")
            now = stop
        return out
