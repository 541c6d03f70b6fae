"""ConditionEncoder: text projector, lyric encoder, timbre encoder and sequence packing (SPEC §6).

Also holds the pre-LN `EncoderLayer` stack shared with the audio tokenizer/detokenizer (SPEC §3). Output is
the packed `encoder_hidden_states [B, Ll + max_refs + Lt, enc_H]` (valid tokens first, order lyric -> timbre
-> text) and its prefix mask. Geometry is the encoder side of `AceStepConfig` (`enc_*`, 2B width on XL).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from encore.models.config import AceStepConfig
from encore.nn.attention import Attention
from encore.nn.masks import attention_bias
from encore.nn.mlp import SwiGLU
from encore.nn.norm import RMSNorm
from encore.nn.rope import rope_tables


class EncoderLayer(nn.Module):
    """Pre-LN block: `h += attn(input_layernorm(h))`; `h += mlp(post_attention_layernorm(h))`."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        hidden = config.enc_hidden_size
        self.self_attn = Attention(
            hidden, config.enc_num_attention_heads, config.enc_num_key_value_heads, config.head_dim,
            eps=config.rms_norm_eps, bias=config.attention_bias,
        )
        self.input_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(hidden, config.enc_intermediate_size)

    def forward(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """`h` `[B, L, H]` -> `[B, L, H]`; `rope` tables `[L, D]`; `mask` additive `[B|1,1,L,L]` or None."""
        h = h + self.self_attn(self.input_layernorm(h), rope=rope, mask=mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def make_encoder_layers(config: AceStepConfig, num_layers: int) -> nn.ModuleList:
    """`num_layers` encoder-width `EncoderLayer`s."""
    return nn.ModuleList(EncoderLayer(config) for _ in range(num_layers))


def run_encoder_layers(
    layers: Sequence[nn.Module],
    h: torch.Tensor,
    config: AceStepConfig,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Runs an encoder stack with fresh RoPE positions `0..L-1` and per-layer masks.

    Even layers (per `config.encoder_layer_types`) use the sliding band `|i - j| <= sliding_window`, odd
    layers full attention; both also mask padded keys when `padding` is given.

    Args:
        layers: `EncoderLayer`s.
        h: `[B, L, H]` embedded inputs.
        config: Supplies head_dim, rope_theta, sliding_window and the layer types.
        padding: Optional `[B, L]` 1/0 mask of valid positions.

    Returns:
        `[B, L, H]` (before the stack's final norm).
    """
    seq_len = h.shape[1]
    rope = rope_tables(seq_len, config.head_dim, config.rope_theta, device=h.device, dtype=h.dtype)
    sliding = attention_bias(seq_len, window=config.sliding_window, padding=padding, dtype=h.dtype,
                             device=h.device)
    full = attention_bias(seq_len, window=None, padding=padding, dtype=h.dtype, device=h.device)
    for i, layer in enumerate(layers):
        is_sliding = config.encoder_layer_types[i] == "sliding_attention"
        h = layer(h, rope, sliding if is_sliding else full)
    return h


class LyricEncoder(nn.Module):
    """Lyric token embeddings `[B, Ll, text_hidden_dim]` -> contextual lyric states `[B, Ll, enc_H]`."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Linear(config.text_hidden_dim, config.enc_hidden_size)
        self.layers = make_encoder_layers(config, config.num_lyric_encoder_hidden_layers)
        self.norm = RMSNorm(config.enc_hidden_size, eps=config.rms_norm_eps)

    def forward(self, lyric_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`lyric_embeds` `[B, Ll, text_hidden_dim]`, `attention_mask` `[B, Ll]` 1/0 -> `[B, Ll, enc_H]`."""
        h = self.embed_tokens(lyric_embeds)
        return self.norm(run_encoder_layers(self.layers, h, self.config, padding=attention_mask))


class TimbreEncoder(nn.Module):
    """Reference-audio latents `[N, Tr, timbre_hidden_dim]` -> one timbre vector per reference `[N, enc_H]`.

    `special_token` exists in the checkpoint but is not prepended (the official line is commented out); the
    output of frame 0 is taken instead.
    """

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Linear(config.timbre_hidden_dim, config.enc_hidden_size)
        self.special_token = nn.Parameter(torch.randn(1, 1, config.enc_hidden_size))
        self.layers = make_encoder_layers(config, config.num_timbre_encoder_hidden_layers)
        self.norm = RMSNorm(config.enc_hidden_size, eps=config.rms_norm_eps)

    def forward(self, refer_latents: torch.Tensor) -> torch.Tensor:
        """`refer_latents` `[N, Tr, timbre_hidden_dim]` -> `[N, enc_H]` (frame 0 of the final norm)."""
        h = run_encoder_layers(self.layers, self.embed_tokens(refer_latents), self.config)
        return self.norm(h)[:, 0, :]


def unpack_references(
    timbre: torch.Tensor, order_mask: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups packed per-reference vectors by batch item, keeping their packed order.

    Args:
        timbre: `[N, H]` one vector per packed reference.
        order_mask: `[N]` int batch index of each reference.
        batch_size: B.

    Returns:
        `([B, max_count, H], mask [B, max_count] long)`; empty slots are zero with mask 0.
    """
    if order_mask.ndim != 1 or order_mask.shape[0] != timbre.shape[0]:
        raise ValueError(
            f"refer_audio_order_mask must be [N={timbre.shape[0]}], got {tuple(order_mask.shape)}"
        )
    order = order_mask.to(torch.long)
    if order.numel() and (int(order.min()) < 0 or int(order.max()) >= batch_size):
        raise ValueError(f"refer_audio_order_mask values must lie in [0, {batch_size}), got {order.tolist()}")
    counts = torch.bincount(order, minlength=batch_size)
    max_count = max(int(counts.max()), 1) if order.numel() else 1
    # Slot of each reference within its item = number of earlier references with the same item index.
    same = order[:, None] == order[None, :]
    slot = torch.tril(same, diagonal=-1).sum(dim=1)
    out = timbre.new_zeros(batch_size, max_count, timbre.shape[-1])
    out[order, slot] = timbre
    mask = torch.zeros(batch_size, max_count, dtype=torch.long, device=timbre.device)
    mask[order, slot] = 1
    return out, mask


def pack_sequences(
    h1: torch.Tensor, h2: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenates two masked sequences and moves valid positions first (stable, per row).

    Args:
        h1: `[B, L1, H]`, h2: `[B, L2, H]`; m1 `[B, L1]`, m2 `[B, L2]` 1/0 masks.

    Returns:
        `([B, L1+L2, H], mask [B, L1+L2] bool)` where the mask is the prefix `arange(L) < valid count`.
    """
    h = torch.cat((h1, h2), dim=1)
    m = torch.cat((m1.to(torch.long), m2.to(torch.long)), dim=1)
    order = m.argsort(dim=1, descending=True, stable=True)
    h = torch.gather(h, 1, order[..., None].expand_as(h))
    lengths = m.sum(dim=1)
    new_mask = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
    return h, new_mask


class ConditionEncoder(nn.Module):
    """Text + lyric + timbre conditions -> packed cross-attention sequence for the DiT (SPEC §6)."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        self.text_projector = nn.Linear(config.text_hidden_dim, config.enc_hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(config)
        self.timbre_encoder = TimbreEncoder(config)

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
        *,
        timbre_vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes and packs the conditions.

        Args:
            text_hidden_states: `[B, Lt, text_hidden_dim]` caption states (Qwen3 last hidden state).
            text_attention_mask: `[B, Lt]` 1/0.
            lyric_hidden_states: `[B, Ll, text_hidden_dim]` lyric token embeddings (lookup only).
            lyric_attention_mask: `[B, Ll]` 1/0.
            refer_audio_acoustic_hidden_states_packed: `[N, Tr, timbre_hidden_dim]` reference latents
                (silence latent for items without a reference).
            refer_audio_order_mask: `[N]` batch index of each reference.
            timbre_vectors: `[N, enc_H]` = `timbre_encoder(refer_audio_acoustic_hidden_states_packed)` computed
                beforehand (the pipeline caches the silence default's); the encoder is then not run.

        Returns:
            `encoder_hidden_states [B, Ll + max_refs + Lt, enc_H]` and its bool mask (the DiT ignores it).
        """
        batch = text_hidden_states.shape[0]
        if lyric_hidden_states.shape[0] != batch:
            raise ValueError(f"lyric batch {lyric_hidden_states.shape[0]} != text batch {batch}")
        text = self.text_projector(text_hidden_states)
        lyric = self.lyric_encoder(lyric_hidden_states, lyric_attention_mask)
        timbre = (self.timbre_encoder(refer_audio_acoustic_hidden_states_packed) if timbre_vectors is None
                  else timbre_vectors)  # fmt: skip
        timbre, timbre_mask = unpack_references(timbre, refer_audio_order_mask, batch)
        h, mask = pack_sequences(lyric, timbre, lyric_attention_mask, timbre_mask)
        return pack_sequences(h, text, mask, text_attention_mask)
