"""Conversations: packets grouped by canonical 5-tuple, oriented initiator -> responder.

Everything is vectorised over the packet index; one flow's counts sum every capture point
(as tshark does for a multi-interface file), TCP health is computed per point so that the same
segment seen at two points is not taken for a retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ktrace.analysis.tcp_sequence import tcp_health
from ktrace.chunking import CHUNK, chunks, counted_keys, row_type
from ktrace.decode.columns import PacketColumns
from ktrace.decode.index import PacketIndex
from ktrace.decode.ip import LATER_FRAGMENT, MORE_FRAGMENTS
from ktrace.decode.transport import ACK, SCTP, SYN, TCP, UDP
from ktrace.distinct import distinct
from ktrace.kernels.mix import K1 as _MIX
from ktrace.kernels.sorting import factorize, flow_ids
from ktrace.kernels.tally import counts, time_spans

NO_FLOW = -1


@dataclass(frozen=True, eq=False)
class FlowTable:
    """One row per flow; `a` is the initiator (SYN sender, else first sender)."""

    l3: np.ndarray
    proto: np.ndarray
    a_addr: np.ndarray
    a_port: np.ndarray
    b_addr: np.ndarray
    b_port: np.ndarray
    packets_ab: np.ndarray
    packets_ba: np.ndarray
    bytes_ab: np.ndarray
    bytes_ba: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    syn: np.ndarray  # SYNs from a (first one and retries)
    synack: np.ndarray
    rst_ab: np.ndarray
    rst_ba: np.ndarray
    fin: np.ndarray
    handshake_ns: np.ndarray  # SYN -> ACK of the SYN/ACK at the first point that saw the SYN; -1
    retransmissions: np.ndarray  # segments sent again (same start, already sent)
    out_of_order: np.ndarray  # segments below the highest sent that filled a gap
    zero_window: np.ndarray
    flow: np.ndarray  # per packet: flow number, or NO_FLOW
    forward: np.ndarray  # per packet: True when sent a -> b
    # per capture point: TCP data segments it did not record (tcp_sequence.unrecorded); empty
    # until TCP health is worked out
    unrecorded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.l3)


def flow_host(index: PacketIndex, f: FlowTable, flow: int, side: str) -> str:
    """The address of one end of a flow ("a" or "b"), as text."""
    return index.address(int(f.l3[flow]), int(f.a_addr[flow] if side == "a" else f.b_addr[flow]))


def flow_endpoint(index: PacketIndex, f: FlowTable, flow: int, side: str) -> str:
    """ "ip:port" of one end of a flow ("[ip]:port" for IPv6; the address alone without ports)."""
    port = int(f.a_port[flow] if side == "a" else f.b_port[flow])
    host = flow_host(index, f, flow, side)
    return endpoint_text(int(f.l3[flow]), int(f.proto[flow]), host, port)


def flow_endpoints(index: PacketIndex, f: FlowTable, flows: np.ndarray, side: str) -> list[str]:
    """flow_endpoint of many flows: a flow table can hold hundreds of thousands."""
    addr, port = (f.a_addr, f.a_port) if side == "a" else (f.b_addr, f.b_port)
    l3 = f.l3[flows].tolist()
    hosts = map(index.address, l3, addr[flows].tolist())
    columns = (l3, f.proto[flows].tolist(), hosts, port[flows].tolist())
    return list(map(endpoint_text, *columns))


# Packets per (flow, point) are counted in a table of counters while those are no more than
# the packets; past it (many flows at many points), by sorting the pairs.
COUNTERS_PER_PACKET = 1


def flow_point_counts(
    flow: np.ndarray, point: np.ndarray, nflows: int, npoints: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (flow, point) pairs the packets show, as flow * npoints + point in increasing
    order, and the packets of each."""
    npoints = max(npoints, 1)
    size = nflows * npoints

    def pairs(lo: int, hi: int) -> np.ndarray:
        f = flow[lo:hi]
        ip = f >= 0
        return f[ip].astype(np.int64) * npoints + point[lo:hi][ip]

    if size > COUNTERS_PER_PACKET * len(flow):
        return counted_keys(len(flow), pairs)
    counts = np.zeros(size, np.int64)
    for lo, hi in chunks(len(flow)):
        if size <= CHUNK:  # a small table: counted a chunk at a time
            counts += np.bincount(pairs(lo, hi), minlength=size)
        else:
            np.add.at(counts, pairs(lo, hi), 1)
    keys = np.flatnonzero(counts)
    return keys, counts[keys]


