"""What the nodes' own records (kernel drop reasons, rule counters, conntrack and interface
statistics over the capture) say about a finding, as sentences the finding quotes. When the
records contradict the packets, the sentence says so rather than choosing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ktrace.analysis.checks import plural

if TYPE_CHECKING:
    from ktrace.bundle.node_evidence import NodeEvidence, Rule

# A packet's drop is logged after its last sighting on that node: the forwarding path runs
# within microseconds, a queue or a retransmit timer can hold it a little longer. Before: the
# trace clock's mapping to capture time is good to a few milliseconds.
BEFORE_NS, AFTER_NS = 25_000_000, 200_000_000
ETHERTYPE = {4: 0x0800, 6: 0x86DD}
# Kernel reasons that are the normal end of a packet's life, not a loss.
ROUTINE = {"NOT_SPECIFIED", "NO_SOCKET", "QUEUE_PURGE", "SOCKET_CLOSE", "TCP_CLOSE", ""}
SIZE_REASONS = {"PKT_TOO_BIG", "FRAG_TOO_FAR", "DUP_FRAG", "FRAG_REASM_TIMEOUT", "SKB_GSO_SEG"}


def _function(location: str) -> str:
    return location.split("+", 1)[0]


def drops_at(ev: NodeEvidence, times: Iterable[int], family: int) -> Counter[tuple[str, str]]:
    """(reason, function) of the kernel drops of this family logged near these times."""
    proto = ETHERTYPE.get(family, 0)
    found: Counter[tuple[str, str]] = Counter()
    used: set[int] = set()
    drops = [d for d in ev.drops if d.protocol == proto and d.reason not in ROUTINE]
    for t in sorted(times):
        for k, d in enumerate(drops):
            if k not in used and t - BEFORE_NS <= d.ts <= t + AFTER_NS:
                used.add(k)
                found[(d.reason, _function(d.location))] += 1
                break
    return found


def counted_rules(ev: NodeEvidence, targets: tuple[str, ...], mentions: str = "") -> list[Rule]:
    """Rules ending in one of these targets (or chains whose policy is one) that counted
    packets during the capture, optionally mentioning an address; most packets first."""
    rules = [
        r
        for r in ev.rules
        if r.packets > 0
        and (r.target in targets or r.text.split()[-1] in targets)
        and (not mentions or mentions in r.text)
    ]
    return sorted(rules, key=lambda r: -r.packets)


def _reasons(found: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{reason} in {fn} ({n})" for (reason, fn), n in found.most_common(3))


def loss_story(ev: NodeEvidence, times: list[int], family: int) -> str:
    """The kernel's reason and the rule for packets lost on this node; '' without records."""
    if not ev.traced and not ev.counted:
        return ""
    parts = []
    found = drops_at(ev, times, family)
    lost = len(times)
    if found:
        parts.append(
            f"On {ev.node} the kernel dropped {plural(sum(found.values()), 'packet')} at those "
            f"moments: {_reasons(found)}."
        )
    elif ev.traced:
        parts.append(f"{ev.node}'s kernel logged no drop at those moments.")
    rules = counted_rules(ev, ("DROP", "REJECT"))
    if rules:
        best = min(rules, key=lambda r: (abs(r.packets - lost), -r.packets))
        match = (
            f"exactly the {plural(lost, 'lost packet')}"
            if best.packets == lost
            else f"{lost} were lost here"
        )
        parts.append(
            f"Its rule {best.quote()} counted {plural(best.packets, 'packet')} during the "
            f"capture ({match})."
        )
    elif ev.counted:
        parts.append(f"No DROP or REJECT rule on {ev.node} counted a packet during the capture.")
    if found and ev.counted and not rules and any(r == "NETFILTER_DROP" for r, _ in found):
        parts.append(
            "A netfilter drop without a counting iptables rule points at nftables or at a "
            "NetworkPolicy implementation's own rules."
        )
    return " ".join(parts)


def drop_recorded(ev: NodeEvidence, times: list[int], family: int) -> bool:
    """Whether the node's own records say it dropped packets like these: the kernel logged
    drops at those moments, or a DROP or REJECT rule counted at least as many during the
    capture. Such records outrank any inference from the packets (a missing retransmission
    may be a client that gave up)."""
    if drops_at(ev, times, family):
        return True
    return any(r.packets >= len(times) for r in counted_rules(ev, ("DROP", "REJECT")))


def link_story(ev: NodeEvidence) -> str:
    """Interface drops and errors that rose during the capture."""
    bad = {
        iface: {k: v for k, v in stats.items() if any(w in k for w in ("drop", "err", "length"))}
        for iface, stats in ev.links.items()
    }
    said = [
        f"{iface} " + ", ".join(f"{k} +{v}" for k, v in sorted(stats.items()))
        for iface, stats in sorted(bad.items())
        if stats
    ]
    return f"On {ev.node}: {'; '.join(said)} during the capture." if said else ""


def conntrack_story(nodes: dict[str, NodeEvidence]) -> str:
    """What `conntrack -S` counted during the capture on every node that recorded it."""
    counted = [ev for ev in nodes.values() if ev.counted]
    if not counted:
        return ""
    raced = {
        ev.node: {
            k: ev.conntrack[k]
            for k in ("insert_failed", "drop", "clash_resolve")
            if k in ev.conntrack
        }
        for ev in counted
    }
    raced = {n: v for n, v in raced.items() if v}
    if not raced:
        return (
            "conntrack -S counted no insert_failed or drop on "
            f"{', '.join(ev.node for ev in counted)} during the capture: these answers were not "
            "lost to the conntrack race there; look at the DNS server and the path."
        )
    return (
        "conntrack -S during the capture: "
        + "; ".join(
            f"{node} " + ", ".join(f"{k} +{v}" for k, v in stats.items())
            for node, stats in raced.items()
        )
        + "."
    )


def rule_for(nodes: dict[str, NodeEvidence], target: str, address: str) -> str:
    """The rules ending in `target` that mention an address: iptables rules that counted
    packets, else nft ruleset lines (kube-proxy's nftables mode keeps no counters)."""
    quotes = [
        f"{ev.node}: {r.quote()} ({plural(r.packets, 'packet')} during the capture)"
        for ev in nodes.values()
        for r in counted_rules(ev, (target,), address)
    ]
    if not quotes:
        quotes = [
            f"{ev.node}: nft {line.strip()}"
            for ev in nodes.values()
            for line in ev.nft.splitlines()
            if address in line and target.lower() in line.lower()
        ]
    return ("Rule: " + "; ".join(quotes[:2]) + ".") if quotes else ""


def kernel_story(nodes: dict[str, NodeEvidence], times: list[int], family: int) -> str:
    """The kernel drop reasons logged near these times on any node."""
    said = [
        f"on {ev.node} {_reasons(found)}"
        for ev in nodes.values()
        if (found := drops_at(ev, times, family))
    ]
    return ("Kernel drops at those moments: " + "; ".join(said) + ".") if said else ""


def absent(ev: NodeEvidence, address: str) -> bool:
    """Neither the node's iptables rules nor its nft ruleset mention the address."""
    return not any(address in r.text for r in ev.rules) and address not in ev.nft
