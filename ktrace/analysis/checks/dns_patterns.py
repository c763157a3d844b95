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


def candidates(base: str, namespaces: set[str], domain: str) -> list[str]:
    """What a resolver with the Kubernetes search list asks for `base`, in order."""
    return ([f"{base}.{ns}.svc.{domain}" for ns in sorted(namespaces)]
            + [f"{base}.svc.{domain}", f"{base}.{domain}", base])


def search_base(qname: str, asked: set[str], namespaces: set[str], domain: str) -> str | None:
    """The name a search-path candidate was made from, when its siblings were asked too."""
    guesses = []
    if qname.endswith(".svc." + domain):
        head = qname[: -len(".svc." + domain)]
        if "." in head:
            base, ns = head.rsplit(".", 1)
            guesses.append((base, namespaces | {ns}))
        guesses.append((head, namespaces))
    if qname.endswith("." + domain):
        guesses.append((qname[: -len("." + domain)], namespaces))
    for base, nss in guesses:
        if base and (set(candidates(base, nss, domain)) - {qname}) & asked:
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
        namespaces = {q[: -len(".svc." + domain)].rsplit(".", 1)[-1] for q in asked
                      if q.endswith(".svc." + domain) and "." in q[: -len(".svc." + domain)]}
        for t in ts:
            if t.rcode != "NXDOMAIN":
                continue
            base = search_base(t.qname, asked, namespaces, domain)
            if base is not None:
                pic.expansions.setdefault((client, base), []).append(t)
        for key in list(pic.expansions):
            if key[0] == client:
                series = set(candidates(key[1], namespaces, domain))
                pic.answered_after[key] = [t for t in ts if t.qname in series and t.answered
                                           and t.rcode == "NOERROR"]
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
            times = sorted(analysis.index.columns.ts[list(t.queries)].tolist()
                           for t in aaaa)
            flat = sorted(x for ts_ in times for x in ts_)
            if span and flat[-1] - flat[0] >= RETRY_AFTER_NS:
                pic.aaaa_race[(client, name)] = aaaa
    cluster_ok = any(t.answered and t.rcode == "NOERROR" and is_cluster_name(t.qname, domain)
                     for t in primary)
    if cluster_ok:
        pic.upstream_failed = [
            t for t in primary
            if not is_cluster_name(t.qname, domain)
            and (not t.answered or t.rcode in ("SERVFAIL", "REFUSED"))
            and not any(t.qname.startswith(b + ".") for (_, b) in pic.expansions)
        ]
    return pic
