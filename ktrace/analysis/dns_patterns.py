"""What the DNS exchanges of each client add up to: search-path expansions, the AAAA race,
an upstream that does not answer. Shared by the DNS checks so that one cause is reported once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.dns import DnsTransaction

RETRY_AFTER_NS = 4_000_000_000  # glibc's default timeout is 5 s


@dataclass
class DnsPicture:
    primary: list[DnsTransaction]
    # base name -> its search-path expansions (qnames) that failed before it was answered
    expansions: dict[tuple[str, str], list[DnsTransaction]] = field(default_factory=dict)
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


def label_prefixes(names: set[str]) -> dict[str, int]:
    """How many of `names` start with each proper leading part ("a.b" of "a.b.c")."""
    out: dict[str, int] = {}
    for name in names:
        labels = name.split(".")
        for k in range(1, len(labels)):
            prefix = ".".join(labels[:k])
            out[prefix] = out.get(prefix, 0) + 1
    return out


def search_base(qname: str, asked: set[str], prefixes: dict[str, int]) -> str | None:
    """The name a search-path candidate was made from: the longest leading part of `qname`
    that the same client also asked as such or with another suffix."""
    if prefixes.get(qname):
        return None  # the lookup's own name, asked as is after its candidates
    labels = qname.split(".")
    for k in range(len(labels) - 1, 0, -1):
        base = ".".join(labels[:k])
        # qname itself counts once among the names starting with base
        if base in asked or prefixes.get(base, 0) > 1:
            return base
    return None


CHAIN_GAP_NS = 10_000_000_000  # a resolver moves to its next candidate well within this


@dataclass
class _Chain:
    base: str
    tried: set[str]  # the suffixes tried so far
    last_ts: int
    done: bool = False

    def continues(self, t: DnsTransaction) -> bool:
        if self.done or t.query_ts - self.last_ts > CHAIN_GAP_NS:
            return False
        if t.qname == self.base:  # the name as is, after its candidates
            return True
        suffix = t.qname[len(self.base) + 1 :]
        return t.qname.startswith(self.base + ".") and suffix not in self.tried


def search_chains(primary: list[DnsTransaction]) -> dict[int, str]:
    """id(transaction) -> the name the application asked for: a resolver tries the name with
    each search domain in turn (each candidate its own query, often from a new port) until one
    is answered, so a candidate belongs to the open chain of this client and query type it
    continues, or starts one."""
    asked: dict[str, set[str]] = defaultdict(set)
    for t in primary:
        asked[client_ip(t)].add(t.qname)
    prefixes = {client: label_prefixes(names) for client, names in asked.items()}
    chains: dict[tuple[str, str], list[_Chain]] = defaultdict(list)
    out: dict[int, str] = {}
    for t in sorted(primary, key=lambda t: t.query_ts):
        client = client_ip(t)
        open_ = chains[(client, t.qtype)]
        chain = next((c for c in reversed(open_) if c.continues(t)), None)
        if chain is None:
            base = None
            if t.rcode == "NXDOMAIN":
                base = search_base(t.qname, asked[client], prefixes[client])
            chain = _Chain(base or t.qname, set(), t.query_ts)
            open_.append(chain)
        chain.tried.add(t.qname[len(chain.base) + 1 :])
        chain.last_ts = t.query_ts
        chain.done = t.rcode != "NXDOMAIN"
        out[id(t)] = chain.base
    return out


def dns_picture(primary: list[DnsTransaction], domain: str, packet_ts: np.ndarray) -> DnsPicture:
    """`primary`: each exchange once, as seen closest to its client; `packet_ts`: per packet."""
    pic = DnsPicture(primary)
    by_client: dict[str, list[DnsTransaction]] = defaultdict(list)
    ips: dict[str, str] = {}  # "ip:port" -> ip, worked out once per endpoint
    for t in primary:
        ip = ips.get(t.client)
        if ip is None:
            ip = ips[t.client] = client_ip(t)
        by_client[ip].append(t)
    for client, ts in by_client.items():
        asked = {t.qname for t in ts}
        prefixes = label_prefixes(asked)
        bases = {name: search_base(name, asked, prefixes) for name in asked}
        for t in ts:
            if t.rcode != "NXDOMAIN":
                continue
            base = bases[t.qname]
            if base is not None:
                pic.expansions.setdefault((client, base), []).append(t)
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
            times = sorted(packet_ts[list(t.queries)].tolist() for t in aaaa)
            flat = sorted(x for ts_ in times for x in ts_)
            if span and flat[-1] - flat[0] >= RETRY_AFTER_NS:
                pic.aaaa_race[(client, name)] = aaaa
    names = {t.qname for t in primary}
    cluster = {name for name in names if is_cluster_name(name, domain)}
    if any(t.rcode == "NOERROR" and t.qname in cluster for t in primary):
        expanded = tuple({b + "." for (_, b) in pic.expansions})
        pic.upstream_failed = [
            t
            for t in primary
            if (t.response is None or t.rcode in ("SERVFAIL", "REFUSED"))
            and t.qname not in cluster
            and not t.qname.startswith(expanded)
        ]
    return pic
