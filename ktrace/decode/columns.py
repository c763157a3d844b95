"""The packet index: one numpy column per field, 64 bytes a packet, no payloads."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# name -> dtype; the order is the order of PacketColumns' fields
SCHEMA: dict[str, type[np.generic]] = {
    "offset": np.int64,  # file offset of the packet data (read the packet by offset)
    "ts": np.int64,  # ns since the epoch
    "caplen": np.uint32,
    "wirelen": np.uint32,
    "point": np.uint16,  # capture point (file, or pcapng interface)
    "l3": np.uint8,  # 4, 6, or 0 when not IP
    "proto": np.uint8,  # IP protocol of the (inner, after decapsulation) packet
    "src": np.uint32,  # IPv4 address value, or for IPv6 an id into the index's address table
    "dst": np.uint32,
    "sport": np.uint16,
    "dport": np.uint16,
    "tcp_flags": np.uint8,
    "seq": np.uint32,  # TCP sequence; ICMP: type << 8 | code
    "ack": np.uint32,
    "win": np.uint16,
    "ipid": np.uint16,
    "ipflags": np.uint8,  # see decode.ip: fragments, DF, short headers, ICMP errors, app starts
    "paylen": np.uint32,  # transport payload length
    "payoff": np.uint16,  # transport payload position in the packet
    "tunnel": np.uint16,  # 0, or 1 + index into the index's tunnel table
    "phash": np.uint16,  # hash of the first payload bytes: part of a packet's fingerprint
}


@dataclass(frozen=True, eq=False)
class PacketColumns:
    """The packet index: one array per field, one row per packet in file order."""

    offset: np.ndarray
    ts: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    point: np.ndarray
    l3: np.ndarray
    proto: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    tcp_flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    win: np.ndarray
    ipid: np.ndarray
    ipflags: np.ndarray
    paylen: np.ndarray
    payoff: np.ndarray
    tunnel: np.ndarray
    phash: np.ndarray

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    @classmethod
    def empty(cls, n: int = 0) -> PacketColumns:
        return cls(**{name: np.zeros(n, dtype) for name, dtype in SCHEMA.items()})

    @classmethod
    def concat(cls, parts: list[PacketColumns]) -> PacketColumns:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in SCHEMA})


@dataclass(frozen=True, eq=False)
class Quotes:
    """The packet an ICMP error quotes (port unreachable, fragmentation needed...)."""

    row: np.ndarray  # int64 packet number of the ICMP error
    l3: np.ndarray
    proto: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray

    @classmethod
    def empty(cls) -> Quotes:
        z = np.zeros(0, np.uint32)
        return cls(
            np.zeros(0, np.int64),
            z.astype(np.uint8),
            z.astype(np.uint8),
            z,
            z,
            z.astype(np.uint16),
            z.astype(np.uint16),
        )
