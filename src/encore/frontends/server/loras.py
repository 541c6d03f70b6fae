"""The LoRA adapters a server offers: the entries of `settings.lora_dir`, described from their JSON config and
safetensors header only (no torch, no tensor data read). Clients see adapter names; paths never leave the server.

An entry is a folder holding `adapter_model.safetensors` (+ `adapter_config.json`), what `encore train lora`
exports, or a single `.safetensors` file (diffusers layout). The file names mirror
`encore.pipeline.adapter_format`, which the front-ends cannot import (it needs torch); a test checks they agree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LORA_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
"""Adapter names clients may send: no separators and no leading dot, so a name is a direct child of the folder."""

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
DIFFUSERS_PREFIX = "transformer."
MAX_LISTED = 256
"""Most adapters one listing describes (sorted by name); a folder with more is cut, with a warning."""
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A larger safetensors header is refused rather than read (LoRA headers are a few hundred KiB at most)."""
MAX_CONFIG_BYTES = 1024 * 1024
_DIFFUSERS_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}
_LORA_A = re.compile(r"\.lora_A(?:\.[A-Za-z0-9_\-]+)?\.weight$")


class AdapterInfoError(Exception):
    """An adapter entry that cannot be described; the message names the file inside the entry, never a path."""


def adapter_kind(path: Path) -> str | None:
    """"folder" or "file" when `path` is an adapter entry the pipeline can load, else None."""
    if path.is_dir():
        return "folder" if (path / ADAPTER_WEIGHTS).is_file() else None
    if path.is_file() and path.suffix == ".safetensors":
        return "file"
    return None


def find_adapter(lora_dir: str | None, name: str) -> Path | None:
    """`lora_dir/name` when `name` is a valid adapter name and that entry is an adapter, else None.

    The result is always a direct child of `lora_dir` (see `LORA_NAME_PATTERN`).
    """
    if not lora_dir or not re.match(LORA_NAME_PATTERN, name):
        return None
    path = Path(lora_dir) / name
    return path if adapter_kind(path) else None


def list_adapters(lora_dir: str | None) -> dict[str, Any]:
    """The `GET /v1/loras` body (`schemas.LoraList`): ``{"enabled", "loras": [LoraInfo, ...]}`` sorted by name.

    Entries whose names a request could not carry (see `LORA_NAME_PATTERN`) are left out. An entry whose
    config or header cannot be read is listed with `error` set, so a broken adapter is visible, not hidden.
    """
    if not lora_dir:
        return {"enabled": False, "loras": []}
    try:
        names = sorted(e.name for e in os.scandir(lora_dir) if re.match(LORA_NAME_PATTERN, e.name))
    except OSError as exc:
        logger.warning("cannot list the LoRA folder: %s", exc)
        return {"enabled": True, "loras": []}
    out = []
    for name in names:
        path = Path(lora_dir) / name
        kind = adapter_kind(path)
        if kind is None:
            continue
        if len(out) == MAX_LISTED:
            logger.warning("the LoRA folder holds more than %d adapters; listing the first ones", MAX_LISTED)
            break
        out.append(describe(path, kind))
    return {"enabled": True, "loras": out}


def describe(path: Path, kind: str) -> dict[str, Any]:
    """One `schemas.LoraInfo` for adapter entry `path` ("folder" or "file")."""
    weights = path / ADAPTER_WEIGHTS if kind == "folder" else path
    # the pipeline reads adapter_config.json next to the weights file (adapter_format._config_for)
    config_file = weights.parent / ADAPTER_CONFIG
    info: dict[str, Any] = {"name": path.name, "kind": kind, "size_bytes": 0, "modules": None, "rank": None,
                            "alpha": None, "target_modules": None, "error": None}
    try:
        info["size_bytes"] = weights.stat().st_size + (config_file.stat().st_size if config_file.is_file() else 0)
        tensors, metadata = read_header(weights)
        ranks = Counter(_rows(v) for k, v in tensors.items() if _LORA_A.search(k))
        info["modules"] = sum(ranks.values())
        config = _read_config(config_file) if config_file.is_file() else _header_config(metadata)
        if config is not None:
            info.update(config)
        elif ranks:  # no recorded config: the pipeline then takes alpha = rank
            info["rank"] = ranks.most_common(1)[0][0]
    except AdapterInfoError as exc:
        info["error"] = str(exc)
    except OSError as exc:
        info["error"] = f"cannot read the adapter ({exc.strerror or type(exc).__name__})"
    return info


