"""Symbolic music for the corpus builder: notes timed in quarter-note beats, so any tempo is exact.

A `Score` is tempo-free; the renderer and the MIDI writer turn beats into seconds with the clip's BPM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import mido

from encore.data.instruments import drum_key_class, program_class
from encore.utils.keys import MAJOR_NAMES, MINOR_NAMES

DRUM_CHANNEL = 9
"""General MIDI percussion channel (0-based) used in written MIDI files."""


@dataclass(frozen=True)
class Note:
    """One note. `start`/`dur` are in quarter-note beats from the score start."""

    start: float
    dur: float
    pitch: int
    velocity: int


@dataclass
class Part:
    """One instrument line; it becomes one rendered stem (or part of one class stem).

    Attributes:
        role: What the line does ("melody", "bass", "chords", "drums", "soprano", ...).
        notes: Notes sorted by start.
        program: GM program (melodic parts) or drum-kit preset (bank 128, drum parts).
        is_drum: Whether the part plays on a drum kit.
        volume: Channel volume (MIDI CC7, 0-127).
        pan: Stereo position, MIDI CC10 (0 left, 64 centre, 127 right).
    """

    role: str
    notes: list[Note]
    program: int = 0
    is_drum: bool = False
    volume: int = 100
    pan: int = 64

    @property
    def track_class(self) -> str:
        """Official track class of this part (drum parts: by their keys, after `split_drums`)."""
        if not self.is_drum:
            return program_class(self.program)
        classes = {drum_key_class(n.pitch) for n in self.notes}
        return "percussion" if classes == {"percussion"} else "drums"


@dataclass
class Score:
    """A piece (or excerpt) with exact key and metre.

    Attributes:
        parts: Instrument lines.
        time_sig: (numerator, denominator), e.g. (6, 8).
        tonic: Tonic pitch class 0-11 (C=0).
        mode: "major" or "minor".
        length: Length in quarter-note beats.
        meta: Free text labels from the source (genre, era, title, composer, region, ...).
    """

    parts: list[Part]
    time_sig: tuple[int, int]
    tonic: int
    mode: str
    length: float
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def bar_beats(self) -> float:
        """Quarter-note beats per bar."""
        return self.time_sig[0] * 4.0 / self.time_sig[1]


def transpose(score: Score, semitones: int) -> Score:
    """Shift every pitched note (drum parts stay) and the tonic by `semitones`."""
    parts = []
    for p in score.parts:
        if p.is_drum:
            parts.append(p)
            continue
        notes = [replace(n, pitch=n.pitch + semitones) for n in p.notes]
        if any(not 0 <= n.pitch <= 127 for n in notes):
            raise ValueError(f"transposing part {p.role!r} by {semitones} leaves the MIDI range")
        parts.append(replace(p, notes=notes))
    return replace(score, parts=parts, tonic=(score.tonic + semitones) % 12)


def nearest_shift(from_pc: int, to_pc: int) -> int:
    """Smallest transposition (in -6..5 semitones) that moves pitch class `from_pc` to `to_pc`."""
    return (to_pc - from_pc + 6) % 12 - 6


def excerpt(score: Score, start: float, length: float) -> Score:
    """Notes starting in ``[start, start + length)``, shifted to 0 and cut at the end.

    Notes sounding across `start` are dropped rather than cut, so no stem starts mid-note.
    """
    end = start + length
    parts = []
    for p in score.parts:
        notes = [
            replace(n, start=n.start - start, dur=min(n.dur, end - n.start))
            for n in p.notes
            if start - 1e-9 <= n.start < end - 1e-9
        ]
        if notes:
            parts.append(replace(p, notes=notes))
    return replace(score, parts=parts, length=length)


def split_drums(part: Part) -> list[Part]:
    """Split a drum-kit part into its "drums" (kit pieces) and "percussion" (hand percussion) lines."""
    if not part.is_drum:
        return [part]
    kit = [n for n in part.notes if drum_key_class(n.pitch) == "drums"]
    hand = [n for n in part.notes if drum_key_class(n.pitch) == "percussion"]
    out = []
    if kit:
        out.append(replace(part, role="drums", notes=kit))
    if hand:
        out.append(replace(part, role="percussion", notes=hand))
    return out


def _channels(parts: list[Part]) -> list[int]:
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    melodic = [i for i, p in enumerate(parts) if not p.is_drum]
    if len(melodic) > len(free):
        raise ValueError(f"a MIDI file holds at most {len(free)} melodic parts, got {len(melodic)}")
    chans = [DRUM_CHANNEL] * len(parts)
    for i, c in zip(melodic, free):
        chans[i] = c
    return chans


def write_midi(score: Score, bpm: float, path: str | Path, ticks_per_beat: int = 480) -> None:
    """Write `score` as a type-1 MIDI file at `bpm` (one track per part, drums on channel 10)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    head = mido.MidiTrack()
    head.append(mido.MetaMessage("set_tempo", tempo=round(60_000_000 / bpm)))
    num, den = score.time_sig
    head.append(mido.MetaMessage("time_signature", numerator=num, denominator=den))
    head.append(mido.MetaMessage("key_signature", key=_mido_key(score.tonic, score.mode)))
    mid.tracks.append(head)
    for part, ch in zip(score.parts, _channels(score.parts)):
        events: list[tuple[int, int, mido.Message]] = []
        for n in part.notes:
            on, off = round(n.start * ticks_per_beat), round((n.start + n.dur) * ticks_per_beat)
            events.append((on, 1, mido.Message("note_on", channel=ch, note=n.pitch, velocity=n.velocity)))
            events.append(
                (max(off, on + 1), 0, mido.Message("note_off", channel=ch, note=n.pitch, velocity=0))
            )
        events.sort(key=lambda e: (e[0], e[1]))
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=part.role)])
        track.append(mido.Message("control_change", channel=ch, control=7, value=part.volume))
        track.append(mido.Message("control_change", channel=ch, control=10, value=part.pan))
        if not part.is_drum:
            track.append(mido.Message("program_change", channel=ch, program=part.program))
        now = 0
        for tick, _, msg in events:
            track.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(str(path))