def packets_at_points(
    flows: FlowTable, point: np.ndarray, npoints: int
) -> tuple[np.ndarray, np.ndarray]:
    """flow_point_counts of the flows' packets. Where there is one point, each flow's packets
    are all there, counted already: no pass over the packets again."""
    if npoints <= 1:
        total = flows.packets_ab + flows.packets_ba
        keys = np.flatnonzero(total)
        return keys, total[keys]
    return flow_point_counts(flows.flow, point, len(flows), npoints)


def endpoint_text(l3: int, proto: int, host: str, port: int) -> str:
    if proto not in (TCP, UDP, SCTP):
        return host
    return f"[{host}]:{port}" if l3 == 6 else f"{host}:{port}"


def _attach_fragments(c: PacketColumns, sport: np.ndarray, dport: np.ndarray) -> None:
    """Give later IPv4/IPv6 fragments the ports of their first fragment (same src, dst, id)."""
    later = np.flatnonzero((c.ipflags & LATER_FRAGMENT) != 0)
    if not len(later):
        return
    firsts = np.flatnonzero(
        ((c.ipflags & MORE_FRAGMENTS) != 0) & ((c.ipflags & LATER_FRAGMENT) == 0)
    )
    known = {
        (int(c.point[i]), int(c.src[i]), int(c.dst[i]), int(c.proto[i]), int(c.ipid[i])): (
            int(sport[i]),
            int(dport[i]),
        )
        for i in firsts
    }
    for i in later:
        key = (int(c.point[i]), int(c.src[i]), int(c.dst[i]), int(c.proto[i]), int(c.ipid[i]))
        if key in known:
            sport[i], dport[i] = known[key]


