"""Task specifications: what to generate, as small frozen dataclasses (SPEC §10, FEATURES A1).

These are part of the public API (`GenerationRequest.task`). Each validates its own fields and raises
`InvalidRequest` with the dotted path ``task.<field>``. Audio sources are file paths; the pipeline loads and
encodes them and hands latents to `encore.tasks.conditioning.build_conditioning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from encore.errors import InvalidRequest

# fmt: off
TRACK_NAMES: tuple[str, ...] = (
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
)
# fmt: on
"""Stem names the base model was trained on (official `constants.py`)."""

MAX_TASK_SECONDS = 600.0
"""Longest span a task may add or regenerate (the official duration ceiling)."""


def _check_finite(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidRequest(f"task.{field}", f"must be a finite number, got {value}")


def _check_track(field: str, track: str | None) -> None:
    if track is not None and track not in TRACK_NAMES:
        raise InvalidRequest(
            f"task.{field}", f"unknown track {track!r}; choose from {', '.join(TRACK_NAMES)}"
        )


def _check_region(start_s: float, end_s: float | None, *, allow_before_zero: bool) -> None:
    _check_finite("start_s", start_s)
    if not allow_before_zero and start_s < 0:
        raise InvalidRequest("task.start_s", f"must be >= 0, got {start_s}")
    if start_s < -MAX_TASK_SECONDS:
        raise InvalidRequest("task.start_s", f"may reach at most {MAX_TASK_SECONDS:g} s before the source")
    if end_s is None:
        return
    _check_finite("end_s", end_s)
    if end_s <= start_s:
        raise InvalidRequest("task.end_s", f"must be greater than start_s={start_s}, got {end_s}")
    if end_s - start_s > MAX_TASK_SECONDS:
        raise InvalidRequest("task.end_s", f"region longer than {MAX_TASK_SECONDS:g} s")


@dataclass(frozen=True, kw_only=True)
class Text2Music:
    """Generate a new song from text (and optional planner/user audio codes)."""


@dataclass(frozen=True, kw_only=True)
class Cover:
    """Re-render a source song in a new style, keeping its structure via its 5 Hz semantic codes."""

    source: str | None = None
    """Audio file to cover (may be omitted when audio codes are given instead)."""
    cover_strength: float = 1.0
    """0–1: fraction of the steps conditioned on the source; the rest follow the text alone."""
    quantize: bool = True
    """Pass the source through the 5 Hz FSQ round trip, as the official cover does. False gives the DiT the
    source's latents as they are (upstream's later "Remix (Raw)"): closer to the source's sound and detail,
    a context the DiT was not trained on, so it may follow the caption less."""

    def __post_init__(self) -> None:
        _check_finite("cover_strength", self.cover_strength)
        if not (0.0 <= self.cover_strength <= 1.0):
            raise InvalidRequest("task.cover_strength", f"must be in [0, 1], got {self.cover_strength}")


@dataclass(frozen=True, kw_only=True)
class Repaint:
    """Regenerate the window [start_s, end_s) of a source and keep the rest.

    The window may reach past either edge of the source (outpainting): ``start_s < 0`` adds audio before
    it, ``end_s`` beyond the source length adds audio after it.
    """

    source: str | None = None
    """Audio file to edit."""
    start_s: float = 0.0
    """Window start in seconds from the source start; negative values extend before the source."""
    end_s: float | None = None
    """Window end in seconds; None means the end of the source."""

    def __post_init__(self) -> None:
        _check_region(self.start_s, self.end_s, allow_before_zero=True)


@dataclass(frozen=True, kw_only=True)
class Extract:
    """Separate one stem from the source (base model)."""

    source: str | None = None
    """Mixed audio to extract from."""
    track: str | None = None
    """Stem to extract (one of `TRACK_NAMES`); None uses the generic instruction."""

    def __post_init__(self) -> None:
        _check_track("track", self.track)


@dataclass(frozen=True, kw_only=True)
class Lego:
    """Generate one new stem that fits the source, inside [start_s, end_s) (base model)."""

    source: str | None = None
    """Audio context the new stem must fit."""
    track: str | None = None
    """Stem to generate (one of `TRACK_NAMES`); None uses the generic instruction."""
    start_s: float = 0.0
    """Region start in seconds (>= 0)."""
    end_s: float | None = None
    """Region end in seconds; None means the end of the source."""

    def __post_init__(self) -> None:
        _check_track("track", self.track)
        _check_region(self.start_s, self.end_s, allow_before_zero=False)


@dataclass(frozen=True, kw_only=True)
class Complete:
    """Arrange the listed instruments around a partial track (base model)."""

    source: str | None = None
    """Partial track to complete."""
    tracks: tuple[str, ...] = ()
    """Stems to add (each one of `TRACK_NAMES`); empty uses the generic instruction."""

    def __post_init__(self) -> None:
        for i, track in enumerate(self.tracks):
            _check_track(f"tracks[{i}]", track)
        if len(set(self.tracks)) != len(self.tracks):
            raise InvalidRequest("task.tracks", f"lists a track twice: {list(self.tracks)}")


@dataclass(frozen=True, kw_only=True)
class Extend:
    """Add `seconds` of new music before or after the source, conditioned on `context_s` of it.

    Internally an outpaint: the generated window sits next to a context window of the source that is kept;
    the rest of the source is re-attached unchanged after sampling.
    """

    source: str | None = None
    """Audio file to extend."""
    seconds: float = 30.0
    """Length of the new audio in seconds."""
    side: Literal["before", "after"] = "after"
    """Where the new audio goes."""
    context_s: float | None = None
    """Seconds of the source next to the new audio the model sees; None uses the whole source."""

    def __post_init__(self) -> None:
        _check_finite("seconds", self.seconds)
        if not (0.0 < self.seconds <= MAX_TASK_SECONDS):
            raise InvalidRequest("task.seconds", f"must be in (0, {MAX_TASK_SECONDS:g}], got {self.seconds}")
        if self.side not in ("before", "after"):
            raise InvalidRequest("task.side", f"must be 'before' or 'after', got {self.side!r}")
        if self.context_s is not None:
            _check_finite("context_s", self.context_s)
            if self.context_s <= 0:
                raise InvalidRequest(
                    "task.context_s", f"must be > 0 (or null for the whole source), got {self.context_s}"
                )


TaskSpec = Text2Music | Cover | Repaint | Extract | Lego | Complete | Extend
"""Any task specification."""
