"""Worker process: owns one pipeline, leases jobs from the store, runs them and writes outputs atomically.

Started by the supervisor as ``python -m encore.frontends.server.worker --id ID`` with the settings in the
environment. A heartbeat thread renews the lease, publishes progress, and turns client cancels, lost leases and
deadlines into the pipeline's cancel token. This is the only server process that may import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from encore.errors import AudioError, Cancelled, CheckpointError, EncoreError, InvalidRequest, NumericalError
from encore.frontends.server.loras import find_adapter
from encore.frontends.server.settings import ServerSettings
from encore.frontends.server.store import Job, SQLiteJobStore

logger = logging.getLogger(__name__)

PLANNER_MODES = ("format", "sample", "understand")
SILENCE_PEAK = 1e-4
"""Peak below which (about -80 dBFS) a generated song counts as silent."""
SILENCE_EXEMPT_TASKS = ("extract", "lego", "complete")
"""Tasks whose output may legitimately be near-silent (an absent stem)."""
FORMAT_WRITE_ARGS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
                     "ogg": ("OGG", "VORBIS")}


class JobFailure(Exception):
    """A job ends failed with a typed `code` and a short client-safe message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def load_default_pipeline(settings: ServerSettings) -> Any:
    """The real pipeline for `settings.checkpoint`, with the planner from `settings.planner` (imports torch)."""
    from encore.pipeline.pipeline import Pipeline

    if not settings.checkpoint:
        raise CheckpointError("<none>", "no checkpoint given: start the server with --checkpoint PATH")
    return Pipeline.from_pretrained(settings.checkpoint, device=settings.device, dtype=settings.dtype,
                                    planner=settings.planner, variant=settings.variant)


def load_factory(spec: str) -> Callable[[ServerSettings], Any]:
    """Resolve a ``module:function`` pipeline factory."""
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise ValueError(f"pipeline factory must look like 'module:function', got {spec!r}")
    factory: Callable[[ServerSettings], Any] = getattr(importlib.import_module(module), func)
    return factory


def pipeline_modes(pipeline: Any) -> tuple[str, ...]:
    """Job modes this pipeline can run: always "generate", "codes" when it can tokenize audio, planner modes only
    with a loaded planner."""
    declared = getattr(pipeline, "server_modes", None)
    if declared is not None:
        return tuple(declared)
    modes = ("generate", "codes") if callable(getattr(pipeline, "audio_codes", None)) else ("generate",)
    if getattr(pipeline, "planner", None) is not None:
        return (*modes, *PLANNER_MODES)
    return modes


