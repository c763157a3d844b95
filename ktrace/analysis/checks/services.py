"""svc.no-endpoints and nat.missing: what kube-proxy did, or failed to do, to Service traffic."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.node_story import absent, kernel_story, rule_for
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import ACK, RST, SYN, TCP
from ktrace.model import Finding, PointKind, Severity

if TYPE_CHECKING:
    from ktrace.bundle.node_evidence import NodeEvidence, Rule

# (protocol of the error, type << 8 | code): ICMP and ICMPv6 "port unreachable"
PORT_UNREACHABLE = {(1, (3 << 8) | 3), (58, (1 << 8) | 4)}


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def run_no_endpoints(analysis: Analysis) -> Iterator[Finding]:
    index, names = analysis.index, analysis.names
    c, q = index.columns, index.quotes
    rejected: dict[str, list[int]] = {}
    for k, row in enumerate(q.row.tolist()):
        if (int(c.proto[row]), int(c.seq[row])) not in PORT_UNREACHABLE or int(q.proto[k]) != TCP:
            continue
        ip = index.address(int(q.l3[k]), int(q.dst[k]))
        if names.by_ip and not names.is_service(ip):
            continue
        if names.endpoint_nodes.get(ip):
            continue  # it has ready endpoints: refused on the way to one (path.drop says where)
        rejected.setdefault(_endpoint(ip, int(q.dport[k])), []).append(row)
    # kube-proxy in nftables/IPVS modes, and some CNIs, answer the SYN with a RST instead; a
    # RST on a connection that was answered (a backend's reset, un-DNAT-ed) is not that
    f = analysis.flows
    flow = f.flow
    rst = (c.proto == TCP) & ((c.tcp_flags & RST) != 0) & (flow >= 0)
    syn_rst = np.flatnonzero(rst)
    syn_rst = syn_rst[f.synack[flow[syn_rst]] == 0]
    for row in syn_rst.tolist():
        src = index.address(int(c.l3[row]), int(c.src[row]))
        if names.is_service(src) and int(c.tcp_flags[row]) & ACK:
            rejected.setdefault(_endpoint(src, int(c.sport[row])), []).append(row)
    # one Service, one finding: its ClusterIPs of both families together
    by_service: dict[str, tuple[list[str], list[int]]] = {}
    for dst, rows in sorted(rejected.items()):
        named = names.get(dst.rsplit(":", 1)[0].strip("[]"))
        addresses, all_rows = by_service.setdefault(named.name if named else dst, ([], []))
        addresses.append(dst)
        all_rows.extend(rows)
    for addresses, rows in by_service.values():
        dst = ", ".join(addresses)
        named = names.get(addresses[0].rsplit(":", 1)[0].strip("[]"))
        what = f"Service {named.name} ({dst})" if named else dst
        # one refusal seen at several points is one attempt
        attempts = len({int(analysis.correlation.ident[r]) for r in rows})
        yield Finding(
            id="svc.no-endpoints",
            severity=Severity.HIGH,
            title=f"{what} rejects connections: no ready endpoints"
            if named
            else f"connections to {dst} rejected with ICMP port unreachable",
            explanation=(
                f"{plural(attempts, 'connection attempt')} to {what} "
                f"{'was' if attempts == 1 else 'were'} refused on the "
                "spot (an ICMP port unreachable or a RST in the Service's name). That is what "
                "kube-proxy does for a Service without ready endpoints: no pod matches its "
                "selector, or none is Ready."
                if named
                else f"{plural(attempts, 'connection attempt')} to {dst} got ICMP port "
                "unreachable. If it is a Service ClusterIP, the Service has no ready endpoints "
                "(kube-proxy's REJECT rule)."
            )
            + _rule_note(analysis, addresses, rows),
            next_step=(
                "kubectl get endpointslices -l kubernetes.io/service-name=<service>: check the "
                "selector matches the pods' labels and that they pass their readiness probe."
            ),
            evidence=tuple(index.ref(r) for r in rows[:MAX_EVIDENCE]),
        )


def run_nat_missing(analysis: Analysis) -> Iterator[Finding]:
    index, names = analysis.index, analysis.names
    vips = names.services()
    if not vips:
        return
    c = index.columns
    on_wire = np.array([p.kind in (PointKind.NODE, PointKind.TUNNEL) for p in index.points], bool)
    to_vip = np.zeros(len(c), bool)
    for family, values in _column_values(index, vips).items():
        to_vip |= (c.l3 == family) & np.isin(c.dst, list(values))
    hits = np.flatnonzero(to_vip & (on_wire[c.point] | (c.tunnel > 0)))
    if not len(hits):
        return
    by_vip: dict[str, list[int]] = {}
    for row in hits.tolist():
        by_vip.setdefault(index.address(int(c.l3[row]), int(c.dst[row])), []).append(row)
    for vip, rows in sorted(by_vip.items()):
        points = sorted({index.points[int(c.point[r])].id for r in rows})
        syns = sum(1 for r in rows if int(c.tcp_flags[r]) & (SYN | ACK) == SYN)
        yield Finding(
            id="nat.missing",
            severity=Severity.HIGH,
            title=f"traffic to {names.get(vip)} ({vip}) left the node without DNAT",
            explanation=(
                f"{plural(len(rows), 'packet')} ({syns} SYNs) addressed to the ClusterIP "
                f"{vip} were seen at {', '.join(points)}. A ClusterIP only exists in "
                "kube-proxy's rules on each node: it must be rewritten to a pod address "
                "before the packet leaves the node. These were not, so nothing will answer."
                + _missing_rules_note(analysis, vip, rows)
            ),
            next_step=(
                "Check kube-proxy runs on the client's node and its rules are there "
                "(iptables-save | grep KUBE-SERVICES, or nft list ruleset); for IPVS check "
                "ipvsadm -Ln; look at kube-proxy's logs."
            ),
            evidence=tuple(index.ref(r) for r in rows[:MAX_EVIDENCE]),
        )


def _rule_note(analysis: Analysis, addresses: list[str], rows: list[int]) -> str:
    """The REJECT rules that answered, as the nodes recorded them, and the kernel's reason
    for the refused SYNs."""
    c = analysis.index.columns
    said = [kernel_story(analysis.nodes, c.ts[rows].tolist(), int(c.l3[rows[0]]))]
    for dst in addresses:
        ip = dst.rsplit(":", 1)[0].strip("[]")
        said.append(rule_for(analysis.nodes, "REJECT", ip))
    text = " ".join(dict.fromkeys(s for s in said if s))
    return f" {text}" if text else ""


def _missing_rules_note(analysis: Analysis, vip: str, rows: list[int]) -> str:
    """Whether the nodes the packets left had any rule for the ClusterIP at all."""
    c = analysis.index.columns
    nodes = sorted({analysis.index.points[int(c.point[r])].node or "" for r in rows} - {""})
    recorded = [analysis.nodes[n] for n in nodes if n in analysis.nodes]
    if not recorded:
        return ""
    without = [ev.node for ev in recorded if absent(ev, vip)]
    if without:
        return (
            f" The ruleset of {', '.join(without)} (iptables-save and nft list ruleset) has no "
            f"rule for {vip} at all: kube-proxy's rules are missing there."
        )
    said = (
        f" Yet {', '.join(ev.node for ev in recorded)} has rules for {vip}: look at why "
        "packets do not traverse them (a chain not jumped to, another table first)."
    )
    if analysis.names.endpoint_nodes.get(vip) == frozenset():
        said += (
            " The inventory lists no ready endpoint for it, so kube-proxy's rule for it is a "
            "REJECT: these packets never met it."
        )
    syns = sum(1 for r in rows if int(c.tcp_flags[r]) & (SYN | ACK) == SYN) or len(rows)
    for ev in recorded:
        first = _accepted_first(ev, syns)
        if first is not None:
            said += (
                f" On {ev.node}, {first.quote()} accepted {plural(first.packets, 'packet')} "
                "during the capture before kube-proxy's chains saw them."
            )
            break
    return said


# kube-proxy's own chains (iptables mode): an ACCEPT in another chain of the same hook can end
# a packet's way through the table before these see it
PROXY_CHAINS = ("KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-", "KUBE-FORWARD", "KUBE-NODEPORTS",
                "KUBE-POSTROUTING", "KUBE-MARK-", "KUBE-PROXY-", "KUBE-EXTERNAL-SERVICES",
                "KUBE-FW-", "KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-")  # fmt: skip


def _accepted_first(ev: NodeEvidence, packets: int) -> Rule | None:
    """A filter-table ACCEPT outside kube-proxy's chains that counted at least `packets`
    during the capture: what let them through before kube-proxy's REJECT."""
    for rule in sorted(ev.rules, key=lambda r: -r.packets):
        if (
            rule.table == "filter"
            and rule.target == "ACCEPT"
            and rule.packets >= packets
            and not rule.chain.startswith(PROXY_CHAINS)
            and rule.chain not in ("INPUT", "OUTPUT")
        ):
            return rule
    return None


def _column_values(index: PacketIndex, ips: set[str]) -> dict[int, set[int]]:
    """Addresses as the index's address columns hold them, per family (IPv6: table ids)."""
    out: dict[int, set[int]] = {4: set(), 6: set()}
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        value = index.value_of(addr)
        if value is not None:
            out[addr.version].add(value)
    return out


NO_ENDPOINTS = FunctionCheck(
    "svc.no-endpoints",
    run_no_endpoints,
    explains=("tcp.syn-unanswered", "tcp.rst", "net.unreachable"),
)
NAT_MISSING = FunctionCheck("nat.missing", run_nat_missing, explains=("tcp.syn-unanswered",))
