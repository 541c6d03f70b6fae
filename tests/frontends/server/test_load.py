"""L-test: 32 concurrent clients on loopback against `encore serve` (fake model, 2 workers, small queue).

Pass: zero 5xx and zero transport errors, 429 + Retry-After once the queue is full, every accepted job runs,
API memory growth bounded. The figures (requests, p50/p99 submit latency, RSS growth) are printed and written
to ``load_figures.json`` in the test's tmp folder; docs/serving.md quotes a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from frontends.server.srvkit import AUTH

CLIENTS = 32
SUBMITS_PER_CLIENT = 15


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _client(url: str, n: int, latencies: list[float], statuses: list[int], accepted: list[str],
                  errors: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        for i in range(n):  # bounded loop
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/jobs", json={"request": {"text": {"caption": f"load {i}"}}})
            except httpx.TransportError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)
            statuses.append(r.status_code)
            if r.status_code == 202:
                accepted.append(r.json()["id"])
            elif r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                await asyncio.sleep(0.05)
            if i % 5 == 4:  # pollers too, as real clients are
                await http.get("/v1/stats")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_32_clients(live_factory: Any, tmp_path: Path) -> None:
    srv = live_factory(workers=2, extra_args=("--queue-max", "32"),
                       extra_env={"ENCORE_FAKE": json.dumps({"fake_step_s": 0.01, "fake_steps": 2})})
    srv.wait_ready()
    for _ in range(20):  # warm-up so the RSS baseline includes imports and pools
        srv.client.post("/v1/jobs", json={"request": {}})
    time.sleep(1.0)
    rss_before = _rss_kib(srv.proc.pid)
    latencies: list[float] = []
    statuses: list[int] = []
    accepted: list[str] = []
    errors: list[str] = []

    async def run() -> None:
        await asyncio.gather(*(_client(srv.url, SUBMITS_PER_CLIENT, latencies, statuses, accepted, errors)
                               for _ in range(CLIENTS)))

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    rss_after = _rss_kib(srv.proc.pid)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stats = srv.client.get("/v1/stats").json()["data"]["jobs"]
        if stats["queued"] == 0 and stats["running"] == 0:
            break
        time.sleep(0.3)
    final = srv.client.get("/v1/stats").json()["data"]["jobs"]
    figures = {
        "clients": CLIENTS, "submits": len(statuses), "accepted_202": statuses.count(202),
        "rejected_429": statuses.count(429), "server_errors_5xx": sum(s >= 500 for s in statuses),
        "transport_errors": len(errors), "submit_p50_ms": round(1000 * _percentile(latencies, 0.5), 1),
        "submit_p99_ms": round(1000 * _percentile(latencies, 0.99), 1), "wall_s": round(wall, 2),
        "submits_per_s": round(len(statuses) / wall, 1), "api_rss_before_mib": round(rss_before / 1024, 1),
        "api_rss_growth_mib": round((rss_after - rss_before) / 1024, 1), "jobs_succeeded": final["succeeded"],
        "host_load_avg_1m": round(os.getloadavg()[0], 2), "host_cpus": os.cpu_count(),
    }
    (tmp_path / "load_figures.json").write_text(json.dumps(figures, indent=2))
    print("load figures:", json.dumps(figures))
    assert figures["server_errors_5xx"] == 0 and not errors
    assert figures["rejected_429"] > 0  # the bounded queue pushed back
    assert set(statuses) <= {202, 429}
    assert final["failed"] == 0 and final["succeeded"] == len(accepted) + 20  # every accepted job ran
    assert figures["api_rss_growth_mib"] < 64
