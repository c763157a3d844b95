"""What the lab cluster looks like: nodes, pods, Services and which interface is which.

Addresses follow a kind + flannel cluster: nodes on a docker-style underlay 172.18.0.0/16,
pod CIDRs 10.244.N.0/24, Services in 10.96.0.0/12, flannel's VXLAN (VNI 1, UDP 8472).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

UNDERLAY = "172.18.0.0/16"
UNDERLAY_GW = "172.18.0.1"
UPSTREAM_DNS = "172.18.0.100"
# A client outside the cluster on the nodes' network, as a laptop, a load balancer's health
# checker or another VPC's machine is: in no pod CIDR, no kube-proxy, no cluster DNS.
OUTSIDE = "172.18.0.50"
CLUSTER_CIDR = "10.244.0.0/16"
VNI = 1
VXLAN_PORT = 8472
MTU = 1500
FLANNEL_MTU = 1450  # what flannel configures: the underlay MTU less the VXLAN overhead


@dataclass(frozen=True)
class Shape:
    """How packets move between pods: what differs between CNIs."""

    name: str
    bridge: bool  # pods' host-side veths on a cni0 bridge (else routed /32 veths, proxy ARP)
    overlay: bool  # flannel-style VXLAN between nodes (else pod CIDRs routed on the underlay)
    proxy: str  # kube-proxy's mode: iptables | nftables
    about: str
    dual_stack: bool = False  # pods, Services and nodes have IPv6 addresses too


SHAPES = {
    s.name: s
    for s in (
        Shape("flannel", True, True, "iptables", "cni0 bridge, VXLAN overlay (flannel, kind)"),
        Shape(
            "routed",
            False,
            True,
            "nftables",
            "routed /32 veths with proxy ARP and a link-local gateway, VXLAN between nodes "
            "(Calico and Cilium style), kube-proxy in nftables mode",
        ),
        Shape(
            "native",
            True,
            False,
            "iptables",
            "cni0 bridge, pod CIDRs routed between nodes on the underlay, no overlay "
            "(VPC-native and native-routing style), dual-stack (IPv6 pods and Services)",
            dual_stack=True,
        ),
    )
}
DEFAULT_SHAPE = "flannel"
LINK_LOCAL_GW = "169.254.1.1"  # the routed shape's gateway, answered by proxy ARP


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    pod_cidr: str
    gateway: str  # cni0 address
    flannel_mac: str

    @property
    def flannel_ip(self) -> str:
        return self.pod_cidr.split("/")[0]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    node: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    veth: str = ""  # host-side interface on the node

    @property
    def uid(self) -> str:
        return f"00000000-0000-4000-8000-{abs(hash(self.name)) % 10**12:012d}"


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    target: int
    protocol: str = "TCP"
    node_port: int = 0


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[Port, ...]
    selector: dict[str, str]
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer
    external_policy: str = "Cluster"  # externalTrafficPolicy: Cluster | Local
    lb_ip: str = ""  # the LoadBalancer address on the underlay
    announcer: str = ""  # the node that answers ARP for lb_ip (MetalLB L2 mode)
    health_port: int = 0  # healthCheckNodePort (Local policy)

    @property
    def external(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")


NODES = (
    Node("node-a", "172.18.0.2", "10.244.0.0/24", "10.244.0.1", "0e:6b:74:00:00:0a"),
    Node("node-b", "172.18.0.3", "10.244.1.0/24", "10.244.1.1", "0e:6b:74:00:00:0b"),
)
PODS = (
    Pod("client", "default", "node-a", "10.244.0.2", {"app": "client"}, "veth2a1c0e11"),
    Pod("web-1", "default", "node-a", "10.244.0.3", {"app": "web"}, "veth3b7f21d4"),
    Pod("web-2", "default", "node-b", "10.244.1.2", {"app": "web", "tier": "edge"}, "veth4c9e8a07"),
    Pod("coredns", "kube-system", "node-b", "10.244.1.3", {"k8s-app": "kube-dns"}, "veth5d0a3f92"),
)
SERVICES = (
    Service(
        "kube-dns",
        "kube-system",
        "10.96.0.10",
        (Port("dns", 53, 53, "UDP"), Port("dns-tcp", 53, 53, "TCP")),
        {"k8s-app": "kube-dns"},
    ),
    Service(
        "web",
        "default",
        "10.96.0.20",
        (Port("http", 80, 80, node_port=30080),),
        {"app": "web"},
        type="LoadBalancer",
        lb_ip="172.18.255.200",
        announcer="node-a",
    ),
    # One endpoint (web-2 on node-b) and externalTrafficPolicy Local: only node-b serves it,
    # without SNAT; node-a drops what reaches it, as kube-proxy does.
    Service(
        "edge",
        "default",
        "10.96.0.30",
        (Port("http", 80, 80, node_port=30081),),
        {"app": "web", "tier": "edge"},
        type="LoadBalancer",
        external_policy="Local",
        lb_ip="172.18.255.201",
        announcer="node-b",
        health_port=32081,
    ),
)
# A hostNetwork pod (a node agent): it shares node-a's network namespace and address.
HOST_PODS = (Pod("agent", "kube-system", "node-a", "172.18.0.2", {"app": "agent"}),)
CLIENT_RESOLV = (
    "search default.svc.cluster.local svc.cluster.local cluster.local\n"
    "nameserver 10.96.0.10\n"
    "options ndots:5\n"
)
# Names the upstream resolver answers (the "internet" as seen from the cluster).
UPSTREAM_ZONE = {
    "example.com": {"A": "93.184.216.34", "AAAA": "2606:2800:220:1::248"},
    "www.example.com": {"A": "93.184.216.34"},
}


def v6(ip: str) -> str:
    """The dual-stack shape's IPv6 twin of an IPv4 address: 10.244.1.2 -> fd00:10:244:1::2,
    10.96.0.20 -> fd00:10:96::20, 172.18.0.3 -> fd00:172:18::3."""
    a, b, c, d = ip.split(".")
    text = f"fd00:{a}:{b}:{c}::{d}" if a == "10" and b == "244" else f"fd00:{a}:{b}::{d}"
    return ipaddress.IPv6Address(text).compressed


def v6_cidr(pod_cidr: str) -> str:
    a, b, c, _ = pod_cidr.split("/")[0].split(".")
    return str(ipaddress.IPv6Network(f"fd00:{a}:{b}:{c}::/64"))


def node(name: str) -> Node:
    return next(n for n in NODES if n.name == name)


def pod(name: str) -> Pod:
    return next(p for p in PODS if p.name == name)


def endpoints(service: Service, faults: Collection[str] = ()) -> list[Pod]:
    """The Service's ready endpoints: none for web while the no-endpoints fault is on."""
    if service.name == "web" and "no-endpoints" in faults:
        return []
    return [p for p in PODS if all(p.labels.get(k) == v for k, v in service.selector.items())]


def inventory(dual_stack: bool = False, faults: Collection[str] = ()) -> dict[str, object]:
    """Pods, Services, endpoint slices and nodes, as a bundle's inventory.json holds them,
    with the faults on (a Service without endpoints has an empty slice, as on a cluster)."""

    def both(ip: str) -> list[str]:
        return [ip, v6(ip)] if dual_stack else [ip]

    return {
        "nodes": [{"name": n.name, "internalIP": n.ip, "podCIDR": n.pod_cidr} for n in NODES],
        "pods": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "ip": p.ip,
                "ips": both(p.ip),
                "node": p.node,
                "labels": p.labels,
                "hostNetwork": p in HOST_PODS,
            }
            for p in PODS + HOST_PODS
        ],
        "services": [
            {
                "name": s.name,
                "namespace": s.namespace,
                "clusterIP": s.cluster_ip,
                "clusterIPs": both(s.cluster_ip),
                "ports": [
                    {
                        "name": p.name,
                        "port": p.port,
                        "target": p.target,
                        "protocol": p.protocol,
                        "nodePort": p.node_port,
                    }
                    for p in s.ports
                ],
                "type": s.type,
                "externalTrafficPolicy": s.external_policy if s.external else "",
                "loadBalancerIPs": [s.lb_ip] if s.lb_ip else [],
                "healthCheckNodePort": s.health_port,
            }
            for s in SERVICES
        ],
        "endpointslices": [
            {
                "service": s.name,
                "namespace": s.namespace,
                "endpoints": [
                    {"ip": both(p.ip)[family], "pod": p.name, "node": p.node, "ready": True}
                    for p in endpoints(s, faults)
                ],
                "ports": [asdict(p) for p in s.ports],
            }
            for s in SERVICES
            for family in range(2 if dual_stack else 1)  # a slice per address family
        ],
    }
