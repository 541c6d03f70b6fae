"""Job service shared by our routes and the official-compatible ones: admission, validation against the request
dataclasses, uploads, status views, waiting, readiness and metrics. No torch, no HTTP framework objects except
`ApiError`, which the app turns into a JSON error reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import queue
import re
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO

from encore.errors import InvalidRequest
from encore.frontends.server import schemas
from encore.frontends.server.loras import find_adapter
from encore.frontends.server.settings import ServerSettings
from encore.frontends.server.store import (
    TERMINAL_STATES,
    ClientBusy,
    IdempotencyConflict,
    Job,
    NewJob,
    QueueFull,
    SQLiteJobStore,
    Upload,
)

logger = logging.getLogger(__name__)

OUTPUT_NAME = re.compile(r"^\d{1,2}\.(flac|wav|mp3|ogg)$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
AUDIO_FORMATS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3", "AIFF": "aiff",
                 "RF64": "wav", "W64": "wav", "CAF": "caf"}
MEDIA_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
DEFAULT_JOB_SECONDS = 30.0
JOB_SECONDS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds (s) of the `encore_job_seconds` histogram: a turbo clip on a GPU to a long base song on a CPU."""
LOOP_LAG_PERIOD_S = 0.25
MIN_UPLOAD_SECONDS = 0.01


