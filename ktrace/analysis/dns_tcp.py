"""DNS over TCP (RFC 7766): each side of a connection is a stream of messages, each after a
two-byte length, cut into segments as the sender's stack chose. Twenty queries arrive in one
segment, one answer in two, so messages are read from the stream, not from packets.

A message is attributed to the packet that brought its last byte, as a protocol analyser
reassembling it does. A message within one captured segment is read where it lies in the
capture; one split over segments is copied into `TcpMessages.joined`. A message that does
not read as DNS sent that way (a query to the server's port, an answer from it) ends the
run: reading resumes at the next segment that starts one, so a stream that is not DNS (port
53 taken by something else) gives no messages, and a capture begun mid-message finds the
next whole one.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from ktrace.analysis.tcp_streams import SideStreams, Stream
from ktrace.decode.dns import DNS_PORT, QR, DnsError, question
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP
from ktrace.kernels.mix import mix
from ktrace.kernels.sorting import factorize

HEADER = 12
SCAN = 4096  # bytes of a segment searched for a message's start, after a hole
OPCODES = frozenset({0, 1, 2, 4, 5, 6})  # query, inverse, status, notify, update, DSO


@dataclass(frozen=True, eq=False)
class TcpMessages:
    """The DNS messages read from TCP streams, in stream order per side."""

    row: np.ndarray  # the packet that brought each message's last byte
    point: np.ndarray  # its capture point, or `joined_point` for a message in `joined`
    start: np.ndarray  # where it starts in that point's mapped capture, or in `joined`
    size: np.ndarray  # its bytes there (fewer than its length where the capture cut it)
    joined: bytes  # the messages split over segments, one after another
    joined_point: int  # the point number that stands for `joined`
    not_dns: int  # packets with payload in which no DNS message was read

    def __len__(self) -> int:
        return len(self.row)


def tcp_dns_messages(index: PacketIndex) -> TcpMessages:
    """Every DNS message sent over TCP to or from port 53."""
    c = index.columns
    rows = np.flatnonzero((c.proto == TCP) & ((c.sport == DNS_PORT) | (c.dport == DNS_PORT)))
    found = _StreamMessages(len(index.points))
    if len(rows):
        here = (c.src[rows].astype(np.uint64) << 16) | c.sport[rows]
        there = (c.dst[rows].astype(np.uint64) << 16) | c.dport[rows]
        low, high = np.minimum(here, there), np.maximum(here, there)
        conn = mix([c.point[rows], c.l3[rows], low, high], len(rows))
        _, number = factorize(conn)
        key = number.astype(np.int64) * 2 + (here < there)
        order = np.lexsort((c.ts[rows], key))
        rows, key = rows[order], key[order]
        sides = SideStreams(index, rows, key)
        side_keys, first = np.unique(key, return_index=True)
        sport, dport = c.sport[rows[first]].tolist(), c.dport[rows[first]].tolist()
        point = c.point[rows[first]].tolist()
        for side_key, p, q, at in zip(side_keys.tolist(), sport, dport, point, strict=True):
            # answers come from port 53 and queries go to it; between two servers, either
            server = None if p == q else p == DNS_PORT
            found.read(sides.get(side_key), at, server)
    return found.result()


class _StreamMessages:
    def __init__(self, npoints: int) -> None:
        self.joined_point = npoints
        self.row: list[int] = []
        self.point: list[int] = []
        self.start: list[int] = []
        self.size: list[int] = []
        self.joined = bytearray()
        self.not_dns = 0

    def read(self, s: Stream, point: int, server: bool | None) -> None:
        """The messages of one side; its segments in which none was read count as not DNS."""
        used: set[int] = set()
        at: int | None = s.start[0] if s.start else 0
        while at is not None and at < s.length:
            message = self._message(s, at, server)
            if message is None:
                at = self._resync(s, at, server)
                continue
            length, whole = message
            first, last = s.segment(at), s.segment(at + 2 + len(whole) - 1)
            self._keep(s, at, point, whole, s.row[last])
            used.update(range(first, last + 1))
            at += 2 + length
        self.not_dns += len(s.start) - len(used)

    def _resync(self, s: Stream, pos: int, server: bool | None) -> int | None:
        """The next place after `pos` where a message starts: a segment's start where one
        does, or a place inside a segment where one does whose end is a segment's end or
        another's start (a message begun in a segment lost, or before the capture)."""
        k = s.segment(pos)
        k = bisect_right(s.start, pos) if k < 0 else k
        while k < len(s.start):
            lo = max(pos + 1, s.start[k])
            if lo == s.start[k] and self._message(s, lo, server) is not None:
                return lo
            for inside in range(lo + (lo == s.start[k]), min(s.end[k], lo + SCAN)):
                message = self._message(s, inside, server)
                if message is not None:
                    end = inside + 2 + message[0]
                    k_end = s.segment(end - 1)
                    at_end = k_end >= 0 and s.end[k_end] == end
                    if at_end or self._message(s, end, server) is not None:
                        return inside
            k += 1
        return None

    @staticmethod
    def _message(s: Stream, pos: int, server: bool | None) -> tuple[int, bytes] | None:
        """(length, the captured bytes) of a DNS message at `pos`, or None where the bytes
        there are not one sent this way."""
        head = s.read(pos, 2 + HEADER)
        if len(head) < 2 + HEADER:
            return None
        length, flags, questions = struct.unpack_from("!H2xHH", head)
        sent_right = server is None or bool(flags & QR) == server
        if length < HEADER or not sent_right or (flags >> 11) & 15 not in OPCODES:
            return None
        if questions > 1 or s.segment(pos + 1 + length) < 0:
            return None  # never seen from real stacks; or its end never came (not DNS, lost)
        whole = s.read(pos + 2, length)
        try:
            question(whole)
        except DnsError:
            return None
        return length, whole

    def _keep(self, s: Stream, pos: int, point: int, whole: bytes, row: int) -> None:
        k = s.segment(pos + 2)
        skip = pos + 2 - s.start[k] if k >= 0 else 0
        self.row.append(row)
        self.size.append(len(whole))
        if k >= 0 and s.captured[k] - skip >= len(whole):  # it lies whole in one segment
            self.point.append(point)
            self.start.append(s.at[k] + skip)
        else:
            self.point.append(self.joined_point)
            self.start.append(len(self.joined))
            self.joined += whole

    def result(self) -> TcpMessages:
        # in packet order, as pairing reads messages (a query before its answer), each
        # side's messages in stream order among those of one packet
        order = np.argsort(np.array(self.row, np.int64), kind="stable")
        row, point, start, size = (
            np.array(v, np.int64)[order] for v in (self.row, self.point, self.start, self.size)
        )
        return TcpMessages(
            row,
            point,
            start,
            size,
            bytes(self.joined),
            self.joined_point,
            self.not_dns,
        )
