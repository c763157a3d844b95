"""What the DNS exchanges of each client add up to: search-path expansions, the AAAA race,
an upstream that does not answer. Shared by the DNS checks so that one cause is reported once."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.dns import DnsTable, DnsTransaction
from ktrace.kernels.sorting import first_seen

RETRY_AFTER_NS = 4_000_000_000  # glibc's default timeout is 5 s


@dataclass(eq=False)
class DnsPicture:
    """Transactions by id in the DNS table, each group in the order of `primary`."""

    primary: np.ndarray
    # (client, base name) -> its search-path expansions that failed before it was answered
    expansions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    aaaa_race: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    upstream_failed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def explained(self) -> np.ndarray:
        return np.concatenate([*self.aaaa_race.values(), self.upstream_failed])


def most_common(ids: np.ndarray) -> list[tuple[int, int]]:
    """(id, count) by count, ties in order of first appearance: Counter(ids).most_common()."""
    values, first, counts = np.unique(ids, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    return list(zip(values[order].tolist(), counts[order].tolist(), strict=True))


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
    """A resolver's run through the search path for one name, while it lasts."""

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
        # a chain done, or idle past the gap, continues nothing later (time only grows):
        # forgotten, so that a client's thousands of lookups do not cost their square
        while open_ and (open_[0].done or t.query_ts - open_[0].last_ts > CHAIN_GAP_NS):
            open_.pop(0)
        if len(open_) > 1 and any(c.done for c in open_):
            open_[:] = [c for c in open_ if not c.done]
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