class CancelFlag:
    """The pipeline's cancel token; remembers why it fired (cancel / lost / timeout / drain)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def job_timeout(job: Job, settings: ServerSettings) -> float:
    """The job's own deadline (set at submit, `JobService.job_deadline`), else the server's."""
    value = job.payload.get("timeout_s") if isinstance(job.payload, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= settings.job_timeout_s:
        return float(value)
    return settings.job_timeout_s


class _Heartbeat(threading.Thread):
    """Renews the lease, writes progress (throttled), enforces the deadline, and watches for cancel."""

    def __init__(self, runner: JobRunner, job: Job, flag: CancelFlag) -> None:
        super().__init__(name=f"heartbeat-{job.id[:8]}", daemon=True)
        self.runner, self.job, self.flag = runner, job, flag
        self.progress: tuple[str, float] = ("starting", 0.0)
        self.done = threading.Event()

    def report(self, stage: str, fraction: float) -> None:
        self.progress = (stage, float(min(max(fraction, 0.0), 1.0)))

    def run(self) -> None:
        s = self.runner.settings
        start = time.monotonic()
        last_beat, last_written = 0.0, ("", -1.0)
        cancelled_at: float | None = None
        timeout = job_timeout(self.job, s)
        while not self.done.wait(0.2):
            now = time.monotonic()
            if now - start > timeout:
                self.flag.set("timeout")
            if self.flag.is_set() and cancelled_at is None:
                cancelled_at = now
            if cancelled_at is not None and now - cancelled_at > s.cancel_grace_s:
                self.runner.hard_stop(self.job, self.flag.reason)
            if self.progress != last_written or now - last_beat >= s.heartbeat_s:
                stage, frac = self.progress
                status = self.runner.store.heartbeat(self.job.id, self.runner.worker_id, self.job.attempts,
                                                     s.lease_s, progress=frac, stage=stage)
                last_beat, last_written = now, self.progress
                if status != "ok":
                    self.flag.set(status)


class JobRunner:
    """Runs leased jobs with one pipeline. `run_forever` is the worker's main loop."""

    def __init__(self, settings: ServerSettings, store: SQLiteJobStore, pipeline: Any, worker_id: str,
                 modes: tuple[str, ...]) -> None:
        self.settings, self.store, self.pipeline = settings, store, pipeline
        self.worker_id, self.modes = worker_id, modes
        self.draining = threading.Event()
        self.current: tuple[Job, CancelFlag] | None = None

    def run_forever(self, stop: threading.Event, poll_s: float = 0.1) -> None:
        """Lease and run jobs until `stop` is set (drain: the current job finishes or is released)."""
        last_report = 0.0
        while not stop.is_set():
            if time.monotonic() - last_report > self.settings.heartbeat_s / 2:
                self.store.worker_report(self.worker_id, os.getpid(), "ready", self.modes)
                last_report = time.monotonic()
            job = self.store.lease(self.worker_id, self.modes, self.settings.lease_s)
            if job is None:
                stop.wait(poll_s)
                continue
            self.store.worker_report(self.worker_id, os.getpid(), "ready", self.modes, current_job=job.id)
            self.run_one(job)
            last_report = 0.0

    def run_one(self, job: Job) -> None:
        """Run one leased job to a terminal state (or release it when draining)."""
        flag = CancelFlag()
        beat = _Heartbeat(self, job, flag)
        self.current = (job, flag)
        beat.start()
        try:
            result = self._execute(job, beat.report, flag)
            if flag.is_set():
                raise Cancelled(flag.reason)
            if not self.store.complete(job.id, self.worker_id, job.attempts, result):
                logger.warning("job %s: lease lost before completion; result discarded", job.id)
        except Cancelled:
            self._end_cancelled(job, flag)
        except JobFailure as exc:
            self.store.fail(job.id, self.worker_id, job.attempts, exc.code, exc.message)
        except EncoreError as exc:
            code, message = _classify(exc)
            self.store.fail(job.id, self.worker_id, job.attempts, code, public_copy(message, {}, self._server_dirs()))
        except Exception as exc:  # noqa: BLE001 - the job boundary: log the traceback, give the client a code only
            code, message = _classify(exc)
            logger.error("job %s failed (%s)\n%s", job.id, code, traceback.format_exc())
            self.store.fail(job.id, self.worker_id, job.attempts, code, message)
        finally:
            beat.done.set()
            beat.join(timeout=5)
            self.current = None

    def _end_cancelled(self, job: Job, flag: CancelFlag) -> None:
        reason = flag.reason or "cancel"
        if reason == "cancel":
            self.store.finish_cancelled(job.id, self.worker_id, job.attempts)
        elif reason == "drain":
            self.store.release(job.id, self.worker_id, job.attempts)
        elif reason == "timeout":
            self.store.fail(job.id, self.worker_id, job.attempts, "timeout",
                            f"the job ran past its deadline of {job_timeout(job, self.settings):g} s")
        # "lost": another worker owns the job now; leave it alone.

    def hard_stop(self, job: Job, reason: str) -> None:
        """The pipeline ignored its cancel token past the grace period: record the outcome and exit the process
        (the supervisor starts a fresh worker)."""
        logger.error("job %s did not stop within %.0f s of %s; restarting the worker", job.id,
                     self.settings.cancel_grace_s, reason)
        if reason == "timeout":
            self.store.fail(job.id, self.worker_id, job.attempts, "timeout",
                            f"the job ran past its deadline of {job_timeout(job, self.settings):g} s")
        elif reason == "cancel":
            self.store.finish_cancelled(job.id, self.worker_id, job.attempts)
        elif reason == "drain":
            self.store.release(job.id, self.worker_id, job.attempts)
        os._exit(3)

    # ------------------------------------------------------------------ modes
    def _execute(self, job: Job, progress: Callable[[str, float], None], flag: CancelFlag) -> dict[str, Any]:
        if job.mode == "generate":
            return self._generate(job, progress, flag)
        if job.mode in PLANNER_MODES:
            return self._plan(job, progress, flag)
        if job.mode == "codes":
            return self._codes(job, progress)
        raise JobFailure("invalid_request", f"unknown job mode {job.mode!r}")

    def _generate(self, job: Job, progress: Callable[[str, float], None], flag: CancelFlag) -> dict[str, Any]:
        from encore.pipeline.request import request_from_dict

        payload = job.payload
        prelude = payload.get("prelude") or {}
        data, public = self._resolve_inputs(payload["request"], payload.get("uploads", {}), payload.get("loras", {}))
        if prelude:
            data = self._apply_prelude(data, prelude, progress, flag)
        warnings: list[str] = []
        if payload.get("official"):
            data, warnings = official_leniency(data, self.pipeline)
        request = request_from_dict(data)
        result = self.pipeline.generate(request, progress=progress, cancel=flag)
        if flag.is_set():
            raise Cancelled(flag.reason)
        # clients (and the downloaded files' tags) see upload ids and adapter names, never server paths
        result.params = public_copy(result.params, public, self._server_dirs())
        progress("writing", 1.0)
        audio = _as_numpy(result.audio)
        _check_audio(audio, payload["request"].get("task", {}).get("kind", "text2music"))
        outputs = self._write_outputs(job, result, request, audio)
        return {
            "outputs": outputs,
            "sample_rate": int(result.sample_rate),
            "seeds": [int(s) for s in result.seeds],
            "params": json_safe(result.params),
            "plan": json_safe(getattr(result, "plan", None)),
            "timings_s": json_safe(getattr(result, "timings_s", {})),
            "warnings": warnings,
        }

    def _plan(self, job: Job, progress: Callable[[str, float], None], flag: CancelFlag) -> dict[str, Any]:
        if job.mode not in self.modes:
            raise JobFailure("planner_unavailable", "planner not loaded on this server")
        args = dict(job.payload.get("args", {}))
        if job.mode == "understand":
            args, _ = self._resolve_inputs(args, job.payload.get("uploads", {}), {})
        progress("planning", 0.0)
        out = run_planner(self.pipeline, job.mode, args, progress=progress, cancel=flag)
        return {"plan": json_safe(out)}

    def _codes(self, job: Job, progress: Callable[[str, float], None]) -> dict[str, Any]:
        if job.mode not in self.modes:
            raise JobFailure("invalid_request", "this server's model cannot turn audio into codes")
        args, _ = self._resolve_inputs(dict(job.payload.get("args", {})), job.payload.get("uploads", {}), {})
        progress("encode_audio", 0.0)
        codes = [int(c) for c in self.pipeline.audio_codes(args["audio"])]
        progress("encode_audio", 1.0)
        return {"codes": codes}

    def _apply_prelude(self, data: dict[str, Any], prelude: dict[str, Any], progress: Callable[[str, float], None],
                       flag: CancelFlag) -> dict[str, Any]:
        """Official `sample_mode` / `use_format`: let the planner write caption, lyrics and metas first."""
        if "format" not in self.modes:
            raise JobFailure("planner_unavailable", "planner not loaded on this server (needed by sample/format)")
        text = dict(data.get("text", {}))
        if prelude.get("sample_query") is not None:
            plan = run_planner(self.pipeline, "sample", {"query": prelude["sample_query"]}, progress=progress,
                               cancel=flag)
        else:
            plan = run_planner(self.pipeline, "format", {"caption": text.get("caption", ""),
                                                         "lyrics": text.get("lyrics", "")},
                               progress=progress, cancel=flag)
        for key in ("caption", "lyrics", "bpm", "keyscale", "timesignature", "duration_s", "language"):
            value = plan.get(key) if isinstance(plan, dict) else getattr(plan, key, None)
            if value is not None and text.get(key) in (None, ""):
                text[key] = value
        return {**data, "text": text}

    def _resolve_inputs(self, data: dict[str, Any], uploads: dict[str, str], loras: dict[str, str],
                        ) -> tuple[dict[str, Any], dict[str, str]]:
        """Replace upload ids by server paths (the API checked ownership at submit) and LoRA names by their
        entries in the LoRA folder. Returns the new request dict and {server path: upload id or adapter name}."""
        out = _deep_copy(data)
        public: dict[str, str] = {}
        for dotted, upload_id in uploads.items():
            upload = self.store.get_upload(upload_id)
            if upload is None or not os.path.exists(upload.path):
                raise JobFailure("invalid_audio", f"upload {upload_id} is no longer available")
            _set_dotted(out, dotted, upload.path)
            public[upload.path] = upload_id
        for dotted, name in loras.items():
            if not self.settings.lora_dir:
                raise JobFailure("invalid_request", "LoRA adapters are disabled on this server")
            entry = find_adapter(os.path.abspath(self.settings.lora_dir), name)
            if entry is None:  # removed (or replaced by something else) since the job was accepted
                raise JobFailure("invalid_request", f"{dotted}: adapter {name!r} is no longer available")
            _set_dotted(out, dotted, str(entry))
            public[str(entry)] = name
        return out, public

    def _server_dirs(self) -> list[str]:
        """Server folders whose absolute paths are cut from client-visible text (longest first)."""
        dirs = {os.path.abspath(self.settings.data_dir), os.path.realpath(self.settings.data_dir)}
        if self.settings.lora_dir:
            dirs |= {os.path.abspath(self.settings.lora_dir), os.path.realpath(self.settings.lora_dir)}
        return sorted(dirs, key=len, reverse=True)

    def _write_outputs(self, job: Job, result: Any, request: Any, audio: Any) -> list[dict[str, Any]]:
        fmt = request.output.format
        if fmt not in FORMAT_WRITE_ARGS:
            raise JobFailure("invalid_request", f"unsupported output format {fmt!r}")
        out_dir = self.settings.outputs_dir / job.id
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{i}.{fmt}" for i in range(audio.shape[0])]
        try:
            written = _write_with_pipeline_output(result, request, paths)
            if written is None:
                for path, item in zip(paths, audio):
                    write_audio_atomic(path, item, int(result.sample_rate), fmt)
        except OSError as exc:
            for p in out_dir.glob(".tmp-*"):
                p.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise JobFailure("storage_full", "no space left to write the output") from None
            raise
        outputs = []
        for i, path in enumerate(paths):
            info = probe_output(path)
            outputs.append({"index": i, "file": path.name, "format": fmt, "seconds": info,
                            "seed": int(result.seeds[i]) if i < len(result.seeds) else None})
        return outputs


