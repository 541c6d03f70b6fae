"""Resumable training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder `checkpoints/step-NNNNNNN/` holds the adapter (PEFT layout, usable as-is), the optimizer
state and RNG states (`training_state.safetensors`) and `trainer_state.json` (step, epoch, config, optimizer
param groups). Folders are written under a temporary name and renamed, so a crash never leaves a half checkpoint
that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encore.errors import CheckpointError

STATE_FORMAT = "encore-train-state"
STATE_VERSION = 1
TENSORS_NAME = "training_state.safetensors"
STATE_NAME = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d{7})$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def optimizer_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """`optimizer.state_dict()` -> (tensors keyed `optimizer.state.<param>.<name>`, JSON param groups)."""
    tensors: dict[str, torch.Tensor] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optimizer.state.{index}.{name}"] = tensor.detach().cpu().contiguous()
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Inverse of `optimizer_to_flat` (ready for `optimizer.load_state_dict`)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optimizer.state."):
            continue
        index, name = key[len("optimizer.state."):].split(".", 1)
        state.setdefault(int(index), {})[name] = value
    param_groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": param_groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    """Global torch RNG states (CPU and every CUDA device) as uint8 tensors."""
    out = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor]) -> None:
    """Restores what `rng_tensors` saved (CUDA states only when the device count matches)."""
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass(frozen=True)
class LoadedCheckpoint:
    folder: Path
    state: dict[str, Any]
    """`trainer_state.json` content."""
    tensors: dict[str, torch.Tensor]
    """`training_state.safetensors` content."""


def write_checkpoint(folder: Path, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     write_adapter: Any) -> Path:
    """Writes a checkpoint folder atomically.

    Args:
        folder: Final folder (replaced if it exists).
        state: JSON-serialisable trainer state.
        tensors: Optimizer/RNG tensors.
        write_adapter: Callable `(tmp_folder) -> None` that exports the adapter into the folder.
    """
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_adapter(tmp)
    save_file(dict(tensors), str(tmp / TENSORS_NAME), metadata={"format": "pt"})
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **dict(state)}
    (tmp / STATE_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def read_checkpoint(folder: str | Path) -> LoadedCheckpoint:
    """Reads `trainer_state.json` and `training_state.safetensors` of a checkpoint folder.

    Raises:
        CheckpointError: missing/corrupt files or an unknown format.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(str(folder / STATE_NAME), f"not a readable trainer state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise CheckpointError(str(folder / STATE_NAME), f"not an {STATE_FORMAT} v{STATE_VERSION} file")
    try:
        tensors = load_file(str(folder / TENSORS_NAME))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(str(folder / TENSORS_NAME), f"not a readable state file ({exc})") from exc
    return LoadedCheckpoint(folder=folder, state=state, tensors=tensors)


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Deletes all but the newest `keep` checkpoints (`keep=0` keeps everything)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)
