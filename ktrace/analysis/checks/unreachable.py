"""net.unreachable: connections a router or a node answered with an ICMP "unreachable" (no
route, no host, prohibited by a rule) instead of the destination answering. Where the address
came from a DNS answer in the capture, that answer is said too: a headless Service still
handing out a deleted pod's address looks exactly like this."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.names import service_of_name
from ktrace.decode.transport import TCP, UDP
from ktrace.model import Finding, Severity

# ICMP destination unreachable (type 3) and ICMPv6 (type 1) codes, as people say them
ICMP_CODES = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    6: "network unknown",
    7: "host unknown",
    9: "network prohibited",
    10: "host prohibited",
    13: "communication administratively prohibited",
}
ICMP6_CODES = {
    0: "no route to destination",
    1: "communication administratively prohibited",
    3: "address unreachable",
    4: "port unreachable",
    5: "source address failed policy",
    6: "reject route",
}


@dataclass
class _Refused:
    """Attempts to one address that others answered for, with what they said."""

    dest: str
    answers: dict[tuple[str, str], int] = field(default_factory=dict)  # (who, what) -> count
    rows: list[int] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    about: set[int] = field(default_factory=set)


def _unreachable(analysis: Analysis) -> dict[str, _Refused]:
    index = analysis.index
    c, q = index.columns, index.quotes
    flows = analysis.flows
    keys: dict[tuple[int, int, int, int, int], int] = {}
    for k in range(len(flows)):
        key = (int(flows.l3[k]), int(flows.a_addr[k]), int(flows.a_port[k]),
               int(flows.b_addr[k]), int(flows.b_port[k]))  # fmt: skip
        keys.setdefault(key, k)
    found: dict[str, _Refused] = {}
    for k, row in enumerate(q.row.tolist()):
        proto, kind = int(c.proto[row]), int(c.seq[row])
        codes = ICMP_CODES if proto == 1 else ICMP6_CODES
        if kind >> 8 != (3 if proto == 1 else 1) or int(q.proto[k]) not in (TCP, UDP):
            continue
        what = codes.get(kind & 0xFF, f"unreachable (code {kind & 0xFF})")
        l3 = int(q.l3[k])
        dest = index.address(l3, int(q.dst[k]))
        who = index.address(int(c.l3[row]), int(c.src[row]))
        if who == dest:
            continue  # the destination itself refused: a closed port, told by tcp.rst
        r = found.setdefault(dest, _Refused(dest))
        r.answers[(who, what)] = r.answers.get((who, what), 0) + 1
        r.rows.append(row)
        r.ports.add(int(q.dport[k]))
        flow = keys.get((l3, int(q.src[k]), int(q.sport[k]), int(q.dst[k]), int(q.dport[k])))
        if flow is not None:
            r.about.add(int(analysis.correlation.conv[flow]))
    return found


def _handed_out(analysis: Analysis, address: str) -> list[str]:
    """The names DNS answers in the capture resolved to this address."""
    table = analysis.dns.transactions
    answers = table.messages.answers
    names = []
    for k in np.flatnonzero(table.answered).tolist():
        qname = table.qname.values[table.qname.ids[k]]
        if address in answers[int(table.got[k])] and qname not in names:
            names.append(qname)
    return names


def run(analysis: Analysis) -> Iterator[Finding]:
    for dest, r in sorted(_unreachable(analysis).items()):
        said = "; ".join(
            f"{who} answered {what} ({plural(n, 'time')})"
            for (who, what), n in sorted(r.answers.items(), key=lambda kv: -kv[1])
        )
        attempts = len({int(analysis.correlation.ident[row]) for row in r.rows})
        ports = ", ".join(str(p) for p in sorted(r.ports))
        named = analysis.names.get(dest)
        sentences = [
            f"{plural(attempts, 'attempt')} to reach {dest} (port {ports}) got no answer from "
            f"it: {said}. The network says the address cannot be reached from here."
        ]
        handed = _handed_out(analysis, dest)
        if handed:
            services = [s for s in (service_of_name(n, analysis.names) for n in handed) if s]
            sentences.append(
                f"DNS handed this address out, for {', '.join(handed[:3])}"
                + (f" (Service {services[0]})" if services else "")
                + "."
            )
        if analysis.names.by_ip and named is None:
            sentences.append(
                "No pod, Service or node in the inventory has this address now: it belongs "
                "to something that no longer exists (a deleted pod whose address is still "
                "handed out, a stale cache or config)."
            )
        elif named is not None:
            sentences.append(f"The inventory has it as {named.kind} {named.name}.")
        yield Finding(
            id="net.unreachable",
            severity=Severity.HIGH,
            title=f"{dest} cannot be reached: {next(iter(r.answers))[1]} from "
            f"{next(iter(r.answers))[0]}"
            + (f" ({named.kind} {named.name})" if named else "")
            + (f", handed out by DNS for {handed[0]}" if handed else ""),
            explanation=" ".join(sentences),
            next_step=(
                "Check whether the address still belongs to anything: kubectl get pods -A "
                f"-o wide | grep {dest}; for a Service's name, its EndpointSlices "
                "(kubectl get endpointslices -l kubernetes.io/service-name=NAME) and the DNS "
                "server's cache; else the routes and firewall of the one that answered."
            ),
            evidence=tuple(analysis.index.ref(row) for row in r.rows[:MAX_EVIDENCE]),
            about=frozenset(r.about),
        )


CHECK = FunctionCheck(
    "net.unreachable", run, explains=("tcp.syn-unanswered", "dns.unanswered", "tcp.rst")
)
