"""Chroma, mel and roughness losses: the terms added to the VAE recipe."""

from __future__ import annotations

import pytest
import torch

from encore.training.losses import (
    chroma_loss,
    multi_resolution_mel_loss,
    pitch_class_matrix,
    temporal_roughness,
)

RATE = 8000


def _chord(hz: tuple[float, ...], seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * RATE)) / RATE
    x = sum(0.2 * torch.sin(2 * torch.pi * f * t) for f in hz)
    return torch.stack([x, x]).unsqueeze(0)  # [1, 2, S]


def test_pitch_class_matrix_matches_note_names() -> None:
    matrix = pitch_class_matrix(1024, RATE)
    freqs = torch.fft.rfftfreq(1024, 1.0 / RATE)
    a4 = int(torch.argmin((freqs - 440.0).abs()))
    c4 = int(torch.argmin((freqs - 261.6).abs()))
    assert matrix[9, a4] == 1 and matrix[:, a4].sum() == 1  # A
    assert matrix[0, c4] == 1  # C
    assert matrix[:, freqs < 65].sum() == 0 and matrix[:, freqs > 2100].sum() == 0
    assert matrix.sum(dim=0).max() == 1  # each bin in at most one class


def test_chroma_loss_sees_notes_not_loudness() -> None:
    c_major = _chord((261.6, 329.6, 392.0))
    assert chroma_loss(c_major, c_major, RATE, 1024) < 1e-6
    assert chroma_loss(0.3 * c_major, c_major, RATE, 1024) < 1e-5  # level does not matter
    other = _chord((277.2, 349.2, 415.3))  # C# major: every pitch class differs
    assert chroma_loss(other, c_major, RATE, 1024) > 1.2  # (window leakage keeps it under 2)
    shared = _chord((261.6, 329.6, 440.0))  # two of three notes shared
    assert chroma_loss(shared, c_major, RATE, 1024) < chroma_loss(other, c_major, RATE, 1024)


def test_chroma_loss_ignores_silent_target_frames_and_has_gradients() -> None:
    target = _chord((440.0,))
    target[..., : target.shape[-1] // 2] = 0.0  # first half silent
    pred = _chord((440.0,)) + 0.0
    noisy_start = pred.clone()
    noisy_start[..., : pred.shape[-1] // 4] += 0.2 * torch.randn(2, pred.shape[-1] // 4)
    assert chroma_loss(noisy_start, target, RATE, 512) < 0.2 * chroma_loss(_chord((311.1,)), target, RATE, 512)
    pred = _chord((466.2,)).requires_grad_(True)
    chroma_loss(pred, target, RATE, 512).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_chroma_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        chroma_loss(_chord((440.0,)), _chord((440.0,), 0.4), RATE)
    with pytest.raises(ValueError, match="shorter"):
        chroma_loss(_chord((440.0,), 0.05), _chord((440.0,), 0.05), RATE, 1024)


def test_temporal_roughness_is_one_minus_lag1_autocorrelation_and_scale_free() -> None:
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4, 8, 2000, generator=g)
    t = torch.arange(2000) / 2000
    slow = torch.sin(2 * torch.pi * 3 * t).expand(4, 8, -1) + 0.01 * white
    alternating = torch.where(torch.arange(2000) % 2 == 0, 1.0, -1.0).expand(4, 8, -1)
    assert temporal_roughness(white) == pytest.approx(1.0, abs=0.05)
    assert temporal_roughness(slow) < 0.01
    assert temporal_roughness(alternating) == pytest.approx(2.0, abs=0.01)
    assert temporal_roughness(100 * white) == pytest.approx(temporal_roughness(white).item(), rel=1e-4)
    with pytest.raises(ValueError, match="2 frames"):
        temporal_roughness(torch.zeros(1, 2, 1))


def test_mel_loss_is_a_log_ratio_sees_a_semitone_and_checks_shapes() -> None:
    rate = 48_000
    t = torch.arange(rate // 4) / rate
    a3 = torch.stack([0.2 * torch.sin(2 * torch.pi * 220.0 * t)] * 2).unsqueeze(0)  # [1, 2, S]
    bb3 = torch.stack([0.2 * torch.sin(2 * torch.pi * 233.1 * t)] * 2).unsqueeze(0)
    assert multi_resolution_mel_loss(a3, a3, rate) == 0
    # Linear in magnitude before the log: halving the level costs log 2 in every band above the 1e-5 floor.
    noise = 0.2 * torch.randn(1, 2, rate // 4, generator=torch.Generator().manual_seed(0))
    assert float(multi_resolution_mel_loss(0.5 * noise, noise, rate)) == pytest.approx(0.6931, rel=1e-3)
    pred = bb3.clone().requires_grad_(True)
    semitone = multi_resolution_mel_loss(pred, a3, rate)
    assert semitone > 0.5  # the tone's band moves, at every resolution
    semitone.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        multi_resolution_mel_loss(a3, a3[..., :-1], rate)
    with pytest.raises(ValueError, match="shorter"):
        multi_resolution_mel_loss(a3[..., :256], a3[..., :256], rate)
