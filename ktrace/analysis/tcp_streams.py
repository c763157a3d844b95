"""TCP byte streams for the application protocols: each direction of a connection at one capture
point, its segments in sequence order, read by stream offset straight from the mapped capture.

Only connections that look like HTTP or TLS are built: the index decoder flagged every segment
whose payload starts like one (a method, "HTTP/", the HTTP/2 preface, a TLS record: decode.lead),
so bulk transfers cost no Python and no second read of the capture.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from ktrace.analysis.flows import FlowTable
from ktrace.decode.columns import PacketColumns
from ktrace.decode.gather import gather
from ktrace.decode.http1 import REQUEST_WORDS, RESPONSE_WORD, method_like
from ktrace.decode.index import PacketIndex
from ktrace.decode.ip import APP_START
from ktrace.decode.lead import starts_surely
from ktrace.decode.tls import CLIENT_HELLO, HANDSHAKE
from ktrace.decode.transport import ACK, FIN, RST, SYN, TCP
from ktrace.distinct import distinct
from ktrace.pcap.hot import Buffer

MAX_READ = 1 << 20
MAYBE_SHARE = 32  # of a flow's packets, one in this many starting like HTTP makes it HTTP


@dataclass(frozen=True)
class Stream:
    """The bytes one side sent, as captured at one point: segments sorted by their offset in
    the stream (0 = the byte after the SYN, or the lowest seen without one), each kept only
    where it brings bytes not seen before (a retransmission's time is not the byte's time).
    Plain lists: a stream is read a few times at a few places, where numpy's per-call cost
    would outweigh the work."""

    start: list[int]  # offset of each segment's first byte
    end: list[int]  # offset after its last byte on the wire (increasing)
    captured: list[int]  # bytes of it in the capture (fewer when snapped)
    at: list[int]  # file offset of its payload
    ts: list[int]
    row: list[int]
    buffer: Buffer
    fin_ts: int | None  # this side closed its half of the connection, at that time
    rst_ts: int | None  # this side reset the connection, at that time
    lead: int = 0  # the first four bytes of its first segment, big-endian (0: fewer)
    # how far into the other side's stream its FIN acknowledged: what it had received when
    # it closed
    fin_ack: int | None = None
    # per segment, how far into the other side's stream it acknowledged (-1: not known)
    acked: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end[-1] if self.end else 0

    def segment(self, offset: int) -> int:
        """The segment holding this byte, -1 where none was captured."""
        k = bisect_right(self.start, offset) - 1
        return k if k >= 0 and offset < self.end[k] else -1

    def after(self, offset: int, theirs: int) -> Stream:
        """The stream from `offset` on, counted from there; its acknowledgements counted
        from `theirs` in the other side's (what a tunnel carries, after its set-up)."""
        k = bisect_right(self.end, offset)
        start, end = self.start[k:], self.end[k:]
        at, captured = self.at[k:], self.captured[k:]
        if start and start[0] < offset:  # the segment the tunnel begins in
            skip = offset - start[0]
            at = [at[0] + skip, *at[1:]]
            captured = [max(captured[0] - skip, 0), *captured[1:]]
            start = [offset, *start[1:]]
        lead = self.read(offset, 4)
        return replace(
            self,
            start=[x - offset for x in start],
            end=[x - offset for x in end],
            captured=captured,
            at=at,
            ts=self.ts[k:],
            row=self.row[k:],
            lead=int.from_bytes(lead, "big") if len(lead) == 4 else 0,
            fin_ack=None if self.fin_ack is None else self.fin_ack - theirs,
            acked=[a - theirs if a >= 0 else a for a in self.acked[k:]],
        )

    def snapped(self, offset: int) -> bool:
        """This byte was sent in a captured segment and cut from it by the snap length."""
        k = self.segment(offset)
        return k >= 0 and offset - self.start[k] >= self.captured[k]

    def when(self, offset: int) -> int | None:
        k = self.segment(offset)
        return self.ts[k] if k >= 0 else None

    def read(self, offset: int, size: int) -> bytes:
        """The captured bytes from `offset` on, at most `size`, stopping at the first byte
        missing from the capture (lost, or cut by the snap length)."""
        size = min(size, MAX_READ)
        k = self.segment(offset)
        if k < 0:
            return b""
        skip = offset - self.start[k]
        if self.captured[k] - skip >= size:  # most reads: within one segment
            begin = self.at[k] + skip
            return bytes(self.buffer[begin : begin + size])
        out = bytearray()
        while len(out) < size:
            k = self.segment(offset)
            if k < 0:
                break
            skip = offset - self.start[k]
            have = self.captured[k] - skip
            if have <= 0:
                break
            take = min(have, size - len(out))
            begin = self.at[k] + skip
            out += self.buffer[begin : begin + take]
            offset += take
            if take < self.end[k] - self.start[k] - skip:
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

    def after(self, client_at: int, server_at: int) -> Connection:
        """What the connection carries from these offsets on: a tunnel's inside."""
        return replace(
            self,
            client=self.client.after(client_at, server_at),
            server=self.server.after(server_at, client_at),
        )