def group_pairs(k1: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (k1, k2) pairs -> (first occurrence, inverse)."""
    first, inv = factorize((k1 * _MIX) ^ k2)
    if (k1[first][inv] != k1).any() or (k2[first][inv] != k2).any():  # a hash collision
        return _exact_pairs(k1, k2)
    return first, inv


def _exact_pairs(k1: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(len(k1)), k2, k1))
    s1, s2 = k1[order], k2[order]
    start = np.ones(len(order), bool)
    start[1:] = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
    inv = np.empty(len(order), np.int64)
    inv[order] = np.cumsum(start) - 1
    return order[start], inv


def _ports(c: PacketColumns) -> tuple[np.ndarray, np.ndarray]:
    """Ports per packet, later fragments given their first fragment's."""
    if not ((c.ipflags & LATER_FRAGMENT) != 0).any():
        return c.sport, c.dport
    sport, dport = c.sport.copy(), c.dport.copy()
    _attach_fragments(c, sport, dport)
    return sport, dport


def _keys(
    c: PacketColumns, sport: np.ndarray, dport: np.ndarray, sel: slice | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k1, k2, swap) of the selected packets: both directions of a flow share (k1, k2), the
    lower endpoint first; swap says the packet was sent by the higher one."""
    src, dst = c.src[sel].astype(np.uint64), c.dst[sel].astype(np.uint64)
    sp, dp = sport[sel].astype(np.uint64), dport[sel].astype(np.uint64)
    swap = (src > dst) | ((src == dst) & (sp > dp))
    lo_a, hi_a = np.where(swap, dst, src), np.where(swap, src, dst)
    lo_p, hi_p = np.where(swap, dp, sp), np.where(swap, sp, dp)
    six = (c.l3[sel] == 6).astype(np.uint64)
    k1 = (
        (six << np.uint64(56))
        | (c.proto[sel].astype(np.uint64) << np.uint64(48))
        | (lo_p << np.uint64(32))
        | lo_a
    )
    return k1, (hi_p << np.uint64(32)) | hi_a, swap


def _group(
    c: PacketColumns, sport: np.ndarray, dport: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first row of each flow, flow per row with non-IP rows at len(first), swap per row)."""
    found = flow_ids((c.l3, c.proto, c.src, c.dst, sport, dport), len(c))
    if found is None:
        return _group_sorted(c, sport, dport)
    first, ids, swap = found
    # the flows numbered as the sorted path numbers them
    k1, k2, _ = _keys(c, sport, dport, first)
    h = (k1 * _MIX) ^ k2
    order = np.argsort(h, kind="stable")
    if (h[order[1:]] == h[order[:-1]]).any():  # hashes collide: by keys, as the sorted path
        order = np.lexsort((k2, k1))
    rank = np.empty(len(first) + 1, np.int32)
    rank[order] = np.arange(len(first), dtype=np.int32)
    rank[-1] = len(first)  # not IP
    return first[order], rank.take(ids), swap


def _group_sorted(
    c: PacketColumns, sport: np.ndarray, dport: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(c)
    swap = np.empty(n, bool)
    isip = c.l3 > 0
    ip = None if isip.all() else np.flatnonzero(isip)
    del isip
    if ip is not None:
        ip = ip.astype(row_type(n), copy=False)  # kept to the end
    h = np.empty(n if ip is None else len(ip), np.uint64)  # of the IP packets only
    for lo, hi in chunks(n):
        k1, k2, swap[lo:hi] = _keys(c, sport, dport, slice(lo, hi))
        if ip is None:
            h[lo:hi] = (k1 * _MIX) ^ k2
        else:
            a, b = np.searchsorted(ip, (lo, hi))
            h[a:b] = ((k1 * _MIX) ^ k2)[ip[a:b] - lo]
    first, inv = factorize(h)
    del h
    rows = np.arange(n) if ip is None else ip
    k1f, k2f, _ = _keys(c, sport, dport, rows[first])
    for lo, hi in chunks(len(rows)):
        k1, k2, _ = _keys(c, sport, dport, rows[lo:hi])
        if (k1 != k1f[inv[lo:hi]]).any() or (k2 != k2f[inv[lo:hi]]).any():  # a collision
            k1, k2, _ = _keys(c, sport, dport, rows)
            first, inv = _exact_pairs(k1, k2)
            break
    if ip is None:
        return first, inv, swap
    flow = np.full(n, len(first), inv.dtype)
    flow[ip] = inv
    return ip[first], flow, swap


def _initiators(
    c: PacketColumns,
    flow: np.ndarray,
    is_syn: np.ndarray,
    swap: np.ndarray,
    spans: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per flow: whether its lower endpoint opened it (the earliest SYN's sender, else the
    earliest packet's). `spans`: per flow, its earliest time and earliest SYN's."""
    first_ts, syn_ts = spans
    nflows = len(first_ts) - 1
    big = np.iinfo(np.int64).max
    opener_ts = np.where(syn_ts < big, syn_ts, first_ts)
    no_syn = syn_ts == big
    opener = np.empty(len(c), bool)
    for lo, hi in chunks(len(c)):
        f = flow[lo:hi]
        opener[lo:hi] = (c.ts[lo:hi] == opener_ts.take(f)) & (is_syn[lo:hi] | no_syn.take(f))
    cand = np.flatnonzero(opener)
    del opener
    cand = cand[flow[cand] < nflows]
    # earliest qualifying packet per flow decides; ties resolve to the first in file order
    _, pick = np.unique(flow[cand], return_index=True)
    chosen = cand[pick]
    lo_opens = np.zeros(nflows + 1, bool)
    lo_opens[flow[chosen]] = ~swap[chosen]
    # no SYN seen, but the SYN/ACK that answered it: its receiver opened the connection
    answers = np.flatnonzero(
        (c.proto == TCP) & ((c.tcp_flags & (SYN | ACK)) == (SYN | ACK)) & no_syn.take(flow)
    )
    answers = answers[flow[answers] < nflows]
    if len(answers):
        order = np.lexsort((answers, c.ts[answers], flow[answers]))
        firsts = answers[order][np.r_[True, np.diff(flow[answers][order]) != 0]]
        lo_opens[flow[firsts]] = swap[firsts]
    return lo_opens


def build_flows(c: PacketColumns, npoints: int) -> FlowTable:
    """The flow table with every flow's TCP health."""
    return with_tcp_health(flow_table(c), c, npoints)


def with_tcp_health(flows: FlowTable, c: PacketColumns, npoints: int) -> FlowTable:
    """The table with its handshake times, retransmissions and segments out of order."""
    handshake, retrans, out_of_order, unrecorded = tcp_health(
        c, flows.flow, flows.forward, len(flows), npoints
    )
    return replace(
        flows,
        handshake_ns=handshake,
        retransmissions=retrans,
        out_of_order=out_of_order,
        unrecorded=unrecorded,
    )


def _split_reused(
    c: PacketColumns, flow: np.ndarray, first: np.ndarray, is_syn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A 5-tuple whose client came back with another initial sequence number is a new
    connection (a port reused seconds later): its packets from then on, at each point, are a
    flow of their own, numbered after the others. A connection's client ISN is read from its
    SYN, or from the server's SYN/ACK (which acknowledges it) when the capture missed the SYN.
    Packets a point saw before any opening stay with the flow they were (the conversation
    joins them to their connection through what other points saw). Only the reused 5-tuples
    are looked at: on most captures this is a pass over the handshakes alone."""
    nflows = len(first)
    synack = (c.proto == TCP) & ((c.tcp_flags & (SYN | ACK)) == (SYN | ACK))
    opening = np.flatnonzero(is_syn | synack)
    opening = opening[flow[opening] < nflows]
    if not len(opening):
        return flow, first
    isn = np.where(
        is_syn[opening],
        c.seq[opening].astype(np.int64),
        (c.ack[opening].astype(np.int64) - 1) & 0xFFFFFFFF,
    )
    pairs = distinct(flow[opening].astype(np.int64) << 32 | isn)
    owners, tries = np.unique(pairs >> 32, return_counts=True)
    reused = owners[tries > 1]
    if not len(reused):
        return flow, first
    marked = np.zeros(nflows + 1, bool)
    marked[reused] = True
    rows = np.flatnonzero(marked.take(flow))
    order = np.lexsort((rows, c.ts[rows], c.point[rows], flow[rows]))
    rows = rows[order]
    run = flow[rows].astype(np.int64) * (int(c.point.max()) + 1) + c.point[rows]
    starts = np.r_[True, run[1:] != run[:-1]]
    # the client ISN in force at each row: that of the last opening seen at its point
    opens = is_syn[rows] | synack[rows]
    last = np.maximum.accumulate(np.where(opens | starts, np.arange(len(rows)), 0))
    at = rows[last]
    said = np.where(
        is_syn[at], c.seq[at].astype(np.int64), (c.ack[at].astype(np.int64) - 1) & 0xFFFFFFFF
    )
    key = flow[rows].astype(np.int64) << 33 | np.where(opens[last], said + 1, 0)
    uniq, generation = np.unique(key, return_inverse=True)
    base = uniq >> 33
    # each flow's first generation keeps its number; the later ones get new numbers
    keep = np.r_[True, base[1:] != base[:-1]]
    new_id = np.where(keep, base, 0)
    later = np.flatnonzero(~keep)
    new_id[later] = nflows + np.arange(len(later))
    flow = flow.copy()
    flow[flow == nflows] = nflows + len(later)  # not IP: still after every flow
    ids = new_id[generation.reshape(-1)]
    flow[rows] = ids.astype(flow.dtype)
    added = np.full(len(later), len(c), np.int64)
    np.minimum.at(added, ids[ids >= nflows] - nflows, rows[ids >= nflows])
    return flow, np.r_[first, added].astype(first.dtype)


def flow_table(c: PacketColumns) -> FlowTable:
    """The flows, their ends and counts; TCP health not yet measured (no handshake, nothing
    resent): with_tcp_health adds it, a stage of its own. A flow is one connection: a
    5-tuple reused by a new connection is two flows."""
    sport, dport = _ports(c)
    first, flow, swap = _group(c, sport, dport)
    is_syn = (c.proto == TCP) & ((c.tcp_flags & (SYN | ACK)) == SYN)
    flow, first = _split_reused(c, flow, first, is_syn)
    nflows = len(first)
    first_ts, last_ts, syn_ts = time_spans(flow, c.ts, is_syn, nflows + 1)
    lo_opens = _initiators(c, flow, is_syn, swap, (first_ts, syn_ts))
    del is_syn, syn_ts
    # sent by the initiator: ~swap means the packet's source is the "lo" endpoint
    fw = np.empty(len(c), bool)
    for lo, hi in chunks(len(c)):
        fw[lo:hi] = (~swap[lo:hi]) == lo_opens.take(flow[lo:hi])
    fw &= c.l3 > 0
    counted = counts(flow, fw, (c.wirelen, c.tcp_flags, c.win, c.proto), nflows)

    opens = lo_opens[:nflows]
    sw = swap[first]
    src, dst = c.src[first], c.dst[first]
    sp, dp = sport[first], dport[first]
    la, ha = np.where(sw, dst, src), np.where(sw, src, dst)
    lp, hp = np.where(sw, dp, sp), np.where(sw, sp, dp)
    flow[flow == nflows] = NO_FLOW
    return FlowTable(
        l3=np.where(c.l3[first] == 6, 6, 4).astype(np.uint8),
        proto=c.proto[first],
        a_addr=np.where(opens, la, ha).astype(np.uint32),
        a_port=np.where(opens, lp, hp).astype(np.uint16),
        b_addr=np.where(opens, ha, la).astype(np.uint32),
        b_port=np.where(opens, hp, lp).astype(np.uint16),
        first_ts=first_ts[:nflows],
        last_ts=last_ts[:nflows],
        handshake_ns=np.full(nflows, -1, np.int64),
        retransmissions=np.zeros(nflows, np.int64),
        out_of_order=np.zeros(nflows, np.int64),
        flow=flow,
        forward=fw,
        **counted,
    )
