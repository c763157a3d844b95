"""What each node said about itself during the capture, read from a bundle's `nodes/<node>/`:
its packet rules, counter deltas between the start and the end of the capture, and the
kernel's drop events with their reasons.

Files (every one optional; a missing, empty or truncated file gives what it holds):

    nodes/<node>/iptables-save.txt        the ruleset at the end (`iptables-save`)
    nodes/<node>/counters/start/*.txt     at the start: iptables-save.txt, ip6tables-save.txt
    nodes/<node>/counters/end/*.txt       (`-c`: packet counters), conntrack-stats.txt
                                          (`conntrack -S`), nstat.txt (`nstat -asz`),
                                          ip-link.txt (`ip -s -s link`), nft-ruleset.txt
                                          (`nft list ruleset`: rules with a counter)
    nodes/<node>/kfree_skb.txt            the skb:kfree_skb tracepoint as tracefs prints it,
                                          with a `ktrace-clock <unix ns>` trace marker
    nodes/<node>/evidence.txt             what was not recorded, and why (one line each)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

COUNTERS = ("iptables-save.txt", "ip6tables-save.txt")
# What a node runs at the start and at the end of a capture, into counters/start|end/<file>.
SNAPSHOT = {
    "iptables-save.txt": ["iptables-save", "-c"],
    "ip6tables-save.txt": ["ip6tables-save", "-c"],
    "conntrack-stats.txt": ["conntrack", "-S"],
    "nstat.txt": ["nstat", "-asz"],
    "ip-link.txt": ["ip", "-s", "-s", "link"],
    "nft-ruleset.txt": ["nft", "list", "ruleset"],
}
# The drop trace: IPv4 and IPv6 packets only (the tracepoint's protocol is host order).
KFREE_SKB_FILTER = "protocol == 2048 || protocol == 34525"
CLOCK_MARK = "ktrace-clock"
# The first line of a file whose command failed on the node: not a recording.
FAILED = "# ktrace: could not run"
_COUNTED = re.compile(r"^\[(\d+):(\d+)\]\s+(-A\s+(\S+)\s+.*)$")
_POLICY = re.compile(r"^:(\S+)\s+(\S+)\s+\[(\d+):(\d+)\]")
_TRACE = re.compile(r"\s(\d+\.\d+):\s+(\w+):\s*(.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")
_REASON = re.compile(r"reason:\s*(\w+)")
_NFT_COUNTER = re.compile(r"\s*counter packets (\d+) bytes (\d+)")
VERDICTS = ("drop", "reject", "accept")


@dataclass(frozen=True)
class Rule:
    """A firewall rule on a node, with the packets it matched during the capture."""

    family: str  # ipv4 | ipv6 (iptables), nft ip | nft ip6 | nft inet ... (nftables)
    table: str
    chain: str
    text: str  # as iptables-save or nft prints it, without counters ("-A FORWARD ... -j DROP")
    packets: int  # during the capture (end - start); the total when only one snapshot exists

    @property
    def target(self) -> str:
        """DROP, REJECT, ACCEPT, a chain's name (iptables -j), or ''."""
        words = self.text.split()
        if self.family.startswith("nft"):
            return next((w.upper() for w in words if w in VERDICTS), "")
        return words[words.index("-j") + 1] if "-j" in words[:-1] else ""

    def quote(self) -> str:
        return f"{self.family} {self.table} {self.chain}: {self.text}"


@dataclass(frozen=True)
class KernelDrop:
    """A packet the node's kernel freed as dropped, from its drop tracepoint."""

    ts: int  # unix ns (the trace clock mapped through the ktrace-clock marker)
    reason: str  # NETFILTER_DROP, PKT_TOO_BIG, ... ("" on kernels before 5.17)
    location: str  # the function that freed the packet (nf_hook_slow+0x9a/0xf0)
    protocol: int  # ethertype: 0x0800 IPv4, 0x86dd IPv6


