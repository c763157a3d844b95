"""The path of each conversation across capture points: hops in order with latency, where NAT
rewrote it, which tunnel carried it, and where its packets stopped."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from ktrace.analysis.correlate import Correlation
from ktrace.analysis.flows import FlowTable
from ktrace.analysis.names import NameKind, Names
from ktrace.chunking import chunks, distinct_keys
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import SYN
from ktrace.distinct import distinct
from ktrace.model import PointKind

# A packet that reached a point this close to the end of the next point's capture may simply
# have been cut off by the capture stopping.
END_GRACE_NS = 200_000_000
# a path's points in the order a packet from a pod meets them
POINT_ORDER = {
    PointKind.POD: 0,
    PointKind.VETH: 1,
    PointKind.TUNNEL: 2,
    PointKind.NODE: 3,
    PointKind.HOST: 4,
    PointKind.FILE: 4,
}


@dataclass(frozen=True)
class Hop:
    """One point on a conversation's path: how many packets it saw, how long after."""

    point: int
    packets: int  # packets of the conversation seen here (0: expected, never seen)
    latency_ns: float | None  # median from the previous hop, a->b packets
    flow: int | None  # the 5-tuple the conversation has here (index into FlowTable)
    tunnels: tuple[int, ...]  # tunnel ids (index into the index's tunnel table, 1-based)
    # 0, or 1 for the second pass through a point that is both entry and exit: the same
    # packets again after NAT or encapsulation at this point (a node NIC for a NodePort)
    leg: int = 0


class NatKind(StrEnum):
    """Which end of a conversation an address translation rewrote."""

    DNAT = "DNAT"  # the destination (a Service address to a pod's)
    SNAT = "SNAT"  # the source (a pod's address to its node's)
    BOTH = "DNAT+SNAT"

    @property
    def destination(self) -> bool:
        return self is not NatKind.SNAT

    @property
    def source(self) -> bool:
        return self is not NatKind.DNAT


class Direction(StrEnum):
    """Which way along a conversation: from its initiator (a) or back to it."""

    FORWARD = "a->b"
    BACK = "b->a"


@dataclass(frozen=True)
class NatChange:
    """An address translation between two hops of a path."""

    kind: NatKind
    after_hop: int  # the change happened between hops[after_hop] and hops[after_hop + 1]
    before: int  # flow before
    after: int  # flow after


@dataclass(frozen=True)
class Loss:
    """Packets seen at one hop of a path and never at the next."""

    direction: Direction
    last_hop: int  # index of the last hop that saw the packets (in a->b order)
    missing_hop: int  # the next hop, which never did
    packets: int
    syn: int  # how many of them were SYNs
    rows: tuple[int, ...]  # the packets at the last hop that saw them
    max_size: int  # largest of them there (wire length)
    passed_max_size: int  # largest packet of the conversation that did cross that hop


@dataclass(frozen=True)
class ConvPath:
    """A conversation's way through the points: its flows, hops, NAT and losses."""

    conv: int
    flows: tuple[int, ...]
    hops: tuple[Hop, ...]
    nat: tuple[NatChange, ...]
    losses: tuple[Loss, ...]

    @property
    def first_flow(self) -> int:
        return self.flows[0]


def _tuple_change(flows: FlowTable, a: int, b: int) -> NatKind | None:
    dnat = (flows.b_addr[a], flows.b_port[a]) != (flows.b_addr[b], flows.b_port[b])
    snat = (flows.a_addr[a], flows.a_port[a]) != (flows.a_addr[b], flows.a_port[b])
    if dnat and snat:
        return NatKind.BOTH
    return NatKind.DNAT if dnat else NatKind.SNAT if snat else None


