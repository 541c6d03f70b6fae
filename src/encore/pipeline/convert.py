"""State-dict key maps between the official ACE-Step 1.5 layout, Encore modules and diffusers 0.42.1.

This is the ONLY module that renames checkpoint keys (SPEC §2, §2.1). It also holds the silence-latent
layouts, VAE weight-norm folding (SPEC §4) and the diffusers-config <-> `AceStepConfig` mapping. Key maps are
generic over the dict values, so they work on tensors, shapes or dtypes alike. No file I/O happens here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from encore.models.config import AceStepConfig

V = TypeVar("V")

# The four diffusers components that hold the DiT checkpoint, keyed by the official top-level prefix.
DIFFUSERS_COMPONENTS: dict[str, str] = {
    "decoder": "transformer",
    "encoder": "condition_encoder",
    "tokenizer": "audio_tokenizer",
    "detokenizer": "audio_token_detokenizer",
}
_OFFICIAL_PREFIX_OF = {component: prefix for prefix, component in DIFFUSERS_COMPONENTS.items()}

NULL_CONDITION_KEY = "null_condition_emb"
"""Top-level official key; diffusers keeps it inside the condition encoder."""
DIFFUSERS_SILENCE_KEY = "silence_latent"
"""Buffer of the diffusers condition encoder holding the silence latent `[1, T, C]`."""

# Official wraps the patchify convs in `nn.Sequential(Lambda, Conv, Lambda)`, hence the `.1.`.
_OFFICIAL_SEQ_CONV = re.compile(r"^decoder\.(proj_in|proj_out)\.1\.")
_ENCORE_CONV = re.compile(r"^decoder\.(proj_in|proj_out)\.(weight|bias)$")

_ATTN_OFFICIAL_TO_DIFFUSERS = {
    "q_proj": "to_q",
    "k_proj": "to_k",
    "v_proj": "to_v",
    "o_proj": "to_out.0",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
}
_ATTN_DIFFUSERS_TO_OFFICIAL = {v: k for k, v in _ATTN_OFFICIAL_TO_DIFFUSERS.items()}
_ATTN_OFFICIAL = re.compile(r"(^|\.)(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)\.")
_ATTN_DIFFUSERS = re.compile(r"(^|\.)(self_attn|cross_attn)\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)\.")
_DIFFUSERS_CONV = {"proj_in_conv.": "proj_in.1.", "proj_out_conv.": "proj_out.1."}


# --------------------------------------------------------------------------- official <-> encore


def official_key_to_encore(key: str) -> str:
    """Maps one official `model.safetensors` key to the `AceStepModel.state_dict()` key."""
    return _OFFICIAL_SEQ_CONV.sub(r"decoder.\1.", key)


def encore_key_to_official(key: str) -> str:
    """Maps one `AceStepModel.state_dict()` key to the official `model.safetensors` key."""
    match = _ENCORE_CONV.match(key)
    return f"decoder.{match.group(1)}.1.{match.group(2)}" if match else key


def official_to_encore(sd: Mapping[str, V]) -> dict[str, V]:
    """Renames an official DiT state dict (or key->shape map) to Encore keys.

    Args:
        sd: Official keys (`decoder.proj_in.1.weight`, ...) to any values.

    Returns:
        The same values under Encore keys. Raises `ValueError` if two keys collide.
    """
    return _rename(sd, official_key_to_encore)


def encore_to_official(sd: Mapping[str, V]) -> dict[str, V]:
    """Renames an `AceStepModel.state_dict()` (or key->shape map) to official keys."""
    return _rename(sd, encore_key_to_official)


def _rename(sd: Mapping[str, V], fn: Any) -> dict[str, V]:
    out: dict[str, V] = {}
    for key, value in sd.items():
        new = fn(key)
        if new in out:
            raise ValueError(f"key {key!r} maps onto {new!r}, which is already present")
        out[new] = value
    return out


# --------------------------------------------------------------------------- official <-> diffusers


def official_key_to_diffusers(key: str) -> tuple[str, str]:
    """Maps one official key to `(diffusers component, key inside that component)`.

    Raises:
        ValueError: the key has no diffusers counterpart.
    """
    if key == NULL_CONDITION_KEY:
        return "condition_encoder", NULL_CONDITION_KEY
    prefix, _, rest = key.partition(".")
    component = DIFFUSERS_COMPONENTS.get(prefix)
    if component is None or not rest:
        raise ValueError(f"official key {key!r} has no diffusers counterpart")
    if component == "transformer":
        for diff, off in _DIFFUSERS_CONV.items():
            if rest.startswith(off):
                rest = diff + rest[len(off) :]
                break
    rest = _ATTN_OFFICIAL.sub(
        lambda m: f"{m.group(1)}{m.group(2)}.{_ATTN_OFFICIAL_TO_DIFFUSERS[m.group(3)]}.", rest
    )
    return component, rest


def diffusers_key_to_official(component: str, key: str) -> str:
    """Maps `(diffusers component, key)` to the official key. Raises `ValueError` for unknown components."""
    prefix = _OFFICIAL_PREFIX_OF.get(component)
    if prefix is None:
        raise ValueError(
            f"unknown diffusers component {component!r}; expected one of {sorted(_OFFICIAL_PREFIX_OF)}"
        )
    if component == "condition_encoder" and key == NULL_CONDITION_KEY:
        return NULL_CONDITION_KEY
    if component == "transformer":
        for diff, off in _DIFFUSERS_CONV.items():
            if key.startswith(diff):
                key = off + key[len(diff) :]
                break
    key = _ATTN_DIFFUSERS.sub(
        lambda m: f"{m.group(1)}{m.group(2)}.{_ATTN_DIFFUSERS_TO_OFFICIAL[m.group(3)]}.", key
    )
    return f"{prefix}.{key}"


def official_to_diffusers(
    sd: Mapping[str, V], *, silence_latent: torch.Tensor | None = None
) -> dict[str, dict[str, Any]]:
    """Splits an official DiT state dict into the four diffusers component state dicts.

    Args:
        sd: Official keys to values.
        silence_latent: Optional silence latent `[T, C]` (Encore layout); stored as the condition encoder's
            `silence_latent` buffer `[1, T, C]`, as the diffusers converter does.

    Returns:
        `{component: {key: value}}` for `transformer`, `condition_encoder`, `audio_tokenizer`,
        `audio_token_detokenizer`.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in DIFFUSERS_COMPONENTS.values()}
    for key, value in sd.items():
        component, new = official_key_to_diffusers(key)
        out[component][new] = value
    if silence_latent is not None:
        out["condition_encoder"][DIFFUSERS_SILENCE_KEY] = silence_to_diffusers(silence_latent)
    return out


