"""ConditionEncoder pieces: reference unpacking, stable valid-first packing, output layout."""

from __future__ import annotations

import pytest
import torch

from encore.models.condition_encoder import ConditionEncoder, pack_sequences, unpack_references
from encore.models.config import AceStepConfig


def test_unpack_references_keeps_packed_order() -> None:
    timbre = torch.arange(5, dtype=torch.float32)[:, None].expand(5, 3)
    out, mask = unpack_references(timbre, torch.tensor([1, 0, 1, 2, 1]), batch_size=4)
    assert out.shape == (4, 3, 3)
    assert out[:, :, 0].tolist() == [[1, 0, 0], [0, 2, 4], [3, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="order_mask"):
        unpack_references(timbre, torch.tensor([0, 0, 0, 0, 4]), batch_size=4)


def test_pack_sequences_is_stable_valid_first() -> None:
    h1 = torch.tensor([[[1.0], [2.0], [3.0]]])
    h2 = torch.tensor([[[4.0], [5.0]]])
    h, m = pack_sequences(h1, h2, torch.tensor([[1, 0, 1]]), torch.tensor([[0, 1]]))
    assert h[0, :, 0].tolist() == [1.0, 3.0, 5.0, 2.0, 4.0]
    assert m.tolist() == [[True, True, True, False, False]]


def test_single_item_layout_is_lyric_timbre_text() -> None:
    config = AceStepConfig.tiny()
    enc = ConditionEncoder(config).eval()
    text = torch.randn(1, 4, config.text_hidden_dim)
    lyric = torch.randn(1, 6, config.text_hidden_dim)
    refs = torch.randn(1, 10, config.timbre_hidden_dim)
    with torch.no_grad():
        h, m = enc(text, torch.ones(1, 4), lyric, torch.ones(1, 6), refs, torch.tensor([0]))
        lyric_out = enc.lyric_encoder(lyric, torch.ones(1, 6))
        timbre_out = enc.timbre_encoder(refs)
        text_out = enc.text_projector(text)
    assert h.shape == (1, 11, config.enc_hidden_size) and bool(m.all())
    assert torch.equal(h[:, :6], lyric_out)
    assert torch.equal(h[:, 6], timbre_out)
    assert torch.equal(h[:, 7:], text_out)


def test_timbre_takes_frame_zero_without_special_token() -> None:
    config = AceStepConfig.tiny()
    enc = ConditionEncoder(config).eval()
    refs = torch.randn(2, 12, config.timbre_hidden_dim)
    with torch.no_grad():
        before = enc.timbre_encoder(refs)
        enc.timbre_encoder.special_token.add_(100.0)  # unused parameter must not matter
        after = enc.timbre_encoder(refs)
    assert before.shape == (2, config.enc_hidden_size)
    assert torch.equal(before, after)
