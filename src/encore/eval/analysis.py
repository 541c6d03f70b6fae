"""Tempo and key of an audio clip, and how an estimate compares with the label it should match.

The estimators themselves live in `encore.data.analysis` (the dataset builder labels audio with them); this
module only brings any clip to their analysis rate and scores the result: tempo within 4 % with double/half
(and triple/third) tempo counted separately, key as exact / fifth / relative / parallel with the MIREX weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from encore.data.analysis import ANALYSIS_RATE, estimate_key, estimate_tempo
from encore.eval.features import to_mono
from encore.utils.keys import parse_keyscale

TempoMatch = Literal["exact", "double", "half", "triple", "third", "wrong", "none"]
KeyMatch = Literal["exact", "fifth", "relative", "parallel", "wrong", "none"]
TEMPO_TOLERANCE = 0.04
"""Relative tolerance of a tempo match (the MIREX Acc1 convention)."""
KEY_WEIGHTS: dict[str, float] = {"exact": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2}
"""MIREX key score per relation; anything else scores 0."""
_TEMPO_FACTORS: tuple[tuple[TempoMatch, float], ...] = (
    ("exact", 1.0), ("double", 2.0), ("half", 0.5), ("triple", 3.0), ("third", 1.0 / 3.0),
)  # fmt: skip


@dataclass(frozen=True)
class ClipAnalysis:
    """Tempo and key estimated from one clip (None when the clip gave no evidence, e.g. silence)."""

    bpm: float | None
    bpm_confidence: float
    keyscale: str | None
    key_confidence: float


def analyze_clip(audio: np.ndarray, sample_rate: int) -> ClipAnalysis:
    """Estimate tempo and key of a clip.

    Args:
        audio: `[C, S]` or `[S]` float waveform (any channel count; mixed to mono).
        sample_rate: Rate of `audio` in Hz (resampled to `ANALYSIS_RATE`).
    """
    mono = to_mono(audio, sample_rate, ANALYSIS_RATE)
    tempo = estimate_tempo(mono, ANALYSIS_RATE)
    key = estimate_key(mono, ANALYSIS_RATE)
    bpm = float(tempo.value) if isinstance(tempo.value, (int, float)) else None
    keyscale = str(key.value) if key.value is not None else None
    return ClipAnalysis(bpm, float(tempo.confidence), keyscale, float(key.confidence))


def tempo_match(estimate: float | None, target: float, tolerance: float = TEMPO_TOLERANCE) -> TempoMatch:
    """How an estimated tempo relates to the target.

    Args:
        estimate: Estimated BPM (None: no estimate).
        target: Labelled quarter-note BPM.
        tolerance: Relative tolerance of each relation.

    Returns:
        ``"exact"`` within `tolerance`; else ``"double"``/``"half"``/``"triple"``/``"third"`` when the estimate
        is that multiple of the target within `tolerance`; else ``"wrong"`` (``"none"`` without estimate).
    """
    if target <= 0:
        raise ValueError(f"target tempo must be positive, got {target}")
    if estimate is None:
        return "none"
    for name, factor in _TEMPO_FACTORS:
        if abs(estimate / (factor * target) - 1.0) <= tolerance:
            return name
    return "wrong"


def key_match(estimate: str | None, target: str) -> KeyMatch:
    """How an estimated key relates to the target (enharmonic spellings are equal).

    Returns:
        ``"exact"``; ``"fifth"`` (same mode, tonic a fifth above or below); ``"relative"`` (C major vs
        A minor); ``"parallel"`` (C major vs C minor); else ``"wrong"`` (``"none"`` without estimate).
    """
    ref_pc, ref_mode = parse_keyscale(target)
    if estimate is None:
        return "none"
    pc, mode = parse_keyscale(estimate)
    interval = (pc - ref_pc) % 12
    if mode == ref_mode:
        if interval == 0:
            return "exact"
        return "fifth" if interval in (5, 7) else "wrong"
    if interval == 0:
        return "parallel"
    # The relative minor sits a minor third below its major: est minor vs ref major -> -3, the reverse +3.
    relative = 9 if ref_mode == "major" else 3
    return "relative" if interval == relative else "wrong"


def key_score(match: KeyMatch) -> float:
    """MIREX weighted key score of one relation."""
    return KEY_WEIGHTS.get(match, 0.0)


def tempo_summary(matches: list[TempoMatch]) -> dict[str, float]:
    """Fractions of clips per tempo relation plus ``acc1`` (exact) and ``acc2`` (exact or ×2, ×½, ×3, ×⅓)."""
    n = len(matches)
    if n == 0:
        raise ValueError("no tempo results to summarise")
    out = {name: sum(m == name for m in matches) / n for name, _ in _TEMPO_FACTORS}
    out["acc1"] = out["exact"]
    out["acc2"] = sum(out[name] for name, _ in _TEMPO_FACTORS)
    out["none"] = sum(m == "none" for m in matches) / n
    return out


def key_summary(matches: list[KeyMatch]) -> dict[str, float]:
    """Fractions of clips per key relation, ``related`` (exact, relative or parallel) and the ``mirex`` score."""
    n = len(matches)
    if n == 0:
        raise ValueError("no key results to summarise")
    out = {name: sum(m == name for m in matches) / n for name in KEY_WEIGHTS}
    out["related"] = out["exact"] + out["relative"] + out["parallel"]
    out["mirex"] = float(np.mean([key_score(m) for m in matches]))
    out["none"] = sum(m == "none" for m in matches) / n
    return out
