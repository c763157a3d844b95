"""pcapng: sections in either byte order, interfaces of different link types and resolutions,
EPB/SPB/obsolete PB packets, statistics (kernel drops) and options such as comments."""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from ktrace.distinct import distinct
from ktrace.errors import CaptureFileError
from ktrace.pcap import hot
from ktrace.pcap.records import MAX_CAPLEN, WINDOW, Interface, RecordBatch
from ktrace.pcap.source import MappedFile

SHB = 0x0A0D0D0A
IDB = 1
PB = 2  # obsolete Packet Block
SPB = 3
ISB = 5
EPB = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
# EPB row: block length, interface, ts high, ts low, caplen, original length, then the data.
ROW_HEAD = 24
NO_TS = 0xFFFFFFFF  # marks SPB rows, which carry no timestamp
# Shortest well-formed block of each type: header, fixed fields, trailer.
MIN_LENGTH = {SHB: 28, IDB: 20, PB: 32, SPB: 16, ISB: 24, EPB: 32}


def _options(buf: memoryview, start: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    off = start
    while off + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, off)
        if code == 0:
            return
        yield code, bytes(buf[off + 4 : min(off + 4 + length, end)])
        off += 4 + ((length + 3) & ~3)


def _tsresol(value: int) -> tuple[int, int]:
    """if_tsresol -> (mult, div) so that ns = raw * mult // div."""
    exp = value & 0x7F
    if value & 0x80:
        units = 2**exp
        return 1_000_000_000, units
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


class LayoutChanged(Exception):
    """A worker walking the middle of a file met a section or interface block it cannot place."""


