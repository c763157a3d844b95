"""The lab, end to end: real namespaces, real iptables, real tcpdump; assertions read the
captures with ktrace's own reader. Without root or netns support these skip and say why; CI
runs them as root."""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ktrace.bundle.manifest import read_manifest
from ktrace.decode.index import PacketIndex, build_index
from ktrace.decode.ip import ICMP_ERROR
from ktrace.decode.transport import ACK, SYN, TCP, UDP
from ktrace.report.json_report import json_document
from tests.helpers import EXPECTED, findings
from tests.lab import topology as topo
from tests.lab.lab import ETC_NETNS, Lab, unavailable
from tests.lab.record import SCENARIOS, capture_points, record, scenarios_for

WHY = unavailable()
pytestmark = [pytest.mark.lab, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

VIP = "10.96.0.20"
WEB2 = topo.pod("web-2").ip
CLIENT = topo.pod("client").ip


_RECORDED: dict[str, dict[str, Path]] = {}


def recordings(shape: str, factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every scenario recorded on a lab of this shape (once per test session)."""
    if shape not in _RECORDED:
        lab = Lab(shape=shape).up()
        try:
            root = factory.mktemp(shape)
            _RECORDED[shape] = {n: record(lab, n, root / n) for n in scenarios_for(lab)}
        finally:
            lab.down()
    return _RECORDED[shape]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default shape's recordings, for the assertions about its packets."""
    return recordings(topo.DEFAULT_SHAPE, tmp_path_factory)


class Capture:
    """One recorded bundle, read with ktrace's index; rows selected per capture point."""

    def __init__(self, bundle: Path) -> None:
        self.index: PacketIndex = build_index(sorted((bundle / "points").glob("*.pcap")), workers=1)
        self.ids = {p.id: k for k, p in enumerate(self.index.points)}
        self.c = self.index.columns

    def at(self, point: str) -> np.ndarray:
        return self.c.point == self.ids[point]

    def addr(self, ip: str) -> int:
        return int(ipaddress.IPv4Address(ip))

    def syns(self, point: str, dst: str, port: int) -> np.ndarray:
        """The client's SYNs (the lab's noise sends others: probes, background requests)."""
        c = self.c
        return np.flatnonzero(
            self.at(point)
            & (c.proto == TCP)
            & (c.src == self.addr(CLIENT))
            & (c.dst == self.addr(dst))
            & (c.dport == port)
            & ((c.tcp_flags & (SYN | ACK)) == SYN)
        )


def dns_at(bundle: Path, point: str) -> list[dict]:  # type: ignore[type-arg]
    from ktrace.analysis.pipeline import analyze

    data = json_document(analyze([bundle / "points" / f"{point}.pcap"], workers=1))
    return data["dns"]  # type: ignore[return-value]


def test_lab_comes_up_and_goes_away_without_leftovers() -> None:
    lab = Lab().up()
    names = lab.status()["namespaces"]
    # underlay, upstream, outside, the nodes and the pods
    assert len(names) == 3 + len(topo.NODES) + len(topo.PODS)  # type: ignore[arg-type]
    pids = lab.status()["processes"]
    assert pids
    description = json.loads((lab.state / "lab.json").read_text())
    assert {n["name"] for n in description["nodes"]} == {"node-a", "node-b"}
    assert description["namespaces"]["client"] == f"{lab.prefix}-client"
    lab.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.prefix not in listed
    assert not any(Path(f"/proc/{p}").exists() for p in pids)  # type: ignore[union-attr]
    assert not any(p.name.startswith(lab.prefix) for p in ETC_NETNS.iterdir())
    assert not lab.state.exists()
    lab.down()  # twice is fine


def test_bundle_layout_and_permissions(bundles: dict[str, Path]) -> None:
    bundle = bundles["healthy"]
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "complete"
    assert [p.id for p in manifest.points] == [p.id for p in capture_points()]
    assert all(p.packets and p.packets > 0 for p in manifest.points)
    for path in bundle.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    for node in ("node-a", "node-b"):
        rules = (bundle / "nodes" / node / "iptables-save.txt").read_text()
        assert "KUBE-SERVICES" in rules and f"{VIP}/32" in rules
    inventory = json.loads((bundle / "inventory.json").read_text())
    assert {s["clusterIP"] for s in inventory["services"]} == {s.cluster_ip for s in topo.SERVICES}
    web = next(s for s in inventory["services"] if s["name"] == "web")
    assert (web["type"], web["ports"][0]["nodePort"], web["loadBalancerIPs"]) == (
        "LoadBalancer",
        30080,
        ["172.18.255.200"],
    )


def test_healthy_call_is_dnat_ed_and_encapsulated(bundles: dict[str, Path]) -> None:
    cap = Capture(bundles["healthy"])
    c = cap.c
    # The client and its veth see the Service VIP: DNAT happens in the node, after the veth.
    assert len(cap.syns("client-eth0", VIP, 80)) == 2
    assert len(cap.syns("client-veth", VIP, 80)) == 2
    # On both node NICs the SYN to web-2 travels inside flannel's VXLAN, already DNAT-ed.
    for nic, outer in (
        ("node-a-eth0", ("172.18.0.2", "172.18.0.3")),
        ("node-b-eth0", ("172.18.0.2", "172.18.0.3")),
    ):
        rows = cap.syns(nic, WEB2, 80)
        assert len(rows) == 1, nic
        tunnel = cap.index.tunnels[int(c.tunnel[rows[0]]) - 1]
        assert (tunnel.kind, tunnel.vni, tunnel.port) == ("vxlan", 1, 8472)
        assert (tunnel.outer_src, tunnel.outer_dst) == outer
    assert len(cap.syns("web-2-veth", WEB2, 80)) == 1
    assert len(cap.syns("web-2-eth0", WEB2, 80)) == 1
    # The same SYN everywhere: same IP ID and sequence number at the client and at web-2.
    a, b = cap.syns("client-eth0", VIP, 80)[1], cap.syns("web-2-eth0", WEB2, 80)[0]
    assert (c.ipid[a], c.seq[a]) == (c.ipid[b], c.seq[b])


def test_dns_through_the_service_vip_resolves_service_names(bundles: dict[str, Path]) -> None:
    dns = dns_at(bundles["dns-search"], "client-eth0")
    answered = {(d["qname"], d["qtype"]): d for d in dns}
    web = answered[("web.default.svc.cluster.local", "A")]
    assert web["server"] == "10.96.0.10:53" and web["answers"] == [VIP]
    assert answered[("kube-dns.kube-system.svc.cluster.local", "A")]["answers"] == ["10.96.0.10"]
    # ndots:5 makes example.com cost three NXDOMAINs before the absolute query.
    for domain in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        assert answered[(f"example.com.{domain}", "A")]["rcode"] == "NXDOMAIN"
    assert answered[("example.com", "A")]["answers"] == ["93.184.216.34"]
    # Behind the VIP, the DNS pod sees the same queries DNAT-ed to its own address.
    assert any(
        d["server"] == f"{topo.pod('coredns').ip}:53"
        for d in dns_at(bundles["dns-search"], "coredns-eth0")
    )


def test_policy_drop_is_seen_on_the_node_but_never_at_the_pod(bundles: dict[str, Path]) -> None:
    cap = Capture(bundles["policy-drop"])
    assert len(cap.syns("client-eth0", VIP, 80)) >= 3  # the first call + SYN retries
    assert len(cap.syns("node-b-eth0", WEB2, 80)) >= 2  # arrives inside VXLAN, retried
    assert len(cap.syns("web-2-veth", WEB2, 80)) == 0
    assert len(cap.syns("web-2-eth0", WEB2, 80)) == 0


def test_no_endpoints_is_rejected_with_icmp(bundles: dict[str, Path]) -> None:
    cap = Capture(bundles["no-endpoints"])
    c, q = cap.c, cap.index.quotes
    errors = np.flatnonzero(cap.at("client-eth0") & ((c.ipflags & ICMP_ERROR) != 0))
    assert len(errors) == 1
    assert c.seq[errors[0]] == (3 << 8) | 3  # destination unreachable, port unreachable
    k = int(np.flatnonzero(q.row == errors[0])[0])
    assert (q.dst[k], q.dport[k], q.proto[k]) == (cap.addr(VIP), 80, TCP)
    assert len(cap.syns("node-b-eth0", WEB2, 80)) == 0


def test_mtu_black_hole_drops_big_encapsulated_packets(bundles: dict[str, Path]) -> None:
    cap = Capture(bundles["mtu-blackhole"])
    c = cap.c
    tunneled = c.tunnel > 0
    big = c.wirelen > 1400 + 14
    # web-2's full-size segments leave node-b inside VXLAN and never arrive at node-a...
    assert (cap.at("node-b-eth0") & tunneled & big).sum() > 0
    assert (cap.at("node-a-eth0") & tunneled & big).sum() == 0
    # ...while the small packets of the same connection do.
    from_web2 = (c.src == cap.addr(WEB2)) & (c.sport == 80)
    assert (cap.at("node-a-eth0") & from_web2 & ~big).sum() > 0
    assert (cap.at("node-b-eth0") & from_web2 & big).sum() > 0


def test_aaaa_drop_answers_a_and_retries_aaaa_after_5_s(bundles: dict[str, Path]) -> None:
    dns = [
        d
        for d in dns_at(bundles["dns-aaaa-drop"], "client-eth0")
        if d["qname"] == "web.default.svc.cluster.local"
    ]
    assert any(d["qtype"] == "A" and d["answered"] for d in dns)
    aaaa = [d for d in dns if d["qtype"] == "AAAA"]
    assert aaaa and not any(d["answered"] for d in aaaa)
    cap = Capture(bundles["dns-aaaa-drop"])
    c = cap.c
    queries = np.flatnonzero(cap.at("client-eth0") & (c.proto == UDP) & (c.dport == 53))
    gaps = np.diff(c.ts[queries]) / 1e9
    assert gaps.max() >= 4.9  # glibc's default timeout before it asks again


def test_slow_dns(bundles: dict[str, Path]) -> None:
    dns = dns_at(bundles["dns-slow"], "client-eth0")
    assert dns and all(d["latency_ms"] >= 790 for d in dns if d["answered"])


def test_slow_backend_is_server_time_and_reset_is_the_server(bundles: dict[str, Path]) -> None:
    from ktrace.analysis.pipeline import analyze

    slow = json_document(analyze([bundles["http-slow"]], workers=1))["http"]
    via_web2 = [r for r in slow if r["server"] == f"{VIP}:80" and len(r["points"]) == 6]  # type: ignore[index]
    assert len(via_web2) == 2
    for r in via_web2:
        assert r["server_ms"] >= 790 and r["network_ms"] < 50  # type: ignore[index]
    reset = json_document(analyze([bundles["http-reset"]], workers=1))["http"]
    cut = [r for r in reset if r["ended"] == "reset"]  # type: ignore[index]
    assert len(cut) == 1 and cut[0]["ended_by"] == "server"  # type: ignore[index]
    assert cut[0]["backend_name"] == f"{WEB2}:80 (default/web-2)"  # type: ignore[index]


def test_upstream_down_cluster_names_fine_external_names_fail(bundles: dict[str, Path]) -> None:
    dns = dns_at(bundles["dns-upstream-down"], "client-eth0")
    web = [d for d in dns if d["qname"] == "web.default.svc.cluster.local"]
    assert web and all(d["rcode"] == "NOERROR" for d in web)
    external = [d for d in dns if d["qname"] == "example.com"]
    assert external and not any(d["rcode"] == "NOERROR" for d in external)
    upstream = [
        d
        for d in dns_at(bundles["dns-upstream-down"], "coredns-eth0")
        if d["server"] == f"{topo.UPSTREAM_DNS}:53"
    ]
    assert upstream and not any(d["answered"] for d in upstream)


# Where each fault must be placed, on every shape: (check, words its title must hold).
PLACED = {
    "policy-drop": ("path.drop", "dropped between node-b-eth0 and web-2-veth"),
    "mtu-blackhole": ("mtu.blackhole", "between node-b-eth0 and node-a-eth0"),
    "kube-proxy-down": ("nat.missing", "left the node without DNAT"),
    "no-endpoints": ("svc.no-endpoints", "default/web"),
    "policy-drop-v6": ("path.drop", "dropped between node-b-eth0 and web-2-veth"),
    "local-no-endpoint": ("svc.local-no-endpoint", "no ready endpoint on node-a"),
    "nodeport-blocked": ("tcp.syn-unanswered", "last seen at node-b-eth0"),
    "asymmetric-return": ("nat.asymmetric-return", "bypassed node-a"),
    "health-check-down": ("svc.health-check", "fails on node-b"),
    "http-503": ("http.errors", "(default/web-2) failed"),
    "http-slow": ("http.slow", "from 10.244.1.2 (default/web-2)"),
    "http-reset": ("http.reset", "(default/web-2)"),
}

# What the nodes' own records add to the finding (rule counters; kernel drop reasons where
# tracefs could be had): (check, words from the counters, words from the kernel trace).
NODE_EVIDENCE = {
    # (on the dual-stack shape the client reaches web over IPv6: getaddrinfo prefers it)
    "policy-drop": ("path.drop", ("filter FORWARD: -A FORWARD",), ("NETFILTER_DROP",)),
    "policy-drop-v6": (
        "path.drop",
        ("Its rule ipv6 filter FORWARD: -A FORWARD",),
        ("NETFILTER_DROP",),
    ),
    "no-endpoints": ("svc.no-endpoints", ("Rule: node-a:",), ("NETFILTER_DROP",)),
    "mtu-blackhole": ("mtu.blackhole", ("On node-b: eth0 tx_dropped",), ()),
    "kube-proxy-down": ("nat.missing", ("has no rule for 10.96.0.20 at all",), ()),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("shape", sorted(topo.SHAPES))
def test_every_fault_on_every_shape(
    tmp_path_factory: pytest.TempPathFactory, shape: str, scenario: str
) -> None:
    """The fault × shape matrix, noise on: exactly the expected findings (the healthy
    scenario: none at all), each placed between the same points whatever moves the packets."""
    if SCENARIOS[scenario].ipv6 and not topo.SHAPES[shape].dual_stack:
        pytest.skip(f"{scenario} needs a dual-stack shape")
    found = findings(recordings(shape, tmp_path_factory)[scenario])
    assert {f["id"] for f in found} == EXPECTED[scenario], [f["title"] for f in found]
    if scenario in PLACED:
        check, words = PLACED[scenario]
        titles = [f["title"] for f in found if f["id"] == check]
        assert any(words in t for t in titles), titles
    if scenario in NODE_EVIDENCE:
        bundle = recordings(shape, tmp_path_factory)[scenario]
        traced = (bundle / "nodes" / "node-a" / "kfree_skb.txt").exists()
        check, counted, kernel = NODE_EVIDENCE[scenario]
        story = " ".join(" ".join(f["explanation"].split()) for f in found if f["id"] == check)
        for words in (*counted, *(kernel if traced else ())):
            assert words in story, story
    if "outside-eth0" in SCENARIOS[scenario].extra_points:
        # what kubectl ktrace can capture: no point outside the cluster
        inside = without_point(recordings(shape, tmp_path_factory)[scenario], "outside-eth0",
                               tmp_path_factory.mktemp("inside"))  # fmt: skip
        assert {f["id"] for f in findings(inside)} == EXPECTED[scenario]
        if scenario in PLACED:
            assert any(words in f["title"] for f in findings(inside) if f["id"] == check)


def without_point(bundle: Path, point: str, dest: Path) -> Path:
    """A copy of a bundle without one of its capture points."""
    copy = dest / bundle.name
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    gone = next(p for p in manifest["points"] if p["id"] == point)
    manifest["points"].remove(gone)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / gone["file"]).unlink()
    return copy
