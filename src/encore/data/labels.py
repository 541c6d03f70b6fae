"""Clip labels: the exact facts a rendered clip was built from, in ACE-Step's metadata vocabulary.

`keyscale` uses the official spelling (``"F# minor"``, ``"Bb major"``); `timesignature` is the numerator
string (one of 2, 3, 4, 6) the official metas use; `bpm` is the quarter-note tempo written into the clip's
MIDI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Key spelling lives in encore.utils.keys (the key hints of encore.tasks need it too); re-exported here.
from encore.utils.keys import MAJOR_NAMES, MINOR_NAMES, MODES, keyscale, parse_keyscale  # noqa: F401

TIME_SIGNATURE_NUMERATORS = (2, 3, 4, 6)


def all_keyscales() -> list[str]:
    """The 24 major/minor keys in official spelling."""
    return [keyscale(pc, m) for m in MODES for pc in range(12)]


@dataclass(frozen=True)
class InstrumentLabel:
    """One rendered part: its track class (stem), caption name, GM program and musical role."""

    stem: str
    instrument: str
    program: int
    is_drum: bool
    role: str


@dataclass
class ClipLabels:
    """Everything known about one clip; serialised as ``labels.json`` and one manifest line.

    Attributes:
        clip_id: Directory name of the clip, e.g. ``"clip_000012"``.
        index: Clip number within the corpus (the plan depends only on seed and index).
        seed: Corpus seed.
        source: Generator family: "mma", "folk", "chorale" or "procedural".
        duration: Seconds.
        sample_rate: Hz.
        bpm: Quarter-note tempo in beats per minute (integer, exact).
        keyscale: e.g. "Bb major".
        time_signature: e.g. "6/8".
        timesignature: Official metas form (numerator), e.g. "6".
        genre: Genre/style words used in captions (e.g. "bossa nova", "irish reel", "chorale").
        style: Source-specific style id (MMA groove, procedural style, ABC rhythm), may be "".
        era: e.g. "baroque", "contemporary", "traditional".
        instruments: One entry per rendered part.
        stems: Track class → relative FLAC path (each class stem sums its parts).
        mix: Relative path of the mix FLAC ("" when stems only).
        midi: Relative path of the clip's MIDI (exact symbolic content at `bpm`).
        soundfont: Soundfont file stem used for every part.
        caption: Primary caption.
        captions: Caption variants (dense → sparse), deterministic from the seed.
        lyrics: ``"[Instrumental]"`` unless vocals were rendered.
        language: ISO code of the lyrics, ``"unknown"`` when instrumental.
        extra: Source facts (title, composer, region, collection, transposition, ...).
    """

    clip_id: str
    index: int
    seed: int
    source: str
    duration: float
    sample_rate: int
    bpm: int
    keyscale: str
    time_signature: str
    timesignature: str
    genre: str
    style: str
    era: str
    instruments: list[InstrumentLabel]
    stems: dict[str, str]
    mix: str
    midi: str
    soundfont: str
    caption: str = ""
    captions: list[str] = field(default_factory=list)
    lyrics: str = "[Instrumental]"
    language: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tracks(self) -> list[str]:
        """Sorted track classes present in the clip."""
        return sorted(self.stems)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (instrument entries as dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipLabels:
        """Inverse of `to_dict`; unknown keys are an error so stale files are noticed."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown label fields {sorted(unknown)}")
        values = dict(data)
        values["instruments"] = [InstrumentLabel(**d) for d in data.get("instruments", [])]
        return cls(**values)


def read_labels(path: str | Path) -> ClipLabels:
    """Load a clip's ``labels.json``."""
    with open(path, encoding="utf-8") as f:
        return ClipLabels.from_dict(json.load(f))


def dumps_labels(labels: ClipLabels) -> str:
    """Stable one-line JSON (sorted keys) for files and the manifest."""
    return json.dumps(labels.to_dict(), sort_keys=True, ensure_ascii=False)
