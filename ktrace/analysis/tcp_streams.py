"""TCP byte streams for the application protocols: each direction of a connection at one capture
point, its segments in sequence order, read by stream offset straight from the mapped capture.

Only connections that look like HTTP or TLS are built: the first four payload bytes of every
segment are read in bulk and compared with the words such streams start with (a method, "HTTP/",
the HTTP/2 preface, a TLS record), so bulk transfers cost one gather and no Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ktrace.analysis.flows import FlowTable
from ktrace.decode.gather import gather
from ktrace.decode.http1 import STARTS
from ktrace.decode.index import PacketIndex
from ktrace.decode.tls import ALERT, HANDSHAKE
from ktrace.decode.transport import FIN, RST, SYN, TCP
from ktrace.pcap.hot import Buffer

# TLS records start with their type and major version 3; the minor is 0-4
TLS_WORDS = np.array([(kind << 8 | 3) for kind in (HANDSHAKE, ALERT)], np.uint32)
MAX_READ = 1 << 20


@dataclass(frozen=True)
class Stream:
    """The bytes one side sent, as captured at one point: segments sorted by their offset in
    the stream (0 = the byte after the SYN, or the lowest seen without one), each kept only
    where it brings bytes not seen before (a retransmission's time is not the byte's time)."""

    start: np.ndarray  # int64 offset of each segment's first byte
    end: np.ndarray  # offset after its last byte on the wire
    captured: np.ndarray  # int64 bytes of it in the capture (less when snapped)
    at: np.ndarray  # int64 file offset of its payload
    ts: np.ndarray
    row: np.ndarray
    buffer: Buffer
    fin: bool  # this side closed its half of the connection
    rst_ts: int | None  # this side reset the connection, at that time

    @property
    def length(self) -> int:
        return int(self.end.max()) if len(self.end) else 0

    def segment(self, offset: int) -> int:
        """The segment holding this byte, -1 where none was captured."""
        k = int(np.searchsorted(self.start, offset, side="right")) - 1
        return k if k >= 0 and offset < int(self.end[k]) else -1

    def when(self, offset: int) -> int | None:
        k = self.segment(offset)
        return int(self.ts[k]) if k >= 0 else None

    def read(self, offset: int, size: int) -> bytes:
        """The captured bytes from `offset` on, at most `size`, stopping at the first byte
        missing from the capture (lost, or cut by the snap length)."""
        out = bytearray()
        size = min(size, MAX_READ)
        while len(out) < size:
            k = self.segment(offset)
            if k < 0:
                break
            skip = offset - int(self.start[k])
            have = int(self.captured[k]) - skip
            if have <= 0:
                break
            take = min(have, size - len(out))
            begin = int(self.at[k]) + skip
            out += self.buffer[begin : begin + take]
            offset += take
            if take < int(self.end[k]) - int(self.start[k]) - skip:
                break  # the rest of this segment was not captured
        return bytes(out)


@dataclass(frozen=True)
class Connection:
    """One TCP connection at one capture point; `client` is the side that sent the first
    request-like bytes (the initiator when both or neither did)."""

    flow: int
    point: int
    client: Stream
    server: Stream
    client_is_a: bool


def _words(index: PacketIndex, rows: np.ndarray) -> np.ndarray:
    """The first four payload bytes of each row as a big-endian word (0 when fewer)."""
    c = index.columns
    have = c.caplen[rows].astype(np.int64) - c.payoff[rows]
    got = gather(index.mapped, c.point[rows], c.offset[rows] + c.payoff[rows], 4)
    word = got.astype(np.uint32)
    value = (word[:, 0] << 24) | (word[:, 1] << 16) | (word[:, 2] << 8) | word[:, 3]
    return np.where(have >= 4, value, 0)


def looks_like_app(words: np.ndarray) -> np.ndarray:
    """Per word: it starts an HTTP/1.x message, the HTTP/2 preface or a TLS record."""
    known = np.isin(words, np.array(STARTS, np.uint32))
    tls = np.isin(words >> 16, TLS_WORDS) & (((words >> 8) & 0xFF) <= 4)
    return known | tls


def connections(index: PacketIndex, flows: FlowTable) -> Iterator[Connection]:
    """The connections at each point that carry HTTP or TLS, in flow and point order."""
    c = index.columns
    data = np.flatnonzero((c.proto == TCP) & (c.paylen > 0) & (flows.flow >= 0))
    if not len(data):
        return
    marked = data[looks_like_app(_words(index, data))]
    if not len(marked):
        return
    npoints = len(index.points)
    wanted = np.unique(flows.flow[marked].astype(np.int64) * npoints + c.point[marked])
    tcp = np.flatnonzero((c.proto == TCP) & (flows.flow >= 0))
    place = flows.flow[tcp].astype(np.int64) * npoints + c.point[tcp]
    tcp = tcp[np.isin(place, wanted)]
    # both directions of each wanted connection, each in sequence order
    key = (flows.flow[tcp].astype(np.int64) * npoints + c.point[tcp]) * 2 + flows.forward[tcp]
    order = np.lexsort((c.ts[tcp], key))
    tcp, key = tcp[order], key[order]
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    sides: dict[int, Stream] = {}
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        sides[int(key[lo])] = _stream(index, tcp[lo:hi])
    empty = _stream(index, tcp[:0])
    for place_key in wanted.tolist():
        a, b = sides.get(place_key * 2 + 1, empty), sides.get(place_key * 2, empty)
        flow, point = divmod(place_key, npoints)
        # the client is the side that asks; without a request in sight, the side that
        # does not answer; else the initiator
        b_asks = (_asks(b) and not _asks(a)) or (_answers(a) and not _answers(b))
        yield Connection(flow, point, b if b_asks else a, a if b_asks else b, not b_asks)


def _asks(s: Stream) -> bool:
    """This side's bytes start like a request, a TLS ClientHello or the HTTP/2 preface."""
    first = s.read(0, 6)
    if first[:1] == bytes([HANDSHAKE]):
        return len(first) > 5 and first[5] == 1
    return len(first) >= 4 and not _answers(s) and bool(looks_like_app(_word(first))[0])


