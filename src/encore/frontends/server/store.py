"""Durable job store: the `JobStore` interface and its SQLite (WAL) implementation.

Jobs move queued → running → succeeded | failed | cancelled. A running job holds a lease (owner + expiry) that
its worker renews by heartbeat; the lease is fenced by the attempt number, so a worker whose lease was taken
over can no longer change the job. Nothing here imports torch: the API process and the supervisor use it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
LeaseStatus = Literal["ok", "cancel", "lost"]
IDEMPOTENCY_WINDOW_S = 24 * 3600.0


class ClientBusy(Exception):
    """The client already has its cap of queued and running jobs; nothing was recorded."""

    def __init__(self, active: int) -> None:
        super().__init__(f"{active} jobs queued or running")
        self.active = active


class QueueFull(Exception):
    """The bounded queue is full; nothing was recorded."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"queue is full ({depth} jobs waiting)")
        self.depth = depth


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


@dataclass(frozen=True)
class Job:
    """One row of the job table, as every reader sees it."""

    id: str
    mode: str
    state: str
    payload: dict[str, Any]
    owner: str
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: float | None
    progress: float
    stage: str
    cancel_requested: bool
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    files_swept: bool
    seq: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class NewJob:
    """A submission waiting to be written (see `SQLiteJobStore.submit_many`)."""

    mode: str
    payload: dict[str, Any]
    owner: str
    idempotency_key: str | None = None
    body_hash: str | None = None
    max_queued: int | None = None
    max_attempts: int = 2
    max_active: int | None = None
    """The owner's cap of queued + running jobs (None: no cap)."""


