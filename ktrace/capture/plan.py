"""Where to capture: each pod's eth0 (in its ephemeral container), and on each involved node
the pod's veth (found through the pod's `iflink`), the NIC that holds the node's address and
the overlay device (VXLAN, Geneve, IPIP), found from what `ip -d link` shows there."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ktrace.capture import tcpdump
from ktrace.capture.point import Plan
from ktrace.errors import ClusterError
from ktrace.kube.api import Api
from ktrace.kube.debug import Container
from ktrace.kube.execstream import run
from ktrace.kube.targets import Pod
from ktrace.model import PointKind

LINK = re.compile(r"^(\d+):\s+([^:@\s]+)(?:@[^:\s]+)?:\s")
OVERLAY_KINDS = ("vxlan", "geneve", "ipip")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # vxlan | geneve | ipip | veth | bridge | "" (physical or unknown)


def parse_links(text: str) -> list[Link]:
    """`ip -d -o link show`: one line per device, the kind among the details."""
    out = []
    for line in text.splitlines():
        m = LINK.match(line)
        if not m:
            continue
        # details come as backslash-separated segments; a segment's first word is its kind
        firsts = [seg.split()[0] for seg in line.split("\\")[1:] if seg.split()]
        kind = next((w for w in firsts if w in (*OVERLAY_KINDS, "veth", "bridge")), "")
        out.append(Link(int(m.group(1)), m.group(2), kind))
    return out


def nic_of(addr_text: str, ip: str) -> str | None:
    """The device that holds `ip`, from `ip -o -4 addr show`."""
    for line in addr_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet" and parts[3].split("/")[0] == ip:
            return parts[1]
    return None


def _check(api: Api, c: Container, argv: list[str]) -> str:
    result = run(api, c.namespace, c.pod, c.name, argv)
    if result.code != 0:
        err = result.stderr.decode("utf-8", "replace").strip()
        raise ClusterError(f"{' '.join(argv)} failed in {c.where}: {err or result.code}")
    return result.text


def pod_iflink(api: Api, c: Container) -> int:
    return int(_check(api, c, ["cat", "/sys/class/net/eth0/iflink"]).strip())


def pod_points(pod: Pod, c: Container, bpf: str, count: int | None) -> list[Plan]:
    return [
        Plan(
            id=f"{pod.name}-eth0",
            kind=PointKind.POD,
            node=pod.node,
            interface="eth0",
            container=c,
            bpf=bpf,
            namespace=pod.namespace,
            pod=pod.name,
            count=count,
        )
    ]


def node_points(
    api: Api,
    node: str,
    node_ip: str,
    c: Container,
    pods: list[tuple[Pod, int | None]],
    bpf: str,
) -> list[Plan]:
    """The veth of each pod on this node (by iflink), the NIC and the overlay devices."""
    links = parse_links(_check(api, c, ["ip", "-d", "-o", "link", "show"]))
    by_index = {link.index: link for link in links}
    nic = nic_of(_check(api, c, ["ip", "-o", "-4", "addr", "show"]), node_ip)
    overlays = [link for link in links if link.kind in OVERLAY_KINDS]
    plans = []
    for pod, iflink in pods:
        peer = by_index.get(iflink) if iflink is not None else None
        if peer is None:
            continue
        plans.append(
            Plan(
                id=f"{pod.name}-veth",
                kind=PointKind.VETH,
                node=node,
                interface=peer.name,
                container=c,
                bpf=bpf,
                namespace=pod.namespace,
                pod=pod.name,
                ifindex=peer.index,
            )
        )
    for dev in overlays:
        plans.append(
            Plan(
                id=f"{node}-{dev.name}",
                kind=PointKind.TUNNEL,
                node=node,
                interface=dev.name,
                container=c,
                bpf=bpf,
                ifindex=dev.index,
            )
        )
    if nic is not None:
        plans.append(
            Plan(
                id=f"{node}-{nic}",
                kind=PointKind.NODE,
                node=node,
                interface=nic,
                container=c,
                bpf=tcpdump.node_filter(bpf, encapsulated=bool(overlays)),
                ifindex=next((link.index for link in links if link.name == nic), None),
            )
        )
    return plans