def _words(index: PacketIndex, rows: np.ndarray) -> np.ndarray:
    """The first four payload bytes of each row as a big-endian word (0 when fewer)."""
    c = index.columns
    have = c.caplen[rows].astype(np.int64) - c.payoff[rows]
    got = gather(index.mapped, c.point[rows], c.offset[rows] + c.payoff[rows], 4)
    word = got.astype(np.uint32)
    value = (word[:, 0] << 24) | (word[:, 1] << 16) | (word[:, 2] << 8) | word[:, 3]
    return np.where(have >= 4, value, 0)


def connections(index: PacketIndex, flows: FlowTable) -> Iterator[Connection]:
    """The connections at each point that carry HTTP or TLS, in flow and point order."""
    c = index.columns
    marked = np.flatnonzero(((c.ipflags & APP_START) != 0) & (flows.flow >= 0))
    # a flow marked only by shapes random bytes take (any method, an HTTP/2 frame) is taken
    # where they start many of its segments, not once in a bulk transfer's million
    maybe = ~starts_surely(_words(index, marked))
    if maybe.any():
        doubtful = np.bincount(flows.flow[marked[maybe]], minlength=len(flows))
        trusted = doubtful * MAYBE_SHARE >= flows.packets_ab + flows.packets_ba
        marked = marked[~maybe | trusted.take(flows.flow[marked])]
    if not len(marked):
        return
    npoints = len(index.points)
    wanted = distinct(flows.flow[marked].astype(np.int64) * npoints + c.point[marked])
    # only the packets of those flows: a capture of bulk transfers makes no array per packet
    in_wanted = np.zeros(len(flows) + 1, bool)  # the last entry stands for "no flow" (-1)
    in_wanted[flows.flow[marked]] = True
    tcp = np.flatnonzero(in_wanted.take(flows.flow) & (c.proto == TCP))
    place = flows.flow[tcp].astype(np.int64) * npoints + c.point[tcp]
    keep = np.isin(place, wanted)
    tcp = tcp[keep]
    key = place[keep] * 2 + flows.forward[tcp]  # one side of one connection at one point
    order = np.lexsort((c.ts[tcp], key))
    sides = SideStreams(index, tcp[order], key[order])
    for place_key in wanted.tolist():
        a, b = sides.get(place_key * 2 + 1), sides.get(place_key * 2)
        flow, point = divmod(place_key, npoints)
        # the client is the side that asks; without a request in sight, the side that
        # does not answer; else the initiator
        b_asks = (_asks(b) and not _asks(a)) or (_answers(a) and not _answers(b))
        yield Connection(flow, point, b if b_asks else a, a if b_asks else b, not b_asks)


