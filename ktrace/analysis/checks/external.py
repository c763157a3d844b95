"""Traffic from outside the cluster through NodePorts and LoadBalancer addresses:
svc.local-no-endpoint, svc.health-check, nat.snat-hides-client and nat.asymmetric-return."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, conversation_label, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.names import Exposure, NameKind
from ktrace.analysis.returns import Bypass
from ktrace.decode.transport import ACK, SYN, TCP
from ktrace.distinct import distinct
from ktrace.model import Finding, PointKind, Severity


def receiving_node(analysis: Analysis, flow: int) -> str | None:
    """The node a connection to a NodePort or LoadBalancer address arrived at: the node
    whose address it is, or (a LoadBalancer address) the node whose NIC saw it."""
    named = analysis.names.get(analysis.host(flow, "b"))
    if named is not None and named.kind is NameKind.NODE:
        return named.node
    rows = analysis.rows_of_flows([flow])
    nodes = {
        analysis.index.points[int(p)].node
        for p in distinct(analysis.index.columns.point[rows]).tolist()
        if analysis.index.points[int(p)].kind == PointKind.NODE
    }
    return next(iter(nodes)) if len(nodes) == 1 else None


def closed_here(analysis: Analysis, flow: int) -> tuple[Exposure, str] | None:
    """(the Service, the node) when the flow goes to a Local-policy NodePort or LoadBalancer
    address on a node without a ready endpoint of it: kube-proxy drops it there."""
    f = analysis.flows
    exposed = analysis.names.exposure(analysis.host(flow, "b"), int(f.b_port[flow]))
    if exposed is None or exposed.policy != "Local":
        return None
    node = receiving_node(analysis, flow)
    if node is None or node in exposed.nodes:
        return None
    return exposed, node


def failed_health_check(analysis: Analysis, flow: int) -> tuple[Exposure, str] | None:
    """(the Service, the node) when the flow is a load balancer's health check of a node
    that has a ready endpoint, and the node refused it or never answered."""
    f = analysis.flows
    ip = analysis.host(flow, "b")
    checked = analysis.names.health_check(ip, int(f.b_port[flow]))
    node = analysis.names.node_of(ip)
    if checked is None or node not in checked.nodes or f.proto[flow] != TCP or not f.syn[flow]:
        return None
    return (checked, node) if f.synack[flow] == 0 else None


def claimed(analysis: Analysis, flow: int) -> bool:
    """Unanswered or refused connections these checks explain (the generic TCP checks
    leave them alone)."""
    names = analysis.names
    if not (names.node_ports or names.lb_ports):  # nothing exposed, the common case: at once
        return False
    return (
        closed_here(analysis, flow) is not None or failed_health_check(analysis, flow) is not None
    )


@dataclass
class _Closed:
    """An exposed Service whose outside connections went unanswered on a node."""

    exposed: Exposure
    node: str
    dests: set[str] = field(default_factory=set)
    labels: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def run_local_no_endpoint(analysis: Analysis) -> Iterator[Finding]:
    everything = [*analysis.names.node_ports.values(), *analysis.names.lb_ports.values()]
    if not any(e.policy == "Local" for e in everything):
        return
    f, c = analysis.flows, analysis.index.columns
    conv = analysis.correlation.conv
    groups: dict[tuple[str, str], _Closed] = {}
    answered = {int(conv[k]) for k in np.flatnonzero((f.synack > 0) | (f.packets_ba > 0)).tolist()}
    for flow in np.flatnonzero((f.proto == TCP) & (f.syn > 0)).tolist():
        found = closed_here(analysis, flow)
        if found is None or int(conv[flow]) in answered:
            continue
        exposed, node = found
        g = groups.setdefault((exposed.service, node), _Closed(exposed, node))
        g.dests.add(analysis.endpoint(flow, "b"))
        g.labels.append(analysis.flow_label(flow))
        rows = analysis.rows_of_flows([flow])
        g.rows += rows[(c.tcp_flags[rows] & (SYN | ACK)) == SYN][:2].tolist()
    for g in groups.values():
        ready = ", ".join(sorted(g.exposed.nodes)) or "no node"
        health = (
            f"; a load balancer's health check of port {g.exposed.health_port} on {g.node} "
            "fails for this reason, so it should not send traffic there"
            if g.exposed.health_port
            else ""
        )
        yield Finding(
            id="svc.local-no-endpoint",
            severity=Severity.HIGH,
            title=(
                f"{g.exposed.service} (externalTrafficPolicy: Local) has no ready endpoint on "
                f"{g.node}: {plural(len(g.labels), 'connection')} to "
                f"{', '.join(sorted(g.dests))} dropped there"
            ),
            explanation=(
                f"With externalTrafficPolicy: Local, kube-proxy forwards external traffic only "
                f"to endpoints on the node it arrived at. {g.node} has none (ready endpoints "
                f"are on {ready}), so kube-proxy drops these SYNs on {g.node}{health}."
            ),
            next_step=(
                f"Send external traffic only to nodes with an endpoint ({ready}): a load "
                "balancer does so through the health check node port; or run an endpoint on "
                "every node that receives traffic; or use externalTrafficPolicy: Cluster "
                "(any node forwards, but the pod sees a node address instead of the client's)."
            ),
            evidence=tuple(analysis.index.ref(r) for r in sorted(g.rows)[:MAX_EVIDENCE]),
            flows=tuple(g.labels),
        )


def run_health_check(analysis: Analysis) -> Iterator[Finding]:
    if not analysis.names.health_ports:
        return
    f = analysis.flows
    failing: dict[str, tuple[Exposure, set[str], list[int], list[str]]] = {}
    for flow in np.flatnonzero((f.proto == TCP) & (f.syn > 0)).tolist():
        found = failed_health_check(analysis, flow)
        if found is None:
            continue
        checked, node = found
        _, nodes, flows, dests = failing.setdefault(checked.service, (checked, set(), [], []))
        nodes.add(node)
        flows.append(flow)
        dests.append(analysis.endpoint(flow, "b"))
    for service, (checked, nodes, flows, dests) in failing.items():
        refused = sum(1 for x in flows if f.rst_ba[x] > 0)
        how = (
            "refused the connection (RST)"
            if refused == len(flows)
            else "never answered"
            if not refused
            else "refused or never answered"
        )
        none_left = nodes >= checked.nodes
        rows = analysis.rows_of_flows(flows)
        yield Finding(
            id="svc.health-check",
            severity=Severity.HIGH,
            title=(
                f"{service}'s load balancer health check fails on {', '.join(sorted(nodes))}, "
                f"which {'has' if len(nodes) == 1 else 'have'} a ready endpoint: port "
                f"{checked.health_port} {how}"
                + ("; no node with an endpoint passes" if none_left else "")
            ),
            explanation=(
                f"A load balancer in front of {service} (externalTrafficPolicy: Local) checks "
                f"each node's health check node port {checked.health_port}, served by "
                "kube-proxy: 200 where the node has a ready endpoint, 503 where it has none. "
                f"{plural(len(flows), 'check')} ({', '.join(sorted(set(dests)))}) got no "
                "answer at all, so the load balancer takes those nodes out although they "
                "can serve" + (", and has no node left to send to." if none_left else ".")
            ),
            next_step=(
                f"Check kube-proxy runs and is healthy on {', '.join(sorted(nodes))} (it "
                f"serves port {checked.health_port}), and that node firewalls and cloud "
                "firewall rules let the load balancer's health checkers reach the port."
            ),
            evidence=tuple(analysis.index.ref(int(r)) for r in rows[:MAX_EVIDENCE]),
            flows=tuple(analysis.flow_label(x) for x in flows),
        )


def run_snat_hides_client(analysis: Analysis) -> Iterator[Finding]:
    names = analysis.names
    if not (names.node_ports or names.lb_ports):
        return
    groups: dict[str, tuple[set[str], set[str], list[str]]] = {}
    for path in analysis.paths:
        first, last = path.flows[0], path.flows[-1]
        client = analysis.host(first, "a")
        seen_as = analysis.host(last, "a")
        to = analysis.endpoint(first, "b")
        ip, _, port = to.rpartition(":")
        exposed = names.exposure(ip.strip("[]"), int(port)) if port.isdigit() else None
        if exposed is None or client == seen_as or names.get(client) is not None:
            continue
        clients, masks, labels = groups.setdefault(exposed.service, (set(), set(), []))
        clients.add(client)
        host = names.host_of(seen_as)
        masks.add(f"{seen_as} ({host})" if host else seen_as)
        labels.append(conversation_label(analysis, path))
    for service, (clients, masks, labels) in groups.items():
        yield Finding(
            id="nat.snat-hides-client",
            severity=Severity.INFO,
            title=(
                f"{service}'s pods see external clients as {', '.join(sorted(masks))}, not as "
                f"{', '.join(sorted(clients)[:3])}"
            ),
            explanation=(
                f"{plural(len(labels), 'connection')} from outside the cluster reached "
                f"{service} through a NodePort or LoadBalancer address and were source-NATed "
                "to a node's address on the way (externalTrafficPolicy: Cluster does this so "
                "that the answer returns through the node the request entered). Client "
                "addresses in the application's logs and NetworkPolicies see the node."
            ),
            next_step=(
                "If the application needs the client's address: externalTrafficPolicy: Local "
                "(no SNAT; only nodes with an endpoint accept the traffic), or have the load "
                "balancer pass it on (X-Forwarded-For, PROXY protocol)."
            ),
            flows=tuple(labels),
        )


def run_asymmetric_return(analysis: Analysis) -> Iterator[Finding]:
    groups: dict[tuple[str, str], list[Bypass]] = {}
    for b in analysis.bypasses.values():
        called = analysis.named(analysis.endpoint(b.before, "b"))
        groups.setdefault((called, b.nat_node), []).append(b)
    for (called, node), members in groups.items():
        servers = sorted({analysis.endpoint(b.after, "b") for b in members})
        via = sorted({n for b in members for n in b.reply_nodes if n})
        left = f", leaving {' and '.join(via)}" if via else ""
        rows = [r for b in members for r in b.rows[:2]]
        labels = []
        for b in members:
            path = analysis.path_of_conv(b.conv)
            labels.append(
                conversation_label(analysis, path) if path else analysis.flow_label(b.before)
            )
        yield Finding(
            id="nat.asymmetric-return",
            severity=Severity.HIGH,
            title=(
                f"replies to {plural(len(members), 'connection')} to {called} bypassed {node}, "
                f"where the request was DNAT-ed: they came from {', '.join(servers)}{left}"
            ),
            explanation=(
                f"{node} rewrote the destination to {', '.join(servers)} and kept the client's "
                "address, so the server answered the client directly instead of through "
                f"{node}, where conntrack would have restored {called} as the source. The "
                "client gets a reply from an address it never called and drops or resets it."
            ),
            next_step=(
                "Keep external traffic source-NATed to the node (externalTrafficPolicy: "
                "Cluster with kube-proxy's masquerade rules intact), or use "
                "externalTrafficPolicy: Local so the node that receives a request serves it; "
                "check for rules that skip KUBE-MARK-MASQ and for routes that send pod replies "
                "around the node."
            ),
            evidence=tuple(analysis.index.ref(r) for r in sorted(rows)[:MAX_EVIDENCE]),
            flows=tuple(labels),
        )


HEALTH_CHECK = FunctionCheck("svc.health-check", run_health_check)
LOCAL_NO_ENDPOINT = FunctionCheck("svc.local-no-endpoint", run_local_no_endpoint)
SNAT_HIDES_CLIENT = FunctionCheck("nat.snat-hides-client", run_snat_hides_client)
ASYMMETRIC_RETURN = FunctionCheck("nat.asymmetric-return", run_asymmetric_return)
