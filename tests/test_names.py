"""Addresses to names from an inventory: NodePorts, LoadBalancer addresses and health check
ports as a Service of type NodePort/LoadBalancer exposes them, read from the API's objects."""

from __future__ import annotations

from typing import Any

from ktrace.analysis.names import Names
from ktrace.kube.targets import _service_entry


def api_service(**spec: Any) -> dict[str, Any]:
    ingress = spec.pop("ingress", [])
    return {
        "metadata": {"name": "shop", "namespace": "prod"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.0.40.7",
            "clusterIPs": ["10.0.40.7"],
            "ports": [{"name": "https", "port": 443, "targetPort": 8443, "nodePort": 31443}],
            **spec,
        },
        "status": {"loadBalancer": {"ingress": ingress}},
    }


def inventory(*services: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {"name": "ip-10-1-0-11", "internalIP": "10.1.0.11"},
            {"name": "ip-10-1-0-12", "internalIP": "10.1.0.12"},
        ],
        "pods": [
            {"name": "shop-0", "namespace": "prod", "ip": "192.168.7.3", "node": "ip-10-1-0-12"}
        ],
        "services": [_service_entry(s) for s in services],
        "endpointslices": [
            {
                "service": "shop",
                "namespace": "prod",
                "endpoints": [
                    {"ip": "192.168.7.3", "pod": "shop-0", "node": "ip-10-1-0-12", "ready": True}
                ],
            }
        ],
    }


def test_a_load_balancer_service_read_from_the_api() -> None:
    entry = _service_entry(
        api_service(
            externalTrafficPolicy="Local",
            healthCheckNodePort=30990,
            # a hostname-only ingress (an AWS NLB) has no address to match packets with
            ingress=[{"ip": "203.0.113.9"}, {"hostname": "shop.elb.example"}],
        )
    )
    assert entry["type"] == "LoadBalancer"
    assert entry["externalTrafficPolicy"] == "Local"
    assert entry["loadBalancerIPs"] == ["203.0.113.9"]
    assert entry["healthCheckNodePort"] == 30990
    assert entry["ports"][0]["nodePort"] == 31443
    plain = _service_entry({"metadata": {"name": "db", "namespace": "prod"}, "spec": {}})
    assert (plain["type"], plain["loadBalancerIPs"], plain["healthCheckNodePort"]) == (
        "ClusterIP",
        [],
        0,
    )


def test_node_ports_and_load_balancer_addresses_are_named() -> None:
    names = Names.from_inventory(
        inventory(
            api_service(
                externalTrafficPolicy="Local",
                healthCheckNodePort=30990,
                ingress=[{"ip": "203.0.113.9"}],
            )
        )
    )
    assert names.label("10.1.0.11:31443") == "10.1.0.11:31443 (NodePort prod/shop on ip-10-1-0-11)"
    assert names.label("10.1.0.11:30990") == (
        "10.1.0.11:30990 (health check of prod/shop on ip-10-1-0-11)"
    )
    assert names.label("10.1.0.11:22") == "10.1.0.11:22 (node ip-10-1-0-11)"
    # a LoadBalancer address is not a ClusterIP: packets to it arrive before any DNAT
    assert names.label("203.0.113.9:443") == "203.0.113.9:443 (lb prod/shop)"
    assert not names.is_service("203.0.113.9")
    exposed = names.exposure("203.0.113.9", 443)
    assert exposed is not None and exposed == names.exposure("10.1.0.12", 31443)
    assert (exposed.service, exposed.policy, exposed.nodes) == (
        "prod/shop",
        "Local",
        frozenset({"ip-10-1-0-12"}),
    )
    assert names.exposure("203.0.113.9", 80) is None
    assert names.exposure("192.168.7.3", 31443) is None  # a pod's port is no NodePort
    assert names.health_check("10.1.0.12", 30990) == exposed


def test_a_cluster_ip_service_exposes_nothing() -> None:
    names = Names.from_inventory(inventory(api_service(type="ClusterIP", ports=[{"port": 443}])))
    assert names.exposure("10.1.0.11", 31443) is None
    assert names.node_ports == {} and names.lb_ports == {}


def test_an_address_of_a_node_pod_cidr_belongs_to_that_node() -> None:
    inv = inventory()
    inv["nodes"][0]["podCIDR"] = "192.168.6.0/24"
    inv["nodes"][1]["podCIDR"] = "192.168.7.0/24"
    names = Names.from_inventory(inv)
    assert names.host_of("192.168.6.0") == "ip-10-1-0-11"  # flannel.1's address: SNAT's source
    assert names.host_of("10.1.0.12") == "ip-10-1-0-12"
    assert names.host_of("192.168.7.3") is None  # a pod is not its node
    assert names.host_of("8.8.8.8") is None and names.host_of("fd00::1") is None
