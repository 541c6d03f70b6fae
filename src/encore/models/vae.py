"""OobleckVAE: the 1D Snake-conv waveform autoencoder of ACE-Step 1.5 (diffusers `AutoencoderOobleck`, SPEC §4).

`encode(wav [B, C, S]) -> DiagonalGaussian` over latents `[B, D, S // hop]`; `decode(latents [B, D, T]) -> wav
[B, C, T * hop]`. Parameter names equal diffusers 0.42.1's, but every conv holds a plain `weight`: the
checkpoint's weight-norm pairs are folded at load time by `encore.pipeline.convert.fold_vae_weight_norm`.
Long inputs are tiled by `encore.audio.tiling`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Generic diffusers `config.json` fields that carry no geometry; accepted on load and dropped.
IGNORED_CONFIG_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"})

Rounding = Literal["floor", "round", "ceil"]


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Geometry of the Oobleck VAE; field names equal the official `vae/config.json` keys (SPEC §1.3)."""

    # --- audio side ---
    audio_channels: int = 2
    """Waveform channels (2 = stereo)."""
    sampling_rate: int = 48000
    """Waveform sample rate in Hz."""

    # --- encoder ---
    encoder_hidden_size: int = 128
    """Encoder base width; also its output width = 2 x latent channels (mean and scale)."""
    downsampling_ratios: tuple[int, ...] = (2, 4, 4, 6, 10)
    """Encoder strides, one per block (the decoder uses them reversed). All must be even."""
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Width multiple of each block's output (encoder) / input (decoder, reversed)."""

    # --- decoder ---
    decoder_channels: int = 128
    """Decoder base width (its last block's width)."""
    decoder_input_channels: int = 64
    """Latent channels D."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "downsampling_ratios", tuple(int(r) for r in self.downsampling_ratios))
        object.__setattr__(self, "channel_multiples", tuple(int(m) for m in self.channel_multiples))
        for name in ("audio_channels", "sampling_rate", "encoder_hidden_size", "decoder_channels",
                     "decoder_input_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.downsampling_ratios:
            raise ValueError("downsampling_ratios must not be empty")
        if len(self.channel_multiples) != len(self.downsampling_ratios):
            raise ValueError(
                f"channel_multiples has {len(self.channel_multiples)} entries but downsampling_ratios has "
                f"{len(self.downsampling_ratios)}"
            )
        # Odd strides make the encoder/decoder lengths drift from S // hop and T * hop (k = 2s, pad = ceil(s/2)).
        if any(r < 2 or r % 2 for r in self.downsampling_ratios):
            raise ValueError(f"downsampling_ratios must all be even and >= 2, got {list(self.downsampling_ratios)}")
        if any(m <= 0 for m in self.channel_multiples):
            raise ValueError(f"channel_multiples must all be positive, got {list(self.channel_multiples)}")
        if self.encoder_hidden_size != 2 * self.decoder_input_channels:
            raise ValueError(
                f"encoder_hidden_size={self.encoder_hidden_size} must be 2 * decoder_input_channels="
                f"{2 * self.decoder_input_channels} (the encoder emits mean and scale)"
            )

    # --- derived geometry ---
    @property
    def latent_channels(self) -> int:
        """Latent channels D (= `decoder_input_channels`)."""
        return self.decoder_input_channels

    @property
    def hop_samples(self) -> int:
        """Waveform samples per latent frame: the product of the strides."""
        return math.prod(self.downsampling_ratios)

    @property
    def latent_rate_hz(self) -> float:
        """Latent frames per second."""
        return self.sampling_rate / self.hop_samples

    def seconds_to_samples(self, seconds: float) -> int:
        """Nearest whole number of waveform samples in `seconds`."""
        return round(seconds * self.sampling_rate)

    def samples_to_frames(self, num_samples: int) -> int:
        """Latent frames the encoder emits for `num_samples` samples (`num_samples // hop`)."""
        return num_samples // self.hop_samples

    def frames_to_samples(self, num_frames: int) -> int:
        """Waveform samples the decoder emits for `num_frames` latent frames."""
        return num_frames * self.hop_samples

    def frames_to_seconds(self, num_frames: int) -> float:
        """Duration of `num_frames` latent frames in seconds."""
        return num_frames * self.hop_samples / self.sampling_rate

    def seconds_to_frames(self, seconds: float, rounding: Rounding = "floor") -> int:
        """Latent frames covering `seconds`: samples are rounded to an integer first, then divided by the hop.

        Args:
            seconds: Non-negative duration.
            rounding: `"floor"` (what the encoder emits; official), `"ceil"` (diffusers' target length)
                or `"round"` (half to even).
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite non-negative number, got {seconds}")
        num_samples = self.seconds_to_samples(seconds)
        if rounding == "floor":
            return num_samples // self.hop_samples
        if rounding == "ceil":
            return -(-num_samples // self.hop_samples)
        if rounding == "round":
            return round(num_samples / self.hop_samples)
        raise ValueError(f"rounding must be 'floor', 'round' or 'ceil', got {rounding!r}")

    # --- presets ---
    @classmethod
    def tiny(cls, **overrides: Any) -> VAEConfig:
        """Test geometry: 3 blocks, hop 320 at 8 kHz, so the latent rate (25 Hz) and latent width (64) match the
        real model while 1 s of audio costs a few MFLOP. Encoder width stays 128 = 2 x 64 latent channels."""
        base: dict[str, Any] = {
            "audio_channels": 2, "sampling_rate": 8000, "encoder_hidden_size": 128,
            "downsampling_ratios": (4, 8, 10), "channel_multiples": (1, 1, 2), "decoder_channels": 8,
            "decoder_input_channels": 64,
        }
        base.update(overrides)
        return cls(**base)

    # --- serialisation (1:1 with `vae/config.json`) ---
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "vae config") -> VAEConfig:
        """Builds a config from `config.json` contents; generic diffusers keys are ignored, unknown keys raise."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known and key not in IGNORED_CONFIG_KEYS:
                raise ValueError(f"{source}: unknown config key {key!r}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> VAEConfig:
        """Reads `vae/config.json`. Raises `ValueError` for unreadable JSON or bad fields."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: config must be a JSON object")  # noqa: TRY004 (bad file content)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The official `config.json` contents (with `_class_name` so diffusers can read it too)."""
        out: dict[str, Any] = {"_class_name": "AutoencoderOobleck"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- posterior


class DiagonalGaussian:
    """Posterior over latents, built from the encoder's moments `[B, 2D, T]` (first half mean, second scale).

    Attributes:
        mean: `[B, D, T]`.
        std: `[B, D, T]`, `softplus(scale) + 1e-4` (strictly positive).
    """

    def __init__(self, moments: Tensor) -> None:
        if moments.ndim != 3 or moments.shape[1] % 2:
            raise ValueError(f"moments must have shape [B, 2*D, T], got {list(moments.shape)}")
        self.mean, scale = moments.chunk(2, dim=1)
        self.std = F.softplus(scale) + 1e-4

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """`mean + std * eps`, eps ~ N(0, 1) from `generator` (the global RNG when None, as the official code).

        A generator on another device (e.g. CPU with CUDA moments) draws there and the noise is moved.
        """
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        """The mean `[B, D, T]`."""
        return self.mean


# --------------------------------------------------------------------------- layers


# Elements per Snake chunk at inference (2 MiB of fp32): the temporary stays in cache, and a Snake inside a
# `run_local` chunk is one chunk. Smaller chunks cost more in per-op overhead than they save: in the pipeline
# the embedded 10 s decode took 0.34 s at 1 << 19 against 0.40 s at 1 << 16 (medians of 10, same process).
SNAKE_CHUNK_ELEMENTS = 1 << 19


class Snake1d(nn.Module):
    """Snake activation with log-scale parameters: `x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor, *, inplace: bool = False) -> Tensor:
        """x: `[B, C, L]` or the row layout `[B, C, 1, L]` -> same shape.

        `inplace=True` lets inference overwrite `x` (callers pass it only for tensors nothing else reads); with
        autograd on, the result is always a new tensor.
        """
        # Same operation order as the reference so fp32 results agree to rounding.
        inv_beta = (torch.exp(self.beta) + 1e-9).reciprocal()
        scale = torch.exp(self.alpha)
        if x.ndim == 4:
            inv_beta, scale = inv_beta.unsqueeze(-1), scale.unsqueeze(-1)
        if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return x + inv_beta * torch.sin(scale * x).pow(2)
        return _snake_inference(x, scale, inv_beta, x if inplace else torch.empty_like(x))


def _snake_inference(x: Tensor, scale: Tensor, inv_beta: Tensor, out: Tensor) -> Tensor:
    """`out = x + inv_beta * sin(scale * x)^2`, bit-identical to the autograd line, computed chunk by chunk
    along time on the CPU.

    A whole-tensor temporary at the 48 kHz stage is 30 MB per Snake; glibc maps each such block fresh, and the
    page faults of writing it cost as much as the arithmetic (the decoder ran 0.53 s per 10 s of audio against
    0.30 s with malloc told to keep its memory). Small chunks reuse one cached temporary instead.
    """
    length = x.shape[-1]
    per_step = max(1, x.numel() // max(1, length))
    step = max(1, SNAKE_CHUNK_ELEMENTS // per_step) if x.device.type == "cpu" else length
    for start in range(0, length, step):
        xs = x[..., start : start + step]
        t = xs * scale
        t.sin_()
        t.mul_(t)
        t.mul_(inv_beta)
        torch.add(xs, t, out=out[..., start : start + step])
    return out


def to_rows(x: Tensor) -> Tensor:
    """`[B, C, L]` -> the row layout `[B, C, 1, L]` in channels-last memory (each time step's channels adjacent).

    oneDNN runs these narrow, very long convolutions 4-6x faster as 2-D channels-last convolutions than as
    `conv1d` (measured on the dev box: 16 channels x 480k samples, k7, 9-11 ms against 52-65 ms), and the
    embedded VAE's 48 kHz stage is nothing but such convolutions and element-wise Snakes.
    """
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def from_rows(x: Tensor) -> Tensor:
    """The row layout `[B, C, 1, L]` -> contiguous `[B, C, L]`."""
    return x.squeeze(2).contiguous()


def conv(layer: nn.Conv1d | nn.ConvTranspose1d, x: Tensor) -> Tensor:
    """`layer(x)` for `[B, C, L]` input, the same convolution as a 2-D one for row-layout input."""
    if x.ndim == 3:
        return layer(x)
    weight = layer.weight.unsqueeze(2)
    stride, padding, dilation = (1, layer.stride[0]), (0, layer.padding[0]), (1, layer.dilation[0])
    if isinstance(layer, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, weight, layer.bias, stride, padding, (0, layer.output_padding[0]),
                                  layer.groups, dilation)  # fmt: skip
    return F.conv2d(x, weight, layer.bias, stride, padding, dilation, layer.groups)


def use_rows(x: Tensor, enabled: bool) -> bool:
    """Whether a coder runs `x` in the row layout: on the CPU, where oneDNN prefers it."""
    return enabled and x.device.type == "cpu"


# Elements per time chunk of the inference-time residual stacks (`run_local`): 2 MiB of fp32 per activation
# (on the dev box 1 << 18 to 1 << 20 were equally fast, 1 << 16 slower than no chunking).
LOCAL_CHUNK_ELEMENTS = 1 << 19


def run_local(fn: Callable[[Tensor], Tensor], x: Tensor, halo: int) -> Tensor:
    """`fn(x)` for a length-preserving `fn` whose output at time t reads only `x[t - halo : t + halo + 1]`
    (zero-padded at the ends), computed chunk by chunk along time at CPU inference.

    Each chunk is run with `halo` real neighbours on both sides, which absorb the zero padding `fn` applies at
    the chunk's edges, and only its centre is kept; at the sequence's ends the padding is the true one. So the
    result equals `fn(x)` while every activation of `fn` is chunk-sized: at the 48 kHz stage of the embedded
    decoder (16 channels x 480k samples per 10 s) the whole-length activations cost more in page faults and cache
    misses than in arithmetic, and for the official decoder (128 channels) each would take 737 MB per 30 s.
    `fn` must not write into its input (the halos are read twice). With autograd on, `fn(x)` runs whole.
    """
    length = x.shape[-1]
    step = max(4 * halo, LOCAL_CHUNK_ELEMENTS // max(1, x.numel() // max(1, length)))
    if torch.is_grad_enabled() or x.device.type != "cpu" or length <= step + 2 * halo:
        return fn(x)
    out: Tensor | None = None
    for start in range(0, length, step):
        stop = min(start + step, length)
        lo, hi = max(0, start - halo), min(length, stop + halo)
        y = fn(x[..., lo:hi])
        if out is None:
            layout = torch.channels_last if y.ndim == 4 else torch.contiguous_format
            out = torch.empty((*y.shape[:-1], length), dtype=y.dtype, device=y.device, memory_format=layout)
        out[..., start:stop] = y[..., start - lo : stop - lo]
    assert out is not None
    return out


class OobleckResidualUnit(nn.Module):
    """Snake -> dilated conv (k7) -> Snake -> conv (k1), plus the input. Length-preserving."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: `[B, C, L]` (or row layout) -> same shape."""
        h = conv(self.conv2, self.snake2(conv(self.conv1, self.snake1(x)), inplace=True))
        # In inference the branch output is ours to overwrite: one 48 kHz-sized allocation fewer per unit.
        return x + h if torch.is_grad_enabled() else h.add_(x)


def _stride_padding(stride: int) -> int:
    return math.ceil(stride / 2)


class OobleckEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at `in_channels`, Snake, then a strided conv (k = 2s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.res_unit1 = OobleckResidualUnit(in_channels, dilation=1)
        self.res_unit2 = OobleckResidualUnit(in_channels, dilation=3)
        self.res_unit3 = OobleckResidualUnit(in_channels, dilation=9)
        self.snake1 = Snake1d(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                               padding=_stride_padding(stride))

    def forward(self, x: Tensor) -> Tensor:
        """x: `[B, C_in, L]` -> `[B, C_out, L // stride]` (or the row-layout equivalents)."""
        x = run_local(self.residuals, x, self.residual_halo)
        return conv(self.conv1, self.snake1(x, inplace=True))

    def residuals(self, x: Tensor) -> Tensor:
        """The three residual units (length-preserving; reads `residual_halo` samples either side)."""
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))

    @property
    def residual_halo(self) -> int:
        return sum(unit.conv1.padding[0] for unit in (self.res_unit1, self.res_unit2, self.res_unit3))


class OobleckDecoderBlock(nn.Module):
    """Snake, a transposed conv (k = 2s, stride s), then three residual units (dilations 1, 3, 9)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(in_channels)
        self.conv_t1 = nn.ConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                                          padding=_stride_padding(stride))
        self.res_unit1 = OobleckResidualUnit(out_channels, dilation=1)
        self.res_unit2 = OobleckResidualUnit(out_channels, dilation=3)
        self.res_unit3 = OobleckResidualUnit(out_channels, dilation=9)

    def forward(self, x: Tensor) -> Tensor:
        """x: `[B, C_in, L]` -> `[B, C_out, L * stride]` (or the row-layout equivalents)."""
        x = conv(self.conv_t1, self.snake1(x))
        return run_local(self.residuals, x, self.residual_halo)

    def residuals(self, x: Tensor) -> Tensor:
        """The three residual units (length-preserving; reads `residual_halo` samples either side)."""
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))

    @property
    def residual_halo(self) -> int:
        return sum(unit.conv1.padding[0] for unit in (self.res_unit1, self.res_unit2, self.res_unit3))


class OobleckEncoder(nn.Module):
    """Waveform `[B, C, S]` -> moments `[B, encoder_hidden_size, S // hop]`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        width = config.encoder_hidden_size
        multiples = (1, *config.channel_multiples)
        self.conv1 = nn.Conv1d(config.audio_channels, width, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            OobleckEncoderBlock(width * multiples[i], width * multiples[i + 1], stride)
            for i, stride in enumerate(config.downsampling_ratios)
        )
        self.snake1 = Snake1d(width * multiples[-1])
        self.conv2 = nn.Conv1d(width * multiples[-1], width, kernel_size=3, padding=1)

    row_layout = True
    """Run in the row layout on the CPU (`to_rows`); False keeps every convolution 1-D."""

    def forward(self, wav: Tensor) -> Tensor:
        rows = use_rows(wav, self.row_layout)
        x = conv(self.conv1, to_rows(wav) if rows else wav)
        for block in self.block:
            x = block(x)
        x = conv(self.conv2, self.snake1(x, inplace=True))
        return from_rows(x) if rows else x


class OobleckDecoder(nn.Module):
    """Latents `[B, D, T]` -> waveform `[B, C, T * hop]` (no output squashing)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        width = config.decoder_channels
        multiples = (1, *config.channel_multiples)
        strides = config.downsampling_ratios[::-1]
        n = len(strides)
        self.conv1 = nn.Conv1d(config.decoder_input_channels, width * multiples[-1], kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            OobleckDecoderBlock(width * multiples[n - i], width * multiples[n - i - 1], stride)
            for i, stride in enumerate(strides)
        )
        self.snake1 = Snake1d(width)
        self.conv2 = nn.Conv1d(width, config.audio_channels, kernel_size=7, padding=3, bias=False)

    row_layout = True
    """Run in the row layout on the CPU (`to_rows`); False keeps every convolution 1-D."""

    def forward(self, latents: Tensor) -> Tensor:
        rows = use_rows(latents, self.row_layout)
        x = conv(self.conv1, to_rows(latents) if rows else latents)
        for block in self.block:
            x = block(x)
        x = run_local(self.head, x, self.conv2.padding[0])
        return from_rows(x) if rows else x

    def head(self, x: Tensor) -> Tensor:
        """Snake, then the output conv (reads `conv2.padding` samples either side; leaves `x` as it is)."""
        return conv(self.conv2, self.snake1(x))


@torch.no_grad()
def balance_upsampling_(decoder: OobleckDecoder) -> float:
    """Project every transposed conv of `decoder` onto kernels whose polyphase components sum alike; returns the
    largest correction made (0 when already balanced).

    A stride-s transposed conv writes output sample n from the kernel taps congruent to n mod s, so when those
    s tap groups do not sum alike, even a constant input comes out periodic with period s: stacked up to the
    hop, a decoder emits a buzz on the harmonics of the 25 Hz frame rate whatever the latents (the "checkerboard
    artefact"). Equal tap-group sums are exactly the kernels of nearest-neighbour upsampling followed by an
    ordinary conv (the resize-convolution fix), so a decoder kept on that subspace maps constant input to
    constant output at every stage. The kernels here are 2s long, so each output phase r sums taps r and r + s;
    the orthogonal projection moves both by half the phase's excess over the mean. The checkpoint layout is
    unchanged (a training recipe re-applies this after every step).
    """
    worst = 0.0
    for block in decoder.block:
        weight = block.conv_t1.weight  # [C_in, C_out, 2s]
        stride = block.conv_t1.stride[0]
        if weight.shape[-1] != 2 * stride:
            raise ValueError(f"expected kernel 2 x stride, got {weight.shape[-1]} for stride {stride}")
        sums = weight[..., :stride] + weight[..., stride:]
        excess = (sums - sums.mean(dim=-1, keepdim=True)) / 2
        weight[..., :stride] -= excess
        weight[..., stride:] -= excess
        worst = max(worst, float(excess.abs().max()))
    return worst


# --------------------------------------------------------------------------- model


class OobleckVAE(nn.Module):
    """The ACE-Step 1.5 VAE: `encoder` and `decoder` with diffusers' `AutoencoderOobleck` parameter names.

    No latent scaling or shift is applied (SPEC §4): the DiT works on raw posterior samples. The model runs in
    its parameter dtype; inputs are cast to it at the `encode`/`decode` boundary.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = OobleckEncoder(config)
        self.decoder = OobleckDecoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv2.weight.dtype

    def encode_moments(self, wav: Tensor) -> Tensor:
        """Raw encoder output (what `encore.audio.tiling` tiles).

        Args:
            wav: `[B, audio_channels, S]`, S >= hop_samples.

        Returns:
            `[B, 2 * D, S // hop_samples]`: mean then pre-softplus scale, in the model dtype.
        """
        cfg = self.config
        if wav.ndim != 3 or wav.shape[1] != cfg.audio_channels:
            raise ValueError(f"wav must have shape [B, {cfg.audio_channels}, S], got {list(wav.shape)}")
        if wav.shape[-1] < cfg.hop_samples:
            raise ValueError(f"wav has {wav.shape[-1]} samples; the encoder needs at least {cfg.hop_samples}")
        return self.encoder(wav.to(self.dtype))

    def encode(self, wav: Tensor) -> DiagonalGaussian:
        """Waveform `[B, audio_channels, S]` -> posterior over latents `[B, D, S // hop_samples]`."""
        return DiagonalGaussian(self.encode_moments(wav))

    def decode(self, latents: Tensor) -> Tensor:
        """Latents `[B, D, T]` (T >= 1) -> waveform `[B, audio_channels, T * hop_samples]` in the model dtype."""
        cfg = self.config
        if latents.ndim != 3 or latents.shape[1] != cfg.decoder_input_channels or latents.shape[-1] < 1:
            raise ValueError(
                f"latents must have shape [B, {cfg.decoder_input_channels}, T>=1], got {list(latents.shape)}"
            )
        return self.decoder(latents.to(self.dtype))

    def forward(self, wav: Tensor, *, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> Tensor:
        """Reconstruction `[B, C, (S // hop) * hop]` through the posterior mean (or a sample)."""
        posterior = self.encode(wav)
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(latents)
