"""Harmony and part writing shared by the sources: chords, progressions, chord fitting, bass/comping/melody.

Everything is deterministic given a `numpy.random.Generator`; times are quarter-note beats, pitches MIDI
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encore.data.score import Note

SCALES: dict[str, tuple[int, ...]] = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "sus4": (0, 5, 7),
    "dom7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
}  # fmt: skip
_MMA_SUFFIX = {"maj": "", "min": "m", "dim": "dim", "sus4": "sus4", "dom7": "7", "maj7": "maj7", "min7": "m7",
               "m7b5": "m7b5"}  # fmt: skip
_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Progressions in Roman numerals over the mode's own scale degrees
# (minor: natural minor, with "V" the major dominant).
PROGRESSIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "major": (
        ("I", "V", "vi", "IV"), ("I", "IV", "V", "I"), ("I", "vi", "IV", "V"), ("I", "IV", "I", "V"),
        ("vi", "IV", "I", "V"), ("I", "iii", "IV", "V"), ("IV", "I", "V", "vi"), ("I", "V", "IV", "V"),
        ("I", "ii", "IV", "V"), ("I", "I", "IV", "V"),
    ),
    "minor": (
        ("i", "VI", "III", "VII"), ("i", "iv", "v", "i"), ("i", "VII", "VI", "V"), ("i", "iv", "VII", "III"),
        ("i", "VI", "iv", "V"), ("i", "i", "iv", "V"), ("i", "III", "VII", "iv"), ("i", "VII", "i", "V"),
    ),
    "jazz_major": (
        ("ii7", "V7", "Imaj7", "Imaj7"), ("Imaj7", "vi7", "ii7", "V7"), ("iii7", "vi7", "ii7", "V7"),
    ),
    "jazz_minor": (("iiø7", "V7", "i7", "i7"), ("i7", "iv7", "V7", "i7")),
    "blues": (("I7", "I7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7"),),
}  # fmt: skip


@dataclass(frozen=True)
class Chord:
    """A chord sounding over ``[start, start + dur)`` beats. `root` is a pitch class 0-11."""

    root: int
    quality: str
    start: float
    dur: float

    @property
    def pcs(self) -> tuple[int, ...]:
        """Pitch classes, root first."""
        return tuple((self.root + i) % 12 for i in QUALITIES[self.quality])

    @property
    def name(self) -> str:
        """Chord symbol as MMA spells it, e.g. ``"F#m7"``."""
        return _NAMES[self.root] + _MMA_SUFFIX[self.quality]


_ROMAN = {"i": 0, "ii": 1, "iii": 2, "iv": 3, "v": 4, "vi": 5, "vii": 6}


def parse_roman(numeral: str, tonic: int, mode: str) -> tuple[int, str]:
    """(root pitch class, quality) of a Roman numeral such as ``"IV"``, ``"ii7"``, ``"viio"``, ``"iiø7"``."""
    letters = "".join(c for c in numeral if c.lower() in "iv")
    suffix = numeral[len(letters) :]
    if letters.lower() not in _ROMAN:
        raise ValueError(f"bad Roman numeral {numeral!r}")
    root = (tonic + SCALES[mode][_ROMAN[letters.lower()]]) % 12
    upper = letters.isupper()
    quality = {
        "": "maj" if upper else "min", "7": "dom7" if upper else "min7", "maj7": "maj7",
        "o": "dim", "ø7": "m7b5", "sus4": "sus4",
    }.get(suffix)  # fmt: skip
    if quality is None:
        raise ValueError(f"bad Roman numeral suffix in {numeral!r}")
    return root, quality


def progression_chords(
    numerals: tuple[str, ...], tonic: int, mode: str, bar_beats: float, n_bars: int, per_bar: int = 1
) -> list[Chord]:
    """Cycle `numerals` over `n_bars` bars, `per_bar` chords per bar."""
    dur = bar_beats / per_bar
    out = []
    for i in range(n_bars * per_bar):
        root, quality = parse_roman(numerals[i % len(numerals)], tonic, mode)
        out.append(Chord(root, quality, i * dur, dur))
    return out


def fit_chords(melody: list[Note], tonic: int, mode: str, bar_beats: float, length: float) -> list[Chord]:
    """One diatonic triad per bar that best covers the melody's pitch classes (duration-weighted).

    Tonic/dominant/subdominant get a small prior and repeating the previous chord a small bonus, so sparse
    bars resolve to plain functional harmony.
    """
    numerals = (
        ("I", "ii", "iii", "IV", "V", "vi") if mode == "major" else ("i", "III", "iv", "v", "V", "VI", "VII")
    )
    prior = {"I": 0.3, "i": 0.3, "V": 0.2, "IV": 0.15, "iv": 0.15}
    cands = [(n, *parse_roman(n, tonic, mode)) for n in numerals]
    out: list[Chord] = []
    n_bars = max(1, int(np.ceil(length / bar_beats - 1e-9)))
    for b in range(n_bars):
        lo, hi = b * bar_beats, (b + 1) * bar_beats
        notes = [n for n in melody if lo <= n.start < hi]
        best, best_score = cands[0], -1e9
        for cand in cands:
            tones = {(cand[1] + i) % 12 for i in QUALITIES[cand[2]]}
            score = prior.get(cand[0], 0.0) * bar_beats
            for n in notes:
                weight = min(n.dur, hi - n.start) * (2.0 if abs(n.start - round(n.start)) < 1e-6 else 1.0)
                score += weight if n.pitch % 12 in tones else -0.5 * weight
            if out and (out[-1].root, out[-1].quality) == cand[1:]:
                score += 0.1 * bar_beats
            if score > best_score:
                best, best_score = cand, score
        out.append(Chord(best[1], best[2], lo, bar_beats))
    return out


def _near(pc: int, target: float) -> int:
    """MIDI pitch of pitch class `pc` closest to `target`."""
    base = round(target) - 6
    return base + (pc - base) % 12


def bass_line(
    chords: list[Chord], style: str, bar_beats: float, rng: np.random.Generator, low: int = 33
) -> list[Note]:
    """Bass notes under `chords`.

    Styles: "root" (held roots), "root5" (root/fifth per beat), "walking" (quarter-note chord tones),
    "octave8" (eighth-note octaves), "pulse8" (eighth-note roots), "sync" (syncopated 16th-grid roots).
    """
    notes: list[Note] = []
    for c in chords:
        root = _near(c.root, low + 6)
        fifth = root + 7 if root + 7 <= low + 19 else root - 5
        if style == "root":
            notes.append(Note(c.start, c.dur * 0.95, root, 96))
        elif style in ("root5", "walking"):
            for k in range(round(c.dur)):
                if style == "root5":
                    p = root if k % 2 == 0 else fifth
                else:
                    p = root if k == 0 else _near(int(rng.choice(c.pcs)), root + 5)
                notes.append(Note(c.start + k, 0.9, p, 100 if k == 0 else 88))
        elif style in ("octave8", "pulse8"):
            for k in range(round(c.dur * 2)):
                p = root + 12 if style == "octave8" and k % 2 else root
                notes.append(Note(c.start + k * 0.5, 0.42, p, 100 if k % 2 == 0 else 84))
        elif style == "sync":
            steps = [s for s in range(round(c.dur * 4)) if s == 0 or rng.random() < 0.3]
            for s, nxt in zip(steps, [*steps[1:], round(c.dur * 4)]):
                p = root if rng.random() < 0.75 else root + 12
                notes.append(
                    Note(c.start + s / 4, max(0.2, (nxt - s) / 4 * 0.8), p, 104 if s % 4 == 0 else 90)
                )
        else:
            raise ValueError(f"unknown bass style {style!r}")
    return notes


def voicing(chord: Chord, center: float = 62.0) -> list[int]:
    """Close-position chord pitches around `center` (root position shifted to the nearest inversion)."""
    pitches = sorted(_near(pc, center) for pc in chord.pcs)
    return pitches


def comp_part(chords: list[Chord], style: str, bar_beats: float, center: float = 62.0) -> list[Note]:
    """Chord accompaniment. Styles: "block" (held), "pulse" (every beat), "offbeat" (skank on the and),
    "waltz" (beats 2 and 3 of each bar), "arp8"/"arp16" (broken chords), "stab" (syncopated short hits)."""
    notes: list[Note] = []
    for c in chords:
        pitches = voicing(c, center)
        beats = round(c.dur)
        if style == "block":
            notes += [Note(c.start, c.dur * 0.97, p, 76) for p in pitches]
        elif style == "pulse":
            notes += [Note(c.start + k, 0.8, p, 80 if k else 90) for k in range(beats) for p in pitches]
        elif style == "offbeat":
            notes += [Note(c.start + k + 0.5, 0.3, p, 84) for k in range(beats) for p in pitches]
        elif style == "waltz":
            notes += [Note(c.start + k, 0.8, p, 78) for k in range(1, beats) for p in pitches]
        elif style in ("arp8", "arp16"):
            step = 0.5 if style == "arp8" else 0.25
            seq = [*pitches, pitches[0] + 12, *pitches[1:][::-1]]
            n = round(c.dur / step)
            notes += [
                Note(c.start + k * step, step * 0.9, seq[k % len(seq)], 82 if k % 2 == 0 else 70)
                for k in range(n)
            ]
        elif style == "stab":
            for k in (0.0, 1.5, 2.5, 3.0):
                if k < c.dur:
                    notes += [Note(c.start + k, 0.2, p, 92) for p in pitches]
        else:
            raise ValueError(f"unknown comping style {style!r}")
    return notes


def _rhythm(
    rng: np.random.Generator, bar_beats: float, grid: float, density: float
) -> list[tuple[float, float]]:
    """One bar of (onset, duration) on `grid`; always starts on the downbeat."""
    slots = round(bar_beats / grid)
    onsets = [0] + [
        s for s in range(1, slots) if rng.random() < density * (1.3 if s * grid % 1 == 0 else 0.7)
    ]
    out = []
    for s, nxt in zip(onsets, [*onsets[1:], slots]):
        out.append((s * grid, (nxt - s) * grid))
    return out


def melody_line(
    chords: list[Chord], tonic: int, mode: str, bar_beats: float, rng: np.random.Generator,
    register: tuple[int, int] = (60, 81), grid: float = 0.5, density: float = 0.45,
) -> list[Note]:  # fmt: skip
    """A singable phrase over `chords`: motif rhythm repeated in an AABA-like pattern, scale random walk with
    chord tones on beats, phrase ends held on the chord root.

    Args:
        chords: Harmony, in time order.
        tonic: Key tonic pitch class.
        mode: "major" or "minor".
        bar_beats: Beats per bar.
        rng: Randomness source.
        register: Lowest and highest MIDI pitch.
        grid: Rhythmic grid in beats (0.5 = eighths).
        density: Chance of an onset per grid slot.
    """
    scale = [(tonic + s) % 12 for s in SCALES[mode]]
    lo, hi = register
    pool = [p for p in range(lo, hi + 1) if p % 12 in scale]
    idx = min(range(len(pool)), key=lambda i: abs(pool[i] - (lo + hi) / 2 + (pool[i] % 12 != tonic) * 3))
    motifs = [_rhythm(rng, bar_beats, grid, density) for _ in range(2)]
    length = chords[-1].start + chords[-1].dur if chords else 0.0
    notes: list[Note] = []
    for bar in range(int(np.ceil(length / bar_beats - 1e-9))):
        start = bar * bar_beats
        phrase_end = bar % 4 == 3
        motif = motifs[1] if phrase_end else motifs[0]
        for k, (onset, dur) in enumerate(motif):
            t = start + onset
            if t >= length:
                break
            step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            idx = min(max(idx + step, 0), len(pool) - 1)
            chord = _chord_at(chords, t)
            if phrase_end and k == len(motif) - 1:  # phrase end: land on the chord root
                idx = min(range(len(pool)), key=lambda i: (pool[i] % 12 != chord.root, abs(i - idx)))
            elif abs(onset - round(onset)) < 1e-9:  # strong position: snap to a chord tone
                near = [
                    i for i in range(max(0, idx - 2), min(len(pool), idx + 3)) if pool[i] % 12 in chord.pcs
                ]
                if near:
                    idx = min(near, key=lambda i: abs(i - idx))
            vel = int(92 + 10 * (onset == 0) - 8 * (abs(onset - round(onset)) > 1e-9) + rng.integers(-6, 7))
            notes.append(Note(t, min(dur, length - t) * 0.9, pool[idx], vel))
    return notes


def _chord_at(chords: list[Chord], t: float) -> Chord:
    for c in chords:
        if c.start - 1e-9 <= t < c.start + c.dur - 1e-9:
            return c
    return chords[-1]
