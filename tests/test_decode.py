"""The fast decoder: every link type, VLANs, IPv6 extension headers, fragments, ICMP quotes and
tunnels, checked field by field against packets built with scapy."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.vxlan import VXLAN
from scapy.main import load_contrib

from ktrace.decode.index import build_index
from ktrace.decode.ip import ICMP_ERROR, LATER_FRAGMENT, MORE_FRAGMENTS
from tests.helpers import run_analysis

load_contrib("geneve")
from scapy.contrib.geneve import GENEVE  # noqa: E402

Make = Callable[..., Path]
SYN = TCP(sport=40000, dport=80, flags="S", seq=1234)


def one(make_pcap: Make, pkt: object, linktype: int = 1):  # type: ignore[no-untyped-def]
    path = make_pcap([pkt], linktype)
    idx = build_index([path])
    return idx, idx.columns


def test_ethernet_ipv4_tcp_fields(make_pcap: Make) -> None:
    pkt = (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.1.5", id=777, flags="DF")
        / TCP(sport=40000, dport=80, flags="PA", seq=11, ack=22, window=333)
        / b"hello"
    )
    idx, c = one(make_pcap, pkt)
    assert (idx.address(4, c.src[0]), idx.address(4, c.dst[0])) == ("10.0.0.1", "10.0.1.5")
    assert (c.proto[0], c.sport[0], c.dport[0]) == (6, 40000, 80)
    assert (c.seq[0], c.ack[0], c.win[0], c.ipid[0]) == (11, 22, 333, 777)
    assert c.tcp_flags[0] == 0x18 and c.paylen[0] == 5 and c.payoff[0] == 54
    assert idx.payload(0) == b"hello"


def test_vlan_and_qinq(make_pcap: Make) -> None:
    for pkt in (
        Ether() / Dot1Q(vlan=10) / IP(dst="1.2.3.4") / SYN,
        Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / IP(dst="1.2.3.4") / SYN,
    ):
        idx, c = one(make_pcap, pkt)
        assert idx.address(4, c.dst[0]) == "1.2.3.4" and c.dport[0] == 80


def test_cooked_v1_v2_raw_null_loop(make_pcap: Make) -> None:
    ip = IP(src="10.1.1.1", dst="10.2.2.2") / SYN
    ip6 = IPv6(src="fd00::1", dst="fd00::2") / SYN
    cases = [
        (CookedLinux(proto=0x0800) / ip, 113),
        (CookedLinuxV2(proto=0x0800) / ip, 276),
        (CookedLinuxV2(proto=0x86DD) / ip6, 276),
        (ip, 101),
        (ip6, 101),
        (ip, 228),
        (Loopback(type=2) / ip, 0),  # host order, little-endian writer
        (struct.pack(">I", 2) + bytes(ip), 0),  # host order, big-endian writer
        (struct.pack(">I", 24) + bytes(ip6), 108),  # LOOP: network order, BSD AF_INET6
    ]
    for pkt, lt in cases:
        idx, c = one(make_pcap, pkt, lt)
        assert c.dport[0] == 80, lt
        assert c.l3[0] in (4, 6), lt
        dst = idx.address(int(c.l3[0]), int(c.dst[0]))
        assert dst in ("10.2.2.2", "fd00::2"), lt


def test_ipv6_extension_headers_and_fragment(make_pcap: Make) -> None:
    pkt = (
        Ether()
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=5353, dport=53)
        / b"q"
    )
    _, c = one(make_pcap, pkt)
    assert (c.l3[0], c.proto[0], c.sport[0], c.dport[0], c.paylen[0]) == (6, 17, 5353, 53, 1)
    frag = (
        Ether()
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrFragment(id=0x12345, m=1, offset=0)
        / UDP(sport=1, dport=2)
        / (b"z" * 40)
    )
    _idx, c = one(make_pcap, frag)
    assert c.proto[0] == 17 and c.dport[0] == 2 and c.ipflags[0] & MORE_FRAGMENTS
    assert c.ipid[0] == 0x2345


def test_ipv4_fragments_join_their_flow(make_pcap: Make) -> None:
    big = (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2", id=4242)
        / UDP(sport=999, dport=53)
        / (b"A" * 3000)
    )
    parts = [Ether() / p for p in fragment(big[IP], fragsize=1000)]
    path = make_pcap(parts)
    report, data = run_analysis(path)
    c = report.analysis.index.columns
    assert c.ipflags[0] & MORE_FRAGMENTS and not c.ipflags[0] & LATER_FRAGMENT
    assert all(c.ipflags[1:] & LATER_FRAGMENT)
    assert len(data["flows"]) == 1
    assert data["flows"][0]["packets_ab"] == len(parts)
    assert data["flows"][0]["b"] == "10.0.0.2:53"


def test_icmp_error_quotes_the_offending_packet(make_pcap: Make) -> None:
    quoted = IP(src="10.0.0.1", dst="10.96.0.20") / UDP(sport=5555, dport=53)
    pkt = Ether() / IP(src="10.96.0.20", dst="10.0.0.1") / ICMP(type=3, code=3) / bytes(quoted)
    idx, c = one(make_pcap, pkt)
    assert c.ipflags[0] & ICMP_ERROR
    assert c.seq[0] == (3 << 8) | 3  # ICMP type/code
    q = idx.quotes
    assert q.row.tolist() == [0]
    assert (idx.address(4, q.src[0]), idx.address(4, q.dst[0])) == ("10.0.0.1", "10.96.0.20")
    assert (q.proto[0], q.sport[0], q.dport[0]) == (17, 5555, 53)
    v6 = (
        Ether()
        / IPv6(src="fd00::9", dst="fd00::1")
        / ICMPv6DestUnreach(code=4)
        / IPv6(src="fd00::1", dst="fd00::9")
        / UDP(sport=1, dport=2)
    )
    idx, c = one(make_pcap, v6)
    assert c.ipflags[0] & ICMP_ERROR and idx.quotes.dport.tolist() == [2]


def _inner() -> object:
    return IP(src="10.244.0.5", dst="10.244.1.7", id=99) / TCP(
        sport=41000, dport=8080, flags="S", seq=7
    )


def test_tunnels_decapsulate_and_keep_the_outside(make_pcap: Make) -> None:
    outer = IP(src="172.18.0.2", dst="172.18.0.3")
    cases = {
        "vxlan-8472": (
            Ether() / outer / UDP(sport=33333, dport=8472) / VXLAN(vni=1) / Ether() / _inner(),
            ("vxlan", 1, 8472),
        ),
        "vxlan-4789": (
            Ether() / outer / UDP(sport=33333, dport=4789) / VXLAN(vni=4096) / Ether() / _inner(),
            ("vxlan", 4096, 4789),
        ),
        "geneve": (
            Ether()
            / outer
            / UDP(sport=33333, dport=6081)
            / GENEVE(vni=77, proto=0x6558)
            / Ether()
            / _inner(),
            ("geneve", 77, 6081),
        ),
        "ipip": (Ether() / outer / _inner(), ("ipip", 0, 0)),
        "gre": (
            Ether() / outer / GRE(key_present=1, key=5, proto=0x0800) / _inner(),
            ("gre", 5, 0),
        ),
        "gre-teb": (Ether() / outer / GRE(proto=0x6558) / Ether() / _inner(), ("gre", 0, 0)),
    }
    for name, (pkt, (kind, vni, port)) in cases.items():
        idx, c = one(make_pcap, pkt)
        assert idx.address(4, c.src[0]) == "10.244.0.5", name
        assert idx.address(4, c.dst[0]) == "10.244.1.7", name
        assert (c.proto[0], c.sport[0], c.dport[0], c.seq[0], c.ipid[0]) == (
            6,
            41000,
            8080,
            7,
            99,
        ), name
        assert c.tunnel[0] == 1, name
        t = idx.tunnels[0]
        assert (t.kind, t.outer_src, t.outer_dst, t.vni, t.port) == (
            kind,
            "172.18.0.2",
            "172.18.0.3",
            vni,
            port,
        ), name


def test_a_reply_to_a_client_on_a_tunnel_port_is_not_a_tunnel(make_pcap: Make) -> None:
    """Clients with a wide ephemeral range (ip_local_port_range 1024 65535) use 4789 and 8472
    too: a DNS answer to them is DNS, not VXLAN, whatever its id's first byte."""
    pkts = []
    for port in (4789, 8472):
        ask = struct.pack("!HHHHHH", 0x0E01, 0x0100, 1, 0, 0, 0) + b"\x03web\x00\x00\x01\x00\x01"
        reply = struct.pack("!HHHHHH", 0x0E01, 0x8180, 1, 1, 0, 0) + ask[12:]
        reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x60\x00\x14"
        client, server = (
            IP(src="10.244.0.5", dst="10.96.0.10"),
            IP(src="10.96.0.10", dst="10.244.0.5"),
        )
        pkts += [Ether() / client / UDP(sport=port, dport=53) / ask]
        pkts += [Ether() / server / UDP(sport=53, dport=port) / reply]
    _, data = run_analysis(make_pcap(pkts))
    assert not data["tunnels"]
    assert sorted(f["a"] for f in data["flows"]) == ["10.244.0.5:4789", "10.244.0.5:8472"]
    assert [d["answers"] for d in data["dns"]] == [["10.96.0.20"], ["10.96.0.20"]]


