"""The DNS checks: slow answers, NXDOMAIN/SERVFAIL, search-path storms, the AAAA race and a
failing upstream."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.dns_patterns import is_cluster_name, label_prefixes, most_common
from ktrace.analysis.node_story import conntrack_story
from ktrace.distinct import distinct
from ktrace.model import Finding, PacketRef, Severity

SLOW_MS = 500
MIN_WASTED_NAMES = 2  # search-path candidates tried in vain before a finding is worth it


def _refs(analysis: Analysis, transactions: np.ndarray) -> tuple[PacketRef, ...]:
    rows = analysis.dns.transactions.row[transactions[:MAX_EVIDENCE]]
    return tuple(analysis.index.ref(k) for k in rows.tolist())


def run_slow(analysis: Analysis) -> Iterator[Finding]:
    table, primary = analysis.dns.transactions, analysis.dns_primary()
    slow = primary[(table.answered & (table.latency >= SLOW_MS * 1_000_000))[primary]]
    if not len(slow):
        return
    server = most_common(table.server[slow])[0][0]
    lat = (table.latency[slow] / 1e6).tolist()
    total = int(table.answered[primary].sum())
    yield Finding(
        id="dns.slow",
        severity=Severity.MEDIUM,
        title=f"slow DNS: {plural(len(slow), 'answer')} took {np.median(lat):.0f} ms "
        f"(median) from {table.endpoint[server]}",
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
    pic, table = analysis.dns_picture, analysis.dns.transactions
    expansions = np.concatenate([np.zeros(0, np.int64), *pic.expansions.values()])
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
        failed = pic.primary[table.rcode_is(rcode)[pic.primary]]
        failed = failed[~np.isin(failed, expansions)]
        if rcode == "NXDOMAIN":
            # a lookup fails once all its candidates fail: a name one of whose candidates was
            # answered did not fail
            ok = pic.primary[table.rcode_is("NOERROR")[pic.primary]]
            resolved = label_prefixes(
                {table.qname.values[n] for n in distinct(table.qname.ids[ok]).tolist()}
            )
            lookup_failed = np.array([not resolved.get(n) for n in table.qname.values], bool)
            failed = failed[lookup_failed[table.qname.ids[failed]]]
        if not len(failed):
            continue
        names = [table.qname.values[n] for n, _ in most_common(table.qname.ids[failed])]
        yield Finding(
            id=f"dns.{rcode.lower()}",
            severity=severity,
            title=f"{rcode} for {', '.join(names[:3])}" + (" and others" if len(names) > 3 else ""),
            explanation=f"{plural(len(failed), 'query', 'queries')} answered {rcode}. {why}",
            next_step=step,
            evidence=_refs(analysis, failed),
        )


def run_search_path(analysis: Analysis) -> Iterator[Finding]:
    pic, table = analysis.dns_picture, analysis.dns.transactions
    tried = {key: distinct(table.qname.ids[txs]) for key, txs in pic.expansions.items()}
    costly = [k for k in pic.expansions if len(tried[k]) >= MIN_WASTED_NAMES]
    if not costly:
        return
    costly.sort(key=lambda k: -len(tried[k]))
    client, name = costly[0]
    wasted = pic.expansions[(client, name)]
    per_lookup = len(tried[(client, name)]) * len(distinct(table.qtype.ids[wasted]))
    total = sum(len(pic.expansions[k]) for k in costly)
    examples = ", ".join(f"{n} ({len(tried[(c, n)])} names tried first)" for c, n in costly[:3])
    yield Finding(
        id="dns.search-path",
        severity=Severity.LOW,
        title=f"search-path expansion: every lookup of {name} first asks "
        f"{len(tried[(client, name)])} names that do not exist ({per_lookup} wasted "
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
    pic, table = analysis.dns_picture, analysis.dns.transactions
    if not len(pic.upstream_failed):
        return
    failed = pic.upstream_failed
    names = [table.qname.values[n] for n in _in_order(table.qname.ids[failed])]
    # where the forwarded queries went: seen from the DNS server's side, unanswered
    domain = analysis.names.cluster_domain
    outside = np.array([not is_cluster_name(n, domain) for n in table.qname.values], bool)
    client = table.client_ip.ids[failed[0]]
    forwarded = ~table.answered & outside[table.qname.ids] & (table.client_ip.ids != client)
    upstreams = most_common(table.server[forwarded])
    where = (
        f" The DNS server forwarded them to {table.endpoint[upstreams[0][0]]}, which never "
        "answered."
        if upstreams
        else ""
    )
    yield Finding(
        id="dns.upstream",
        severity=Severity.HIGH,
        title=f"names outside the cluster fail: {', '.join(names[:3])}",
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


def _in_order(ids: np.ndarray) -> list[int]:
    """The distinct ids in order of first appearance."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)].tolist()
