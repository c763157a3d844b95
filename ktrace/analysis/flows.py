"""Conversations: packets grouped by canonical 5-tuple, oriented initiator -> responder.

Everything is vectorised over the packet index; one flow's counts sum every capture point
(as tshark does for a multi-interface file), TCP health is computed per point so that the same
segment seen at two points is not taken for a retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.decode.columns import PacketColumns
from ktrace.decode.ip import LATER_FRAGMENT, MORE_FRAGMENTS
from ktrace.decode.transport import ACK, FIN, RST, SYN, TCP

_MIX = np.uint64(0x9E3779B97F4A7C15)
NO_FLOW = -1


@dataclass(frozen=True)
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

    def __len__(self) -> int:
        return len(self.l3)


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
    h = (k1 * _MIX) ^ k2
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if (k1[first][inv] != k1).any() or (k2[first][inv] != k2).any():  # a hash collision
        order = np.lexsort((k2, k1))
        s1, s2 = k1[order], k2[order]
        start = np.ones(len(order), bool)
        start[1:] = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
        ids = np.cumsum(start) - 1
        inv = np.empty(len(order), np.int64)
        inv[order] = ids
        first = order[start]
    return first, inv


@dataclass(frozen=True)
class _Endpoints:
    """Per IP packet: its addresses and ports, and whether they were swapped so that the
    lower endpoint comes first (both directions of a flow share one key)."""

    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    swap: np.ndarray

    @classmethod
    def of(cls, c: PacketColumns, ip: np.ndarray) -> _Endpoints:
        sport, dport = c.sport.copy(), c.dport.copy()
        _attach_fragments(c, sport, dport)
        src, dst = c.src[ip].astype(np.uint64), c.dst[ip].astype(np.uint64)
        sp, dp = sport[ip].astype(np.uint64), dport[ip].astype(np.uint64)
        return cls(src, dst, sp, dp, (src > dst) | ((src == dst) & (sp > dp)))

    def keys(self, c: PacketColumns, ip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        swap = self.swap
        lo_a, hi_a = np.where(swap, self.dst, self.src), np.where(swap, self.src, self.dst)
        lo_p, hi_p = np.where(swap, self.dport, self.sport), np.where(swap, self.sport, self.dport)
        six = (c.l3[ip] == 6).astype(np.uint64)
        k1 = (
            (six << np.uint64(56))
            | (c.proto[ip].astype(np.uint64) << np.uint64(48))
            | (lo_p << np.uint64(32))
            | lo_a
        )
        return k1, (hi_p << np.uint64(32)) | hi_a


def _initiators(
    inv: np.ndarray, ts: np.ndarray, is_syn: np.ndarray, swap: np.ndarray, nflows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per flow: whether its lower endpoint opened it (the earliest SYN's sender, else the
    earliest packet's), and the flow's first timestamp."""
    big = np.iinfo(np.int64).max
    first_ts = np.full(nflows, big, np.int64)
    np.minimum.at(first_ts, inv, ts)
    syn_ts = np.full(nflows, big, np.int64)
    np.minimum.at(syn_ts, inv[is_syn], ts[is_syn])
    opener_ts = np.where(syn_ts < big, syn_ts, first_ts)
    opener = (ts == opener_ts[inv]) & (is_syn | (syn_ts[inv] == big))
    lo_opens = np.zeros(nflows, bool)
    # earliest qualifying packet per flow decides; ties resolve to the first in file order
    cand = np.flatnonzero(opener)
    _, pick = np.unique(inv[cand], return_index=True)
    chosen = cand[pick]
    lo_opens[inv[chosen]] = ~swap[chosen]
    return lo_opens, first_ts