# ---------------------------------------------------------------------------------------------- helpers
def run_planner(pipeline: Any, mode: str, args: dict[str, Any], *, progress: Callable[[str, float], None],
                cancel: CancelFlag) -> Any:
    """Run one planner mode and return a JSON-able dict (caption, lyrics, bpm, keyscale, timesignature,
    duration_s, language). Test pipelines may provide ``plan_mode(mode, args, progress=, cancel=)``; the real
    pipeline goes through `encore.pipeline.planning` with its loaded planner (`pipeline.planner`)."""
    method = getattr(pipeline, "plan_mode", None)
    if method is not None:
        return method(mode, args, progress=progress, cancel=cancel)
    planner = getattr(pipeline, "planner", None)
    if planner is None:
        raise JobFailure("planner_unavailable", "planner not loaded on this server (start it with --planner)")
    from encore.pipeline import planning

    sampling = dataclasses.replace(planning.WRITE_SAMPLING, temperature=float(args.get("temperature", 0.85)))
    if mode == "format":
        metas = planning.UserMetas.parse(bpm=args.get("bpm"), duration=args.get("duration_s"),
                                         keyscale=args.get("keyscale"), timesignature=args.get("timesignature"),
                                         language=args.get("language"))
        out = planning.format_sample(planner, args.get("caption", ""), args.get("lyrics", ""), metas=metas,
                                     sampling=sampling, cancel=cancel)
    elif mode == "sample":
        out = planning.create_sample(planner, args.get("query", ""), instrumental=bool(args.get("instrumental")),
                                     language=args.get("language"), sampling=sampling, cancel=cancel)
    else:
        codes_of = getattr(pipeline, "audio_codes", None)
        if codes_of is None:
            raise JobFailure("planner_unavailable", "this pipeline cannot turn audio into codes for understand")
        codes = [int(c) for c in codes_of(args["audio"])]
        given = args.get("temperature")  # None: the official understand setting (0.3)
        sampling = planning.UNDERSTAND_SAMPLING if given is None else dataclasses.replace(
            planning.UNDERSTAND_SAMPLING, temperature=float(given))
        out = planning.understand(planner, codes, sampling=sampling, cancel=cancel)
    progress("planning", 1.0)
    data = out.to_dict()
    data["duration_s"] = data.pop("duration", None)
    if mode == "understand":
        data["codes"] = codes  # the song's 5 Hz codes, which a generation may render again (`audio_codes`)
    return data


