"""Vectorised field access over packet header windows.

A `Rows` object is a set of packets (a subset of a batch) with a window of bytes for each. Fields
are read at per-packet positions given in packet coordinates; every read returns the values and
a mask of the packets for which the field really lies inside the captured bytes.
"""

from __future__ import annotations

import numpy as np

U16 = np.uint16
U32 = np.uint32


class Rows:
    def __init__(
        self, win: np.ndarray, limit: np.ndarray, base: np.ndarray | None = None, skip: int = 0
    ) -> None:
        self.win = win  # (m, skip + W) uint8, C-contiguous: packet bytes start at column skip
        self.skip = skip
        self.limit = limit.astype(np.int64)  # captured bytes per packet
        self.base = np.zeros(len(limit), np.int64) if base is None else base.astype(np.int64)
        self.width = win.shape[1] - skip
        self._r = np.arange(len(limit))

    def __len__(self) -> int:
        return len(self.limit)

    def subset(self, sel: np.ndarray) -> Rows:
        """Rows for the packets `sel` (sorted unique indices); the common all-rows case is free."""
        if len(sel) == len(self.limit):
            return self
        return Rows(self.win[sel], self.limit[sel], self.base[sel], self.skip)

    def writable(self) -> None:
        """Windows are read-only views of what the walker returned; copy before re-reading."""
        if not self.win.flags.writeable:
            self.win = self.win.copy()

    def _at(self, pos: np.ndarray, size: int) -> tuple[np.ndarray | int, np.ndarray]:
        """Window column(s) for `pos`: a single int when every packet has the header at the same
        place (the common case, read as a column slice), else per-row positions."""
        local = pos - self.base
        ok = (local >= 0) & (local + size <= self.width) & (pos + size <= self.limit)
        if (
            len(local)
            and local[0] == local.min() == local.max()
            and 0 <= local[0] <= self.width - size
        ):
            return int(local[0]) + self.skip, ok
        return np.clip(local, 0, self.width - size) + self.skip, ok

    def _bytes(self, p: np.ndarray | int, size: int) -> np.ndarray:
        """(m, size) uint8."""
        if isinstance(p, int):
            return self.win[:, p : p + size]
        return self.win[self._r[:, None], p[:, None] + np.arange(size)]

    def _column(self, p: int, dtype: str) -> np.ndarray:
        """A field at the same place in every row, read in place through a strided view."""
        return np.ndarray((len(self.limit),), dtype, self.win, p, (self.win.shape[1],))

    def u8(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, ok = self._at(pos, 1)
        return (self.win[:, p] if isinstance(p, int) else self.win[self._r, p]), ok

    def u16(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, ok = self._at(pos, 2)
        if isinstance(p, int):
            return self._column(p, ">u2").astype(U16), ok
        b = np.ascontiguousarray(self._bytes(p, 2))
        return b.view(">u2").reshape(-1).astype(U16), ok

    def u32(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, ok = self._at(pos, 4)
        if isinstance(p, int):
            return self._column(p, ">u4").astype(U32), ok
        b = np.ascontiguousarray(self._bytes(p, 4))
        return b.view(">u4").reshape(-1).astype(U32), ok

    def prefix_hash(self, pos: np.ndarray, avail: np.ndarray, size: int = 16) -> np.ndarray:
        """16-bit FNV-1a of up to `size` bytes from pos (fewer when fewer are available or
        the window ends), per packet."""
        local = pos - self.base
        h = np.full(len(local), 2166136261, np.uint32)
        r = self._r
        with np.errstate(over="ignore"):
            for k in range(size):
                col = local + k
                valid = (k < avail) & (col >= 0) & (col < self.width) & (pos + k < self.limit)
                b = self.win[r, np.clip(col, 0, self.width - 1) + self.skip]
                h = np.where(valid, (h ^ b) * np.uint32(16777619), h)
        return ((h >> 16) ^ (h & 0xFFFF)).astype(np.uint16)

    def raw(self, pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(m, size) bytes at pos: used for IPv6 addresses."""
        p, ok = self._at(pos, size)
        return self._bytes(p, size), ok
