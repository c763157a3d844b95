"""Correlation and diagnosis on the lab's recorded bundles: every check fires on the bundle of
its fault, at the right place, and the healthy bundles stay silent."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ktrace.decode import transport
from ktrace.report.json_report import json_chunks
from tests.helpers import EXPECTED, LAB, PCAPS, T0, findings, frames, run_analysis, tcp_session


@pytest.mark.parametrize("bundle", sorted(EXPECTED))
def test_each_lab_bundle_gets_exactly_its_findings(bundle: str) -> None:
    assert {f["id"] for f in findings(LAB / bundle)} == EXPECTED[bundle]


def test_every_check_fires_on_a_sample() -> None:
    """Each registered check, run alone, finds something on a lab bundle or a sample capture."""
    from ktrace.analysis.findings import load_checks

    unproven = {c.id: c for c in load_checks()}
    for sample in [*(LAB / b for b in sorted(EXPECTED)), *sorted(PCAPS.glob("*.pcap*"))]:
        analysis = run_analysis(sample)[0].analysis
        for check_id, check in list(unproven.items()):
            if list(check.run(analysis)):
                del unproven[check_id]
    assert not unproven, f"never fires on a sample: {sorted(unproven)}"


def test_policy_drop_says_where() -> None:
    (f,) = findings(LAB / "policy-drop")
    assert f["title"] == (
        "SYN to 10.244.1.2:80 (default/web-2) dropped between node-b-eth0 and web-2-veth"
    )
    (flow,) = f["flows"]
    assert re.fullmatch(
        r"tcp 10\.244\.0\.2:\d+ \(default/client\) -> 10\.96\.0\.20:80 \(svc default/web\) "
        r"=> 10\.244\.1\.2:80 \(default/web-2\)",
        flow,
    )
    assert {e["point"] for e in f["evidence"]} == {"node-b-eth0"}


def test_policy_drop_text_tells_the_story_in_one_screen(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ktrace", "analyze", str(LAB / "policy-drop")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    screen = "\n".join(out.splitlines()[:40])
    for needle in (
        "(default/client) -> 10.96.0.20:80 (svc default/web)",
        "node-b-eth0",
        "web-2-veth",
        "Next:",
        "DNAT",
        "never",
    ):
        assert needle in screen, needle
    # the last try may come too near the end of the capture to be judged
    assert re.search(r"LOST [23] SYNs", screen)


def test_with_only_the_client_side_the_syn_is_unanswered_at_the_pod() -> None:
    (f,) = findings(LAB / "policy-drop" / "points" / "client-eth0.pcap")
    assert f["id"] == "tcp.syn-unanswered"
    assert f["title"].endswith("last seen at client-eth0")


def test_mtu_black_hole_location_and_sizes() -> None:
    f = next(x for x in findings(LAB / "mtu-blackhole") if x["id"] == "mtu.blackhole")
    assert f["title"].startswith(
        "MTU black hole between node-b-eth0 and node-a-eth0: packets of 1514 bytes vanish"
    )
    assert "inside VXLAN (172.18.0.3 -> 172.18.0.2)" in f["explanation"]


def test_paths_json_nat_tunnel_and_latency() -> None:
    _, data = run_analysis(LAB / "healthy")
    web = next(
        p
        for p in data["paths"]
        if "(default/client)" in p["conversation"] and "default/web-2" in p["conversation"]
    )
    assert [h["point"] for h in web["hops"]] == [
        "client-eth0",
        "client-veth",
        "node-a-eth0",
        "node-b-eth0",
        "web-2-veth",
        "web-2-eth0",
    ]
    (nat,) = web["nat"]
    assert nat["kind"] == "DNAT" and nat["between"] == ["client-veth", "node-a-eth0"]
    assert nat["before"].endswith("-> 10.96.0.20:80") and nat["after"].endswith("-> 10.244.1.2:80")
    nic = web["hops"][2]
    assert nic["tunnel"] == {
        "kind": "vxlan",
        "outer_src": "172.18.0.2",
        "outer_dst": "172.18.0.3",
        "vni": 1,
        "port": 8472,
    }
    assert all(0 <= h["latency_ms"] < 50 for h in web["hops"][1:])
    assert web["lost"] == []


def shift(src: Path, dst: Path, delta_ns: int) -> None:
    """Copy a nanosecond pcap with every timestamp moved: another node's clock."""
    blob = bytearray(src.read_bytes())
    off = 24
    while off + 16 <= len(blob):
        sec, ns, cap, _ = struct.unpack_from("<IIII", blob, off)
        total = sec * 1_000_000_000 + ns + delta_ns
        struct.pack_into("<II", blob, off, *divmod(total, 1_000_000_000))
        off += 16 + cap
    dst.write_bytes(bytes(blob))


