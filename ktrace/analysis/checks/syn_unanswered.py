"""tcp.syn-unanswered: connection attempts that got neither a SYN/ACK nor a RST."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import GRACE_NS, MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.decode.transport import ACK, SYN, TCP
from ktrace.model import Finding, Severity


def run(analysis: Analysis) -> Iterator[Finding]:
    f = analysis.flows
    c = analysis.index.columns
    stuck = np.flatnonzero(
        (f.proto == TCP)
        & (f.syn > 0)
        & (f.synack == 0)
        & (f.rst_ba == 0)
        & (f.packets_ba == 0)
        & (f.first_ts + GRACE_NS <= analysis.end_ts)
    )
    if not len(stuck):
        return
    by_dest: dict[str, list[int]] = {}
    for flow in stuck.tolist():
        by_dest.setdefault(analysis.endpoint(flow, "b"), []).append(flow)
    syn_rows = np.flatnonzero((c.tcp_flags & (SYN | ACK)) == SYN)
    for dest, flows in sorted(by_dest.items(), key=lambda kv: -len(kv[1])):
        tries = int(f.syn[flows].sum())
        span = (int(f.last_ts[flows].max()) - int(f.first_ts[flows].min())) / 1e9
        rows = syn_rows[np.isin(f.flow[syn_rows], flows)][:MAX_EVIDENCE]
        clients = sorted({analysis.endpoint(x, "a").rsplit(":", 1)[0] for x in flows})
        yield Finding(
            id="tcp.syn-unanswered",
            severity=Severity.HIGH,
            title=f"SYN to {dest} never answered ({plural(len(flows), 'connection')}, "
            f"{plural(tries, 'SYN')} over {span:.1f} s)",
            explanation=(
                f"{', '.join(clients[:3])} tried to connect to {dest}; nothing came back at this "
                "capture point: no SYN/ACK and no RST. The SYN was dropped on the way "
                "(NetworkPolicy, firewall, a missing route) or the host is gone."
            ),
            next_step=(
                "Find where the SYN stops: capture the path with kubectl ktrace trace, check "
                "NetworkPolicies in the destination namespace and that the endpoint pod exists."
            ),
            evidence=tuple(analysis.index.ref(int(r)) for r in rows),
            flows=tuple(analysis.flow_label(x) for x in flows[:MAX_EVIDENCE]),
        )


CHECK = FunctionCheck("tcp.syn-unanswered", run)