@dataclass(frozen=True)
class NodeEvidence:
    """What a node's debug pod collected beside its captures: rules, drops, counters."""

    node: str
    rules: tuple[Rule, ...] = ()  # the ruleset at the end, with packet deltas when counted
    counted: bool = False  # both snapshots present: Rule.packets are deltas
    drops: tuple[KernelDrop, ...] = ()
    traced: bool = False  # the drop trace was recorded (an empty trace: no drops)
    conntrack: dict[str, int] = field(default_factory=dict)  # deltas of `conntrack -S`
    nstat: dict[str, int] = field(default_factory=dict)  # deltas
    links: dict[str, dict[str, int]] = field(default_factory=dict)  # interface -> deltas
    skipped: tuple[str, ...] = ()
    nft: str = ""  # the nft ruleset at the end, as `nft list ruleset` printed it


def parse_iptables_save(text: str, family: str = "ipv4") -> list[Rule]:
    """Rules and chain policies (`-P CHAIN POLICY`, with the policy's counter) of
    `iptables-save [-c]` output; without -c every count is 0."""
    out: list[Rule] = []
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif m := _POLICY.match(line):
            if m.group(2) != "-":
                text_ = f"-P {m.group(1)} {m.group(2)}"
                out.append(Rule(family, table, m.group(1), text_, int(m.group(3))))
        elif m := _COUNTED.match(line):
            out.append(Rule(family, table, m.group(4), m.group(3), int(m.group(1))))
        elif line.startswith("-A "):
            out.append(Rule(family, table, line.split()[1], line, 0))
    return out


def parse_nft_ruleset(text: str) -> list[Rule]:
    """The rules of `nft list ruleset` that carry a counter (nftables counts nothing else),
    with the counter taken out of their text."""
    out: list[Rule] = []
    family = table = chain = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "table" and words[-1] == "{":
            family, table = f"nft {words[1]}", words[2]
        elif len(words) >= 2 and words[0] == "chain" and words[-1] == "{":
            chain = words[1]
        elif (m := _NFT_COUNTER.search(line)) and table and chain:
            rule = (line[: m.start()] + line[m.end() :]).strip()
            out.append(Rule(family, table, chain, rule, int(m.group(1))))
    return out


def rule_deltas(start: list[Rule], end: list[Rule]) -> list[Rule]:
    """End's rules with packets counted since the start (a rule added meanwhile: since 0; a
    counter that went down was reset: its end value)."""
    before: dict[tuple[str, str, str, str], list[int]] = {}
    for r in start:
        before.setdefault((r.family, r.table, r.chain, r.text), []).append(r.packets)
    out = []
    for r in end:
        earlier = before.get((r.family, r.table, r.chain, r.text))
        was = earlier.pop(0) if earlier else 0
        delta = r.packets - was if r.packets >= was else r.packets
        out.append(Rule(r.family, r.table, r.chain, r.text, delta))
    return out


def parse_conntrack_stats(text: str) -> dict[str, int]:
    """`conntrack -S`: one line per CPU of name=value; summed."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        for name, value in _FIELD.findall(line):
            if name != "cpu" and value.isdigit():
                out[name] = out.get(name, 0) + int(value)
    return out


def parse_nstat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and not line.startswith("#") and words[1].isdigit():
            out[words[0]] = int(words[1])
    return out


def parse_ip_link_stats(text: str) -> dict[str, dict[str, int]]:
    """`ip -s -s link`: per interface, rx_/tx_ counters by the names of its header lines
    (rx_dropped, rx_errors, rx_length, tx_dropped, ...)."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    iface = ""
    for k, line in enumerate(lines):
        if line and line[0].isdigit() and ": " in line:
            iface = line.split(": ")[1].split("@")[0].strip()
            out[iface] = {}
            continue
        head = line.strip()
        if not iface or not head.startswith(("RX", "TX")) or ":" not in head or k + 1 >= len(lines):
            continue
        side = head[:2].lower()
        names = head.split(":", 1)[1].split()
        values = lines[k + 1].split()
        if len(values) == len(names) and all(v.isdigit() for v in values):
            for name, value in zip(names, values, strict=True):
                out[iface][f"{side}_{name}"] = int(value)
    return out


