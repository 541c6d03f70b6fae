"""Beat hints: a 25 Hz DiT context written by rule from a tempo, for models trained to read it.

The official planner tells the DiT where the music goes by writing 5 Hz audio codes, which the detokenizer turns
into 25 Hz hint latents in the cover slot of the context. The embedded model has no planner that can write codes
(its corpus is far too small to learn them), and a bpm that reaches the DiT only as a number token in the
caption was not learned (docs/model-card.md, fifth session). A beat hint fills the same slot from the bpm alone:
the silence latent plus the beat phase ``φ(t) = t·bpm/60`` as ``cos 2πφ`` and ``sin 2πφ`` along two fixed
orthogonal channel patterns, so every frame carries its position inside the beat to sub-frame precision.

Key hints ride on the same context: a model whose config also has ``key_hints`` gets the requested key as a
constant offset along three further channel patterns (``key_offset``): the tonic's place on the circle of fifths
as ``cos`` and ``sin``, and the mode as ±1. A key named only in the caption was not followed (exact key at the
random floor after 1,000 steps on pitch-carrying latents, docs/model-card.md), as the bpm had not been.

Instrument hints ride there too: a model whose config has ``instrument_hints`` gets the track classes its caption
names (``instrument_offset``: plus the amplitude along a class's pattern when named, minus it when not) along the
eleven Walsh patterns a 16-channel latent has left; the pipeline reads the names from the request's caption with
the corpus's own word list. Trained into the embedded base they bought only two or three points of instrument
accuracy and cost key, so no shipped model reads them (docs/model-card.md, Recipe step 44).

A model whose config has ``beat_hints`` set was trained with these hints (``beat_hint_prob`` in the DiT recipe)
with beat 0 at the clip's first sample, the corpus's render convention; the pipeline adds them to text2music
requests that give a bpm and no audio codes. Official checkpoints never see them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from encore.errors import InvalidRequest
from encore.tasks.spec import TRACK_NAMES
from encore.utils.keys import parse_keyscale

BEAT_HINT_AMPLITUDE = 1.0
"""Per-channel amplitude of the phase patterns (the embedded latents' per-channel std is about 0.7)."""
KEY_HINT_AMPLITUDE = 1.0
"""Per-channel amplitude of the key patterns."""
INSTRUMENT_HINT_AMPLITUDE = 0.5
"""Per-channel amplitude of each instrument pattern (eleven of them add up, so each is smaller)."""
INSTRUMENT_HINT_TRACKS: tuple[str, ...] = tuple(t for t in TRACK_NAMES if t != "vocals")
"""Track classes an instrument hint can carry: the official stems but lead vocals, which the lyrics steer."""
_INSTRUMENT_MASKS = (0b0011, 0b0101, 0b0111, *range(0b1000, 0b10000))
"""Walsh masks left by the beat ({}, {0}) and key ({1}, {2}, {1, 2}) patterns: one per hint track."""


def beat_phase(num_frames: int, bpm: float, *, frame_rate: float, offset_frames: int = 0) -> Tensor:
    """Beats elapsed at the start of each frame, float64 `[num_frames]` (frame `offset_frames` of the clip is
    index 0, so a crop keeps the phase of the clip it was cut from)."""
    if not (math.isfinite(bpm) and bpm > 0):
        raise InvalidRequest("text.bpm", f"beat hints need a positive bpm, got {bpm}")
    frames = torch.arange(offset_frames, offset_frames + num_frames, dtype=torch.float64)
    return frames / frame_rate * (bpm / 60.0)


def _walsh(channels: int, mask: int) -> Tensor:
    """The float64 Walsh function `[C]`: ±1 by the parity of the bits `mask` selects in the channel index."""
    index = torch.arange(channels)
    parity = torch.zeros(channels, dtype=torch.long)
    for bit in range(mask.bit_length()):
        if mask >> bit & 1:
            parity ^= (index >> bit) & 1
    return torch.where(parity == 0, 1.0, -1.0).to(torch.float64)


def phase_patterns(channels: int) -> tuple[Tensor, Tensor]:
    """The two channel patterns `[C]` the phase is written along: all ones, and alternating ±1 (orthogonal for
    an even channel count, which every ACE-Step VAE has)."""
    if channels < 2 or channels % 2:
        raise ValueError(f"beat hints need an even number of latent channels >= 2, got {channels}")
    return _walsh(channels, 0b000), _walsh(channels, 0b001)


def key_patterns(channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Three channel patterns `[C]`: the Walsh functions of bits {1}, {2} and {1, 2} of the channel index,
    orthogonal to each other and to both `phase_patterns`, so a key never reads as a beat phase."""
    if channels < 8 or channels % 8:
        raise ValueError(f"key hints need a multiple of 8 latent channels, got {channels}")
    return _walsh(channels, 0b010), _walsh(channels, 0b100), _walsh(channels, 0b110)


def key_offset(keyscale: str, channels: int, *, amplitude: float = KEY_HINT_AMPLITUDE) -> Tensor:
    """The constant float64 `[C]` offset for a key like ``"F# minor"``: the tonic on the circle of fifths (keys a
    fifth apart, which share six of seven scale notes, are neighbours) and the mode."""
    try:
        pc, mode = parse_keyscale(keyscale)
    except ValueError as exc:
        raise InvalidRequest("text.keyscale", str(exc)) from None
    angle = 2.0 * math.pi * ((7 * pc) % 12) / 12.0
    cos_p, sin_p, mode_p = key_patterns(channels)
    sign = 1.0 if mode == "major" else -1.0
    return amplitude * (math.cos(angle) * cos_p + math.sin(angle) * sin_p + sign * mode_p)


def instrument_patterns(channels: int) -> tuple[Tensor, ...]:
    """One channel pattern `[C]` per `INSTRUMENT_HINT_TRACKS` entry, orthogonal to each other and to the beat
    and key patterns."""
    if channels < 16 or channels % 16:
        raise ValueError(f"instrument hints need a multiple of 16 latent channels, got {channels}")
    return tuple(_walsh(channels, mask) for mask in _INSTRUMENT_MASKS)


def instrument_offset(tracks: Iterable[str], channels: int, *,
                      amplitude: float = INSTRUMENT_HINT_AMPLITUDE) -> Tensor:
    """The constant float64 `[C]` offset for a set of track classes: +amplitude along a named class's pattern,
    -amplitude along the others (so "not named" differs from "no hint", which adds nothing)."""
    named = set(tracks)
    unknown = named - set(INSTRUMENT_HINT_TRACKS)
    if unknown:
        raise InvalidRequest("instruments", f"no instrument hint for {sorted(unknown)}; "
                             f"choose from {', '.join(INSTRUMENT_HINT_TRACKS)}")  # fmt: skip
    out = torch.zeros(channels, dtype=torch.float64)
    for track, pattern in zip(INSTRUMENT_HINT_TRACKS, instrument_patterns(channels), strict=True):
        out += (amplitude if track in named else -amplitude) * pattern
    return out


def beat_hints(
    silence: Tensor,
    bpm: float,
    *,
    num_frames: int,
    sample_rate: int,
    hop_samples: int,
    offset_frames: int = 0,
    amplitude: float = BEAT_HINT_AMPLITUDE,
    keyscale: str | None = None,
    tracks: Iterable[str] | None = None,
) -> Tensor:
    """Hint latents `[num_frames, C]` for a tempo: silence frames plus the beat phase (see module docstring).

    Args:
        silence: The checkpoint's silence latent `[T_sil, C]`; its first `num_frames` frames are the base, and
            the result has its dtype and device.
        bpm: Beats per minute (quarter notes, as the corpus labels count them).
        num_frames: Frames to write.
        sample_rate: VAE sample rate in Hz.
        hop_samples: VAE hop in samples per latent frame.
        offset_frames: Frame of the clip the hints start at (training crops); 0 at inference.
        amplitude: Per-channel amplitude of the patterns.
        keyscale: With a key, its `key_offset` is added to every frame (models with ``key_hints``).
        tracks: With a non-empty set of track classes, their `instrument_offset` is added to every frame (models
            with ``instrument_hints``); None or empty adds nothing.

    Returns:
        `[num_frames, C]` in `silence`'s dtype.
    """
    if silence.dim() != 2 or silence.shape[0] < num_frames:
        raise ValueError(f"silence latent {tuple(silence.shape)} does not cover {num_frames} frames")
    phase = 2.0 * math.pi * beat_phase(num_frames, bpm, frame_rate=sample_rate / hop_samples,
                                       offset_frames=offset_frames)  # fmt: skip
    ones, alternating = phase_patterns(int(silence.shape[1]))
    pattern = amplitude * (torch.cos(phase)[:, None] * ones + torch.sin(phase)[:, None] * alternating)
    if keyscale is not None:
        pattern = pattern + key_offset(keyscale, int(silence.shape[1]))
    named = tuple(tracks or ())
    if named:
        pattern = pattern + instrument_offset(named, int(silence.shape[1]))
    return silence[:num_frames] + pattern.to(device=silence.device, dtype=silence.dtype)
