"""Supervisor: starts worker processes, restarts crashed ones, and runs the reaper and retention sweeps.

It lives in the `encore serve` process beside the API (neither imports torch). Workers are plain child
processes (``python -m encore.frontends.server.worker``) so a crash, OOM kill or SIGKILL of one never touches
the API; the job it held is re-leased once its lease expires.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from encore.frontends.server.settings import WORKER_SETTINGS_ENV, ServerSettings
from encore.frontends.server.store import SQLiteJobStore

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0


@dataclass
class _Slot:
    index: int
    worker_id: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    history: list[str] = field(default_factory=list)


class Supervisor:
    """Keeps `settings.workers` worker processes alive and the store consistent.

    Args:
        settings: server settings (the workers get them minus the keys).
        store: the job store.
        env: extra environment for the workers (tests add PYTHONPATH for fake pipelines).
    """

    def __init__(self, settings: ServerSettings, store: SQLiteJobStore, env: dict[str, str] | None = None) -> None:
        self.settings, self.store = settings, store
        self.env = dict(env or {})
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Reap leases left by a previous run, start the workers and the maintenance thread."""
        for w in self.store.workers():
            self.store.remove_worker(w.id)  # records of a previous run's workers
        self.store.reap()
        for slot in self.slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker (they finish or release their job), wait up to `grace_s` + 2 s, then SIGKILL."""
        self.stopping.set()
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 2.0
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %s did not stop in time; killing it", slot.worker_id)
                slot.proc.kill()
                slot.proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.reap()

    def worker_pids(self) -> dict[str, int]:
        """Live worker id -> pid."""
        return {s.worker_id: s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None}

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    # ------------------------------------------------------------------ internals
    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = f"w{slot.index}-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, **self.env, WORKER_SETTINGS_ENV: self.settings.for_worker()}
        cmd = [sys.executable, "-m", "encore.frontends.server.worker", "--id", slot.worker_id]
        slot.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        slot.started = time.monotonic()
        slot.history.append(slot.worker_id)
        logger.info("started worker %s (pid %d)", slot.worker_id, slot.proc.pid)

    def _loop(self) -> None:
        while not self.stopping.wait(self.settings.reaper_interval_s):
            self.tick()

    def tick(self) -> None:
        """One maintenance round: restart dead workers, reap leases, fail unrunnable jobs, sweep retention."""
        for slot in self.slots:
            if self.stopping.is_set():
                return
            if slot.proc is not None and slot.proc.poll() is not None:
                logger.warning("worker %s exited with %s; restarting", slot.worker_id, slot.proc.returncode)
                self.store.remove_worker(slot.worker_id)
                slot.restarts += 1
                self.store.set_meta("worker_restarts", str(self.restarts))
                self._spawn(slot)
        for jid in self.store.reap():
            logger.warning("job %s: lease expired (worker lost)", jid)
        self._fail_unrunnable()
        if time.monotonic() - self._last_sweep > SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            self.sweep()

    def _fail_unrunnable(self) -> None:
        """Queued jobs of a mode no worker offers (planner modes without a planner) fail with a clear reason,
        but only once every live worker has finished loading (a loading worker may still offer it)."""
        fresh = [w for w in self.store.workers() if time.time() - w.heartbeat_at < 3 * self.settings.heartbeat_s]
        if not fresh or any(w.state == "loading" for w in fresh) or len(fresh) < len(self.worker_pids()):
            return
        modes = {m for w in fresh if w.state == "ready" for m in w.modes}
        if not modes:
            return
        gone = self.store.fail_unrunnable(modes, "planner not loaded: no worker of this server can run this mode")
        if gone:
            logger.warning("failed %d job(s) whose mode no worker offers", len(gone))

    def sweep(self) -> None:
        """Apply retention: delete expired output folders and uploads, forget old tombstones."""
        s = self.settings
        _, expired = self.store.sweep(s.tombstone_retention_s, s.files_retention_s)
        for jid in expired:
            shutil.rmtree(s.outputs_dir / jid, ignore_errors=True)
        for path in self.store.sweep_uploads(s.files_retention_s):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
