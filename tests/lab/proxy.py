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
    return [] if svc.name == "web" and "no-endpoints" in faults else topo.endpoints(svc)


def _policy(node: topo.Node, faults: tuple[str, ...], fam: Family) -> list[str]:
    """The lab's NetworkPolicy stand-in: a DROP on web-2's node, in iptables either way."""
    if "policy-drop" not in faults or node.name != topo.pod("web-2").node:
        return []
    client, web2 = fam.addr(topo.pod("client").ip), fam.addr(topo.pod("web-2").ip)
    return [
        f"-I FORWARD -s {client}/{fam.host} -d {web2}/{fam.host} -p tcp -m tcp --dport 80 "
        '-m comment --comment "lab: NetworkPolicy denies client to web" -j DROP'
    ]


def _kube_proxy_iptables(faults: tuple[str, ...], fam: Family) -> tuple[list[str], list[str]]:
    """(nat, filter) lines of kube-proxy's iptables mode."""
    nat = [
        ":KUBE-SERVICES - [0:0]",
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
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service '
        'portals" -j KUBE-SERVICES',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service '
        'portals" -j KUBE-SERVICES',
    ]
    for svc in topo.SERVICES:
        eps = [fam.addr(ep.ip) for ep in _endpoints(svc, faults)]
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
            nat.insert(0, f":{svc_chain} - [0:0]")
            nat.append(
                f"-A KUBE-SERVICES -d {vip} -p {proto} -m comment --comment "
                f'"{label} cluster IP" -m {proto} --dport {port.port} -j {svc_chain}'
            )
            for i, ip in enumerate(eps):
                sep = chain_name("KUBE-SEP", label + proto + ip)
                target = f"[{ip}]:{port.target}" if fam is V6 else f"{ip}:{port.target}"
                nat.insert(0, f":{sep} - [0:0]")
                rest = len(eps) - i
                pick = f"-m statistic --mode nth --every {rest} --packet 0 " if rest > 1 else ""
                nat += [
                    f'-A {svc_chain} -m comment --comment "{label} -> {target}" {pick}-j {sep}',
                    f'-A {sep} -s {ip}/{fam.host} -m comment --comment "{label}" -j KUBE-MARK-MASQ',
                    f'-A {sep} -p {proto} -m comment --comment "{label}" -m {proto} -j DNAT '
                    f"--to-destination {target}",
                ]
    return nat, filt


def iptables_rules(
    node: topo.Node, faults: tuple[str, ...], kube_proxy: bool, fam: Family = V4
) -> str:
    """The node's iptables ruleset (iptables-restore input): flannel's masquerading, the
    lab's policy fault, and kube-proxy's rules when it runs in iptables mode."""
    nat, filt = _flannel_nat(fam), _policy(node, faults, fam)
    if kube_proxy and _proxy_runs(node, faults):
        kp_nat, kp_filt = _kube_proxy_iptables(faults, fam)
        nat, filt = kp_nat + nat, filt + kp_filt
    return "*nat\n" + "\n".join(nat) + "\nCOMMIT\n*filter\n" + "\n".join(filt) + "\nCOMMIT\n"


def ip6tables_rules(node: topo.Node, faults: tuple[str, ...]) -> str:
    """The dual-stack shape's IPv6 twin (kube-proxy runs one proxier per family)."""
    return iptables_rules(node, faults, True, V6)


def nft_rules(node: topo.Node, faults: tuple[str, ...]) -> str:
    """kube-proxy's nftables mode as an `nft -f` script: its own `ip kube-proxy` table,
    Services in a verdict map, one chain per Service and per endpoint (replaced whole)."""
    head = "table ip kube-proxy\ndelete table ip kube-proxy\n"
    if not _proxy_runs(node, faults):
        return head
    services, rejects, chains = [], [], []
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
            picks = []
            for i, ep in enumerate(eps):
                ep_chain = chain_name("endpoint", label + ep.ip)
                picks.append(f"{i} : goto {ep_chain}")
                chains.append(
                    f"  chain {ep_chain} {{\n"
                    f'    comment "{label} -> {ep.ip}:{port.target}"\n'
                    f"    ip saddr {ep.ip} jump mark-for-masquerade\n"
                    f"    meta l4proto {proto} dnat to {ep.ip}:{port.target}\n  }}"
                )
            chains.append(
                f"  chain {svc_chain} {{\n"
                f'    comment "{label}"\n'
                f"    numgen inc mod {len(eps)} vmap {{ {', '.join(picks)} }}\n  }}"
            )

    def verdicts(name: str, elements: list[str]) -> str:
        body = f" elements = {{ {', '.join(elements)} }}" if elements else ""
        return (
            f"  map {name} {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n"
            f"   {body}\n  }}"
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
            verdicts("service-ips", services),
            verdicts("no-endpoint-services", rejects),
            "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }",
            "  chain service-endpoints-check {\n"
            "    ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }",
            "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; "
            "policy accept;\n    jump services\n  }",
            "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n"
            "    jump services\n  }",
            "  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; "
            "policy accept;\n    jump masquerading\n  }",
            "  chain filter-forward {\n    type filter hook forward priority -110; "
            "policy accept;\n    ct state new jump service-endpoints-check\n  }",
            "  chain filter-output {\n    type filter hook output priority -110; "
            "policy accept;\n    ct state new jump service-endpoints-check\n  }",
            "}",
            "",
        ]
    )