def drop_records(path: Path, numbers: set[int]) -> None:
    """Rewrite a little-endian pcap without the records numbered (1-based) in `numbers`."""
    blob = path.read_bytes()
    out, off, k = bytearray(blob[:24]), 24, 0
    while off + 16 <= len(blob):
        cap = struct.unpack_from("<I", blob, off + 8)[0]
        k += 1
        if k not in numbers:
            out += blob[off : off + 16 + cap]
        off += 16 + cap
    path.write_bytes(bytes(out))


def client_syns(path: Path) -> set[int]:
    from ktrace.decode.index import build_index
    from ktrace.decode.transport import ACK, SYN

    with build_index([path], workers=1) as index:
        c = index.columns
        rows = np.flatnonzero(
            (c.src == int(ipaddress.IPv4Address("10.244.0.2")))
            & (c.dport == 80)
            & ((c.tcp_flags & (SYN | ACK)) == SYN)
        )
        return {index.ref(int(r)).number for r in rows}


@pytest.mark.parametrize(
    ("removed", "title"),
    [
        (
            ("node-a-eth0", "node-b-eth0"),
            "SYN to 10.96.0.20:80 (svc default/web) dropped between client-veth and node-a-eth0",
        ),
        (
            ("node-b-eth0",),
            "SYN to 10.244.1.2:80 (default/web-2) dropped between node-a-eth0 and node-b-eth0",
        ),
    ],
    ids=["source-node", "between-nodes"],
)
def test_a_drop_is_placed_at_the_first_expected_point_that_missed_it(
    tmp_path: Path, removed: tuple[str, ...], title: str
) -> None:
    """The SYNs never reach a point they had to pass: the NIC of the client's node (the
    Service's only endpoint is on the other node) or the NIC of the endpoint's node."""
    bundle = tmp_path / "bundle"
    shutil.copytree(LAB / "policy-drop", bundle)
    for point in removed:
        path = bundle / "points" / f"{point}.pcap"
        drop_records(path, client_syns(path))
    inventory = json.loads((bundle / "inventory.json").read_text())
    for sl in inventory["endpointslices"]:
        sl["endpoints"] = [e for e in sl["endpoints"] if e["pod"] != "web-1"]
    (bundle / "inventory.json").write_text(json.dumps(inventory))
    drops = [f for f in findings(bundle) if f["severity"] == "high"]
    assert [f["title"] for f in drops] == [title]


@pytest.mark.parametrize("delta_ns", [3_000_000_000, -2_500_000_000])
def test_clock_offsets_of_another_node_are_estimated(tmp_path: Path, delta_ns: int) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(LAB / "policy-drop", bundle)
    for point in ("node-b-eth0", "web-2-veth", "web-2-eth0", "coredns-eth0"):  # node-b's clock
        path = bundle / "points" / f"{point}.pcap"
        shift(path, path, delta_ns)
    _report, data = run_analysis(bundle)
    offsets = {p["id"]: p["clock_offset_ms"] for p in data["points"]}
    # against the busiest point's clock, whichever node it is on
    assert offsets["client-eth0"] == offsets["node-a-eth0"]
    assert abs(offsets["node-b-eth0"] - offsets["client-eth0"] - delta_ns / 1e6) < 1.0
    assert offsets["coredns-eth0"] == offsets["node-b-eth0"]  # same node, same clock
    # After correction the story is the same as with synchronised clocks.
    assert {f["id"] for f in data["findings"]} == {"path.drop"}
    web = next(p for p in data["paths"] if p["lost"])
    # Offsets come from the two directions' delays: exact up to the latency asymmetry (µs),
    # so a hop between nodes may show a few µs below zero, never seconds.
    assert all(h["latency_ms"] is None or -1 < h["latency_ms"] < 50 for h in web["hops"])


