"""Faults against a live `encore serve` (fake pipeline): worker SIGKILL mid-job (F1), API SIGKILL and restart
(F2), SIGTERM drain (F3), hung job (F10). Invariant: every accepted job ends in exactly one terminal state with a
code; nothing is lost; no partial output is visible."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from frontends.server.srvkit import LiveServer

from encore.frontends.server.store import SQLiteJobStore

TERMINAL = ("succeeded", "failed", "cancelled")


def _submit(srv: LiveServer, caption: str = "x", **request: Any) -> str:
    r = srv.client.post("/v1/jobs", json={"request": {"text": {"caption": caption}, **request}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _wait_all(srv: LiveServer, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    views: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        views = {jid: srv.client.get(f"/v1/jobs/{jid}").json() for jid in ids}
        if all(v["state"] in TERMINAL for v in views.values()):
            return views
        time.sleep(0.2)
    raise AssertionError(f"jobs not finished: {[(k, v['state']) for k, v in views.items()]}\n{srv.log_text()[-3000:]}")


def _wait_running(store: SQLiteJobStore, jid: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(jid)
        if job.state == "running" and job.lease_owner:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {jid} never ran")


def _check_outputs(data_dir: Path, views: dict[str, dict[str, Any]], batch: int) -> None:
    for jid, view in views.items():
        folder = data_dir / "outputs" / jid
        names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert not [n for n in names if n.startswith(".tmp")], (jid, names)  # no partial files
        if view["state"] == "succeeded":
            assert len(view["outputs"]) == batch and names == [f"{i}.flac" for i in range(batch)], (jid, names)


def _kill_worker_mid_job(live_factory: Any, reps: int, tmp_path: Path) -> None:
    """F1: kill -9 the worker that holds each job at a random point; the job finishes elsewhere or fails."""
    fake = json.dumps({"fake_step_s": 0.08, "fake_steps": 6})
    srv = live_factory(workers=2, extra_env={"ENCORE_FAKE": fake})
    srv.wait_ready()
    store = SQLiteJobStore(srv.data_dir / "jobs.db")
    rng = random.Random(1234)
    ids, kills = [], 0
    for _ in range(reps):
        jid = _submit(srv, batch_size=2)
        ids.append(jid)
        job = _wait_running(store, jid)
        time.sleep(rng.uniform(0.0, 0.45))  # diffusion step k, or writing the files
        pids = {w.id: w.pid for w in store.workers()}
        owner = store.get(jid).lease_owner
        if owner in pids and store.get(jid).state == "running":
            os.kill(pids[owner], signal.SIGKILL)
            kills += 1
        assert job.attempts >= 1
    views = _wait_all(srv, ids, timeout=30 + 4 * reps)
    states = [(v["state"], (v["error"] or {}).get("code")) for v in views.values()]
    lost = [s for s in states if s not in (("succeeded", None), ("failed", "worker_lost"))]
    assert not lost, states
    assert len(views) == reps and kills >= reps // 2
    _check_outputs(srv.data_dir, views, batch=2)
    metrics = srv.client.get("/metrics").text
    restarts = int(next(line.split()[-1] for line in metrics.splitlines()
                        if line.startswith("encore_worker_restarts_total")))
    assert restarts >= 1
    summary = {"reps": reps, "kills": kills, "succeeded": sum(s[0] == "succeeded" for s in states),
               "failed_worker_lost": sum(s[1] == "worker_lost" for s in states), "lost": len(lost)}
    (tmp_path / "kill_summary.json").write_text(json.dumps(summary))
    print("F1 summary:", summary)


def test_worker_sigkill_mid_job(live_factory: Any, tmp_path: Path) -> None:
    _kill_worker_mid_job(live_factory, reps=4, tmp_path=tmp_path)


@pytest.mark.slow
def test_worker_sigkill_mid_job_20_repetitions(live_factory: Any, tmp_path: Path) -> None:
    _kill_worker_mid_job(live_factory, reps=20, tmp_path=tmp_path)


def test_restart_keeps_queued_jobs(live_factory: Any, tmp_path: Path) -> None:
    """Jobs queued before a restart run after it; Idempotency-Key replays survive the restart."""
    data = tmp_path / "data"
    api_only = live_factory(workers=0, data_dir=data)
    api_only.wait_ready(need_ready=False)
    ids = [_submit(api_only, f"queued {i}") for i in range(5)]
    r = api_only.client.post("/v1/jobs", json={"request": {}}, headers={"Idempotency-Key": "restart-1"})
    ids.append(r.json()["id"])
    assert api_only.stop(signal.SIGTERM) == 0
    srv = live_factory(workers=1, data_dir=data)
    srv.wait_ready()
    again = srv.client.post("/v1/jobs", json={"request": {}}, headers={"Idempotency-Key": "restart-1"})
    assert again.status_code == 200 and again.json()["id"] == ids[-1]
    views = _wait_all(srv, ids, timeout=30)
    assert all(v["state"] == "succeeded" for v in views.values())
    assert srv.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_api_sigkill_then_restart(live_factory: Any, tmp_path: Path) -> None:
    """F2: kill -9 the API+supervisor while a job runs and others wait; after restart nothing is lost."""
    data = tmp_path / "data"
    fake = json.dumps({"fake_step_s": 0.1, "fake_steps": 8})
    srv = live_factory(workers=1, data_dir=data, extra_env={"ENCORE_FAKE": fake})
    srv.wait_ready()
    ids = [_submit(srv, f"job {i}") for i in range(4)]
    _wait_running(SQLiteJobStore(data / "jobs.db"), ids[0])
    srv.stop(signal.SIGKILL)
    time.sleep(0.5)
    again = live_factory(workers=1, data_dir=data, extra_env={"ENCORE_FAKE": fake})
    again.wait_ready()
    views = _wait_all(again, ids, timeout=40)
    assert all(v["state"] == "succeeded" for v in views.values()), views
    _check_outputs(data, views, batch=1)


def test_sigterm_drains(live_factory: Any) -> None:
    """F3: on SIGTERM /ready and submits answer 503 at once, the running job completes, exit code 0."""
    srv = live_factory(workers=1, extra_env={"ENCORE_FAKE": json.dumps({"fake_step_s": 0.1, "fake_steps": 12})})
    srv.wait_ready()
    jid = _submit(srv, "draining")
    _wait_running(SQLiteJobStore(srv.data_dir / "jobs.db"), jid)
    srv.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    ready = srv.client.get("/ready")
    submit = srv.client.post("/v1/jobs", json={"request": {}})
    assert time.monotonic() - t0 < 1.0
    assert ready.status_code == 503 and "draining" in ready.json()["reasons"]
    assert submit.status_code == 503 and int(submit.headers["Retry-After"]) >= 1
    assert srv.proc.wait(timeout=15) == 0
    job = SQLiteJobStore(srv.data_dir / "jobs.db").get(jid)
    assert job.state == "succeeded"
    srv.client.close()


def test_hung_job_times_out_and_worker_restarts(live_factory: Any) -> None:
    """F10: a pipeline that ignores cancel is failed(timeout); the worker is replaced; the queue continues."""
    srv = live_factory(workers=1, extra_args=("--job-timeout-s", "1", "--cancel-grace-s", "0.5"))
    srv.wait_ready()
    hung = _submit(srv, "[hang]")
    after = _submit(srv, "after")
    views = _wait_all(srv, [hung, after], timeout=30)
    assert views[hung]["state"] == "failed" and views[hung]["error"]["code"] == "timeout"
    assert views[after]["state"] == "succeeded"