def test_a_tunnel_whose_inner_ipv6_is_cut_short_is_still_counted(make_pcap: Make) -> None:
    """The inner frame says IPv6 but holds 10 bytes: nothing to decode inside, no crash."""
    vxlan = struct.pack("!BBHI", 0x08, 0, 0, 7 << 8)
    inner = b"\x02" * 12 + b"\x86\xdd" + b"\x60" + b"\0" * 9
    outer = Ether() / IP(src="172.18.0.2", dst="172.18.0.3") / UDP(sport=33333, dport=4789)
    _, data = run_analysis(make_pcap([outer / (vxlan + inner)]))
    assert sum(p["packets"] for p in data["points"]) == 1


def test_tunnel_over_ipv6_underlay_with_deep_headers(make_pcap: Make) -> None:
    inner = (
        IPv6(src="fd10::5", dst="fd10::7")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / TCP(sport=1, dport=443, flags="S")
    )
    pkt = (
        Ether()
        / Dot1AD(vlan=1)
        / Dot1Q(vlan=2)
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / UDP(dport=4789)
        / VXLAN(vni=9)
        / Ether()
        / Dot1Q(vlan=3)
        / inner
    )
    idx, c = one(make_pcap, pkt)
    assert c.dport[0] == 443 and idx.address(6, c.dst[0]) == "fd10::7"
    assert idx.tunnels[0].outer_dst == "2001:db8::2" and idx.tunnels[0].vni == 9