def test_nat_and_ipv6_without_ip_ids(make_pcap) -> None:  # type: ignore[no-untyped-def]
    """Two plain pcaps: the client side talks to a VIP, the server side sees the pod; IPv6
    has no IP ID, the TCP fields and payload hash carry the match."""

    def six(pkts, src, dst):  # type: ignore[no-untyped-def]
        out = []
        for p in pkts:
            forward = p[IP].src == "10.0.0.1"
            ip6 = IPv6(src=src if forward else dst, dst=dst if forward else src)
            out.append(Ether() / ip6 / p[TCP])
        return out

    session = tcp_session()
    client = make_pcap(frames(six(session, "fd00::1", "fd96::20")), name="client.pcap")
    server = make_pcap(
        frames(six(session, "fd00::1", "fd44::7"), start=1_700_000_000_000_050_000),
        name="server.pcap",
    )
    report, data = run_analysis(client, server)
    (path,) = [p for p in data["paths"] if len(p["hops"]) == 2]
    assert [h["point"] for h in path["hops"]] == ["client", "server"]
    assert path["nat"][0]["kind"] == "DNAT"
    assert path["nat"][0]["after"].endswith("-> [fd44::7]:80")
    assert path["hops"][1]["latency_ms"] == pytest.approx(0.05, abs=0.001)
    idents = report.analysis.correlation.ident
    assert len(np.unique(idents)) == len(session)


def test_masquerade_to_the_upstream_resolver_is_snat() -> None:
    _, data = run_analysis(LAB / "dns-search")
    snat = [n for p in data["paths"] for n in p["nat"] if n["kind"] == "SNAT"]
    assert snat
    assert all(n["between"] == ["coredns-eth0", "node-b-eth0"] for n in snat)
    assert all(
        n["before"].startswith("udp 10.244.1.3:")
        and n["after"].startswith("udp 172.18.0.3:")
        and n["after"].endswith("-> 172.18.0.100:53")
        for n in snat
    )


@pytest.mark.parametrize("kind", ["geneve", "ipip"])
def test_inner_packets_match_across_a_tunnel(make_pcap, kind: str) -> None:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import UDP
    from scapy.main import load_contrib

    load_contrib("geneve")
    from scapy.contrib.geneve import GENEVE

    outer = IP(src="172.18.0.2", dst="172.18.0.3")
    session = tcp_session()
    wrapped = [
        Ether() / outer / UDP(dport=6081) / GENEVE(vni=5, proto=0x6558) / p
        if kind == "geneve"
        else Ether() / outer / p[IP]
        for p in session
    ]
    pod = make_pcap(frames(session), name="pod.pcap")
    nic = make_pcap(frames(wrapped, start=1_700_000_000_000_020_000), name="nic.pcap")
    _, data = run_analysis(pod, nic)
    (path,) = data["paths"]
    assert [h["point"] for h in path["hops"]] == ["pod", "nic"]
    assert path["hops"][1]["tunnel"]["kind"] == kind
    assert path["hops"][1]["packets"] == len(session) and path["lost"] == []


def test_a_bundle_packed_as_tar_gz(tmp_path: Path) -> None:
    import tarfile

    archive = tmp_path / "policy-drop.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(LAB / "policy-drop", arcname="policy-drop")
    assert {f["id"] for f in findings(archive)} == {"path.drop"}


