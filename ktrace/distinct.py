"""The distinct values of an integer column, sorted: np.unique(values) without its check for a
masked array, whose first call imports numpy.ma (10 ms, at every start of the command)."""

from __future__ import annotations

import numpy as np

# Unsigned values of at most this many bits are counted into a table instead of sorted.
COUNTED_BITS = 16


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer or boolean array, as np.unique gives them."""
    flat = np.asarray(values).reshape(-1)
    kind, bits = flat.dtype.kind, flat.dtype.itemsize * 8
    if kind == "b" or (kind == "u" and bits <= COUNTED_BITS):
        counts = np.bincount(flat.view(np.uint8) if kind == "b" else flat)
        return np.flatnonzero(counts).astype(flat.dtype)
    ordered = np.sort(flat)
    keep = np.empty(len(ordered), bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
