"""The nodes' packet rules as kube-proxy and flannel write them: kube-proxy in iptables mode
(iptables-save form) or in its newer nftables mode (an `nft -f` script), flannel's
masquerading always in iptables (as flannel does), and the lab's faults.

Endpoint selection is round-robin (statistic nth; numgen inc) instead of kube-proxy's random,
so that tests know which pod a connection reaches; reloading restarts it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from tests.lab import topology as topo

MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class Family:
    """What differs between kube-proxy's iptables and ip6tables rules."""

    addr: Callable[[str], str]  # the lab's IPv4 address -> this family's
    host: int  # prefix length of one address
    cluster: str  # the pods' CIDR
    multicast: str
    reject: str


V4 = Family(lambda ip: ip, 32, "10.244.0.0/16", "224.0.0.0/4", "icmp-port-unreachable")
V6 = Family(topo.v6, 128, "fd00:10:244::/48", "ff00::/8", "icmp6-port-unreachable")


def _flannel_nat(fam: Family) -> list[str]:
    return [
        f"-A POSTROUTING -s {fam.cluster} -d {fam.cluster} -m comment --comment "
        '"flanneld masq" -j RETURN',
        f"-A POSTROUTING -s {fam.cluster} ! -d {fam.multicast} -m comment --comment "
        '"flanneld masq" -j MASQUERADE --random-fully',
    ]


def chain_name(kind: str, text: str) -> str:
    """kube-proxy's chain names: a prefix and 16 base32 characters of a hash."""
    digest = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"{kind}-{digest[:16]}"


def _proxy_runs(node: topo.Node, faults: tuple[str, ...]) -> bool:
    return not ("kube-proxy-down" in faults and node.name == topo.pod("client").node)


def _endpoints(svc: topo.Service, faults: tuple[str, ...]) -> list[topo.Pod]:
    return topo.endpoints(svc, faults)


def _policy(node: topo.Node, faults: tuple[str, ...], fam: Family) -> list[str]:
    """The lab's NetworkPolicy stand-in: a DROP on web-2's node, in iptables either way."""
    if "policy-drop" not in faults or node.name != topo.pod("web-2").node:
        return []
    client, web2 = fam.addr(topo.pod("client").ip), fam.addr(topo.pod("web-2").ip)
    return [
        f"-I FORWARD -s {client}/{fam.host} -d {web2}/{fam.host} -p tcp -m tcp --dport 80 "
        '-m comment --comment "lab: NetworkPolicy denies client to web" -j DROP'
    ]


def _local(eps: list[topo.Pod], node: topo.Node) -> list[topo.Pod]:
    return [ep for ep in eps if ep.node == node.name]


def _sep_chains(
    label: str, proto: str, port: topo.Port, eps: list[str], chain: str, fam: Family
) -> list[str]:
    """A Service chain's round-robin over endpoint chains, and those chains' DNAT."""
    rules = []
    for i, ip in enumerate(eps):
        sep = chain_name("KUBE-SEP", label + proto + ip)
        target = f"[{ip}]:{port.target}" if fam is V6 else f"{ip}:{port.target}"
        rest = len(eps) - i
        pick = f"-m statistic --mode nth --every {rest} --packet 0 " if rest > 1 else ""
        rules += [
            f":{sep} - [0:0]",
            f'-A {chain} -m comment --comment "{label} -> {target}" {pick}-j {sep}',
            f'-A {sep} -s {ip}/{fam.host} -m comment --comment "{label}" -j KUBE-MARK-MASQ',
            f'-A {sep} -p {proto} -m comment --comment "{label}" -m {proto} -j DNAT '
            f"--to-destination {target}",
        ]
    return rules