def official_leniency(data: dict[str, Any], pipeline: Any) -> tuple[dict[str, Any], list[str]]:
    """Official-route semantics: on turbo models `inference_steps` and `guidance_scale` are documented as having
    no effect, so official clients send them freely. Drop them there (reported in `warnings`) instead of failing.
    Our own /v1 API keeps refusing them."""
    info = getattr(pipeline, "model_info", None)
    if not callable(info) or not info().get("is_turbo"):
        return data, []
    diffusion = dict(data.get("diffusion") or {})
    dropped = [k for k in ("num_steps", "guidance_scale", "guidance") if diffusion.pop(k, None) is not None]
    if not dropped:
        return data, []
    note = f"{', '.join(dropped)} ignored: turbo models run their fixed 8-step schedule without guidance"
    return {**data, "diffusion": diffusion}, [note]


def _classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to (code, client-safe message). Only messages of our own typed errors are shown."""
    if isinstance(exc, InvalidRequest):
        return "invalid_request", f"{exc.field}: {exc.message}"
    if isinstance(exc, AudioError):
        return "invalid_audio", "an input audio file could not be read"
    if isinstance(exc, NumericalError):
        return "non_finite_output", "the model produced NaN or infinite values"
    if isinstance(exc, CheckpointError):
        return "model_error", "the model checkpoint could not be used"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out_of_memory", "the job needed more memory than is available"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "storage_full", "no space left to write the output"
    return "internal", "internal error while running the job"


def _as_numpy(audio: Any) -> Any:
    import numpy as np

    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1] not in (1, 2) or arr.shape[2] == 0:
        raise JobFailure("internal", f"pipeline returned audio of shape {arr.shape}, expected [B, 2, S]")
    return arr


def _check_audio(audio: Any, task_kind: str) -> None:
    """R8: finite everywhere; not silent for tasks that must produce sound."""
    import numpy as np

    if not np.isfinite(audio).all():
        raise JobFailure("non_finite_output", "the model produced NaN or infinite audio")
    if task_kind not in SILENCE_EXEMPT_TASKS:
        peaks = np.abs(audio).reshape(audio.shape[0], -1).max(axis=1)
        if (peaks < SILENCE_PEAK).any():
            raise JobFailure("silent_output", "the model produced silent audio")


def _write_with_pipeline_output(result: Any, request: Any, paths: list[Path]) -> list[Path] | None:
    """Use `encore.pipeline.output.write_outputs` (tags, sidecar, normalisation) when it exists."""
    try:
        output = importlib.import_module("encore.pipeline.output")
    except ModuleNotFoundError:
        return None
    writer = getattr(output, "write_outputs", None)
    if writer is None or not hasattr(result.audio, "detach"):
        return None  # e.g. a test pipeline returning numpy audio
    return list(writer(result, paths))


def write_audio_atomic(path: Path, audio: Any, sample_rate: int, fmt: str) -> None:
    """Write [C, S] float audio to `path` via a temp file in the same folder, fsync, rename, fsync the folder.

    Peak-normalises only when the signal would clip. Readers never see a partial file.
    """
    import numpy as np
    import soundfile as sf

    container, subtype = FORMAT_WRITE_ARGS[fmt]
    data = np.ascontiguousarray(audio.T)
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > 1.0:
        data = data / peak
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}.{fmt}"
    try:
        with open(tmp, "wb") as fh:
            sf.write(fh, data, sample_rate, format=container, subtype=subtype)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def probe_output(path: Path) -> float:
    """Re-open a written file's header (R8); returns its duration in seconds."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as exc:  # soundfile raises RuntimeError subclasses for bad headers
        raise JobFailure("storage_full" if isinstance(exc, OSError) else "internal",
                         "the written output could not be read back") from None
    if info.frames <= 0:
        raise JobFailure("internal", "the written output is empty")
    return round(info.frames / info.samplerate, 3)