@pytest.mark.parametrize(
    "sample", [*(LAB / b for b in sorted(EXPECTED)), *sorted(PCAPS.glob("*.pcap*"))], ids=str
)
def test_streamed_json_is_the_encoding_of_the_document(sample: Path) -> None:
    """--json lays the rows out with one function call per row, not plain() per field: the
    very bytes of json_document() encoded, on every kind of section the samples hold."""
    result, data = run_analysis(sample)
    assert b"".join(json_chunks(result)) == orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


@pytest.mark.parametrize(
    "sample", [*(LAB / b for b in sorted(EXPECTED)), *sorted(PCAPS.glob("*.pcap*"))], ids=str
)
@pytest.mark.parametrize("most", [1, 0], ids=["counters", "sorted"])
def test_the_busiest_conversations_are_the_first_of_all_of_them_ordered(
    sample: Path, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report makes rows for the conversations it shows alone: they are the ones, in the
    order, that ordering every conversation's row gives; and every row counts each of its
    packets once, as seen first, however many points saw it, and names the points that saw
    it (counted per flow and point in a table, or by sorting the pairs)."""
    from ktrace.analysis import flows as flows_module

    monkeypatch.setattr(flows_module, "COUNTERS_PER_PACKET", most)
    result, _ = run_analysis(sample)
    everything = sorted(result.conversations, key=lambda c: (-c.lost, -c.bytes))
    for limit in (1, 3, len(everything) + 1):
        busiest, total = result.busiest_conversations(limit)
        assert (busiest, total) == (everything[:limit], len(everything))
    # each packet counted once however many points saw it: its earliest sighting, by identity
    a = result.analysis
    c, flow, cor = a.index.columns, a.flows.flow, a.correlation
    rows = np.flatnonzero(flow >= 0)
    order = rows[np.lexsort((cor.when[rows], cor.ident[rows]))]
    first = order[np.r_[True, cor.ident[order][1:] != cor.ident[order][:-1]]]
    conv = cor.conv[flow[first]]
    flags, tcp = c.tcp_flags[first], c.proto[first] == transport.TCP
    for row in everything:
        mine = conv == row.conv
        assert row.packets == int(mine.sum()), row.label
        assert row.bytes == int(c.wirelen[first][mine].sum()), row.label
        assert row.rst == int((mine & tcp & ((flags & transport.RST) > 0)).sum()), row.label
        assert row.fin == int((mine & tcp & ((flags & transport.FIN) > 0)).sum()), row.label
        seen = cor.conv[flow[rows]] == row.conv
        assert row.points == frozenset(c.point[rows[seen]].tolist()), row.label


def test_each_point_counts_its_own_packets_across_files_and_pcapng_interfaces(
    tmp_path: Path,
) -> None:
    """Points rows sum a file of one point by slice and group a file of several: both agree
    with the packets' own columns, an interface that saw nothing included."""
    from scapy.utils import wrpcap

    import tests.pcapng_build as ng
    from tests.helpers import T0

    session = [bytes(p) for p in tcp_session()]
    wrpcap(str(tmp_path / "a.pcap"), tcp_session())
    blob = ng.shb() + ng.idb(1, "eth0") + ng.idb(1, "quiet") + ng.idb(1, "eth1")
    for k, data in enumerate(session * 3):
        blob += ng.epb(2 * (k % 2), T0 // 1000 + 7 * k, data, wirelen=len(data) + k)
    (tmp_path / "b.pcapng").write_bytes(blob)
    wrpcap(str(tmp_path / "c.pcap"), tcp_session(sport=40001))
    result, _ = run_analysis(tmp_path / "a.pcap", tmp_path / "b.pcapng", tmp_path / "c.pcap")
    c = result.analysis.index.columns
    rows = {p.id: p for p in result.points}
    assert len(rows) == 5 and rows["b:quiet"].packets == 0 and rows["b:quiet"].first is None
    for k, point in enumerate(result.analysis.index.points):
        mine = c.point == k
        row = rows[point.id]
        assert row.packets == int(mine.sum())
        assert row.bytes == int(c.wirelen[mine].sum())
        if row.packets:
            span = (int(c.ts[mine].max()) - int(c.ts[mine].min())) / 1e9
            assert row.duration_s == round(span, 6)
            assert row.first is not None and row.first.startswith("20")


def test_one_black_hole_is_one_finding_however_many_connections_fell_in(make_pcap) -> None:  # type: ignore[no-untyped-def]
    """Three connections lose their big segments between the same two points: one MTU
    finding naming all three, and their retransmissions are that cause, not another."""
    server_side, client_side = [], []
    t = T0
    for k in range(3):
        sport = 41000 + k
        c = IP(src="10.1.0.5", dst="10.2.0.9", id=100 * k + 1)
        s = IP(src="10.2.0.9", dst="10.1.0.5")
        cs, ss = 1000 + k, 9000 + k
        small = [
            c / TCP(sport=sport, dport=80, flags="S", seq=cs),
            s / TCP(sport=80, dport=sport, flags="SA", seq=ss, ack=cs + 1),
            c / TCP(sport=sport, dport=80, flags="A", seq=cs + 1, ack=ss + 1),
            c
            / TCP(sport=sport, dport=80, flags="PA", seq=cs + 1, ack=ss + 1)
            / b"GET / HTTP/1.1\r\n\r\n",
        ]
        for n, p in enumerate(small):
            p[IP].id = 1000 * k + n
            first, then = (
                (client_side, server_side)
                if p[IP].src == "10.1.0.5"
                else (server_side, client_side)
            )
            first.append((t, bytes(Ether() / p)))
            then.append((t + 50_000, bytes(Ether() / p)))
            t += 1_000_000
        for again in range(3):  # the same big segment, sent again and again, never through
            big = s / TCP(sport=80, dport=sport, flags="A", seq=ss + 1, ack=cs + 19) / (b"x" * 1400)
            big[IP].id = 1000 * k + 50 + again
            server_side.append((t, bytes(Ether() / big)))
            t += 200_000_000
    # both points capture on after the last of them: their windows hold every loss
    tail = Ether() / IP(src="10.1.0.5", dst="10.2.0.9", id=7) / UDP(sport=5000, dport=5001)
    client_side.append((t, bytes(tail)))
    server_side.append((t + 50_000, bytes(tail)))
    make_pcap(server_side, name="server-node.pcap")
    path = make_pcap(client_side, name="client-node.pcap")
    found = findings(path.parent / "server-node.pcap", path)
    holes = [f for f in found if f["id"] == "mtu.blackhole"]
    assert len(holes) == 1, [f["title"] for f in found]
    assert holes[0]["explanation"].startswith("3 connections: 9 packets of up to 1454 bytes")
    assert not [f for f in found if f["id"] == "tcp.retransmissions"]


def test_a_quiet_point_is_a_witness_inside_its_declared_window(tmp_path: Path) -> None:
    """Everything to web-2 is dropped before its veth: the veth and the pod recorded two
    packets at the start and nothing after. Their first-to-last-packet window is empty, but
    the bundle says when they were capturing: the SYNs never reached the veth inside it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(LAB / "policy-drop", bundle)
    for point in ("web-2-veth", "web-2-eth0"):
        path = bundle / "points" / f"{point}.pcap"
        count = len(client_syns(path)) + 1000
        drop_records(path, set(range(3, count + 3)))
    quiet = [f for f in findings(bundle) if f["severity"] == "high"]
    assert [f["id"] for f in quiet] == ["tcp.syn-unanswered"]  # no window: only "unanswered"
    from ktrace.decode.index import build_index

    with build_index(sorted((bundle / "points").glob("*.pcap")), workers=1) as index:
        ts = index.columns.ts
        began, ended = int(ts.min()) - 1_000_000_000, int(ts.max()) + 1_000_000_000
    manifest = json.loads((bundle / "manifest.json").read_text())
    for spec in manifest["points"]:
        spec["started"] = datetime.fromtimestamp(began / 1e9, UTC).isoformat()
        spec["stopped"] = datetime.fromtimestamp(ended / 1e9, UTC).isoformat()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (drop,) = [f for f in findings(bundle) if f["severity"] == "high"]
    assert drop["id"] == "path.drop"
    assert "dropped between node-b-eth0 and web-2-veth" in drop["title"]


def snapped(path: Path, snap: int) -> None:
    """Rewrite a little-endian pcap as tcpdump -s SNAP would have written it."""
    blob = path.read_bytes()
    head = bytearray(blob[:24])
    struct.pack_into("<I", head, 16, snap)
    out, off = bytearray(head), 24
    while off + 16 <= len(blob):
        sec, frac, cap, orig = struct.unpack_from("<IIII", blob, off)
        keep = min(cap, snap)
        out += struct.pack("<IIII", sec, frac, keep, orig) + blob[off + 16 : off + 16 + keep]
        off += 16 + cap
    path.write_bytes(bytes(out))


@pytest.mark.parametrize(
    ("bundle", "expected"), [("healthy", set()), ("policy-drop", {"path.drop"})]
)
def test_node_captures_cut_at_a_snap_length_lose_nothing(
    tmp_path: Path, bundle: str, expected: set[str]
) -> None:
    """The node NICs captured with -s 128 (common on busy nodes): the bytes cut are neither
    lost nor missing, packets seen at every point are not dropped."""
    copy = tmp_path / bundle
    shutil.copytree(LAB / bundle, copy)
    for point in ("node-a-eth0", "node-b-eth0"):
        snapped(copy / "points" / f"{point}.pcap", 128)
    found = findings(copy)
    assert {f["id"] for f in found} == expected, [f["title"] for f in found]
    assert not [f for f in found if "capture loss" in f["title"]]


CLUSTER = PCAPS / "cluster"
# What the real cluster's bundles (tests/cluster: kube-proxy in nftables mode, kube-router's
# NetworkPolicy) must find: what their lab twins find, placed at the same hops, with the real
# rules quoted.
ON_THE_CLUSTER = {
    "healthy": ((), ()),
    "policy-drop": (
        ("rejected between node-b-eth0 and web-2-veth",),
        ("rule to REJECT traffic destined for POD name:web-2 namespace: default",),
    ),
    "no-endpoints": (("Service default/web",), ('comment "default/web:http" : goto reject-chain',)),
    "kube-proxy-down": (("left the node without DNAT",), ("has no rule for 10.100.0.80 at all",)),
    "dns-upstream-down": (
        ("names outside the cluster fail: example.com",),
        ("The DNS server forwarded them to 192.168.56.53:53, which never answered",),
    ),
}


@pytest.mark.parametrize("bundle", sorted(ON_THE_CLUSTER))
def test_the_real_clusters_bundles_find_what_their_lab_twins_find(bundle: str) -> None:
    found = findings(CLUSTER / bundle)
    assert {f["id"] for f in found} == EXPECTED[bundle], [f["title"] for f in found]
    titles, said = ON_THE_CLUSTER[bundle]
    text = " ".join(" ".join(f["explanation"].split()) for f in found)
    for words in titles:
        assert any(words in f["title"] for f in found), [f["title"] for f in found]
    for words in said:
        assert words in text, text


def test_a_node_with_two_nics_expects_the_pods_veth_next(tmp_path: Path) -> None:
    """The SYNs entered node-b on its second NIC (eth1) and were dropped there; eth0 carried
    other traffic between the nodes. The next hop they missed is web-2's veth, never the
    node's other NIC."""
    bundle = tmp_path / "two-nics"
    shutil.copytree(LAB / "policy-drop", bundle)
    points = bundle / "points"
    shutil.copyfile(points / "node-b-eth0.pcap", points / "node-b-eth1.pcap")
    drop_records(points / "node-b-eth0.pcap", client_syns(points / "node-b-eth0.pcap"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    eth0 = next(p for p in manifest["points"] if p["id"] == "node-b-eth0")
    second = {**eth0, "id": "node-b-eth1", "file": "points/node-b-eth1.pcap", "interface": "eth1"}
    manifest["points"].append(second)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (drop,) = [f for f in findings(bundle) if f["severity"] == "high"]
    assert drop["title"].endswith("dropped between node-b-eth1 and web-2-veth")
