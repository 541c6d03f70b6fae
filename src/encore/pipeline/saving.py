"""Write checkpoints in the official layout (SPEC §1) or the diffusers 0.42.1 layout (SPEC §2.1).

Used by `save_components` (export / `encore convert`) and by `random_checkpoint`. All tensors are written
as safetensors through atomic renames; the official `silence_latent.pt` is additionally written with
`torch.save` of a plain tensor so the official loader can read the folder too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from encore.models.config import AceStepConfig
from encore.pipeline import convert
from encore.pipeline.checkpoint import SILENCE_KEY, write_safetensors
from encore.pipeline.presets import EMBEDDED_MARKER, EMBEDDED_TEXT_ENCODER_DIR, TEXT_ENCODER_DIR, VAE_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen3Config

    from encore.pipeline.loading import Components

DIFFUSERS_VERSION = "0.42.1"


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Writes a JSON object atomically (sorted keys, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in sd.items()}


def write_official_dit(
    folder: str | Path,
    config: AceStepConfig,
    official_sd: Mapping[str, torch.Tensor],
    silence: torch.Tensor,
    *,
    write_pt: bool = True,
) -> Path:
    """Writes `config.json`, `model.safetensors` (official keys) and the silence latent files.

    Args:
        folder: The DiT folder (e.g. `<root>/acestep-v15-turbo`).
        config: Written with `AceStepConfig.to_json`.
        official_sd: Official keys (see `convert.encore_to_official`).
        silence: `[T, C]` silence latent; stored as `[1, C, T]` float32 in `silence_latent.safetensors`
            and (if `write_pt`) `silence_latent.pt`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / "config.json")
    write_safetensors(folder / "model.safetensors", official_sd, {"format": "pt"})
    official_silence = convert.silence_to_official(silence.to(torch.float32).cpu())
    write_safetensors(
        folder / "silence_latent.safetensors", {SILENCE_KEY: official_silence}, {"format": "pt"}
    )
    if write_pt:
        tmp = folder / ".silence_latent.pt.tmp"
        torch.save(official_silence.clone(), tmp)
        os.replace(tmp, folder / "silence_latent.pt")
    return folder


def write_vae(folder: str | Path, vae_config: Any, vae_sd: Mapping[str, torch.Tensor]) -> Path:
    """Writes `config.json` and `diffusion_pytorch_model.safetensors` with diffusers weight-norm pairs.

    Args:
        vae_config: `encore.models.vae.VAEConfig` (written with its `to_json`).
        vae_sd: `OobleckVAE.state_dict()` (plain conv weights; split into `weight_g`/`weight_v` here).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae_config.to_json(folder / "config.json")
    write_safetensors(
        folder / "diffusion_pytorch_model.safetensors",
        convert.unfold_vae_weight_norm(vae_sd),
        {"format": "pt"},
    )
    return folder


def write_text_encoder(
    folder: str | Path,
    text_config: Qwen3Config,
    sd: Mapping[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase | None,
) -> Path:
    """Writes a Qwen3-Embedding-style folder: `config.json`, `model.safetensors`, tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", text_config.to_dict())
    write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def write_diffusers_dit(
    root: str | Path, config: AceStepConfig, official_sd: Mapping[str, torch.Tensor], silence: torch.Tensor
) -> Path:
    """Writes the four diffusers DiT components and the scheduler config under `root`."""
    root = Path(root)
    parts = convert.official_to_diffusers(official_sd, silence_latent=silence.to(torch.float32).cpu())
    configs = convert.config_to_diffusers(config)
    for component, sd in parts.items():
        cfg = dict(configs[component], _diffusers_version=DIFFUSERS_VERSION)
        write_json(root / component / "config.json", cfg)
        write_safetensors(root / component / "diffusion_pytorch_model.safetensors", sd, {"format": "pt"})
    # ACE-Step feeds timesteps in [0, 1] and computes its own schedule (diffusers pipeline docstring).
    write_json(
        root / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": 1,
            "shift": 1.0,
        },
    )
    return root


