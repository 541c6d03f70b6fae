"""LoRA adapters on the DiT attention projections, stored in the PEFT layout (SPEC §13, FEATURES A6).

Adapters attach to a module tree (the DiT `decoder`) through forward hooks on the targeted `nn.Linear`s: the
base modules, their weights and the model's `state_dict` never change, and an adapter at scale 0 (or disabled)
is skipped, so the output is bit-identical to the base model. Several adapters can be active at once, each with
its own scale. Files: `adapter_model.safetensors` + `adapter_config.json` with keys relative to the decoder
(`base_model.model.layers.0.self_attn.q_proj.lora_A.weight`), which PEFT `PeftModel.from_pretrained(decoder, dir)`
(the official loader) and diffusers `AceStepLoraLoaderMixin` (renames q_proj -> to_q) both read. No pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

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
_ATTR = "_encore_adapters"


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


# --------------------------------------------------------------------------------------------- modules


def _mangle(module_name: str) -> str:
    return module_name.replace(".", "__")


class LoraLayer(nn.Module):
    """The low-rank update `scaling · B(A(dropout(x)))` of one `nn.Linear` (`in_features -> out_features`)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(rank, out_features, bias=False, dtype=dtype, device=device)
        self.scaling = scaling

    @property
    def rank(self) -> int:
        return self.lora_A.out_features

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PEFT's default init: A like `nn.Linear` (Kaiming-uniform, a=sqrt(5)), B zero (so the update starts at 0)."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor, dropout: float, generators: Sequence[torch.Generator] | None) -> Tensor:
        """`x` `[B, L, in]` -> update `[B, L, out]` in the adapter dtype (unscaled by the user scale)."""
        # contiguous(): for a strided 3-D input, matmul's folding path depends on whether the weight requires
        # grad, so a trained and a reloaded adapter would differ in the last bit.
        h = x.to(self.lora_A.weight.dtype).contiguous()
        if self.training and dropout > 0:
            h = _dropout(h, dropout, generators)
        return self.lora_B(self.lora_A(h)) * self.scaling


def _dropout(h: Tensor, p: float, generators: Sequence[torch.Generator] | None) -> Tensor:
    """Inverted dropout; with per-item generators each item's mask depends only on its own generator."""
    if generators is None:
        return F.dropout(h, p, training=True)
    if len(generators) != h.shape[0]:
        raise ValueError(f"{len(generators)} dropout generators for a batch of {h.shape[0]}")
    keep = torch.stack([torch.rand(h.shape[1:], generator=g, device=h.device) >= p for g in generators])
    return h * keep.to(h.dtype) / (1.0 - p)


class LoraAdapter(nn.Module):
    """One named adapter: a `LoraLayer` per targeted module, a user scale and an on/off switch."""

    def __init__(self, name: str, config: LoraConfig, layers: Mapping[str, LoraLayer]) -> None:
        super().__init__()
        if not layers:
            raise InvalidRequest("lora.target_modules", f"adapter {name!r} matches no Linear module")
        self.name = name
        self.config = config
        self.module_names: tuple[str, ...] = tuple(sorted(layers))
        self.layers = nn.ModuleDict({_mangle(k): layers[k] for k in self.module_names})
        self.scale = 1.0
        self.enabled = True

    def layer(self, module_name: str) -> LoraLayer:
        return self.layers[_mangle(module_name)]  # type: ignore[return-value]

    def peft_state_dict(self) -> dict[str, Tensor]:
        """PEFT-layout tensors (`base_model.model.<module>.lora_{A,B}.weight`), detached and contiguous."""
        out: dict[str, Tensor] = {}
        for name in self.module_names:
            layer = self.layer(name)
            out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous()
            out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous()
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modules={len(self.module_names)}, scale={self.scale}, enabled={self.enabled}"


# --------------------------------------------------------------------------------------------- adapter set


@dataclass(frozen=True)
class AdapterStatus:
    """What `AdapterSet.status` reports per adapter."""

    name: str
    scale: float
    enabled: bool
    rank: int
    alpha: float
    num_modules: int
    num_parameters: int
    source: str | None