def json_safe(value: Any) -> Any:
    """Best-effort JSON-able copy of params/plan values (tensors become lists or shapes, objects dicts)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "detach") or hasattr(value, "dtype"):
        shape = list(getattr(value, "shape", ()))
        return {"shape": shape} if shape and int(_prod(shape)) > 64 else json_safe(value.tolist())
    if hasattr(value, "__dataclass_fields__"):
        return {k: json_safe(getattr(value, k)) for k in value.__dataclass_fields__}
    return str(value)


def public_copy(value: Any, exact: dict[str, str], dirs: list[str]) -> Any:
    """A copy of `value` (nested dicts, lists, tuples) in which strings equal to a key of `exact` become its value
    and the prefix ``<dir>/`` of every folder in `dirs` is cut from other strings (``/srv/loras/style/x`` ->
    ``style/x``). Other leaves are kept as they are."""
    if isinstance(value, str):
        if value in exact:
            return exact[value]
        for folder in dirs:
            value = value.replace(folder.rstrip(os.sep) + os.sep, "")
        return value
    if isinstance(value, dict):
        return {k: public_copy(v, exact, dirs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [public_copy(v, exact, dirs) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b[2].c`` inside nested dicts/lists (the path came from our own schema walk)."""
    node: Any = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        m = _INDEX.match(part)
        key, idx = (m.group(1), int(m.group(2))) if m else (part, None)
        last = i == len(parts) - 1
        if idx is None:
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            if last:
                node[key][idx] = value
            else:
                node = node[key][idx]