def read_header(weights: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(tensor name -> {"dtype", "shape", "data_offsets"}, `__metadata__`) of a safetensors file.

    Format: an 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes; the file must be
    exactly as long as the header says, so a truncated file is caught here.
    """
    label = weights.name
    with open(weights, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise AdapterInfoError(f"{label}: not a safetensors file (too short)")
        size = int.from_bytes(head, "little")
        if size > MAX_HEADER_BYTES:
            raise AdapterInfoError(f"{label}: not a safetensors file (header of {size} bytes)")
        raw = fh.read(size)
        total = os.fstat(fh.fileno()).st_size
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterInfoError(f"{label}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise AdapterInfoError(f"{label}: not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise AdapterInfoError(f"{label}: bad header entry for {key!r}")
        end = max(end, offsets[1])
    if 8 + size + end != total:
        raise AdapterInfoError(f"{label}: truncated or padded ({total} bytes, the header says {8 + size + end})")
    return header, metadata if isinstance(metadata, dict) else {}


def _rows(entry: dict[str, Any]) -> int:
    """Leading dimension of a header entry's shape (the rank, for a `lora_A` matrix `[r, in]`)."""
    shape = entry.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise AdapterInfoError("a lora_A tensor in the header is not a 2-D matrix")
    return int(shape[0])


def _read_config(config_file: Path) -> dict[str, Any]:
    label = config_file.name
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterInfoError(f"{label}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterInfoError(f"{label}: not a readable JSON file") from None
    if not isinstance(data, dict):
        raise AdapterInfoError(f"{label}: must hold a JSON object")
    return _summary(data, label)


def _header_config(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The config diffusers stores in the safetensors header (keys prefixed `transformer.`), if any."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise AdapterInfoError(f"{ADAPTER_WEIGHTS}: bad {DIFFUSERS_METADATA_KEY} header") from None
    if not isinstance(data, dict):
        raise AdapterInfoError(f"{ADAPTER_WEIGHTS}: bad {DIFFUSERS_METADATA_KEY} header")
    data = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in data.items()}
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = [_from_diffusers(str(t)) for t in data["target_modules"]]
    return _summary(data, f"{DIFFUSERS_METADATA_KEY} header")


def _summary(data: dict[str, Any], label: str) -> dict[str, Any]:
    """rank / alpha / target_modules of a PEFT-style config dict (alpha defaults to r, as PEFT's does)."""
    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterInfoError(f"{label}: peft_type {data.get('peft_type')!r} is not supported (only LORA)")
    rank, alpha, targets = data.get("r", 8), data.get("lora_alpha", data.get("r", 8)), data.get("target_modules")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterInfoError(f"{label}: r must be a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise AdapterInfoError(f"{label}: lora_alpha must be a positive number")
    if isinstance(targets, str):
        targets = ["re:" + targets]  # PEFT's regex form, written like `LoraConfig.target_modules`
    elif not (targets is None or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise AdapterInfoError(f"{label}: target_modules must be a list of names or a regex")
    return {"rank": rank, "alpha": float(alpha), "target_modules": targets}


def _from_diffusers(name: str) -> str:
    for new, old in _DIFFUSERS_NAMES.items():
        if name == new or name.endswith("." + new):
            return name[: len(name) - len(new)] + old
    return name