def build_flows(c: PacketColumns, npoints: int) -> FlowTable:
    n = len(c)
    ip = np.flatnonzero(c.l3 > 0)
    ends = _Endpoints.of(c, ip)
    swap, src, dst, sp, dp = ends.swap, ends.src, ends.dst, ends.sport, ends.dport
    k1, k2 = ends.keys(c, ip)
    first, inv = group_pairs(k1, k2) if len(ip) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    nflows = len(first)
    ts = c.ts[ip]
    flags = c.tcp_flags[ip]
    tcp = c.proto[ip] == TCP
    is_syn = tcp & ((flags & (SYN | ACK)) == SYN)
    lo_opens, first_ts = _initiators(inv, ts, is_syn, swap, nflows)
    # sent by the initiator: ~swap means the packet's source is the "lo" endpoint
    fw = (~swap) == lo_opens[inv]

    wl = c.wirelen[ip].astype(np.float64)
    pk_ab = np.bincount(inv[fw], minlength=nflows)
    pk_ba = np.bincount(inv[~fw], minlength=nflows)
    by_ab = np.bincount(inv[fw], weights=wl[fw], minlength=nflows).astype(np.int64)
    by_ba = np.bincount(inv[~fw], weights=wl[~fw], minlength=nflows).astype(np.int64)
    last_ts = np.full(nflows, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last_ts, inv, ts)

    fa = first
    la, ha = np.where(swap[fa], dst[fa], src[fa]), np.where(swap[fa], src[fa], dst[fa])
    lp, hp = np.where(swap[fa], dp[fa], sp[fa]), np.where(swap[fa], sp[fa], dp[fa])
    a_addr, b_addr = np.where(lo_opens, la, ha), np.where(lo_opens, ha, la)
    a_port, b_port = np.where(lo_opens, lp, hp), np.where(lo_opens, hp, lp)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(inv[mask], minlength=nflows)

    synack = tcp & ((flags & (SYN | ACK)) == (SYN | ACK))
    rst = tcp & ((flags & RST) != 0)
    zero = tcp & (c.win[ip] == 0) & ((flags & (RST | SYN | FIN)) == 0)
    handshake, retrans, out_of_order = _tcp_health(c, ip, inv, fw, tcp, nflows, npoints)

    flow = np.full(n, NO_FLOW, np.int64)
    flow[ip] = inv
    forward = np.zeros(n, bool)
    forward[ip] = fw
    return FlowTable(
        l3=np.where(c.l3[ip][fa] == 6, 6, 4).astype(np.uint8),
        proto=c.proto[ip][fa],
        a_addr=a_addr.astype(np.uint32),
        a_port=a_port.astype(np.uint16),
        b_addr=b_addr.astype(np.uint32),
        b_port=b_port.astype(np.uint16),
        packets_ab=pk_ab,
        packets_ba=pk_ba,
        bytes_ab=by_ab,
        bytes_ba=by_ba,
        first_ts=first_ts,
        last_ts=last_ts,
        syn=count(is_syn & fw),
        synack=count(synack & ~fw),
        rst_ab=count(rst & fw),
        rst_ba=count(rst & ~fw),
        fin=count(tcp & ((flags & FIN) != 0)),
        handshake_ns=handshake,
        retransmissions=retrans,
        out_of_order=out_of_order,
        zero_window=count(zero),
        flow=flow,
        forward=forward,
    )


