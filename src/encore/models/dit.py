"""AceStepDiT: the ACE-Step 1.5 diffusion transformer (official `AceStepDiTModel`, SPEC §8).

Input `x_t [B, T, 64]`, timesteps `t, r [B]`, packed condition `[B, S, enc_H]` and context latents
`[B, T, 128]`; output the velocity `[B, T, 64]`. Patchify with a stride-2 Conv1d, dual timestep AdaLN,
alternating sliding/full self-attention, plain-residual cross-attention, ConvTranspose1d un-patchify.
Cross-attention keys/values can be computed once per condition (`CrossKVCache`) and reused across steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from encore.models.config import AceStepConfig
from encore.nn.attention import Attention
from encore.nn.embeddings import timestep_sinusoid
from encore.nn.masks import attention_bias
from encore.nn.mlp import SwiGLU
from encore.nn.norm import RMSNorm
from encore.nn.rope import rope_tables

TIMESTEP_FEATURES = 256
"""Width of the sinusoidal timestep features fed to `linear_1`."""
TIMESTEP_SCALE = 1000.0
"""Timesteps in [0, 1] are scaled by this (in the timestep's own dtype) before the sinusoid."""
NUM_ADALN_LAYER = 6
"""Per-layer modulation vectors: shift/scale/gate for self-attention and for the MLP."""


@dataclass(frozen=True)
class CrossKVCache:
    """Cross-attention keys/values of every DiT layer for one condition batch.

    Build with `AceStepDiT.precompute_cross_kv` and pass to every denoising step that uses the same
    condition; build a new one when the condition changes (e.g. the cover-strength switch). Using it is
    numerically identical to recomputing from `encoder_hidden_states`.
    """

    keys: tuple[torch.Tensor, ...]
    """Per layer `[B, Hkv, S, D]` (k-normed)."""
    values: tuple[torch.Tensor, ...]
    """Per layer `[B, Hkv, S, D]`."""

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


def _per_item(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Scalar, `[1]` or `[B]` timesteps -> `[B]`."""
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"{name} must be a scalar, [1] or [{batch}], got {tuple(t.shape)}")
    return t.reshape(-1).expand(batch)


class TimestepEmbedding(nn.Module):
    """Scalar timestep -> `temb [B, H]` and AdaLN projection `[B, 6, H]` (official `TimestepEmbedding`)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_FEATURES, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.time_proj = nn.Linear(hidden_size, hidden_size * NUM_ADALN_LAYER)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`t` `[B]` in [0, 1] -> `(temb [B, H], proj [B, 6, H])`.

        `t * 1000` is computed in t's dtype (bf16 rounding in the official bf16 run); the features are cast
        to the weights' dtype.
        """
        emb = timestep_sinusoid(t * TIMESTEP_SCALE, TIMESTEP_FEATURES).to(self.linear_1.weight.dtype)
        temb = self.linear_2(F.silu(self.linear_1(emb)))
        proj = self.time_proj(F.silu(temb)).unflatten(1, (NUM_ADALN_LAYER, -1))
        return temb, proj


class DiTLayer(nn.Module):
    """AdaLN self-attention -> plain-residual cross-attention -> AdaLN SwiGLU (official `AceStepDiTLayer`)."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.self_attn_norm = RMSNorm(hidden, eps=eps)
        self.self_attn = Attention(hidden, heads, kv_heads, head_dim, eps=eps, bias=config.attention_bias)
        self.cross_attn_norm = RMSNorm(hidden, eps=eps)
        self.cross_attn = Attention(hidden, heads, kv_heads, head_dim, eps=eps, bias=config.attention_bias,
                                    is_cross=True)
        self.mlp_norm = RMSNorm(hidden, eps=eps)
        self.mlp = SwiGLU(hidden, config.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.randn(1, NUM_ADALN_LAYER, hidden) / hidden**0.5)

    def forward(
        self,
        h: torch.Tensor,
        temb_proj: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """`h` `[B, L, H]`, `temb_proj` `[B, 6, H]`, `cross_kv` two `[B, Hkv, S, D]` -> `[B, L, H]`."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb_proj).chunk(6, dim=1)
        x = (self.self_attn_norm(h) * (1 + scale) + shift).type_as(h)
        h = (h + self.self_attn(x, rope=rope, mask=mask) * gate).type_as(h)
        # Cross-attention is a plain residual: no modulation, no gate.
        h = h + self.cross_attn(self.cross_attn_norm(h).type_as(h), kv=cross_kv)
        x = (self.mlp_norm(h) * (1 + c_scale) + c_shift).type_as(h)
        return (h + self.mlp(x) * c_gate).type_as(h)


class AceStepDiT(nn.Module):
    """The ACE-Step 1.5 DiT decoder (SPEC §8). Attribute names equal the official `decoder.*` keys except the
    patchify convs, which are plain `proj_in` / `proj_out` here (official: `proj_in.1` / `proj_out.1`)."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        hidden, patch = config.hidden_size, config.patch_size
        self.proj_in = nn.Conv1d(config.in_channels, hidden, kernel_size=patch, stride=patch)
        self.time_embed = TimestepEmbedding(hidden)
        self.time_embed_r = TimestepEmbedding(hidden)
        self.condition_embedder = nn.Linear(config.enc_hidden_size, hidden)
        self.layers = nn.ModuleList(DiTLayer(config) for _ in range(config.num_hidden_layers))
        self.norm_out = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.proj_out = nn.ConvTranspose1d(hidden, config.audio_acoustic_hidden_dim, kernel_size=patch,
                                           stride=patch)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, hidden) / hidden**0.5)

    def precompute_cross_kv(self, encoder_hidden_states: torch.Tensor) -> CrossKVCache:
        """Runs `condition_embedder` and every layer's cross-attention K/V projection once.

        Args:
            encoder_hidden_states: `[B, S, enc_H]` packed condition (or the expanded null condition).
        """
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.config.enc_hidden_size:
            raise ValueError(f"encoder_hidden_states must be [B, S, {self.config.enc_hidden_size}], got "
                             f"{tuple(encoder_hidden_states.shape)}")
        c = self.condition_embedder(encoder_hidden_states)
        pairs = [layer.cross_attn.project_kv(c) for layer in self.layers]
        return CrossKVCache(keys=tuple(k for k, _ in pairs), values=tuple(v for _, v in pairs))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        context_latents: torch.Tensor,
        *,
        cross_kv: CrossKVCache | None = None,
    ) -> torch.Tensor:
        """Predicts the flow velocity `v ≈ noise - x0`.

        Args:
            hidden_states: `[B, T, C]` noisy latents `x_t` (C = 64).
            timestep: `[B]` (or scalar) t in [0, 1]; pass it in the model dtype to reproduce bf16 rounding.
            timestep_r: `[B]` (or scalar) r; `time_embed_r` receives `t - r` (r = t at inference).
            encoder_hidden_states: `[B, S, enc_H]` packed condition; must be None when `cross_kv` is given.
            context_latents: `[B, T, 2C]` = cat(src latents, chunk mask).
            cross_kv: Precomputed cross-attention K/V (see `precompute_cross_kv`).

        Returns:
            `[B, T, C]` velocity in the activation dtype.
        """
        batch, length = self._check_inputs(hidden_states, context_latents, encoder_hidden_states, cross_kv)
        if cross_kv is None:
            assert encoder_hidden_states is not None  # checked above
            cross_kv = self.precompute_cross_kv(encoder_hidden_states)
        t, r = _per_item(timestep, batch, "timestep"), _per_item(timestep_r, batch, "timestep_r")
        temb_t, proj_t = self.time_embed(t)
        temb_r, proj_r = self.time_embed_r(t - r)
        temb, temb_proj = temb_t + temb_r, proj_t + proj_r

        cfg = self.config
        h = torch.cat((context_latents, hidden_states), dim=-1)  # channel order [src, chunk mask, x_t]
        pad = (-length) % cfg.patch_size
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
        h = self.proj_in(h.transpose(1, 2)).transpose(1, 2)

        seq_len = h.shape[1]
        rope = rope_tables(seq_len, cfg.head_dim, cfg.rope_theta, device=h.device, dtype=h.dtype)
        # The official forward drops all padding masks: only the sliding band remains (SPEC §8.5).
        band = attention_bias(seq_len, window=cfg.sliding_window, padding=None, dtype=h.dtype,
                              device=h.device)
        for i, layer in enumerate(self.layers):
            mask = band if cfg.layer_types[i] == "sliding_attention" else None
            h = layer(h, temb_proj, rope, mask, (cross_kv.keys[i], cross_kv.values[i]))

        shift, scale = (self.scale_shift_table + temb[:, None]).chunk(2, dim=1)
        h = (self.norm_out(h) * (1 + scale) + shift).type_as(h)
        out = self.proj_out(h.transpose(1, 2)).transpose(1, 2)
        return out[:, :length]

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        context_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        cross_kv: CrossKVCache | None,
    ) -> tuple[int, int]:
        channels = self.config.audio_acoustic_hidden_dim
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != channels:
            raise ValueError(f"hidden_states must be [B, T, {channels}], got {tuple(hidden_states.shape)}")
        batch, length = hidden_states.shape[:2]
        want = (batch, length, self.config.in_channels - channels)
        if tuple(context_latents.shape) != want:
            raise ValueError(f"context_latents must be {list(want)}, got {list(context_latents.shape)}")
        if (encoder_hidden_states is None) == (cross_kv is None):
            raise ValueError("pass exactly one of encoder_hidden_states and cross_kv")
        if cross_kv is not None:
            if len(cross_kv.keys) != len(self.layers):
                raise ValueError(f"cross_kv has {len(cross_kv.keys)} layers, the DiT has {len(self.layers)}")
            cond_batch = cross_kv.batch_size
        else:
            assert encoder_hidden_states is not None
            cond_batch = encoder_hidden_states.shape[0]
        if cond_batch != batch:
            raise ValueError(f"condition batch {cond_batch} != latent batch {batch}")
        return batch, length
