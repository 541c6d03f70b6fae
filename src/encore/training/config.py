"""Training configuration: `TrainConfig` (shared by every recipe) and `LoraTrainConfig`, plus TOML loading.

A config is one flat, frozen dataclass; `load_config(path, overrides)` reads a TOML file and `key=value`
overrides (values in TOML syntax, bare words as strings) and refuses unknown keys. Defaults follow the official
LoRA trainer (rank 64, alpha 128, dropout 0.1, lr 1e-4).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from encore.errors import InvalidRequest
from encore.training.lora import DEFAULT_TARGET_MODULES, LoraConfig
from encore.training.objectives import CFG_DROPOUT

Precision = Literal["fp32", "bf16"]
LrSchedule = Literal["constant", "cosine"]
Padding = Literal["batch", "dataset"]
_C = TypeVar("_C", bound="TrainConfig")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options every training recipe shares."""

    # --- inputs / outputs ---
    checkpoint: str
    """Base model: checkpoint folder or preset name (see `encore.pipeline.loading.resolve_checkpoint`)."""
    dataset: str
    """Dataset manifest (`encore dataset build` output) or a latent folder / its `index.json`."""
    output_dir: str
    """Checkpoints, logs and the exported adapter go here."""
    latents_dir: str | None = None
    """Where to cache latents when `dataset` is a manifest without them (default: `<output_dir>/latents`)."""
    preservation_dataset: str | None = None
    """Optional second manifest / latent folder of *other* music with its own captions, mixed into every
    micro-batch (prior preservation): the adapter then learns what the activation tag means instead of turning
    every prompt into the new style."""
    preservation_batch_size: int = 0
    """Preservation items per global micro-batch (drawn at random, with replacement); required with
    `preservation_dataset`."""

    # --- run ---
    seed: int = 42
    """Seeds adapter init, data order, noise, timesteps, condition dropout and LoRA dropout."""
    device: str = "auto"
    precision: Precision = "fp32"
    """fp32, or bf16: base weights in bf16 with bf16 autocast; trainable weights and optimizer stay fp32."""

    # --- batches and steps ---
    batch_size: int = 1
    """Global micro-batch (all processes together); must be divisible by the number of processes."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x this)."""
    max_steps: int | None = None
    """Optimizer steps; None: `num_epochs` full passes."""
    num_epochs: int = 100
    crop_frames: int | None = None
    """Random crop of each clip to this many latent frames (None: whole clips)."""
    padding: Padding = "batch"
    """`batch`: pad to the batch's longest clip/condition (official). `dataset`: pad every item to `crop_frames`
    (or the longest clip) and to the longest condition, so an item's loss never depends on its batch mates and
    runs on any number of processes give the same curve (costs compute when clip lengths vary)."""

    # --- optimizer ---
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    """Linear warm-up from 0 to `learning_rate` over this many steps."""
    lr_schedule: LrSchedule = "constant"
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (None: no clipping)."""

    # --- objective (SPEC §9.1) ---
    cfg_dropout: float = CFG_DROPOUT
    timestep_mu: float = -0.4
    timestep_sigma: float = 1.0

    # --- checkpoints and logs ---
    save_every_steps: int | None = None
    """Write a resumable checkpoint every N optimizer steps (and always at the end)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept on disk (0 keeps all)."""
    log_every_steps: int = 1
    resume: str | None = None
    """`latest` (newest checkpoint in output_dir) or a checkpoint folder."""
    plot: bool = True
    """Write `loss.png` when matplotlib is installed."""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise InvalidRequest(name, f"{msg}, got {getattr(self, name)!r}")

        for name in ("checkpoint", "dataset", "output_dir"):
            need(bool(getattr(self, name)), name, "must not be empty")
        need(self.precision in ("fp32", "bf16"), "precision", "must be fp32 or bf16")
        need(self.lr_schedule in ("constant", "cosine"), "lr_schedule", "must be constant or cosine")
        need(self.padding in ("batch", "dataset"), "padding", "must be batch or dataset")
        for name in ("batch_size", "gradient_accumulation_steps", "num_epochs", "log_every_steps"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need((self.preservation_dataset is None) == (self.preservation_batch_size == 0), "preservation_batch_size",
             "must be >= 1 exactly when preservation_dataset is set")
        need(self.preservation_batch_size >= 0, "preservation_batch_size", "must be >= 0")
        for name in ("max_steps", "crop_frames", "save_every_steps"):
            value = getattr(self, name)
            need(value is None or value >= 1, name, "must be >= 1 or null")
        need(self.keep_checkpoints >= 0 and self.warmup_steps >= 0, "keep_checkpoints", "must be >= 0")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1", "betas must be in [0, 1)")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")
        need(0.0 <= self.cfg_dropout <= 1.0, "cfg_dropout", "must be in [0, 1]")
        need(self.timestep_sigma > 0, "timestep_sigma", "must be > 0")


@dataclass(frozen=True, kw_only=True)
class LoraTrainConfig(TrainConfig):
    """`encore train lora`: a LoRA adapter on the DiT attention (FEATURES A6)."""

    rank: int = 64
    alpha: float = 128.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    """DiT module names to adapt (default: q/k/v/o projections of self- and cross-attention)."""
    use_rslora: bool = False
    adapter_name: str = "default"

    def lora_config(self) -> LoraConfig:
        return LoraConfig(rank=self.rank, alpha=self.alpha, dropout=self.lora_dropout,
                          target_modules=tuple(self.target_modules), use_rslora=self.use_rslora)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        self.lora_config()  # validates rank / alpha / dropout / targets


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare words are strings: `device=cpu`


def _coerce(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise InvalidRequest(key, f"unknown {cls.__name__} option (known: {', '.join(sorted(fields))})")
        if isinstance(value, list):
            value = tuple(value)
        if value == "null" or value == "none":
            value = None
        out[key] = value
    return out


def load_config(cls: type[_C], path: str | Path | None = None, overrides: Sequence[str] = (),
                **values: Any) -> _C:
    """Builds a config from a TOML file, then `key=value` overrides, then keyword values (last wins).

    Raises:
        InvalidRequest: unknown key, malformed override, unreadable file or invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest("config", f"cannot read {path}: {exc}") from exc
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest("config", f"override {item!r} is not key=value")
        data[key.strip()] = _parse_value(text.strip())
    data.update({k: v for k, v in values.items() if v is not None})
    try:
        return cls(**_coerce(cls, data))
    except TypeError as exc:  # missing required field
        raise InvalidRequest("config", str(exc)) from exc


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON/TOML-friendly dict of a config (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
