"""Load every component of an ACE-Step 1.5 checkpoint (official or diffusers layout) into Encore modules.

`load_components(path_or_preset)` resolves the folder layout (SPEC §1), reads configs and safetensors
through `pipeline.checkpoint` (validated before anything is assigned) and key maps from
`pipeline.convert`, and returns a `Components` bundle. `load_pipeline` wraps it in a `Pipeline`. The embedded
export (`embedded.json`, MiniLM caption encoder) and the built-in name `embedded` load the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from encore.errors import CheckpointError
from encore.models.config import AceStepConfig
from encore.models.text_encoder import AnyTextEncoder, SentenceTextEncoder, TextEncoder
from encore.pipeline import convert, presets
from encore.pipeline.checkpoint import (
    WeightIndex,
    assign_state,
    parameters_on_meta,
    read_json,
    read_silence_file,
    read_validated,
    scan_weights,
)
from encore.pipeline.presets import (
    DEFAULT_PRESET,
    EMBEDDED_MARKER,
    EMBEDDED_MISSING_HINT,
    EMBEDDED_NAME,
    EMBEDDED_TEXT_ENCODER_DIR,
    PRESETS,
    SOLVERS,
    TEXT_ENCODER_DIR,
    VAE_DIR,
    DiffusionDefaults,
    Preset,
    defaults_for,
    get_preset,
    preset_for_dit_dir,
)

if TYPE_CHECKING:
    from transformers import BertConfig, PretrainedConfig, PreTrainedTokenizerBase, Qwen3Config

    from encore.models.acestep import AceStepModel
    from encore.models.vae import OobleckVAE, VAEConfig

log = logging.getLogger(__name__)

Layout = Literal["official", "diffusers"]
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
LM_PREFIX = "acestep-5Hz-lm-"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class CheckpointPaths:
    """Where each component of a checkpoint lives."""

    layout: Layout
    root: Path
    """Official: the folder holding the DiT folder and its siblings. Diffusers: the pipeline folder."""
    dit: Path
    """Official: the DiT folder (`config.json`, `model.safetensors`). Diffusers: `transformer/`."""
    vae: Path
    text_encoder: Path
    text_tokenizer: Path
    silence: Path
    """Official: `silence_latent.safetensors` (preferred) or `.pt`. Diffusers: condition-encoder weights."""
    lm_dirs: tuple[Path, ...] = ()
    """`acestep-5Hz-lm-*` folders found next to the DiT (official layout only)."""
    embedded: bool = False
    """The root is an embedded export (`embedded.json` present)."""


@dataclass(frozen=True)
class VariantInfo:
    """Which model variant was loaded and its sampling defaults."""

    name: str
    """Preset name (`turbo`, `xl-base`, ...) or the checkpoint folder name when no preset matches."""
    is_turbo: bool
    is_xl: bool
    preset: Preset | None
    defaults: DiffusionDefaults


@dataclass
class Components:
    """Every loaded module of one checkpoint, on one device."""

    model: AceStepModel
    vae: OobleckVAE
    text_encoder: AnyTextEncoder
    """Wrapper around the transformers `Qwen3Model` or, for the embedded model, `BertModel` (`.model`)."""
    text_tokenizer: PreTrainedTokenizerBase
    silence_latent: torch.Tensor
    """`[T, C]` float32 on `device`: VAE latent of silence (reference-audio and source filler)."""
    config: AceStepConfig
    vae_config: VAEConfig
    text_encoder_config: Qwen3Config | BertConfig
    variant: VariantInfo
    paths: CheckpointPaths
    device: torch.device
    dtype: torch.dtype
    """Dtype of the DiT and text encoder parameters."""
    vae_dtype: torch.dtype

    @property
    def is_turbo(self) -> bool:
        return self.variant.is_turbo


# --------------------------------------------------------------------------- device / dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`"auto"`/`None` -> CUDA if available, else MPS if available, else CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`"auto"`/`None` -> bf16 on CUDA/XPU, fp16 on MPS, fp32 on CPU (official handler, SPEC §1, §4)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None or dtype == "auto":
        resolved = {"cuda": torch.bfloat16, "xpu": torch.bfloat16, "mps": torch.float16}.get(
            device.type, torch.float32
        )
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(_DTYPES))}")
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {resolved} unsupported; use float32, bfloat16 or float16")
    return resolved


# --------------------------------------------------------------------------- layout resolution


def _config_model_type(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    value = read_json(cfg).get("model_type")
    return value if isinstance(value, str) else None


def is_dit_dir(folder: Path) -> bool:
    """Whether `folder` holds an ACE-Step DiT (`config.json` with `model_type` "acestep")."""
    return _config_model_type(folder) == "acestep"


def resolve_checkpoint(
    path_or_preset: str | Path, *, checkpoint_root: str | Path | None = None, variant: str | None = None
) -> CheckpointPaths:
    """Finds the component folders of a checkpoint.

    Args:
        path_or_preset: A diffusers pipeline folder (`model_index.json`), an official DiT folder, an official
            checkpoint root holding `acestep-v15-*` folders (an embedded export is one), a preset name
            (`turbo`, `base`, ...), or `embedded` for the model bundled in the package. As for presets, an
            existing folder of that name wins over the name.
        checkpoint_root: Where preset names are looked up (default
            `encore.pipeline.download.default_checkpoint_root()`).
        variant: Preset or folder name picking the DiT when an official root holds several.

    Raises:
        CheckpointError: the path does not exist or does not look like a checkpoint.
    """
    path = Path(path_or_preset)
    name = str(path_or_preset)
    if not path.exists() and name == EMBEDDED_NAME:
        path = presets.embedded_dir()
        if not (path / EMBEDDED_MARKER).is_file():
            raise CheckpointError(str(path), EMBEDDED_MISSING_HINT)
    elif not path.exists() and (name in PRESETS or preset_for_dit_dir(name) is not None):
        from encore.pipeline.download import default_checkpoint_root

        preset = get_preset(name)
        root = Path(checkpoint_root) if checkpoint_root is not None else default_checkpoint_root()
        path = root / preset.dit_dir
        if not path.is_dir():
            raise CheckpointError(
                str(path),
                f"preset {preset.name!r} is not downloaded; run "
                f"`encore download {preset.name}` (destination {root})",
            )
    if not path.is_dir():
        raise CheckpointError(str(path), "checkpoint folder not found")
    if (path / "model_index.json").is_file():
        return _diffusers_paths(path)
    if is_dit_dir(path):
        if variant is not None and not _names_folder(variant, path.name):
            raise CheckpointError(str(path), f"variant {variant!r} asked for, but this is the DiT folder {path.name}; "
                                             "pass the checkpoint root that holds several to choose")  # fmt: skip
        return _official_paths(path.parent, path)
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if has_weights and not (path / "config.json").is_file():
        raise CheckpointError(str(path / "config.json"), "file not found (weights without their config)")
    return _official_paths(path, _pick_dit_dir(path, variant))


def _names_folder(variant: str, folder: str) -> bool:
    """Whether `variant` (a folder name or a preset) names the DiT folder `folder`."""
    preset = PRESETS.get(variant)
    return variant == folder or (preset is not None and preset.dit_dir == folder)


def _pick_dit_dir(root: Path, variant: str | None) -> Path:
    candidates = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and is_dit_dir(d)}
    if variant is not None:
        preset = PRESETS.get(variant)
        for name in (variant, preset.dit_dir if preset else None):
            if name in candidates:
                return candidates[name]
        raise CheckpointError(str(root), f"variant {variant!r} not found; available: {sorted(candidates)}")
    if not candidates:
        raise CheckpointError(
            str(root),
            "no DiT folder (config.json with model_type 'acestep') and no "
            "model_index.json: not an ACE-Step checkpoint",
        )
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    default = PRESETS[DEFAULT_PRESET].dit_dir  # the official handler's default
    if default in candidates:
        return candidates[default]
    raise CheckpointError(str(root), f"several DiT folders {sorted(candidates)}; pass variant=...")


EMBEDDED_FORMAT_VERSION = 3
"""Newest `embedded.json` version this Encore reads (2 added `shared_weights`, 3 `turbo_solver`)."""


def read_embedded_meta(root: Path) -> dict[str, Any]:
    """`root/embedded.json` (written last by the embedded export), its format and version checked."""
    marker = root / EMBEDDED_MARKER
    meta = read_json(marker)
    if meta.get("format") != "encore-embedded":
        raise CheckpointError(str(marker), f"format {meta.get('format')!r} is not 'encore-embedded'")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= EMBEDDED_FORMAT_VERSION:
        raise CheckpointError(str(marker), f"version {version!r} unsupported (this Encore reads 1 to "
                                           f"{EMBEDDED_FORMAT_VERSION})")  # fmt: skip
    return meta


def _plain_folder(marker: Path, field: str, name: Any) -> str:
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise CheckpointError(str(marker), f"{field} {name!r} is not a plain folder name")
    return name


def _embedded_text_dir(root: Path) -> Path:
    """The caption-encoder folder named by `root/embedded.json` (written by the embedded export)."""
    name = read_embedded_meta(root).get("text_encoder", EMBEDDED_TEXT_ENCODER_DIR)
    return root / _plain_folder(root / EMBEDDED_MARKER, "text_encoder", name)


def embedded_defaults(paths: CheckpointPaths, is_turbo: bool) -> DiffusionDefaults:
    """Sampling defaults of an embedded export's DiT: the generic ones, with the turbo's solver when
    `embedded.json` names one (`"turbo_solver": "sde"`, format version 3)."""
    defaults = defaults_for(is_turbo)
    solver = read_embedded_meta(paths.root).get("turbo_solver")
    if solver is None:
        return defaults
    if solver not in SOLVERS:
        raise CheckpointError(str(paths.root / EMBEDDED_MARKER), f"turbo_solver {solver!r} is not 'ode' or 'sde'")
    return dataclasses.replace(defaults, solver=solver) if is_turbo else defaults


def shared_weights_source(paths: CheckpointPaths) -> Path | None:
    """The DiT folder that supplies the tensors `paths.dit`'s own file leaves out, or None.

    An embedded export with two DiTs stores the second one (the turbo, distilled from the base) as the tensors
    that differ from the first, and names the first in `embedded.json` (`"shared_weights": {"acestep-v15-turbo":
    "acestep-v15-base"}`): the distilled student keeps the teacher's condition encoder, tokenizer and
    detokenizer, 8.6 of the embedded DiT's 26 MB, which is what fits both DiTs in the 100 MB budget.
    """
    if paths.layout != "official" or not paths.embedded:
        return None
    marker = paths.root / EMBEDDED_MARKER
    shared = read_embedded_meta(paths.root).get("shared_weights", {})
    if not isinstance(shared, dict):
        raise CheckpointError(str(marker), "shared_weights must map DiT folder names to DiT folder names")
    name = shared.get(paths.dit.name)
    if name is None:
        return None
    source = paths.root / _plain_folder(marker, f"shared_weights[{paths.dit.name!r}]", name)
    if name == paths.dit.name or name in shared:
        raise CheckpointError(str(marker), f"shared_weights: {paths.dit.name} -> {name} must name a DiT folder "
                                           "that stores all of its own weights")  # fmt: skip
    if not is_dit_dir(source):
        raise CheckpointError(str(source), f"DiT folder named by shared_weights for {paths.dit.name} not found")
    return source


def _official_text_dir(root: Path) -> Path:
    if (root / EMBEDDED_MARKER).is_file():
        return _embedded_text_dir(root)
    text = root / TEXT_ENCODER_DIR
    if text.is_dir():
        return text
    if (root / EMBEDDED_TEXT_ENCODER_DIR).is_dir():  # an embedded export whose marker was lost
        return root / EMBEDDED_TEXT_ENCODER_DIR
    others = sorted(d for d in root.glob("Qwen3-Embedding*") if d.is_dir())
    return others[0] if others else text


def _official_paths(root: Path, dit: Path) -> CheckpointPaths:
    vae = root / VAE_DIR
    text = _official_text_dir(root)
    silence = dit / "silence_latent.safetensors"
    if not silence.is_file():
        silence = dit / "silence_latent.pt"
    lms = tuple(sorted(d for d in root.glob(f"{LM_PREFIX}*") if d.is_dir()))
    return CheckpointPaths(
        layout="official",
        root=root,
        dit=dit,
        vae=vae,
        text_encoder=text,
        text_tokenizer=text,
        silence=silence,
        lm_dirs=lms,
        embedded=(root / EMBEDDED_MARKER).is_file(),
    )


def _diffusers_paths(root: Path) -> CheckpointPaths:
    index = read_json(root / "model_index.json")
    if index.get("_class_name") not in (None, "AceStepPipeline"):
        raise CheckpointError(
            str(root / "model_index.json"),
            f"pipeline class {index.get('_class_name')!r} is not AceStepPipeline",
        )
    return CheckpointPaths(
        layout="diffusers",
        root=root,
        dit=root / "transformer",
        vae=root / "vae",
        text_encoder=root / "text_encoder",
        text_tokenizer=root / "tokenizer",
        silence=root / "condition_encoder" / f"{DIFFUSERS_WEIGHTS}.safetensors",
        embedded=(root / EMBEDDED_MARKER).is_file(),
    )


# --------------------------------------------------------------------------- component loaders


def load_dit_config(paths: CheckpointPaths, vae_config: VAEConfig | None = None) -> AceStepConfig:
    """Reads the DiT config of either layout as an `AceStepConfig`."""
    if paths.layout == "official":
        cfg_path = paths.dit / "config.json"
        try:
            return AceStepConfig.from_dict(read_json(cfg_path), source=str(cfg_path))
        except ValueError as exc:
            raise CheckpointError(str(cfg_path), str(exc)) from exc
    cfgs = {
        name: read_json(paths.root / name / "config.json") for name in ("transformer", "condition_encoder")
    }
    tok_cfg = paths.root / "audio_tokenizer" / "config.json"
    lps = _latents_per_second(vae_config) if vae_config is not None else None
    try:
        return convert.config_from_diffusers(
            cfgs["transformer"],
            cfgs["condition_encoder"],
            read_json(tok_cfg) if tok_cfg.is_file() else None,
            latents_per_second=lps,
        )
    except (ValueError, TypeError) as exc:
        raise CheckpointError(str(paths.root / "transformer" / "config.json"), str(exc)) from exc


def _latents_per_second(vae_config: Any) -> float:
    return float(vae_config.sampling_rate) / math.prod(vae_config.downsampling_ratios)


def dit_weight_index(paths: CheckpointPaths) -> WeightIndex:
    """Headers of the DiT weights of either layout, keyed by Encore `AceStepModel` names."""
    if paths.layout == "official":
        index = scan_weights(paths.dit, "model")
        source = shared_weights_source(paths)
        if source is not None:  # the folder's own tensors win over the shared ones
            index = WeightIndex({**scan_weights(source, "model").entries, **index.entries}, index.primary)
        return index.renamed(
            {k: convert.official_key_to_encore(k) for k in index.entries}, convert.encore_key_to_official
        )
    entries: dict[str, Any] = {}
    for component in convert.DIFFUSERS_COMPONENTS.values():
        folder = paths.root / component
        if not folder.is_dir():
            raise CheckpointError(
                str(folder), "diffusers component folder missing (Encore needs all four DiT parts)"
            )
        part = scan_weights(folder, DIFFUSERS_WEIGHTS)
        names = [
            k
            for k in part.entries
            if not (component == "condition_encoder" and k == convert.DIFFUSERS_SILENCE_KEY)
        ]
        try:
            mapping = {
                k: convert.official_key_to_encore(convert.diffusers_key_to_official(component, k))
                for k in names
            }
        except ValueError as exc:
            raise CheckpointError(str(part.primary), str(exc)) from exc
        entries.update(part.renamed(mapping).entries)

    def locate(key: str) -> tuple[Path, str]:
        component, name = convert.official_key_to_diffusers(convert.encore_key_to_official(key))
        return paths.root / component / f"{DIFFUSERS_WEIGHTS}.safetensors", name

    return WeightIndex(entries, paths.root / "transformer" / f"{DIFFUSERS_WEIGHTS}.safetensors", locate)


def load_silence(paths: CheckpointPaths, channels: int) -> torch.Tensor:
    """The silence latent `[T, C]` float32 from either layout."""
    if paths.layout == "official":
        return read_silence_file(paths.silence, channels)
    index = scan_weights(paths.root / "condition_encoder", DIFFUSERS_WEIGHTS)
    entry = index.entries.get(convert.DIFFUSERS_SILENCE_KEY)
    if entry is None:
        raise CheckpointError(
            str(index.primary),
            "condition encoder has no silence latent buffer",
            convert.DIFFUSERS_SILENCE_KEY,
        )
    tensor = index.read_all([convert.DIFFUSERS_SILENCE_KEY])[convert.DIFFUSERS_SILENCE_KEY]
    try:
        return convert.silence_from_diffusers(tensor, channels)
    except ValueError as exc:
        raise CheckpointError(str(entry.path), str(exc), convert.DIFFUSERS_SILENCE_KEY) from exc


def load_model(
    paths: CheckpointPaths, config: AceStepConfig, *, dtype: torch.dtype, check_finite: bool = True
) -> AceStepModel:
    """Builds `AceStepModel(config)` and loads the validated DiT weights (CPU)."""
    from encore.models.acestep import AceStepModel

    with parameters_on_meta():
        model = AceStepModel(config)
    state = read_validated(model, dit_weight_index(paths), dtype=dtype, check_finite=check_finite)
    assign_state(model, state)
    return model.eval()


def load_dit(paths: CheckpointPaths, *, dtype: torch.dtype, check_finite: bool = True) -> AceStepModel:
    """The DiT of a checkpoint alone (no VAE weights, no text encoder), e.g. to start a training run from it."""
    # The diffusers layout derives the code rate from the VAE's strides; the official one states it.
    vae_config = None if paths.layout == "official" else read_vae_config(paths.vae)
    return load_model(paths, load_dit_config(paths, vae_config), dtype=dtype, check_finite=check_finite)


def read_vae_config(folder: Path) -> VAEConfig:
    """`folder/config.json` as a `VAEConfig`; a CheckpointError names the file when it is missing or invalid."""
    from encore.models.vae import VAEConfig

    cfg_path = folder / "config.json"
    read_json(cfg_path)  # existence + JSON checks with a CheckpointError naming the file
    try:
        return VAEConfig.from_json(cfg_path)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(str(cfg_path), str(exc)) from exc


def load_vae(folder: Path, *, dtype: torch.dtype, check_finite: bool = True) -> tuple[OobleckVAE, VAEConfig]:
    """Reads `vae/config.json` + weights, folds weight norm and loads `OobleckVAE` (CPU)."""
    from encore.models.vae import OobleckVAE

    vae_config = read_vae_config(folder)
    raw = scan_weights(folder, DIFFUSERS_WEIGHTS)
    for key, entry in raw.entries.items():
        if not entry.dtype.is_floating_point:
            raise CheckpointError(str(entry.path), f"dtype {entry.dtype} is not floating point", key)
    try:
        folded = convert.fold_vae_weight_norm(raw.read_all(), in_place=True)
    except ValueError as exc:
        raise CheckpointError(str(raw.primary), str(exc)) from exc
    with parameters_on_meta():
        vae = OobleckVAE(vae_config)
    state = read_validated(
        vae, WeightIndex.from_tensors(folded, raw.primary), dtype=dtype, check_finite=check_finite
    )
    assign_state(vae, state)
    return vae.eval(), vae_config


def load_text_encoder(
    folder: Path, *, dtype: torch.dtype, check_finite: bool = True
) -> tuple[AnyTextEncoder, Qwen3Config | BertConfig]:
    """Reads a caption-encoder folder (config.json + safetensors) into its wrapper (CPU).

    `model_type` `qwen3` (Qwen3-Embedding) -> `TextEncoder` over `Qwen3Model`; `bert` (the embedded model's
    MiniLM) -> `SentenceTextEncoder` over `BertModel` without its pooler.
    """
    if not folder.is_dir():
        raise CheckpointError(str(folder), "text encoder folder not found")
    cfg_path = folder / "config.json"
    data = read_json(cfg_path)
    model_type = data.get("model_type")
    if model_type == "qwen3":
        qwen, qwen_config = _load_qwen3(folder, data, dtype=dtype, check_finite=check_finite)
        return TextEncoder(qwen), qwen_config
    if model_type == "bert":
        bert, bert_config = _load_bert(folder, data, dtype=dtype, check_finite=check_finite)
        return SentenceTextEncoder(bert), bert_config
    raise CheckpointError(str(cfg_path), f"model_type {model_type!r} is neither 'qwen3' nor 'bert'")


def _text_config(cls: type[PretrainedConfig], data: dict[str, Any], cfg_path: Path) -> Any:
    try:
        return cls.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(str(cfg_path), str(exc)) from exc


def _load_qwen3(
    folder: Path, data: dict[str, Any], *, dtype: torch.dtype, check_finite: bool
) -> tuple[Any, Qwen3Config]:
    from transformers import Qwen3Config, Qwen3Model

    config = _text_config(Qwen3Config, data, folder / "config.json")
    index = scan_weights(folder, "model")
    if any(k.startswith("model.") for k in index.entries):
        # Saved from `Qwen3ForCausalLM`: strip the base-model prefix; the LM head is unused by the embedder.
        mapping = {k: k.removeprefix("model.") for k in index.entries if k != "lm_head.weight"}
        index = index.renamed(mapping, lambda key: f"model.{key}")
    with parameters_on_meta():
        model = Qwen3Model(config)
    state = read_validated(model, index, dtype=dtype, check_finite=check_finite,
                           lookup_tables=frozenset({"embed_tokens.weight"}))
    assign_state(model, state)
    return model.eval(), config


def _load_bert(
    folder: Path, data: dict[str, Any], *, dtype: torch.dtype, check_finite: bool
) -> tuple[Any, BertConfig]:
    from transformers import BertConfig, BertModel

    config = _text_config(BertConfig, data, folder / "config.json")
    index = scan_weights(folder, "model")
    # The pooler is unused (token-level states feed the DiT) and `position_ids` is a non-persistent buffer
    # that older sentence-transformers files still carry; a `bert.` prefix comes from `BertFor*` heads.
    prefixed = any(k.startswith("bert.") for k in index.entries)
    mapping = {
        k: k.removeprefix("bert.")
        for k in index.entries
        if (k.startswith("bert.") or not prefixed)
        and not k.removeprefix("bert.").startswith("pooler.")
        and k.removeprefix("bert.") != "embeddings.position_ids"
    }
    index = index.renamed(mapping, (lambda key: f"bert.{key}") if prefixed else (lambda key: key))
    with parameters_on_meta():
        model = BertModel(config, add_pooling_layer=False)
    state = read_validated(model, index, dtype=dtype, check_finite=check_finite)
    assign_state(model, state)
    return model.eval(), config


def load_text_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The text encoder's tokenizer (Qwen3-Embedding or MiniLM) from local files only (no hub, no remote code)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "vocab.txt")):
        raise CheckpointError(str(folder / "tokenizer.json"), "tokenizer files not found")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(str(folder), f"cannot load tokenizer ({exc})") from exc


def _variant(paths: CheckpointPaths, config: AceStepConfig) -> VariantInfo:
    is_xl = config.enc_hidden_size != config.hidden_size
    if paths.embedded:
        # Same DiT folder names as the official release but a different model: never report it as `turbo`.
        name = EMBEDDED_NAME if config.is_turbo else f"{EMBEDDED_NAME}-base"
        return VariantInfo(name=name, is_turbo=config.is_turbo, is_xl=is_xl, preset=None,
                           defaults=embedded_defaults(paths, config.is_turbo))
    name = paths.dit.name if paths.layout == "official" else paths.root.name.removesuffix("-diffusers")
    preset = preset_for_dit_dir(name)
    if preset is not None and preset.is_turbo != config.is_turbo:
        log.warning(
            "%s: folder name says %s but config.is_turbo=%s; trusting the config",
            paths.dit,
            preset.name,
            config.is_turbo,
        )
        preset = None
    return VariantInfo(
        name=preset.name if preset else name,
        is_turbo=config.is_turbo,
        is_xl=is_xl,
        preset=preset,
        defaults=preset.defaults if preset else defaults_for(config.is_turbo),
    )


# --------------------------------------------------------------------------- entry points


def load_components(
    path_or_preset: str | Path,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    vae_dtype: str | torch.dtype | None = None,
    checkpoint_root: str | Path | None = None,
    variant: str | None = None,
    check_finite: bool = True,
) -> Components:
    """Loads DiT, VAE, text encoder (Qwen3-Embedding, or MiniLM for the embedded model), tokenizer and
    silence latent of one checkpoint.

    Everything is read and validated on the CPU first; modules move to `device` only after every file
    passed, so a bad file never leaves a half-loaded pipeline.

    Args:
        path_or_preset: See `resolve_checkpoint`.
        device: `"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`, ... or a `torch.device`.
        dtype: Parameter dtype of DiT and text encoder: `"auto"` (bf16 on CUDA, fp16 on MPS, fp32 on CPU),
            `"float32"`, `"bfloat16"`, `"float16"` or a `torch.dtype`.
        vae_dtype: VAE parameter dtype; default = `dtype`.
        checkpoint_root: Folder searched for preset names.
        variant: Picks the DiT folder inside an official root holding several.
        check_finite: Refuse weights containing NaN/Inf (one extra pass over the weights).

    Raises:
        CheckpointError: any file missing, corrupt or incompatible (names the file and tensor).
        ValueError: bad `device`/`dtype` argument.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    vdt = resolve_dtype(vae_dtype, dev) if vae_dtype is not None else dt
    paths = resolve_checkpoint(path_or_preset, checkpoint_root=checkpoint_root, variant=variant)
    vae, vae_config = load_vae(paths.vae, dtype=vdt, check_finite=check_finite)
    config = load_dit_config(paths, vae_config)
    silence = load_silence(paths, config.audio_acoustic_hidden_dim)
    model = load_model(paths, config, dtype=dt, check_finite=check_finite)
    text_encoder, text_config = load_text_encoder(paths.text_encoder, dtype=dt, check_finite=check_finite)
    if text_config.hidden_size != config.text_hidden_dim:
        raise CheckpointError(
            str(paths.text_encoder / "config.json"),
            f"hidden_size {text_config.hidden_size} != DiT text_hidden_dim {config.text_hidden_dim}",
        )
    tokenizer = load_text_tokenizer(paths.text_tokenizer)
    model.to(dev)
    vae.to(dev)
    text_encoder.to(dev)
    return Components(
        model=model,
        vae=vae,
        text_encoder=text_encoder,
        text_tokenizer=tokenizer,
        silence_latent=silence.to(dev),
        config=config,
        vae_config=vae_config,
        text_encoder_config=text_config,
        variant=_variant(paths, config),
        paths=paths,
        device=dev,
        dtype=dt,
        vae_dtype=vdt,
    )


def load_pipeline(path_or_preset: str | Path, **kwargs: Any) -> Any:
    """`Pipeline(load_components(path_or_preset, **kwargs))`.

    Raises:
        RuntimeError: `encore.pipeline.pipeline` is not available in this build.
    """
    if importlib.util.find_spec("encore.pipeline.pipeline") is None:
        raise RuntimeError(
            "encore.pipeline.pipeline.Pipeline is not available; use load_components() for the raw modules"
        )
    from encore.pipeline.pipeline import Pipeline

    return Pipeline(load_components(path_or_preset, **kwargs))