def test_snaplen_cut_headers_are_marked_not_guessed(make_pcap: Make) -> None:
    pkt = bytes(Ether() / IP(dst="1.1.1.1") / TCP(dport=80))[:40]  # TCP header cut
    _idx, c = one(make_pcap, pkt)
    assert c.l3[0] == 4 and c.dport[0] == 0 and c.sport[0] == 0


def test_address_table_keys_match_numpy_unique_over_rows() -> None:
    import numpy as np

    from ktrace.decode.batch import unique_rows

    rng = np.random.default_rng(7)
    pool = rng.integers(0, 256, (40, 16), dtype=np.uint8)  # repeats, as addresses do
    rows = pool[rng.integers(0, 40, 5000)]
    uniq, inv = unique_rows(rows)
    want, want_inv = np.unique(rows, axis=0, return_inverse=True)
    assert len(uniq) == len(want)
    assert (uniq[inv] == rows).all()  # every row maps back to itself
    # the same grouping as numpy's, whatever the table's order
    assert len(set(zip(inv.tolist(), want_inv.reshape(-1).tolist(), strict=True))) == len(want)


def test_packet_filter_words(make_pcap: Make) -> None:
    from ktrace.analysis.packet_filter import filter_packets

    six = Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5353, dport=53)
    four = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
    with build_index([make_pcap([six, four, six], name="node-x.pcap")], workers=1) as index:
        assert filter_packets(index, "fd00::2").rows.tolist() == [0, 2]
        assert filter_packets(index, "[fd00::1] dns").rows.tolist() == [0, 2]
        assert filter_packets(index, "tcp 80 node-x").rows.tolist() == [1]
        assert filter_packets(index, "fd00::9").rows.tolist() == []
        found = filter_packets(index, "udp nonsense")
        assert found.rows.tolist() == [] and found.unknown == ("nonsense",)


