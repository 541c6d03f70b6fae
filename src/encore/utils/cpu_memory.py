"""Let the VAE reuse freed CPU memory within a call instead of page-faulting fresh memory for every tensor.

glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh `mmap`
and unmaps it on free. A VAE decode allocates and frees activations of 30-500 MB dozens of times, so the kernel
zero-fills and faults every one of them in again. Inside `reused_heap()` glibc carves large blocks from the heap
(`M_MMAP_MAX` 0) and keeps the freed ones (`M_TRIM_THRESHOLD` at its maximum); on leaving the outermost block the
defaults come back and `malloc_trim(0)` returns the free pages, so nothing stays resident between calls.
Measured on the 2-core dev box (fp32, 2 threads): the embedded model's 10 s decode 0.41 s -> 0.29 s, 60 s
4.3 s -> 1.8 s.

`ENCORE_CPU_ALLOCATOR=keep` keeps the settings and the freed memory after the first block instead, for a
process that generates again and again (a server, a batch script): each later call reuses the pages the last
one faulted in (the embedded turbo's 10 s decode 0.167 -> 0.141 s over 12 calls), and the process holds its
largest call's working set between calls.

glibc on Linux only; elsewhere (musl, macOS, Windows) the block changes nothing. Opt out with
`ENCORE_CPU_ALLOCATOR=system`; a user who set glibc's own `MALLOC_MMAP_MAX_` / `MALLOC_TRIM_THRESHOLD_`
variables keeps them. The settings are process-wide, so other threads allocating during a block reuse the heap
too (harmless); allocations from threads other than the main one come from their own arenas, which keep
mapping large blocks afresh.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "ENCORE_CPU_ALLOCATOR"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_FREED = 2**31 - 1
"""Trim threshold inside a block: the largest value `mallopt` takes."""
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
"""glibc's defaults, restored on leaving the outermost block."""

_lock = threading.Lock()
_depth = 0
_applied = False
"""Whether the outermost open block's settings took (what every nested block yields)."""
MODES = ("heap", "keep", "system")


def _mode() -> str:
    return os.environ.get(ENV_VAR, "heap").strip().lower()


@functools.cache
def _glibc() -> Any | None:
    """The C library when the heap settings may be changed, else None (decided once per process)."""
    choice = _mode()
    if choice not in MODES:
        log.warning("%s=%r is not one of %s; leaving the allocator alone", ENV_VAR, choice, ", ".join(MODES))
        return None
    if choice == "system" or "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def heap_reuse_available() -> bool:
    """Whether `reused_heap()` changes anything in this process."""
    return _glibc() is not None


@contextmanager
def reused_heap() -> Iterator[bool]:
    """Within the block, large CPU allocations reuse freed heap memory; yields whether the settings apply.

    Re-entrant and thread-safe: only the outermost block changes and restores the settings (with
    `ENCORE_CPU_ALLOCATOR=keep` the first block's settings and freed memory stay for the process's life).
    """
    global _depth, _applied
    libc = _glibc()
    if libc is None:
        yield False
        return
    keep = _mode() == "keep"
    with _lock:
        _depth += 1
        if _depth == 1 and not (keep and _applied):
            _applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED) and libc.mallopt(_M_MMAP_MAX, 0))
            if not _applied:
                log.warning("glibc mallopt refused the heap settings; large blocks are mapped as usual")
        applied = _applied
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and not keep:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
