"""`reused_heap`: opt-outs, reuse of large blocks inside a block, and nothing left resident after it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from encore.utils import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Minor page faults of allocating, touching and freeing a 64 MiB tensor 10 times (after 10 warm-up rounds: glibc's
# heap needs a few to hold a free block that fits the aligned request), outside any block, inside one, and inside
# a nested one after its inner block ended; then the resident memory a 512 MiB tensor leaves after the block.
_PROBE = """
import json, resource, torch
from encore.utils.cpu_memory import reused_heap

def faults():
    for k in range(20):
        if k == 10:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(16 * 1024 * 1024)
        assert float(t[-1]) == 1.0
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

out = {"outside": faults()}
with reused_heap() as applied:
    out["applied"] = applied
    out["inside"] = faults()
    with reused_heap():
        pass
    out["after_inner"] = faults()
before = rss_mib()
with reused_heap():
    big = torch.ones(128 * 1024 * 1024)
    del big
out["kept_mib"] = rss_mib() - before
# The first 64 MiB of the next block: faulted in afresh after a trim, reused where the freed memory was kept.
with reused_heap():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 1024 * 1024)
    out["next_first"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
    del t
print(json.dumps(out))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != cpu_memory.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch):
    cpu_memory._glibc.cache_clear()
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", cpu_memory.ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    yield
    cpu_memory._glibc.cache_clear()


@pytest.mark.parametrize("env", [{"ENCORE_CPU_ALLOCATOR": "system"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"ENCORE_CPU_ALLOCATOR": "jemalloc"}])  # fmt: skip
def test_opt_outs_change_nothing(fresh: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with cpu_memory.reused_heap() as applied:
        assert applied is False
    assert cpu_memory.heap_reuse_available() is False


@pytest.mark.skipif(not GLIBC, reason="the settings exist only in glibc")
def test_large_blocks_are_reused_inside_and_returned_after() -> None:
    pages = 10 * 64 * 1024 * 1024 // 4096
    tuned = _probe(ENCORE_CPU_ALLOCATOR_IDLE_S="0")  # released as each block ends
    assert tuned["applied"] is True
    assert tuned["outside"] > 0.8 * pages, tuned  # default glibc: every allocation faults in fresh pages
    assert tuned["inside"] < 0.05 * pages, tuned  # warm heap blocks are reused
    assert tuned["after_inner"] < 0.05 * pages, tuned  # an inner block does not end the outer one's settings
    assert tuned["kept_mib"] < 64, tuned  # the 512 MiB went back to the kernel when the block ended
    assert tuned["next_first"] > 0.8 * pages // 10, tuned  # ... so the next call faults its memory in again
    opted_out = _probe(ENCORE_CPU_ALLOCATOR="system", ENCORE_CPU_ALLOCATOR_IDLE_S="0")
    assert opted_out["applied"] is False and opted_out["inside"] > 0.8 * pages, opted_out


@pytest.mark.skipif(not GLIBC, reason="the settings exist only in glibc")
def test_keep_mode_holds_freed_memory_for_the_next_call() -> None:
    pages = 64 * 1024 * 1024 // 4096
    kept = _probe(ENCORE_CPU_ALLOCATOR="keep")
    assert kept["applied"] is True and kept["inside"] < 0.05 * 10 * pages, kept
    assert kept["kept_mib"] > 256, kept  # the 512 MiB stayed with the process
    assert kept["next_first"] < 0.05 * pages, kept  # and the next block reused it without faulting


_IDLE_PROBE = """
import json, resource, time, torch
from encore.utils.cpu_memory import reused_heap

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

before = rss_mib()
with reused_heap():
    big = torch.ones(128 * 1024 * 1024)
    del big
out = {"kept_mib": rss_mib() - before}
with reused_heap():  # a call right after: the freed pages are still there
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 1024 * 1024)
    out["next_first"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
    del t
time.sleep(2.5)  # idle past ENCORE_CPU_ALLOCATOR_IDLE_S=1
out["idle_kept_mib"] = rss_mib() - before
print(json.dumps(out))
"""


@pytest.mark.skipif(not GLIBC, reason="the settings exist only in glibc")
def test_the_heap_is_kept_while_calls_follow_and_returned_when_idle() -> None:
    pages = 64 * 1024 * 1024 // 4096
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and not k.startswith("ENCORE_CPU")}
    run = subprocess.run([sys.executable, "-c", _IDLE_PROBE], env={**clean, "ENCORE_CPU_ALLOCATOR_IDLE_S": "1"},
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["kept_mib"] > 256, out  # the 512 MiB stay while the next call may come
    assert out["next_first"] < 0.05 * pages, out  # which reuses them without faulting
    assert out["idle_kept_mib"] < 64, out  # and an idle second later they are back with the kernel


def test_a_bad_idle_setting_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(cpu_memory.IDLE_ENV_VAR, bad)
        with caplog.at_level("WARNING", logger=cpu_memory.__name__):
            assert cpu_memory._idle_seconds() == cpu_memory.DEFAULT_IDLE_S
    assert sum(cpu_memory.IDLE_ENV_VAR in r.getMessage() for r in caplog.records) == 3
    monkeypatch.setenv(cpu_memory.IDLE_ENV_VAR, "0")
    assert cpu_memory._idle_seconds() == 0.0
