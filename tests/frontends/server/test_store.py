"""SQLite job store: state machine, lease fencing, reaper, idempotency, bounded queue, retention, concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from encore.frontends.server.store import ClientBusy, IdempotencyConflict, QueueFull, SQLiteJobStore


@pytest.fixture
def store(tmp_path: Path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "jobs.db")


def test_wal_mode_and_durable_submit(store: SQLiteJobStore, tmp_path: Path) -> None:
    assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    job, created = store.submit("generate", {"x": 1}, owner="a")
    assert created and job.state == "queued" and job.attempts == 0
    reopened = SQLiteJobStore(tmp_path / "jobs.db")  # a fresh connection sees the committed row
    assert reopened.get(job.id).payload == {"x": 1}


def test_lifecycle_and_fencing(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="a")
    leased = store.lease("w1", ("generate",), lease_s=10)
    assert leased.id == job.id and leased.state == "running" and leased.attempts == 1
    assert store.lease("w2", ("generate",), lease_s=10) is None  # nothing else queued
    assert store.heartbeat(job.id, "w1", 1, 10, progress=0.5, stage="diffusion") == "ok"
    assert store.get(job.id).progress == 0.5
    assert store.heartbeat(job.id, "w2", 1, 10) == "lost"  # wrong owner
    assert not store.complete(job.id, "w1", 2, {})  # wrong attempt (fencing token)
    assert store.complete(job.id, "w1", 1, {"outputs": []})
    done = store.get(job.id)
    assert done.state == "succeeded" and done.lease_owner is None and done.result == {"outputs": []}
    assert not store.fail(job.id, "w1", 1, "internal", "late")  # terminal jobs cannot change


def test_lease_respects_modes_and_order(store: SQLiteJobStore) -> None:
    a, _ = store.submit("format", {}, owner="o")
    b, _ = store.submit("generate", {}, owner="o")
    c, _ = store.submit("generate", {}, owner="o")
    assert store.lease("w", ("generate",), 5).id == b.id
    assert store.lease("w", ("generate",), 5).id == c.id
    assert store.lease("w", ("generate",), 5) is None
    assert store.get(a.id).state == "queued"


def test_reaper_requeues_then_fails_with_worker_lost(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="o", max_attempts=2)
    store.lease("w1", ("generate",), lease_s=0.01)
    time.sleep(0.02)
    assert store.reap() == [job.id]
    again = store.get(job.id)
    assert again.state == "queued" and again.lease_owner is None
    assert store.lease("w2", ("generate",), lease_s=0.01).attempts == 2
    time.sleep(0.02)
    store.reap()
    lost = store.get(job.id)
    assert lost.state == "failed" and lost.error_code == "worker_lost" and lost.finished_at is not None


def test_reaper_leaves_live_leases(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="o")
    store.lease("w1", ("generate",), lease_s=30)
    assert store.reap() == []
    assert store.get(job.id).state == "running"


def test_cancel_queued_and_running(store: SQLiteJobStore) -> None:
    q, _ = store.submit("generate", {}, owner="o")
    r, _ = store.submit("generate", {}, owner="o")
    assert store.cancel(q.id, owner="o").state == "cancelled"
    leased = store.lease("w", ("generate",), 10)
    assert leased.id == r.id
    assert store.cancel(r.id, owner="o").cancel_requested
    assert store.heartbeat(r.id, "w", 1, 10) == "cancel"
    assert store.finish_cancelled(r.id, "w", 1)
    assert store.get(r.id).state == "cancelled"
    assert store.cancel(r.id, owner="other") is None  # other owners cannot see it


def test_cancel_requested_and_worker_died_ends_cancelled(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="o")
    store.lease("w", ("generate",), 0.01)
    store.cancel(job.id)
    time.sleep(0.02)
    store.reap()
    assert store.get(job.id).state == "cancelled"


def test_release_does_not_spend_an_attempt(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="o")
    store.lease("w", ("generate",), 10)
    assert store.release(job.id, "w", 1)
    back = store.get(job.id)
    assert back.state == "queued" and back.attempts == 0


def test_bounded_queue_leaves_no_record(store: SQLiteJobStore) -> None:
    for _ in range(3):
        store.submit("generate", {}, owner="o", max_queued=3)
    with pytest.raises(QueueFull):
        store.submit("generate", {}, owner="o", max_queued=3)
    assert store.counts()["queued"] == 3 and len(store.list_jobs(limit=100)) == 3


def test_per_owner_cap_counts_queued_and_running_jobs(store: SQLiteJobStore) -> None:
    """An owner at its cap is refused with no record; running jobs count, finished ones and other owners do
    not, and an idempotent replay still returns its job."""
    first, _ = store.submit("generate", {}, owner="a", max_active=2, idempotency_key="k", body_hash="h")
    store.submit("generate", {}, owner="a", max_active=2)
    with pytest.raises(ClientBusy) as info:
        store.submit("generate", {}, owner="a", max_active=2)
    assert info.value.active == 2 and len(store.list_jobs(owner="a")) == 2
    assert store.submit("generate", {}, owner="a", max_active=2, idempotency_key="k", body_hash="h")[0].id == first.id
    store.submit("generate", {}, owner="b", max_active=2)
    leased = store.lease("w", ("generate",), lease_s=10)
    assert leased is not None and leased.owner == "a"
    with pytest.raises(ClientBusy):  # one running + one queued
        store.submit("generate", {}, owner="a", max_active=2)
    assert store.complete(leased.id, "w", leased.attempts, {})
    store.submit("generate", {}, owner="a", max_active=2)
    assert store.counts()["queued"] == 3


def test_idempotency(store: SQLiteJobStore) -> None:
    a, created = store.submit("generate", {"v": 1}, owner="o", idempotency_key="k1", body_hash="h1")
    b, again = store.submit("generate", {"v": 1}, owner="o", idempotency_key="k1", body_hash="h1")
    assert created and not again and a.id == b.id
    with pytest.raises(IdempotencyConflict):
        store.submit("generate", {"v": 2}, owner="o", idempotency_key="k1", body_hash="h2")
    other, created_other = store.submit("generate", {"v": 1}, owner="p", idempotency_key="k1", body_hash="h1")
    assert created_other and other.id != a.id  # keys are per owner


def test_idempotency_window_expires(store: SQLiteJobStore) -> None:
    a, _ = store.submit("generate", {}, owner="o", idempotency_key="k", body_hash="h")
    store._write(lambda c: c.execute("UPDATE jobs SET created_at = created_at - 90000 WHERE id=?", (a.id,)))
    b, created = store.submit("generate", {}, owner="o", idempotency_key="k", body_hash="h")
    assert created and b.id != a.id


def test_sweep_tombstones_and_files(store: SQLiteJobStore) -> None:
    job, _ = store.submit("generate", {}, owner="o")
    store.lease("w", ("generate",), 10)
    store.complete(job.id, "w", 1, {})
    old, files = store.sweep(tombstone_retention_s=3600, files_retention_s=0.0, now=time.time() + 1)
    assert old == [] and files == [job.id]
    assert store.get(job.id).files_swept  # tombstone kept, files flagged
    old, _ = store.sweep(tombstone_retention_s=0.0, files_retention_s=0.0, now=time.time() + 1)
    assert old == [job.id] and store.get(job.id) is None


def test_fail_unrunnable(store: SQLiteJobStore) -> None:
    gen, _ = store.submit("generate", {}, owner="o")
    fmt, _ = store.submit("format", {}, owner="o")
    assert store.fail_unrunnable({"generate"}, "planner not loaded") == [fmt.id]
    assert store.get(fmt.id).error_code == "planner_unavailable"
    assert store.get(gen.id).state == "queued"


def test_concurrent_leasing_never_double_leases(tmp_path: Path) -> None:
    """F11: several threads (own connections) lease from one file; every job is leased exactly once."""
    store = SQLiteJobStore(tmp_path / "jobs.db")
    ids = {store.submit("generate", {}, owner="o")[0].id for _ in range(60)}
    seen: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        local = SQLiteJobStore(tmp_path / "jobs.db")
        while True:
            job = local.lease(name, ("generate",), 30)
            if job is None:
                return
            assert local.complete(job.id, name, job.attempts, {})
            with lock:
                seen.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == sorted(ids)
    assert store.counts()["succeeded"] == 60
