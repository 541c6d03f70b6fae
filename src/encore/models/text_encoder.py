"""TextEncoder: a thin wrapper over the transformers `Qwen3Model` (Qwen3-Embedding-0.6B), SPEC §5.

Captions go through the whole model (causal, no attention mask: right padding never reaches valid positions);
lyrics only through the token-embedding table. The wrapped model is built and loaded by `pipeline/loading.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import Qwen3Model


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
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state

    def embed_lyrics(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Lyric token ids `[B, Ll]` -> token embeddings `[B, Ll, hidden]` (lookup only, not contextual)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        return self.model.get_input_embeddings()(input_ids)
