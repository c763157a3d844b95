"""tcp.syn-unanswered: connection attempts that got neither a SYN/ACK, a RST nor an ICMP error,
and where along the path the SYN stopped."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.checks import (
    CAPTURE_LOSS_STEP,
    GRACE_NS,
    MAX_EVIDENCE,
    RETRY_NS,
    FunctionCheck,
    conversation_label,
    kernel_drops_note,
    plural,
)
from ktrace.analysis.checks.external import claimed
from ktrace.analysis.context import Analysis
from ktrace.analysis.node_story import drop_recorded
from ktrace.analysis.paths import Direction
from ktrace.decode.transport import ACK, SYN, TCP
from ktrace.distinct import distinct
from ktrace.model import Finding, Severity


def answered_by_icmp(analysis: Analysis) -> set[int]:
    """Flows an ICMP error (unreachable, ...) answered: those got a reply of sorts."""
    q = analysis.index.quotes
    f = analysis.flows
    keys = {}
    for k in range(len(f)):
        keys[(int(f.a_addr[k]), int(f.a_port[k]), int(f.b_addr[k]), int(f.b_port[k]))] = k
    out = set()
    for src, sport, dst, dport in zip(
        q.src.tolist(), q.sport.tolist(), q.dst.tolist(), q.dport.tolist(), strict=True
    ):
        flow = keys.get((src, sport, dst, dport))
        if flow is not None:
            out.add(flow)
    return out


@dataclass
class _Unanswered:
    """Unanswered connection attempts to one destination that stopped at one point."""

    dest: str
    last_point: str
    missed: bool = False  # the connection went on: the capture, not the network, lost the answer
    once: bool = False  # one SYN, never retried, nothing after: the client may have given up
    labels: list[str] = field(default_factory=list)
    clients: set[str] = field(default_factory=set)
    tries: int = 0
    first_ns: int = 0
    last_ns: int = 0
    syns: list[list[int]] = field(default_factory=list)  # per connection
    exposed: str = ""  # the Service when the destination is a NodePort or LoadBalancer address

    def evidence(self) -> list[int]:
        """Every try of a lone connection; the first tries of each of many."""
        each = MAX_EVIDENCE if len(self.syns) == 1 else max(1, MAX_EVIDENCE // 4)
        return sorted(r for rows in self.syns for r in rows[:each])[:MAX_EVIDENCE]


def _unanswered(analysis: Analysis) -> Iterator[tuple[int, np.ndarray]]:
    """(first flow, its conversation's flows) for each conversation whose SYNs got nothing
    back and not placed by path.drop."""
    f = analysis.flows
    conv = analysis.correlation.conv
    icmp = answered_by_icmp(analysis)
    order = np.argsort(conv, kind="stable")
    bounds = np.searchsorted(conv[order], np.arange(int(conv.max()) + 2 if len(conv) else 1))
    tried = np.flatnonzero((f.proto == TCP) & (f.syn > 0))
    for k in distinct(conv[tried]).tolist():
        everyone = order[bounds[k] : bounds[k + 1]]
        if (
            f.synack[everyone].sum()
            or f.rst_ba[everyone].sum()
            or f.packets_ba[everyone].sum()
            or any(x in icmp for x in everyone.tolist())
        ):
            continue
        flow = int(everyone[np.argmin(f.first_ts[everyone])])
        if claimed(analysis, flow):
            continue  # svc.local-no-endpoint or svc.health-check say why
        path = analysis.path_of_flow(flow)
        if path and any(x.direction is Direction.FORWARD and x.syn for x in path.losses):
            continue  # located: path.drop says between which points it died
        yield flow, everyone


def _groups(analysis: Analysis) -> list[_Unanswered]:
    f = analysis.flows
    c = analysis.index.columns
    conv, when = analysis.correlation.conv, analysis.correlation.when
    syn_rows = np.flatnonzero(((c.tcp_flags & (SYN | ACK)) == SYN) & (f.flow >= 0))
    # the SYNs of each conversation, by one sort (a SYN flood has a conversation per SYN)
    syn_conv = conv[f.flow[syn_rows]]
    by_conv = np.argsort(syn_conv, kind="stable")
    sorted_conv = syn_conv[by_conv]
    ends = analysis.point_extents[3]  # each point's last packet
    groups: dict[tuple[str, str, bool, bool], _Unanswered] = {}
    for flow, everyone in _unanswered(analysis):
        path = analysis.path_of_flow(flow)
        lo, hi = np.searchsorted(sorted_conv, [conv[flow], conv[flow] + 1])
        syn_here = syn_rows[np.sort(by_conv[lo:hi])]
        last = int(syn_here[np.argmax(when[syn_here])])  # the furthest sighting of the last try
        # the answer would follow within milliseconds where the SYN was last seen: a file
        # that ends (or, live, has been written up to) just after it cannot show it yet
        if int(f.first_ts[everyone].min()) + GRACE_NS // 2 > int(ends[c.point[last]]):
            continue
        dest = analysis.named(analysis.endpoint(path.flows[-1] if path else flow, "b"))
        last_point = analysis.point_id(int(c.point[last]))
        tries = len(set(analysis.correlation.ident[syn_here].tolist()))
        # the client sent more after its SYN: an answer came and the capture did not record it
        more = int(f.packets_ab[everyone].sum()) > len(syn_here)
        missed = tries == 1 and more
        # a client that gets nothing sends its SYN again after about a second: one try and
        # nothing more cannot be judged before then, and after it says only that the client
        # stopped trying (it may have given up early), unless the node recorded a drop
        once = tries == 1 and not more
        if once and int(ends[c.point[last]]) - int(c.ts[last]) < RETRY_NS:
            continue
        if once and _node_dropped(analysis, int(c.point[last]), [int(c.ts[last])], flow):
            once = False
        g = groups.setdefault(
            (dest, last_point, missed, once),
            _Unanswered(dest, last_point, missed=missed, once=once),
        )
        exposed = analysis.names.exposure(analysis.host(flow, "b"), int(f.b_port[flow]))
        g.exposed = exposed.service if exposed else ""
        g.labels.append(conversation_label(analysis, path) if path else analysis.flow_label(flow))
        g.clients.add(analysis.endpoint(flow, "a").rsplit(":", 1)[0])
        g.tries += tries
        first, last_ns = int(f.first_ts[everyone].min()), int(f.last_ts[everyone].max())
        g.first_ns = min(g.first_ns or first, first)
        g.last_ns = max(g.last_ns, last_ns)
        g.syns.append(syn_here.tolist())
    return list(groups.values())


def _node_dropped(analysis: Analysis, point: int, times: list[int], flow: int) -> bool:
    """The node of the point recorded dropping packets at these moments."""
    node = analysis.index.points[point].node
    ev = analysis.nodes.get(node or "")
    return ev is not None and drop_recorded(ev, times, int(analysis.flows.l3[flow]))


def _once(analysis: Analysis, g: _Unanswered) -> Finding:
    conns = len(g.labels)
    recorded = any(ev.traced or ev.counted for ev in analysis.nodes.values())
    return Finding(
        id="tcp.syn-unanswered",
        severity=Severity.LOW,
        title=f"{plural(conns, 'SYN')} to {g.dest} got no answer and "
        f"{'was' if conns == 1 else 'were'} never sent again: last seen at {g.last_point}",
        explanation=(
            f"{g.labels[0] if conns == 1 else plural(conns, 'connection')}: one SYN and nothing "
            "after it. A client that gets no answer sends its SYN again after about a second; "
            "this one did not, so it gave up before that (a short connect timeout) or its "
            "answer and everything after were lost. One try is not enough to tell a drop from "
            "a client that stopped waiting"
            + ("; no node recorded a drop at that moment." if recorded else ".")
        ),
        next_step=(
            "Try again with a connect timeout above a few seconds (kubectl ktrace trace) to "
            f"see whether the SYN is retried and where it stops after {g.last_point}."
        ),
        evidence=tuple(analysis.index.ref(r) for r in g.evidence()),
        flows=tuple(g.labels),
    )


def _missed(analysis: Analysis, g: _Unanswered) -> Finding:
    conns = len(g.labels)
    return Finding(
        id="tcp.syn-unanswered",
        severity=Severity.INFO,
        title=f"{plural(conns, 'SYN')} to {g.dest} without an answer in the capture, never "
        f"retried: the capture missed the answer{'s' if conns > 1 else ''}, not the network",
        explanation=(
            f"{g.labels[0] if conns == 1 else plural(conns, 'connection')}: a client that gets "
            "no SYN/ACK sends its SYN again after about a second; this one did not although "
            f"{g.last_point} kept capturing, so an answer reached it and the capture did not "
            f"record it: capture loss, not network loss{kernel_drops_note(analysis)}."
        ),
        next_step=CAPTURE_LOSS_STEP,
        evidence=tuple(analysis.index.ref(r) for r in g.evidence()),
        flows=tuple(g.labels),
    )


def run(analysis: Analysis) -> Iterator[Finding]:
    for g in _groups(analysis):
        if g.missed:
            yield _missed(analysis, g)
            continue
        if g.once:
            yield _once(analysis, g)
            continue
        conns = len(g.labels)
        span = (g.last_ns - g.first_ns) / 1e9
        tries = plural(g.tries, "try", "tries")
        if conns == 1:
            what = f"SYN to {g.dest} never answered ({tries} over {span:.1f} s)"
        else:
            clients = f" from {plural(len(g.clients), 'client')}" if len(g.clients) > 1 else ""
            what = (
                f"{plural(conns, 'connection')}{clients} to {g.dest} never answered "
                f"({tries} over {span:.1f} s)"
            )
        yield Finding(
            id="tcp.syn-unanswered",
            severity=Severity.HIGH,
            title=f"{what}: last seen at {g.last_point}",
            explanation=(
                f"{g.labels[0] if conns == 1 else plural(conns, 'connection')}: nothing came "
                "back: no SYN/ACK, no RST, no ICMP error. The SYN was dropped after the last "
                "point that saw it (NetworkPolicy, firewall, a missing route) or the "
                "destination is gone."
            ),
            next_step=_next_step(g),
            evidence=tuple(analysis.index.ref(r) for r in g.evidence()),
            flows=tuple(g.labels),
        )


def _next_step(g: _Unanswered) -> str:
    if g.exposed:  # arrived for a NodePort or LoadBalancer address and went nowhere
        return (
            f"The SYN reached {g.last_point} for {g.exposed} and was never forwarded: look on "
            "that node for a firewall rule that drops the port before kube-proxy's DNAT "
            "(iptables-save -t raw and the filter INPUT/FORWARD chains, nft list ruleset), "
            "check kube-proxy runs there and that the Service has ready endpoints."
        )
    return (
        f"Capture further along the path from {g.last_point} (the node, the destination's node "
        "and pod) to see where the SYN stops; check NetworkPolicies in the destination "
        "namespace and that the endpoint pod exists."
    )


CHECK = FunctionCheck("tcp.syn-unanswered", run)
