"""Signal analysis for dataset labelling: tempo (onset autocorrelation) and key (Krumhansl–Kessler profiles).

Pure numpy on a mono waveform; each estimator also returns a confidence in [0, 1] so the dataset manifest can
say how much to trust an automatic label. Confidence near 0 means "no periodic beat" / "no tonal centre".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANALYSIS_RATE = 22050
"""Rate the dataset builder decodes audio at for analysis."""
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
"""Pitch-class names used in key labels (the planner's key grammar accepts `#` and `b`)."""
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MIN_BPM, MAX_BPM = 60.0, 200.0
"""Tempo search range; slower/faster songs are reported at the double/half tempo."""


@dataclass(frozen=True)
class Estimate:
    """An automatic label and how much to trust it."""

    value: float | str | None
    confidence: float
    """0 (no evidence) to 1 (unambiguous)."""


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    count = 1 + (x.shape[0] - n_fft) // hop
    return np.lib.stride_tricks.as_strided(x, shape=(count, n_fft), strides=(x.strides[0] * hop, x.strides[0]))


def spectrogram(mono: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Magnitude STFT `[frames, n_fft // 2 + 1]` with a Hann window (no centring)."""
    window = np.hanning(n_fft).astype(np.float32)
    return np.abs(np.fft.rfft(_frames(np.ascontiguousarray(mono, dtype=np.float32), n_fft, hop) * window, axis=1))


def onset_envelope(mono: np.ndarray, rate: int, *, n_fft: int = 1024, hop: int = 256) -> tuple[np.ndarray, float]:
    """Half-wave-rectified log-spectral flux, minus its local (0.5 s) mean.

    Returns:
        `(envelope [frames], frames per second)`.
    """
    log_mag = np.log1p(100.0 * spectrogram(mono, n_fft, hop))
    flux = np.maximum(np.diff(log_mag, axis=0), 0.0).sum(axis=1)
    fps = rate / hop
    width = max(1, round(0.5 * fps))
    local = np.convolve(flux, np.ones(width) / width, mode="same")
    return np.maximum(flux - local, 0.0), fps


def _autocorrelation(env: np.ndarray) -> np.ndarray:
    env = env - env.mean()
    n = env.shape[0]
    spec = np.fft.rfft(env, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    return ac / ac[0] if ac[0] > 0 else np.zeros(n)


def estimate_tempo(mono: np.ndarray, rate: int) -> Estimate:
    """Tempo in BPM from the autocorrelation of the onset envelope.

    The envelope is lightly smoothed so a beat period that falls between two envelope frames still gives a
    clear autocorrelation peak. Each candidate tempo on a 0.1 BPM grid is scored by the (interpolated)
    autocorrelation at its beat period plus half that at two periods (a real beat repeats at two beats too),
    times a broad log-normal preference for ~120 BPM. Confidence is the normalised autocorrelation at the
    chosen period.

    Args:
        mono: `[S]` float waveform.
        rate: Sample rate in Hz.

    Returns:
        `Estimate(bpm rounded to 0.1, or None when the input is too short or has no onsets; confidence)`.
    """
    env, fps = onset_envelope(mono, rate)
    if env.shape[0] < 4 * fps or not np.any(env > 0):
        return Estimate(None, 0.0)
    env = np.convolve(env, np.hanning(7)[1:-1], mode="same")
    ac = _autocorrelation(env)
    bpms = np.arange(MIN_BPM, MAX_BPM + 0.05, 0.1)
    lags = 60.0 * fps / bpms
    if 2 * lags.max() >= ac.shape[0] - 1:
        return Estimate(None, 0.0)
    index = np.arange(ac.shape[0])
    at = np.interp(lags, index, ac)
    prior = np.exp(-0.5 * np.log2(bpms / 120.0) ** 2)
    score = (np.maximum(at, 0) + 0.5 * np.maximum(np.interp(2 * lags, index, ac), 0)) * prior
    best = int(np.argmax(score))
    confidence = float(np.clip(at[best], 0.0, 1.0))
    # The grid maximum sits on an integer lag (linear interpolation peaks at samples): refine the peaks at one
    # and two periods to sub-frame precision and fit the period to both (least squares: (L1 + 2 L2) / 5).
    one, two = _peak(ac, lags[best]), _peak(ac, 2 * lags[best])
    period = (one + 2 * two) / 5
    return Estimate(round(float(60.0 * fps / period), 1), round(confidence, 3))


def _peak(ac: np.ndarray, near: float) -> float:
    """Sub-sample position of the autocorrelation maximum within one frame of `near` (parabolic fit)."""
    lo = max(1, int(np.floor(near)) - 1)
    k = lo + int(np.argmax(ac[lo:lo + 4]))
    if k <= 0 or k >= ac.shape[0] - 1:
        return float(k)
    a, b, c = ac[k - 1], ac[k], ac[k + 1]
    denom = a - 2 * b + c
    return float(k + 0.5 * (a - c) / denom) if denom < 0 else float(k)


CHROMA_BAND_HZ = (65.0, 2100.0)
"""Frequency band the pitch-class profile reads (C2 to about C7; below it bins are too coarse, above it
harmonics dominate). The training chroma loss uses the same band."""


def chroma_bins(n_fft: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rfft bins inside `CHROMA_BAND_HZ`, each one's nearest pitch class, C = 0)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    (bins,) = np.nonzero((freqs >= CHROMA_BAND_HZ[0]) & (freqs <= CHROMA_BAND_HZ[1]))
    return bins, np.round(69 + 12 * np.log2(freqs[bins] / 440.0)).astype(int) % 12


def chroma(mono: np.ndarray, rate: int, *, n_fft: int = 8192, hop: int = 4096) -> np.ndarray:
    """Time-averaged pitch-class profile `[12]` (C first) from `CHROMA_BAND_HZ`, each frame normalised first."""
    mag = spectrogram(mono, n_fft, hop)
    band, pitch_class = chroma_bins(n_fft, rate)
    frames = np.zeros((mag.shape[0], 12))
    for pc in range(12):
        frames[:, pc] = mag[:, band][:, pitch_class == pc].sum(axis=1)
    norms = frames.sum(axis=1, keepdims=True)
    loud = norms[:, 0] > 1e-3 * max(float(norms.max()), 1e-12)
    if not np.any(loud):
        return np.zeros(12)
    return (frames[loud] / norms[loud]).mean(axis=0)


def estimate_key(mono: np.ndarray, rate: int) -> Estimate:
    """Key ("A minor", "Eb major", ...) by correlating the chroma with the 24 rotated Krumhansl–Kessler profiles.

    Confidence = best correlation x how far it beats the runner-up (saturating at a 0.15 margin) x how peaked
    the chroma is (flat, noise-like chroma -> 0), so the usual relative-major/minor ambiguity and atonal input
    give a low confidence rather than a confident wrong label.
    """
    profile = chroma(mono, rate)
    if not np.any(profile > 0) or np.std(profile) < 1e-6:
        return Estimate(None, 0.0)
    scores = []
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            scores.append((r, f"{NOTE_NAMES[tonic]} {mode}"))
    scores.sort(reverse=True)
    (best, name), (second, _) = scores[0], scores[1]
    tonal = np.clip((profile.max() / profile.mean() - 1.2) / 0.8, 0.0, 1.0)
    confidence = float(np.clip(best, 0.0, 1.0) * np.clip((best - second) / 0.15, 0.0, 1.0) * tonal)
    return Estimate(name, round(confidence, 3))