class SideStreams:
    """Every side's segments in stream order, worked out for all sides at once (`rows`: the
    sides' packets, never none, sorted by side and time; `key`: a side's, whose other side's
    is key ^ 1)."""

    def __init__(
        self,
        index: PacketIndex,
        rows: np.ndarray,
        key: np.ndarray,
    ) -> None:
        c = index.columns
        self.index = index
        change = key[1:] != key[:-1]
        begin = np.flatnonzero(np.r_[True, change])
        side = np.cumsum(np.r_[False, change])
        side_key = key[begin]
        other = np.minimum(np.searchsorted(side_key, side_key ^ 1), len(side_key) - 1)
        other = np.where(side_key[other] == side_key ^ 1, other, -1)  # -1: not captured
        flags = c.tcp_flags[rows]
        seq = c.seq[rows].astype(np.int64)
        far = np.iinfo(np.int64).max
        syn_at = _answered_syns(c, rows, begin, side, other)
        has_syn = syn_at < far
        ref = np.where(has_syn, seq[np.where(has_syn, syn_at, begin)] + 1, seq[begin])
        rel = ((seq - ref[side] + (1 << 31)) % (1 << 32)) - (1 << 31)  # wraps and reorders
        carry = c.paylen[rows] > 0
        # without a SYN, the lowest byte seen is the stream's start
        low = np.minimum.reduceat(np.where(carry, rel, far), begin)
        shift = np.where(has_syn | (low == far), 0, low)
        rel -= shift[side]
        # each packet's acknowledgement as an offset in the other side's stream (-1 unknown)
        theirs = other[side]
        acked = ((c.ack[rows].astype(np.int64) - ref[theirs] + (1 << 31)) % (1 << 32)) - (1 << 31)
        acked -= shift[theirs]
        acked = np.where((theirs >= 0) & ((flags & ACK) > 0), acked, -1)
        fin_at = np.minimum.reduceat(np.where(flags & FIN, np.arange(len(rows)), far), begin)
        self.fin_ack = [
            int(acked[k]) if k < far and acked[k] >= 0 else None for k in fin_at.tolist()
        ]
        self.fin, self.rst = (
            [None if t == far else t for t in first.tolist()]
            for first in (
                np.minimum.reduceat(np.where((flags & bit) > 0, c.ts[rows], far), begin)
                for bit in (FIN, RST)
            )
        )
        self.keys = {k: i for i, k in enumerate(side_key.tolist())}
        self.points = c.point[rows[begin]].tolist()
        at = np.flatnonzero(carry)
        r, g, start = rows[at], side[at], rel[at]
        # the payload's length is the headers' (a snap length cuts what is captured of it)
        order = np.lexsort((c.ts[r], start, g))
        r, g, start, at = r[order], g[order], start[order], at[order]
        end = start + c.paylen[r]
        # a segment is kept where it reaches past every earlier one of its side
        reach = (g.astype(np.int64) << 41) + end + (1 << 40)
        new = np.r_[True, reach[1:] > np.maximum.accumulate(reach)[:-1]][: len(r)]
        r, g, start, end, at = r[new], g[new], start[new], end[new], at[new]
        self.bounds = np.searchsorted(g, np.arange(len(begin) + 1)).tolist()
        self.start, self.end = start.tolist(), end.tolist()
        self.acked = acked[at].tolist()
        captured = np.minimum(end - start, c.caplen[r].astype(np.int64) - c.payoff[r])
        self.captured = captured.clip(0).tolist()
        self.at = (c.offset[r] + c.payoff[r]).tolist()
        self.ts, self.row = c.ts[r].tolist(), r.tolist()
        first = r[np.minimum(self.bounds[:-1], len(r) - 1)] if len(r) else np.zeros(0, np.int64)
        self.lead = np.where(np.diff(self.bounds) > 0, _words(index, first), 0).tolist()

    def get(self, key: int) -> Stream:
        k = self.keys.get(key)
        if k is None:
            return Stream([], [], [], [], [], [], b"", None, None)
        lo, hi = self.bounds[k], self.bounds[k + 1]
        return Stream(
            self.start[lo:hi],
            self.end[lo:hi],
            self.captured[lo:hi],
            self.at[lo:hi],
            self.ts[lo:hi],
            self.row[lo:hi],
            self.index.mapped(self.points[k]),
            self.fin[k],
            self.rst[k],
            self.lead[k],
            self.fin_ack[k],
            self.acked[lo:hi],
        )


def _answered_syns(
    c: PacketColumns, rows: np.ndarray, begin: np.ndarray, side: np.ndarray, other: np.ndarray
) -> np.ndarray:
    """Per side, the position of the SYN its stream counts from (int64 max: none): the first,
    or where SYNs of different sequence numbers came (a middlebox's SYN/ACK beside the
    server's, a TCP Fast Open retry), the one the other side's first ACK acknowledges."""
    far = np.iinfo(np.int64).max
    flags = c.tcp_flags[rows]
    position = np.arange(len(rows))
    syn_at = np.minimum.reduceat(np.where(flags & SYN, position, far), begin)
    syns = np.flatnonzero(flags & SYN)
    first_seq = c.seq[rows[np.where(syn_at < far, syn_at, 0)]]
    differ = distinct(side[syns[c.seq[rows[syns]] != first_seq[side[syns]]]])
    if not len(differ):
        return syn_at
    acks = np.flatnonzero(((flags & ACK) > 0) & ((flags & SYN) == 0))
    first_ack = np.full(len(begin), far, np.int64)
    np.minimum.at(first_ack, side[acks], acks)
    for g in differ.tolist():
        theirs = int(other[g])
        k = int(first_ack[theirs]) if theirs >= 0 else far
        if k == far:
            continue
        wanted = (int(c.ack[rows[k]]) - 1) % (1 << 32)
        mine = syns[side[syns] == g]
        chosen = mine[c.seq[rows[mine]].astype(np.int64) == wanted]
        if len(chosen):
            syn_at[g] = chosen[0]
    return syn_at


def _asks(s: Stream) -> bool:
    """This side's bytes start like a request, a TLS ClientHello or the HTTP/2 preface."""
    if not s.start or s.start[0] != 0:
        return False
    if s.lead >> 24 == HANDSHAKE:
        return s.read(5, 1) == bytes([CLIENT_HELLO])
    return s.lead in REQUEST_WORDS or method_like(s.lead)


def _answers(s: Stream) -> bool:
    """This side's first captured segment starts an HTTP/1.x answer."""
    return s.lead == RESPONSE_WORD
