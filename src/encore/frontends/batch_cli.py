"""`encore batch`: many requests from a JSONL file, one model load, a manifest that makes reruns cheap.

Each line of the jobs file is a request in the schema `--print-request` writes (a sidecar's ``{"request": ...}``
also works), optionally with a ``"name"`` for its output files. Every item gets a line in
``OUT/manifest.jsonl`` with its status (``ok``, ``failed`` or ``skipped``), its files, seeds and time, or its
error code and message. A rerun skips an item whose content hash (the request, as validated, plus the model)
has an ``ok`` line whose files all still exist, so an interrupted or partly failed batch is resumed by running
the same command again (a request without seeds draws them once; the manifest records them). One bad item does
not stop the others; the exit code says whether any failed (RELIABILITY R12).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from encore.errors import AudioError, CheckpointError, EncoreError, InvalidRequest, NumericalError

EXIT_SOME_FAILED = 6
MANIFEST = "manifest.jsonl"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from encore.frontends.cli import EXIT_CODES_HELP, add_run_options

    p = subparsers.add_parser(
        "batch", help="Generate every request of a JSONL file, with a manifest; reruns skip finished items.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{EXIT_CODES_HELP} Batch: {EXIT_SOME_FAILED} when any item failed (see the manifest).")  # fmt: skip
    p.add_argument("jobs", type=Path, help="JSONL file: one request per line (blank lines and # comments skipped).")
    add_run_options(p)
    p.set_defaults(func=run_batch)


def content_hash(request: dict[str, Any], model: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the validated request and the model identity, as canonical JSON."""
    text = json.dumps({"request": request, "model": model}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_jobs(path: Path) -> Iterator[tuple[int, dict[str, Any] | EncoreError]]:
    """(line number, request data or the error that line makes) for every non-blank, non-comment line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest("jobs", f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            yield number, InvalidRequest(f"line {number}", f"not JSON ({exc})")
            continue
        if isinstance(data, dict) and isinstance(data.get("request"), dict):
            data = {**data["request"], **({"name": data["name"]} if "name" in data else {})}
        if not isinstance(data, dict):
            yield number, InvalidRequest(f"line {number}", "expected a JSON object")
            continue
        yield number, data


def finished(manifest: Path) -> dict[str, list[str]]:
    """Content hash -> files of every ``ok`` line of a manifest whose files all exist (unreadable lines are
    ignored: a line cut by a crash only costs a rerun of its item)."""
    done: dict[str, list[str]] = {}
    if not manifest.is_file():
        return done
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        files = entry.get("files")
        if entry.get("status") in ("ok", "skipped") and isinstance(files, list) and files and all(
            isinstance(f, str) and (manifest.parent / f).is_file() for f in files
        ):
            done[str(entry.get("hash"))] = files
    return done


def error_code(exc: BaseException) -> str:
    """The manifest's error code of an item's failure."""
    for cls, code in ((InvalidRequest, "invalid_request"), (AudioError, "audio"), (CheckpointError, "checkpoint"),
                      (NumericalError, "numerical")):  # fmt: skip
        if isinstance(exc, cls):
            return code
    return "error"


def _close_cut_line(manifest: Path) -> None:
    """End a line a crash left unfinished, so the next entry starts a line of its own."""
    if manifest.is_file() and manifest.stat().st_size:
        with manifest.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _append(manifest: Path, entry: dict[str, Any]) -> None:
    # One line per item, on disk before the next item starts: a crash loses at most the item in flight.
    with manifest.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_batch(args: argparse.Namespace) -> int:
    from encore.frontends.cli import EXIT_OK, load_pipeline
    from encore.pipeline.output import output_paths, write_outputs
    from encore.pipeline.request import kind_of, request_from_dict, request_to_dict

    out = args.output
    if out is None or (out.exists() and not out.is_dir()):
        raise InvalidRequest("--output", "batch writes into a folder: give -o FOLDER (created if missing)")
    jobs = list(read_jobs(args.jobs))
    if not jobs:
        raise InvalidRequest("jobs", f"{args.jobs} holds no request")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    done = finished(manifest)
    _close_cut_line(manifest)
    pipeline = load_pipeline(args)
    model = {k: v for k, v in pipeline.model_info().items() if k != "loras"}
    paths = getattr(pipeline.components, "paths", None)
    model["root"] = str(Path(paths.root).resolve()) if paths is not None else None
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    names: dict[str, int] = {}
    for number, data in jobs:
        entry: dict[str, Any] = {"line": number}
        start = time.perf_counter()
        try:
            if isinstance(data, EncoreError):
                raise data
            name = data.pop("name", None)
            if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
                raise InvalidRequest("name", "use 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                                             "or digit")  # fmt: skip
            if name is not None and names.setdefault(name, number) != number:
                raise InvalidRequest("name", f"{name!r} is already the name of line {names[name]}")
            request = request_from_dict(data)
            digest = content_hash(request_to_dict(request), model)
            entry.update(name=name, hash=digest)
            if digest in done:
                entry.update(status="skipped", files=done[digest])
            else:
                result = pipeline.generate(request)
                paths = output_paths(out / f"{name or digest}.{request.output.format}", kind=kind_of(request.task),
                                     seeds=result.seeds, fmt=request.output.format)  # fmt: skip
                written = write_outputs(result, paths)
                entry.update(status="ok", files=[p.name for p in written], seeds=list(result.seeds))
                done[digest] = entry["files"]
        except Exception as exc:  # noqa: BLE001 - every failure is the item's, recorded; the batch goes on
            entry.update(status="failed", error={"code": error_code(exc), "type": type(exc).__name__,
                                                 "field": getattr(exc, "field", None), "message": str(exc)})
        entry["seconds"] = round(time.perf_counter() - start, 3)
        _append(manifest, entry)
        counts[entry["status"]] += 1
        if not (args.quiet or args.json):
            what = ", ".join(entry.get("files", [])) or entry.get("error", {}).get("message", "")
            print(f"line {number}: {entry['status']} {what}".rstrip())
    summary = {"ok": not counts["failed"], "manifest": str(manifest), **counts}
    print(json.dumps(summary) if args.json else
          f"{counts['ok']} generated, {counts['skipped']} skipped, {counts['failed']} failed; see {manifest}")
    return EXIT_OK if not counts["failed"] else EXIT_SOME_FAILED
