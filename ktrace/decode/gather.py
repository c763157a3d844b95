"""Fixed windows of bytes read from many places of the mapped captures at once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ktrace.distinct import distinct
from ktrace.pcap.hot import Buffer


def gather(
    buffer: Callable[[int], Buffer], point: np.ndarray, start: np.ndarray, width: int
) -> np.ndarray:
    """(n, width) bytes from each start; past the end of the file, zeros."""
    out = np.zeros((len(start), width), np.uint8)
    for p in distinct(point).tolist():
        sel = np.flatnonzero(point == p)
        at = start[sel]
        data = np.frombuffer(buffer(p), np.uint8)
        try:
            whole = at <= len(data) - width
            if whole.any():  # rows copied whole from a strided view: no index per byte
                rows = np.lib.stride_tricks.sliding_window_view(data, width)
                out[sel[whole]] = rows[at[whole]]
                del rows
            for k, begin in zip(sel[~whole].tolist(), at[~whole].tolist(), strict=True):
                tail = data[begin : begin + width]
                out[k, : len(tail)] = tail
        finally:
            del data  # an mmap with a live export cannot be closed
    return out
