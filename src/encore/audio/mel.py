"""Mel scale and triangular mel filterbanks (HTK formula), shared by the evaluation features and the VAE's mel
loss. Pure numpy."""

from __future__ import annotations

import numpy as np


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular HTK-mel filters `[n_mels, n_fft // 2 + 1]`, each normalised to unit area."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lo) / (mid - lo)
    falling = (hi - freqs[None, :]) / (hi - mid)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    area = bank.sum(axis=1, keepdims=True)
    # Low filters can be narrower than one FFT bin; give them the nearest bin so no band is empty.
    for i in np.flatnonzero(area[:, 0] == 0):
        bank[i, int(np.argmin(np.abs(freqs - mid[i, 0])))] = 1.0
    return (bank / bank.sum(axis=1, keepdims=True)).astype(np.float32)
