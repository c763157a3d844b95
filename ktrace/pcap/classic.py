"""Classic libpcap files: both byte orders, micro- and nanosecond, and Kuznetzov's variant."""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator

import numpy as np

from ktrace.errors import CaptureFileError
from ktrace.pcap import hot
from ktrace.pcap.records import MAX_CAPLEN, WINDOW, Interface, RecordBatch
from ktrace.pcap.source import MappedFile

# magic as read little-endian -> (byte order, ns resolution, record header length)
MAGICS = {
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24),  # Kuznetzov's patched libpcap: 8 more bytes per record
    0x34CDB2A1: (">", False, 24),
}
FILE_HEADER = 24


class ClassicPcap:
    kind = "pcap"

    def __init__(self, mf: MappedFile) -> None:
        if mf.size < FILE_HEADER:
            raise CaptureFileError(
                f"{mf.path}: truncated pcap header ({mf.size} of {FILE_HEADER} bytes)"
            )
        (magic,) = struct.unpack_from("<I", mf.view, 0)
        order, nano, hdr = MAGICS[magic]
        _, _, _, _, snaplen, linktype = struct.unpack_from(order + "HHiIII", mf.view, 4)
        self.mf = mf
        self.order = order
        self.hdr = hdr
        self.first = FILE_HEADER
        self.interfaces = [Interface(linktype & 0x0FFFFFFF, snaplen, ts_mult=1 if nano else 1000)]
        self.warnings: list[str] = []
        self.drops: dict[int, int] = {}
        self.windows: dict[int, tuple[int, int]] = {}  # a classic file says nothing of it
        self._caplen = struct.Struct(order + "I").unpack_from
        self.swap = int(order != ("<" if sys.byteorder == "little" else ">"))
        self._rec = np.dtype(
            [
                ("sec", order + "u4"),
                ("frac", order + "u4"),
                ("caplen", order + "u4"),
                ("len", order + "u4"),
            ]
        )

    def prime(self) -> None:
        """Nothing precedes the records in a classic file."""

    def walk(self, start: int, stop: int, batch: int) -> Iterator[RecordBatch]:
        """Records whose header starts in [start, stop), about `batch` file bytes at a time."""
        mm, size, hdr = self.mf.mm, self.mf.size, self.hdr
        off = start
        while off < stop and off + hdr <= size:
            offsets, rows, end, reason = hot.walk(
                mm, off, stop, batch, hdr, self.swap, WINDOW, MAX_CAPLEN
            )
            if rows:
                yield self._batch(offsets, rows, end)
            if reason:
                caplen = self._caplen(mm, end + 8)[0]
                self.warnings.append(
                    f"record at byte {end} claims {caplen} captured bytes (limit "
                    f"{MAX_CAPLEN}): the file is corrupt from there; read what came before"
                )
                return
            if end == off:
                break
            off = end
        if off < stop and off < size < off + hdr:
            self.warnings.append(f"file ends inside a record header at byte {off}")

    def _batch(self, offsets: bytes, rows: bytes, end: int) -> RecordBatch:
        offset = np.frombuffer(offsets, np.int64)
        n = len(offset)
        grid = np.frombuffer(rows, np.uint8).reshape(n, self.hdr + WINDOW)
        head = np.ascontiguousarray(grid[:, :16]).view(self._rec).reshape(n)
        caplen = head["caplen"].astype(np.uint32)
        room = np.clip(self.mf.size - offset, 0, None).astype(np.uint32)
        cut = caplen > room
        if cut.any():
            self.warnings.append(
                f"last record cut short: {int(room[cut][0])} of {int(caplen[cut][0])} bytes "
                "present (file truncated); kept the partial packet"
            )
            caplen = np.minimum(caplen, room)
        mult = self.interfaces[0].ts_mult
        ts = head["sec"].astype(np.int64) * 1_000_000_000 + head["frac"].astype(np.int64) * mult
        return RecordBatch(
            offset,
            ts,
            caplen,
            head["len"].astype(np.uint32),
            np.zeros(n, np.uint16),
            grid,
            end,
            self.hdr,
        )

    def sync(self, near: int, depth: int = 8, scan: int = 1 << 18) -> int | None:
        """A byte offset at or after `near` where `depth` plausible records chain up, or None.

        Used to split a file between workers; the previous worker's walk verifies the guess.
        """
        view, size = self.mf.view, self.mf.size
        rec = struct.Struct(self.order + "IIII").unpack_from
        frac_max = 1_000_000 if self.interfaces[0].ts_mult == 1000 else 1_000_000_000
        (first_sec,) = struct.unpack_from(self.order + "I", view, self.first)
        for p in range(near, min(near + scan, size - 16)):
            q, ok = p, 0
            while ok < depth and q + 16 <= size:
                sec, frac, cap, wire = rec(view, q)
                if (
                    cap > MAX_CAPLEN
                    or wire < cap
                    or frac >= frac_max
                    or abs(sec - first_sec) > 400 * 86400
                ):
                    break
                ok += 1
                q += self.hdr + cap
            if ok == depth or (ok and q == size):
                return p
        return None