def diffusers_to_official(component: str, sd: Mapping[str, V]) -> dict[str, V]:
    """Renames one diffusers component's state dict to official keys.

    The condition encoder's `silence_latent` buffer is not a model weight and is skipped here; read it with
    `silence_from_diffusers`.
    """
    out: dict[str, V] = {}
    for key, value in sd.items():
        if component == "condition_encoder" and key == DIFFUSERS_SILENCE_KEY:
            continue
        new = diffusers_key_to_official(component, key)
        if new in out:
            raise ValueError(f"{component}: key {key!r} maps onto {new!r}, which is already present")
        out[new] = value
    return out


# --------------------------------------------------------------------------- silence latent layouts


def silence_from_official(t: torch.Tensor, channels: int = 64) -> torch.Tensor:
    """Official `silence_latent.pt` `[1, C, T]` -> Encore `[T, C]` (float32, contiguous)."""
    if t.ndim != 3 or t.shape[0] != 1 or t.shape[1] != channels or t.shape[2] < 1:
        raise ValueError(f"silence latent must have shape [1, {channels}, T], got {list(t.shape)}")
    _require_float(t)
    return t[0].transpose(0, 1).to(torch.float32).contiguous()


def silence_to_official(t: torch.Tensor) -> torch.Tensor:
    """Encore `[T, C]` -> official `[1, C, T]`."""
    if t.ndim != 2:
        raise ValueError(f"silence latent must have shape [T, C], got {list(t.shape)}")
    return t.transpose(0, 1).unsqueeze(0).contiguous()