def _external_iptables(
    svc: topo.Service,
    port: topo.Port,
    node: topo.Node,
    eps: list[topo.Pod],
    faults: tuple[str, ...],
    svc_chain: str,
) -> tuple[list[str], list[str], list[str]]:
    """(nat rules, the KUBE-SERVICES/KUBE-NODEPORTS entries, filter rules) that expose a
    NodePort/LoadBalancer port on this node, as kube-proxy writes them."""
    proto = port.protocol.lower()
    label = f"{svc.namespace}/{svc.name}:{port.name}"
    ext = chain_name("KUBE-EXT", label + proto)
    match = f"-p {proto} -m {proto} --dport"
    entries = [
        f'-A KUBE-NODEPORTS {match} {port.node_port} -m comment --comment "{label}" -j {ext}'
    ]
    if svc.lb_ip:
        entries.insert(
            0,
            f"-A KUBE-SERVICES -d {svc.lb_ip}/32 {match} {port.port} -m comment --comment "
            f'"{label} loadbalancer IP" -j {ext}',
        )
    nat = [f":{ext} - [0:0]"]
    masq = "no-external-snat" not in faults
    if svc.external_policy == "Cluster":
        if masq:
            nat.append(
                f'-A {ext} -m comment --comment "masquerade traffic for {label} external '
                'destinations" -j KUBE-MARK-MASQ'
            )
        nat.append(f"-A {ext} -j {svc_chain}")
        return nat, entries, []
    nat += [
        f'-A {ext} -s {V4.cluster} -m comment --comment "pod traffic for {label} external '
        f'destinations" -j {svc_chain}',
        f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {label} external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {ext} -m comment --comment "route LOCAL traffic for {label} external '
        f'destinations" -m addrtype --src-type LOCAL -j {svc_chain}',
    ]
    local = [ep.ip for ep in _local(eps, node)]
    if local:
        svl = chain_name("KUBE-SVL", label + proto)
        nat += [f":{svl} - [0:0]", f"-A {ext} -j {svl}"]
        nat += _sep_chains(label, proto, port, local, svl, V4)
        return nat, entries, []
    why = f'-m comment --comment "{label} has no local endpoints" -j DROP'
    filt = [
        f"-A KUBE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL {match} {port.node_port} {why}"
    ]
    if svc.lb_ip:
        filt.append(f"-A KUBE-EXTERNAL-SERVICES -d {svc.lb_ip}/32 {match} {port.port} {why}")
    return nat, entries, filt


