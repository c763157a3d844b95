"""Row-local work a chunk of rows at a time: temporaries of a few MB whatever the capture's
size, where whole-column expressions would make one array per step as long as the index."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 1 << 16  # rows per step: temporaries of half a MB each, a dozen alive at once
# Rows below which one thread finishes a C loop before more could start (~0.1 ms each).
THREADED_MIN = 1 << 17


def row_type(n: int) -> type[np.signedinteger]:
    """The dtype for positions among n rows: int32 (half the bytes) where they fit. A column
    is read at such positions with `column.take(positions)`: `column[positions]` sends an
    index that is not intp through numpy's general indexing path, 2-3x slower."""
    return np.int32 if n < 2**31 else np.int64


def chunks(n: int) -> Iterator[tuple[int, int]]:
    return ((lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK))


def counted_keys(n: int, keys: Callable[[int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(..., return_counts=True) of the keys of rows 0..n, given the keys of rows
    lo..hi: each chunk's distinct keys, which are few beside its rows, merged at the end."""
    found, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi in chunks(n):
        k, c = np.unique(keys(lo, hi), return_counts=True)
        found.append(k)
        counts.append(c)
    distinct, inverse = np.unique(np.concatenate(found), return_inverse=True)
    total = np.bincount(inverse.reshape(-1), np.concatenate(counts), len(distinct))
    return distinct, total.astype(np.int64)


def distinct_keys(n: int, keys: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """np.unique of the keys of rows 0..n, a chunk at a time (as counted_keys)."""
    return counted_keys(n, keys)[0]


def bincount(values: np.ndarray, minlength: int, weights: np.ndarray | None = None) -> np.ndarray:
    """np.bincount a chunk at a time: it widens small integer values (and weights) to 8 bytes
    a row first. Sums of weights are floats, exact for integers below 2**53."""
    out = np.zeros(minlength, np.int64 if weights is None else np.float64)
    for lo, hi in chunks(len(values)):
        w = None if weights is None else weights[lo:hi].astype(np.float64)
        part = np.bincount(values[lo:hi], w, minlength)
        if len(part) > len(out):  # a value past minlength
            out = np.concatenate([out, np.zeros(len(part) - len(out), out.dtype)])
        out[: len(part)] += part.astype(out.dtype, copy=False)
    return out


def cores(reserve: int = 0) -> int:
    """Every core but `reserve`, at most 4."""
    return max(1, min((os.cpu_count() or 1) - reserve, 4))


def in_threads(n: int, work: Callable[[int, int], object]) -> None:
    """work(lo, hi) over rows 0..n, in one part per core run at once: for the C loops that
    release the GIL and write rows of their own (DNS questions, fingerprints), which would
    otherwise leave the other cores idle between the stages' numpy steps."""
    parts = cores() if n >= THREADED_MIN else 1
    bounds = [n * k // parts for k in range(parts + 1)]
    if parts == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(parts - 1) as pool:
        rest = [pool.submit(work, bounds[k], bounds[k + 1]) for k in range(1, parts)]
        work(bounds[0], bounds[1])
        for done in rest:
            done.result()


def in_order(work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """work(item) for each item on the other cores, the results in the items' order, while
    this thread makes the next items (pulled from `items` here, never from a worker): for C
    work that releases the GIL (laying out JSON rows) beside the Python that makes its
    input. A few results wait at most, so that they stay a few MB."""
    workers = cores(reserve=1)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
