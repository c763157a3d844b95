"""Addresses to names from an inventory: NodePorts, LoadBalancer addresses and health check
ports as a Service of type NodePort/LoadBalancer exposes them, read from the API's objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktrace.analysis.names import Names
from ktrace.bundle.inputs import read_inputs
from ktrace.bundle.inventory import Inventory
from ktrace.bundle.manifest import Manifest, PointSpec, write_json, write_manifest
from ktrace.kube.targets import _service_entry
from ktrace.model import PointKind
from ktrace.pcap.writer import PcapWriter


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
        Inventory.parse(
            inventory(
                api_service(
                    externalTrafficPolicy="Local",
                    healthCheckNodePort=30990,
                    ingress=[{"ip": "203.0.113.9"}],
                )
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
    names = Names.from_inventory(
        Inventory.parse(inventory(api_service(type="ClusterIP", ports=[{"port": 443}])))
    )
    assert names.exposure("10.1.0.11", 31443) is None
    assert names.node_ports == {} and names.lb_ports == {}


def test_an_address_of_a_node_pod_cidr_belongs_to_that_node() -> None:
    inv = inventory()
    inv["nodes"][0]["podCIDR"] = "192.168.6.0/24"
    inv["nodes"][1]["podCIDR"] = "192.168.7.0/24"
    names = Names.from_inventory(Inventory.parse(inv))
    assert names.host_of("192.168.6.0") == "ip-10-1-0-11"  # flannel.1's address: SNAT's source
    assert names.host_of("10.1.0.12") == "ip-10-1-0-12"
    assert names.host_of("192.168.7.3") is None  # a pod is not its node
    assert names.host_of("8.8.8.8") is None and names.host_of("fd00::1") is None


def test_inventory_entries_not_as_written_are_left_out_and_counted(tmp_path: Path) -> None:
    """An inventory from another tool or an older ktrace: what is readable names addresses,
    each entry that is not is counted, and the analysis says so in one note."""
    data = inventory()
    data["pods"] += [{"name": "no-namespace", "ip": "192.168.7.4"}, "not an object"]
    data["services"] = [{"name": "web", "namespace": "prod", "ports": [{"port": "http"}]}]
    read = Inventory.parse(data)
    assert read.unreadable == 3 and [p.name for p in read.pods] == ["shop-0"]
    names = Names.from_inventory(read)
    assert names.label("192.168.7.3:80") == "192.168.7.3:80 (prod/shop-0)"
    assert names.label("192.168.7.4:80") == "192.168.7.4:80"
    bundle = tmp_path / "bundle"
    (bundle / "points").mkdir(parents=True)
    write_manifest(bundle, Manifest((PointSpec("p", PointKind.POD, "points/p.pcap"),)))
    PcapWriter(bundle / "points" / "p.pcap", 1).close()
    write_json(bundle / "inventory.json", data)
    notes = read_inputs([bundle]).notes
    assert [n for n in notes if "inventory.json" in n] == [
        f"{bundle}: 3 entries of inventory.json not as ktrace writes them: left out, "
        "their addresses shown without names"
    ]