def silence_from_diffusers(t: torch.Tensor, channels: int = 64) -> torch.Tensor:
    """Diffusers condition-encoder buffer `[1, T, C]` -> Encore `[T, C]` (float32, contiguous)."""
    if t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != channels or t.shape[1] < 1:
        raise ValueError(f"silence latent must have shape [1, T, {channels}], got {list(t.shape)}")
    _require_float(t)
    return t[0].to(torch.float32).contiguous()


def silence_to_diffusers(t: torch.Tensor) -> torch.Tensor:
    """Encore `[T, C]` -> diffusers `[1, T, C]`."""
    if t.ndim != 2:
        raise ValueError(f"silence latent must have shape [T, C], got {list(t.shape)}")
    return t.unsqueeze(0).contiguous()


def _require_float(t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"silence latent must be floating point, got {t.dtype}")


# --------------------------------------------------------------------------- VAE weight norm

# (g name, v name) as stored by torch `weight_norm` (legacy) and by `parametrizations.weight_norm`.
_WN_PAIRS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def fold_vae_weight_norm(sd: Mapping[str, torch.Tensor], *, in_place: bool = False) -> dict[str, torch.Tensor]:
    """Folds weight-norm pairs into plain conv weights: `w = g * v / ||v||`.

    The norm runs over every dim except dim 0 (torch `weight_norm(dim=0)`, used by diffusers'
    `AutoencoderOobleck` for both Conv1d and ConvTranspose1d). Accepts the legacy `weight_g`/`weight_v`
    names and the `parametrizations.weight.original0/1` names. Folding runs in float32 and the folded
    weights stay float32; other tensors pass through unchanged.

    Args:
        sd: VAE state dict in diffusers names.
        in_place: Scale each float32 `v` in place and return it as the weight: the loader's state dict is
            its own, and this keeps one VAE copy in memory instead of two (the folded weights plus the pairs).

    Returns:
        State dict with `<conv>.weight` in place of each pair.

    Raises:
        ValueError: a `g` without its `v` (or the reverse), a non-float tensor, or `g` of the wrong shape.
    """
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for g_name, v_name in _WN_PAIRS:
        for key in sd:
            if key.endswith("." + v_name) and key[: -len(v_name)] + g_name not in sd:
                raise ValueError(
                    f"weight-norm tensor {key!r} has no partner {key[: -len(v_name)] + g_name!r}"
                )
            if not key.endswith("." + g_name):
                continue
            base = key[: -len(g_name) - 1]
            v_key = f"{base}.{v_name}"
            if v_key not in sd:
                raise ValueError(f"weight-norm tensor {key!r} has no partner {v_key!r}")
            if f"{base}.weight" in sd or f"{base}.weight" in out:
                raise ValueError(f"{base}.weight is present both plain and as a weight-norm pair")
            out[f"{base}.weight"] = _fold(key, sd[key], sd[v_key], in_place=in_place)
            consumed.update((key, v_key))
    for key, value in sd.items():
        if key not in consumed:
            out[key] = value
    return out


