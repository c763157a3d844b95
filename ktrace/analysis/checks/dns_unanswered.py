"""dns.unanswered: queries that never got a response while the capture kept running."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import (
    GRACE_NS,
    MAX_EVIDENCE,
    FunctionCheck,
    plural,
    within_capture_loss,
)
from ktrace.analysis.context import Analysis
from ktrace.analysis.dns_patterns import most_common
from ktrace.model import Finding, Severity


def run(analysis: Analysis) -> Iterator[Finding]:
    table, primary = analysis.dns.transactions, analysis.dns_primary()
    # the AAAA race and a dead upstream say more
    explained = np.isin(primary, analysis.dns_picture.explained)
    due = (table.ts + GRACE_NS <= analysis.end_ts)[primary]
    lost = primary[~table.answered[primary] & due & ~explained]
    if not len(lost):
        return
    point = analysis.index.columns.point
    by_capture, loss = within_capture_loss(
        analysis, point[table.row[lost]], point[table.row[primary[due]]]
    )
    if by_capture:
        return  # answers the capture itself failed to record, as far as can be told
    servers = most_common(table.server[lost])[:3]
    kinds = len(table.qtype.values)
    names = most_common(table.qname.ids[lost].astype(np.int64) * kinds + table.qtype.ids[lost])[:3]
    total = int(due.sum())
    top = ", ".join(
        f"{table.qname.values[v // kinds]} {table.qtype.values[v % kinds]} ({n}x)" for v, n in names
    )
    server_text = ", ".join(f"{table.endpoint[s]} ({n})" for s, n in servers)
    answered_elsewhere = bool(table.answered[primary].any())
    partial = len(lost) < total
    yield Finding(
        id="dns.unanswered",
        severity=Severity.HIGH,
        title=f"{plural(len(lost), 'DNS query', 'DNS queries')} never answered (of {total})",
        explanation=(
            f"Unanswered: {top}. Server(s): {server_text}. "
            + (
                "Other queries to the same resolver were answered, so the resolver is up but "
                "these were dropped or ignored (a policy, a conntrack race, an upstream that "
                "does not reply)."
                if partial and answered_elsewhere
                else "No query got an answer: the resolver is unreachable or down from this point."
            )
            + f" More than the capture's own loss accounts for: {loss}."
        ),
        next_step=(
            "Check the resolver is reachable on 53/udp from the client (NetworkPolicy, "
            "kube-dns endpoints ready: kubectl get endpointslices -n kube-system -l "
            "k8s-app=kube-dns), then capture on the node side to see where queries stop."
        ),
        evidence=tuple(analysis.index.ref(k) for k in table.row[lost[:MAX_EVIDENCE]].tolist()),
    )


CHECK = FunctionCheck("dns.unanswered", run)
