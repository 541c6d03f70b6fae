"""Shared machinery of the from-scratch recipes (VAE, DiT, planner, distillation): config base, step loop,
resumable safetensors + JSON checkpoints, the JSONL loss log, per-step RNG and a small CLI runner.

Every random draw of step `s` comes from generators seeded by `(seed, s, stream)`, so a run resumed from a
checkpoint after step `s` continues bit-for-bit like an uninterrupted one (no global RNG is touched).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from encore.errors import CheckpointError, InvalidRequest, NumericalError
from encore.training.checkpointing import (
    list_checkpoints,
    optimizer_from_flat,
    optimizer_to_flat,
    prune_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from encore.training.objectives import mix_seed

log = logging.getLogger(__name__)

LOSS_LOG = "loss_log.jsonl"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """Options every from-scratch recipe shares."""

    output_dir: str
    """Checkpoints (`checkpoints/step-NNNNNNN/`) and `loss_log.jsonl` go here."""
    max_steps: int = 1000
    """Optimizer steps of the whole run (a resumed run stops at the same step)."""
    seed: int = 0
    """Seeds initialisation and every per-step draw (data, crops, tasks, noise, timesteps)."""
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    """Linear warm-up of every learning rate over this many steps."""
    lr_schedule: str = "constant"
    """`constant` or `cosine` (decay to 10 % at `max_steps`)."""
    max_grad_norm: float | None = 1.0
    save_every_steps: int = 200
    """A resumable checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    log_every_steps: int = 1
    num_threads: int | None = None
    """`torch.set_num_threads` for the run (None leaves torch's default)."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise InvalidRequest(name, f"{msg}, got {getattr(self, name)!r}")

        need(bool(self.output_dir), "output_dir", "must not be empty")
        for name in ("max_steps", "batch_size", "save_every_steps", "log_every_steps"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "must be > 0")
        need(self.lr_schedule in ("constant", "cosine"), "lr_schedule", "must be constant or cosine")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")


C = TypeVar("C", bound=RecipeConfig)


def lr_factor(step: int, config: RecipeConfig) -> float:
    """Learning-rate multiplier of 0-based step `step`: warm-up, then constant or cosine down to 0.1."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """CPU generator for one random stream of one step; depends only on `(seed, step, stream)`."""
    return torch.Generator("cpu").manual_seed(mix_seed(seed, step, stream))


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a (nested) config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def module_tensors(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """`{name}.{state key}` -> tensor for several modules (what a checkpoint's `model.safetensors` holds)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            value = value.detach().cpu().contiguous()
            if value.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
                value = value.clone()
            seen.add(value.data_ptr())
            out[f"{name}.{key}"] = value
    return out


def load_module_tensors(
    modules: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor], path: str
) -> None:
    """Inverse of `module_tensors`; every key must match exactly (names and shapes)."""
    for name, module in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise CheckpointError(path, f"module {name!r}: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    path, f"shape {list(value.shape)} != {list(expected[key].shape)}", f"{prefix}{key}"
                )
        module.load_state_dict(state)