def _answers(s: Stream) -> bool:
    """This side's first captured segment starts an HTTP/1.x answer."""
    return len(s.start) > 0 and s.read(int(s.start[0]), 5) == b"HTTP/"


def _word(data: bytes) -> np.ndarray:
    return np.array([int.from_bytes(data[:4].ljust(4, b"\0"), "big")], np.uint32)


def _stream(index: PacketIndex, rows: np.ndarray) -> Stream:
    """One side's segments (rows in time order) in stream order."""
    c = index.columns
    flags = c.tcp_flags[rows]
    seq = c.seq[rows].astype(np.int64)
    syn = np.flatnonzero(flags & SYN)
    ref = int(seq[syn[0]]) + 1 if len(syn) else (int(seq[0]) if len(seq) else 0)
    rel = ((seq - ref + (1 << 31)) % (1 << 32)) - (1 << 31)  # signed distance: wraps and reorders
    carry = np.flatnonzero(c.paylen[rows] > 0)
    if not len(syn) and len(carry):
        rel -= rel[carry].min()
    rst = np.flatnonzero(flags & RST)
    fin = bool((flags & FIN).any())
    r = rows[carry]
    start = rel[carry]
    # the index's payload length stops at the snap length; the bytes cut off were payload
    length = c.paylen[r].astype(np.int64) + (c.wirelen[r].astype(np.int64) - c.caplen[r]).clip(0)
    order = np.lexsort((c.ts[r], start))
    r, start, length = r[order], start[order], length[order]
    end = start + length
    reach = np.maximum.accumulate(end) if len(end) else end
    new = np.r_[True, end[1:] > reach[:-1]] if len(end) else np.zeros(0, bool)
    r, start, end = r[new], start[new], end[new]
    captured = np.minimum(end - start, c.caplen[r].astype(np.int64) - c.payoff[r]).clip(0)
    point = int(c.point[rows[0]]) if len(rows) else 0
    return Stream(
        start,
        end,
        captured,
        c.offset[r] + c.payoff[r],
        c.ts[r],
        r,
        index.mapped(point) if len(rows) else b"",
        fin,
        int(c.ts[rows[rst[0]]]) if len(rst) else None,
    )
