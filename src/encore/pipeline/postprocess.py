"""Waveform post-processing after VAE decode: finite checks, source keep-splice and output normalisation.

Pure tensor functions used by `Pipeline` (SPEC §11 step 4, RELIABILITY R8). Repaint and extend keep the
source waveform sample-exact outside the generated window and cross-fade into the decoded audio inside it;
normalisation then only ever scales the generated part of such outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from encore.audio import loudness
from encore.errors import NumericalError

log = logging.getLogger(__name__)


def check_finite(x: Tensor, stage: str) -> None:
    """Raise `NumericalError` naming `stage` if `x` holds NaN or Inf (never write a noisy/silent file)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NumericalError(f"{stage}: {bad} of {x.numel()} values are NaN or Inf; nothing was written")


# --------------------------------------------------------------------------------------------
# Keep-splice: source outside the generated window, decoded audio inside
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveKeep:
    """Where the source waveform sits in a source-keeping output (repaint/extend), in samples."""

    source: Tensor
    """Source waveform [2, S] as loaded (48 kHz stereo), float32."""
    offset: int
    """Output sample where source sample 0 sits (> 0 when audio was added before it)."""
    generated: tuple[int, int]
    """Output samples [start, end) that were generated."""
    crossfade: int
    """Samples over which the output fades from the source into the decoded audio, inside the window."""


def generated_weights(keep: WaveKeep, length: int, device: torch.device) -> Tensor:
    """Weight of the decoded audio per output sample: 0 where the source is kept, 1 deep inside the window.

    A window edge that touches kept source audio ramps linearly over `crossfade` samples (inside the window);
    an edge that touches no source (out-painting) is a hard edge.
    """
    start, end = keep.generated
    src_lo, src_hi = keep.offset, keep.offset + keep.source.shape[-1]
    idx = torch.arange(length, device=device, dtype=torch.float64)
    w = torch.zeros(length, dtype=torch.float64, device=device)
    inside = (idx >= start) & (idx < end)
    w[inside] = 1.0
    ramp = float(keep.crossfade + 1)
    if keep.crossfade > 0 and src_lo <= start - 1 < src_hi:  # kept source just before the window
        w = torch.where(inside, torch.minimum(w, (idx - start + 1) / ramp), w)
    if keep.crossfade > 0 and src_lo <= end < src_hi:  # kept source just after the window
        w = torch.where(inside, torch.minimum(w, (end - idx) / ramp), w)
    return w.clamp(0.0, 1.0).to(torch.float32)


def keep_source(decoded: Tensor, keep: WaveKeep, gain: float = 1.0) -> Tensor:
    """Output waveform: the source exactly where kept, `gain * decoded` inside the window, faded between.

    Args:
        decoded: [B, 2, S_dec] VAE output on the output grid (its first sample is output sample 0).
        keep: Source placement.
        gain: Scale applied to the decoded audio only (peak safety), never to the kept source.

    Returns:
        [B, 2, L] float32 with L = max(S_dec, offset + S_src); kept samples are bit-identical to the source.
    """
    batch, channels, dec_len = decoded.shape
    src = keep.source.to(device=decoded.device, dtype=torch.float32)
    length = max(dec_len, keep.offset + src.shape[-1])
    canvas = torch.zeros(channels, length, device=decoded.device, dtype=torch.float32)
    canvas[:, keep.offset: keep.offset + src.shape[-1]] = src
    dec = torch.zeros(batch, channels, length, device=decoded.device, dtype=torch.float32)
    dec[..., :dec_len] = decoded.float() * gain
    w = generated_weights(keep, length, decoded.device)
    blended = canvas + w * (dec - canvas)
    # Exact copies where nothing is generated: no float round-trip touches kept samples.
    return torch.where(w > 0, blended, canvas.expand(batch, -1, -1))


def window_peak(decoded: Tensor, keep: WaveKeep) -> Tensor:
    """Per-item peak of the decoded audio inside the generated window, [B]."""
    start, end = keep.generated
    part = decoded[..., start: min(end, decoded.shape[-1])]
    if part.numel() == 0:
        return torch.zeros(decoded.shape[0], device=decoded.device)
    return part.abs().amax(dim=(1, 2)).float()


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def peak_gain(peak: Tensor, ceiling: float = 1.0) -> Tensor:
    """Scale that brings `peak` down to `ceiling` when above it, else 1 (official: divide by peak if > 1)."""
    return torch.where(peak > ceiling, ceiling / peak.clamp_min(1e-12), torch.ones_like(peak))


def normalize(audio: Tensor, sample_rate: int, mode: str, *, target_lufs: float, true_peak_db: float
              ) -> tuple[Tensor, list[dict]]:
    """Output normalisation of [B, 2, S] audio per item.

    Modes: ``peak`` divides an item by its peak only if the peak exceeds 1 (Feb-snapshot behaviour; never
    boosts); ``loudness`` reaches `target_lufs` with a true-peak ceiling of `true_peak_db` (BS.1770 via
    `encore.audio.loudness`); ``none`` leaves the audio as decoded.

    Returns:
        The normalised audio and one info dict per item (recorded in the result params).
    """
    if mode == "none":
        return audio, [{"mode": "none"} for _ in range(audio.shape[0])]
    if mode == "peak":
        peaks = audio.abs().amax(dim=(1, 2))
        gains = peak_gain(peaks)
        infos = [{"mode": "peak", "peak": float(p), "gain": float(g)} for p, g in zip(peaks, gains)]
        return audio * gains[:, None, None], infos
    if mode != "loudness":
        raise ValueError(f"unknown normalisation {mode!r}")
    out, infos = [], []
    for item in audio:
        measured = loudness.measure_loudness(item, sample_rate)
        levelled = loudness.loudness_normalize(item, sample_rate, target_lufs=target_lufs,
                                               true_peak_dbtp=true_peak_db)
        before, after = float(item.abs().max()), float(levelled.abs().max())
        out.append(levelled)
        infos.append({"mode": "loudness", "target_lufs": target_lufs, "true_peak_ceiling_db": true_peak_db,
                      "measured_lufs": measured, "gain": after / before if before > 0 else 1.0,
                      "note": None if measured is not None else "too short or silent for loudness; ceiling only"})
    return torch.stack(out), infos
