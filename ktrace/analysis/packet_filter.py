"""The packets view's `/` filter: words ANDed together, each an address, a port, a protocol
or a capture point, matched over the whole index at once (a million packets in milliseconds)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP, UDP

PROTOCOLS = {"tcp": (TCP,), "udp": (UDP,), "icmp": (1,), "icmpv6": (58,), "sctp": (132,)}
PORT_NAMES = {"dns": 53, "http": 80, "https": 443}


@dataclass(frozen=True, eq=False)
class Filtered:
    rows: np.ndarray  # matching rows, in index order
    unknown: tuple[str, ...]  # words that are none of the above (they match nothing)


def _address(index: PacketIndex, text: str) -> np.ndarray | None:
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    c = index.columns
    value = index.value_of(addr)
    if value is None:
        return np.zeros(len(c), bool)  # never seen
    return (c.l3 == addr.version) & ((c.src == value) | (c.dst == value))


def _word(index: PacketIndex, word: str) -> np.ndarray | None:
    c = index.columns
    mask = _address(index, word)
    if mask is not None:
        return mask
    if word.isdigit() or word in PORT_NAMES:
        port = int(word) if word.isdigit() else PORT_NAMES[word]
        return (c.l3 > 0) & ((c.sport == port) | (c.dport == port))
    if word in PROTOCOLS:
        return (c.l3 > 0) & np.isin(c.proto, PROTOCOLS[word])
    points = [k for k, p in enumerate(index.points) if word in p.id.lower()]
    if points:
        return np.isin(c.point, points)
    return None


def filter_packets(index: PacketIndex, text: str) -> Filtered:
    """Rows matching every word of `text` ("10.96.0.20 tcp node-b", "53", "client-eth0")."""
    mask = np.ones(len(index), bool)
    unknown = []
    for word in text.lower().split():
        match = _word(index, word)
        if match is None:
            unknown.append(word)
            mask[:] = False
        else:
            mask &= match
    return Filtered(np.flatnonzero(mask), tuple(unknown))
