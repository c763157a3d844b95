"""How a pod's resolver turns a name into queries, and what dig says about each.

Pure functions: resolv.conf parsing, the search-list expansion glibc and musl apply (ndots),
reading dig's output, and the verdict per name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STATUS = re.compile(r"status: ([A-Z]+)")
FLAGS = re.compile(r";; flags: ([a-z ]+);")
QUERY_TIME = re.compile(r"Query time: (\d+) msec")
ANSWER = re.compile(r"^(\S+)\s+\d+\s+IN\s+(A|AAAA|CNAME)\s+(\S+)\s*$", re.M)


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    ndots: int = 1
    timeout: int = 5
    attempts: int = 2


def parse_resolv_conf(text: str) -> ResolvConf:
    servers: list[str] = []
    search: tuple[str, ...] = ()
    opts = {"ndots": 1, "timeout": 5, "attempts": 2}
    for line in text.splitlines():
        words = line.split("#")[0].split(";")[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = tuple(words[1:])  # the last search/domain line wins
        elif words[0] == "options":
            for opt in words[1:]:
                key, _, value = opt.partition(":")
                if key in opts and value.isdigit():
                    opts[key] = int(value)
    return ResolvConf(tuple(servers), search, opts["ndots"], opts["timeout"], opts["attempts"])


def candidates(name: str, conf: ResolvConf) -> list[str]:
    """The names a lookup tries, in order: a trailing dot means absolute only; with at least
    `ndots` dots the name is tried as is first, else the search list comes first."""
    if name.endswith("."):
        return [name]
    expanded = [f"{name}.{domain}." for domain in conf.search]
    absolute = f"{name}."
    if name.count(".") >= conf.ndots:
        return [absolute, *expanded]
    return [*expanded, absolute]


@dataclass(frozen=True)
class DigAnswer:
    """One query as dig reported it."""

    name: str
    qtype: str
    server: str
    transport: str  # udp | tcp
    status: str  # NOERROR, NXDOMAIN, SERVFAIL, ... or TIMEOUT / ERROR
    ms: float | None
    addresses: tuple[str, ...] = ()
    truncated: bool = False

    @property
    def answered(self) -> bool:
        return self.status not in ("TIMEOUT", "ERROR")


def parse_dig(
    output: str, name: str, qtype: str, server: str, transport: str, took_ms: float
) -> DigAnswer:
    status = STATUS.search(output)
    if status is None:
        timed_out = "timed out" in output or "no servers could be reached" in output
        return DigAnswer(name, qtype, server, transport, "TIMEOUT" if timed_out else "ERROR", None)
    flags = FLAGS.search(output)
    ms = QUERY_TIME.search(output)
    addresses = tuple(m.group(3) for m in ANSWER.finditer(output) if m.group(2) == qtype)
    return DigAnswer(
        name,
        qtype,
        server,
        transport,
        status.group(1),
        float(ms.group(1)) if ms else took_ms,
        addresses,
        bool(flags and "tc" in flags.group(1).split()),
    )


def dig_argv(
    name: str, qtype: str, server: str, timeout: int, tcp: bool = False, small: bool = False
) -> list[str]:
    argv = ["dig", f"@{server}", name, qtype, "+nosearch", f"+time={timeout}", "+tries=1"]
    argv += ["+noall", "+comments", "+answer", "+stats"]
    if tcp:
        argv.append("+tcp")
    if small:
        argv += ["+ignore", "+bufsize=512", "+noedns"]
    return argv


@dataclass
class Lookup:
    """A name as the pod's resolver would look it up."""

    name: str
    tried: list[DigAnswer] = field(default_factory=list)

    @property
    def found(self) -> DigAnswer | None:
        return next((a for a in self.tried if a.status == "NOERROR" and a.addresses), None)

    @property
    def queries(self) -> int:
        """What the lookup costs on the wire: A and AAAA for every name tried."""
        return len(self.tried) * 2

    @property
    def ms(self) -> float:
        return sum(a.ms or 0 for a in self.tried)

    def verdict(self) -> str:
        found = self.found
        timeouts = [a for a in self.tried if a.status == "TIMEOUT"]
        if found is not None:
            wasted = len(self.tried) - 1
            text = (
                f"resolves as {found.name} -> {', '.join(found.addresses)} "
                f"in {self.ms:.0f} ms, {self.queries} queries"
            )
            if wasted:
                text += (
                    f" ({wasted} search-list name{'s' if wasted > 1 else ''} tried first: "
                    f"write it as {found.name} to save them)"
                )
            return text
        if timeouts:
            return (
                f"no answer: {len(timeouts)} of {len(self.tried)} queries timed out "
                f"({', '.join(sorted({a.name for a in timeouts}))})"
            )
        statuses = sorted({a.status for a in self.tried})
        return (
            f"does not resolve: {'/'.join(statuses)} for all {len(self.tried)} names tried "
            f"({self.queries} queries)"
        )
