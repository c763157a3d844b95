"""A 64-bit mix of several integer columns into one, for grouping rows by many fields at once."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ktrace.chunking import chunks, in_threads
from ktrace.kernels import load, native

K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xC2B2AE3D27D4EB4F)


def mix(parts: Iterable[np.ndarray], n: int, k: np.uint64 = K1) -> np.ndarray:
    """uint64 per row; rows with equal parts get equal values, distinct ones almost never do
    (callers that need certainty compare the parts of rows that share a value)."""
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            h ^= part.astype(np.uint64, copy=False)
            h *= k
            h ^= h >> np.uint64(29)
        h *= K2 if k is K1 else K1
    return h


def mix_rows(columns: tuple[np.ndarray, ...], rows: np.ndarray, k: np.uint64 = K1) -> np.ndarray:
    """mix(..., k) of the columns (unsigned integers) read at `rows`: in one C pass, its rows
    split across the cores, where it was built, else a chunk of rows at a time."""
    c_part = native(_C)
    if c_part is not None:
        out = np.empty(len(rows), np.uint64)
        contiguous = tuple(np.ascontiguousarray(c) for c in columns)
        rows = np.ascontiguousarray(rows)
        mix_c, first, last = c_part.mix_rows, int(k), int(K2 if k is K1 else K1)
        in_threads(
            len(rows), lambda lo, hi: mix_c(contiguous, rows[lo:hi], out[lo:hi], first, last)
        )
        return out
    return mix_rows_numpy(columns, rows, k)


def mix_rows_numpy(
    columns: tuple[np.ndarray, ...], rows: np.ndarray, k: np.uint64 = K1
) -> np.ndarray:
    out = np.empty(len(rows), np.uint64)
    for lo, hi in chunks(len(rows)):
        r = rows[lo:hi]
        out[lo:hi] = mix([c[r] for c in columns], hi - lo, k)
    return out


_C = load("ktrace.kernels._mix")