def dns_picture(
    table: DnsTable, primary: np.ndarray, domain: str, packet_ts: np.ndarray
) -> DnsPicture:
    """`primary`: each exchange once, as seen closest to its client; `packet_ts`: per packet.
    Names are worked out per distinct (client address, name), counts per transaction."""
    pic = DnsPicture(primary)
    if not len(primary):
        return pic
    names, ips = table.qname.values, table.client_ip.values
    ip, name = table.client_ip.ids.take(primary), table.qname.ids.take(primary)
    pairs, pair = _pairs(ip, name, len(names))
    pair_ip, pair_name = (pairs // len(names)).tolist(), (pairs % len(names)).tolist()
    bases = _search_bases(pair_ip, [names[n] for n in pair_name])
    # groups keyed as the checks show them, in order of client, then of first appearance
    client_rank = first_seen(ip)
    nx = table.rcode_is("NXDOMAIN")[primary]
    base_of = np.array([b is not None for b in bases], bool)
    expanded = np.flatnonzero(nx & base_of[pair])
    keys = [(ips[pair_ip[p]], bases[p] or "") for p in pair[expanded].tolist()]
    for key, members in _grouped(keys, client_rank[expanded], expanded):
        pic.expansions[key] = primary[members]
    pair_rank = np.empty(len(pairs), np.int64)
    pair_rank[pair] = client_rank  # a pair's client's
    candidates = _race_candidates(table, primary, pair, len(pairs))
    for p in sorted(candidates, key=lambda p: (pair_rank[p], p)):
        group = primary[pair == p]
        aaaa = group[table.qtype.where("AAAA")[group]]
        rows = [r for k in aaaa.tolist() for r in table.queries(k)]
        flat = sorted(packet_ts[rows].tolist())
        if flat[-1] - flat[0] >= RETRY_AFTER_NS:
            pic.aaaa_race[(ips[pair_ip[p]], names[pair_name[p]])] = aaaa
    cluster = np.array([is_cluster_name(n, domain) for n in names], bool)
    # the cluster's DNS answers for its own zone (an address, or NXDOMAIN for a search-path
    # candidate): what fails beyond it is the forwarding
    if (
        table.answered[primary] & ~table.rcode_is("SERVFAIL", "REFUSED")[primary] & cluster[name]
    ).any():
        prefixes = tuple({b + "." for (_, b) in pic.expansions})
        fresh = np.array([not n.startswith(prefixes) for n in names], bool)
        failed = (~table.answered | table.rcode_is("SERVFAIL", "REFUSED"))[primary]
        outside, inside = ~cluster[name] & fresh[name], cluster[name]
        if fails_more(failed, outside, inside):
            pic.upstream_failed = primary[failed & outside]
    return pic


# How unlikely by chance a group's excess of failures must be to say it fails more: the
# one-sided p-value of Fisher's exact test on the two groups' counts.
SIGNIFICANT = 0.02


def fails_more(failed: np.ndarray, group: np.ndarray, others: np.ndarray) -> bool:
    """Whether `group` fails at a higher rate than `others` (masks over the same rows),
    beyond chance, and half as high again. Counts alone say nothing when one group is
    asked far more often than the other; an exact test, since either group may be small."""
    n1, n2 = int(group.sum()), int(others.sum())
    f1, f2 = int((failed & group).sum()), int((failed & others).sum())
    if not f1 or f1 / n1 < 1.5 * (f2 / n2 if n2 else 0.0):
        return False
    return excess_chance(f1, n1, f2, n2) <= SIGNIFICANT


def excess_chance(f1: int, n1: int, f2: int, n2: int) -> float:
    """P(at least f1 of the f1 + f2 failures fall in the first group of n1, of n1 + n2 in
    all, by chance): the hypergeometric tail, in logarithms so that large counts stay cheap
    and exact enough."""
    total, failures = n1 + n2, f1 + f2

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    base = log_choose(total, n1)
    tail = 0.0
    for x in range(f1, min(n1, failures) + 1):
        tail += math.exp(log_choose(failures, x) + log_choose(total - failures, n1 - x) - base)
    return min(tail, 1.0)


def _pairs(ip: np.ndarray, name: np.ndarray, names: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (client address, name) keys, in order of first appearance, and each
    transaction's pair."""
    key = ip.astype(np.int64) * names + name
    pair = first_seen(key)
    distinct = np.empty(int(pair.max()) + 1, np.int64)
    distinct[pair] = key
    return distinct, pair


def _search_bases(pair_ip: list[int], pair_name: list[str]) -> list[str | None]:
    """Per (client, name) pair, the base its name was made from by search-path expansion."""
    asked: dict[int, set[str]] = defaultdict(set)
    for ip, name in zip(pair_ip, pair_name, strict=True):
        asked[ip].add(name)
    prefixes = {ip: label_prefixes(names) for ip, names in asked.items()}
    return [
        search_base(name, asked[ip], prefixes[ip])
        for ip, name in zip(pair_ip, pair_name, strict=True)
    ]


def _grouped(
    keys: list[tuple[str, str]], rank: np.ndarray, members: np.ndarray
) -> list[tuple[tuple[str, str], np.ndarray]]:
    """Members grouped by key, groups ordered by (rank, first member), members in order."""
    groups: dict[tuple[str, str], list[int]] = {}
    first_rank: dict[tuple[str, str], int] = {}
    for key, r, m in zip(keys, rank.tolist(), members.tolist(), strict=True):
        if key not in groups:
            groups[key], first_rank[key] = [], r
        groups[key].append(m)
    ordered = sorted(groups, key=lambda k: (first_rank[k], groups[k][0]))
    return [(k, np.array(groups[k], np.int64)) for k in ordered]


def _race_candidates(
    table: DnsTable, primary: np.ndarray, pair: np.ndarray, pairs: int
) -> list[int]:
    """Pairs asked both A and AAAA where some A was answered and no AAAA was."""

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(pair[mask[primary]], minlength=pairs)

    a, aaaa = table.qtype.where("A"), table.qtype.where("AAAA")
    answered = table.answered
    ok = (count(a) > 0) & (count(aaaa) > 0) & (count(a & answered) > 0)
    return np.flatnonzero(ok & (count(aaaa & answered) == 0)).tolist()