@dataclass(frozen=True)
class Upload:
    """An uploaded audio file: the server owns `path`; clients only ever see `id`."""

    id: str
    owner: str
    path: str
    filename: str
    size: int
    duration_s: float
    sample_rate: int
    channels: int
    created_at: float


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process last reported about itself."""

    id: str
    pid: int
    state: str
    modes: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    error: str | None
    current_job: str | None


class JobStore(Protocol):
    """What the API, the workers and the supervisor need from a store (a networked one can implement it)."""

    def submit(
        self, mode: str, payload: dict[str, Any], *, owner: str, idempotency_key: str | None = None,
        body_hash: str | None = None, max_queued: int | None = None, max_attempts: int = 2,
        max_active: int | None = None,
    ) -> tuple[Job, bool]: ...
    def get(self, job_id: str, owner: str | None = None) -> Job | None: ...
    def list_jobs(self, owner: str | None = None, limit: int = 50) -> list[Job]: ...
    def queue_position(self, job: Job) -> int: ...
    def lease(self, worker_id: str, modes: tuple[str, ...], lease_s: float) -> Job | None: ...
    def heartbeat(self, job_id: str, worker_id: str, attempt: int, lease_s: float,
                  progress: float | None = None, stage: str | None = None) -> LeaseStatus: ...
    def complete(self, job_id: str, worker_id: str, attempt: int, result: dict[str, Any]) -> bool: ...
    def fail(self, job_id: str, worker_id: str, attempt: int, code: str, message: str) -> bool: ...
    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int) -> bool: ...
    def release(self, job_id: str, worker_id: str, attempt: int) -> bool: ...
    def cancel(self, job_id: str, owner: str | None = None) -> Job | None: ...
    def reap(self, now: float | None = None) -> list[str]: ...
    def counts(self) -> dict[str, int]: ...


_JOB_COLUMNS = (
    "id, mode, state, payload, owner, created_at, updated_at, started_at, finished_at, attempts, max_attempts, "
    "lease_owner, lease_expires, progress, stage, cancel_requested, error_code, error_message, result, "
    "files_swept, seq"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    result TEXT,
    files_swept INTEGER NOT NULL DEFAULT 0,
    idem_key TEXT,
    idem_hash TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(owner, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    path TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    sample_rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,
    modes TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    error TEXT,
    current_job TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _row_to_job(row: tuple[Any, ...]) -> Job:
    (jid, mode, state, payload, owner, created, updated, started, finished, attempts, max_attempts, lease_owner,
     lease_expires, progress, stage, cancel_req, err_code, err_msg, result, swept, seq) = row
    return Job(
        id=jid, mode=mode, state=state, payload=json.loads(payload), owner=owner, created_at=created,
        updated_at=updated, started_at=started, finished_at=finished, attempts=attempts,
        max_attempts=max_attempts, lease_owner=lease_owner, lease_expires=lease_expires, progress=progress,
        stage=stage, cancel_requested=bool(cancel_req), error_code=err_code, error_message=err_msg,
        result=json.loads(result) if result else None, files_swept=bool(swept), seq=seq,
    )


class SQLiteJobStore:
    """`JobStore` on one SQLite file in WAL mode, shared by the API process, the supervisor and the workers.

    Every write is a short ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``, so a 2xx reply means the
    job is on disk. Connections are per thread (sqlite3 objects must not cross threads).

    Args:
        path: database file; its folder is created.
        busy_timeout_s: how long a writer waits for the lock before giving up.
        durable: fsync every commit (``synchronous=FULL``). Workers pass False: a heartbeat or result lost to a
            power cut only means the job runs again (outputs are deterministic given the stored seeds).
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 10.0, durable: bool = True) -> None:
        self.path = os.fspath(path)
        self.synchronous = "FULL" if durable else "NORMAL"
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ plumbing
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _write(self, fn: Any) -> Any:
        """Run `fn(conn)` inside one immediate (write-locked) transaction."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def writable(self) -> bool:
        """True when a write transaction can be taken (readiness check)."""
        try:
            self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', ?)",
                                            (str(time.time()),)))
        except sqlite3.Error as exc:
            logger.warning("job store not writable: %s", exc)
            return False
        return True

    # ------------------------------------------------------------------ jobs: API side
    def submit(
        self, mode: str, payload: dict[str, Any], *, owner: str, idempotency_key: str | None = None,
        body_hash: str | None = None, max_queued: int | None = None, max_attempts: int = 2,
        max_active: int | None = None,
    ) -> tuple[Job, bool]:
        """Record a new queued job, or return the earlier one for a repeated idempotency key.

        Returns:
            (job, created): `created` is False when an earlier job with the same key and body was returned.

        Raises:
            QueueFull: `max_queued` jobs are already waiting (nothing is recorded).
            ClientBusy: `owner` already has `max_active` jobs queued or running (nothing is recorded).
            IdempotencyConflict: the key was used with a different body within 24 h.
        """
        item = NewJob(mode, payload, owner, idempotency_key, body_hash, max_queued, max_attempts, max_active)
        if max_queued is not None and idempotency_key is None:  # cheap refusal without the write lock
            depth = self._conn().execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
            if depth >= max_queued:
                raise QueueFull(depth)
        out = self.submit_many([item])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def submit_many(self, items: list[NewJob]) -> list[tuple[Job, bool] | Exception]:
        """Record several submissions in ONE transaction (one fsync: group commit), in order.

        Returns:
            Per item, ``(job, created)`` or the `QueueFull` / `ClientBusy` / `IdempotencyConflict` it raised; a
            refused item leaves no record, the others are committed.
        """
        now = time.time()

        def tx(c: sqlite3.Connection) -> list[tuple[str, bool] | Exception]:
            results: list[tuple[str, bool] | Exception] = []
            for item in items:
                try:
                    results.append(self._insert(c, item, now))
                except (QueueFull, ClientBusy, IdempotencyConflict) as exc:
                    results.append(exc)
            return results

        written = self._write(tx)
        out: list[tuple[Job, bool] | Exception] = []
        for res in written:
            if isinstance(res, Exception):
                out.append(res)
                continue
            job = self.get(res[0])
            assert job is not None
            out.append((job, res[1]))
        return out

    def _insert(self, c: sqlite3.Connection, item: NewJob, now: float) -> tuple[str, bool]:
        if item.idempotency_key is not None:
            row = c.execute("SELECT id, idem_hash, created_at FROM jobs WHERE owner=? AND idem_key=?",
                            (item.owner, item.idempotency_key)).fetchone()
            if row is not None:
                if now - row[2] < IDEMPOTENCY_WINDOW_S:
                    if row[1] != item.body_hash:
                        raise IdempotencyConflict(item.idempotency_key)
                    return str(row[0]), False
                c.execute("UPDATE jobs SET idem_key=NULL WHERE id=?", (row[0],))
        if item.max_queued is not None:
            depth = c.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
            if depth >= item.max_queued:
                raise QueueFull(depth)
        if item.max_active is not None:
            active = c.execute("SELECT COUNT(*) FROM jobs WHERE owner=? AND state IN ('queued', 'running')",
                               (item.owner,)).fetchone()[0]
            if active >= item.max_active:
                raise ClientBusy(active)
        jid = str(uuid.uuid4())
        c.execute(
            "INSERT INTO jobs(id, mode, state, payload, owner, created_at, updated_at, max_attempts, idem_key,"
            " idem_hash) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (jid, item.mode, json.dumps(item.payload, separators=(",", ":"), allow_nan=False), item.owner, now, now,
             item.max_attempts, item.idempotency_key, item.body_hash),
        )
        return jid, True

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job with this id (restricted to `owner` when given), or None."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?"
        args: tuple[Any, ...] = (job_id,)
        if owner is not None:
            sql += " AND owner=?"
            args += (owner,)
        row = self._conn().execute(sql, args).fetchone()
        return _row_to_job(row) if row else None

    def list_jobs(self, owner: str | None = None, limit: int = 50) -> list[Job]:
        """Newest first, at most `limit`."""
        if owner is None:
            rows = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._conn().execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE owner=? ORDER BY seq DESC LIMIT ?", (owner, limit))
        return [_row_to_job(r) for r in rows.fetchall()]

    def queue_position(self, job: Job) -> int:
        """1-based position among queued jobs (0 when not queued)."""
        if job.state != "queued":
            return 0
        row = self._conn().execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq<=?", (job.seq,))
        return int(row.fetchone()[0])

    def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        """Cancel a queued job now; ask a running one to stop (its worker sees it on the next heartbeat)."""
        now = time.time()

        def tx(c: sqlite3.Connection) -> None:
            c.execute("UPDATE jobs SET state='cancelled', finished_at=?, updated_at=?, error_code='cancelled',"
                      " error_message='cancelled by the client' WHERE id=? AND state='queued'", (now, now, job_id))
            c.execute("UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=? AND state='running'",
                      (now, job_id))

        if self.get(job_id, owner) is None:
            return None
        self._write(tx)
        return self.get(job_id, owner)

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zeros included)."""
        out = {s: 0 for s in ("queued", "running", *TERMINAL_STATES)}
        for state, n in self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def failure_counts(self) -> dict[str, int]:
        """Failed jobs per error code."""
        rows = self._conn().execute("SELECT error_code, COUNT(*) FROM jobs WHERE state='failed' GROUP BY error_code")
        return {code or "unknown": n for code, n in rows}

    def avg_job_seconds(self, window: int = 50) -> float | None:
        """Mean run time of the last `window` succeeded jobs, or None if there are none."""
        rows = self._conn().execute(
            "SELECT finished_at - started_at FROM jobs WHERE state='succeeded' AND started_at IS NOT NULL"
            " ORDER BY seq DESC LIMIT ?", (window,)).fetchall()
        vals = [r[0] for r in rows if r[0] is not None and r[0] >= 0]
        return sum(vals) / len(vals) if vals else None

    def generation_rates(self, window: int = 50) -> list[float]:
        """Seconds per (audio second × step × item) of the last `window` succeeded generate jobs, from the
        resolved request in each result (`GenerationResult.params`)."""
        rows = self._conn().execute(
            "SELECT finished_at - started_at, json_extract(result, '$.params.request.text.duration_s'),"
            " json_extract(result, '$.params.request.diffusion.num_steps'),"
            " json_extract(result, '$.params.request.batch_size') FROM jobs WHERE state='succeeded' AND"
            " mode='generate' AND started_at IS NOT NULL ORDER BY seq DESC LIMIT ?", (window,)).fetchall()
        rates = []
        for seconds, duration, steps, batch in rows:
            if all(isinstance(v, (int, float)) and v > 0 for v in (seconds, duration, steps, batch)):
                rates.append(seconds / (duration * steps * batch))
        return rates

    def job_seconds(self) -> dict[str, list[float]]:
        """Run times of the succeeded jobs the store holds, by task (the request's task kind for generate
        jobs, else the mode: format, sample, understand)."""
        rows = self._conn().execute(
            "SELECT mode, json_extract(payload, '$.request.task.kind'), finished_at - started_at FROM jobs"
            " WHERE state='succeeded' AND started_at IS NOT NULL AND finished_at IS NOT NULL").fetchall()
        out: dict[str, list[float]] = {}
        for mode, kind, seconds in rows:
            if seconds is not None and seconds >= 0:
                out.setdefault(kind if mode == "generate" and isinstance(kind, str) else mode, []).append(seconds)
        return out

    # ------------------------------------------------------------------ jobs: worker side
    def lease(self, worker_id: str, modes: tuple[str, ...], lease_s: float) -> Job | None:
        """Take the oldest queued job whose mode is in `modes`; the attempt counter goes up by one."""
        if not modes:
            return None
        now = time.time()
        marks = ",".join("?" * len(modes))
        # Idle workers poll often: look without the write lock first, lock only when there is work.
        probe = self._conn().execute(f"SELECT 1 FROM jobs WHERE state='queued' AND mode IN ({marks}) LIMIT 1", modes)
        if probe.fetchone() is None:
            return None

        def tx(c: sqlite3.Connection) -> str | None:
            row = c.execute(f"SELECT id FROM jobs WHERE state='queued' AND mode IN ({marks}) ORDER BY seq LIMIT 1",
                            modes).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state='running', lease_owner=?, lease_expires=?, attempts=attempts+1,"
                      " started_at=COALESCE(started_at, ?), updated_at=?, progress=0, stage='starting' WHERE id=?",
                      (worker_id, now + lease_s, now, now, row[0]))
            return str(row[0])

        jid = self._write(tx)
        return self.get(jid) if jid else None

    _FENCE = "id=? AND state='running' AND lease_owner=? AND attempts=?"

    def heartbeat(self, job_id: str, worker_id: str, attempt: int, lease_s: float,
                  progress: float | None = None, stage: str | None = None) -> LeaseStatus:
        """Renew the lease and record progress. Returns "cancel" when the client asked to stop, "lost" when the
        lease is no longer ours (expired and re-leased, or the job ended)."""
        now = time.time()

        def tx(c: sqlite3.Connection) -> LeaseStatus:
            cur = c.execute(
                f"UPDATE jobs SET lease_expires=?, updated_at=?, progress=COALESCE(?, progress),"
                f" stage=COALESCE(?, stage) WHERE {self._FENCE}",
                (now + lease_s, now, progress, stage, job_id, worker_id, attempt))
            if cur.rowcount != 1:
                return "lost"
            row = c.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
            return "cancel" if row[0] else "ok"

        return self._write(tx)  # type: ignore[no-any-return]

    def _finish(self, job_id: str, worker_id: str, attempt: int, sets: str, args: tuple[Any, ...]) -> bool:
        now = time.time()
        sql = (f"UPDATE jobs SET {sets}, finished_at=?, updated_at=?, lease_owner=NULL, lease_expires=NULL"
               f" WHERE {self._FENCE}")
        cur = self._write(lambda c: c.execute(sql, (*args, now, now, job_id, worker_id, attempt)))
        return bool(cur.rowcount == 1)

    def complete(self, job_id: str, worker_id: str, attempt: int, result: dict[str, Any]) -> bool:
        """Mark succeeded with `result` (output list etc.); False if the lease was lost meanwhile."""
        text = json.dumps(result, allow_nan=False)
        return self._finish(job_id, worker_id, attempt, "state='succeeded', progress=1, stage='done', result=?",
                            (text,))

    def fail(self, job_id: str, worker_id: str, attempt: int, code: str, message: str) -> bool:
        """Mark failed with a typed code and a short human message (never a traceback)."""
        return self._finish(job_id, worker_id, attempt, "state='failed', error_code=?, error_message=?",
                            (code, message[:500]))

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int) -> bool:
        """Mark a running job cancelled after its worker stopped it."""
        return self._finish(job_id, worker_id, attempt, "state='cancelled', error_code='cancelled',"
                            " error_message='cancelled by the client'", ())

    def release(self, job_id: str, worker_id: str, attempt: int) -> bool:
        """Give a running job back to the queue without spending an attempt (graceful drain)."""
        now = time.time()
        sql = (f"UPDATE jobs SET state='queued', attempts=attempts-1, lease_owner=NULL, lease_expires=NULL,"
               f" progress=0, stage='requeued', updated_at=? WHERE {self._FENCE}")
        cur = self._write(lambda c: c.execute(sql, (now, job_id, worker_id, attempt)))
        return bool(cur.rowcount == 1)

    # ------------------------------------------------------------------ supervisor side
    def reap(self, now: float | None = None) -> list[str]:
        """Expired leases: cancel if asked, requeue if attempts remain, else fail with `worker_lost`."""
        now = time.time() if now is None else now

        def tx(c: sqlite3.Connection) -> list[str]:
            rows = c.execute("SELECT id, attempts, max_attempts, cancel_requested FROM jobs"
                             " WHERE state='running' AND lease_expires < ?", (now,)).fetchall()
            for jid, attempts, max_attempts, cancel_req in rows:
                if cancel_req:
                    c.execute("UPDATE jobs SET state='cancelled', error_code='cancelled', error_message=?,"
                              " finished_at=?, updated_at=?, lease_owner=NULL, lease_expires=NULL WHERE id=?",
                              ("cancelled by the client", now, now, jid))
                elif attempts >= max_attempts:
                    c.execute("UPDATE jobs SET state='failed', error_code='worker_lost', error_message=?,"
                              " finished_at=?, updated_at=?, lease_owner=NULL, lease_expires=NULL WHERE id=?",
                              (f"the worker stopped responding on each of {attempts} attempts", now, now, jid))
                else:
                    c.execute("UPDATE jobs SET state='queued', stage='requeued', progress=0, lease_owner=NULL,"
                              " lease_expires=NULL, updated_at=? WHERE id=?", (now, jid))
            return [r[0] for r in rows]

        return self._write(tx)  # type: ignore[no-any-return]

    def fail_unrunnable(self, modes_available: set[str], message: str) -> list[str]:
        """Fail queued jobs whose mode no ready worker can run (e.g. planner modes without a planner)."""
        now = time.time()

        def tx(c: sqlite3.Connection) -> list[str]:
            rows = c.execute("SELECT id, mode FROM jobs WHERE state='queued'").fetchall()
            gone = [jid for jid, mode in rows if mode not in modes_available]
            for jid in gone:
                c.execute("UPDATE jobs SET state='failed', error_code='planner_unavailable', error_message=?,"
                          " finished_at=?, updated_at=? WHERE id=? AND state='queued'", (message, now, now, jid))
            return gone

        return self._write(tx)  # type: ignore[no-any-return]

    def sweep(self, tombstone_retention_s: float, files_retention_s: float,
              now: float | None = None) -> tuple[list[str], list[str]]:
        """Forget tombstones past retention and mark terminal jobs whose files are due for deletion.

        Returns:
            (deleted_job_ids, job_ids_whose_files_to_delete): the caller removes the files on disk.
        """
        now = time.time() if now is None else now
        terminal = ",".join(f"'{s}'" for s in TERMINAL_STATES)

        def tx(c: sqlite3.Connection) -> tuple[list[str], list[str]]:
            old = [r[0] for r in c.execute(
                f"SELECT id FROM jobs WHERE state IN ({terminal}) AND finished_at < ?",
                (now - tombstone_retention_s,))]
            c.execute(f"DELETE FROM jobs WHERE state IN ({terminal}) AND finished_at < ?",
                      (now - tombstone_retention_s,))
            files = [r[0] for r in c.execute(
                f"SELECT id FROM jobs WHERE state IN ({terminal}) AND files_swept=0 AND finished_at < ?",
                (now - files_retention_s,))]
            c.execute(f"UPDATE jobs SET files_swept=1 WHERE state IN ({terminal}) AND files_swept=0"
                      " AND finished_at < ?", (now - files_retention_s,))
            return old, files

        return self._write(tx)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ uploads
    def add_upload(self, upload: Upload) -> None:
        """Record a stored upload."""
        self._write(lambda c: c.execute(
            "INSERT INTO uploads(id, owner, path, filename, size, duration_s, sample_rate, channels, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (upload.id, upload.owner, upload.path, upload.filename, upload.size, upload.duration_s,
             upload.sample_rate, upload.channels, upload.created_at)))

    def get_upload(self, upload_id: str, owner: str | None = None) -> Upload | None:
        """The upload with this id (restricted to `owner` when given)."""
        row = self._conn().execute(
            "SELECT id, owner, path, filename, size, duration_s, sample_rate, channels, created_at FROM uploads"
            " WHERE id=?", (upload_id,)).fetchone()
        if row is None or (owner is not None and row[1] != owner):
            return None
        return Upload(*row)

    def sweep_uploads(self, retention_s: float, now: float | None = None) -> list[str]:
        """Forget uploads older than retention; returns their server paths for the caller to delete."""
        cutoff = (time.time() if now is None else now) - retention_s

        def tx(c: sqlite3.Connection) -> list[str]:
            paths = [r[0] for r in c.execute("SELECT path FROM uploads WHERE created_at < ?", (cutoff,))]
            c.execute("DELETE FROM uploads WHERE created_at < ?", (cutoff,))
            return paths

        return self._write(tx)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ workers and meta
    def worker_report(self, worker_id: str, pid: int, state: str, modes: tuple[str, ...],
                      error: str | None = None, current_job: str | None = None) -> None:
        """Upsert a worker's liveness record (called on start, on each poll and on state changes)."""
        now = time.time()
        self._write(lambda c: c.execute(
            "INSERT INTO workers(id, pid, state, modes, started_at, heartbeat_at, error, current_job)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET pid=excluded.pid,"
            " state=excluded.state, modes=excluded.modes, heartbeat_at=excluded.heartbeat_at,"
            " error=excluded.error, current_job=excluded.current_job",
            (worker_id, pid, state, json.dumps(list(modes)), now, now, error, current_job)))

    def workers(self) -> list[WorkerInfo]:
        """Every worker record (stale ones included; callers judge freshness by `heartbeat_at`)."""
        rows = self._conn().execute(
            "SELECT id, pid, state, modes, started_at, heartbeat_at, error, current_job FROM workers ORDER BY id")
        return [WorkerInfo(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7]) for r in rows]

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that exited."""
        self._write(lambda c: c.execute("DELETE FROM workers WHERE id=?", (worker_id,)))

    def set_meta(self, key: str, value: str) -> None:
        """Store a small named value (e.g. the restart counter)."""
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value)))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value stored with `set_meta`, or `default`."""
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else default
