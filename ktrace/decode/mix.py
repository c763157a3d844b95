"""A 64-bit mix of several integer columns into one, for grouping rows by many fields at once."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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
