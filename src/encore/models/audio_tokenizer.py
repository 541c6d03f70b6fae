"""Audio tokenizer (25 Hz latents -> 5 Hz FSQ codes) and detokenizer (5 Hz -> 25 Hz "LM hints"), SPEC §7.

`AudioTokenizer`: `audio_acoustic_proj` -> `attention_pooler` (special token + window of `pool_window_size`
frames, take position 0) -> `quantizer` (ResidualFSQ). `AudioDetokenizer`: `embed_tokens` -> repeat each code
`pool_window_size` times + position-specific `special_tokens` -> encoder layers -> norm -> `proj_out`.
Both use the encoder width of `AceStepConfig`.
"""

from __future__ import annotations

import torch
from torch import nn

from encore.models.condition_encoder import make_encoder_layers, run_encoder_layers
from encore.models.config import AceStepConfig
from encore.models.fsq import ResidualFSQ
from encore.nn.norm import RMSNorm


class AttentionPooler(nn.Module):
    """Pools each window of frames `[B, T5, P, H]` to one vector `[B, T5, H]` via a learned first token."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.enc_hidden_size
        self.embed_tokens = nn.Linear(hidden, hidden)
        self.special_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layers = make_encoder_layers(config, config.num_attention_pooler_hidden_layers)
        self.norm = RMSNorm(hidden, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T5, P, H]` -> `[B, T5, H]` (norm output at the special-token position)."""
        batch, num_windows, window, _ = x.shape
        h = self.embed_tokens(x)
        special = self.special_token.expand(batch, num_windows, 1, -1)
        h = torch.cat((special, h), dim=2).reshape(batch * num_windows, window + 1, -1)
        h = self.norm(run_encoder_layers(self.layers, h, self.config))
        return h[:, 0, :].reshape(batch, num_windows, -1)


class AudioTokenizer(nn.Module):
    """VAE latents at 25 Hz -> quantised 5 Hz embeddings and FSQ code indices."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        if config.fsq_dim != config.enc_hidden_size:
            raise ValueError(
                f"fsq_dim={config.fsq_dim} must equal the encoder width {config.enc_hidden_size}"
            )
        self.pool_window_size = config.pool_window_size
        self.audio_acoustic_proj = nn.Linear(config.audio_acoustic_hidden_dim, config.enc_hidden_size)
        self.attention_pooler = AttentionPooler(config)
        self.quantizer = ResidualFSQ(config.fsq_dim, config.fsq_input_levels)

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantises latent windows.

        Args:
            windows: `[B, T5, pool_window_size, C]` latent frames grouped per code.

        Returns:
            `quantized [B, T5, enc_H]` and `indices [B, T5, 1]` int64.
        """
        return self.quantizer(self.attention_pooler(self.audio_acoustic_proj(windows)))

    def tokenize(
        self, latents: torch.Tensor, silence_latent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenises latents of any length, right-padding with silence to a multiple of the window.

        Args:
            latents: `[B, T, C]` VAE latents.
            silence_latent: `[Ts, C]` (or `[1, Ts, C]`) silence latent; its first `pad` frames fill the tail
                when `T % pool_window_size != 0` (official behaviour; zeros would be out of distribution).

        Returns:
            `quantized [B, ceil(T/P), enc_H]` and `indices [B, ceil(T/P), 1]`.
        """
        if latents.ndim != 3:
            raise ValueError(f"latents must be [B, T, C], got {tuple(latents.shape)}")
        batch, length, channels = latents.shape
        pad = (-length) % self.pool_window_size
        if pad:
            silence = silence_latent[0] if silence_latent.ndim == 3 else silence_latent
            if silence.ndim != 2 or silence.shape[-1] != channels or silence.shape[0] < pad:
                raise ValueError(
                    f"silence_latent must be [Ts>={pad}, {channels}], got {tuple(silence_latent.shape)}"
                )
            fill = silence[:pad].to(dtype=latents.dtype, device=latents.device)
            latents = torch.cat((latents, fill[None].expand(batch, -1, -1)), dim=1)
        windows = latents.reshape(batch, -1, self.pool_window_size, channels)
        return self(windows)


class AudioDetokenizer(nn.Module):
    """5 Hz code embeddings `[B, T5, enc_H]` -> 25 Hz latent-space hints `[B, T5 * P, C]`."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.enc_hidden_size
        self.pool_window_size = config.pool_window_size
        self.embed_tokens = nn.Linear(hidden, hidden)
        self.special_tokens = nn.Parameter(torch.randn(1, config.pool_window_size, hidden) * 0.02)
        self.layers = make_encoder_layers(config, config.num_attention_pooler_hidden_layers)
        self.norm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.proj_out = nn.Linear(hidden, config.audio_acoustic_hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T5, enc_H]` (quantizer output) -> `[B, T5 * pool_window_size, C]`."""
        batch, num_codes, hidden = x.shape
        h = self.embed_tokens(x)[:, :, None, :].expand(-1, -1, self.pool_window_size, -1)
        h = (h + self.special_tokens[None]).reshape(batch * num_codes, self.pool_window_size, hidden)
        h = self.norm(run_encoder_layers(self.layers, h, self.config))
        return self.proj_out(h).reshape(batch, num_codes * self.pool_window_size, -1)