def _tcp_health(
    c: PacketColumns,
    ip: np.ndarray,
    inv: np.ndarray,
    fw: np.ndarray,
    tcp: np.ndarray,
    nflows: int,
    npoints: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Handshake time and retransmission count per flow, judged within each capture point."""
    handshake = np.full(nflows, -1, np.int64)
    t = np.flatnonzero(tcp)
    if not len(t):
        return handshake, np.zeros(nflows, np.int64), np.zeros(nflows, np.int64)
    rows = ip[t]
    flow = inv[t]
    point = c.point[rows].astype(np.int64)
    direction = fw[t].astype(np.int64)
    gd = (flow * max(npoints, 1) + point) * 2 + direction
    order = np.argsort(gd, kind="stable")  # file order within each (flow, point, direction)
    gd_s = gd[order]
    r = rows[order]
    flags = c.tcp_flags[r]
    syn = ((flags & SYN) != 0).astype(np.int64)
    fin = ((flags & FIN) != 0).astype(np.int64)
    length = c.paylen[r].astype(np.int64)
    seq = c.seq[r].astype(np.int64)
    start = np.ones(len(order), bool)
    start[1:] = gd_s[1:] != gd_s[:-1]
    base = seq[start][np.cumsum(start) - 1]
    rel = (seq - base) & 0xFFFFFFFF
    end = rel + length + syn + fin
    # Running max of what each direction already sent, restarted per group.
    rank = np.cumsum(start) - 1
    key = (rank << 34) | end
    seen = np.maximum.accumulate(key)
    prev = np.empty_like(seen)
    prev[0] = -1
    prev[1:] = seen[:-1]
    same = (prev >> 34) == rank
    prev_end = np.where(same, prev & ((1 << 34) - 1), -1)
    carries = (length > 0) | (syn > 0) | (fin > 0)
    keepalive = (length <= 1) & (rel + 1 == prev_end) & (syn == 0) & (fin == 0)
    behind = carries & same & (end <= prev_end) & ~keepalive
    # Below what was already sent: a retransmission if a segment starting at the same
    # sequence number was seen before, else a late segment filling a gap (out of order).
    starts = (rank << 34) | rel
    maybe = np.isin(starts, starts[behind]) & carries
    cand = np.flatnonzero(maybe)
    _, first = np.unique(starts[cand], return_index=True)
    seen_before = np.ones(len(cand), bool)
    seen_before[first] = False
    repeated = np.zeros(len(starts), bool)
    repeated[cand] = seen_before
    again = behind & repeated
    late = behind & ~repeated
    f_o, p_o = flow[order], point[order]
    # Counted at every point that saw it, a segment is reported once: the max over points.
    retrans = _per_point_max(f_o[again], p_o[again], nflows, npoints)
    out_of_order = _per_point_max(f_o[late], p_o[late], nflows, npoints)
    handshake = _handshakes(c.ts[r], flags, f_o, p_o, direction[order], nflows, npoints)
    return handshake, retrans, out_of_order


def _handshakes(
    ts: np.ndarray,
    flags: np.ndarray,
    f_o: np.ndarray,
    p_o: np.ndarray,
    d_o: np.ndarray,
    nflows: int,
    npoints: int,
) -> np.ndarray:
    """SYN -> the initiator's ACK after the SYN/ACK, at each point; kept from the point that
    saw the SYN first. -1 where there was no complete handshake."""
    big = np.iinfo(np.int64).max
    shape = (nflows, max(npoints, 1))
    t_syn = np.full(shape, big, np.int64)
    t_synack = np.full(shape, big, np.int64)
    is_syn = (flags & (SYN | ACK)) == SYN
    is_synack = (flags & (SYN | ACK)) == (SYN | ACK)
    np.minimum.at(
        t_syn, (f_o[is_syn & (d_o == 1)], p_o[is_syn & (d_o == 1)]), ts[is_syn & (d_o == 1)]
    )
    np.minimum.at(
        t_synack,
        (f_o[is_synack & (d_o == 0)], p_o[is_synack & (d_o == 0)]),
        ts[is_synack & (d_o == 0)],
    )
    is_ack = ((flags & (SYN | ACK | RST)) == ACK) & (d_o == 1)
    after = is_ack & (ts >= t_synack[f_o, p_o])
    t_ack = np.full(shape, big, np.int64)
    np.minimum.at(t_ack, (f_o[after], p_o[after]), ts[after])
    first_point = t_syn.argmin(axis=1)
    idx = np.arange(nflows)
    s, a = t_syn[idx, first_point], t_ack[idx, first_point]
    return np.where((s < big) & (a < big), a - s, -1)


def _per_point_max(flow: np.ndarray, point: np.ndarray, nflows: int, npoints: int) -> np.ndarray:
    if npoints <= 1:
        return np.bincount(flow, minlength=nflows)
    per_point = np.zeros((nflows, npoints), np.int64)
    np.add.at(per_point, (flow, point), 1)
    return per_point.max(axis=1)
