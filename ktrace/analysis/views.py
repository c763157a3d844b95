"""Rows for interactive views: conversations merged across points, a path as a packet matrix,
DNS lookups grouped by search-path chain. Plain data; the TUI only lays them out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.analysis.checks import conversation_label
from ktrace.analysis.context import Analysis
from ktrace.analysis.dns import DnsTransaction
from ktrace.analysis.dns_patterns import client_ip, label_prefixes, search_base
from ktrace.analysis.paths import ConvPath
from ktrace.decode.transport import ACK, FIN, PSH, RST, SYN, TCP

FLAG_NAMES = ((SYN, "S"), (ACK, "."), (PSH, "P"), (FIN, "F"), (RST, "R"))


@dataclass(frozen=True)
class ConversationRow:
    conv: int
    label: str
    proto: str
    a: str
    b: str
    nat: str  # "10.96.0.20:80 => 10.244.1.2:80", or ""
    points: frozenset[int]
    packets: int
    bytes: int
    retransmissions: int
    rst: int
    handshake_ms: float | None
    lost: int
    first_ts: int
    flow: int  # the first flow


def conversations(a: Analysis) -> list[ConversationRow]:
    f = a.flows
    conv = a.correlation.conv
    by_path = {p.conv: p for p in a.paths}
    ip = f.flow >= 0
    presence: dict[int, set[int]] = {}
    pairs = np.unique(conv[f.flow[ip]] * 65536 + a.index.columns.point[ip])
    for value in pairs.tolist():
        presence.setdefault(value // 65536, set()).add(value % 65536)
    rows = []
    for k in range(int(conv.max()) + 1 if len(conv) else 0):
        members = np.flatnonzero(conv == k)
        path = by_path.get(k)
        first = int(members[np.argmin(f.first_ts[members])])
        if path is not None:
            first = path.flows[0]
        nat = ""
        if path and path.nat:
            n = path.nat[0]
            side = "b" if n.kind == "DNAT" else "a"
            nat = f"{a.endpoint(n.before, side)} => {a.endpoint(n.after, side)}"
        hs = [int(x) for x in f.handshake_ns[members] if x >= 0]
        rows.append(
            ConversationRow(
                conv=k,
                label=conversation_label(a, path) if path else a.flow_label(first),
                proto=a.proto(first),
                a=a.named(a.endpoint(first, "a")),
                b=a.named(a.endpoint(first, "b")),
                nat=nat,
                points=frozenset(presence.get(k, set())),
                packets=int((f.packets_ab[members] + f.packets_ba[members]).max()),
                bytes=int((f.bytes_ab[members] + f.bytes_ba[members]).max()),
                retransmissions=int(f.retransmissions[members].max()),
                rst=int((f.rst_ab[members] + f.rst_ba[members]).max()),
                handshake_ms=round(min(hs) / 1e6, 3) if hs else None,
                lost=sum(x.packets for x in path.losses) if path else 0,
                first_ts=int(f.first_ts[members].min()),
                flow=first,
            )
        )
    rows.sort(key=lambda r: (-r.lost, r.first_ts))
    return rows


@dataclass(frozen=True)
class PathPacket:
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
    flows = set(path.flows)
    rows = np.flatnonzero(np.isin(a.flows.flow, list(flows)))
    hop_of = {h.point: i for i, h in enumerate(path.hops)}
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
            hop = hop_of.get(int(c.point[r]))
            if hop is not None:
                cells[hop] = f"+{(int(cor.when[r]) - t0) / 1e6:.3f}"
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
class DnsRow:
    lookup: str  # the name the client looked up (search-path chains grouped under it)
    transaction: DnsTransaction


def dns_lookups(a: Analysis) -> list[DnsRow]:
    primary = a.dns_primary()
    asked: dict[str, set[str]] = {}
    for t in primary:
        asked.setdefault(client_ip(t), set()).add(t.qname)
    prefixes = {client: label_prefixes(names) for client, names in asked.items()}
    rows = []
    for t in primary:
        client = client_ip(t)
        base = (
            search_base(t.qname, asked[client], prefixes[client]) if t.rcode == "NXDOMAIN" else None
        )
        rows.append(DnsRow(base or t.qname, t))
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
