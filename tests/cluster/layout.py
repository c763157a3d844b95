"""What the real cluster looks like: its addresses, nodes and where everything is kept.

Deliberately not the lab's addresses or shape (the lab is one cluster among many): nodes on
192.168.56.0/24, pod CIDRs routed between the nodes with no overlay, a /16 of Services.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE = Path("/run/ktrace-cluster")  # pids, the running cluster's settings
DATA = Path("/var/lib/ktrace-cluster")  # certificates, etcd, each node's runtime and logs
BRIDGE = "ktc0"  # the nodes' network, in the machine's own network namespace
GATEWAY = "192.168.56.1"  # the API server listens here
PREFIX = 24
UPSTREAM = "192.168.56.53"  # the DNS server CoreDNS forwards to, in a namespace of its own
UPSTREAM_NS = "ktc-upstream"
API_PORT = 6443
ETCD_CLIENT = "127.0.0.1:23790"
ETCD_PEER = "127.0.0.1:23800"
CLUSTER_CIDR = "10.32.0.0/16"
SERVICE_CIDR = "10.100.0.0/16"
API_VIP = "10.100.0.1"
DNS_VIP = "10.100.0.10"
WEB_VIP = "10.100.0.80"
DOMAIN = "cluster.local"
# names an outside DNS server answers, as the internet would
EXTERNAL_NAMES = {"example.com": "192.168.56.200", "ktrace.example": "192.168.56.201"}


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    pod_cidr: str

    @property
    def netns(self) -> str:
        return f"ktc-{self.name}"

    @property
    def host_veth(self) -> str:
        return f"ktc-{self.name}"

    @property
    def data(self) -> Path:
        return DATA / self.name

    @property
    def run(self) -> Path:
        return STATE / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        """Where this kubelet keeps its pods' cgroups: two kubelets share one hierarchy."""
        return f"/ktrace-{self.name}"


NODES = (
    Node("node-a", "192.168.56.11", "10.32.0.0/24"),
    Node("node-b", "192.168.56.12", "10.32.1.0/24"),
)