def _fold(name: str, g: torch.Tensor, v: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    if not (g.is_floating_point() and v.is_floating_point()):
        raise ValueError(f"{name}: weight-norm tensors must be floating point, got {g.dtype}/{v.dtype}")
    expected_g = (v.shape[0],) + (1,) * (v.ndim - 1)
    if tuple(g.shape) != expected_g:
        raise ValueError(
            f"{name}: shape {list(g.shape)} does not match v {list(v.shape)} (expected {list(expected_g)})"
        )
    v32 = v.to(torch.float32)
    norm = torch.linalg.vector_norm(v32, dim=tuple(range(1, v.ndim)), keepdim=True)
    scale = g.to(torch.float32) / norm  # v * (g / ||v||): the order torch's weight_norm computes in
    return v32.mul_(scale) if in_place else v32 * scale


def unfold_vae_weight_norm(
    sd: Mapping[str, torch.Tensor], *, conv_keys: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of `fold_vae_weight_norm`: `<conv>.weight` -> `weight_g = ||w||`, `weight_v = w`.

    Args:
        sd: VAE state dict with plain conv weights (Encore `OobleckVAE` names).
        conv_keys: Keys to split; default every key ending in `.weight` (every Oobleck conv is weight-normed
            and Snake layers hold only `alpha`/`beta`).

    Returns:
        State dict in diffusers weight-norm names (`weight_g`/`weight_v`), which fold back to `w` exactly up
        to float32 rounding.
    """
    keys = conv_keys if conv_keys is not None else {k for k in sd if k.endswith(".weight")}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in keys:
            out[key] = value
            continue
        base = key[: -len(".weight")]
        norm = torch.linalg.vector_norm(
            value.to(torch.float32), dim=tuple(range(1, value.ndim)), keepdim=True
        )
        out[f"{base}.weight_g"] = norm.to(value.dtype)
        out[f"{base}.weight_v"] = value
    return out


# --------------------------------------------------------------------------- diffusers configs


_TRANSFORMER_REQUIRED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "in_channels", "audio_acoustic_hidden_dim", "patch_size",
)  # fmt: skip
_TRANSFORMER_OPTIONAL = (
    "rope_theta",
    "attention_bias",
    "attention_dropout",
    "rms_norm_eps",
    "sliding_window",
)
_ENCODER_WIDTH = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
_ENCODER_REQUIRED = (
    "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
)  # fmt: skip


def _need(config: Mapping[str, Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{where}/config.json: missing {missing[0]!r}")
    return {k: config[k] for k in keys}


def config_from_diffusers(
    transformer: Mapping[str, Any],
    condition_encoder: Mapping[str, Any],
    audio_tokenizer: Mapping[str, Any] | None = None,
    *,
    latents_per_second: float | None = None,
) -> AceStepConfig:
    """Builds an `AceStepConfig` from the diffusers component `config.json` dicts.

    Args:
        transformer: `transformer/config.json`.
        condition_encoder: `condition_encoder/config.json` (encoder width; smaller than the DiT on XL).
        audio_tokenizer: `audio_tokenizer/config.json` (FSQ geometry), if present.
        latents_per_second: VAE latent rate; without an Encore-written `timbre_fix_frame` in the condition
            encoder config, the timbre window is `ceil(30 s * rate)` as in the diffusers pipeline.

    Raises:
        ValueError: a field is missing or inconsistent.
    """
    t, c = dict(transformer), dict(condition_encoder)
    tok = dict(audio_tokenizer or {})
    fields = _need(t, _TRANSFORMER_REQUIRED, "transformer")
    fields.update({k: t[k] for k in _TRANSFORMER_OPTIONAL if k in t})
    if t.get("layer_types"):
        fields["layer_types"] = tuple(t["layer_types"])
    enc = {f"encoder_{k}": v for k, v in _need(c, _ENCODER_WIDTH, "condition_encoder").items()}
    if t.get("encoder_hidden_size") not in (None, enc["encoder_hidden_size"]):
        raise ValueError(
            f"transformer encoder_hidden_size={t['encoder_hidden_size']} != condition_encoder hidden_size="
            f"{enc['encoder_hidden_size']}"
        )
    if any(enc[f"encoder_{k}"] != fields[k] for k in _ENCODER_WIDTH):
        fields.update(enc)  # XL: encoder keeps the 2B width
    fields.update(_need(c, _ENCODER_REQUIRED, "condition_encoder"))
    fields.update(
        {k: tok[k] for k in ("fsq_dim", "pool_window_size", "num_attention_pooler_hidden_layers") if k in tok}
    )
    if tok.get("fsq_input_levels"):
        fields["fsq_input_levels"] = tuple(tok["fsq_input_levels"])
    if "timbre_fix_frame" in c:  # written by Encore; diffusers ignores unknown config keys
        fields["timbre_fix_frame"] = c["timbre_fix_frame"]
    elif latents_per_second is not None:
        fields["timbre_fix_frame"] = math.ceil(30 * latents_per_second)
    is_turbo = bool(t.get("is_turbo", False)) or t.get("model_version") == "turbo"
    fields["is_turbo"] = is_turbo
    fields["model_version"] = t.get("model_version") or ("turbo" if is_turbo else None)
    fields["beat_hints"] = bool(t.get("beat_hints", False))  # Encore's own keys, like timbre_fix_frame
    fields["key_hints"] = bool(t.get("key_hints", False))
    fields["instrument_hints"] = bool(t.get("instrument_hints", False))
    return AceStepConfig(**fields)


def config_to_diffusers(config: AceStepConfig) -> dict[str, dict[str, Any]]:
    """Diffusers component configs (`transformer`, `condition_encoder`, `audio_tokenizer`,
    `audio_token_detokenizer`) for an `AceStepConfig`, with `_class_name` set."""
    common = {
        "rope_theta": config.rope_theta,
        "attention_bias": config.attention_bias,
        "attention_dropout": config.attention_dropout,
        "rms_norm_eps": config.rms_norm_eps,
        "sliding_window": config.sliding_window,
        "head_dim": config.head_dim,
    }
    enc = dict(
        hidden_size=config.enc_hidden_size,
        intermediate_size=config.enc_intermediate_size,
        num_attention_heads=config.enc_num_attention_heads,
        num_key_value_heads=config.enc_num_key_value_heads,
        **common,
    )
    transformer = dict(
        _class_name="AceStepTransformer1DModel",
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        in_channels=config.in_channels,
        audio_acoustic_hidden_dim=config.audio_acoustic_hidden_dim,
        patch_size=config.patch_size,
        layer_types=list(config.layer_types),
        encoder_hidden_size=config.enc_hidden_size,
        is_turbo=config.is_turbo,
        model_version=config.model_version,
        **({"beat_hints": True} if config.beat_hints else {}),
        **({"key_hints": True} if config.key_hints else {}),
        **({"instrument_hints": True} if config.instrument_hints else {}),
        **common,
    )
    condition_encoder = dict(
        _class_name="AceStepConditionEncoder",
        text_hidden_dim=config.text_hidden_dim,
        timbre_hidden_dim=config.timbre_hidden_dim,
        num_lyric_encoder_hidden_layers=config.num_lyric_encoder_hidden_layers,
        num_timbre_encoder_hidden_layers=config.num_timbre_encoder_hidden_layers,
        timbre_fix_frame=config.timbre_fix_frame,
        **enc,
    )
    audio_tokenizer = dict(
        _class_name="AceStepAudioTokenizer",
        audio_acoustic_hidden_dim=config.audio_acoustic_hidden_dim,
        pool_window_size=config.pool_window_size,
        fsq_dim=config.fsq_dim,
        fsq_input_levels=list(config.fsq_input_levels),
        fsq_input_num_quantizers=1,
        num_attention_pooler_hidden_layers=config.num_attention_pooler_hidden_layers,
        **enc,
    )
    detokenizer = dict(
        _class_name="AceStepAudioTokenDetokenizer",
        audio_acoustic_hidden_dim=config.audio_acoustic_hidden_dim,
        pool_window_size=config.pool_window_size,
        num_attention_pooler_hidden_layers=config.num_attention_pooler_hidden_layers,
        **enc,
    )
    return {
        "transformer": transformer,
        "condition_encoder": condition_encoder,
        "audio_tokenizer": audio_tokenizer,
        "audio_token_detokenizer": detokenizer,
    }
