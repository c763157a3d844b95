"""The cluster as a bundle's inventory.json records it: nodes, pods, Services and their
endpoint slices, read once into frozen records. A missing field takes its Kubernetes
default; an entry that is not the shape the file promises is left out and counted."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class InventoryNode:
    name: str
    internal_ip: str = ""
    external_ip: str = ""
    pod_cidr: str = ""


@dataclass(frozen=True)
class InventoryPod:
    namespace: str
    name: str
    node: str = ""
    ips: tuple[str, ...] = ()  # one per address family, podIP first
    host_network: bool = False


@dataclass(frozen=True)
class ServicePort:
    port: int
    node_port: int = 0


@dataclass(frozen=True)
class InventoryService:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()  # one per address family; none for a headless Service
    lb_ips: tuple[str, ...] = ()  # what a load balancer answers on
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    ports: tuple[ServicePort, ...] = ()


@dataclass(frozen=True)
class InventoryEndpoint:
    ip: str
    node: str = ""
    ready: bool = False  # a slice that does not say is not ready


@dataclass(frozen=True)
class InventorySlice:
    namespace: str
    service: str
    endpoints: tuple[InventoryEndpoint, ...] = ()


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[InventoryNode, ...] = ()
    pods: tuple[InventoryPod, ...] = ()
    services: tuple[InventoryService, ...] = ()
    slices: tuple[InventorySlice, ...] = ()
    cluster_domain: str = "cluster.local"
    unreadable: int = 0  # entries left out: not the shape inventory.json gives them

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Inventory:
        """The records of inventory.json's object (as `kubectl ktrace capture` writes it)."""
        left_out = [0]

        def each(key: str, read: Callable[[dict[str, Any]], T]) -> tuple[T, ...]:
            entries = data.get(key)
            out = []
            for entry in entries if isinstance(entries, list) else []:
                try:
                    out.append(read(entry))
                except (KeyError, TypeError, ValueError, AttributeError):
                    left_out[0] += 1
            return tuple(out)

        return cls(
            each("nodes", _node),
            each("pods", _pod),
            each("services", _service),
            each("endpointslices", _slice),
            str(data.get("clusterDomain") or "cluster.local"),
            left_out[0],
        )


def _texts(values: Iterable[Any]) -> tuple[str, ...]:
    """The non-empty addresses, each once, in order."""
    return tuple(dict.fromkeys(str(v) for v in values if v not in (None, "", "None")))


def _node(n: dict[str, Any]) -> InventoryNode:
    return InventoryNode(
        str(n["name"]),
        str(n.get("internalIP") or ""),
        str(n.get("externalIP") or ""),
        str(n.get("podCIDR") or ""),
    )


def _pod(p: dict[str, Any]) -> InventoryPod:
    return InventoryPod(
        str(p["namespace"]),
        str(p["name"]),
        str(p.get("node") or ""),
        _texts([p.get("ip"), *(p.get("ips") or [])]),
        bool(p.get("hostNetwork")),
    )


def _service(s: dict[str, Any]) -> InventoryService:
    return InventoryService(
        str(s["namespace"]),
        str(s["name"]),
        str(s.get("type") or "ClusterIP"),
        _texts([s.get("clusterIP"), *(s.get("clusterIPs") or [])]),
        _texts(s.get("loadBalancerIPs") or []),
        str(s.get("externalTrafficPolicy") or "Cluster"),
        int(s.get("healthCheckNodePort") or 0),
        tuple(
            ServicePort(int(p["port"]), int(p.get("nodePort") or 0)) for p in s.get("ports") or []
        ),
    )


def _slice(sl: dict[str, Any]) -> InventorySlice:
    return InventorySlice(
        str(sl.get("namespace", "")),
        str(sl.get("service", "")),
        tuple(
            InventoryEndpoint(
                str(e.get("ip") or ""), str(e.get("node") or ""), bool(e.get("ready"))
            )
            for e in sl.get("endpoints") or []
        ),
    )