def parse_kfree_skb(text: str) -> list[KernelDrop]:
    """tracefs lines of skb:kfree_skb; timestamps are the trace clock's until a
    `ktrace-clock <unix ns>` marker maps them (without one they stay as they are); a second
    `ktrace-clock <before> <after>` marker bounds when the first was written."""
    events: list[tuple[float, dict[str, str], str]] = []
    offset: int | None = None
    first_mark: float | None = None
    for line in text.splitlines():
        m = _TRACE.search(line)
        if m is None:
            continue
        ts, event, rest = float(m.group(1)), m.group(2), m.group(3)
        if CLOCK_MARK in rest:
            unix = [int(w) for w in rest.split(CLOCK_MARK, 1)[1].split() if w.isdigit()]
            if len(unix) == 1 and offset is None:
                offset = unix[0] - round(ts * 1e9)
                first_mark = ts
            elif len(unix) == 2 and first_mark is not None:
                # the first mark was written between these two wall times
                offset = (unix[0] + unix[1]) // 2 - round(first_mark * 1e9)
            continue
        if event != "kfree_skb":
            continue
        said = _REASON.search(rest)
        events.append((ts, dict(_FIELD.findall(rest)), said.group(1) if said else ""))
    out = []
    for ts, fields, why in events:
        proto = fields.get("protocol", "0")
        out.append(
            KernelDrop(
                round(ts * 1e9) + (offset or 0),
                why,
                fields.get("location", ""),
                int(proto, 0) if proto.isdigit() or proto.startswith("0x") else 0,
            )
        )
    return out


def _read(path: Path) -> str | None:
    """The file's text; None when missing or when it records a command that failed."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return None if text.startswith(FAILED) else text


def _deltas(start: dict[str, int], end: dict[str, int]) -> dict[str, int]:
    return {k: v - start.get(k, 0) for k, v in end.items() if v - start.get(k, 0) > 0}


def read_node(directory: Path) -> NodeEvidence:
    start, end = directory / "counters" / "start", directory / "counters" / "end"
    rules: list[Rule] = []
    counted = False
    for name in COUNTERS:
        family = "ipv6" if name.startswith("ip6") else "ipv4"
        a, b = _read(start / name), _read(end / name)
        if a is not None and b is not None:
            rules += rule_deltas(parse_iptables_save(a, family), parse_iptables_save(b, family))
            counted = True
    a, b = _read(start / "nft-ruleset.txt"), _read(end / "nft-ruleset.txt")
    if a is not None and b is not None:
        rules += rule_deltas(parse_nft_ruleset(a), parse_nft_ruleset(b))
    if not counted:  # the ruleset as it was, without counts
        current = _read(directory / "iptables-save.txt")
        rules = parse_iptables_save(current) if current else []
    trace = _read(directory / "kfree_skb.txt")
    links_a = parse_ip_link_stats(_read(start / "ip-link.txt") or "")
    links_b = parse_ip_link_stats(_read(end / "ip-link.txt") or "")
    return NodeEvidence(
        directory.name,
        tuple(rules),
        counted,
        tuple(parse_kfree_skb(trace)) if trace else (),
        trace is not None,
        _deltas(
            parse_conntrack_stats(_read(start / "conntrack-stats.txt") or ""),
            parse_conntrack_stats(_read(end / "conntrack-stats.txt") or ""),
        ),
        _deltas(
            parse_nstat(_read(start / "nstat.txt") or ""),
            parse_nstat(_read(end / "nstat.txt") or ""),
        ),
        {
            iface: d
            for iface, stats in links_b.items()
            if (d := _deltas(links_a.get(iface, {}), stats))
        },
        tuple((_read(directory / "evidence.txt") or "").splitlines()),
        _read(directory / "nft-ruleset.txt") or "",
    )


def read_nodes(bundle: Path) -> dict[str, NodeEvidence]:
    """Every node directory of a bundle (none: an empty mapping)."""
    root = bundle / "nodes"
    if not root.is_dir():
        return {}
    return {d.name: read_node(d) for d in sorted(root.iterdir()) if d.is_dir()}