class Pcapng:
    kind = "pcapng"
    frozen_layout = False  # set in workers that start mid-file

    def __init__(self, mf: MappedFile) -> None:
        self.mf = mf
        self.interfaces: list[Interface] = []
        self.warnings: list[str] = []
        self.drops: dict[int, int] = {}
        self.windows: dict[int, tuple[int, int]] = {}  # interface -> capturing from, until (ns)
        self.comments: list[str] = []
        self._section_base = 0
        self._order = "<"
        if mf.size < 28:
            raise CaptureFileError(f"{mf.path}: truncated pcapng header ({mf.size} bytes)")
        self.first = 0
        self._enter_section(0)
        (self._blen,) = struct.unpack_from(self._order + "I", mf.view, 4)
        self.first = self._blen
        if self._blen < 28 or self._blen % 4:
            raise CaptureFileError(f"{mf.path}: pcapng section header has a bad length")

    def _enter_section(self, off: int) -> None:
        (magic,) = struct.unpack_from("<I", self.mf.view, off + 8)
        if magic == BYTE_ORDER_MAGIC:
            self._order = "<"
        elif magic == 0x4D3C2B1A:
            self._order = ">"
        else:
            raise CaptureFileError(f"{self.mf.path}: pcapng section at byte {off} is unreadable")
        self._section_base = len(self.interfaces)
        self._pair = struct.Struct(self._order + "II").unpack_from
        self.swap = int(self._order != ("<" if sys.byteorder == "little" else ">"))
        self._row = np.dtype(
            [(n, self._order + "u4") for n in ("blen", "iface", "hi", "lo", "caplen", "len")]
        )

    def _window(self, which: int, start: bool, value: bytes) -> None:
        """isb_starttime / isb_endtime: when the interface started and stopped capturing,
        in its own time units (a high and a low 32-bit word)."""
        spec = self.interfaces[which]
        hi, lo = struct.unpack(self._order + "II", value[:8])
        ns = ((hi << 32) | lo) * spec.ts_mult // spec.ts_div + spec.ts_offset_ns
        began, ended = self.windows.get(which, (ns, ns))
        self.windows[which] = (min(began, ns), ended) if start else (began, max(ended, ns))

    def _block(self, off: int, btype: int, blen: int, rows: bytearray, data: list[int]) -> None:
        """Every block the hot loop does not take: headers, statistics, SPB, PB, unknown."""
        view, order = self.mf.view, self._order
        end = off + blen - 4
        if self.frozen_layout and btype == IDB:
            raise LayoutChanged(off)
        if btype == IDB:
            linktype, _, snaplen = struct.unpack_from(order + "HHI", view, off + 8)
            iface = Interface(linktype, snaplen)
            for code, value in _options(view, off + 16, end, order):
                if code == 2:
                    iface = replace(iface, name=value.rstrip(b"\0").decode("utf-8", "replace"))
                elif code == 3:
                    iface = replace(
                        iface, description=value.rstrip(b"\0").decode("utf-8", "replace")
                    )
                elif code == 9 and value:
                    mult, div = _tsresol(value[0])
                    iface = replace(iface, ts_mult=mult, ts_div=div)
                elif code == 14 and len(value) >= 8:
                    (secs,) = struct.unpack(order + "q", value[:8])
                    iface = replace(iface, ts_offset_ns=secs * 1_000_000_000)
            self.interfaces.append(iface)
        elif btype == ISB:
            (local,) = struct.unpack_from(order + "I", view, off + 8)
            which = self._section_base + local
            for code, value in _options(view, off + 20, end, order):
                if code == 5 and len(value) >= 8:
                    self.drops[which] = struct.unpack(order + "Q", value)[0]
                elif code in (2, 3) and len(value) >= 8 and which < len(self.interfaces):
                    self._window(which, code == 2, value)
        elif btype in (SPB, PB):
            if btype == SPB:
                (orig,) = struct.unpack_from(order + "I", view, off + 8)
                # the +16 makes the generic "block length - 32" data room right for an SPB
                start, head = (
                    off + 12,
                    struct.pack(
                        order + "IIIIII", blen + 16, 0, NO_TS, NO_TS, min(orig, blen - 16), orig
                    ),
                )
            else:
                iface, _, hi, lo, cap, orig = struct.unpack_from(order + "HHIIII", view, off + 8)
                start, head = (
                    off + 28,
                    struct.pack(order + "IIIIII", blen, iface, hi, lo, cap, orig),
                )
            piece = view[start : start + WINDOW]
            rows.extend(head)
            rows.extend(piece)
            rows.extend(bytes(WINDOW - len(piece)))
            data.append(start)

    def prime(self) -> None:
        """Read the blocks before the first packet (interfaces), so `first` is a packet block."""
        view, size, off = self.mf.view, self.mf.size, self.first
        rows: bytearray = bytearray()
        data: list[int] = []
        while off + 12 <= size:
            btype, blen = self._pair(view, off)
            if btype in (EPB, SPB, PB) or blen < 12 or blen & 3 or off + blen > size:
                break
            self._block(off, btype, blen, rows, data)
            off += blen
        self.first = off

    def walk(self, start: int, stop: int, batch: int) -> Iterator[RecordBatch]:
        mm, view, size = self.mf.mm, self.mf.view, self.mf.size
        off = start
        while off < stop and off + 12 <= size:
            offsets: list[bytes] = []
            rows: list[bytes] = []
            order, limit = self._order, min(off + batch, stop)
            while off < limit and off + 12 <= size:
                got, more, off, reason = hot.walk(
                    mm, off, limit, limit - off, 0, self.swap, WINDOW, 0
                )
                if more:
                    offsets.append(got)
                    rows.append(more)
                if not reason:
                    break
                # A block the hot loop does not take: headers, statistics, SPB, PB, damage.
                btype, blen = self._pair(view, off)
                if btype == SHB:
                    if self.frozen_layout:
                        raise LayoutChanged(off)
                    if offsets:
                        break  # a new section may change byte order: it starts a new batch
                    self._enter_section(off)  # its length is in the new section's byte order
                    order = self._order
                    btype, blen = self._pair(view, off)
                if blen < MIN_LENGTH.get(btype, 12) or blen & 3:
                    self.warnings.append(
                        f"pcapng block at byte {off} has a bad length ({blen}): the file is "
                        "corrupt from there; read what came before"
                    )
                    stop = off
                    break
                if off + blen > size and btype not in (EPB, SPB, PB):
                    self.warnings.append(f"file ends inside a pcapng block at byte {off}")
                    stop = off
                    break
                extra_rows = bytearray()
                extra: list[int] = []
                self._block(off, btype, blen, extra_rows, extra)
                if extra:
                    offsets.append(array("q", extra).tobytes())
                    rows.append(bytes(extra_rows))
                off += blen
            if offsets:
                yield self._batch(b"".join(offsets), b"".join(rows), off, order)
        if off < stop and off < size < off + 12:
            self.warnings.append(f"file ends inside a block header at byte {off}")

    def _batch(self, offsets: bytes, rows: bytes, end: int, order: str) -> RecordBatch:
        offset = np.frombuffer(offsets, np.int64)
        n = len(offset)
        grid = np.frombuffer(rows, np.uint8).reshape(n, ROW_HEAD + WINDOW)
        names = self._row.names
        assert names is not None  # a structured dtype
        dtype = np.dtype([(name, order + "u4") for name in names])
        head = np.ascontiguousarray(grid[:, :ROW_HEAD]).view(dtype).reshape(n)
        caplen = np.minimum(head["caplen"], np.maximum(head["blen"].astype(np.int64) - 32, 0))
        room = np.clip(self.mf.size - offset, 0, None)
        if (caplen > room).any():
            self.warnings.append("last block cut short (file truncated); kept the partial packet")
        caplen = np.minimum(np.minimum(caplen, room), MAX_CAPLEN).astype(np.uint32)
        iface = head["iface"].astype(np.int64) + self._section_base
        known = len(self.interfaces)
        if (iface >= known).any():
            bad = int(iface[iface >= known][0])
            self.warnings.append(f"packets name interface {bad}, which no IDB defined; skipped")
        keep = iface < known
        raw = (head["hi"].astype(np.uint64) << np.uint64(32)) | head["lo"].astype(np.uint64)
        ts = np.zeros(n, np.int64)
        for index in distinct(iface[keep]):
            spec = self.interfaces[int(index)]
            sel = iface == index
            mult, div = np.uint64(spec.ts_mult), np.uint64(spec.ts_div)
            # split so that raw * mult cannot overflow 64 bits for sub-microsecond units
            whole = (raw[sel] // div) * mult + (raw[sel] % div) * mult // div
            ts[sel] = whole.astype(np.int64) + spec.ts_offset_ns
        no_ts = (head["hi"] == NO_TS) & (head["lo"] == NO_TS)
        if no_ts.any():  # SPBs carry no time: take the previous packet's
            idx = np.where(no_ts, 0, np.arange(n))
            ts = ts[np.maximum.accumulate(idx)]
        return RecordBatch(
            offset[keep],
            ts[keep],
            caplen[keep],
            head["len"][keep].astype(np.uint32),
            iface[keep].astype(np.uint16),
            grid if keep.all() else grid[keep],
            end,
            ROW_HEAD,
        )

    def sync(self, near: int, depth: int = 8, scan: int = 1 << 18) -> int | None:
        """A block boundary at or after `near`: a chain of EPBs with matching trailer lengths."""
        view, size = self.mf.view, self.mf.size
        pair, one = self._pair, struct.Struct(self._order + "I").unpack_from
        for p in range(near & ~3, min(near + scan, size - 12), 4):
            q, ok = p, 0
            while ok < depth and q + 12 <= size:
                btype, blen = pair(view, q)
                if btype != EPB or blen < 32 or blen & 3 or q + blen > size:
                    break
                if one(view, q + blen - 4)[0] != blen:
                    break
                ok += 1
                q += blen
            if ok == depth or (ok and q == size):
                return p
        return None