def _cross_node_points(index: PacketIndex, flows: FlowTable, names: Names) -> set[int]:
    """Points that carried packets between pods of different nodes: where such packets
    are expected (a NIC that does, an overlay device that does)."""
    if not names.by_ip:
        return set()
    # a node number per distinct address (0: not a pod of a known node), then per flow end
    keys = np.concatenate([flows.a_addr, flows.b_addr]).astype(np.int64) * 8 + np.concatenate(
        [flows.l3, flows.l3]
    )
    uniq, inv = np.unique(keys, return_inverse=True)
    node_ids: dict[str, int] = {}
    node_of = np.array(
        [
            node_ids.setdefault(node, len(node_ids) + 1) if node else 0
            for node in (names.node_of(index.address(int(k % 8), int(k // 8))) for k in uniq)
        ],
        np.int64,
    )[inv.reshape(-1)]
    a, b = node_of[: len(flows)], node_of[len(flows) :]
    cross = (a > 0) & (b > 0) & (a != b)
    rows = np.flatnonzero(flows.flow >= 0)
    rows = rows[cross[flows.flow[rows]]]
    return set(distinct(index.columns.point[rows]).tolist())


def _node_side(index: PacketIndex, node: str, carriers: frozenset[int]) -> list[int]:
    return [
        k
        for k, p in enumerate(index.points)
        if p.node == node
        and p.pod is None
        and p.kind in (PointKind.NODE, PointKind.TUNNEL)
        and k in carriers
    ]


def _expected(
    index: PacketIndex,
    flows: FlowTable,
    names: Names,
    ends: tuple[int, int],
    present: set[int],
    carriers: frozenset[int],
) -> list[int]:
    """Points the conversation should have reached but never did (bundles: the manifest
    places the points, the inventory the pods and endpoints): the destination pod's own
    points and, when the destination is on another node, the NIC and overlay points of the
    nodes in between that carry traffic between nodes."""
    first, last = ends
    src_node = names.node_of(index.address(int(flows.l3[first]), int(flows.a_addr[first])))
    dst_ip = index.address(int(flows.l3[last]), int(flows.b_addr[last]))
    named = names.get(dst_ip)
    out: list[int] = []
    dst_nodes: frozenset[str] = frozenset()
    if named is not None and named.kind is NameKind.POD:
        dst_nodes = frozenset([named.node]) if named.node else frozenset()
        namespace, pod = named.name.split("/", 1)
        out += [
            k
            for k, p in enumerate(index.points)
            if p.pod == pod and (p.namespace in (None, namespace))
        ]
    elif named is not None and named.kind is NameKind.SERVICE:
        dst_nodes = names.endpoint_nodes.get(dst_ip, frozenset())
    if src_node and dst_nodes and src_node not in dst_nodes:
        out += _node_side_expected(index, src_node, carriers, present)
        if len(dst_nodes) == 1:
            out += _node_side_expected(index, next(iter(dst_nodes)), carriers, present)
    return [k for k in dict.fromkeys(out) if k not in present]


def _node_side_expected(
    index: PacketIndex, node: str, carriers: frozenset[int], present: set[int]
) -> list[int]:
    """The node's NIC and overlay points a conversation between nodes had to pass. A node
    with two NICs (a cloud CNI's secondary interface) is left one way or the other: one the
    conversation passed rules the other out, and when it passed neither, which one it needed
    is not known here, so neither is expected. A tunnel device and its NIC are in series."""
    side = _node_side(index, node, carriers)
    out = []
    for kind in (PointKind.NODE, PointKind.TUNNEL):
        alike = [k for k in side if index.points[k].kind == kind]
        if len(alike) == 1 and alike[0] not in present:
            out += alike
    return out


def conversation_paths(
    index: PacketIndex, flows: FlowTable, cor: Correlation, names: Names
) -> list[ConvPath]:
    c = index.columns
    npoints = len(index.points)

    def conv_of(lo: int, hi: int) -> np.ndarray:
        """The conversation of rows lo..hi, -1 outside any or link-scoped (no path)."""
        flow = flows.flow[lo:hi]
        keep = (flow >= 0) & ~cor.local[lo:hi]
        conv = np.full(hi - lo, -1, np.int64)
        conv[keep] = cor.conv.take(flow[keep])
        return conv

    def pairs_of(lo: int, hi: int) -> np.ndarray:
        conv = conv_of(lo, hi)
        keep = conv >= 0
        return conv[keep].astype(np.int64) * npoints + c.point[lo:hi][keep]

    counts = np.bincount(distinct_keys(len(c), pairs_of) // npoints)
    multi = set(np.flatnonzero(counts > 1).tolist())
    # conversations seen at one point may still be expected elsewhere (bundles only)
    if names.by_ip and any(p.pod for p in index.points):
        multi |= set(np.flatnonzero(counts == 1).tolist())
    if not multi:
        return []
    # the packets of the conversations with a path: all copies of a packet are in one
    wanted = np.zeros(len(counts) + 1, bool)
    wanted[list(multi)] = True
    rows = np.concatenate(
        [lo + np.flatnonzero(wanted[conv_of(lo, hi)]) for lo, hi in chunks(len(c))]
    )
    conv = cor.conv[flows.flow[rows]]
    point = c.point[rows].astype(np.int64)
    ident = cor.ident[rows]
    when = cor.when[rows]
    earliest = np.full(int(cor.ident.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(earliest, ident, when)
    rel = when - earliest[ident]
    end_of = np.full(npoints, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(end_of, c.point, cor.when)
    start_of = np.full(npoints, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(start_of, c.point, cor.when)
    # a point that saw nothing at all gives no window: it was capturing all along
    silent = np.bincount(c.point, minlength=npoints) == 0
    start_of[silent], end_of[silent] = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    # where the bundle or the file says when a point was capturing, that is its window: a
    # quiet point (a pod whose traffic is dropped before its veth) is a witness all along
    for k in range(npoints):
        declared = index.capture_window(k)
        if declared is not None:
            start_of[k], end_of[k] = declared[0] - cor.offsets[k], declared[1] - cor.offsets[k]
    where = _Where(np.stack([start_of, end_of]), frozenset(_cross_node_points(index, flows, names)))

    order = np.argsort(conv, kind="stable")
    bounds = np.searchsorted(conv[order], np.arange(len(counts) + 1))
    out = []
    for k in sorted(multi):
        sel = order[bounds[k] : bounds[k + 1]]
        if len(sel):
            seen = _Sightings(
                rows[sel], point[sel], ident[sel], when[sel], rel[sel], flows.flow[rows[sel]]
            )
            out.append(_one(index, flows, names, k, seen, where))
    out.sort(key=lambda p: int(flows.first_ts[p.first_flow]))
    return out


@dataclass(frozen=True, eq=False)
class _Where:
    """What the capture as a whole says about its points."""

    window: np.ndarray  # per point: [start, end] it was capturing (first and last packet)
    carriers: frozenset[int]  # points that carried traffic between nodes


@dataclass(frozen=True, eq=False)
class _Sightings:
    """One conversation's packets at every point: index rows and what correlation says."""

    rows: np.ndarray
    point: np.ndarray
    ident: np.ndarray
    when: np.ndarray  # corrected time
    rel: np.ndarray  # after the packet's first sighting anywhere
    flow: np.ndarray


def _median(values: np.ndarray) -> float:
    """np.median, exactly, without its overhead (a conversation of a DNS storm is a handful
    of packets, and there are tens of thousands of them)."""
    ordered = sorted(values.tolist()) if len(values) <= SMALL else np.sort(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (float(ordered[mid - 1]) + float(ordered[mid])) / 2


SMALL = 256  # sightings matched with dicts below this; numpy's set operations above


def _matched(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ia, ib): positions of the first occurrence in `a` and in `b` of each value both
    hold, as np.intersect1d(a, b, return_indices=True) gives them (in any order)."""
    if len(a) > SMALL or len(b) > SMALL:
        _, ia, ib = np.intersect1d(a, b, return_indices=True)
        return ia, ib
    first: dict[int, int] = {}
    for i, x in enumerate(a.tolist()):
        first.setdefault(x, i)
    left: list[int] = []
    right: list[int] = []
    taken: set[int] = set()
    for j, x in enumerate(b.tolist()):
        if x in first and x not in taken:
            taken.add(x)
            left.append(first[x])
            right.append(j)
    return np.array(left, np.int64), np.array(right, np.int64)


def _hop_keys(seen: _Sightings, fwd: np.ndarray) -> dict[int, float]:
    """Per point: how long after a packet's first sighting it sees it (negative for points
    that only saw the replies)."""
    keys = {}
    for p in sorted(set(seen.point.tolist())):
        at = seen.point == p
        ahead = at & fwd
        sent = bool(ahead.any())
        keys[p] = (1 if sent else -1) * _median(seen.rel[ahead if sent else at])
    return keys


def _hop_order(
    index: PacketIndex, names: Names, src_ip: str, keys: dict[int, float], extra: list[int]
) -> list[int]:
    """Points by time after first sighting, unless the bundle says where each point is: clocks
    of different nodes are only estimated, the topology is known (the client's node first,
    pod -> veth -> NIC, then the other nodes NIC -> veth -> pod). `extra`: points expected
    but never reached, placed where the topology puts them."""
    n = len(index.points)
    hop_points = sorted(keys, key=lambda p: (keys[p], POINT_ORDER[index.points[p % n].kind]))
    src = names.get(src_ip)
    everyone = hop_points + extra
    if src is None or not src.node or not all(index.points[p % n].node for p in everyone):
        return hop_points + sorted(extra, key=lambda k: -POINT_ORDER[index.points[k].kind])
    inf = float("inf")
    node_time: dict[str, float] = {}
    for p in hop_points:
        node = index.points[p % n].node or ""
        node_time[node] = min(node_time.get(node, keys[p]), keys[p])
    src_pod = src.name.split("/", 1)[-1] if src.kind is NameKind.POD else None

    def topo(p: int) -> tuple[int, float, int, float]:
        pt = index.points[p % n]
        rank = POINT_ORDER[pt.kind]
        key = keys.get(p, inf)
        outbound = p < n  # a second pass through a point is on the way in (a hairpin)
        if outbound and pt.pod is not None and pt.pod == src_pod:
            return (0, 0.0, rank, key)  # the source pod's own points: pod -> veth
        if outbound and pt.pod is None and pt.node == src.node:
            return (1, 0.0, rank, key)  # out of its node: tunnel -> NIC
        # other nodes (NIC -> tunnel), then the destination's points (veth -> pod)
        return (2 if pt.pod is None else 3, node_time.get(pt.node or "", inf), -rank, key)

    return sorted(everyone, key=topo)


def _hop(
    index: PacketIndex, seen: _Sightings, f_rows: np.ndarray, hop_points: list[int], i: int
) -> Hop:
    """The i-th hop: its packets, the flow it has there, latency from the hop before."""
    p = hop_points[i]
    sighted = seen.point == p
    at = f_rows[sighted[f_rows]]
    # the 5-tuple the conversation's first packet had here: what the request looked like
    # (later packets under another tuple are replies from an unexpected address, or resets)
    here = at if len(at) else np.flatnonzero(sighted)
    latency = None
    if i and len(at):
        prev = f_rows[seen.point[f_rows] == hop_points[i - 1]]
        ia, ib = _matched(seen.ident[prev], seen.ident[at])
        if len(ia):
            latency = _median(seen.when[at][ib] - seen.when[prev][ia])
    tunnels = tuple(sorted(set(index.columns.tunnel[seen.rows[sighted]].tolist()) - {0}))
    flow = int(seen.flow[here[seen.when[here].argmin()]]) if len(here) else None
    n = len(index.points)
    return Hop(p % n, int(np.count_nonzero(sighted)), latency, flow, tunnels, p // n)


def _passes(seen: _Sightings, npoints: int) -> _Sightings:
    """Sightings whose `point` tells the passes through one point apart: a point that saw
    the same packets under two 5-tuples saw them on their way in and again on their way out
    (after NAT or encapsulation there); the later tuple's sightings get point + npoints, a hop
    of their own. Different packets under another tuple (a reply from an unexpected address)
    stay at the point."""
    pairs = set(zip(seen.point.tolist(), seen.flow.tolist(), strict=True))
    if len(pairs) == len(set(seen.point.tolist())):
        return seen
    place = seen.point.copy()
    for p in distinct(seen.point).tolist():
        at = seen.point == p
        flows = distinct(seen.flow[at]).tolist()
        if len(flows) < 2:
            continue
        first = {f: int(seen.when[at & (seen.flow == f)].min()) for f in flows}
        entry, *rest = sorted(flows, key=first.__getitem__)
        inbound = seen.ident[at & (seen.flow == entry)]
        again = [f for f in rest if np.isin(seen.ident[at & (seen.flow == f)], inbound).any()]
        place[at & np.isin(seen.flow, again)] = p + npoints
    return replace(seen, point=place)


def _nat_changes(flows: FlowTable, hops: list[Hop]) -> list[NatChange]:
    nat = []
    for i in range(len(hops) - 1):
        a, b = hops[i].flow, hops[i + 1].flow
        if a is not None and b is not None and a != b:
            kind = _tuple_change(flows, a, b)
            if kind:
                nat.append(NatChange(kind, i, a, b))
    return nat


def _one(
    index: PacketIndex,
    flows: FlowTable,
    names: Names,
    conv: int,
    seen: _Sightings,
    where: _Where,
) -> ConvPath:
    fwd = flows.forward[seen.rows]
    n = len(index.points)
    seen = _passes(seen, n)
    flow = seen.flow
    # flows in the order the conversation meets them (corrected clocks; re-sorted by hops below)
    first_seen = {f: int(seen.when[flow == f].min()) for f in set(flow.tolist())}
    members = tuple(sorted(first_seen, key=first_seen.__getitem__))
    keys = _hop_keys(seen, fwd)
    src_ip = index.address(int(flows.l3[members[0]]), int(flows.a_addr[members[0]]))
    hop_points = _hop_order(index, names, src_ip, keys, [])
    at_hop = {p: i for i, p in enumerate(hop_points)}
    members = tuple(
        sorted(
            members,
            key=lambda f: (
                min(at_hop[int(p)] for p in distinct(seen.point[flow == f])),
                first_seen[f],
            ),
        )
    )
    if not fwd.any():
        hop_points = sorted(hop_points, key=lambda p: keys[p])
    elif not (~fwd).any():
        # nothing came back: where it should have gone but never was is where it died (an
        # answered conversation took another way than the inventory suggests, and is fine)
        ends = (members[0], members[-1])
        present = {p % n for p in hop_points}
        extra = _expected(index, flows, names, ends, present, where.carriers)
        hop_points = _hop_order(index, names, src_ip, keys, extra)
    position = {p: i for i, p in enumerate(hop_points)}
    f_rows = np.flatnonzero(fwd)  # a->b copies of one packet: time between consecutive hops
    hops = [_hop(index, seen, f_rows, hop_points, i) for i in range(len(hop_points))]
    losses = []
    for direction, mask in ((Direction.FORWARD, fwd), (Direction.BACK, ~fwd)):
        losses.extend(_losses(index, direction, mask, seen, hops, position, where.window))
    return ConvPath(conv, members, tuple(hops), tuple(_nat_changes(flows, hops)), tuple(losses))


def _losses(
    index: PacketIndex,
    direction: Direction,
    mask: np.ndarray,
    seen: _Sightings,
    hops: list[Hop],
    position: dict[int, int],
    window: np.ndarray,
) -> list[Loss]:
    """Packets whose last sighting is followed, on their way, by a hop that never saw them
    although it was capturing: not before its first packet (the points of a capture start at
    different moments), nor too near its end."""
    rows, point, ident, when = seen.rows, seen.point, seen.ident, seen.when
    sel = np.flatnonzero(mask)
    if not len(sel) or len(hops) < 2:
        return []
    c = index.columns
    pos = np.array([position[p] for p in point[sel].tolist()])
    if direction is Direction.BACK:
        pos = len(hops) - 1 - pos
    order = np.lexsort((pos, ident[sel]))
    ids, ps = ident[sel][order], pos[order]
    last = np.ones(len(ids), bool)
    np.not_equal(ids[1:], ids[:-1], out=last[:-1])
    last_pos, last_row = ps[last], sel[order][last]
    stuck = last_pos < len(hops) - 1
    if not stuck.any():
        return []
    reached = np.zeros(len(hops), np.int64)  # largest packet that crossed into each hop
    for p_pos, r in zip(ps.tolist(), sel[order].tolist(), strict=True):
        reached[p_pos] = max(reached[p_pos], int(c.wirelen[rows[r]]))
    groups: dict[int, list[int]] = {}
    for lp, r in zip(last_pos[stuck].tolist(), last_row[stuck].tolist(), strict=True):
        nxt = lp + 1
        hop_next = hops[nxt if direction is Direction.FORWARD else len(hops) - 1 - nxt]
        start, end = window[:, hop_next.point]
        if when[r] < start or when[r] + END_GRACE_NS > end:
            continue  # that point's capture had not started, or ended before it could arrive
        groups.setdefault(lp, []).append(r)
    out = []
    for lp, members in sorted(groups.items()):
        found = [int(rows[r]) for r in members]
        sizes = c.wirelen[found]
        flags = c.tcp_flags[found]
        last_hop = lp if direction is Direction.FORWARD else len(hops) - 1 - lp
        missing = lp + 1 if direction is Direction.FORWARD else len(hops) - 2 - lp
        out.append(
            Loss(
                direction,
                last_hop,
                missing,
                len(found),
                int(((flags & SYN) != 0).sum()),
                tuple(found),
                int(sizes.max()),
                int(reached[lp + 1]),
            )
        )
    return out