def test_encapsulations_not_decoded_are_named_with_their_count(make_pcap) -> None:  # type: ignore[no-untyped-def]
    """Encrypted overlays (WireGuard, IPsec) and link encapsulations ktrace cannot enter are
    not silently dropped: a warning names each with its packets."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from tests.helpers import run_analysis

    # a WireGuard data message: type 4, reserved, receiver, counter, 32 bytes sealed
    wg = (
        Ether()
        / IP(src="172.18.0.2", dst="172.18.0.3")
        / UDP(sport=51820, dport=51820)
        / (b"\x04\x00\x00\x00" + b"\x01" * 12 + b"\x5a" * 32)
    )
    esp = Ether() / IP(src="172.18.0.2", dst="172.18.0.3", proto=50) / (b"\x00" * 40)
    macsec = Ether(type=0x88E5) / (b"\x2c" + b"\x00" * 40)
    _, data = run_analysis(make_pcap([wg] * 3 + [esp] * 2 + [macsec]))
    warnings = [w for w in data["warnings"] if "does not look inside" in w]
    assert warnings == [
        "3 packets inside WireGuard (encrypted): ktrace does not look inside, so the "
        "conversations they carry are not in the tables",
        "2 packets inside IPsec ESP (encrypted): ktrace does not look inside, so the "
        "conversations they carry are not in the tables",
        "1 packet inside MACsec (encrypted): ktrace does not look inside, so the "
        "conversations they carry are not in the tables",
    ]


@pytest.mark.parametrize("port", [51820, 4500, 1701, 2152])
def test_a_port_alone_claims_no_tunnel(make_pcap, port: int) -> None:  # type: ignore[no-untyped-def]
    """DNS whose client port happens to be a tunnel's (all of these lie in Linux's ephemeral
    range) is DNS: no warning of packets inside an encapsulation."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from tests.helpers import run_analysis

    ask = Ether() / IP(src="10.0.0.5", dst="10.96.0.10") / UDP(sport=port, dport=53)
    answer = Ether() / IP(src="10.96.0.10", dst="10.0.0.5") / UDP(sport=53, dport=port)
    packets = []
    for k in range(20):
        packets.append(ask / DNS(id=k * 2731, rd=1, qd=DNSQR(qname=f"n{k}.example.com")))
        packets.append(
            answer
            / DNS(id=k * 2731, qr=1, qd=DNSQR(qname=f"n{k}.example.com"), an=DNSRR(rdata="1.2.3.4"))
        )
    _, data = run_analysis(make_pcap(packets))
    assert not [w for w in data["warnings"] if "inside" in w]
    assert len(data["dns"]) == 20


def test_l2tp_with_its_structure_is_named(make_pcap) -> None:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from tests.helpers import run_analysis

    # L2TPv2 data: no flags, version 2, tunnel 7, session 9, then a PPP frame
    l2tp = (
        Ether()
        / IP(src="172.18.0.2", dst="172.18.0.3")
        / UDP(sport=1701, dport=1701)
        / (b"\x00\x02\x00\x07\x00\x09\xff\x03\x00\x21" + b"\x45" + b"\x00" * 27)
    )
    _, data = run_analysis(make_pcap([l2tp] * 4))
    assert [w for w in data["warnings"] if "inside L2TP" in w] == [
        "4 packets inside L2TP: ktrace does not look inside, so the conversations they carry "
        "are not in the tables"
    ]
