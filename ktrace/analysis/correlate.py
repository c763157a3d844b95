"""Follow each packet across capture points.

A packet keeps a fingerprint through NAT and encapsulation — IP ID, TCP sequence/ack/flags,
payload length and a hash of its first payload bytes, never addresses, ports or checksums —
so the copies of one packet at the pod, the veth, the node NICs (decapsulated) and the peer pod
share it; stitch_rules says where the addresses must agree all the same. From those joins:
per-point clock offsets, conversations merged across NAT, the path each conversation takes with
per-hop latency, and where packets stopped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ktrace.analysis.flows import FlowTable, group_pairs
from ktrace.analysis.stitch_rules import (
    home_addresses,
    link_scoped,
    sequenced,
    split_identities,
)
from ktrace.chunking import chunks, row_type
from ktrace.decode.columns import PacketColumns
from ktrace.decode.rows import UNKNOWN_HASH
from ktrace.distinct import distinct
from ktrace.kernels.mix import K1, K2, mix_rows
from ktrace.kernels.sorting import repeated_at
from ktrace.model import Point

# Two copies of one packet at different points are at most this far apart (after clock
# correction); further apart, the same fingerprint is another packet.
WINDOW_NS = 2_000_000_000
# Offsets smaller than this are taken as latency, not clock difference.
MIN_OFFSET_NS = 2_000_000
MIN_SHARED = 3  # identities two points must share before their clocks are compared


def fingerprinter(c: PacketColumns) -> Callable[[np.ndarray], np.ndarray]:
    """A function giving a uint64 per IP packet of `rows` (never 0), the same for every copy
    of a packet. Where some copy's first payload bytes were cut by a snap length, every copy
    goes without the payload hash: the bytes one point lacks are not a difference."""

    def fine(rows: np.ndarray) -> np.ndarray:
        out = mix_rows((c.proto, c.ipid, c.seq, c.ack, c.tcp_flags, c.paylen, c.phash), rows)
        out |= np.uint64(1)
        return out

    def coarse(rows: np.ndarray) -> np.ndarray:
        out = mix_rows((c.proto, c.ipid, c.seq, c.ack, c.tcp_flags, c.paylen), rows)
        out |= np.uint64(1)
        return out

    cut = np.flatnonzero(c.phash == UNKNOWN_HASH)
    if not len(cut):
        return fine
    blind = distinct(coarse(cut))

    def either(rows: np.ndarray) -> np.ndarray:
        rough = coarse(rows)
        at = np.searchsorted(blind, rough).clip(max=len(blind) - 1)
        return np.where(blind[at] == rough, rough, fine(rows))

    return either


@dataclass(frozen=True, eq=False)
class Correlation:
    """The same packet across points: identities, clock offsets, conversations."""

    ident: np.ndarray  # per packet: the packet's identity across points, -1 when not IP
    when: np.ndarray  # per packet: timestamp corrected by its point's clock offset
    offsets: np.ndarray  # per point: estimated clock offset, ns (point clock - reference)
    conv: np.ndarray  # per flow: conversation (flows joined across NAT by shared packets)
    local: np.ndarray  # per packet: link-scoped (never joined across points, no path)
    first_single: int  # identities from this one on are packets nothing else shares


@dataclass(frozen=True, eq=False)
class Scope:
    """What correlation takes from the packets alone, before any flow: which are
    link-scoped (never joined across points) and each point's home address. Worked out
    apart, it can be on another thread while the flows are."""

    local: np.ndarray  # per packet
    home: np.ndarray  # per point, stitch_rules.home_addresses


def scope(c: PacketColumns, points: list[Point], v6: list[bytes]) -> Scope:
    local = link_scoped(c, v6)
    return Scope(local, home_addresses(c, points, local))


def _occurrence(key: np.ndarray, order_by: np.ndarray) -> np.ndarray:
    """For each element, how many earlier (by order_by) elements share its key."""
    order = np.lexsort((order_by, key))
    k = key[order]
    start = np.ones(len(k), bool)
    start[1:] = k[1:] != k[:-1]
    idx = np.arange(len(k))
    run_start = np.maximum.accumulate(np.where(start, idx, 0))
    occ = np.empty(len(k), np.int64)
    occ[order] = idx - run_start
    return occ


def _identities(
    fp: np.ndarray, point: np.ndarray, flow: np.ndarray, strong: np.ndarray, ts: np.ndarray
) -> np.ndarray:
    """Identity per row: the k-th copy of a fingerprint at one point is the k-th at another
    (retransmissions repeat a fingerprint). A point that is both entry and exit (a node NIC
    for a NodePort, a pod's eth0 for a hairpin) sees one packet twice, before and after NAT
    or encapsulation there: where the fingerprint holds a random TCP sequence number, that
    cannot be two packets, so copies are counted per 5-tuple and both are its k-th."""
    where = point.astype(np.uint64) * K2
    where += np.where(strong, flow.astype(np.uint64) * K1, np.uint64(0))
    occ = _occurrence(fp ^ where, ts)
    _, inv = group_pairs(fp, occ.astype(np.uint64))
    return inv


def _median_by(group: np.ndarray, values: np.ndarray) -> dict[int, float]:
    out: dict[int, float] = {}
    if not len(group):
        return out
    order = np.lexsort((values, group))
    g, v = group[order], values[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    for a, b in pairwise(bounds):
        out[int(g[a])] = float(v[(a + b - 1) // 2] + v[(a + b) // 2]) / 2
    return out


def _pairs(
    ident: np.ndarray, point: np.ndarray, ts: np.ndarray, forward: np.ndarray
) -> dict[tuple[int, int], tuple[float | None, float | None, int]]:
    """For every pair of points (p < q) that saw the same packets: the median of
    t_q - t_p for packets sent a->b and for packets sent b->a, and how many were shared."""
    order = np.lexsort((point, ident))
    i, p, t, f = ident[order], point[order], ts[order], forward[order]
    out: dict[tuple[int, int], tuple[float | None, float | None, int]] = {}
    # consecutive copies of one identity (points sorted within it): enough for a spanning set
    same = np.flatnonzero(i[1:] == i[:-1])
    if not len(same):
        return out
    a, b = same, same + 1
    key = p[a].astype(np.int64) * 65536 + p[b]
    d = (t[b] - t[a]).astype(np.float64)
    fwd = f[a]
    for k in distinct(key):
        sel = key == k
        fw = _median_by(np.zeros(int((sel & fwd).sum()), np.int64), d[sel & fwd])
        bw = _median_by(np.zeros(int((sel & ~fwd).sum()), np.int64), d[sel & ~fwd])
        out[(int(k // 65536), int(k % 65536))] = (fw.get(0), bw.get(0), int(sel.sum()))
    return out


def clock_offsets(
    ident: np.ndarray,
    point: np.ndarray,
    ts: np.ndarray,
    forward: np.ndarray,
    npoints: int,
    same_clock: list[list[int]] | None = None,
) -> np.ndarray:
    """Offset of each point's clock against the busiest point's, NTP style: with latency
    assumed symmetric, the offset is the middle of the two directions' median delays."""
    offsets = np.zeros(npoints, np.int64)
    if npoints < 2 or not len(ident):
        return offsets
    pairs = _pairs(ident, point, ts, forward)
    edges: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for (p, q), (fw, bw, n) in pairs.items():
        if n < MIN_SHARED:
            continue
        est = (fw + bw) / 2 if fw is not None and bw is not None else (fw if fw is not None else bw)
        assert est is not None
        edges[p].append((q, n, est))
        edges[q].append((p, n, -est))
    counts = np.bincount(point, minlength=npoints)
    ref = int(counts.argmax())
    known = {ref: 0.0}
    frontier = [ref]
    while frontier:  # best-connected pairs first
        p = frontier.pop(0)
        for q, _, est in sorted(edges[p], key=lambda e: -e[1]):
            if q not in known:
                known[q] = known[p] + est
                frontier.append(q)
    for p, off in known.items():
        offsets[p] = round(off) if abs(off) >= MIN_OFFSET_NS else 0
    for group in same_clock or []:  # points captured on one node share its clock
        members = [p for p in group if p in known]
        if members:
            shared = int(np.median([offsets[p] for p in members]))
            offsets[group] = shared
    return offsets


def correlate(
    c: PacketColumns,
    flows: FlowTable,
    points: list[Point],
    v6: list[bytes],
    same_clock: list[list[int]] | None = None,
    scoped: Scope | None = None,
) -> Correlation:
    npoints = len(points)
    scoped = scoped or scope(c, points, v6)
    local = scoped.local
    # A packet whose fingerprint nothing else has, or that is link-scoped (rule 1), is its own
    # identity: the sorting below is only for the copies. One capture of bulk traffic is
    # nearly all singles; a bundle of many points nearly all copies. Every row is sorted,
    # those not IP as 0 (which no fingerprint is): no array of the IP rows beside the sort.
    fingerprint = fingerprinter(c)
    copies = repeated_at(len(c), lambda at: np.where(c.l3[at] > 0, fingerprint(at), 0))
    for lo, hi in chunks(len(c)):
        copies[lo:hi] &= (c.l3[lo:hi] > 0) & ~local[lo:hi]
    rows = np.flatnonzero(copies).astype(row_type(len(c)), copy=False)
    fp = fingerprint(rows)
    point = c.point[rows].astype(np.int64)
    ts = c.ts[rows]
    ident_rows = _identities(fp, point, flows.flow[rows], sequenced(c, rows), ts)
    ident_rows = split_identities(ident_rows, rows, ts, c, scoped.home)
    forward = flows.forward[rows]
    offsets = clock_offsets(ident_rows, point, ts, forward, npoints, same_clock)
    # with no offset (one clock, or one point) the capture's own times serve: no copy
    when = c.ts - offsets[c.point] if offsets.any() else c.ts
    # A copy too far from its identity's first copy (after correction) is another packet.
    nid = int(ident_rows.max()) + 1 if len(ident_rows) else 0
    earliest = np.full(nid, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(earliest, ident_rows, when[rows])
    far = when[rows] - earliest[ident_rows] > WINDOW_NS
    if far.any():
        ident_rows = ident_rows.copy()
        ident_rows[far] = nid + np.arange(int(far.sum()))
        nid += int(far.sum())
    ident = np.full(len(c), -1, row_type(len(c)))
    ident[rows] = ident_rows
    first_single = nid
    for lo, hi in chunks(len(c)):  # each single its own identity, numbered in file order
        singles = lo + np.flatnonzero((c.l3[lo:hi] > 0) & ~copies[lo:hi])
        ident[singles] = np.arange(nid, nid + len(singles))
        nid += len(singles)
    conv = _join_flows(ident_rows, flows.flow[rows], len(flows))
    return Correlation(ident, when, offsets, conv, local, first_single)


def _join_flows(ident: np.ndarray, flow: np.ndarray, nflows: int) -> np.ndarray:
    """Flows that share a packet are one conversation seen before and after NAT: each flow
    takes the smallest flow number it is linked to, directly or not."""
    order = np.lexsort((flow, ident))
    i, f = ident[order], flow[order]
    link = np.flatnonzero((i[1:] == i[:-1]) & (f[1:] != f[:-1]))
    a, b = f[link].astype(np.int64), f[link + 1].astype(np.int64)
    root = np.arange(nflows, dtype=np.int64)
    while len(a):
        low = np.minimum(root[a], root[b])
        np.minimum.at(root, a, low)
        np.minimum.at(root, b, low)
        root = root[root]  # pointer jumping: chains shorten by half each round
        if (root[a] == root[b]).all():
            break
    while (root[root] != root).any():
        root = root[root]
    _, conv = np.unique(root, return_inverse=True)
    return conv.reshape(-1)
