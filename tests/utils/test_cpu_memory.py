"""The CPU heap settings: opt-outs, and that repeated large tensors stop page-faulting once applied."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from encore.utils import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 64 MiB tensor 20 times in the main thread (where the CLI and the server's worker
# processes generate), then in a second thread, and reports the minor page faults of the last 10 of each run:
# glibc's heap needs a few rounds to hold a free block that fits the aligned request, after which nothing should
# fault. Other threads allocate from their own arenas, which still map large blocks afresh (documented limit).
_PROBE = """
import json, resource, threading, torch
from encore.utils.cpu_memory import tune_cpu_allocator
applied = tune_cpu_allocator()
faults = []
def churn():
    for k in range(20):
        if k == 10:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(16 * 1024 * 1024)
        assert float(t[-1]) == 1.0
        del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
churn()
worker = threading.Thread(target=churn)
worker.start(); worker.join()
print(json.dumps({"applied": applied, "main": faults[0], "thread": faults[1]}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != cpu_memory.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_memory, "_state", None)
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", cpu_memory.ENV_VAR):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("env", [{"ENCORE_CPU_ALLOCATOR": "system"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"ENCORE_CPU_ALLOCATOR": "jemalloc"}])  # fmt: skip
def test_opt_outs_change_nothing(fresh: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cpu_memory.tune_cpu_allocator() is False
    monkeypatch.delenv(next(iter(env)))
    assert cpu_memory.tune_cpu_allocator() is False, "the first answer holds for the whole process"


@pytest.mark.skipif(not GLIBC, reason="the settings exist only in glibc")
def test_large_tensors_reuse_heap_pages() -> None:
    default = _probe(ENCORE_CPU_ALLOCATOR="system")
    tuned = _probe()
    assert default["applied"] is False and tuned["applied"] is True
    pages = 10 * 64 * 1024 * 1024 // 4096
    assert default["main"] > 0.8 * pages, default  # every allocation faults in fresh pages
    assert tuned["main"] < 0.05 * pages, tuned  # warm heap blocks are reused
    assert tuned["thread"] > 0, tuned  # the probe ran there too, with correct values