def _mido_key(tonic: int, mode: str) -> str:
    """mido's key-signature name: our key spelling, minor keys suffixed "m" (``"C#m"``)."""
    return MINOR_NAMES[tonic % 12] + "m" if mode == "minor" else MAJOR_NAMES[tonic % 12]


@dataclass
class MidiContent:
    """What `read_midi` found: parts plus the file's own metadata (None where absent)."""

    parts: list[Part]
    time_sig: tuple[int, int] | None
    bpm: float | None
    length: float


def read_midi(path: str | Path) -> MidiContent:
    """Parse a MIDI file into one `Part` per (track, channel, program), timed in beats.

    Args:
        path: Standard MIDI file.

    Returns:
        Parts (role = track name; program from the last program change before the first note; CC7 as
        volume), the first time signature, the first tempo in BPM and the length in beats.
    """
    mid = mido.MidiFile(str(path))
    tpb = float(mid.ticks_per_beat)
    time_sig: tuple[int, int] | None = None
    bpm: float | None = None
    lines: dict[tuple[int, int], dict] = {}
    length = 0.0
    for ti, track in enumerate(mid.tracks):
        tick, programs, volumes, name = 0, {}, {}, ""
        open_notes: dict[tuple[int, int], tuple[int, int]] = {}
        for msg in track:
            tick += msg.time
            if msg.type == "track_name":
                name = msg.name.strip().lower()
            elif msg.type == "time_signature" and time_sig is None:
                time_sig = (msg.numerator, msg.denominator)
            elif msg.type == "set_tempo" and bpm is None:
                bpm = mido.tempo2bpm(msg.tempo)
            elif msg.type == "program_change":
                programs[msg.channel] = msg.program
            elif msg.type == "control_change" and msg.control == 7:
                volumes[msg.channel] = msg.value
            elif msg.type == "note_on" and msg.velocity > 0:
                open_notes[(msg.channel, msg.note)] = (tick, msg.velocity)
            elif msg.type in ("note_off", "note_on") and (msg.channel, msg.note) in open_notes:
                on, vel = open_notes.pop((msg.channel, msg.note))
                line = lines.setdefault(
                    (ti, msg.channel),
                    {
                        "program": programs.get(msg.channel, 0),
                        "volume": volumes.get(msg.channel, 100),
                        "name": name,
                        "notes": [],
                    },
                )
                line["notes"].append(Note(on / tpb, max(tick - on, 1) / tpb, msg.note, vel))
                length = max(length, tick / tpb)
    parts = []
    for (_, ch), line in sorted(lines.items()):
        notes = sorted(line["notes"], key=lambda n: (n.start, n.pitch))
        is_drum = ch == DRUM_CHANNEL
        role = line["name"] or ("drums" if is_drum else "part")
        parts.append(Part(role, notes, line["program"], is_drum, line["volume"]))
    return MidiContent(parts, time_sig, bpm, length)


def bars_needed(length_beats: float, bar_beats: float) -> int:
    """Whole bars that cover `length_beats`."""
    return max(1, math.ceil(length_beats / bar_beats - 1e-9))
