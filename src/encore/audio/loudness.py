"""Output levels: finiteness check, peak safety, peak normalisation and LUFS loudness normalisation.

All functions take one item's waveform `[C, S]` (float tensor) and return a new float32 tensor; nothing is
done in place. Loudness follows ITU-R BS.1770 via pyloudnorm; true peak is estimated on a 4x oversampled copy
(soxr), as BS.1770 Annex 2 suggests.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pyloudnorm
import soxr
import torch
from torch import Tensor

from encore.errors import InvalidRequest, NumericalError

logger = logging.getLogger(__name__)

TRUE_PEAK_OVERSAMPLING = 4
LOUDNESS_BLOCK_S = 0.4
"""BS.1770 gating block; shorter clips have no integrated loudness."""


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def gain_to_db(gain: float) -> float:
    return 20.0 * math.log10(gain) if gain > 0 else -math.inf


def _check_item(wav: Tensor) -> None:
    if wav.ndim != 2:
        raise ValueError(f"wav must have shape [C, S], got {list(wav.shape)}")


def check_finite(wav: Tensor, what: str = "audio") -> None:
    """Raises `NumericalError` if `wav` holds NaN or Inf."""
    if not bool(torch.isfinite(wav).all()):
        raise NumericalError(f"{what} contains NaN or Inf samples")


def peak_safe(wav: Tensor) -> Tensor:
    """Divides `[C, S]` by its sample peak if the peak exceeds 1 (official post-processing), else unchanged."""
    _check_item(wav)
    wav = wav.to(torch.float32)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    return wav / peak if peak > 1.0 else wav.clone()


def peak_normalize(wav: Tensor, peak_dbfs: float = -1.0) -> Tensor:
    """Scales `[C, S]` so its sample peak sits at `peak_dbfs` (newer upstream uses -1 dBFS). Silence stays."""
    _check_item(wav)
    wav = wav.to(torch.float32)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    return wav * (db_to_gain(peak_dbfs) / peak) if peak > 0 else wav.clone()


def true_peak(wav: Tensor, rate: int) -> float:
    """Linear true-peak estimate of `[C, S]`: the sample peak of a 4x oversampled copy (never below the
    sample peak)."""
    _check_item(wav)
    if wav.shape[-1] == 0:
        return 0.0
    x = np.ascontiguousarray(wav.detach().to(torch.float32).cpu().numpy().T)
    up = soxr.resample(x, rate, rate * TRUE_PEAK_OVERSAMPLING, quality="VHQ")
    return max(float(np.abs(up).max(initial=0.0)), float(np.abs(x).max()))


def measure_loudness(wav: Tensor, rate: int) -> float | None:
    """Integrated loudness of `[C, S]` in LUFS; `None` when it is undefined (shorter than one 0.4 s block, or
    silent / gated out entirely)."""
    _check_item(wav)
    if wav.shape[0] > 5:
        raise ValueError(f"loudness is defined for at most 5 channels, got {wav.shape[0]}")
    if wav.shape[-1] < LOUDNESS_BLOCK_S * rate or not bool(wav.any()):
        return None
    meter = pyloudnorm.Meter(rate, block_size=LOUDNESS_BLOCK_S)
    value = float(meter.integrated_loudness(wav.detach().to(torch.float64).cpu().numpy().T))
    return value if math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class Mastering:
    """Level processing applied before a waveform is written. The default only makes the output peak-safe."""

    peak_dbfs: float | None = None
    """Normalise the sample peak to this level (e.g. -1.0). None: only divide by the peak if it exceeds 1."""
    loudness_lufs: float | None = None
    """Integrated loudness target in LUFS (e.g. -14.0). None: no loudness normalisation."""
    true_peak_dbtp: float = -1.0
    """Ceiling for the 4x oversampled true peak after the loudness gain; the whole clip is turned down to meet
    it (a gain, not a limiter, so the result may sit below the loudness target)."""

    def __post_init__(self) -> None:
        if self.peak_dbfs is not None and not (math.isfinite(self.peak_dbfs) and self.peak_dbfs <= 0):
            raise InvalidRequest("mastering.peak_dbfs", f"must be a finite level <= 0 dBFS, got {self.peak_dbfs}")
        if self.loudness_lufs is not None and not (-70.0 <= self.loudness_lufs <= 0.0):
            raise InvalidRequest("mastering.loudness_lufs", f"must lie in [-70, 0] LUFS, got {self.loudness_lufs}")
        if not (math.isfinite(self.true_peak_dbtp) and self.true_peak_dbtp <= 0):
            raise InvalidRequest("mastering.true_peak_dbtp", f"must be a finite level <= 0 dBTP, got "
                                 f"{self.true_peak_dbtp}")
        if self.peak_dbfs is not None and self.loudness_lufs is not None:
            raise InvalidRequest("mastering.peak_dbfs", "cannot be combined with loudness_lufs (pick one)")


def loudness_normalize(wav: Tensor, rate: int, *, target_lufs: float, true_peak_dbtp: float = -1.0) -> Tensor:
    """Gains `[C, S]` to `target_lufs`, then turns it down if its true peak exceeds `true_peak_dbtp`.

    Clips whose loudness is undefined (see `measure_loudness`) get no loudness gain, only the ceiling.
    """
    wav = wav.to(torch.float32)
    measured = measure_loudness(wav, rate)
    if measured is None:
        logger.info("loudness undefined (clip shorter than %.1f s or silent); only the true-peak ceiling applies",
                    LOUDNESS_BLOCK_S)
    else:
        wav = wav * db_to_gain(target_lufs - measured)
    ceiling = db_to_gain(true_peak_dbtp)
    peak = true_peak(wav, rate)
    if peak > ceiling:
        wav = wav * (ceiling / peak)
    return wav


def apply_mastering(wav: Tensor, rate: int, options: Mastering | None = None) -> Tensor:
    """Runs the level chain on one item `[C, S]` and returns a peak-safe float32 copy.

    Raises:
        NumericalError: `wav` holds NaN or Inf.
    """
    _check_item(wav)
    check_finite(wav)
    options = options or Mastering()
    if options.loudness_lufs is not None:
        wav = loudness_normalize(wav, rate, target_lufs=options.loudness_lufs,
                                 true_peak_dbtp=options.true_peak_dbtp)
    elif options.peak_dbfs is not None:
        wav = peak_normalize(wav, options.peak_dbfs)
    return peak_safe(wav)
