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
    hop_name,
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
    for src, sport, dst, dport in zip(q.src.tolist(), q.sport.tolist(), q.dst.tolist(),
                                      q.dport.tolist(), strict=True):
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
        if (f.synack[everyone].sum() or f.rst_ba[everyone].sum() or f.packets_ba[everyone].sum()
                or any(x in icmp for x in everyone.tolist())):
            continue
        if int(f.first_ts[everyone].min()) + GRACE_NS > analysis.end_ts:
            continue
        flow = members[0]
        path = analysis.path_of_flow(flow)
        tries = len(set(analysis.correlation.ident[
            syn_rows[np.isin(f.flow[syn_rows], everyone)]].tolist()))
        dest = analysis.named(analysis.endpoint(int(everyone[-1]) if path is None
                                                else path.flows[-1], "b"))
        span = (int(f.last_ts[everyone].max()) - int(f.first_ts[everyone].min())) / 1e9
        rows = syn_rows[np.isin(f.flow[syn_rows], everyone)]
        label = (conversation_label(analysis, path) if path else analysis.flow_label(flow))
        where = ""
        loss = next((x for x in path.losses if x.direction == "a->b" and x.syn), None) \
            if path else None
        if path and loss:
            last, missing = hop_name(analysis, path, loss.last_hop), \
                hop_name(analysis, path, loss.missing_hop)
            where = f": last seen at {last}, never at {missing}"
            explanation = (
                f"{plural(loss.syn, 'SYN')} of {label} reached {last} and none arrived at "
                f"{missing}, while that point was capturing. Something between the two "
                "dropped them: on a node, a NetworkPolicy or iptables/nftables FORWARD rule; "
                "between nodes, a firewall or security group on the underlay."
            )
            rows = np.array(loss.rows)
            step = (f"Check NetworkPolicies that select the destination pod and the node's "
                    f"filter rules (nodes/<node>/iptables-save.txt in the bundle) for a DROP "
                    f"between {last} and {missing}.")
        else:
            explanation = (
                f"{label}: nothing came back at any capture point: no SYN/ACK, no RST, no "
                "ICMP error. The SYN was dropped on the way (NetworkPolicy, firewall, a "
                "missing route) or the destination is gone."
            )
            step = ("Capture along the path (pod, its node, the destination's node) to see "
                    "where the SYN stops; check NetworkPolicies in the destination namespace "
                    "and that the endpoint pod exists.")
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
