"""What the DNS exchanges of each client add up to: search-path expansions, the AAAA race,
an upstream that does not answer. Shared by the DNS checks so that one cause is reported once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ktrace.analysis.context import Analysis
from ktrace.analysis.dns import DnsTransaction

RETRY_AFTER_NS = 4_000_000_000  # glibc's default timeout is 5 s


@dataclass
class DnsPicture:
    primary: list[DnsTransaction]
    # base name -> its search-path expansions (qnames) that failed before it was answered
    expansions: dict[tuple[str, str], list[DnsTransaction]] = field(default_factory=dict)
    answered_after: dict[tuple[str, str], list[DnsTransaction]] = field(default_factory=dict)
    aaaa_race: dict[tuple[str, str], list[DnsTransaction]] = field(default_factory=dict)
    upstream_failed: list[DnsTransaction] = field(default_factory=list)

    @property
    def explained(self) -> set[int]:
        out = {id(t) for ts in self.aaaa_race.values() for t in ts}
        return out | {id(t) for t in self.upstream_failed}


def client_ip(t: DnsTransaction) -> str:
    return t.client.rsplit(":", 1)[0]


def is_cluster_name(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def search_base(qname: str, asked: set[str]) -> str | None:
    """The name a search-path candidate was made from: the longest leading part of `qname`
    that the same client also asked as such or with another suffix."""
    if any(q.startswith(qname + ".") for q in asked):
        return None  # the lookup's own name, asked as is after its candidates
    labels = qname.split(".")
    for k in range(len(labels) - 1, 0, -1):
        base = ".".join(labels[:k])
        if base in asked or any(q != qname and q.startswith(base + ".") for q in asked):
            return base
    return None


def picture(analysis: Analysis) -> DnsPicture:
    primary = analysis.dns_primary()
    pic = DnsPicture(primary)
    domain = analysis.names.cluster_domain
    by_client: dict[str, list[DnsTransaction]] = defaultdict(list)
    for t in primary:
        by_client[client_ip(t)].append(t)
    for client, ts in by_client.items():
        asked = {t.qname for t in ts}
        for t in ts:
            if t.rcode != "NXDOMAIN":
                continue
            base = search_base(t.qname, asked)
            if base is not None:
                pic.expansions.setdefault((client, base), []).append(t)
        for key in list(pic.expansions):
            if key[0] == client:
                base = key[1]
                pic.answered_after[key] = [
                    t
                    for t in ts
                    if (t.qname == base or t.qname.startswith(base + "."))
                    and t.answered
                    and t.rcode == "NOERROR"
                ]
        by_name: dict[str, list[DnsTransaction]] = defaultdict(list)
        for t in ts:
            by_name[t.qname].append(t)
        for name, group in by_name.items():
            a = [t for t in group if t.qtype == "A"]
            aaaa = [t for t in group if t.qtype == "AAAA"]
            if not (a and aaaa) or any(t.answered for t in aaaa):
                continue
            if not any(t.answered for t in a):
                continue
            span = max(max(t.queries) for t in group)
            times = sorted(analysis.index.columns.ts[list(t.queries)].tolist() for t in aaaa)
            flat = sorted(x for ts_ in times for x in ts_)
            if span and flat[-1] - flat[0] >= RETRY_AFTER_NS:
                pic.aaaa_race[(client, name)] = aaaa
    cluster_ok = any(
        t.answered and t.rcode == "NOERROR" and is_cluster_name(t.qname, domain) for t in primary
    )
    if cluster_ok:
        pic.upstream_failed = [
            t
            for t in primary
            if not is_cluster_name(t.qname, domain)
            and (not t.answered or t.rcode in ("SERVFAIL", "REFUSED"))
            and not any(t.qname.startswith(b + ".") for (_, b) in pic.expansions)
        ]
    return pic
