"""The DNS checks: slow answers, NXDOMAIN/SERVFAIL, search-path storms, the AAAA race and a
failing upstream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from statistics import median

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.dns import DnsTransaction
from ktrace.analysis.dns_patterns import (
    client_ip,
    is_cluster_name,
    label_prefixes,
)
from ktrace.analysis.node_story import conntrack_story
from ktrace.model import Finding, PacketRef, Severity

SLOW_MS = 500
MIN_WASTED_NAMES = 2  # search-path candidates tried in vain before a finding is worth it


def _refs(analysis: Analysis, transactions: list[DnsTransaction]) -> tuple[PacketRef, ...]:
    return tuple(analysis.index.ref(t.queries[0]) for t in transactions[:MAX_EVIDENCE])


def run_slow(analysis: Analysis) -> Iterator[Finding]:
    slow = [
        t
        for t in analysis.dns_primary()
        if t.latency_ns is not None and t.latency_ns >= SLOW_MS * 1_000_000
    ]
    if not slow:
        return
    servers = Counter(t.server for t in slow)
    lat = [t.latency_ns / 1e6 for t in slow if t.latency_ns is not None]
    total = sum(1 for t in analysis.dns_primary() if t.answered)
    yield Finding(
        id="dns.slow",
        severity=Severity.MEDIUM,
        title=f"slow DNS: {plural(len(slow), 'answer')} took {median(lat):.0f} ms "
        f"(median) from {servers.most_common(1)[0][0]}",
        explanation=(
            f"{len(slow)} of {total} answers took over {SLOW_MS} ms (up to {max(lat):.0f} "
            "ms). Every lookup pays this, several times over with search-path expansion."
        ),
        next_step=(
            "Capture at the DNS pod to split the time between the network and the server; "
            "check CoreDNS CPU throttling, its upstream's latency, and consider NodeLocal "
            "DNSCache."
        ),
        evidence=_refs(analysis, slow),
    )


def run_rcodes(analysis: Analysis) -> Iterator[Finding]:
    pic = analysis.dns_picture
    expansions = {id(t) for ts in pic.expansions.values() for t in ts}
    for rcode, severity, why, step in (
        (
            "NXDOMAIN",
            Severity.LOW,
            "The name does not exist for this resolver, with every search domain tried.",
            "Check the spelling and the namespace: a Service is <name>.<namespace>.svc."
            "cluster.local; a name outside the cluster needs its zone to exist upstream.",
        ),
        (
            "SERVFAIL",
            Severity.HIGH,
            "The resolver could not get an answer: its upstream failed or timed out, or DNSSEC "
            "validation failed.",
            "Check CoreDNS logs and that its upstream (forward plugin, the node's "
            "resolv.conf) is reachable.",
        ),
    ):
        failed = [t for t in pic.primary if t.rcode == rcode and id(t) not in expansions]
        if rcode == "NXDOMAIN":
            # a lookup fails once all its candidates fail: a name one of whose candidates was
            # answered did not fail
            resolved = label_prefixes(
                {n.qname for n in pic.primary if n.answered and n.rcode == "NOERROR"}
            )
            failed = [t for t in failed if not resolved.get(t.qname)]
        if not failed:
            continue
        names = Counter(t.qname for t in failed)
        yield Finding(
            id=f"dns.{rcode.lower()}",
            severity=severity,
            title=f"{rcode} for {', '.join(n for n, _ in names.most_common(3))}"
            + (" and others" if len(names) > 3 else ""),
            explanation=f"{plural(len(failed), 'query', 'queries')} answered {rcode}. {why}",
            next_step=step,
            evidence=_refs(analysis, failed),
        )


def run_search_path(analysis: Analysis) -> Iterator[Finding]:
    pic = analysis.dns_picture

    def names(key: tuple[str, str]) -> set[str]:
        return {t.qname for t in pic.expansions[key]}

    costly = [k for k in pic.expansions if len(names(k)) >= MIN_WASTED_NAMES]
    if not costly:
        return
    costly.sort(key=lambda k: -len(names(k)))
    client, name = costly[0]
    wasted = pic.expansions[(client, name)]
    kinds = {t.qtype for t in wasted}
    per_lookup = len(names((client, name))) * len(kinds)
    total = sum(len(pic.expansions[k]) for k in costly)
    examples = ", ".join(f"{n} ({len(names((c, n)))} names tried first)" for c, n in costly[:3])
    yield Finding(
        id="dns.search-path",
        severity=Severity.LOW,
        title=f"search-path expansion: every lookup of {name} first asks "
        f"{len(names((client, name)))} names that do not exist ({per_lookup} wasted "
        "queries)",
        explanation=(
            f"With ndots:5 (the Kubernetes default) a name with fewer than 5 dots is tried "
            f"with every search domain first: {examples}. In this capture {total} queries "
            "were answered NXDOMAIN before the real ones."
        ),
        next_step=(
            f"Use the fully qualified name with a trailing dot ({name}.), or lower ndots in "
            'the pod\'s dnsConfig (options: [{name: ndots, value: "2"}]); a NodeLocal '
            "DNSCache absorbs the extra queries."
        ),
        evidence=_refs(analysis, wasted),
    )


def run_aaaa_race(analysis: Analysis) -> Iterator[Finding]:
    pic = analysis.dns_picture
    if not pic.aaaa_race:
        return
    (client, name), aaaa = next(iter(pic.aaaa_race.items()))
    yield Finding(
        id="dns.aaaa-race",
        severity=Severity.HIGH,
        title=f"A answered, AAAA lost: lookups of {name} wait 5 s",
        explanation=(
            f"{client} asks for A and AAAA of {name} at the same time, from the same socket. "
            "The A answer arrives; the AAAA one never does, so the resolver waits its full "
            "timeout (5 s) and asks again. This is the conntrack insertion race on parallel "
            "UDP queries through a DNAT-ed Service IP (or an upstream that drops AAAA)."
            + (f" {len(pic.aaaa_race) - 1} more names show it." if len(pic.aaaa_race) > 1 else "")
            + (f" {story}" if (story := conntrack_story(analysis.nodes)) else "")
        ),
        next_step=(
            "Add options single-request-reopen (glibc) to the pod's dnsConfig, or run "
            "NodeLocal DNSCache so queries leave over TCP; with musl (Alpine) use a "
            "fully qualified name or fewer parallel lookups."
        ),
        evidence=_refs(analysis, aaaa),
    )


def run_upstream(analysis: Analysis) -> Iterator[Finding]:
    pic = analysis.dns_picture
    if not pic.upstream_failed:
        return
    names = Counter(t.qname for t in pic.upstream_failed)
    # where the forwarded queries went: seen from the DNS server's side, unanswered
    domain = analysis.names.cluster_domain
    forwarded = [
        t
        for t in analysis.dns.transactions
        if not t.answered
        and not is_cluster_name(t.qname, domain)
        and client_ip(t) != client_ip(pic.upstream_failed[0])
    ]
    upstreams = Counter(t.server for t in forwarded)
    where = (
        f" The DNS server forwarded them to {upstreams.most_common(1)[0][0]}, which never answered."
        if upstreams
        else ""
    )
    yield Finding(
        id="dns.upstream",
        severity=Severity.HIGH,
        title=f"names outside the cluster fail: {', '.join(list(names)[:3])}",
        explanation=(
            "Cluster names resolve, but names outside the cluster get no answer (or "
            f"SERVFAIL): {plural(len(pic.upstream_failed), 'query', 'queries')}.{where}"
        ),
        next_step=(
            "Check CoreDNS's upstream: the forward plugin's target (by default the node's "
            "/etc/resolv.conf), that it is reachable from the DNS pods, and egress policies."
        ),
        evidence=_refs(analysis, pic.upstream_failed),
    )


SLOW = FunctionCheck("dns.slow", run_slow)
RCODES = FunctionCheck("dns.rcode", run_rcodes)
SEARCH_PATH = FunctionCheck("dns.search-path", run_search_path)
AAAA_RACE = FunctionCheck("dns.aaaa-race", run_aaaa_race)
UPSTREAM = FunctionCheck("dns.upstream", run_upstream)