class Recipe(ABC, Generic[C]):
    """torchtune-style recipe: `setup()`, `train()`, `save_checkpoint()`, `cleanup()`.

    Subclasses implement `build()` (models, optimizers, data), `train_step(step)` (one optimizer step,
    returning scalar logs) and declare what a checkpoint holds via `checkpoint_modules()` and
    `checkpoint_optimizers()`. `setup()` resumes from the newest checkpoint in `output_dir` if there is one.
    """

    name = "recipe"

    def __init__(self, config: C) -> None:
        self.config = config
        self.step = 0
        self.output_dir = Path(config.output_dir)
        self.device = torch.device(config.device)
        self.history: list[dict[str, float]] = []
        """Logged rows of this process (also appended to `loss_log.jsonl`)."""
        self._base_lrs: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ subclass API
    @abstractmethod
    def build(self) -> None:
        """Builds models, optimizers and data sources (called once by `setup`)."""

    @abstractmethod
    def train_step(self, step: int) -> dict[str, float]:
        """Runs optimizer step `step` (0-based) and returns scalars to log (must include `loss`)."""

    @abstractmethod
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """Modules whose state a checkpoint stores, by prefix."""

    @abstractmethod
    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers whose state a checkpoint stores, by name."""

    def extra_state(self) -> dict[str, Any]:
        """Recipe-specific JSON state saved with each checkpoint."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restores what `extra_state` returned."""

    # ------------------------------------------------------------------ protocol
    def setup(self) -> None:
        """Builds everything and resumes from the newest checkpoint in `output_dir`, if any."""
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.build()
        for name, opt in self.checkpoint_optimizers().items():
            self._base_lrs[name] = [float(g["lr"]) for g in opt.param_groups]
        found = list_checkpoints(self.output_dir)
        if found:
            self.load_checkpoint(found[-1])
        self._trim_log()

    def train(self) -> list[dict[str, float]]:
        """Runs steps until `max_steps`, logging and checkpointing; returns this call's log rows."""
        cfg = self.config
        rows: list[dict[str, float]] = []
        last_saved = self.step
        while self.step < cfg.max_steps:
            self._set_lrs(self.step)
            start = time.perf_counter()
            scalars = self.train_step(self.step)
            if not math.isfinite(scalars.get("loss", float("nan"))):
                raise NumericalError(f"{self.name}: non-finite loss at step {self.step}: {scalars}")
            self.step += 1
            row = {"step": float(self.step), **scalars, "seconds": time.perf_counter() - start}
            rows.append(row)
            self.history.append(row)
            if self.step % cfg.log_every_steps == 0 or self.step == cfg.max_steps:
                self._append_log(row)
            if self.step % cfg.save_every_steps == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
                last_saved = self.step
        if last_saved != self.step:
            self.save_checkpoint()
        return rows

    def save_checkpoint(self) -> Path:
        """Writes `checkpoints/step-NNNNNNN/` (weights, flattened optimizer state, JSON state) atomically."""
        tensors: dict[str, torch.Tensor] = {}
        groups: dict[str, list[dict[str, Any]]] = {}
        for name, opt in self.checkpoint_optimizers().items():
            flat, param_groups = optimizer_to_flat(opt.state_dict())
            tensors.update({f"{name}/{k}": v for k, v in flat.items()})
            groups[name] = param_groups
        state = {
            "recipe": self.name,
            "step": self.step,
            "config": config_dict(self.config),
            "optimizer_groups": groups,
            "extra": self.extra_state(),
        }
        weights = module_tensors(self.checkpoint_modules())

        def write_weights(folder: Path) -> None:
            from safetensors.torch import save_file

            save_file(weights, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

        folder = self.output_dir / "checkpoints" / f"step-{self.step:07d}"
        write_checkpoint(folder, state, tensors, write_weights)
        prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        log.info("%s: saved %s", self.name, folder)
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restores weights, optimizer state, step and extra state from a checkpoint folder."""
        from safetensors.torch import load_file

        loaded = read_checkpoint(folder)
        if loaded.state.get("recipe") != self.name:
            raise CheckpointError(
                str(folder), f"checkpoint of recipe {loaded.state.get('recipe')!r}, not {self.name!r}"
            )
        weights_path = Path(folder) / WEIGHTS_NAME
        load_module_tensors(self.checkpoint_modules(), load_file(str(weights_path)), str(weights_path))
        for name, opt in self.checkpoint_optimizers().items():
            prefix = f"{name}/"
            flat = {k[len(prefix) :]: v for k, v in loaded.tensors.items() if k.startswith(prefix)}
            opt.load_state_dict(optimizer_from_flat(flat, loaded.state["optimizer_groups"][name]))
        self.step = int(loaded.state["step"])
        self.load_extra_state(loaded.state.get("extra", {}))
        log.info("%s: resumed from %s at step %d", self.name, folder, self.step)

    def cleanup(self) -> None:
        """Releases memory-heavy references (data, models)."""
        self.history = []

    # ------------------------------------------------------------------ helpers
    def _set_lrs(self, step: int) -> None:
        factor = lr_factor(step, self.config)
        for name, opt in self.checkpoint_optimizers().items():
            for group, base in zip(opt.param_groups, self._base_lrs[name], strict=True):
                group["lr"] = base * factor

    def clip_gradients(self, params: Sequence[torch.Tensor] | Iterator[torch.Tensor]) -> float:
        """Clips the global gradient norm to `max_grad_norm` (if set) and returns the pre-clip norm."""
        params = [p for p in params if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.config.max_grad_norm or float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _append_log(self, row: Mapping[str, float]) -> None:
        with open(self.output_dir / LOSS_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"recipe": self.name, **row}, sort_keys=True) + "\n")

    def _trim_log(self) -> None:
        # Rows logged after the checkpoint we resumed from would be repeated by the resumed run.
        path = self.output_dir / LOSS_LOG
        if not path.is_file():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= self.step
        ]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_loss_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of `loss_log.jsonl` in `output_dir`."""
    path = Path(output_dir) / LOSS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_cli(config_cls: type[C], recipe_cls: type[Recipe[C]], argv: Sequence[str] | None = None) -> int:
    """Runs `python -m encore.training.recipes.<name> [--config file.toml] key=value ...` to the end."""
    from encore.training.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    path = None
    if args[:1] == ["--config"]:
        if len(args) < 2:
            raise InvalidRequest("config", "--config needs a file")
        path, args = args[1], args[2:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(config_cls, path, args)  # type: ignore[type-var]
    recipe = recipe_cls(config)
    recipe.setup()
    rows = recipe.train()
    recipe.cleanup()
    if rows:
        log.info("%s: finished at step %d, last loss %.5f", recipe.name, recipe.step, rows[-1]["loss"])
    return 0