# ---------------------------------------------------------------------------------------------- process
def self_test(pipeline: Any) -> None:
    """One short generation (1 s, the variant's default steps) after loading; /ready stays false until it
    passes (TGI pattern)."""
    from encore.pipeline.request import request_from_dict

    request = request_from_dict({"text": {"caption": "self test", "duration_s": 1.0}, "seeds": [0]})
    result = pipeline.generate(request, progress=None, cancel=None)
    _check_audio(_as_numpy(result.audio), "text2music")


def _watch_parent(parent: int, on_orphan: Callable[[], None], stop: threading.Event) -> None:
    """Drain and exit if the supervisor dies (e.g. SIGKILL of `encore serve`), so no orphan keeps leasing."""

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logger.warning("supervisor is gone; draining")
                on_orphan()
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: load the pipeline, report readiness, run jobs until SIGTERM."""
    parser = argparse.ArgumentParser(prog="encore-worker")
    parser.add_argument("--id", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker[{args.id}] %(name)s: %(message)s")
    settings = ServerSettings.from_env()
    store = SQLiteJobStore(settings.db_path, durable=False)
    stop = threading.Event()
    runner_box: list[JobRunner] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if runner_box and runner_box[0].current is not None:
            timer = threading.Timer(settings.drain_grace_s, runner_box[0].current[1].set, args=("drain",))
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _watch_parent(os.getppid(), lambda: on_signal(signal.SIGTERM, None), stop)
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    store.worker_report(args.id, os.getpid(), "loading", ())
    try:
        pipeline = load_factory(settings.pipeline_factory)(settings)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(settings.torch_threads)
        if settings.self_test:
            self_test(pipeline)
    except (EncoreError, JobFailure, ImportError, OSError, ValueError, RuntimeError) as exc:
        logger.error("pipeline failed to load:\n%s", traceback.format_exc())
        reason = f"{type(exc).__name__}: {exc}"[:300]
        while not stop.wait(settings.heartbeat_s / 2):  # stay visible so /ready can say why
            store.worker_report(args.id, os.getpid(), "failed", (), error=reason)
        store.remove_worker(args.id)
        return 2
    modes = pipeline_modes(pipeline)
    runner = JobRunner(settings, store, pipeline, args.id, modes)
    runner_box.append(runner)
    runner.run_forever(stop)
    store.remove_worker(args.id)
    logger.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
