"""dns.unanswered: queries that never got a response while the capture kept running."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ktrace.analysis.checks import GRACE_NS, MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.model import Finding, Severity


def run(analysis: Analysis) -> Iterator[Finding]:
    end = analysis.end_ts
    explained = analysis.dns_picture.explained  # the AAAA race and a dead upstream say more
    primary = analysis.dns_primary()
    lost = [
        t
        for t in primary
        if not t.answered and t.query_ts + GRACE_NS <= end and id(t) not in explained
    ]
    if not lost:
        return
    servers = Counter(t.server for t in lost)
    names = Counter(f"{t.qname} {t.qtype}" for t in lost)
    total = sum(1 for t in primary if t.query_ts + GRACE_NS <= end)
    top = ", ".join(f"{name} ({n}x)" for name, n in names.most_common(3))
    server_text = ", ".join(f"{s} ({n})" for s, n in servers.most_common(3))
    answered_elsewhere = {t.qname for t in primary if t.answered}
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
        ),
        next_step=(
            "Check the resolver is reachable on 53/udp from the client (NetworkPolicy, "
            "kube-dns endpoints ready: kubectl get endpointslices -n kube-system -l "
            "k8s-app=kube-dns), then capture on the node side to see where queries stop."
        ),
        evidence=tuple(analysis.index.ref(t.queries[0]) for t in lost[:MAX_EVIDENCE]),
    )


CHECK = FunctionCheck("dns.unanswered", run)
