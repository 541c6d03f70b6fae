"""Clip features for the evaluation probe: mono resampling, log-mel spectrogram and its time statistics.

Pure numpy (+ soxr for resampling). The probe sees a fixed-length vector per clip, so clips of any length and
rate compare: loudness is normalised first (a generated song and a render differ in gain, not in timbre).
"""

from __future__ import annotations

import numpy as np
import soxr

from encore.audio.mel import mel_filterbank

FEATURE_RATE = 22_050
"""Rate every clip is analysed at (Hz)."""
N_FFT = 2048
HOP = 512
N_MELS = 64
F_MIN, F_MAX = 30.0, 11_000.0
TARGET_RMS = 0.1
"""Clips are scaled to this RMS before the log-mel, so features ignore overall gain."""
FEATURE_VERSION = 1
"""Bumped whenever the feature recipe changes (a saved probe records the version it was trained on)."""
STATS = ("mean", "std", "flux")
FEATURE_DIM = N_MELS * len(STATS)


def to_mono(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Channel mean of `audio` resampled to `target_rate`.

    Args:
        audio: `[C, S]` or `[S]` waveform.
        sample_rate: Rate of `audio` in Hz.
        target_rate: Output rate in Hz.

    Returns:
        `[S']` float32 mono waveform.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=0)
    elif x.ndim != 1:
        raise ValueError(f"audio must be [C, S] or [S], got shape {x.shape}")
    if sample_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {sample_rate} -> {target_rate}")
    if sample_rate != target_rate:
        x = soxr.resample(x, sample_rate, target_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


_BANK = mel_filterbank(FEATURE_RATE, N_FFT, N_MELS, F_MIN, F_MAX)


def log_mel(mono: np.ndarray) -> np.ndarray:
    """Log-mel power spectrogram of a `FEATURE_RATE` mono clip.

    Args:
        mono: `[S]` float waveform at `FEATURE_RATE`.

    Returns:
        `[frames, N_MELS]` float32, ``log(1e-6 + mel power)``.
    """
    x = np.asarray(mono, dtype=np.float32)
    if x.shape[0] < N_FFT:
        x = np.pad(x, (0, N_FFT - x.shape[0]))
    count = 1 + (x.shape[0] - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(count, N_FFT), strides=(x.strides[0] * HOP, x.strides[0])
    )
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)) ** 2
    return np.log(1e-6 + power @ _BANK.T).astype(np.float32)


def clip_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fixed-length description of a clip's timbre: per mel band, time mean, time std and mean |frame delta|.

    Args:
        audio: `[C, S]` or `[S]` waveform at `sample_rate`.
        sample_rate: Hz.

    Returns:
        `[FEATURE_DIM]` float32 (bands of `mean`, then `std`, then `flux`, as in `STATS`).
    """
    mono = to_mono(audio, sample_rate, FEATURE_RATE)
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2))) if mono.size else 0.0
    if rms > 1e-8:
        mono = mono * (TARGET_RMS / rms)
    spec = log_mel(mono)
    flux = np.abs(np.diff(spec, axis=0)).mean(axis=0) if spec.shape[0] > 1 else np.zeros(N_MELS, np.float32)
    return np.concatenate([spec.mean(axis=0), spec.std(axis=0), flux]).astype(np.float32)
