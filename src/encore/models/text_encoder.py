"""Caption/lyric embedders (SPEC §5): `TextEncoder` wraps Qwen3-Embedding, `SentenceTextEncoder` a BERT (MiniLM).

Captions go through the whole model; lyrics only through the token-embedding table. Both expose the same
interface (`hidden_size`, `encode_caption`, `embed_lyrics`), so the pipeline never asks which one it holds. The
wrapped transformers models are built and loaded by `pipeline/loading.py` (and by the training recipes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import BertModel, Qwen3Model


def _check_ids(input_ids: torch.Tensor) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")


class TextEncoder(nn.Module):
    """Caption and lyric embedder around an unchanged transformers `Qwen3Model`.

    Args:
        model: A transformers `Qwen3Model` (no LM head), in the dtype the caller wants the states in.
    """

    def __init__(self, model: Qwen3Model) -> None:
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def encode_caption(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Caption token ids `[B, Lt]` -> `last_hidden_state` `[B, Lt, hidden]` (after the final RMSNorm).

        No attention mask is passed, as in the official handler: attention is causal, so right-padded
        positions do not change the valid ones.
        """
        _check_ids(input_ids)
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state

    def embed_lyrics(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Lyric token ids `[B, Ll]` -> token embeddings `[B, Ll, hidden]` (lookup only, not contextual)."""
        _check_ids(input_ids)
        return self.model.get_input_embeddings()(input_ids)


class SentenceTextEncoder(nn.Module):
    """A BERT-family sentence encoder (MiniLM, the embedded model's) with the `TextEncoder` interface.

    Unlike Qwen3 it is bidirectional, so batched captions need their attention mask (right padding would
    otherwise change valid positions); a single unpadded caption needs none, as in the pipeline and in the
    training recipes, which both encode one text per call.

    Args:
        model: A transformers `BertModel` (pooler unused).
    """

    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def encode_caption(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Caption ids `[B, Lt]` (+ optional `[B, Lt]` mask) -> `last_hidden_state` `[B, Lt, hidden]`.

        Token-type ids are left to BERT's default (all zero), as the tokenizer's segment ids are for one
        sentence anyway.
        """
        _check_ids(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def embed_lyrics(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Lyric ids `[B, Ll]` -> word embeddings `[B, Ll, hidden]` (lookup only, like the official branch)."""
        _check_ids(input_ids)
        return self.model.get_input_embeddings()(input_ids)


AnyTextEncoder: TypeAlias = TextEncoder | SentenceTextEncoder
"""Either caption encoder; the pipeline uses only the shared interface."""
