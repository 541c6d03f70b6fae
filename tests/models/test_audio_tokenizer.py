"""AudioTokenizer / AudioDetokenizer shapes, silence padding, code round trip through the model."""

from __future__ import annotations

import pytest
import torch

from encore.models.acestep import AceStepModel
from encore.models.config import AceStepConfig

CONFIG = AceStepConfig.tiny()


def test_tokenize_pads_with_leading_silence_frames() -> None:
    model = AceStepModel(CONFIG).eval()
    latents = torch.randn(2, 12, 64)
    silence = torch.randn(30, 64)
    with torch.no_grad():
        q, idx = model.tokenizer.tokenize(latents, silence)
        padded = torch.cat((latents, silence[:3].expand(2, -1, -1)), dim=1)
        q2, idx2 = model.tokenizer(padded.reshape(2, 3, 5, 64))
        q3, idx3 = model.tokenizer.tokenize(latents, silence[None])  # [1, Ts, C] layout accepted too
    assert q.shape == (2, 3, CONFIG.enc_hidden_size) and idx.shape == (2, 3, 1)
    assert torch.equal(q, q2) and torch.equal(idx, idx2)
    assert torch.equal(q, q3) and torch.equal(idx, idx3)
    with pytest.raises(ValueError, match="silence_latent"):
        model.tokenizer.tokenize(latents, torch.randn(30, 32))


def test_detokenize_codes_shape() -> None:
    model = AceStepModel(CONFIG).eval()
    codes = torch.randint(0, CONFIG.codebook_size, (2, 4))
    with torch.no_grad():
        hints = model.codes_to_hints(codes)
        direct = model.detokenizer(model.tokenizer.quantizer.get_output_from_indices(codes[..., None]))
    assert hints.shape == (2, 20, 64)
    assert torch.equal(hints, direct)


def test_tokenizer_indices_reproduce_quantized() -> None:
    model = AceStepModel(CONFIG).eval()
    with torch.no_grad():
        q, idx = model.tokenizer.tokenize(torch.randn(1, 25, 64), torch.zeros(10, 64))
        again = model.tokenizer.quantizer.get_output_from_indices(idx)
    assert torch.equal(q, again)
