"""A capture of tens of millions of packets built from a real recording: the recording repeated,
each copy shifted in time with its ephemeral ports and IPv4 IDs moved on (so that each copy is
new flows and new packets, not retransmissions of the first), packets cut to a snap length as
`tcpdump -s` would, to keep the file a few GB.

    python -m tests.bench.scale SOURCE DEST PACKETS [SNAPLEN]
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np

from ktrace.decode.index import build_index
from ktrace.pcap.writer import NS_MAGIC

ETHERNET = 14


def build(source: Path, dest: Path, packets: int, snaplen: int = 192) -> int:
    """Write `dest`; returns the packets written."""
    with build_index([source], workers=1) as index:
        c = index.columns
        n = len(c)
        caplen = np.minimum(c.caplen, snaplen).astype(np.int64)
        data = np.frombuffer(index.mapped(0), np.uint8)
        rows = np.lib.stride_tricks.sliding_window_view(data, snaplen)
        whole = c.offset <= len(data) - snaplen
        body = np.zeros((n, snaplen), np.uint8)
        body[whole] = rows[c.offset[whole]]
        for k in np.flatnonzero(~whole).tolist():  # the last packets: shorter than the window
            size = len(data) - int(c.offset[k])
            body[k, :size] = data[int(c.offset[k]) :]
        del rows, data
        v4 = (c.l3 == 4) & (c.tunnel == 0)
        ihl = (body[:, ETHERNET] & 0x0F).astype(np.int64) * 4
        ports = v4 & ((c.proto == 6) | (c.proto == 17))
        sport_high = c.sport >= c.dport
        port_at = ETHERNET + ihl + np.where(sport_high, 0, 2)
        ts, wirelen, span = c.ts.copy(), c.wirelen.copy(), int(c.ts.max() - c.ts.min()) + 1
    width = 16 + snaplen
    keep = np.arange(width) < (16 + caplen)[:, None]
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(struct.pack("<IHHiIII", NS_MAGIC, 2, 4, 0, 0, snaplen, 1))
        for copy in range((packets + n - 1) // n):
            take = min(n, packets - written)
            record = np.zeros((n, width), np.uint8)
            shifted = ts + copy * span
            header = np.stack([shifted // 10**9, shifted % 10**9, caplen, wirelen], axis=1).astype(
                "<u4"
            )
            record[:, :16] = header.view(np.uint8).reshape(n, 16)
            record[:, 16:] = body
            _move(record, v4, 16 + ETHERNET + 4, copy)  # IPv4 ID
            _move(record, ports, 16 + port_at, copy)  # the ephemeral (higher) port
            out.write(record[:take][keep[:take]].tobytes())
            written += take
    return written


def _move(record: np.ndarray, rows: np.ndarray, at: int | np.ndarray, by: int) -> None:
    """Add `by` to the big-endian 16-bit field at byte `at` of the selected rows."""
    sel = np.flatnonzero(rows)
    col = np.broadcast_to(np.asarray(at), rows.shape)[sel]
    value = (record[sel, col].astype(np.int64) << 8) | record[sel, col + 1]
    value = (value + by) & 0xFFFF
    record[sel, col] = value >> 8
    record[sel, col + 1] = value & 0xFF


if __name__ == "__main__":
    source, dest, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    snap = int(sys.argv[4]) if len(sys.argv) > 4 else 192
    print(f"{build(source, dest, count, snap):,} packets written to {dest}")
