"""What the format walkers produce: interfaces and batches of records, each with a header window.

The walkers do the one inherently sequential step (following record lengths) in a tight loop and
copy the first WINDOW bytes of every packet into one contiguous buffer, so every later step is a
vectorised numpy operation over rows instead of per-packet Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# tcpdump and Wireshark both refuse records larger than this; a larger caplen means corruption.
MAX_CAPLEN = 262144
# Bytes of each packet kept for decoding: enough for Ethernet + QinQ + IPv6 outer + UDP + VXLAN +
# inner Ethernet + IPv6 + TCP; deeper headers are re-read by offset.
WINDOW = 176


@dataclass(frozen=True)
class Interface:
    """One capture interface: a classic pcap file has one, a pcapng file one per IDB."""

    linktype: int
    snaplen: int
    name: str = ""
    description: str = ""
    ts_mult: int = 1000  # raw timestamp units -> ns is raw * ts_mult // ts_div
    ts_div: int = 1
    ts_offset_ns: int = 0


@dataclass(eq=False)
class RecordBatch:
    """Records in file order. `window` holds each packet's first WINDOW bytes, zero padded."""

    offset: np.ndarray  # int64: file offset of the packet data
    ts: np.ndarray  # int64: nanoseconds since the epoch
    caplen: np.ndarray  # uint32: bytes present in the file
    wirelen: np.ndarray  # uint32: bytes on the wire
    iface: np.ndarray  # uint16: index into the file's interface list
    window: np.ndarray  # uint8 (n, skip + WINDOW), C-contiguous, possibly read-only
    end: int  # file offset just after the last record walked
    skip: int = 0  # leading bytes of each window row that are not packet data (the header)

    def __len__(self) -> int:
        return len(self.offset)