def _kube_proxy_iptables(
    node: topo.Node, faults: tuple[str, ...], fam: Family
) -> tuple[list[str], list[str]]:
    """(nat, filter) lines of kube-proxy's iptables mode."""
    nat = [
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    filt = [
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-'
        'visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service '
        'portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-'
        'visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service '
        'portals" -j KUBE-SERVICES',
    ]
    nodeports = []
    for svc in topo.SERVICES:
        pods = _endpoints(svc, faults)
        eps = [fam.addr(ep.ip) for ep in pods]
        vip = f"{fam.addr(svc.cluster_ip)}/{fam.host}"
        for port in svc.ports:
            proto = port.protocol.lower()
            label = f"{svc.namespace}/{svc.name}:{port.name}"
            if not eps:
                filt.append(
                    f"-A KUBE-SERVICES -d {vip} -p {proto} -m comment --comment "
                    f'"{label} has no endpoints" -m {proto} --dport {port.port} -j REJECT '
                    f"--reject-with {fam.reject}"
                )
                continue
            svc_chain = chain_name("KUBE-SVC", label + proto + vip)
            nat.append(f":{svc_chain} - [0:0]")
            nat += [
                f"-A KUBE-SERVICES -d {vip} -p {proto} -m comment --comment "
                f'"{label} cluster IP" -m {proto} --dport {port.port} -j {svc_chain}',
                # off-cluster clients (the node itself, hostNetwork pods) are masqueraded so
                # that the answer comes back through this node
                f"-A {svc_chain} ! -s {fam.cluster} -d {vip} -p {proto} -m comment --comment "
                f'"{label} cluster IP" -m {proto} --dport {port.port} -j KUBE-MARK-MASQ',
            ]
            nat += _sep_chains(label, proto, port, eps, svc_chain, fam)
            if svc.external and fam is V4:
                ext_nat, entries, ext_filt = _external_iptables(
                    svc, port, node, pods, faults, svc_chain
                )
                nat += ext_nat
                nodeports += entries
                filt += ext_filt
    nat += [e for e in nodeports if e.startswith("-A KUBE-SERVICES")]
    nat.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    nat += [e for e in nodeports if e.startswith("-A KUBE-NODEPORTS")]
    return nat, filt


def _firewall(node: topo.Node, faults: tuple[str, ...]) -> list[str]:
    """The lab's host-firewall fault: node-b's raw table drops what arrives for web's NodePort
    before kube-proxy's DNAT sees it."""
    if "nodeport-blocked" not in faults or node.name != topo.pod("web-2").node:
        return []
    port = next(p for s in topo.SERVICES if s.name == "web" for p in s.ports)
    return [
        f"-A PREROUTING -p tcp -m tcp --dport {port.node_port} -m comment --comment "
        '"lab: host firewall denies NodePorts" -j DROP'
    ]


def iptables_rules(
    node: topo.Node, faults: tuple[str, ...], kube_proxy: bool, fam: Family = V4
) -> str:
    """The node's iptables ruleset (iptables-restore input): flannel's masquerading, the
    lab's policy fault, and kube-proxy's rules when it runs in iptables mode."""
    nat, filt = _flannel_nat(fam), _policy(node, faults, fam)
    if kube_proxy and _proxy_runs(node, faults):
        kp_nat, kp_filt = _kube_proxy_iptables(node, faults, fam)
        nat, filt = kp_nat + nat, filt + kp_filt
    raw = _firewall(node, faults) if fam is V4 else []
    return "".join(
        f"*{table}\n"
        # chains declared before the rules that jump to them, as iptables-save prints them
        + "".join(line + "\n" for line in sorted(lines, key=lambda r: not r.startswith(":")))
        + "COMMIT\n"
        for table, lines in (("raw", raw), ("nat", nat), ("filter", filt))
    )


def ip6tables_rules(node: topo.Node, faults: tuple[str, ...]) -> str:
    """The dual-stack shape's IPv6 twin (kube-proxy runs one proxier per family)."""
    return iptables_rules(node, faults, True, V6)


def _nft_endpoints(label: str, port: topo.Port, proto: str, eps: list[topo.Pod]) -> list[str]:
    return [
        f"  chain {chain_name('endpoint', label + ep.ip)} {{\n"
        f'    comment "{label} -> {ep.ip}:{port.target}"\n'
        f"    ip saddr {ep.ip} jump mark-for-masquerade\n"
        f"    meta l4proto {proto} dnat to {ep.ip}:{port.target}\n  }}"
        for ep in eps
    ]


def _nft_pick(label: str, eps: list[topo.Pod]) -> str:
    picks = ", ".join(
        f"{i} : goto {chain_name('endpoint', label + ep.ip)}" for i, ep in enumerate(eps)
    )
    return f"numgen inc mod {len(eps)} vmap {{ {picks} }}"


def nft_rules(node: topo.Node, faults: tuple[str, ...]) -> str:
    """kube-proxy's nftables mode as an `nft -f` script: its own `ip kube-proxy` table,
    Services in verdict maps (ClusterIPs and LoadBalancer IPs; NodePorts for any local
    address), one chain per Service, per external exposure and per endpoint."""
    head = "table ip kube-proxy\ndelete table ip kube-proxy\n"
    if not _proxy_runs(node, faults):
        return head
    services, rejects, nodeports, closed_ports, chains = [], [], [], [], []
    for svc in topo.SERVICES:
        eps = _endpoints(svc, faults)
        for port in svc.ports:
            proto = port.protocol.lower()
            label = f"{svc.namespace}/{svc.name}/{proto}/{port.name}"
            key = f"{svc.cluster_ip} . {proto} . {port.port}"
            if not eps:
                rejects.append(f"{key} : goto reject-chain")
                continue
            svc_chain = chain_name("service", label)
            services.append(f"{key} : goto {svc_chain}")
            chains += _nft_endpoints(label, port, proto, eps)
            chains.append(
                f"  chain {svc_chain} {{\n"
                f'    comment "{label}"\n'
                f"    ip daddr {svc.cluster_ip} ip saddr != {V4.cluster} "
                "jump mark-for-masquerade\n"
                f"    {_nft_pick(label, eps)}\n  }}"
            )
            if not svc.external:
                continue
            ext = chain_name("external", label)
            lb_key = f"{svc.lb_ip} . {proto} . {port.port}"
            local = _local(eps, node)
            if svc.external_policy == "Local" and not local:
                closed_ports.append(f"{proto} . {port.node_port} : drop")
                if svc.lb_ip:
                    rejects.append(f"{lb_key} : drop")
                continue
            nodeports.append(f"{proto} . {port.node_port} : goto {ext}")
            if svc.lb_ip:
                services.append(f"{lb_key} : goto {ext}")
            if svc.external_policy == "Cluster":
                masq = "" if "no-external-snat" in faults else "    jump mark-for-masquerade\n"
                body = f"{masq}    goto {svc_chain}\n"
            else:
                body = (
                    f"    ip saddr {V4.cluster} goto {svc_chain}\n"
                    "    fib saddr type local jump mark-for-masquerade\n"
                    f"    fib saddr type local goto {svc_chain}\n"
                    f"    {_nft_pick(label, local)}\n"
                )
            chains.append(f'  chain {ext} {{\n    comment "{label}"\n{body}  }}')

    def verdicts(name: str, elements: list[str], key: str) -> str:
        body = f" elements = {{ {', '.join(elements)} }}" if elements else ""
        return f"  map {name} {{\n    type {key} : verdict\n   {body}\n  }}"

    service_key = "ipv4_addr . inet_proto . inet_service"
    port_key = "inet_proto . inet_service"
    hooks = (
        ("nat-prerouting", "nat hook prerouting priority dstnat", "jump services"),
        ("nat-output", "nat hook output priority -100", "jump services"),
        ("nat-postrouting", "nat hook postrouting priority srcnat", "jump masquerading"),
        (
            "filter-input",
            "filter hook input priority -110",
            "ct state new jump nodeport-endpoints-check\n"
            "    ct state new jump service-endpoints-check",
        ),
        (
            "filter-forward",
            "filter hook forward priority -110",
            "ct state new jump service-endpoints-check",
        ),
        (
            "filter-output",
            "filter hook output priority -110",
            "ct state new jump service-endpoints-check",
        ),
    )
    return head + "\n".join(
        [
            "table ip kube-proxy {",
            # what is jumped to before what jumps: nft resolves names as it reads
            f"  chain mark-for-masquerade {{\n    meta mark set meta mark | {MASQ_MARK}\n  }}",
            f"  chain masquerading {{\n    meta mark & {MASQ_MARK} == 0 return\n"
            f"    meta mark set meta mark ^ {MASQ_MARK}\n    masquerade fully-random\n  }}",
            "  chain reject-chain {\n    reject\n  }",
            *chains,
            verdicts("service-ips", services, service_key),
            verdicts("service-nodeports", nodeports, port_key),
            verdicts("no-endpoint-services", rejects, service_key),
            verdicts("no-endpoint-nodeports", closed_ports, port_key),
            "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n"
            "    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
            "vmap @service-nodeports\n  }",
            "  chain service-endpoints-check {\n"
            "    ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }",
            "  chain nodeport-endpoints-check {\n    fib daddr type local ip daddr != "
            "127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n  }",
            *(
                f"  chain {name} {{\n    type {hook}; policy accept;\n    {rule}\n  }}"
                for name, hook, rule in hooks
            ),
            "}",
            "",
        ]
    )
