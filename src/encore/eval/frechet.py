"""Fréchet distance between two sets of embeddings, each summarised by a Gaussian (mean, covariance).

FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)). The trace of the matrix square root is
computed from eigenvalues of the symmetric matrix S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as
S_a S_b and stays real and stable when the covariances are rank-deficient (few clips, many dimensions).
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` (float64) of `[N, D]` embeddings, N >= 2."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] embeddings, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    Args:
        mu_a, mu_b: `[D]` means.
        cov_a, cov_b: `[D, D]` symmetric positive semi-definite covariances.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"shape mismatch: {mu_a.shape}, {cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave a tiny negative for identical inputs


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to embedding sets `a [N, D]` and `b [M, D]`."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