def write_model_index(root: str | Path, tokenizer_class: str) -> None:
    """`model_index.json` naming the diffusers `AceStepPipeline` components."""
    write_json(
        Path(root) / "model_index.json",
        {
            "_class_name": "AceStepPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "audio_token_detokenizer": ["diffusers", "AceStepAudioTokenDetokenizer"],
            "audio_tokenizer": ["diffusers", "AceStepAudioTokenizer"],
            "condition_encoder": ["diffusers", "AceStepConditionEncoder"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen3Model"],
            "tokenizer": ["transformers", tokenizer_class],
            "transformer": ["diffusers", "AceStepTransformer1DModel"],
            "vae": ["diffusers", "AutoencoderOobleck"],
        },
    )


def save_components(
    components: Components,
    dest: str | Path,
    *,
    layout: Literal["official", "diffusers"] = "official",
    dtype: torch.dtype | None = None,
    dit_dir: str | None = None,
) -> Path:
    """Exports loaded components to a checkpoint folder.

    Args:
        components: From `load_components`.
        dest: Official: the root (the DiT goes to `dest/<dit_dir>`). Diffusers: the pipeline folder.
        layout: `"official"` or `"diffusers"`.
        dtype: Cast floating-point weights (default: keep the loaded dtypes).
        dit_dir: Official DiT folder name (default: the loaded one's name, else `acestep-v15-<variant>`).

    Returns:
        The folder to pass to `load_components` (the DiT folder for the official layout).
    """
    dest = Path(dest)
    official = _cast(convert.encore_to_official(components.model.state_dict()), dtype)
    vae_sd = _cast(components.vae.state_dict(), dtype)
    text_sd = _cast(components.text_encoder.model.state_dict(), dtype)
    silence = components.silence_latent
    if layout == "diffusers":
        write_diffusers_dit(dest, components.config, official, silence)
        write_vae(dest / "vae", components.vae_config, vae_sd)
        write_text_encoder(dest / "text_encoder", components.text_encoder_config, text_sd, None)
        components.text_tokenizer.save_pretrained(str(dest / "tokenizer"))
        write_model_index(dest, type(components.text_tokenizer).__name__)
        if components.paths.embedded:
            write_json(dest / EMBEDDED_MARKER, _embedded_marker(components, "text_encoder"))
        return dest
    name = dit_dir or (
        components.paths.dit.name
        if components.paths.layout == "official"
        else f"acestep-v15-{components.variant.name}"
    )
    dit = write_official_dit(dest / name, components.config, official, silence)
    write_vae(dest / VAE_DIR, components.vae_config, vae_sd)
    text_dir = TEXT_ENCODER_DIR
    if components.paths.embedded:
        # Our own small model keeps its identity (and its MiniLM folder name): written under the Qwen3 folder
        # name without the marker, it would load as the official release.
        text_dir = EMBEDDED_TEXT_ENCODER_DIR
        write_json(dest / EMBEDDED_MARKER, _embedded_marker(components, text_dir))
    write_text_encoder(dest / text_dir, components.text_encoder_config, text_sd, components.text_tokenizer)
    return dit


def _embedded_marker(components: Components, text_dir: str) -> dict[str, Any]:
    """The source's `embedded.json` with the text-encoder folder this export writes."""
    source = components.paths.root / EMBEDDED_MARKER
    meta = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
    # The export writes its one DiT in full, so nothing is shared any more; the turbo keeps its solver
    # (format version 3 when it names one, else 1).
    meta.pop("shared_weights", None)
    meta.update(format="encore-embedded", version=3 if "turbo_solver" in meta else 1, text_encoder=text_dir)
    return meta


def convert_checkpoint(
    src: str | Path,
    dest: str | Path,
    *,
    layout: Literal["official", "diffusers"] = "diffusers",
    dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> Path:
    """Converts a checkpoint between the official and diffusers layouts (`encore convert`).

    Args:
        src: Anything `load_components` accepts.
        dest: Output folder (official: the root; diffusers: the pipeline folder).
        layout: Target layout.
        dtype: Weight dtype to write; default = the dtype the source DiT weights are stored in.
        variant: Picks the DiT when `src` is an official root holding several.

    Returns:
        The folder to pass to `load_components`.
    """
    from encore.pipeline.loading import dit_weight_index, load_components, resolve_checkpoint

    if dtype is None:
        stored = [
            e.dtype
            for e in dit_weight_index(resolve_checkpoint(src, variant=variant)).entries.values()
            if e.dtype.is_floating_point
        ]
        dtype = max(set(stored), key=stored.count) if stored else torch.float32
    components = load_components(src, device="cpu", dtype=torch.float32, variant=variant)
    return save_components(components, dest, layout=layout, dtype=dtype)
