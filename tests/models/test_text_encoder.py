"""TextEncoder over a tiny transformers Qwen3Model: caption states, padding invariance, lyric lookup."""

from __future__ import annotations

import pytest
import torch

from encore.models.text_encoder import TextEncoder

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
    )
    return TextEncoder(transformers.Qwen3Model(config).eval())


def test_encode_caption_is_last_hidden_state(encoder: TextEncoder) -> None:
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        got = encoder.encode_caption(ids)
        want = encoder.model(input_ids=ids).last_hidden_state
    assert got.shape == (2, 9, encoder.hidden_size)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_right_padding_does_not_change_valid_positions(encoder: TextEncoder) -> None:
    ids = torch.randint(0, 64, (1, 6))
    padded = torch.cat((ids, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    with torch.no_grad():
        short = encoder.encode_caption(ids)
        long = encoder.encode_caption(padded)
    torch.testing.assert_close(long[:, :6], short, rtol=1e-5, atol=1e-6)


def test_embed_lyrics_is_lookup_only(encoder: TextEncoder) -> None:
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        emb = encoder.embed_lyrics(ids)
    assert torch.equal(emb[0], encoder.model.embed_tokens.weight[ids[0]])
    with pytest.raises(ValueError, match="input_ids"):
        encoder.embed_lyrics(ids[0])
