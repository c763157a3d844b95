"""tcp.syn-unanswered: connection attempts that got neither a SYN/ACK, a RST nor an ICMP error,
and where along the path the SYN stopped."""

from __future__ import annotations

from collections.abc import Iterator

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


def run(analysis: Analysis) -> Iterator[Finding]:
    f = analysis.flows
    c = analysis.index.columns
    conv = analysis.correlation.conv
    icmp = answered_by_icmp(analysis)
    tried = np.flatnonzero((f.proto == TCP) & (f.syn > 0))
    by_conv: dict[int, list[int]] = {}
    for flow in tried.tolist():
        by_conv.setdefault(int(conv[flow]), []).append(flow)
    syn_rows = np.flatnonzero((c.tcp_flags & (SYN | ACK)) == SYN)
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
        flow = members[0]
        path = analysis.path_of_flow(flow)
        if path and any(x.direction == "a->b" and x.syn for x in path.losses):
            continue  # located: path.drop says between which points it died
        syn_here = syn_rows[np.isin(f.flow[syn_rows], everyone)]
        tries = len(set(analysis.correlation.ident[syn_here].tolist()))
        dest = analysis.named(analysis.endpoint(path.flows[-1] if path else flow, "b"))
        span = (int(f.last_ts[everyone].max()) - int(f.first_ts[everyone].min())) / 1e9
        label = conversation_label(analysis, path) if path else analysis.flow_label(flow)
        last_point = analysis.point_id(int(analysis.index.columns.point[syn_here[-1]]))
        where = f": last seen at {last_point}"
        explanation = (
            f"{label}: nothing came back: no SYN/ACK, no RST, no ICMP error. The SYN was "
            "dropped after the last point that saw it (NetworkPolicy, firewall, a missing "
            "route) or the destination is gone."
        )
        step = (
            "Capture further along the path (the node, the destination's node and pod) "
            "to see where the SYN stops; check NetworkPolicies in the destination "
            "namespace and that the endpoint pod exists."
        )
        rows = syn_here
        yield Finding(
            id="tcp.syn-unanswered",
            severity=Severity.HIGH,
            title=f"SYN to {dest} never answered ({plural(tries, 'try', 'tries')} over "
            f"{span:.1f} s){where}",
            explanation=explanation,
            next_step=step,
            evidence=tuple(analysis.index.ref(int(r)) for r in rows[:MAX_EVIDENCE]),
            flows=(label,),
        )


CHECK = FunctionCheck("tcp.syn-unanswered", run)
