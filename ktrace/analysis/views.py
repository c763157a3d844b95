"""Rows for interactive views: conversations merged across points, a path as a packet matrix,
DNS lookups grouped by search-path chain. Plain data; the TUI only lays them out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.analysis.checks import conversation_label
from ktrace.analysis.context import Analysis
from ktrace.analysis.dns import DnsTransaction
from ktrace.analysis.dns_patterns import client_ip, search_chains
from ktrace.analysis.flows import packets_at_points
from ktrace.analysis.paths import ConvPath, NatKind
from ktrace.chunking import chunks
from ktrace.decode.transport import ACK, FIN, PSH, RST, SYN, TCP
from ktrace.distinct import distinct

FLAG_NAMES = ((SYN, "S"), (ACK, "."), (PSH, "P"), (FIN, "F"), (RST, "R"))


@dataclass(frozen=True)
class ConversationRow:
    """One conversation however many points saw it: counts are what the point that saw the
    most of it saw (distinct packets, not sightings summed over points)."""

    conv: int
    label: str
    proto: str
    a: str
    b: str
    nat: str  # "10.96.0.20:80 => 10.244.1.2:80", or ""
    nat_kind: NatKind | None
    points: frozenset[int]
    packets: int
    bytes: int
    retransmissions: int
    rst: int
    fin: int
    handshake_ms: float | None
    lost: int
    first_ts: int
    last_ts: int
    flow: int  # the first flow


def _presence(a: Analysis) -> dict[int, set[int]]:
    """Per conversation, the points that saw it."""
    npoints = max(len(a.index.points), 1)
    at, _ = packets_at_points(a.flows, a.index.columns.point, npoints)
    keys = distinct(a.correlation.conv[at // npoints].astype(np.int64) * 65536 + at % npoints)
    presence: dict[int, set[int]] = {}
    for value in keys.tolist():
        presence.setdefault(value // 65536, set()).add(value % 65536)
    return presence


def _nat_text(a: Analysis, path: ConvPath | None) -> str:
    if not (path and path.nat):
        return ""
    n = path.nat[0]
    side = "b" if n.kind.destination else "a"
    return f"{a.endpoint(n.before, side)} => {a.endpoint(n.after, side)}"


def _distinct_counts(a: Analysis, nconv: int) -> tuple[np.ndarray, ...]:
    """Per conversation: packets, bytes (as first seen), RSTs and FINs, each packet once
    however many points saw it. The flow table's counts summed by conversation, less the
    copies of packets seen more than once but for the first of each: a capture at one point
    has few, and the flows have counted their packets already."""
    c, f, flow, cor = a.index.columns, a.flows, a.flows.flow, a.correlation
    per_flow = (f.packets_ab + f.packets_ba, f.bytes_ab + f.bytes_ba, f.rst_ab + f.rst_ba, f.fin)
    totals = [np.bincount(cor.conv, weights=v, minlength=nconv) for v in per_flow]
    totals[0] = totals[0].astype(np.int64)

    def add(rows: np.ndarray, sign: int) -> None:
        owner = cor.conv[flow[rows]]
        flags = c.tcp_flags[rows]
        is_tcp = c.proto[rows] == TCP
        totals[0] += sign * np.bincount(owner, minlength=nconv)
        for k, weights in enumerate(
            (
                c.wirelen[rows].astype(np.float64),
                (is_tcp & ((flags & RST) > 0)).astype(np.float64),
                (is_tcp & ((flags & FIN) > 0)).astype(np.float64),
            ),
            start=1,
        ):
            totals[k] += sign * np.bincount(owner, weights=weights, minlength=nconv)

    copies = [
        lo + np.flatnonzero((flow[lo:hi] >= 0) & (cor.ident[lo:hi] < cor.first_single))
        for lo, hi in chunks(len(flow))
    ]
    many = np.concatenate(copies) if copies else np.zeros(0, np.int64)
    if len(many):  # the first copy of each packet, by conversation and identity, counts
        add(many, -1)
        conv, ident = cor.conv[flow[many]], cor.ident[many]
        order = np.lexsort((cor.when[many], ident, conv))
        sc, si = conv[order], ident[order]
        new = np.r_[True, (sc[1:] != sc[:-1]) | (si[1:] != si[:-1])]
        add(many[order[new]], 1)
    return tuple(totals)


BIG = np.iinfo(np.int64).max  # no handshake


@dataclass(frozen=True, eq=False)
class _Conversations:
    """Per conversation, in conversation order: its flows grouped (earliest first) and what
    its row counts, as columns; rows are made only for the conversations asked for."""

    order: np.ndarray  # flows by conversation, earliest first
    starts: np.ndarray  # where each conversation's flows begin in `order`
    conv: np.ndarray  # per conversation: its id
    first_ts: np.ndarray  # its earliest flow's first packet
    handshake: np.ndarray  # fastest handshake, or BIG
    retransmissions: np.ndarray
    last_ts: np.ndarray
    packets: np.ndarray  # by conversation id, as the three below
    size: np.ndarray
    rst: np.ndarray
    fin: np.ndarray

    @classmethod
    def of(cls, a: Analysis) -> _Conversations:
        f, conv = a.flows, a.correlation.conv
        # group the flows by conversation, earliest first within each: reductions per run
        order = np.lexsort((f.first_ts, conv))
        sconv = conv[order]
        starts = np.flatnonzero(np.r_[True, sconv[1:] != sconv[:-1]])

        def most(values: np.ndarray) -> np.ndarray:
            return np.maximum.reduceat(values[order], starts)

        handshake = np.where(f.handshake_ns >= 0, f.handshake_ns, BIG)[order]
        counts = _distinct_counts(a, int(conv.max()) + 1)
        return cls(
            order,
            starts,
            sconv[starts],
            f.first_ts[order[starts]],
            np.minimum.reduceat(handshake, starts),
            most(f.retransmissions),
            most(f.last_ts),
            *counts,
        )

    def lost(self, a: Analysis) -> np.ndarray:
        """Per conversation: packets lost on its path."""
        lost = np.zeros(len(self.conv), np.int64)
        for path in a.paths:
            if path.losses:
                lost[np.searchsorted(self.conv, path.conv)] = sum(x.packets for x in path.losses)
        return lost

    def rows(self, a: Analysis, picks: list[int]) -> list[ConversationRow]:
        presence = _presence(a)
        lost = self.lost(a)
        rows = []
        for i in picks:
            k, start = int(self.conv[i]), int(self.starts[i])
            path = a.path_of_conv(k)
            first = path.flows[0] if path else int(self.order[start])
            hs = int(self.handshake[i])
            rows.append(
                ConversationRow(
                    conv=k,
                    label=conversation_label(a, path) if path else a.flow_label(first),
                    proto=a.proto(first),
                    a=a.named(a.endpoint(first, "a")),
                    b=a.named(a.endpoint(first, "b")),
                    nat=_nat_text(a, path),
                    nat_kind=path.nat[0].kind if path and path.nat else None,
                    points=frozenset(presence.get(k, set())),
                    packets=int(self.packets[k]),
                    bytes=int(self.size[k]),
                    retransmissions=int(self.retransmissions[i]),
                    rst=int(self.rst[k]),
                    fin=int(self.fin[k]),
                    handshake_ms=round(hs / 1e6, 3) if hs != BIG else None,
                    lost=int(lost[i]),
                    first_ts=int(self.first_ts[i]),
                    last_ts=int(self.last_ts[i]),
                    flow=first,
                )
            )
        return rows


def conversations(a: Analysis) -> list[ConversationRow]:
    """Every conversation, those that lost packets first, then by time."""
    if not len(a.correlation.conv):
        return []
    table = _Conversations.of(a)
    rows = table.rows(a, list(range(len(table.conv))))
    rows.sort(key=lambda r: (-r.lost, r.first_ts))
    return rows


def busiest_conversations(a: Analysis, limit: int) -> tuple[list[ConversationRow], int]:
    """The `limit` conversations a reader wants first, those that lost packets, then the
    biggest (ties by time), and how many there are: rows made for those alone."""
    if not len(a.correlation.conv):
        return [], 0
    table = _Conversations.of(a)
    size = table.size[table.conv]
    picks = np.lexsort((np.arange(len(size)), table.first_ts, -size, -table.lost(a)))[:limit]
    return table.rows(a, picks.tolist()), len(table.conv)


@dataclass(frozen=True)
class PathPacket:
    """One packet of a conversation, with when each hop saw it."""

    row: int  # the earliest copy
    summary: str
    direction: str
    cells: tuple[str, ...]  # per hop: "+0.085" ms after the first copy, "·" unseen, "✗" lost
    lost: bool


def flags_text(value: int) -> str:
    return "".join(ch for bit, ch in FLAG_NAMES if value & bit) or "-"


def path_packets(a: Analysis, path: ConvPath, limit: int = 5000) -> list[PathPacket]:
    """The conversation's packets as rows, its hops as columns."""
    c = a.index.columns
    cor = a.correlation
    rows = a.rows_of_flows(path.flows)
    hop_of = {h.point: i for i, h in enumerate(path.hops) if not h.leg}
    # a second pass through a point (after NAT there) is told apart by its 5-tuple
    pass_of = {(h.point, h.flow): i for i, h in enumerate(path.hops) if h.leg}
    lost_at: dict[int, int] = {}  # identity -> index of the hop it never reached
    for loss in path.losses:
        for r in loss.rows:
            lost_at[int(cor.ident[r])] = loss.missing_hop
    by_ident: dict[int, list[int]] = {}
    for r in rows.tolist():
        by_ident.setdefault(int(cor.ident[r]), []).append(r)
    out = []
    for ident, copies in sorted(by_ident.items(), key=lambda kv: int(cor.when[kv[1][0]])):
        first = min(copies, key=lambda r: int(cor.when[r]))
        t0 = int(cor.when[first])
        cells = ["·"] * len(path.hops)
        for r in copies:
            point = int(c.point[r])
            hop = pass_of.get((point, int(a.flows.flow[r])), hop_of.get(point))
            if hop is not None:
                cells[hop] = f"+{(int(cor.when[r]) - t0) / 1e6:.3f} ms"
        if ident in lost_at:
            cells[lost_at[ident]] = "✗ lost"
        forward = bool(a.flows.forward[first])
        proto = int(c.proto[first])
        what = (
            f"{flags_text(int(c.tcp_flags[first]))} seq={int(c.seq[first])} "
            f"len={int(c.paylen[first])}"
            if proto == TCP
            else f"len={int(c.paylen[first])}"
        )
        out.append(PathPacket(first, what, "→" if forward else "←", tuple(cells), ident in lost_at))
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class LookupRow:
    """A DNS transaction under the name its client looked up."""

    lookup: str  # the name the client looked up (search-path chains grouped under it)
    transaction: DnsTransaction


def dns_lookups(a: Analysis) -> list[LookupRow]:
    primary = a.dns.transactions.take(a.dns_primary())
    lookup = search_chains(primary)
    rows = [LookupRow(lookup[id(t)], t) for t in primary]
    first_seen: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (client_ip(r.transaction), r.lookup)
        first_seen[key] = min(first_seen.get(key, r.transaction.query_ts), r.transaction.query_ts)
    rows.sort(
        key=lambda r: (
            first_seen[(client_ip(r.transaction), r.lookup)],
            r.lookup,
            r.transaction.query_ts,
        )
    )
    return rows
