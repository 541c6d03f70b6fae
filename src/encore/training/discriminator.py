"""Small discriminators: a multi-scale complex-STFT discriminator for VAE training (EnCodec-style heads) and a
timestep-conditioned latent discriminator for turbo distillation.

Both return `(logits per head, features per head)` so the same hinge and feature-matching losses apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from encore.nn.embeddings import timestep_sinusoid


class STFTDiscriminatorHead(nn.Module):
    """One resolution: complex STFT (real/imag of every channel) -> 2-D conv stack -> logit map.

    Args:
        n_fft: Window size (hop n_fft/4).
        audio_channels: Waveform channels C (stereo 2).
        channels: Conv width.
        num_layers: Strided (frequency-halving) conv layers after the first.
    """

    def __init__(self, n_fft: int, audio_channels: int, channels: int, num_layers: int = 3) -> None:
        super().__init__()
        self.n_fft = n_fft
        # The first conv already halves the frequency axis: the full-resolution 2-D maps dominate the cost.
        convs = [nn.Conv2d(2 * audio_channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))]
        for i in range(num_layers):
            convs.append(
                nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(2**i, 1), padding=(2**i, 4))
            )
        convs.append(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(convs)
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        """`wav` `[B, C, S]` -> (logits `[B, 1, frames, F']`, feature maps)."""
        batch, chans, samples = wav.shape
        window = torch.hann_window(self.n_fft, device=wav.device, dtype=torch.float32)
        spec = torch.stft(
            wav.reshape(batch * chans, samples).float(),
            n_fft=self.n_fft,
            hop_length=self.n_fft // 4,
            window=window,
            center=True,
            return_complex=True,
        )
        # [B*C, F, frames] -> [B, 2C, frames, F]
        x = torch.view_as_real(spec).reshape(batch, chans, spec.shape[1], spec.shape[2], 2)
        x = x.permute(0, 1, 4, 3, 2).reshape(batch, 2 * chans, spec.shape[2], spec.shape[1]).to(wav.dtype)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.out(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """Several `STFTDiscriminatorHead`s at different window sizes (shorter inputs skip larger windows)."""

    def __init__(
        self, fft_sizes: Sequence[int] = (2048, 1024, 512), audio_channels: int = 2, channels: int = 16
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(STFTDiscriminatorHead(n, audio_channels, channels) for n in fft_sizes)

    def forward(self, wav: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        """`wav` `[B, C, S]` -> (logits per head, features per head)."""
        logits, features = [], []
        for head in self.heads:
            if head.n_fft > wav.shape[-1]:
                continue
            out, feats = head(wav)
            logits.append(out)
            features.append(feats)
        if not logits:
            raise ValueError(f"input of {wav.shape[-1]} samples is shorter than every discriminator window")
        return logits, features


class LatentDiscriminator(nn.Module):
    """Judges noisy latents `x_t [B, T, C]` at timestep t: 1-D convs with FiLM-style timestep conditioning,
    producing one logit per downsampled frame (a patch GAN in latent space, as the turbo recipe needs).

    Args:
        latent_channels: C.
        width: Conv width.
        num_layers: Stride-2 conv layers.
    """

    TIME_FEATURES = 64

    def __init__(self, latent_channels: int, width: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv1d(latent_channels, width, 3, padding=1)
        self.time = nn.Linear(self.TIME_FEATURES, 2 * width * num_layers)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, 4, stride=2, padding=1) for _ in range(num_layers))
        self.out = nn.Conv1d(width, 1, 3, padding=1)
        self.num_layers = num_layers

    def forward(self, x_t: Tensor, t: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        """`x_t` `[B, T, C]`, `t` `[B]` in [0, 1] -> ([logits `[B, 1, T']`], [features])."""
        h = self.inp(x_t.transpose(1, 2))
        film = self.time(timestep_sinusoid(t * 1000.0, self.TIME_FEATURES).to(h.dtype))
        film = film.view(x_t.shape[0], self.num_layers, 2, -1)
        features = []
        for i, conv in enumerate(self.convs):
            h = conv(F.leaky_relu(h, 0.2))
            h = h * (1 + film[:, i, 0, :, None]) + film[:, i, 1, :, None]
            features.append(h)
        return [self.out(F.leaky_relu(h, 0.2))], [features]