class ApiError(Exception):
    """An HTTP error reply: status, typed code, message (or FastAPI-style field list) and extra headers."""

    def __init__(self, status: int, code: str, message: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def field_error(loc: tuple[str | int, ...], message: str, code: str = "invalid_request") -> ApiError:
    """422 naming one field, in FastAPI's ``detail`` list shape."""
    return ApiError(422, code, [{"loc": list(loc), "msg": message, "type": "value_error"}])


def dotted_loc(field: str) -> tuple[str | int, ...]:
    """``loras[1].path`` -> ("loras", 1, "path")."""
    out: list[str | int] = []
    for part in field.split("."):
        m = re.match(r"^([^\[]*)((?:\[\d+\])*)$", part)
        if not m:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(out)


class GroupCommitter:
    """Writes concurrent submissions in shared transactions: one fsync for every submit waiting at that moment,
    instead of one each (with `synchronous=FULL` an fsync costs milliseconds, and 32 clients would queue on it).

    Args:
        store: the job store (its writer thread gets its own connection).
        max_batch: most submissions per transaction.
    """

    def __init__(self, store: SQLiteJobStore, max_batch: int = 64) -> None:
        self.store, self.max_batch = store, max_batch
        self._queue: queue.Queue[tuple[NewJob, Future[Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, item: NewJob, timeout_s: float = 60.0) -> tuple[Job, bool]:
        """Queue `item` for the next transaction and wait for its outcome (re-raising its refusal)."""
        if item.max_queued is not None and item.idempotency_key is None:
            depth = self.store.counts()["queued"]  # cheap refusal without waiting for the writer
            if depth >= item.max_queued:
                raise QueueFull(depth)
        fut: Future[Any] = Future()
        self._queue.put((item, fut))
        return fut.result(timeout=timeout_s)  # type: ignore[no-any-return]

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.store.submit_many([item for item, _ in batch])
            except sqlite3.Error as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


def owner(request: Any) -> str:
    """The authenticated owner id the guard put on the request ("local" when auth is off)."""
    return str(request.state.owner)


class JobService:
    """Everything the HTTP layer does with jobs, uploads and readiness.

    Args:
        settings: server settings.
        store: the durable job store.
    """

    def __init__(self, settings: ServerSettings, store: SQLiteJobStore) -> None:
        self.settings, self.store = settings, store
        self.draining = False
        self._committer = GroupCommitter(store)
        self.responses: Counter[int] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.started = time.time()
        self.loop_lag_s = 0.0
        """How late the event loop's last timer fired (`watch_event_loop`); a blocked loop delays every request."""
        self.loop_lag_max_s = 0.0

    # ------------------------------------------------------------------ admission
    def retry_after(self) -> int:
        """Seconds a client should wait: queue depth × mean job time / workers, within [1, 3600]."""
        depth = self.store.counts()["queued"]
        avg = self.store.avg_job_seconds() or DEFAULT_JOB_SECONDS
        return int(min(3600, max(1, math.ceil(depth * avg / max(1, self.settings.workers)))))

    def check_accepting(self, client: str) -> None:
        """503 while draining, 429 when the client's submit bucket is empty."""
        if self.draining:
            raise ApiError(503, "draining", "the server is shutting down; retry later",
                           {"Retry-After": str(self.retry_after())})
        rate = self.settings.rate_per_s
        if rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.settings.rate_burst), now))
            tokens = min(float(self.settings.rate_burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                raise ApiError(429, "rate_limited", "too many submissions; slow down",
                               {"Retry-After": str(max(1, math.ceil((1.0 - tokens) / rate)))})
            self._buckets[client] = (tokens - 1.0, now)

    def submit(self, owner: str, mode: str, payload: dict[str, Any], idempotency_key: str | None,
               body: Any) -> tuple[Job, bool]:
        """Record a job durably (before the reply). Maps queue-full to 429 and key reuse to 422."""
        if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
            raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1-200 visible ASCII characters")
        body_hash = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
        item = NewJob(mode, payload, owner, idempotency_key, body_hash, self.settings.queue_max,
                      self.settings.max_attempts, self.settings.max_active_per_client or None)
        try:
            return self._committer.submit(item)
        except sqlite3.OperationalError as exc:
            logger.error("job store write failed: %s", exc)
            raise ApiError(503, "store_unavailable", "the job store is busy or full; retry later",
                           {"Retry-After": "5"}) from None
        except QueueFull:
            raise ApiError(429, "queue_full", "the job queue is full; retry later",
                           {"Retry-After": str(self.retry_after())}) from None
        except ClientBusy as exc:
            raise ApiError(429, "too_many_active_jobs", f"this client already has {exc.active} jobs queued or "
                           "running; wait for one to finish", {"Retry-After": str(self.retry_after())}) from None
        except IdempotencyConflict:
            raise ApiError(422, "idempotency_conflict",
                           "this Idempotency-Key was already used with a different request body") from None

    # ------------------------------------------------------------------ validation
    def validate_generation(self, data: dict[str, Any], owner: str,
                            loc: tuple[str | int, ...] = ("body", "request")) -> dict[str, Any]:
        """Check a request dict (already shape-checked by pydantic) against the dataclasses and this server.

        Returns:
            payload for the worker: ``{"request": canonical dict with seeds fixed, "uploads": {path: id},
            "loras": {path: name}}``.

        Raises:
            ApiError: 422 naming the field.
        """
        from encore.pipeline.request import request_from_dict, request_to_dict

        uploads = {}
        for path, upload_id in schemas.audio_field_paths(data):
            if self.store.get_upload(upload_id, owner) is None:
                raise field_error(loc + dotted_loc(path), f"unknown upload id {upload_id!r} (upload with POST /v1/uploads)")
            uploads[path] = upload_id
        loras = {}
        for i, lora in enumerate(data.get("loras") or []):
            path = f"loras[{i}].path"
            name = lora.get("path") if isinstance(lora, dict) else None
            if not self.settings.lora_dir:
                raise field_error(loc + dotted_loc(path), "LoRA adapters are disabled on this server")
            if not isinstance(name, str) or find_adapter(self.settings.lora_dir, name) is None:
                raise field_error(loc + dotted_loc(path), f"unknown adapter {name!r} (see GET /v1/loras)")
            loras[path] = name
        try:
            request = request_from_dict(data)
        except InvalidRequest as exc:
            raise field_error(loc + dotted_loc(exc.field), exc.message) from None
        duration = request.text.duration_s
        if duration is not None and duration * request.batch_size > self.settings.max_seconds_per_job:
            raise field_error(loc + ("batch_size",), f"duration × batch_size exceeds this server's budget of "
                              f"{self.settings.max_seconds_per_job:g} s", code="exceeds_budget")
        canonical = request_to_dict(request)
        if request.seeds is None:  # fixed now so a retried job reproduces the same audio (R2)
            canonical["seeds"] = [secrets.randbelow(2**32) for _ in range(request.batch_size)]
        return {"request": canonical, "uploads": uploads, "loras": loras, "timeout_s": self.job_deadline(request)}

    def job_deadline(self, request: Any) -> float:
        """Seconds a generation may run (RELIABILITY R11): `job_timeout_factor` × its estimated run time plus
        `job_timeout_floor_s`, at most `job_timeout_s`. The estimate is the median measured rate of
        recent jobs (`generation_rates`) × audio seconds × steps × items, where what the request leaves open
        counts at its largest: 600 s when the planner picks the duration or an audio task's source sets it,
        50 steps. Before any job was measured: `job_timeout_s`."""
        from encore.pipeline.request import DURATION_RANGE_S, Text2Music, text2music_duration_s

        s = self.settings
        rates = sorted(self.store.generation_rates())
        if not rates:
            return s.job_timeout_s
        thinking = request.planner is not None and request.planner.think
        if not isinstance(request.task, Text2Music) or (thinking and request.text.duration_s is None):
            duration = DURATION_RANGE_S[1]
        else:
            duration = text2music_duration_s(request)
        estimate = rates[len(rates) // 2] * duration * (request.diffusion.num_steps or 50) * request.batch_size
        return round(min(s.job_timeout_s, s.job_timeout_factor * estimate + s.job_timeout_floor_s), 1)

    def check_upload(self, upload_id: str, owner: str, loc: tuple[str | int, ...]) -> None:
        """422 unless `upload_id` names an upload of this owner."""
        if self.store.get_upload(upload_id, owner) is None:
            raise field_error(loc, f"unknown upload id {upload_id!r} (upload with POST /v1/uploads)")

    # ------------------------------------------------------------------ uploads
    def store_upload(self, owner: str, source: BinaryIO, filename: str | None) -> Upload:
        """Copy an uploaded stream into the server's upload folder under a random name and probe its header.

        Raises:
            ApiError: 413 too big, 422 not audio / too short / too long, 507 disk full.
        """
        import soundfile as sf

        s = self.settings
        s.uploads_dir.mkdir(parents=True, exist_ok=True)
        upload_id = f"up-{uuid.uuid4().hex}"
        tmp = s.uploads_dir / f".{upload_id}.part"
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if size > s.upload_max_bytes:
                        raise ApiError(413, "upload_too_large", f"uploads are limited to {s.upload_max_bytes} bytes")
                    out.write(chunk)
            try:
                info = sf.info(str(tmp))
            except (RuntimeError, sf.LibsndfileError):
                raise field_error(("body", "file"), "not a readable audio file", "invalid_audio") from None
            self._check_audio_header(info)
            final = s.uploads_dir / f"{upload_id}.{AUDIO_FORMATS.get(info.format, 'audio')}"
            os.replace(tmp, final)
        except OSError as exc:
            raise ApiError(507, "storage_full", "no space left to store the upload") if exc.errno == 28 else exc
        finally:
            tmp.unlink(missing_ok=True)
        upload = Upload(id=upload_id, owner=owner, path=str(final.resolve()), filename=display_name(filename),
                        size=size, duration_s=round(info.frames / info.samplerate, 3),
                        sample_rate=int(info.samplerate), channels=int(info.channels), created_at=time.time())
        self.store.add_upload(upload)
        return upload

    def _check_audio_header(self, info: Any) -> None:
        if not (1 <= info.channels <= 8):
            raise field_error(("body", "file"), f"{info.channels} channels; 1 to 8 are supported", "invalid_audio")
        if not (8000 <= info.samplerate <= 192000):
            raise field_error(("body", "file"), f"sample rate {info.samplerate} Hz is not supported", "invalid_audio")
        seconds = info.frames / info.samplerate
        if seconds < MIN_UPLOAD_SECONDS:
            raise field_error(("body", "file"), "audio is empty or shorter than 10 ms", "audio_too_short")
        if seconds > self.settings.upload_max_seconds:
            raise field_error(("body", "file"), f"audio is {seconds:.0f} s long; the limit is "
                              f"{self.settings.upload_max_seconds:g} s", "audio_too_long")

    # ------------------------------------------------------------------ views
    def status(self, job: Job) -> dict[str, Any]:
        """The client view of a job (see `schemas.JobStatus`)."""
        outputs = []
        result = job.result or {}
        if job.state == "succeeded":
            for item in result.get("outputs", []):
                outputs.append({"index": item["index"], "format": item["format"],
                                "url": f"/v1/jobs/{job.id}/audio/{item['index']}", "seconds": item.get("seconds"),
                                "seed": item.get("seed")})
        public_result = {k: v for k, v in result.items() if k != "outputs"} or None
        error = {"code": job.error_code or "unknown", "message": job.error_message or ""} \
            if job.state in ("failed", "cancelled") else None
        return {
            "id": job.id, "mode": job.mode, "state": job.state, "progress": round(job.progress, 4),
            "stage": job.stage, "queue_position": self.store.queue_position(job), "attempts": job.attempts,
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "cancel_requested": job.cancel_requested, "error": error, "outputs": outputs,
            "result": public_result, "files_expired": job.files_swept,
            "timeout_s": job.payload.get("timeout_s") if isinstance(job.payload, dict) else None,
        }

    def get_job(self, job_id: str, owner: str) -> Job:
        """The owner's job, or 404 (the same reply for "absent" and "someone else's")."""
        job = self.store.get(job_id, owner) if re.match(schemas.JOB_ID_PATTERN, job_id) else None
        if job is None:
            raise ApiError(404, "not_found", "no such job")
        return job

    def output_file(self, job: Job, index: int) -> tuple[Path, str]:
        """(path, media type) of output `index` of a succeeded job; the path is built from server data only."""
        if job.state != "succeeded":
            raise ApiError(409, "not_ready", f"the job is {job.state}; outputs exist only once it succeeded")
        if job.files_swept:
            raise ApiError(410, "expired", "the output files were removed after the retention period")
        items = {o["index"]: o for o in (job.result or {}).get("outputs", [])}
        item = items.get(index)
        if item is None or not OUTPUT_NAME.match(str(item.get("file", ""))):
            raise ApiError(404, "not_found", "no such output")
        path = self.settings.outputs_dir / job.id / item["file"]
        if not path.is_file():
            raise ApiError(410, "expired", "the output file is no longer available")
        return path, MEDIA_TYPES[item["format"]]

    async def wait_terminal(self, job_id: str, owner: str, timeout_s: float) -> Job | None:
        """Poll until the job ends (None on timeout). Store reads run in a thread to keep the loop free."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            job = await asyncio.to_thread(self.store.get, job_id, owner)
            if job is None or job.state in TERMINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 1.5)

    # ------------------------------------------------------------------ health
    def ready(self) -> dict[str, Any]:
        """Readiness: not draining, store writable, disk space, and a worker whose self-test passed."""
        reasons = []  # anything here blocks readiness
        notes = []  # informative only (one failed worker does not block while another is ready)
        if self.draining:
            reasons.append("draining")
        if not self.store.writable():
            reasons.append("job store not writable")
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
            if free < self.settings.min_free_disk_bytes:
                reasons.append(f"low disk space ({free // 2**20} MiB free)")
        except OSError:
            reasons.append("data folder unavailable")
        now = time.time()
        workers, modes = [], set()
        for w in self.store.workers():
            fresh = now - w.heartbeat_at < 3 * self.settings.heartbeat_s
            workers.append({"id": w.id, "state": w.state if fresh else "stale", "modes": list(w.modes),
                            "error": w.error, "busy": w.current_job is not None})
            if fresh and w.state == "ready":
                modes.update(w.modes)
            elif fresh and w.state == "failed":
                notes.append(f"worker {w.id} failed to load: {w.error}")
        if "generate" not in modes:
            reasons.append("no worker ready to generate yet")
        ok = not reasons
        reasons += notes
        return {"ready": ok, "reasons": reasons, "modes": sorted(modes), "workers": workers}

    def available_modes(self) -> set[str]:
        """Job modes some live, ready worker offers right now."""
        now, modes = time.time(), set()
        for w in self.store.workers():
            if w.state == "ready" and now - w.heartbeat_at < 3 * self.settings.heartbeat_s:
                modes.update(w.modes)
        return modes

    async def watch_event_loop(self, period_s: float = LOOP_LAG_PERIOD_S) -> None:
        """Measure the event loop's lag until cancelled: how much later than asked each `period_s` sleep ends."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(period_s)
            self.loop_lag_s = max(0.0, time.monotonic() - start - period_s)
            self.loop_lag_max_s = max(self.loop_lag_max_s, self.loop_lag_s)

    def metrics(self) -> str:
        """Prometheus text exposition."""
        counts = self.store.counts()
        lines = ["# TYPE encore_jobs gauge"]
        lines += [f'encore_jobs{{state="{k}"}} {v}' for k, v in sorted(counts.items())]
        lines += ["# TYPE encore_queue_depth gauge", f"encore_queue_depth {counts['queued']}",
                  "# TYPE encore_jobs_failed_total counter"]
        lines += [f'encore_jobs_failed_total{{code="{k}"}} {v}' for k, v in sorted(self.store.failure_counts().items())]
        lines += ["# TYPE encore_http_responses_total counter"]
        lines += [f'encore_http_responses_total{{status="{k}"}} {v}' for k, v in sorted(self.responses.items())]
        ready = self.ready()
        lines += ["# TYPE encore_ready gauge", f"encore_ready {int(ready['ready'])}",
                  "# TYPE encore_workers_ready gauge",
                  f"encore_workers_ready {sum(1 for w in ready['workers'] if w['state'] == 'ready')}",
                  "# TYPE encore_worker_restarts_total counter",
                  f"encore_worker_restarts_total {self.store.get_meta('worker_restarts', '0')}"]
        avg = self.store.avg_job_seconds()
        if avg is not None:
            lines += ["# TYPE encore_job_seconds_avg gauge", f"encore_job_seconds_avg {avg:.3f}"]
        lines += ["# TYPE encore_event_loop_lag_seconds gauge", f"encore_event_loop_lag_seconds {self.loop_lag_s:.4f}",
                  "# TYPE encore_event_loop_lag_seconds_max gauge",
                  f"encore_event_loop_lag_seconds_max {self.loop_lag_max_s:.4f}"]
        lines += histogram_lines("encore_job_seconds", "task", self.store.job_seconds(), JOB_SECONDS_BUCKETS)
        return "\n".join(lines) + "\n"


def histogram_lines(name: str, label: str, samples: dict[str, list[float]], buckets: tuple[float, ...]) -> list[str]:
    """Prometheus histogram text of `samples` per label value: cumulative buckets, +Inf, sum and count."""
    lines = [f"# TYPE {name} histogram"]
    for value, xs in sorted(samples.items()):
        tag = f'{label}="{value}"'
        lines += [f'{name}_bucket{{{tag},le="{b:g}"}} {sum(1 for x in xs if x <= b)}' for b in buckets]
        lines += [f'{name}_bucket{{{tag},le="+Inf"}} {len(xs)}', f"{name}_sum{{{tag}}} {sum(xs):.3f}",
                  f"{name}_count{{{tag}}} {len(xs)}"]
    return lines


def display_name(filename: str | None) -> str:
    """A safe display name for an uploaded file: base name only, no control characters, ≤ 100 characters.
    It is shown to the user and never used to build a path."""
    if not filename:
        return "upload"
    base = re.split(r"[\\/]", filename)[-1]
    clean = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    return clean.strip()[:100] or "upload"
