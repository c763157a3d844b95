"""tcp.syn-unanswered: connection attempts that got neither a SYN/ACK, a RST nor an ICMP error,
and where along the path the SYN stopped."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.checks import (
    GRACE_NS,
    MAX_EVIDENCE,
    FunctionCheck,
    conversation_label,
    plural,
)
from ktrace.analysis.context import Analysis
from ktrace.decode.transport import ACK, SYN, TCP
from ktrace.model import Finding, Severity


def answered_by_icmp(analysis: Analysis) -> set[int]:
    """Flows an ICMP error (unreachable, ...) answered: those got a reply of sorts."""
    q = analysis.index.quotes
    f = analysis.flows
    keys = {}
    for k in range(len(f)):
        keys[(int(f.a_addr[k]), int(f.a_port[k]), int(f.b_addr[k]), int(f.b_port[k]))] = k
    out = set()
    for src, sport, dst, dport in zip(
        q.src.tolist(), q.sport.tolist(), q.dst.tolist(), q.dport.tolist(), strict=True
    ):
        flow = keys.get((src, sport, dst, dport))
        if flow is not None:
            out.add(flow)
    return out


@dataclass
class _Unanswered:
    """Unanswered connection attempts to one destination that stopped at one point."""

    dest: str
    last_point: str
    labels: list[str] = field(default_factory=list)
    clients: set[str] = field(default_factory=set)
    tries: int = 0
    first_ns: int = 0
    last_ns: int = 0
    syns: list[list[int]] = field(default_factory=list)  # per connection

    def evidence(self) -> list[int]:
        """Every try of a lone connection; the first tries of each of many."""
        each = MAX_EVIDENCE if len(self.syns) == 1 else max(1, MAX_EVIDENCE // 4)
        return sorted(r for rows in self.syns for r in rows[:each])[:MAX_EVIDENCE]


def _unanswered(analysis: Analysis) -> Iterator[tuple[int, np.ndarray]]:
    """(first flow, its conversation's flows) for each conversation whose SYNs got nothing
    back, old enough to have been answered and not placed by path.drop."""
    f = analysis.flows
    conv = analysis.correlation.conv
    icmp = answered_by_icmp(analysis)
    tried = np.flatnonzero((f.proto == TCP) & (f.syn > 0))
    by_conv: dict[int, list[int]] = {}
    for flow in tried.tolist():
        by_conv.setdefault(int(conv[flow]), []).append(flow)
    for members in by_conv.values():
        everyone = np.flatnonzero(conv == conv[members[0]])
        if (
            f.synack[everyone].sum()
            or f.rst_ba[everyone].sum()
            or f.packets_ba[everyone].sum()
            or any(x in icmp for x in everyone.tolist())
        ):
            continue
        if int(f.first_ts[everyone].min()) + GRACE_NS > analysis.end_ts:
            continue
        path = analysis.path_of_flow(members[0])
        if path and any(x.direction == "a->b" and x.syn for x in path.losses):
            continue  # located: path.drop says between which points it died
        yield members[0], everyone


def _groups(analysis: Analysis) -> list[_Unanswered]:
    f = analysis.flows
    c = analysis.index.columns
    syn_rows = np.flatnonzero((c.tcp_flags & (SYN | ACK)) == SYN)
    groups: dict[tuple[str, str], _Unanswered] = {}
    for flow, everyone in _unanswered(analysis):
        path = analysis.path_of_flow(flow)
        syn_here = syn_rows[np.isin(f.flow[syn_rows], everyone)]
        dest = analysis.named(analysis.endpoint(path.flows[-1] if path else flow, "b"))
        last_point = analysis.point_id(int(c.point[syn_here[-1]]))
        g = groups.setdefault((dest, last_point), _Unanswered(dest, last_point))
        g.labels.append(conversation_label(analysis, path) if path else analysis.flow_label(flow))
        g.clients.add(analysis.endpoint(flow, "a").rsplit(":", 1)[0])
        g.tries += len(set(analysis.correlation.ident[syn_here].tolist()))
        first, last = int(f.first_ts[everyone].min()), int(f.last_ts[everyone].max())
        g.first_ns = min(g.first_ns or first, first)
        g.last_ns = max(g.last_ns, last)
        g.syns.append(syn_here.tolist())
    return list(groups.values())


def run(analysis: Analysis) -> Iterator[Finding]:
    for g in _groups(analysis):
        conns = len(g.labels)
        span = (g.last_ns - g.first_ns) / 1e9
        tries = plural(g.tries, "try", "tries")
        if conns == 1:
            what = f"SYN to {g.dest} never answered ({tries} over {span:.1f} s)"
        else:
            clients = f" from {plural(len(g.clients), 'client')}" if len(g.clients) > 1 else ""
            what = (
                f"{plural(conns, 'connection')}{clients} to {g.dest} never answered "
                f"({tries} over {span:.1f} s)"
            )
        yield Finding(
            id="tcp.syn-unanswered",
            severity=Severity.HIGH,
            title=f"{what}: last seen at {g.last_point}",
            explanation=(
                f"{g.labels[0] if conns == 1 else plural(conns, 'connection')}: nothing came "
                "back: no SYN/ACK, no RST, no ICMP error. The SYN was dropped after the last "
                "point that saw it (NetworkPolicy, firewall, a missing route) or the "
                "destination is gone."
            ),
            next_step=(
                f"Capture further along the path from {g.last_point} (the node, the "
                "destination's node and pod) to see where the SYN stops; check "
                "NetworkPolicies in the destination namespace and that the endpoint pod exists."
            ),
            evidence=tuple(analysis.index.ref(r) for r in g.evidence()),
            flows=tuple(g.labels),
        )


CHECK = FunctionCheck("tcp.syn-unanswered", run)
