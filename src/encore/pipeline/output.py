"""Writing a `GenerationResult` to audio files: names, embedded metadata and all-or-nothing batches.

Each file carries its own reproduction recipe (the resolved request narrowed to that item's seed, the model
and LoRA ids, task, caption and lyrics) as a metadata tag plus a JSON sidecar, through `encore.audio.io`,
which writes each file to a temporary name and renames it. A batch is all-or-nothing: if any item fails, the
items already written are removed again, so an error never leaves partial output behind.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from encore.errors import InvalidRequest
from encore.pipeline.request import GenerationResult

log = logging.getLogger(__name__)

SUFFIX_OF_FORMAT = {"flac": ".flac", "wav": ".wav", "mp3": ".mp3", "ogg": ".ogg"}


def output_paths(output: str | Path | None, *, kind: str, seeds: Sequence[int], fmt: str) -> list[Path]:
    """Where each item of a result goes.

    Args:
        output: None (current folder, default names), an existing folder (default names inside it), or a
            file name; a batch adds ``-1``, ``-2``, ... before the suffix. A name without suffix gets `fmt`'s.
        kind: Task wire name (``text2music``), used in default names.
        seeds: Per-item seeds, used in default names.
        fmt: Output format (``flac``, ``wav``, ``mp3``, ``ogg``).

    Raises:
        InvalidRequest: the name's suffix contradicts `fmt`.
    """
    suffix = SUFFIX_OF_FORMAT[fmt]
    folder: Path | None = None
    if output is None:
        folder = Path.cwd()
    elif Path(output).is_dir() or str(output).endswith(("/", "\\")):
        folder = Path(output)
    if folder is not None:
        return [folder / f"encore-{kind}-{seed}{suffix}" for seed in seeds]
    path = Path(output)  # type: ignore[arg-type]
    if not path.suffix:
        path = path.with_suffix(suffix)
    elif path.suffix.lower() != suffix:
        raise InvalidRequest("output.format", f"output name {path.name} does not end in {suffix} (format {fmt})")
    if len(seeds) == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix}") for i in range(len(seeds))]


def item_metadata(result: GenerationResult, index: int) -> dict[str, Any]:
    """Metadata embedded in item `index`'s file: enough to regenerate that file alone.

    The recorded request is the resolved one with ``batch_size`` 1 and that item's seed, so
    ``encore <task> --request file.json`` (or `request_from_dict(meta["request"])`) reproduces it.
    """
    params = copy.deepcopy(result.params)
    request = params.pop("request", {})
    seed = int(result.seeds[index])
    request["batch_size"] = 1
    request["seeds"] = [seed]
    text = request.get("text", {})
    model = params.get("model", {})
    normalization = params.pop("normalization", None)
    params.pop("seeds", None)
    return {
        "encore_version": params.pop("encore_version", None),
        "task": params.pop("task", None),
        "caption": text.get("caption"),
        "lyrics": text.get("lyrics"),
        "seed": seed,
        "model": model.get("variant"),
        "checkpoint": model.get("checkpoint"),
        "loras": _lora_ids(model, request),
        "item": index,
        "request": request,
        "normalization": normalization[index] if isinstance(normalization, list) else normalization,
        "params": params,
    }


def _lora_ids(model: dict[str, Any], request: dict[str, Any]) -> list[dict[str, Any]]:
    """`{"name", "scale", "sha256"}` per adapter as the pipeline recorded it (the request keeps the paths);
    results that carry no ids fall back to the request's `{"path", "scale"}`."""
    recorded = model.get("loras")
    if recorded is None:
        return [dict(lora) for lora in request.get("loras", [])]
    return [dict(lora) for lora in recorded]


def write_outputs(result: GenerationResult, paths: Sequence[Path]) -> list[Path]:
    """Writes every item of `result` to `paths` (one per item, format from the suffix), or nothing at all.

    Args:
        result: From `Pipeline.generate` (`audio [B, 2, S]`).
        paths: From `output_paths`.

    Returns:
        The written paths (also stored in `result.paths`).

    Raises:
        AudioError / NumericalError: an item could not be written; items already written are removed.
    """
    from encore.audio import io

    if len(paths) != result.audio.shape[0]:
        raise ValueError(f"{len(paths)} paths for {result.audio.shape[0]} items")
    if len(set(paths)) != len(paths):
        raise InvalidRequest("output", "two items would be written to the same file")
    written: list[Path] = []
    try:
        for i, path in enumerate(paths):
            io.save_audio(path, result.audio[i], result.sample_rate, metadata=item_metadata(result, i))
            written.append(Path(path))
    except BaseException:
        for path in written:  # all or nothing: a failed batch leaves no files
            for leftover in (path, io.sidecar_path(path)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        raise
    result.paths = [str(p) for p in written]
    log.info("wrote %s", ", ".join(result.paths))
    return written
