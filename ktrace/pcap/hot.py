"""The hot loop of reading a capture: follow record lengths, copy each record's header window.

`walk` is the C implementation from `_walk.c` when it was built (pip builds it where a compiler
is available), else the same loop in Python below. Both return identical results; the tests
run both. Semantics are documented in `_walk.c`.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Callable

from ktrace.kernels import load

# What the walk reads: a mapped file, or the bytes of a decompressed one.
Buffer = mmap.mmap | bytes | bytearray | memoryview
Walk = Callable[[Buffer, int, int, int, int, int, int, int], tuple[bytes, bytes, int, int]]


def walk_python(
    buffer: Buffer,
    start: int,
    stop: int,
    budget: int,
    mode: int,
    swap: int,
    window: int,
    max_caplen: int,
) -> tuple[bytes, bytes, int, int]:
    order = ">" if (swap != (struct.pack("=I", 1) == struct.pack(">I", 1))) else "<"
    one = struct.Struct(order + "I").unpack_from
    two = struct.Struct(order + "II").unpack_from
    size = len(buffer)
    limit = min(start + budget, stop)
    head = 24 if mode == 0 else mode
    row = head + window
    data: list[int] = []
    app = data.append
    rows = bytearray()
    ext = rows.extend
    off, reason = start, 0
    fast_end = min(limit, size - row - 4)  # rows whole, no padding needed
    if mode == 0:
        while off < limit and off + 12 <= size:
            btype, blen = two(buffer, off)
            if btype != 6 or blen < 32 or blen & 3:
                reason = 1
                break
            app(off + 28)
            piece = buffer[off + 4 : off + 4 + row]
            ext(piece)
            if len(piece) < row:
                ext(bytes(row - len(piece)))
            off += blen
    else:
        # Slicing an mmap is measurably cheaper per record than slicing a memoryview.
        while off < fast_end:
            caplen = one(buffer, off + 8)[0]
            if caplen > max_caplen:
                reason = 1
                break
            app(off + mode)
            ext(buffer[off : off + row])
            off += mode + caplen
        while reason == 0 and off < limit and off + mode <= size:
            caplen = one(buffer, off + 8)[0]
            if caplen > max_caplen:
                reason = 1
                break
            app(off + mode)
            piece = buffer[off : off + row]
            ext(piece)
            ext(bytes(row - len(piece)))
            off += mode + caplen
    return array("q", data).tobytes(), bytes(rows), off, reason


walk_c: Walk | None = getattr(load("ktrace.pcap._walk"), "walk", None)
walk: Walk = walk_c or walk_python
