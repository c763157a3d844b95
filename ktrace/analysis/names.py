"""How IPs become names: pods, Services (ClusterIPs) and nodes from a bundle's inventory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Named:
    kind: str  # pod | service | node
    name: str  # "namespace/name" for pods and Services
    node: str | None = None

    def __str__(self) -> str:
        return {"pod": "", "service": "svc ", "node": "node "}[self.kind] + self.name


@dataclass(frozen=True)
class Names:
    by_ip: dict[str, Named] = field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    # ClusterIP -> the nodes of its ready endpoints (where a packet to it must go)
    endpoint_nodes: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_inventory(cls, inventory: dict[str, Any] | None) -> Names:
        if not inventory:
            return cls()
        by_ip: dict[str, Named] = {}
        for n in inventory.get("nodes", []):
            for key in ("internalIP", "externalIP"):
                if n.get(key):
                    by_ip[n[key]] = Named("node", n["name"], n["name"])
        for p in inventory.get("pods", []):
            if p.get("hostNetwork"):
                continue
            for ip in {p.get("ip"), *p.get("ips", [])} - {None, ""}:
                by_ip[ip] = Named("pod", f"{p['namespace']}/{p['name']}", p.get("node"))
        for s in inventory.get("services", []):
            for ip in _cluster_ips(s):
                by_ip[ip] = Named("service", f"{s['namespace']}/{s['name']}")
        canonical = {_canonical(ip): named for ip, named in by_ip.items()}
        return cls(
            canonical, inventory.get("clusterDomain", "cluster.local"), _endpoint_nodes(inventory)
        )

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
        return f"{endpoint} ({named})" if named else endpoint

    def is_service(self, ip: str) -> bool:
        named = self.by_ip.get(ip)
        return named is not None and named.kind == "service"

    def services(self) -> set[str]:
        return {ip for ip, n in self.by_ip.items() if n.kind == "service"}


def _canonical(ip: str) -> str:
    """The address as ktrace prints it (IPv6 compressed), whatever form the API gave."""
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _cluster_ips(service: dict[str, Any]) -> set[str]:
    """A Service's ClusterIPs: one per family on a dual-stack cluster."""
    return {service.get("clusterIP"), *service.get("clusterIPs", [])} - {None, "", "None"}


def _endpoint_nodes(inventory: dict[str, Any]) -> dict[str, frozenset[str]]:
    nodes_of: dict[tuple[str, str], set[str]] = {}
    for sl in inventory.get("endpointslices", []):  # one slice per address family
        nodes = nodes_of.setdefault((sl.get("namespace", ""), sl.get("service", "")), set())
        nodes.update(e["node"] for e in sl.get("endpoints", []) if e.get("ready") and e.get("node"))
    out: dict[str, frozenset[str]] = {}
    for s in inventory.get("services", []):
        ready = nodes_of.get((s["namespace"], s["name"]))
        if ready:
            out.update({_canonical(ip): frozenset(ready) for ip in _cluster_ips(s)})
    return out
