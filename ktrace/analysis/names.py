"""How IPs become names: pods, Services (ClusterIPs) and nodes from a bundle's inventory."""

from __future__ import annotations

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
            if p.get("ip") and not p.get("hostNetwork"):
                by_ip[p["ip"]] = Named("pod", f"{p['namespace']}/{p['name']}", p.get("node"))
        for s in inventory.get("services", []):
            ip = s.get("clusterIP")
            if ip and ip != "None":
                by_ip[ip] = Named("service", f"{s['namespace']}/{s['name']}")
        return cls(
            by_ip, inventory.get("clusterDomain", "cluster.local"), _endpoint_nodes(inventory)
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


def _endpoint_nodes(inventory: dict[str, Any]) -> dict[str, frozenset[str]]:
    ips = {
        (s["namespace"], s["name"]): s.get("clusterIP")
        for s in inventory.get("services", [])
        if s.get("clusterIP") not in (None, "None")
    }
    out: dict[str, set[str]] = {}
    for sl in inventory.get("endpointslices", []):
        ip = ips.get((sl.get("namespace"), sl.get("service")))
        if ip is None:
            continue
        nodes = out.setdefault(ip, set())
        nodes.update(e["node"] for e in sl.get("endpoints", []) if e.get("ready") and e.get("node"))
    return {ip: frozenset(nodes) for ip, nodes in out.items() if nodes}
