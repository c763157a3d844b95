"""Stitching that cannot collide: packets that look alike but are not one packet are never
joined across points (stitch_rules), so they cannot be reported lost between them."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6MLReport2, ICMPv6ND_RS, IPv6
from scapy.layers.l2 import Ether

from tests.helpers import LAB, run_analysis

Make = Callable[..., Path]


def append_records(path: Path, records: list[tuple[int, bytes]]) -> None:
    """Add packets at the end of a classic pcap written by tcpdump (either time precision)."""
    magic = path.read_bytes()[:4]
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    order = "<" if magic[0] in (0xD4, 0x4D) else ">"
    with path.open("ab") as f:
        for ts, data in records:
            frac = ts % 1_000_000_000 if nano else (ts % 1_000_000_000) // 1000
            f.write(struct.pack(order + "IIII", ts // 1_000_000_000, frac, len(data), len(data)))
            f.write(data)


def first_ts(path: Path) -> int:
    head = path.read_bytes()[24:32]
    sec, frac = struct.unpack("<II", head)
    return sec * 1_000_000_000 + frac


def test_identical_link_local_multicast_from_several_pods_is_never_a_path(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "healthy"
    shutil.copytree(LAB / "healthy", bundle)
    points = bundle / "points"
    t = first_ts(points / "client-eth0.pcap") + 5_000_000
    # what every pod sends when its interface comes up: a router solicitation from its own
    # link-local address, and an MLD report from the unspecified address (identical bytes)
    mld = Ether(dst="33:33:00:00:00:16") / IPv6(src="::", dst="ff02::16", hlim=1)
    mld /= ICMPv6MLReport2()
    for k, pod in enumerate(("client", "web-2", "coredns"), 1):
        rs = Ether(dst="33:33:00:00:00:02") / IPv6(src=f"fe80::{k}", dst="ff02::2") / ICMPv6ND_RS()
        for side in ("eth0", "veth"):
            if (points / f"{pod}-{side}.pcap").exists():
                append_records(points / f"{pod}-{side}.pcap", [(t, bytes(rs)), (t, bytes(mld))])
    result, data = run_analysis(bundle)
    assert [f["id"] for f in data["findings"]] == []
    assert not [p for p in data["paths"] if "ff02::" in p["conversation"]]
    a = result.analysis
    c = a.index.columns
    added = np.flatnonzero((c.ts == t) & (c.l3 == 6))  # the lab's own noise is there too
    assert len(added) == 10 and a.correlation.local[added].all()
    # 5 points, 2 packets each: none joined to another
    assert len(set(a.correlation.ident[added].tolist())) == 10


def test_identical_udp_payloads_from_different_pods_stay_apart(make_pcap: Make) -> None:
    def exchange(client: str) -> list[object]:
        # same ports, payload and (zero) IP ID, at the same instant: only the address differs
        ask = Ether() / IP(src=client, dst="10.0.9.9", id=0) / UDP(sport=5000, dport=9000)
        back = Ether() / IP(src="10.0.9.9", dst=client, id=0) / UDP(sport=9000, dport=5000)
        return [ask / b"ping", back / b"pong"]

    a = make_pcap(exchange("10.0.0.1"), name="pod-a.pcap")
    b = make_pcap(exchange("10.0.0.2"), name="pod-b.pcap")
    result, data = run_analysis(a, b)
    cor = result.analysis.correlation
    assert len(set(cor.ident[:4].tolist())) == 4
    assert len(set(cor.conv.tolist())) == 2  # two conversations, no "SNAT" between them
    assert not any(p["nat"] for p in data["paths"])


def test_a_udp_packet_cannot_change_both_ends(make_pcap: Make) -> None:
    same = b"same bytes"
    a = make_pcap(
        [Ether() / IP(src="10.0.0.1", dst="10.0.9.9", id=7) / UDP(sport=5000, dport=53) / same],
        name="one.pcap",
    )
    b = make_pcap(
        [Ether() / IP(src="10.0.0.3", dst="10.0.8.8", id=7) / UDP(sport=6000, dport=53) / same],
        name="two.pcap",
    )
    result, _ = run_analysis(a, b)
    assert len(set(result.analysis.correlation.ident[:2].tolist())) == 2


def test_one_nat_between_points_is_still_followed(make_pcap: Make) -> None:
    payload = b"query"
    before = Ether() / IP(src="10.0.0.1", dst="10.96.0.10", id=9) / UDP(sport=5000, dport=53)
    after = Ether() / IP(src="10.0.0.1", dst="10.244.1.3", id=9) / UDP(sport=5000, dport=53)
    a = make_pcap([before / payload], name="pod.pcap")
    b = make_pcap([after / payload], name="node.pcap")
    result, data = run_analysis(a, b)
    assert len(set(result.analysis.correlation.ident[:2].tolist())) == 1
    (path,) = data["paths"]
    assert [n["kind"] for n in path["nat"]] == ["DNAT"]


def _path_to(data: dict, words: str) -> dict:  # type: ignore[type-arg]
    (path,) = [p for p in data["paths"] if words in p["conversation"]]
    return path  # type: ignore[no-any-return]


def test_a_nic_that_is_both_entry_and_exit_is_two_hops() -> None:
    """A NodePort call forwarded to the other node: node-a's NIC sees each packet arrive
    plainly and leave DNAT-ed, SNAT-ed and inside VXLAN; one path through both passes."""
    _, data = run_analysis(LAB / "external")
    path = _path_to(data, "(NodePort default/web on node-a) => 10.244.1.2:80")
    assert [h["point"] for h in path["hops"]] == [
        "outside-eth0",
        "node-a-eth0",
        "node-a-eth0",
        "node-b-eth0",
        "web-2-veth",
        "web-2-eth0",
    ]
    assert [h["tunnel"] is not None for h in path["hops"]][1:4] == [False, True, True]
    (nat,) = path["nat"]
    assert (nat["kind"], nat["after_hop"]) == ("DNAT+SNAT", 1)
    assert nat["after"].startswith("tcp 10.244.0.0:")  # masqueraded to node-a's flannel.1
    assert path["lost"] == []
    assert all(h["packets"] == path["hops"][0]["packets"] for h in path["hops"])


def test_a_hairpin_goes_out_and_back_through_the_same_points() -> None:
    _, data = run_analysis(LAB / "hairpin")
    path = _path_to(data, "(svc default/web) => 10.244.0.3:80 (default/web-1)")
    assert [h["point"] for h in path["hops"]] == [
        "web-1-eth0",
        "web-1-veth",
        "web-1-veth",
        "web-1-eth0",
    ]
    (nat,) = path["nat"]
    assert nat["kind"] == "DNAT+SNAT" and nat["after_hop"] == 1
    assert path["lost"] == [] and data["findings"] == []


def test_identical_segments_of_two_connections_at_one_point_stay_apart(make_pcap: Make) -> None:
    """Counting copies per 5-tuple is for sequenced TCP only: two connections whose SYNs
    carry no sequence number (crafted traffic) are two conversations, not one packet seen
    twice."""
    from scapy.layers.inet import TCP

    pkts = [
        Ether() / IP(src="10.0.0.1", dst="10.0.1.5") / TCP(sport=sport, dport=80, flags="S", seq=0)
        for sport in (40001, 40002)
    ]
    result, _ = run_analysis(make_pcap(pkts))
    assert len(set(result.analysis.correlation.conv.tolist())) == 2


def test_the_path_view_shows_each_pass_in_its_own_column() -> None:
    from ktrace.analysis.views import path_packets

    result, _ = run_analysis(LAB / "hairpin")
    a = result.analysis
    there_and_back = ["web-1-eth0", "web-1-veth", "web-1-veth", "web-1-eth0"]
    (path,) = [p for p in a.paths if [a.point_id(h.point) for h in p.hops] == there_and_back]
    syn = path_packets(a, path)[0]
    assert syn.summary.startswith("S ") and syn.direction == "→"
    assert syn.cells[0] == "+0.000 ms" and "·" not in syn.cells and not syn.lost
    # out through web-1's eth0 and veth, back in through the veth and eth0: later each time
    times = [float(cell.split()[0]) for cell in syn.cells]
    assert times == sorted(times) and len(set(times)) == 4
