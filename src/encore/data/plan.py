"""Clip planning: from (seed, index) to an orchestrated, re-timed, transposed score excerpt with its labels.

A clip's plan depends only on ``numpy.random.default_rng([seed, index])``, so clips can be rendered in any
order, by any number of workers, and a corpus can be resumed or extended without changing earlier clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from encore.data import sources
from encore.data.arrange import (
    PROGRESSIONS,
    bass_line,
    comp_part,
    fit_chords,
    melody_line,
    progression_chords,
)
from encore.data.render import RoomFx
from encore.data.score import Note, Part, Score, bars_needed, excerpt, nearest_shift, split_drums, transpose
from encore.data.styles import SHAKER, STYLES, TAMB, band_score

SOURCES = ("mma", "folk", "chorale", "procedural")
"""Generator families a clip can come from."""

# Lead instruments over MMA grooves and folk melodies (GM programs).
LEADS = (73, 65, 66, 56, 71, 40, 22, 21, 11, 24, 26, 68, 0, 4, 57, 64, 60, 74, 110, 105)
FOLK_LEADS = (73, 110, 40, 21, 22, 71, 24, 25, 0, 105, 79, 75, 74, 68, 46, 15, 109, 72, 6, 23)
FOLK_COMP = ((24, "pulse"), (25, "pulse"), (0, "block"), (0, "pulse"), (21, "offbeat"), (46, "arp8"),
             (48, "block"), (19, "block"), (6, "pulse"), (25, "arp8"))  # fmt: skip
ENSEMBLES: dict[str, tuple[int, ...]] = {
    "string quartet": (40, 40, 41, 42), "brass ensemble": (56, 60, 57, 58),
    "woodwind ensemble": (73, 68, 71, 70),
    "organ": (19, 19, 19, 19), "piano": (0, 0, 0, 0), "mixed ensemble": (73, 71, 60, 42),
    "string orchestra": (48, 48, 48, 48), "harpsichord": (6, 6, 6, 6), "choir": (52, 52, 52, 52),
    "saxophone quartet": (64, 65, 66, 67),
}  # fmt: skip
_ENSEMBLE_WEIGHTS = (3, 2, 2, 2, 2, 2, 1, 1, 0.5, 1)
_SLOW_GENRES = ("air", "lullaby", "hymn", "ballad", "love song", "farewell song", "folk song")


@dataclass(frozen=True)
class CorpusConfig:
    """What a corpus is made of. Stored in ``corpus.json``; a resumed build must use the same values.

    Attributes:
        clip_seconds: Length of every clip.
        sample_rate: Output rate (Hz).
        soundfonts: Names drawn per clip (see `encore.data.render.SOUNDFONT_FILES`).
        source_weights: Relative frequency of each source in `SOURCES`.
        folk_collections: music21 ABC collections for the folk source.
        polyphony_collections: music21 collections for the chorale source.
        bpm_range: Allowed quarter-note tempi (inclusive).
        write_mix: Write ``mix.flac`` (else the mix is the sum of stems, built on load).
        write_stems: Write one FLAC per track class.
    """

    clip_seconds: float = 10.0
    sample_rate: int = 48_000
    soundfonts: tuple[str, ...] = ("FluidR3_GM", "MuseScore_General_Lite")
    source_weights: tuple[tuple[str, float], ...] = (("mma", 0.35), ("folk", 0.25), ("chorale", 0.15),
                                                     ("procedural", 0.25))  # fmt: skip
    folk_collections: tuple[str, ...] = tuple(sources.FOLK_COLLECTIONS)
    polyphony_collections: tuple[str, ...] = tuple(sources.POLYPHONY)
    bpm_range: tuple[int, int] = (60, 180)
    write_mix: bool = True
    write_stems: bool = True


@dataclass
class ClipPlan:
    """Everything needed to render one clip and label it."""

    score: Score
    bpm: int
    soundfont: str
    fx: RoomFx
    source: str
    genre: str
    style: str
    era: str
    extra: dict[str, object] = field(default_factory=dict)


def _bpm(rng: np.random.Generator, lo: int, hi: int, cfg: CorpusConfig) -> int:
    lo, hi = max(lo, cfg.bpm_range[0]), min(hi, cfg.bpm_range[1])
    if lo > hi:
        lo, hi = cfg.bpm_range
    return int(rng.integers(lo, hi + 1))


def _clip_beats(bpm: int, cfg: CorpusConfig) -> float:
    return cfg.clip_seconds * bpm / 60.0


def _plan_mma(rng: np.random.Generator, cfg: CorpusConfig) -> ClipPlan:
    groove = sources.GROOVES[int(rng.integers(len(sources.GROOVES)))]
    bpm = _bpm(rng, *groove.bpm, cfg)
    tonic, mode = int(rng.integers(12)), ("major", "minor")[int(rng.integers(2))]
    family = {"jazz": f"jazz_{mode}", "blues": "blues" if mode == "major" else "minor"}.get(
        groove.harmony, mode
    )
    numerals = PROGRESSIONS[family][int(rng.integers(len(PROGRESSIONS[family])))]
    bars = bars_needed(_clip_beats(bpm, cfg), groove.meter) + 1
    chords = progression_chords(numerals, tonic, mode, float(groove.meter), bars)
    parts = sources.mma_parts(groove, chords, int(rng.integers(2**31)))
    if rng.random() < 0.6:
        used = {p.program for p in parts if not p.is_drum}
        program = int(rng.choice([p for p in LEADS if p not in used]))
        line = melody_line(
            chords, tonic, mode, float(groove.meter), rng, density=float(rng.uniform(0.3, 0.6))
        )
        parts.append(Part("lead", line, program, volume=100))
    score = Score(parts, (groove.meter, 4), tonic, mode, bars * float(groove.meter))
    extra = {"groove": groove.name, "progression": "-".join(numerals)}
    return ClipPlan(
        score, bpm, "", RoomFx(), "mma", groove.genre, groove.name, groove.era or "contemporary", extra
    )


def _loop(score: Score, length: float) -> Score:
    """Repeat `score` (whole bars) until it lasts at least `length` beats."""
    period = bars_needed(score.length, score.bar_beats) * score.bar_beats
    copies = int(np.ceil(length / period)) + 1
    parts = []
    for p in score.parts:
        notes = [replace(n, start=n.start + k * period) for k in range(copies) for n in p.notes]
        parts.append(replace(p, notes=notes))
    return replace(score, parts=parts, length=period * copies)


def _pick_start(score: Score, length: float, rng: np.random.Generator) -> float:
    """A beat-aligned onset of the top part from which `length` beats of music follow."""
    onsets = sorted({n.start for n in score.parts[0].notes if abs(n.start - round(n.start)) < 1e-6})
    fits = [t for t in onsets if t + length <= score.length + 1e-9] or [0.0]
    return float(fits[int(rng.integers(len(fits)))])


def _fit_octave(notes: list[Note], low: int, high: int) -> int:
    """Octave shift (semitones) that centres `notes` in [low, high]."""
    mid = (min(n.pitch for n in notes) + max(n.pitch for n in notes)) / 2
    return int(12 * round(((low + high) / 2 - mid) / 12))


def _plan_folk(rng: np.random.Generator, cfg: CorpusConfig) -> ClipPlan:
    colls = cfg.folk_collections
    w = np.array([sources.FOLK_WEIGHTS.get(c, 0.1) for c in colls])
    tunes = sources.abc_tunes((colls[int(rng.choice(len(colls), p=w / w.sum()))],))
    src = sources.folk_score(tunes[int(rng.integers(len(tunes)))])
    semitones = nearest_shift(src.tonic, int(rng.integers(12)))
    score = transpose(src, semitones)
    melody = score.parts[0]
    genre = src.meta["genre"]
    lo, hi = (60, 110) if genre in _SLOW_GENRES else (90, 180) if genre != "folk song" else (70, 150)
    bpm = _bpm(rng, lo, hi, cfg)
    program = int(rng.choice(FOLK_LEADS))
    shift = _fit_octave(melody.notes, 62, 86)
    melody = replace(melody, program=program, notes=[replace(n, pitch=n.pitch + shift) for n in melody.notes])
    parts = [melody]
    if rng.random() < 0.7:
        chords = fit_chords(melody.notes, score.tonic, score.mode, score.bar_beats, score.length)
        comp_prog, comp_style = FOLK_COMP[int(rng.integers(len(FOLK_COMP)))]
        if score.time_sig[0] == 3 and comp_style == "pulse":
            comp_style = "waltz"
        parts.append(
            Part("chords", comp_part(chords, comp_style, score.bar_beats, center=57), comp_prog, volume=82)
        )
        if rng.random() < 0.8:
            bass_prog = int(rng.choice((32, 33, 43, 35)))
            style = "root" if rng.random() < 0.5 else "root5"
            parts.append(Part("bass", bass_line(chords, style, score.bar_beats, rng), bass_prog))
        if rng.random() < 0.3:
            key = TAMB if rng.random() < 0.5 else SHAKER
            num, den = score.time_sig
            pulse = 1.5 if den == 8 and num % 3 == 0 else 4.0 / den
            hits = [Note(k * pulse, 0.1, key, 80) for k in range(int(score.length / pulse))]
            parts.append(Part("percussion", hits, 0, is_drum=True, volume=70))
    score = _loop(replace(score, parts=parts), _clip_beats(bpm, cfg))
    start = _pick_start(score, _clip_beats(bpm, cfg), rng)
    extra = {k: src.meta[k] for k in ("title", "region", "collection", "work")}
    extra.update(source_key=[src.tonic, src.mode], transpose=semitones + shift, start_beat=start)
    plan = ClipPlan(score, bpm, "", RoomFx(), "folk", genre, src.meta["collection"], "traditional", extra)
    plan.score = excerpt(score, start, _clip_beats(bpm, cfg))
    return plan


def _plan_chorale(rng: np.random.Generator, cfg: CorpusConfig, cache_dir: Path | None) -> ClipPlan:
    colls = cfg.polyphony_collections
    w = np.array([sources.POLYPHONY_WEIGHTS.get(c, 0.1) for c in colls])
    works = sources.polyphony_works((colls[int(rng.choice(len(colls), p=w / w.sum()))],))
    src = sources.polyphony_score(works[int(rng.integers(len(works)))], cache_dir)
    names = list(ENSEMBLES)
    w = np.array(_ENSEMBLE_WEIGHTS, float)
    ensemble = names[int(rng.choice(len(names), p=w / w.sum()))]
    progs = ENSEMBLES[ensemble]
    n = len(src.parts)
    programs = [progs[min(i, len(progs) - 2)] for i in range(n - 1)] + [progs[-1]]
    semitones = nearest_shift(src.tonic, int(rng.integers(12)))
    score = transpose(src, semitones)
    score = replace(score, parts=[replace(p, program=pr, pan=int(20 + 88 * i / max(1, n - 1)))
                                  for i, (p, pr) in enumerate(zip(score.parts, programs))])  # fmt: skip
    lo, hi = {"bach": (56, 110), "palestrina": (80, 160), "monteverdi": (70, 130)}[src.meta["collection"]]
    bpm = _bpm(rng, lo, hi, cfg)
    score = _loop(score, _clip_beats(bpm, cfg))
    start = _pick_start(score, _clip_beats(bpm, cfg), rng)
    extra = {
        "composer": src.meta["composer"],
        "work": src.meta["work"],
        "ensemble": ensemble,
        "source_key": [src.tonic, src.mode],
        "transpose": semitones,
        "start_beat": start,
    }
    plan = ClipPlan(score, bpm, "", RoomFx(), "chorale", src.meta["genre"], ensemble, src.meta["era"], extra)
    plan.score = excerpt(score, start, _clip_beats(bpm, cfg))
    return plan


def _plan_procedural(rng: np.random.Generator, cfg: CorpusConfig) -> ClipPlan:
    style = STYLES[int(rng.integers(len(STYLES)))]
    bpm = _bpm(rng, *style.bpm, cfg)
    tonic, mode = int(rng.integers(12)), str(rng.choice(style.harmony))
    score = band_score(style, tonic, mode, bars_needed(_clip_beats(bpm, cfg), 4.0) + 1, rng)
    extra = {"progression": score.meta["progression"]}
    return ClipPlan(score, bpm, "", RoomFx(), "procedural", style.genre, style.name, style.era, extra)


def _finish(plan: ClipPlan, rng: np.random.Generator, cfg: CorpusConfig) -> ClipPlan:
    """Cut to the clip, split drum kits, draw soundfont, room and stereo placement."""
    score = excerpt(plan.score, 0.0, _clip_beats(plan.bpm, cfg))
    parts: list[Part] = []
    for p in score.parts:
        parts += split_drums(p) if p.is_drum else [p]
    placed = []
    for p in parts:
        centred = p.is_drum or p.track_class == "bass" or p.role in ("lead", "melody")
        pan = (
            64 if centred and p.role != "percussion" else int(np.clip(p.pan + rng.integers(-40, 41), 8, 120))
        )
        volume = int(np.clip(p.volume + rng.integers(-12, 9), 40, 127))
        placed.append(replace(p, pan=pan, volume=volume))
    plan.score = replace(score, parts=placed)
    plan.soundfont = str(rng.choice(cfg.soundfonts))
    plan.fx = RoomFx(
        reverb_room=float(rng.uniform(0.2, 0.85)), reverb_damp=float(rng.uniform(0.1, 0.6)),
        reverb_level=float(rng.uniform(0.3, 0.9)), reverb_send=int(rng.integers(15, 75)),
        chorus_send=int(rng.integers(0, 40)),
    )  # fmt: skip
    return plan


def plan_clip(
    seed: int, index: int, cfg: CorpusConfig, cache_dir: Path | None = None, attempt: int = 0
) -> ClipPlan:
    """Deterministic plan of clip `index` (a later `attempt` draws a fresh plan after an unusable source).

    Raises:
        sources.SourceUnusable: when the drawn source item cannot be used (caller retries with attempt + 1).
    """
    rng = np.random.default_rng(
        [seed, index, 0, attempt]
    )  # streams [.., 1] and [.., 2] are captions and level
    names = [s for s, _ in cfg.source_weights]
    w = np.array([x for _, x in cfg.source_weights], float)
    source = names[int(rng.choice(len(names), p=w / w.sum()))]
    if source == "mma":
        plan = _plan_mma(rng, cfg)
    elif source == "folk":
        plan = _plan_folk(rng, cfg)
    elif source == "chorale":
        plan = _plan_chorale(rng, cfg, cache_dir)
    elif source == "procedural":
        plan = _plan_procedural(rng, cfg)
    else:
        raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
    return _finish(plan, rng, cfg)
