"""LoRA adapter files in the PEFT layout (SPEC §13, FEATURES A6): config, reading, writing. No model, no pickle.

Files: `adapter_model.safetensors` + `adapter_config.json` with keys relative to the DiT decoder
(`base_model.model.layers.0.self_attn.q_proj.lora_A.weight`), which PEFT `PeftModel.from_pretrained(decoder, dir)`
(the official loader) and diffusers `AceStepLoraLoaderMixin` (renames q_proj -> to_q) both read. Diffusers-layout
single files (`transformer.…to_q.lora_A.weight`, config in the safetensors header) are read too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from encore.errors import CheckpointError, InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
"""Official LoRA targets: every attention projection of the DiT (self- and cross-attention)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
"""PEFT key prefix: keys below it are relative to the wrapped module (the DiT decoder)."""
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""safetensors header entry diffusers reads a `LoraConfig` from (keys prefixed with the component name)."""
DIFFUSERS_COMPONENT = "transformer"
_DIFFUSERS_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "o_proj": "to_out.0"}
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Hyper-parameters of one LoRA adapter (PEFT `LoraConfig` subset)."""

    rank: int = 64
    """Default rank r of every adapted projection (official UI default 64)."""
    alpha: float = 128.0
    """Default alpha; the update is scaled by alpha / r (alpha / sqrt(r) with `use_rslora`)."""
    dropout: float = 0.1
    """Dropout on the adapter input during training (inference ignores it)."""
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    """Module names (a module matches when its path equals or ends with `.name`); a single-entry tuple starting
    with `re:` is a regular expression matched against the full path (PEFT's string form)."""
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    """Per-module rank overrides (PEFT semantics: pattern matched against the end of the module path)."""
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    """Per-module alpha overrides."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "rank_pattern", {str(k): int(v) for k, v in self.rank_pattern.items()})
        object.__setattr__(self, "alpha_pattern", {str(k): float(v) for k, v in self.alpha_pattern.items()})
        if self.rank < 1 or any(v < 1 for v in self.rank_pattern.values()):
            raise InvalidRequest("lora.rank", f"must be >= 1, got {self.rank}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise InvalidRequest("lora.alpha", f"must be a positive number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest("lora.dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.target_modules or any(not t for t in self.target_modules):
            raise InvalidRequest("lora.target_modules", "must name at least one module")

    def rank_for(self, module: str) -> int:
        return int(_pattern_value(self.rank_pattern, module, self.rank))

    def alpha_for(self, module: str) -> float:
        return float(_pattern_value(self.alpha_pattern, module, self.alpha))

    def scaling(self, rank: int, alpha: float) -> float:
        """The multiplier of `B @ A` for one module."""
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def matches(self, module: str) -> bool:
        if len(self.target_modules) == 1 and self.target_modules[0].startswith("re:"):
            return re.fullmatch(self.target_modules[0][3:], module) is not None
        return any(module == t or module.endswith("." + t) for t in self.target_modules)

    # --- PEFT / diffusers serialisation ---
    def to_peft_dict(self, base_model: str | None = None) -> dict[str, Any]:
        """`adapter_config.json` content (PEFT 0.13+ field names)."""
        targets: Any = (self.target_modules[0][3:] if self.target_modules[0].startswith("re:")
                        else list(self.target_modules))
        return {
            "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "revision": None,
            "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "target_modules": targets,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": self.use_rslora, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "rank_pattern": dict(self.rank_pattern), "alpha_pattern": dict(self.alpha_pattern),
            "layers_to_transform": None, "layers_pattern": None,
        }

    @classmethod
    def from_peft_dict(cls, data: Mapping[str, Any], *, source: str) -> LoraConfig:
        """Reads a PEFT `adapter_config.json` dict; refuses features this loader does not implement."""
        if str(data.get("peft_type", "LORA")).upper() != "LORA":
            raise CheckpointError(source, f"peft_type {data.get('peft_type')!r} is not supported (only LORA)")
        for flag, bad in (("use_dora", True), ("fan_in_fan_out", True)):
            if data.get(flag) is bad:
                raise CheckpointError(source, f"{flag}=true is not supported")
        if data.get("bias", "none") != "none" or data.get("lora_bias"):
            raise CheckpointError(source, "adapters with bias terms are not supported")
        if data.get("layers_to_transform") or data.get("modules_to_save"):
            raise CheckpointError(source, "layers_to_transform / modules_to_save are not supported")
        targets = data.get("target_modules") or list(DEFAULT_TARGET_MODULES)
        targets = ("re:" + targets,) if isinstance(targets, str) else tuple(targets)
        try:
            return cls(rank=int(data.get("r", 8)), alpha=float(data.get("lora_alpha", data.get("r", 8))),
                       dropout=float(data.get("lora_dropout", 0.0)), target_modules=targets,
                       use_rslora=bool(data.get("use_rslora", False)),
                       rank_pattern=data.get("rank_pattern") or {}, alpha_pattern=data.get("alpha_pattern") or {})
        except (InvalidRequest, TypeError, ValueError) as exc:
            raise CheckpointError(source, f"invalid adapter config ({exc})") from exc

    def to_diffusers_metadata(self) -> dict[str, Any]:
        """The `LoraConfig` kwargs diffusers reads from the safetensors header, in its module names."""
        peft = self.to_peft_dict()
        out = {k: peft[k] for k in ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias",
                                    "init_lora_weights")}
        targets = peft["target_modules"]
        out["target_modules"] = (targets if isinstance(targets, str)
                                 else sorted({_to_diffusers_module(t) for t in targets}))
        out["rank_pattern"] = {_to_diffusers_module(k): v for k, v in self.rank_pattern.items()}
        out["alpha_pattern"] = {_to_diffusers_module(k): v for k, v in self.alpha_pattern.items()}
        return {f"{DIFFUSERS_COMPONENT}.{k}": v for k, v in out.items()}


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _to_diffusers_module(name: str) -> str:
    head, _, last = name.rpartition(".")
    new = _DIFFUSERS_NAMES.get(last, last)
    return f"{head}.{new}" if head else new


def _from_diffusers_module(name: str) -> str:
    name = re.sub(r"(^|\.)to_out\.0$", r"\1o_proj", name)
    return re.sub(r"(^|\.)to_([qkv])$", r"\1\2_proj", name)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class AdapterFile:
    """An adapter read from disk, keyed by module path relative to the decoder."""

    config: LoraConfig
    tensors: dict[str, tuple[Tensor, Tensor]]
    """module -> (A `[r, in]`, B `[out, r]`), float32 on CPU."""
    weights_path: str
    layout: str
    """`peft` (official) or `diffusers`."""
    base_model: str | None = None
    config_path: str | None = None
    """The `adapter_config.json` the config came from (None: header metadata or defaults)."""


def weights_file(path: str | Path) -> Path:
    """The safetensors file of an adapter given as a folder or a file."""
    path = Path(path)
    if path.is_dir():
        return path / ADAPTER_WEIGHTS
    return path


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """`(resolved path, mtime_ns, size)`: changes whenever the file is rewritten (cache key)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(str(path), f"cannot stat adapter file ({exc.strerror or exc})") from exc
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def adapter_digest(weights: str | Path, config: str | Path | None = None) -> str:
    """SHA-256 (hex) of the weights file's bytes followed by the config file's bytes (when there is one).

    The config is included because its alpha changes the output as much as the tensors do.
    """
    digest = hashlib.sha256()
    for part in (weights, config):
        if part is None:
            continue
        try:
            with open(part, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise CheckpointError(str(part), f"cannot read adapter file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        if not path.exists():
            pickled = [p.name for p in (path.parent / n for n in _PICKLE_NAMES) if p.is_file()]
            hint = f" (found {pickled[0]}: pickle files are never loaded; re-save as safetensors)" if pickled else ""
            raise CheckpointError(str(path), "adapter weights not found (expected a folder with "
                                  f"{ADAPTER_WEIGHTS} or a .safetensors file)" + hint)
        raise CheckpointError(str(path), "not a regular file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(str(path), f"not a readable safetensors file ({exc})") from exc
    return tensors, metadata


def _normalise_key(key: str) -> tuple[str, str, str] | None:
    """`(layout, module, 'A'|'B')` for a LoRA tensor key, or None for a key that is not a LoRA matrix."""
    match = _KEY_RE.match(key)
    if match is None:
        return None
    module = match["module"]
    layout = "peft"
    if module.startswith(PEFT_PREFIX):
        module = module[len(PEFT_PREFIX):]
    elif module.startswith(DIFFUSERS_COMPONENT + "."):
        module, layout = _from_diffusers_module(module[len(DIFFUSERS_COMPONENT) + 1:]), "diffusers"
    module = module.removeprefix("diffusion_model.").removeprefix("decoder.")
    return layout, module, match["ab"]


def _config_for(path: Path, weights: Path,
                metadata: Mapping[str, str]) -> tuple[LoraConfig | None, str | None, Path | None]:
    """`(config, base model, config file)` from `adapter_config.json` next to the weights, else from the
    diffusers header metadata, else `(None, None, None)`."""
    config_path = (path if path.is_dir() else weights.parent) / ADAPTER_CONFIG
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(str(config_path), f"not a readable JSON file ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(str(config_path), "must hold a JSON object")
        config = LoraConfig.from_peft_dict(data, source=str(config_path))
        return config, data.get("base_model_name_or_path"), config_path
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CheckpointError(str(weights), f"bad {DIFFUSERS_METADATA_KEY} header ({exc})") from exc
        if not isinstance(meta, dict):
            raise CheckpointError(str(weights), f"{DIFFUSERS_METADATA_KEY} header must hold a JSON object")
        prefix = DIFFUSERS_COMPONENT + "."
        peft = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix) or "." not in k}
        if isinstance(peft.get("target_modules"), list):
            peft["target_modules"] = [_from_diffusers_module(t) for t in peft["target_modules"]]
        for pat in ("rank_pattern", "alpha_pattern"):
            peft[pat] = {_from_diffusers_module(k): v for k, v in (peft.get(pat) or {}).items()}
        return LoraConfig.from_peft_dict(peft, source=f"{weights} [{DIFFUSERS_METADATA_KEY}]"), None, None
    return None, None, None


def read_adapter(path: str | Path) -> AdapterFile:
    """Reads an adapter (PEFT/official folder or file, or a diffusers-layout file) without touching a model.

    Without `adapter_config.json` or diffusers header metadata, alpha is taken equal to each module's rank
    (what diffusers assumes); this is logged.

    Raises:
        CheckpointError: missing/corrupt files, non-LoRA tensors, unpaired A/B, non-finite values.
    """
    import torch

    path = Path(path)
    weights = weights_file(path)
    raw, metadata = _read_safetensors(weights)
    pairs: dict[str, dict[str, Tensor]] = {}
    layouts = set()
    for key, tensor in raw.items():
        parsed = _normalise_key(key)
        if parsed is None:
            raise CheckpointError(str(weights), "not a LoRA tensor (expected <module>.lora_A/lora_B.weight)",
                                  tensor=key)
        layout, module, ab = parsed
        layouts.add(layout)
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise CheckpointError(str(weights), f"must be a 2-D float matrix, got {tensor.dtype} "
                                  f"{list(tensor.shape)}", tensor=key)
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(str(weights), "contains NaN or Inf", tensor=key)
        if ab in pairs.setdefault(module, {}):
            raise CheckpointError(str(weights), f"duplicate lora_{ab} for {module!r}", tensor=key)
        pairs[module][ab] = tensor.float()
    if not pairs:
        raise CheckpointError(str(weights), "holds no LoRA tensors")
    tensors = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointError(str(weights), f"{module!r} has lora_{next(iter(ab))} but no partner")
        tensors[module] = (ab["A"], ab["B"])
    layout = "diffusers" if layouts == {"diffusers"} else "peft"
    config, base_model, config_path = _config_for(path, weights, metadata)
    if config is None:
        ranks = Counter(int(a.shape[0]) for a, _ in tensors.values())
        rank = ranks.most_common(1)[0][0]
        log.warning("%s has no adapter_config.json or LoRA header metadata: assuming alpha = rank", weights)
        config = LoraConfig(rank=rank, alpha=float(rank), dropout=0.0,
                            alpha_pattern={f"^{m}": float(a.shape[0]) for m, (a, _) in tensors.items()
                                           if int(a.shape[0]) != rank})
    return AdapterFile(config=config, tensors=tensors, weights_path=str(weights), layout=layout,
                       base_model=base_model, config_path=None if config_path is None else str(config_path))


# --------------------------------------------------------------------------------------------- writing


def write_adapter_files(tensors: Mapping[str, Tensor], config: LoraConfig, dest: str | Path, *,
                        base_model: str | None = None) -> Path:
    """Writes `dest/adapter_model.safetensors` + `dest/adapter_config.json` (each atomically: temp + rename).

    Args:
        tensors: PEFT-layout keys (`base_model.model.<module>.lora_{A,B}.weight`) -> CPU contiguous tensors.
        config: Written as PEFT's config and as diffusers' `lora_adapter_metadata` header (the true alpha).
        dest: Output folder (created).
        base_model: Recorded as `base_model_name_or_path`.

    Returns:
        `dest`.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(config.to_diffusers_metadata(), sort_keys=True)}
    tmp = dest / (ADAPTER_WEIGHTS + ".tmp")
    save_file(dict(tensors), str(tmp), metadata=metadata)
    os.replace(tmp, dest / ADAPTER_WEIGHTS)
    tmp_cfg = dest / (ADAPTER_CONFIG + ".tmp")
    tmp_cfg.write_text(json.dumps(config.to_peft_dict(base_model), indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
    os.replace(tmp_cfg, dest / ADAPTER_CONFIG)
    return dest
