"""Parity: `AudioTokenizer` / `AudioDetokenizer` vs diffusers 0.42.1 (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers.acestep_reference import build_reference, encore_from_reference, max_abs_diff

from encore.models.config import AceStepConfig

pytestmark = pytest.mark.parity

CONFIG = AceStepConfig.tiny()


@pytest.fixture(scope="module")
def models() -> tuple[dict, torch.nn.Module]:
    ref = build_reference(CONFIG)
    return ref, encore_from_reference(CONFIG, ref)


def test_tokenizer_matches_diffusers(models: tuple[dict, torch.nn.Module]) -> None:
    ref, ours = models
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 23, 64, generator=gen)  # 23 % 5 != 0 -> silence right-pad of 2 frames
    silence = torch.randn(40, 64, generator=gen)
    with torch.no_grad():
        exp_q, exp_idx = ref["audio_tokenizer"].tokenize(latents, silence[None])
        got_q, got_idx = ours.tokenizer.tokenize(latents, silence)
        hints_ref = ref["audio_tokenizer"].quantizer.get_output_from_indices(exp_idx)
        hints_ours = ours.tokenizer.quantizer.get_output_from_indices(got_idx)
    assert got_idx.shape == (2, 5, 1)
    assert torch.equal(got_idx, exp_idx.to(got_idx.dtype))
    assert len(torch.unique(got_idx)) > 1  # random weights must not collapse to one code
    diff, tol = max_abs_diff(got_q, exp_q)
    print(f"tokenizer quantized max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol
    diff, tol = max_abs_diff(hints_ours, hints_ref)
    print(f"get_output_from_indices max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol


def test_detokenizer_matches_diffusers(models: tuple[dict, torch.nn.Module]) -> None:
    ref, ours = models
    gen = torch.Generator().manual_seed(4)
    quantized = torch.randn(2, 6, CONFIG.enc_hidden_size, generator=gen)
    with torch.no_grad():
        expected = ref["audio_token_detokenizer"](quantized)
        got = ours.detokenizer(quantized)
    assert got.shape == (2, 30, 64)
    diff, tol = max_abs_diff(got, expected)
    print(f"detokenizer max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol


def test_codes_to_hints_matches_diffusers(models: tuple[dict, torch.nn.Module]) -> None:
    ref, ours = models
    codes = torch.tensor([[0, 63999, 12345], [777, 5, 40000]])
    with torch.no_grad():
        embedded = ref["audio_tokenizer"].quantizer.get_output_from_indices(codes)
        expected = ref["audio_token_detokenizer"](embedded)
        got = ours.codes_to_hints(codes)
    diff, tol = max_abs_diff(got, expected)
    print(f"codes->hints max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol
