"""How IPs become names: pods, Services (ClusterIPs, LoadBalancer addresses, NodePorts) and
nodes from a bundle's inventory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ktrace.bundle.inventory import Inventory


class NameKind(StrEnum):
    """What an address is in the cluster."""

    POD = "pod"
    SERVICE = "service"  # a ClusterIP
    NODE = "node"
    LB = "lb"  # a LoadBalancer address: arrives before any DNAT

    @property
    def prefix(self) -> str:
        """How a name of this kind is written: pods bare, the others with their kind."""
        return {NameKind.POD: "", NameKind.SERVICE: "svc "}.get(self, f"{self.value} ")


@dataclass(frozen=True)
class Named:
    """What an address is in the cluster: a pod, a Service, a node, a load balancer."""

    kind: NameKind
    name: str  # "namespace/name" for pods and Services
    node: str | None = None

    def __str__(self) -> str:
        return self.kind.prefix + self.name


@dataclass(frozen=True)
class Exposure:
    """A Service port reachable from outside the cluster: a NodePort on every node, or a
    LoadBalancer address."""

    service: str  # namespace/name
    policy: str  # externalTrafficPolicy: Cluster (SNAT, any node forwards) | Local
    nodes: frozenset[str]  # nodes with a ready endpoint
    health_port: int  # healthCheckNodePort (Local), 0 if none


@dataclass(frozen=True)
class Names:
    """The cluster's inventory as lookups: addresses to names, Services to endpoints."""

    by_ip: dict[str, Named] = field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    # ClusterIP -> the nodes of its ready endpoints (where a packet to it must go); none:
    # its EndpointSlices list no ready endpoint
    endpoint_nodes: dict[str, frozenset[str]] = field(default_factory=dict)
    node_ports: dict[int, Exposure] = field(default_factory=dict)
    lb_ports: dict[tuple[str, int], Exposure] = field(default_factory=dict)
    health_ports: dict[int, Exposure] = field(default_factory=dict)  # on every node
    pod_cidrs: tuple[tuple[str, str], ...] = ()  # (CIDR, node)

    @classmethod
    def from_inventory(cls, inventory: Inventory | None) -> Names:
        if inventory is None:
            return cls()
        by_ip: dict[str, Named] = {}
        for n in inventory.nodes:
            for ip in (n.internal_ip, n.external_ip):
                if ip:
                    by_ip[ip] = Named(NameKind.NODE, n.name, n.name)
        for p in inventory.pods:
            if not p.host_network:
                for ip in p.ips:
                    by_ip[ip] = Named(NameKind.POD, f"{p.namespace}/{p.name}", p.node or None)
        for s in inventory.services:
            for ip in s.cluster_ips:
                by_ip[ip] = Named(NameKind.SERVICE, f"{s.namespace}/{s.name}")
            for ip in s.lb_ips:
                by_ip[ip] = Named(NameKind.LB, f"{s.namespace}/{s.name}")
        canonical = {_canonical(ip): named for ip, named in by_ip.items()}
        ready = _ready_nodes(inventory)
        node_ports, lb_ports = _exposures(inventory, ready)
        return cls(
            canonical,
            inventory.cluster_domain,
            _endpoint_nodes(inventory, ready),
            node_ports,
            lb_ports,
            {e.health_port: e for e in node_ports.values() if e.health_port},
            tuple((n.pod_cidr, n.name) for n in inventory.nodes if n.pod_cidr),
        )

    def host_of(self, ip: str) -> str | None:
        """The node an address belongs to: its own address, or one from its pod CIDR that is
        no pod's (the bridge, tunnel or gateway address SNAT uses)."""
        named = self.by_ip.get(ip)
        if named is not None:
            return named.node if named.kind is NameKind.NODE else None
        addr = ipaddress.ip_address(ip)
        for cidr, node in self.pod_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if addr.version == net.version and addr in net:
                return node
        return None

    def exposure(self, ip: str, port: int) -> Exposure | None:
        """The Service behind ip:port when it is a NodePort of a node or a LoadBalancer
        address's port."""
        named = self.by_ip.get(ip)
        if named is None:
            return None
        if named.kind is NameKind.NODE:
            return self.node_ports.get(port)
        return self.lb_ports.get((ip, port)) if named.kind is NameKind.LB else None

    def health_check(self, ip: str, port: int) -> Exposure | None:
        """The Service whose health check node port ip:port is (ip: a node's address)."""
        named = self.by_ip.get(ip)
        on_node = named is not None and named.kind is NameKind.NODE
        return self.health_ports.get(port) if on_node else None

    def node_of(self, ip: str) -> str | None:
        named = self.by_ip.get(ip)
        return named.node if named else None

    def get(self, ip: str) -> Named | None:
        return self.by_ip.get(ip)

    def label(self, endpoint: str) -> str:
        """'10.96.0.20:80' -> '10.96.0.20:80 (svc default/web)'."""
        ip = (
            endpoint.rsplit(":", 1)[0].strip("[]")
            if endpoint.count(":") == 1 or endpoint.startswith("[")
            else endpoint
        )
        named = self.by_ip.get(ip)
        if named is not None and named.kind is NameKind.NODE and endpoint != ip:
            port = int(endpoint.rsplit(":", 1)[1])
            exposed = self.node_ports.get(port)
            if exposed is not None:
                return f"{endpoint} (NodePort {exposed.service} on {named.name})"
            checked = self.health_ports.get(port)
            if checked is not None:
                return f"{endpoint} (health check of {checked.service} on {named.name})"
        return f"{endpoint} ({named})" if named else endpoint

    def is_service(self, ip: str) -> bool:
        named = self.by_ip.get(ip)
        return named is not None and named.kind is NameKind.SERVICE

    def services(self) -> set[str]:
        return {ip for ip, n in self.by_ip.items() if n.kind is NameKind.SERVICE}


def service_of_name(qname: str, names: Names) -> str | None:
    """ "namespace/name" of the Service a cluster DNS name is for (NAME.NS.svc.DOMAIN, or a
    headless Service's POD.NAME.NS.svc.DOMAIN), or None for other names."""
    parts = qname.rstrip(".").split(".")
    suffix = ["svc", *names.cluster_domain.split(".")]
    if len(parts) < len(suffix) + 2 or parts[-len(suffix) :] != suffix:
        return None
    return f"{parts[-len(suffix) - 1]}/{parts[-len(suffix) - 2]}"


def _canonical(ip: str) -> str:
    """The address as ktrace prints it (IPv6 compressed), whatever form the API gave."""
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _ready_nodes(inventory: Inventory) -> dict[tuple[str, str], frozenset[str]]:
    """(namespace, Service) -> the nodes of its ready endpoints."""
    nodes_of: dict[tuple[str, str], set[str]] = {}
    for sl in inventory.slices:  # one slice per address family
        nodes = nodes_of.setdefault((sl.namespace, sl.service), set())
        nodes.update(e.node for e in sl.endpoints if e.ready and e.node)
    return {k: frozenset(v) for k, v in nodes_of.items()}


def _endpoint_nodes(
    inventory: Inventory, ready: dict[tuple[str, str], frozenset[str]]
) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for s in inventory.services:
        nodes = ready.get((s.namespace, s.name))
        if nodes is not None:  # an empty set: its slices list no ready endpoint
            out.update({_canonical(ip): nodes for ip in s.cluster_ips})
    return out


def _exposures(
    inventory: Inventory, ready: dict[tuple[str, str], frozenset[str]]
) -> tuple[dict[int, Exposure], dict[tuple[str, int], Exposure]]:
    node_ports: dict[int, Exposure] = {}
    lb_ports: dict[tuple[str, int], Exposure] = {}
    for s in inventory.services:
        if s.type not in ("NodePort", "LoadBalancer"):
            continue
        exposed = Exposure(
            f"{s.namespace}/{s.name}",
            s.external_traffic_policy,
            ready.get((s.namespace, s.name), frozenset()),
            s.health_check_node_port,
        )
        for port in s.ports:
            if port.node_port:
                node_ports[port.node_port] = exposed
            for ip in s.lb_ips:
                lb_ports[(_canonical(ip), port.port)] = exposed
    return node_ports, lb_ports
