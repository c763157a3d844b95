"""tcp.rst: connections refused (RST answering a SYN) and resets of established connections."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.checks.external import claimed
from ktrace.analysis.context import Analysis
from ktrace.decode.transport import RST, TCP
from ktrace.model import Finding, Severity

STORM = 10  # reset connections at which a few resets become a storm


def run(analysis: Analysis) -> Iterator[Finding]:
    f = analysis.flows
    c = analysis.index.columns
    tcp = f.proto == TCP
    refused = np.flatnonzero(tcp & (f.syn > 0) & (f.synack == 0) & (f.rst_ba > 0))
    refused = np.array([x for x in refused.tolist() if not claimed(analysis, x)], np.int64)
    reset = np.flatnonzero(tcp & (f.synack > 0) & ((f.rst_ab + f.rst_ba) > 0))
    rst_rows = np.flatnonzero((c.tcp_flags & RST) != 0)
    if len(refused):
        dests = sorted({analysis.endpoint(x, "b") for x in refused.tolist()})
        yield Finding(
            id="tcp.rst",
            severity=Severity.HIGH if len(refused) >= STORM else Severity.MEDIUM,
            title=f"{plural(len(refused), 'connection')} refused by {', '.join(dests[:3])}"
            + (" and others" if len(dests) > 3 else ""),
            explanation=(
                "The SYN was answered with a RST: nothing listens on that port, or a Service "
                "without ready endpoints rejects the connection (kube-proxy REJECT)."
            ),
            next_step=(
                "Check the target port is the one the container listens on (containerPort, "
                "targetPort) and that the Service has ready endpoints: kubectl get "
                "endpointslices -l kubernetes.io/service-name=NAME."
            ),
            evidence=tuple(
                analysis.index.ref(int(r))
                for r in rst_rows[np.isin(f.flow[rst_rows], refused)][:MAX_EVIDENCE]
            ),
            flows=tuple(analysis.flow_label(x) for x in refused[:MAX_EVIDENCE].tolist()),
        )
    if len(reset) >= 3:
        by_a = int((f.rst_ab[reset] > 0).sum())
        yield Finding(
            id="tcp.rst",
            severity=Severity.HIGH if len(reset) >= STORM else Severity.LOW,
            title=f"{plural(len(reset), 'established connection')} reset"
            + (" (RST storm)" if len(reset) >= STORM else ""),
            explanation=(
                f"{by_a} reset by the client side, {len(reset) - by_a} by the server side. "
                "Resets of established connections come from crashing or restarting "
                "processes, idle timeouts in a proxy or load balancer, or conntrack losing "
                "the entry."
            ),
            next_step=(
                "Look at which side sends the RST first and at the time since the last "
                "packet: a fixed idle gap points at a timeout; restarts show in the pod's "
                "events."
            ),
            evidence=tuple(
                analysis.index.ref(int(r))
                for r in rst_rows[np.isin(f.flow[rst_rows], reset)][:MAX_EVIDENCE]
            ),
            flows=tuple(analysis.flow_label(x) for x in reset[:MAX_EVIDENCE].tolist()),
        )


CHECK = FunctionCheck("tcp.rst", run)
