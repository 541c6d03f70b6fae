"""AceStepConfig: the one `config.json` of an official DiT checkpoint folder (SPEC §1.1–1.2).

The official checkpoint stores a single config for the DiT decoder, the condition encoder, the audio
tokenizer/detokenizer and the null condition, so all of those models read their geometry from this
dataclass. XL checkpoints add `encoder_*` fields: the encoder side keeps the 2B width while the decoder
is wider.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LayerType = Literal["sliding_attention", "full_attention"]

# Generic Hugging Face config fields that carry no geometry; accepted and ignored on load.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
        "transformers_version", "tie_word_embeddings", "use_cache", "bos_token_id", "eos_token_id",
        "pad_token_id", "initializer_range", "max_window_layers", "rope_scaling", "vocab_size",
        "max_position_embeddings", "data_proportion", "timestep_mu", "timestep_sigma",
        "use_sliding_window", "lyric_alignment_layers_config", "num_audio_decoder_hidden_layers",
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "is_encoder_decoder",
        "chunk_size_feed_forward", "problem_type", "id2label", "label2id", "_attn_implementation_autoset",
        "fsq_input_num_quantizers", "audio_acoustic_hidden_dim_out", "is_lego_sft", "rope_parameters",
    }
)


def _default_layer_types(num_layers: int) -> tuple[LayerType, ...]:
    # Layer i is sliding iff (i + 1) is odd, i.e. even layers are sliding (SPEC §1.1).
    return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers))


_ENCORE_FLAGS = ("beat_hints", "key_hints", "instrument_hints")
"""Encore's own boolean keys, written only when set so official-shaped configs stay official."""


