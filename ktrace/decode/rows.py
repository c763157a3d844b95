"""Vectorised field access over packet header windows.

A `Rows` object is a set of packets (a subset of a batch) with a window of bytes for each. Fields
are read at per-packet positions given in packet coordinates; every read returns the values and
a mask of the packets for which the field really lies inside the captured bytes.
"""

from __future__ import annotations

import numpy as np

from ktrace.distinct import distinct

U16 = np.uint16
U32 = np.uint32
# the payload hash of a packet whose first payload bytes were not all captured
UNKNOWN_HASH = 0xFFFF


class Rows:
    def __init__(
        self,
        win: np.ndarray,
        limit: np.ndarray,
        base: np.ndarray | None = None,
        skip: int = 0,
        wire: np.ndarray | None = None,
    ) -> None:
        self.win = win  # (m, skip + W) uint8, C-contiguous: packet bytes start at column skip
        self.skip = skip
        self.limit = limit.astype(np.int64)  # captured bytes per packet
        # bytes the packet had on the wire (at least those captured): what lengths must fit
        self.wire = self.limit if wire is None else np.maximum(wire.astype(np.int64), self.limit)
        self.base = np.zeros(len(limit), np.int64) if base is None else base.astype(np.int64)
        self.width = win.shape[1] - skip
        self._r = np.arange(len(limit))

    def __len__(self) -> int:
        return len(self.limit)

    def subset(self, sel: np.ndarray) -> Rows:
        """Rows for the packets `sel` (sorted unique indices); the common all-rows case is free."""
        if len(sel) == len(self.limit):
            return self
        return Rows(self.win[sel], self.limit[sel], self.base[sel], self.skip, self.wire[sel])

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

    def payload_prefix(self, pos: np.ndarray, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per packet, from its first 8 payload bytes (fewer when the payload is shorter): a
        16-bit hash, part of the cross-point fingerprint (0 without payload, UNKNOWN_HASH when
        the capture's snap length or the window cut those bytes: another point may have them
        all), and the first four as a big-endian word (0 when fewer than four lie in the
        window)."""
        out = np.zeros(len(pos), np.uint16)
        lead = np.zeros(len(pos), np.uint32)
        local = pos - self.base
        wanted = np.minimum(avail, 8)
        have = np.minimum(wanted, np.minimum(self.limit - pos, self.width - local))
        cut = (have < wanted) | ((local < 0) & (wanted > 0))
        todo = np.flatnonzero((have > 0) & (local >= 0) & ~cut)
        out[cut] = UNKNOWN_HASH
        # a cut payload's first four bytes, where captured, still say what it starts
        cut_four = np.flatnonzero(cut & (have >= 4) & (local >= 0))
        starts = local[cut_four]
        for start in distinct(starts).tolist():
            rows = cut_four[starts == start]
            at = self.skip + start
            lead[rows] = self.win[rows, at : at + 4].copy().view(">u4").reshape(-1)
        if not len(todo):
            return out, lead
        # Payloads start at a handful of offsets: read each group as one 8-byte column.
        starts = local[todo]
        for start in distinct(starts).tolist():
            rows = todo[starts == start]
            width = min(8, self.width - start)
            block = np.zeros((len(rows), 8), np.uint8)
            block[:, :width] = self.win[rows, self.skip + start : self.skip + start + width]
            lead[rows] = np.where(have[rows] >= 4, block[:, :4].copy().view(">u4").reshape(-1), 0)
            word = block.view("<u8").reshape(-1)
            keep = np.left_shift(np.uint64(1), (have[rows] * 8).astype(np.uint64) % 64)
            word &= np.where(have[rows] >= 8, np.uint64(0xFFFFFFFFFFFFFFFF), keep - np.uint64(1))
            with np.errstate(over="ignore"):
                h = (word ^ have[rows].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
            out[rows] = np.minimum((h >> np.uint64(48)).astype(np.uint16), UNKNOWN_HASH - 1)
        return out, lead

    def raw(self, pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(m, size) bytes at pos: used for IPv6 addresses."""
        p, ok = self._at(pos, size)
        return self._bytes(p, size), ok