class AdapterSet:
    """The adapters attached to one module tree (normally `AceStepModel.decoder`).

    Use `AdapterSet.of(decoder)`; it is stored on the module, so every caller sees the same set. The set adds
    one forward hook per adapted `nn.Linear` and removes it when no adapter targets that module any more.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self._adapters: dict[str, LoraAdapter] = {}
        self._hooks: dict[str, RemovableHandle] = {}
        self._sources: dict[str, tuple[str, int, int]] = {}
        self._dropout_generators: Sequence[torch.Generator] | None = None

    @classmethod
    def of(cls, root: nn.Module) -> AdapterSet:
        """The set attached to `root`, created on first use."""
        existing = root.__dict__.get(_ATTR)
        if existing is None:
            existing = cls(root)
            root.__dict__[_ATTR] = existing
        return existing

    # --- queries ---
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __getitem__(self, name: str) -> LoraAdapter:
        if name not in self._adapters:
            raise InvalidRequest("lora.name", f"no adapter named {name!r} (loaded: {list(self._adapters)})")
        return self._adapters[name]

    def active(self) -> list[tuple[str, float]]:
        """`(name, scale)` of adapters that currently change the output (enabled, scale != 0)."""
        return [(a.name, a.scale) for a in self._adapters.values() if a.enabled and a.scale != 0]

    def status(self) -> list[AdapterStatus]:
        out = []
        for a in self._adapters.values():
            out.append(AdapterStatus(
                name=a.name, scale=a.scale, enabled=a.enabled, rank=a.config.rank, alpha=a.config.alpha,
                num_modules=len(a.module_names), num_parameters=sum(p.numel() for p in a.parameters()),
                source=self._sources[a.name][0] if a.name in self._sources else None))
        return out

    def target_modules(self, config: LoraConfig) -> dict[str, nn.Linear]:
        """The `nn.Linear` modules of the tree that `config` targets, by path."""
        found = {name: m for name, m in self.root.named_modules() if name and config.matches(name)}
        linear = {k: m for k, m in found.items() if isinstance(m, nn.Linear)}
        if not linear:
            raise InvalidRequest("lora.target_modules",
                                 f"{list(config.target_modules)} match no nn.Linear in {type(self.root).__name__}")
        return linear

    # --- adding / removing ---
    def add(self, name: str, config: LoraConfig, *, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> LoraAdapter:
        """Creates a fresh, trainable adapter (update initially zero) and attaches it, in eval mode (no dropout):
        call `.train()` on it to enable dropout while training.

        Args:
            name: Unique adapter name.
            config: Rank, alpha, dropout and targets.
            generator: Seeds the init of the A matrices (None: torch's default generator).
            dtype: Parameter dtype (float32 recommended for training, also under bf16 autocast).
            device: Parameter device; default the device of each targeted module's weight.
        """
        self._check_new_name(name)
        layers = {}
        for module_name, linear in self.target_modules(config).items():
            rank, alpha = config.rank_for(module_name), config.alpha_for(module_name)
            layer = LoraLayer(linear.in_features, linear.out_features, rank, config.scaling(rank, alpha),
                              dtype=dtype, device=device or linear.weight.device)
            layer.reset_parameters(generator)
            layers[module_name] = layer
        adapter = self._attach(LoraAdapter(name, config, layers))
        adapter.eval()
        return adapter

    def load(self, path: str | Path, *, name: str | None = None, scale: float = 1.0,
             dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> LoraAdapter:
        """Loads a PEFT-layout (official) or diffusers-layout adapter file/folder and attaches it.

        Args:
            path: A folder with `adapter_model.safetensors` (+ `adapter_config.json`) or a `.safetensors` file.
            name: Adapter name; default the resolved path.
            scale: Initial user scale.
            dtype: Parameter dtype.
            device: Default the device of each targeted module's weight.

        Raises:
            CheckpointError: missing/corrupt file, unsupported format, or tensors that do not fit the model.
        """
        name = name or str(Path(path).resolve())
        self._check_new_name(name)
        loaded = read_adapter(path)
        modules = dict(self.root.named_modules())
        layers = {}
        for module_name, (a, b) in loaded.tensors.items():
            linear = modules.get(module_name)
            if not isinstance(linear, nn.Linear):
                raise CheckpointError(loaded.weights_path, f"targets {module_name!r}, which is not an nn.Linear of "
                                      f"{type(self.root).__name__}", tensor=f"{module_name}.lora_A.weight")
            if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features or a.shape[0] != b.shape[1]:
                raise CheckpointError(loaded.weights_path, f"shapes A{list(a.shape)} B{list(b.shape)} do not fit "
                                      f"Linear({linear.in_features}->{linear.out_features})",
                                      tensor=f"{module_name}.lora_A.weight")
            rank = int(a.shape[0])
            layer = LoraLayer(linear.in_features, linear.out_features, rank,
                              loaded.config.scaling(rank, loaded.config.alpha_for(module_name)),
                              dtype=dtype, device=device or linear.weight.device)
            with torch.no_grad():
                layer.lora_A.weight.copy_(a)
                layer.lora_B.weight.copy_(b)
            layers[module_name] = layer
        adapter = self._attach(LoraAdapter(name, loaded.config, layers))
        adapter.requires_grad_(False)
        adapter.eval()
        self.set_scale(name, scale)
        self._sources[name] = _file_identity(loaded.weights_path)
        return adapter

    def remove(self, name: str) -> None:
        """Unloads an adapter; hooks nobody needs any more are removed."""
        self[name]
        del self._adapters[name]
        self._sources.pop(name, None)
        needed = {m for a in self._adapters.values() for m in a.module_names}
        for module_name in list(self._hooks):
            if module_name not in needed:
                self._hooks.pop(module_name).remove()

    def clear(self) -> None:
        """Unloads every adapter and removes every hook."""
        for name in list(self._adapters):
            self.remove(name)

    # --- switches ---
    def set_scale(self, name: str, scale: float) -> None:
        """Sets the user scale (effective update = scale · alpha/r · B A x); touches no weight."""
        if not math.isfinite(scale):
            raise InvalidRequest("loras.scale", f"must be finite, got {scale}")
        self[name].scale = float(scale)

    def enable(self, name: str) -> None:
        self[name].enabled = True

    def disable(self, name: str) -> None:
        self[name].enabled = False

    def set_dropout_generators(self, generators: Sequence[torch.Generator] | None) -> None:
        """Per-item generators for training-time LoRA dropout (one per batch item; None: global RNG)."""
        self._dropout_generators = generators

    def activate(self, specs: Iterable[Any]) -> list[str]:
        """Makes exactly `specs` active: loads files not loaded yet (or changed on disk), sets their scales, and
        disables every other adapter. Each spec has `.path` and `.scale` (e.g. `pipeline.request.LoraSpec`).

        Returns:
            The adapter names, in spec order.
        """
        names: list[str] = []
        for spec in specs:
            name = str(Path(spec.path).resolve())
            if name in names:
                raise InvalidRequest("loras", f"adapter {spec.path!r} listed twice")
            if name in self._adapters and self._sources.get(name) != _file_identity(_weights_file(spec.path)):
                log.info("adapter %s changed on disk; reloading", name)
                self.remove(name)
            if name not in self._adapters:
                self.load(spec.path, name=name)
            self.set_scale(name, float(spec.scale))
            names.append(name)
        for adapter in self._adapters.values():
            adapter.enabled = adapter.name in names
        return names

    # --- export ---
    def save(self, name: str, dest: str | Path, *, base_model: str | None = None,
             dtype: torch.dtype | None = None) -> Path:
        """Exports one adapter as a PEFT folder (see `save_adapter`)."""
        return save_adapter(self[name], dest, base_model=base_model, dtype=dtype)

    def parameters(self, name: str) -> Iterator[nn.Parameter]:
        return self[name].parameters()

    # --- internals ---
    def _check_new_name(self, name: str) -> None:
        if not name:
            raise InvalidRequest("lora.name", "must not be empty")
        if name in self._adapters:
            raise InvalidRequest("lora.name", f"an adapter named {name!r} is already loaded")

    def _attach(self, adapter: LoraAdapter) -> LoraAdapter:
        self._adapters[adapter.name] = adapter
        modules = dict(self.root.named_modules())
        for module_name in adapter.module_names:
            if module_name not in self._hooks:
                self._hooks[module_name] = modules[module_name].register_forward_hook(self._make_hook(module_name))
        return adapter

    def _make_hook(self, module_name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            result = None
            for adapter in self._adapters.values():
                # Disabled or zero-scale adapters are skipped entirely: the output stays bit-identical.
                if not adapter.enabled or adapter.scale == 0 or module_name not in adapter.module_names:
                    continue
                update = adapter.layer(module_name)(args[0], adapter.config.dropout, self._dropout_generators)
                if adapter.scale != 1.0:
                    update = update * adapter.scale
                result = (output if result is None else result) + update.to(output.dtype)
            return result

        return hook


def apply_loras(root: nn.Module, specs: Iterable[Any]) -> list[str]:
    """Pipeline entry point: make exactly `specs` (objects with `.path`, `.scale`) active on `root`.

    Call before computing anything that goes through the adapted modules (including the cross-attention
    K/V cache). An empty `specs` disables every adapter (outputs then equal the base model bit for bit).
    """
    return AdapterSet.of(root).activate(specs)


# --------------------------------------------------------------------------------------------- files


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


def _weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return path / ADAPTER_WEIGHTS
    return path


def _file_identity(path: str | Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(str(path), "adapter weights not found" if not path.exists() else "not a regular file")
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


def _config_for(path: Path, weights: Path, metadata: Mapping[str, str]) -> tuple[LoraConfig | None, str | None]:
    """The adapter config from `adapter_config.json` next to the weights, else from diffusers header metadata."""
    config_path = (path if path.is_dir() else weights.parent) / ADAPTER_CONFIG
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(str(config_path), f"not a readable JSON file ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(str(config_path), "must hold a JSON object")
        return LoraConfig.from_peft_dict(data, source=str(config_path)), data.get("base_model_name_or_path")
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CheckpointError(str(weights), f"bad {DIFFUSERS_METADATA_KEY} header ({exc})") from exc
        prefix = DIFFUSERS_COMPONENT + "."
        peft = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix) or "." not in k}
        if isinstance(peft.get("target_modules"), list):
            peft["target_modules"] = [_from_diffusers_module(t) for t in peft["target_modules"]]
        for pat in ("rank_pattern", "alpha_pattern"):
            peft[pat] = {_from_diffusers_module(k): v for k, v in (peft.get(pat) or {}).items()}
        return LoraConfig.from_peft_dict(peft, source=f"{weights} [{DIFFUSERS_METADATA_KEY}]"), None
    return None, None


def read_adapter(path: str | Path) -> AdapterFile:
    """Reads an adapter (PEFT/official folder or file, or a diffusers-layout file) without touching a model.

    Without `adapter_config.json` or diffusers header metadata, alpha is taken equal to each module's rank
    (what diffusers assumes); this is logged.

    Raises:
        CheckpointError: missing/corrupt files, non-LoRA tensors, unpaired A/B, non-finite values.
    """
    path = Path(path)
    weights = _weights_file(path)
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
    config, base_model = _config_for(path, weights, metadata)
    if config is None:
        ranks = Counter(int(a.shape[0]) for a, _ in tensors.values())
        rank = ranks.most_common(1)[0][0]
        log.warning("%s has no adapter_config.json or LoRA header metadata: assuming alpha = rank", weights)
        config = LoraConfig(rank=rank, alpha=float(rank), dropout=0.0,
                            alpha_pattern={f"^{m}": float(a.shape[0]) for m, (a, _) in tensors.items()
                                           if int(a.shape[0]) != rank})
    return AdapterFile(config=config, tensors=tensors, weights_path=str(weights), layout=layout,
                       base_model=base_model)


def save_adapter(adapter: LoraAdapter, dest: str | Path, *, base_model: str | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Writes `dest/adapter_model.safetensors` + `dest/adapter_config.json` (PEFT layout; atomic per file).

    The safetensors header also carries diffusers' `lora_adapter_metadata`, so diffusers gets the true alpha.
    Ranks that differ from the config's default (e.g. after import) are written as `rank_pattern`.

    Args:
        adapter: The adapter to export.
        dest: Output folder (created).
        base_model: Recorded as `base_model_name_or_path`.
        dtype: Tensor dtype on disk (default: the adapter's).

    Returns:
        `dest`.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ranks = {m: adapter.layer(m).rank for m in adapter.module_names}
    common = Counter(ranks.values()).most_common(1)[0][0]
    cfg = adapter.config
    config = LoraConfig(rank=common, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=cfg.target_modules,
                        use_rslora=cfg.use_rslora,
                        rank_pattern={f"^{m}": r for m, r in ranks.items() if r != common},
                        alpha_pattern={f"^{m}": cfg.alpha_for(m) for m in adapter.module_names
                                       if cfg.alpha_for(m) != cfg.alpha})
    tensors = adapter.peft_state_dict()
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(config.to_diffusers_metadata(), sort_keys=True)}
    tmp = dest / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, dest / ADAPTER_WEIGHTS)
    tmp_cfg = dest / (ADAPTER_CONFIG + ".tmp")
    tmp_cfg.write_text(json.dumps(config.to_peft_dict(base_model), indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
    os.replace(tmp_cfg, dest / ADAPTER_CONFIG)
    return dest