@dataclass(frozen=True, kw_only=True)
class AceStepConfig:
    """Geometry of an ACE-Step 1.5 DiT checkpoint (decoder + condition encoder + tokenizers)."""

    # --- decoder (DiT) ---
    hidden_size: int = 2048
    """DiT width (XL: 2560)."""
    intermediate_size: int = 6144
    """SwiGLU width of the DiT MLP."""
    num_hidden_layers: int = 24
    """Number of DiT layers."""
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int = 128
    """Bidirectional band half-width: sliding layers keep |i - j| <= sliding_window."""
    layer_types: tuple[LayerType, ...] = ()
    """Per DiT layer; empty means the default alternation (even layers sliding)."""
    hidden_act: str = "silu"
    in_channels: int = 192
    """Patchify input channels: src latents + chunk mask + noisy latents."""
    audio_acoustic_hidden_dim: int = 64
    """VAE latent channels."""
    patch_size: int = 2

    # --- condition encoder / tokenizer (XL: kept at 2B width via encoder_* fields) ---
    encoder_hidden_size: int | None = None
    encoder_intermediate_size: int | None = None
    encoder_num_attention_heads: int | None = None
    encoder_num_key_value_heads: int | None = None
    text_hidden_dim: int = 1024
    """Width of the Qwen3-Embedding hidden states (caption branch) and token embeddings (lyrics)."""
    timbre_hidden_dim: int = 64
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    num_attention_pooler_hidden_layers: int = 2
    pool_window_size: int = 5
    """25 Hz latent frames per 5 Hz code."""
    fsq_dim: int = 2048
    fsq_input_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    timbre_fix_frame: int = 750
    """Reference-audio latent frames fed to the timbre encoder (30 s)."""

    # --- variant ---
    is_turbo: bool = True
    model_version: str | None = "turbo"
    beat_hints: bool = False
    """Encore extension, not an official key (written only when set): the DiT was trained to read rule-written
    beat hints in its context (`encore.tasks.beat_hints`), and text2music with a bpm gives it them."""
    key_hints: bool = False
    """Encore extension, like `beat_hints`: its hints also carry the requested key (`key_offset`)."""
    instrument_hints: bool = False
    """Encore extension, like `key_hints`: its hints also carry the track classes the caption names
    (`instrument_offset`)."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Ignored keys read from config.json, kept so to_json round-trips them."""

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", _default_layer_types(self.num_hidden_layers))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "fsq_input_levels", tuple(int(v) for v in self.fsq_input_levels))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}"
            )
        for lt in self.layer_types:
            if lt not in ("sliding_attention", "full_attention"):
                raise ValueError(f"layer_types: unknown layer type {lt!r}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "patch_size", "pool_window_size", "fsq_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        enc_h, enc_kv = self.enc_num_attention_heads, self.enc_num_key_value_heads
        if enc_h % enc_kv:
            raise ValueError(f"encoder heads {enc_h} not a multiple of encoder kv heads {enc_kv}")
        if self.in_channels != 3 * self.audio_acoustic_hidden_dim:
            raise ValueError(
                f"in_channels={self.in_channels} must be 3 * audio_acoustic_hidden_dim="
                f"{3 * self.audio_acoustic_hidden_dim} (src latents, chunk mask, noisy latents)"
            )
        for flag, multiple in (("beat_hints", 2), ("key_hints", 8), ("instrument_hints", 16)):
            if getattr(self, flag) and self.audio_acoustic_hidden_dim % multiple:  # the hints' channel patterns
                raise ValueError(f"{flag} needs a multiple of {multiple} latent channels, "
                                 f"audio_acoustic_hidden_dim is {self.audio_acoustic_hidden_dim}")  # fmt: skip
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} unsupported (only 'silu')")
        if any(v < 2 for v in self.fsq_input_levels):
            raise ValueError(f"fsq_input_levels must all be >= 2, got {self.fsq_input_levels}")

    # Encoder-side geometry: equal to the decoder's on 2B models, smaller on XL.
    @property
    def enc_hidden_size(self) -> int:
        return self.encoder_hidden_size or self.hidden_size

    @property
    def enc_intermediate_size(self) -> int:
        return self.encoder_intermediate_size or self.intermediate_size

    @property
    def enc_num_attention_heads(self) -> int:
        return self.encoder_num_attention_heads or self.num_attention_heads

    @property
    def enc_num_key_value_heads(self) -> int:
        return self.encoder_num_key_value_heads or self.num_key_value_heads

    @property
    def codebook_size(self) -> int:
        n = 1
        for v in self.fsq_input_levels:
            n *= v
        return n

    @property
    def encoder_layer_types(self) -> tuple[LayerType, ...]:
        """Layer types for encoder stacks of a given depth follow the same alternation."""
        return _default_layer_types(max(self.num_lyric_encoder_hidden_layers, self.num_timbre_encoder_hidden_layers,
                                         self.num_attention_pooler_hidden_layers))

    # --- presets ---
    @classmethod
    def tiny(cls, **overrides: Any) -> AceStepConfig:
        """A few-thousand-parameter geometry for tests (widths as the diffusers ACE-Step tests use)."""
        base: dict[str, Any] = {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 16, "text_hidden_dim": 24,
            "timbre_hidden_dim": 64, "num_lyric_encoder_hidden_layers": 2, "num_timbre_encoder_hidden_layers": 2,
            "num_attention_pooler_hidden_layers": 2, "fsq_dim": 32, "timbre_fix_frame": 30,
        }
        base.update(overrides)
        return cls(**base)

    @classmethod
    def xl(cls, **overrides: Any) -> AceStepConfig:
        """XL (≈4B DiT) geometry: wider decoder, 2B-width encoder (SPEC §1.2)."""
        base: dict[str, Any] = {
            "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "encoder_hidden_size": 2048, "encoder_intermediate_size": 6144,
            "encoder_num_attention_heads": 16, "encoder_num_key_value_heads": 8,
        }
        base.update(overrides)
        return cls(**base)

    # --- serialisation (1:1 with the official config.json keys) ---
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> AceStepConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            if key in known:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            elif key in IGNORED_CONFIG_KEYS:
                extra[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"{source}: unknown config keys {sorted(unknown)}")
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> AceStepConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: config must be a JSON object")  # noqa: TRY004 - callers catch ValueError
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if (f.name.startswith("encoder_") and value is None) or (f.name in _ENCORE_FLAGS and not value):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.setdefault("model_type", "acestep")
        out.setdefault("architectures", ["AceStepConditionGenerationModel"])
        out["use_sliding_window"] = True
        return out

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
