"""Process-wide tuning for the CLI and the benchmark (never applied by the library itself)."""

from __future__ import annotations

import ctypes
import gc
from functools import cache

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 1 << 30
# The analysis builds its few large results (DNS exchanges, rows) in one go and keeps them:
# collecting every 700 new objects re-walks them for nothing.
GC_YOUNG = 50_000


def tune_process() -> None:
    tune_allocator()
    tune_collector()


def tune_collector() -> None:
    """Collect young objects less often; what was imported is never garbage."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the C library the interpreter itself runs on
    except OSError:
        return None


def tune_allocator() -> None:
    """Keep freed memory in the heap instead of returning it to the kernel, up to 4 MB a
    block.

    The analysis makes many short-lived arrays of a few MB; by default glibc maps and unmaps
    each once past 128 KB, and touching fresh pages again costs more than the arithmetic on
    them (measured: a flow table on 1M packets drops from 0.27 s to 0.18 s). Blocks of 4 MB
    and more are mapped all the same: kept in the heap, their holes grew it past what was
    alive (a DNS-heavy 1 GB capture peaked at 147 MB with 32 MB blocks kept, 140 MB with
    4 MB, in the same time over ten runs each). One arena for all threads: the index
    threads' freed batches are then reused by the analysis after them (1 GB: 248 -> 209
    bytes a packet at the peak, no slower). What a stage frees is handed back between stages
    (release_free_memory).
    """
    libc = _libc()
    try:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            libc.mallopt(M_ARENA_MAX, 1)
    except AttributeError:
        return  # not glibc: nothing to tune


def release_free_memory() -> None:
    """Give the kernel back the heap's free pages, holes included: called between stages of
    the analysis, each stage's temporaries stop counting towards the next one's peak (1 GB
    bench: 174 -> 157 bytes a packet), for one pass over the heap instead of a map and unmap
    per array."""
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        return  # not glibc
