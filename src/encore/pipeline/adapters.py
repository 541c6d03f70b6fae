"""LoRA adapters on the DiT attention projections, at inference and in training (SPEC §13, FEATURES A6).

Adapters attach to a module tree (the DiT `decoder`) through forward hooks on the targeted `nn.Linear`s: the
base modules, their weights and the model's `state_dict` never change, and an adapter at scale 0 (or disabled)
is skipped, so the output is bit-identical to the base model. Several adapters can be active at once, each with
its own scale. File format: `encore.pipeline.adapter_format`. `Pipeline` uses `activate_request` / `release`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from encore.errors import CheckpointError, InvalidRequest
from encore.pipeline.adapter_format import (
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    LoraConfig,
    adapter_digest,
    file_identity,
    read_adapter,
    weights_file,
    write_adapter_files,
)

log = logging.getLogger(__name__)

_ATTR = "_encore_adapters"
CACHED_ADAPTERS = 4
"""File adapters `release` keeps loaded (disabled) after a request, most recently used first."""
SHORT_DIGEST = 12
"""Hex digits of the content hash recorded in output metadata."""
_GENERIC_NAMES = {"adapter"}
"""Path names that say nothing about the adapter (our export folder, PEFT's file); the parent is prepended."""


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
    digest: str | None = None
    """SHA-256 of the adapter's files (see `adapter_digest`); None for adapters not loaded from files."""


@dataclass(frozen=True)
class _Source:
    identity: tuple[str, int, int]
    digest: str


class AdapterSet:
    """The adapters attached to one module tree (normally `AceStepModel.decoder`).

    Use `AdapterSet.of(decoder)`; it is stored on the module, so every caller sees the same set. The set adds
    one forward hook per adapted `nn.Linear` and removes it when no adapter targets that module any more.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self._adapters: dict[str, LoraAdapter] = {}
        self._hooks: dict[str, RemovableHandle] = {}
        self._sources: dict[str, _Source] = {}
        self._last_used: dict[str, int] = {}
        self._uses = 0
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

    def digest(self, name: str) -> str | None:
        """SHA-256 (hex) of a file adapter's weights + config, None for one created with `add`."""
        self[name]
        source = self._sources.get(name)
        return None if source is None else source.digest

    def status(self) -> list[AdapterStatus]:
        out = []
        for a in self._adapters.values():
            source = self._sources.get(a.name)
            out.append(AdapterStatus(
                name=a.name, scale=a.scale, enabled=a.enabled, rank=a.config.rank, alpha=a.config.alpha,
                num_modules=len(a.module_names), num_parameters=sum(p.numel() for p in a.parameters()),
                source=None if source is None else source.identity[0],
                digest=None if source is None else source.digest))
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
        source = _Source(identity=file_identity(loaded.weights_path),
                         digest=adapter_digest(loaded.weights_path, loaded.config_path))
        adapter = self._attach(LoraAdapter(name, loaded.config, layers))
        adapter.requires_grad_(False)
        adapter.eval()
        self.set_scale(name, scale)
        self._sources[name] = source
        return adapter

    def remove(self, name: str) -> None:
        """Unloads an adapter; hooks nobody needs any more are removed."""
        self[name]
        del self._adapters[name]
        self._sources.pop(name, None)
        self._last_used.pop(name, None)
        needed = {m for a in self._adapters.values() for m in a.module_names}
        for module_name in list(self._hooks):
            if module_name not in needed:
                self._hooks.pop(module_name).remove()

    def clear(self) -> None:
        """Unloads every adapter and removes every hook."""
        for name in list(self._adapters):
            self.remove(name)

    def evict(self, keep: int) -> list[str]:
        """Unloads all but the `keep` most recently activated *disabled* file adapters; returns the removed names.

        Enabled adapters and adapters created with `add` are never evicted.
        """
        idle = [n for n in self._sources if not self._adapters[n].enabled]
        idle.sort(key=lambda n: self._last_used.get(n, -1), reverse=True)
        removed = idle[max(keep, 0):]
        for name in removed:
            self.remove(name)
        return removed

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

        Every file is checked before anything is switched: on error the previous state is unchanged (apart from
        newly loaded, still disabled adapters).

        Returns:
            The adapter names, in spec order.

        Raises:
            InvalidRequest: an adapter listed twice. CheckpointError: see `load`.
        """
        names: list[str] = []
        scales: list[float] = []
        for spec in specs:
            name = str(Path(spec.path).resolve())
            if name in names:
                raise InvalidRequest("loras", f"adapter {spec.path!r} listed twice")
            self._ensure_loaded(name, spec.path)
            names.append(name)
            scales.append(float(spec.scale))
        for name, scale in zip(names, scales):
            self.set_scale(name, scale)
            self._uses += 1
            self._last_used[name] = self._uses
        for adapter in self._adapters.values():
            adapter.enabled = adapter.name in names
        return names

    def _ensure_loaded(self, name: str, path: str | Path) -> None:
        source = self._sources.get(name)
        if source is not None and source.identity != file_identity(weights_file(path)):
            log.info("adapter %s changed on disk; reloading", name)
            self.remove(name)
        if name not in self._adapters:
            adapter = self.load(path, name=name)
            adapter.enabled = False  # switched on by `activate` once every listed file has loaded

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
    """Make exactly `specs` (objects with `.path`, `.scale`) active on `root`.

    Call before computing anything that goes through the adapted modules (including the cross-attention
    K/V cache). An empty `specs` disables every adapter (outputs then equal the base model bit for bit).
    """
    return AdapterSet.of(root).activate(specs)


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
    return write_adapter_files(tensors, config, dest, base_model=base_model)


# --------------------------------------------------------------------------------------------- per request


def display_name(path: str | Path) -> str:
    """A short human name for an adapter path: the folder (or file) name, with parents' names in front while
    the name is generic (`runs/mystyle/adapter/adapter_model.safetensors` -> `mystyle/adapter`)."""
    p = Path(path)
    if p.name == ADAPTER_WEIGHTS and p.parent.name:
        p = p.parent
    parts = [p.name or str(path)]
    while parts[0] in _GENERIC_NAMES and p.parent.name:
        p = p.parent
        parts.insert(0, p.name)
    return "/".join(parts)


def activate_request(root: nn.Module, specs: Sequence[Any]) -> list[dict[str, Any]]:
    """Makes exactly a request's `loras` active on `root` (the DiT decoder) and returns their ids.

    Every file is read and checked against `root` first; adapters stay cached between requests (keyed by path,
    mtime and size). Adapter parameters are created outside inference mode so a cached adapter stays usable by
    any caller. With no specs and nothing loaded, `root` is left untouched.

    Args:
        root: The module tree the adapter keys are relative to.
        specs: Objects with `.path` and `.scale` (`pipeline.request.LoraSpec`).

    Returns:
        Per spec `{"name", "scale", "sha256"}` (`name`: `display_name`; `sha256`: first `SHORT_DIGEST` hex
        digits of `adapter_digest`), for output metadata. The path itself stays in the request only.

    Raises:
        InvalidRequest: field ``loras[i].path``, naming the file and the problem (missing, not safetensors,
            truncated, not a LoRA, wrong shapes for this model, ...), or ``loras`` for a duplicate.
    """
    if not specs and _ATTR not in root.__dict__:
        return []
    adapters = AdapterSet.of(root)
    with torch.inference_mode(False):
        for i, spec in enumerate(specs):
            try:
                adapters._ensure_loaded(str(Path(spec.path).resolve()), spec.path)
            except CheckpointError as exc:
                raise InvalidRequest(f"loras[{i}].path", str(exc)) from exc
        names = adapters.activate(specs)
    return [{"name": display_name(spec.path), "scale": float(spec.scale),
             "sha256": (adapters.digest(name) or "")[:SHORT_DIGEST]} for spec, name in zip(specs, names)]


def release(root: nn.Module, *, keep: int = CACHED_ADAPTERS) -> None:
    """Disables every adapter on `root` (outputs equal the base model again) and unloads all but the `keep`
    most recently used file adapters."""
    adapters = root.__dict__.get(_ATTR)
    if adapters is None:
        return
    adapters.activate([])
    adapters.evict(keep)
