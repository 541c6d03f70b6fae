"""Task → DiT context: source latents, chunk mask, instruction and cover flag (SPEC §10, §9.6–9.7).

`build_conditioning` is the one entry point: pure tensor code that turns a task spec plus already-encoded
latents into a `Conditioning`. `assemble_latents` applies the keep-region after sampling (repaint/extend keep
the source bit-identical outside the generated window). Frame geometry uses the VAE's sample rate and hop,
never literals, and reproduces the official float arithmetic (``int(sec·rate // hop)``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from encore.errors import InvalidRequest
from encore.tasks.prompts import TEXT2MUSIC_INSTRUCTION, instruction_for
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, TaskSpec, Text2Music

logger = logging.getLogger(__name__)

MIN_LATENT_FRAMES = 128
"""Official minimum latent length of a batch (`_prepare_batch`)."""
DEFAULT_CROSSFADE_FRAMES = 10
"""Latent frames faded at each repaint boundary (newer upstream default)."""
MIN_DURATION_S = 0.1


# --------------------------------------------------------------------------------------------
# Frame geometry
# --------------------------------------------------------------------------------------------


def seconds_to_frame(seconds: float, sample_rate: int, hop_samples: int) -> int:
    """Latent frame index of a time: ``int(seconds·sample_rate // hop_samples)`` (official float order).

    Computing ``floor(seconds·frame_rate)`` instead differs by one frame for some inputs (e.g. 10.28 s).
    """
    return int(seconds * sample_rate // hop_samples)


def frames_for_duration(duration_s: float, hop_samples: int, sample_rate: int) -> int:
    """Latent length of a text2music target: ``int(max(0.1, round(d, 1))·rate) // hop`` (official floor rule).

    diffusers 0.42.1 uses ``ceil(d·frame_rate)`` instead (SPEC §14.1).
    """
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise InvalidRequest("text.duration_s", f"must be a positive number of seconds, got {duration_s}")
    seconds = max(MIN_DURATION_S, round(duration_s, 1))
    return int(seconds * sample_rate) // hop_samples


def latent_length_with_minimum(num_frames: int, minimum: int = MIN_LATENT_FRAMES) -> int:
    """Batch latent length: the longest item, but at least `minimum` frames (official 128)."""
    return max(minimum, num_frames)


@dataclass(frozen=True)
class _Region:
    """Outpaint geometry on the padded grid: `left` pad frames, window [start, end), content length."""

    left: int
    start: int
    end: int
    length: int


def _region_geometry(start_s: float, end_s: float | None, num_source: int, sr: int, hop: int) -> _Region:
    # Official: pad the waveform by max(0, -start) seconds on the left, shift start/end by that, then
    # convert; a region past the end pads on the right. We pad in latent space with silence frames.
    left_s = max(0.0, -start_s)
    left = seconds_to_frame(left_s, sr, hop)
    start = seconds_to_frame(start_s + left_s, sr, hop)
    end = left + num_source if end_s is None else seconds_to_frame(end_s + left_s, sr, hop)
    return _Region(left=left, start=start, end=end, length=max(left + num_source, end))


def _extend_geometry(spec: Extend, num_source: int, sr: int, hop: int) -> tuple[int, int]:
    """(context frames, new frames) of an extension."""
    num_new = seconds_to_frame(spec.seconds, sr, hop)
    if num_new < 1:
        raise InvalidRequest("task.seconds", f"{spec.seconds} s is shorter than one latent frame")
    if spec.context_s is None:
        return num_source, num_new
    num_context = min(num_source, seconds_to_frame(spec.context_s, sr, hop))
    if num_context < 1:
        raise InvalidRequest("task.context_s", f"{spec.context_s} s is shorter than one latent frame")
    return num_context, num_new


def content_frames(
    spec: TaskSpec,
    *,
    num_source_frames: int | None,
    sample_rate: int,
    hop_samples: int,
    num_hint_frames: int | None = None,
    duration_s: float | None = None,
) -> int:
    """Natural latent length of one item before batch padding (the pipeline takes the max over the batch,
    then `latent_length_with_minimum`).

    Args:
        spec: The task.
        num_source_frames: Latent length of the encoded source, if the task has one.
        sample_rate: VAE sample rate in Hz.
        hop_samples: VAE hop (samples per latent frame).
        num_hint_frames: Length of decoded audio-code hints (text2music/cover with codes).
        duration_s: Requested duration for text2music without codes.
    """
    if num_hint_frames is not None and isinstance(spec, (Text2Music, Cover)):
        return num_hint_frames
    if isinstance(spec, Text2Music):
        if duration_s is None:
            raise InvalidRequest("text.duration_s", "text2music needs a duration or audio codes")
        return frames_for_duration(duration_s, hop_samples, sample_rate)
    if num_source_frames is None:
        raise InvalidRequest("task.source", f"{type(spec).__name__.lower()} needs source audio")
    if isinstance(spec, (Repaint, Lego)):
        return _region_geometry(spec.start_s, spec.end_s, num_source_frames, sample_rate, hop_samples).length
    if isinstance(spec, Extend):
        return sum(_extend_geometry(spec, num_source_frames, sample_rate, hop_samples))
    return num_source_frames


# --------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KeepRegion:
    """What `assemble_latents` restores after sampling so kept frames equal the source exactly."""

    source_latents: Tensor
    """Clean source on the sampled grid [T, C] (silence in pads)."""
    generate_mask: Tensor
    """Bool [T]; True = generated, False = kept from `source_latents`."""
    prefix: Tensor
    """Source frames re-attached before the sampled window [P, C] (extend-after); may be empty."""
    suffix: Tensor
    """Source frames re-attached after the sampled window [S, C] (extend-before); may be empty."""


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Everything task-specific the DiT context needs for one batch item (SPEC §10)."""

    src_latents: Tensor
    """Context latents [T, C]. The model replaces them by their FSQ round-trip when `is_cover` and not
    `src_is_hints`."""
    chunk_mask: Tensor
    """Float32 [T]; 1 = generate, 0 = keep (or the "auto" sentinel for full-span tasks, SPEC §16)."""
    instruction: str
    """Instruction line for the caption prompt."""
    is_cover: bool
    """Official `is_covers` flag."""
    src_is_hints: bool
    """`src_latents` are precomputed 25 Hz hints decoded from audio codes (skip the FSQ round trip)."""
    num_content_frames: int
    """Frames that belong to this item; the rest of T is batch padding."""
    region: tuple[int, int] | None = None
    """Generated window [start, end) in frames for repaint/lego/extend (after clamping)."""
    keep: KeepRegion | None = None
    """Set for repaint and extend; used by `assemble_latents`."""
    non_cover: Conditioning | None = None
    """Text2music condition that replaces this one from step ``int(N·cover_strength)`` (cover < 1)."""

    @property
    def num_frames(self) -> int:
        """Sampled length T."""
        return int(self.src_latents.shape[0])


def _check_latents(name: str, latents: Tensor, silence: Tensor) -> None:
    if latents.dim() != 2 or latents.shape[0] < 1 or latents.shape[1] != silence.shape[1]:
        raise ValueError(f"{name} must be [T, {silence.shape[1]}] with T >= 1, got {tuple(latents.shape)}")
    if latents.dtype != silence.dtype or latents.device != silence.device:
        raise ValueError(
            f"{name} is {latents.dtype} on {latents.device} but silence_latent is {silence.dtype} on "
            f"{silence.device}; cast both to the model dtype and device first"
        )


def _silence(silence: Tensor, start: int, end: int) -> Tensor:
    if end > silence.shape[0]:
        raise ValueError(f"silence_latent has {silence.shape[0]} frames but {end} are needed")
    return silence[start:end]


def fit_frames(latents: Tensor, num_frames: int, silence: Tensor, *, allow_crop: bool) -> Tensor:
    """Crop or right-pad `latents` to `num_frames` with the matching silence frames (official padding)."""
    length = latents.shape[0]
    if length > num_frames:
        if not allow_crop:
            raise ValueError(f"num_frames={num_frames} is shorter than the item's {length} content frames")
        return latents[:num_frames]
    if length == num_frames:
        return latents
    return torch.cat([latents, _silence(silence, length, num_frames)], dim=0)


def _full_span(
    content: Tensor, silence: Tensor, num_frames: int | None, mask_value: float, *, allow_crop: bool
) -> tuple[Tensor, Tensor, int]:
    frames = content.shape[0] if num_frames is None else num_frames
    src = fit_frames(content, frames, silence, allow_crop=allow_crop)
    mask = torch.full((frames,), float(mask_value), dtype=torch.float32, device=silence.device)
    return src, mask, min(content.shape[0], frames)


def _region_mask(start: int, end: int, num_frames: int, device: torch.device) -> tuple[Tensor, int, int]:
    # Official clamp: start in [0, T-1], end in [start+1, T].
    start = max(0, min(start, num_frames - 1))
    end = max(start + 1, min(end, num_frames))
    mask = torch.zeros(num_frames, dtype=torch.float32, device=device)
    mask[start:end] = 1.0
    return mask, start, end


def _windowed(
    window: Tensor, start: int, end: int, silence: Tensor, num_frames: int | None, *, silence_region: bool
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Place `window` on the sampled grid; returns (src, chunk mask, clean source, clamped region)."""
    frames = window.shape[0] if num_frames is None else num_frames
    clean = fit_frames(window, frames, silence, allow_crop=False)
    mask, start, end = _region_mask(start, end, frames, silence.device)
    src = clean
    if silence_region:
        src = clean.clone()
        src[start:end] = _silence(silence, start, end)
    return src, mask, clean, (start, end)


def _require_source(spec: TaskSpec, source_latents: Tensor | None) -> Tensor:
    if source_latents is None:
        raise InvalidRequest("task.source", f"{type(spec).__name__.lower()} needs source audio")
    return source_latents


def _region_task(
    spec: Repaint | Lego, source: Tensor, silence: Tensor, num_frames: int | None, sr: int, hop: int
) -> Conditioning:
    geo = _region_geometry(spec.start_s, spec.end_s, source.shape[0], sr, hop)
    if spec.end_s is None and geo.start >= geo.end:
        # The official clamp would silently repaint the last frame instead. (A window shorter than one
        # frame with an explicit end is widened to one frame, as officially.)
        raise InvalidRequest("task.start_s", f"{spec.start_s} s is past the end of the source")
    right = geo.length - geo.left - source.shape[0]
    window = torch.cat(
        [_silence(silence, 0, geo.left), source, _silence(silence, geo.length - right, geo.length)], dim=0
    )
    # Newer upstream keeps the lego source intact inside the region (the Feb-snapshot silencing is a bug).
    is_repaint = isinstance(spec, Repaint)
    src, mask, clean, region = _windowed(
        window, geo.start, geo.end, silence, num_frames, silence_region=is_repaint
    )
    keep = None
    if is_repaint:
        empty = source[:0]
        keep = KeepRegion(source_latents=clean, generate_mask=mask.bool(), prefix=empty, suffix=empty)
    return Conditioning(
        src_latents=src,
        chunk_mask=mask,
        instruction=instruction_for(spec),
        is_cover=False,
        src_is_hints=False,
        num_content_frames=geo.length,
        region=region,
        keep=keep,
    )


def _extend_task(
    spec: Extend, source: Tensor, silence: Tensor, num_frames: int | None, sr: int, hop: int
) -> Conditioning:
    num_context, num_new = _extend_geometry(spec, source.shape[0], sr, hop)
    num_source = source.shape[0]
    if spec.side == "after":
        context, prefix, suffix = (
            source[num_source - num_context :],
            source[: num_source - num_context],
            source[:0],
        )
        window = torch.cat([context, _silence(silence, num_context, num_context + num_new)], dim=0)
        start, end = num_context, num_context + num_new
    else:
        context, prefix, suffix = source[:num_context], source[:0], source[num_context:]
        window = torch.cat([_silence(silence, 0, num_new), context], dim=0)
        start, end = 0, num_new
    src, mask, clean, region = _windowed(window, start, end, silence, num_frames, silence_region=True)
    keep = KeepRegion(source_latents=clean, generate_mask=mask.bool(), prefix=prefix, suffix=suffix)
    return Conditioning(
        src_latents=src,
        chunk_mask=mask,
        instruction=instruction_for(spec),
        is_cover=False,
        src_is_hints=False,
        num_content_frames=window.shape[0],
        region=region,
        keep=keep,
    )


def _non_cover(cond: Conditioning, silence: Tensor) -> Conditioning:
    # Official: text2music instruction, silence context, is_cover 0, same chunk mask (SPEC §9.6).
    return Conditioning(
        src_latents=_silence(silence, 0, cond.num_frames),
        chunk_mask=cond.chunk_mask,
        instruction=TEXT2MUSIC_INSTRUCTION,
        is_cover=False,
        src_is_hints=False,
        num_content_frames=cond.num_content_frames,
    )


def build_conditioning(
    spec: TaskSpec,
    *,
    source_latents: Tensor | None,
    silence_latent: Tensor,
    num_frames: int | None = None,
    sample_rate: int,
    hop_samples: int,
    hint_latents: Tensor | None = None,
    full_span_mask_value: float = 1.0,
) -> Conditioning:
    """Build the DiT context for one item exactly per SPEC §10.

    Args:
        spec: The task.
        source_latents: VAE latents of the (unpadded) source audio [T_src, C], or None. Outpainting pads
            are added here with silence frames (the official code pads the waveform with zeros first).
        silence_latent: The checkpoint's silence latent [T_sil, C]; T_sil must cover the sampled length.
        num_frames: Sampled length T (batch length, already `latent_length_with_minimum`). None uses the
            item's `content_frames`. Shorter items are right-padded with silence frames.
        sample_rate: VAE sample rate in Hz.
        hop_samples: VAE hop in samples per latent frame.
        hint_latents: 25 Hz hints decoded from audio codes [T_h, C] (text2music/cover only); padded with
            silence or cropped to T, with the cover instruction and ``is_cover``.
        full_span_mask_value: Chunk-mask value for tasks without a region (1.0 Feb-snapshot/diffusers,
            2.0 newer-upstream "auto" sentinel, SPEC §16).

    Returns:
        A `Conditioning`.

    Raises:
        InvalidRequest: ``task.source`` when a source is required but missing, ``audio_codes`` when codes are
            given for a task that cannot use them, ``task.seconds``/``task.context_s`` for spans under a frame.
    """
    if silence_latent.dim() != 2:
        raise ValueError(f"silence_latent must be [T, C], got {tuple(silence_latent.shape)}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    for name, latents in (("source_latents", source_latents), ("hint_latents", hint_latents)):
        if latents is not None:
            _check_latents(name, latents, silence_latent)
    if hint_latents is not None and not isinstance(spec, (Text2Music, Cover)):
        raise InvalidRequest("audio_codes", "audio codes only apply to text2music and cover")

    if isinstance(spec, (Repaint, Lego)):
        source = _require_source(spec, source_latents)
        return _region_task(spec, source, silence_latent, num_frames, sample_rate, hop_samples)
    if isinstance(spec, Extend):
        source = _require_source(spec, source_latents)
        return _extend_task(spec, source, silence_latent, num_frames, sample_rate, hop_samples)
    return _full_span_task(
        spec, source_latents, silence_latent, num_frames, hint_latents, full_span_mask_value
    )


def _full_span_task(
    spec: TaskSpec,
    source_latents: Tensor | None,
    silence: Tensor,
    num_frames: int | None,
    hints: Tensor | None,
    mask_value: float,
) -> Conditioning:
    """Text2music, cover, extract and complete: the whole span is generated."""
    if hints is not None:
        if source_latents is not None:
            logger.debug("audio codes given with a source; the codes take priority, as officially")
        src, mask, content = _full_span(hints, silence, num_frames, mask_value, allow_crop=True)
        cond = Conditioning(
            src_latents=src,
            chunk_mask=mask,
            instruction=instruction_for(spec, has_audio_codes=True),
            is_cover=True,
            src_is_hints=True,
            num_content_frames=content,
        )
    elif isinstance(spec, Text2Music):
        if num_frames is None:
            raise ValueError("text2music without audio codes needs num_frames (see frames_for_duration)")
        mask = torch.full((num_frames,), float(mask_value), dtype=torch.float32, device=silence.device)
        return Conditioning(
            src_latents=_silence(silence, 0, num_frames),
            chunk_mask=mask,
            instruction=instruction_for(spec),
            is_cover=False,
            src_is_hints=False,
            num_content_frames=num_frames,
        )
    elif isinstance(spec, (Cover, Extract, Complete)):
        source = _require_source(spec, source_latents)
        src, mask, content = _full_span(source, silence, num_frames, mask_value, allow_crop=False)
        cond = Conditioning(
            src_latents=src,
            chunk_mask=mask,
            instruction=instruction_for(spec),
            is_cover=isinstance(spec, Cover),
            src_is_hints=False,
            num_content_frames=content,
        )
    else:
        raise InvalidRequest("task", f"unknown task type {type(spec).__name__}")
    if isinstance(spec, Cover) and spec.cover_strength < 1.0:
        cond = dataclasses.replace(cond, non_cover=_non_cover(cond, silence))
    return cond


# --------------------------------------------------------------------------------------------
# After sampling
# --------------------------------------------------------------------------------------------


def _fade_weights(generate_mask: Tensor, crossfade_frames: int) -> Tensor:
    """Weight of the generated latents per frame: 0 on kept frames, ``d/(cf+1)`` for a generated frame at
    distance d ≤ cf from the nearest kept frame, 1 deeper inside. Array edges are not boundaries."""
    keep = ~generate_mask
    far = crossfade_frames + 1
    distance = torch.full(generate_mask.shape, far, dtype=torch.int64, device=generate_mask.device)
    for k in range(1, crossfade_frames + 1):
        near = torch.zeros_like(keep)
        near[..., k:] |= keep[..., :-k]
        near[..., :-k] |= keep[..., k:]
        distance = torch.where(near & (distance > k), torch.full_like(distance, k), distance)
    weights = distance.to(torch.float32) / far
    return torch.where(generate_mask, weights, torch.zeros_like(weights))


def splice_outside_region(
    generated: Tensor, source: Tensor, generate_mask: Tensor, crossfade_frames: int = DEFAULT_CROSSFADE_FRAMES
) -> Tensor:
    """Keep `source` exactly outside the generated region and fade into `generated` inside it.

    The cross-fade lies entirely inside the generated region, so kept frames stay bit-identical to the
    source (newer upstream fades `crossfade_frames` into the kept side instead).

    Args:
        generated: Sampled latents [..., T, C].
        source: Clean source latents [T, C] or [..., T, C] on the same grid.
        generate_mask: Bool [T] or [..., T]; True = generated.
        crossfade_frames: Fade length in frames at each inner boundary; 0 is a hard cut.

    Returns:
        Tensor shaped like `generated`.
    """
    if generate_mask.dtype != torch.bool:
        raise ValueError(f"generate_mask must be bool, got {generate_mask.dtype}")
    if crossfade_frames < 0:
        raise ValueError(f"crossfade_frames must be >= 0, got {crossfade_frames}")
    src = source.to(generated.dtype)
    weights = _fade_weights(generate_mask, crossfade_frames).unsqueeze(-1)
    blend = (src.float() + weights * (generated.float() - src.float())).to(generated.dtype)
    inner = torch.where(weights >= 1.0, generated, blend)
    return torch.where(generate_mask.unsqueeze(-1), inner, src)


def assemble_latents(
    generated: Tensor, cond: Conditioning, *, crossfade_frames: int = DEFAULT_CROSSFADE_FRAMES
) -> Tensor:
    """Final latents of one item: splice the keep region, drop batch padding, re-attach extend context.

    Args:
        generated: Sampled latents [T, C] or [B, T, C] on `cond`'s grid.
        cond: The item's conditioning.
        crossfade_frames: Boundary fade for repaint/extend (see `splice_outside_region`).

    Returns:
        [..., T_out, C]: `num_content_frames` frames, plus the source prefix/suffix for extend.
    """
    if generated.shape[-2] != cond.num_frames:
        raise ValueError(f"generated has {generated.shape[-2]} frames, conditioning has {cond.num_frames}")
    out = generated
    if cond.keep is not None:
        out = splice_outside_region(out, cond.keep.source_latents, cond.keep.generate_mask, crossfade_frames)
    out = out[..., : cond.num_content_frames, :]
    if cond.keep is None or (cond.keep.prefix.shape[0] == 0 and cond.keep.suffix.shape[0] == 0):
        return out
    batch = out.shape[:-2]
    prefix = cond.keep.prefix.to(out.dtype).expand(*batch, -1, -1)
    suffix = cond.keep.suffix.to(out.dtype).expand(*batch, -1, -1)
    return torch.cat([prefix, out, suffix], dim=-2)
