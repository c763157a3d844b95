"""The C loop for common packets (kernels/_plain.c) gives the columns the numpy layers give:
on every sample and lab bundle, and on frames built field by field with the values that sit
on its edges (VLAN tags, IPv4 options and fragments, zero lengths, IPv6 extension headers,
tunnel ports, TCP data offsets, payloads that start like HTTP or TLS, snapped captures)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktrace.bundle.inputs import read_inputs
from ktrace.decode.columns import SCHEMA
from ktrace.decode.index import PacketIndex, build_index
from ktrace.kernels import plain
from ktrace.pcap.linktype import LinkType
from ktrace.pcap.writer import PcapWriter
from tests.helpers import LAB, PCAPS, T0, c_parts

pytestmark = pytest.mark.skipif(plain._C is None, reason="the C loop was not built")

CAPTURES = sorted(PCAPS.glob("*.pcap")) + sorted(p for p in LAB.iterdir() if p.is_dir())


def both_ways(paths: list[Path]) -> tuple[PacketIndex, ...]:
    """The index built with the C loop and without it."""
    out = []
    for enabled in (True, False):
        with c_parts(enabled), build_index(paths, workers=1) as index:
            out.append(index)
    return tuple(out)


def assert_same(fast: PacketIndex, slow: PacketIndex) -> None:
    for name in SCHEMA:
        a, b = getattr(fast.columns, name), getattr(slow.columns, name)
        assert np.array_equal(a, b), (name, np.flatnonzero(a != b)[:5])
    assert fast.v6 == slow.v6 and fast.tunnels == slow.tunnels
    assert fast.undecoded == slow.undecoded and fast.tunnel_nested == slow.tunnel_nested
    for name in fast.quotes.__dataclass_fields__:
        assert np.array_equal(getattr(fast.quotes, name), getattr(slow.quotes, name)), name


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_samples_and_lab_bundles_decode_alike(capture: Path) -> None:
    fast, slow = both_ways(read_inputs([capture]).files)
    assert len(fast) > 0
    assert_same(fast, slow)


def test_the_c_loop_takes_the_common_packets() -> None:
    """Its share of a plain TCP/UDP capture is all of it; what it leaves is left untouched."""
    columns = {name: np.zeros(3, dtype) for name, dtype in SCHEMA.items()}
    tcp = _ipv4(_tcp(b"GET / HTTP/1.1\r\n"), 6)
    vxlan = _ipv4(_udp(b"\x08\0\0\0\0\0\x01\0" + bytes(50), dport=4789), 17)
    arp = bytes(28)
    frames = [_ether(0x0800, tcp), _ether(0x0800, vxlan), _ether(0x0806, arp)]
    window = np.zeros((3, 176), np.uint8)
    for k, f in enumerate(frames):
        window[k, : len(f)] = np.frombuffer(f[:176], np.uint8)
    caplen = np.array([len(f) for f in frames], np.uint32)
    found = plain.decode_plain(window, 0, caplen, caplen, LinkType.EN10MB, columns)
    assert found is not None
    taken, _, _ = found
    assert taken.tolist() == [True, False, False]
    assert columns["ipflags"][0] & 32 and columns["dport"][0] == 80 and columns["proto"][0] == 6
    assert not columns["proto"][1:].any()


def _ether(etype: int, body: bytes, tags: tuple[int, ...] = ()) -> bytes:
    head = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01"
    for tag in tags:
        head += struct.pack("!HH", tag, 7)
    return head + struct.pack("!H", etype) + body


def _ipv4(
    body: bytes, proto: int, options: bytes = b"", frag: int = 0x4000, total: int | None = None
) -> bytes:
    ihl = 5 + len(options) // 4
    size = ihl * 4 + len(body) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, size, 4242, frag, 64, proto, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return head + options + body


def _ipv6(body: bytes, nxt: int, plen: int | None = None, label: int = 0) -> bytes:
    size = len(body) if plen is None else plen
    head = struct.pack("!IHBB", 0x60000000 | label, size, nxt, 64)
    return head + bytes(15) + b"\1" + bytes(15) + b"\2" + body


def _tcp(payload: bytes, doff: int = 5, flags: int = 0x18, sport: int = 40000) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, 80, 1000, 2000, doff << 4, flags, 512, 0, 0)
    return head + bytes(max(doff * 4 - 20, 0)) + payload


def _udp(payload: bytes, sport: int = 40000, dport: int = 53) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


INNER = _ether(0x0800, _ipv4(_tcp(b"hello"), 6))
# (UDP destination port, payload): the tunnels the numpy layers enter, as they look on the wire
TUNNELS = [
    (4789, b"\x08\0\0\0\0\0\x07\0" + INNER),  # VXLAN
    (8472, b"\x08\0\0\0\0\0\x07\0" + INNER),  # flannel's VXLAN
    (6081, b"\0\0\x65\x58\0\0\x07\0" + INNER),  # Geneve
    (4790, b"\x0c\0\0\x03\0\0\x07\0" + INNER),  # VXLAN-GPE
    (2152, b"\x30\xff\0\x30\0\0\0\x07" + INNER[14:]),  # GTP-U
]
PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 9).map(lambda n: bytes(range(1, n + 1))),  # around the 8 bytes hashed
    st.sampled_from([b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"\x16\x03\x01\x00\x10",
                     b"\x15\x03\x03\x00\x02", b"\x15\x03\x05\x00\x02", b"PRI * HTTP/2.0\r\n",
                     b"GET", b"POSTX", b"PROPFIND /", b"M-SEARCH", b"NOTIFY * ", b"AB_ ",
                     b"Abcd", b"A-1 "]),
)  # fmt: skip
PORTS = [53, 40000, 51820, 4500, 1701, 2152, 4789]


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """(linktype, frame, captured bytes) with header fields at and around their edges."""
    payload = draw(PAYLOADS)
    proto = draw(st.sampled_from([6, 6, 6, 17, 17, 17, 1, 47, 0, 44, 50]))
    if proto == 6:
        doff = draw(st.sampled_from([5, 5, 8, 15, 4, 0]))
        l4 = _tcp(payload, doff, draw(st.integers(0, 255)), draw(st.sampled_from([40000, 443])))
    elif proto == 17 and draw(st.booleans()):
        port, inner = draw(st.sampled_from(TUNNELS))
        l4 = _udp(inner, draw(st.sampled_from(PORTS)), port)
    elif proto == 17:
        l4 = _udp(payload, draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS)))
    else:
        l4 = payload
    if draw(st.booleans()):
        options = draw(st.sampled_from([b"", b"\1\1\1\0", bytes(40)]))
        frag = draw(st.sampled_from([0x4000, 0x4000, 0, 0x2000, 0x2001, 0x0010]))
        size = 20 + len(options) + len(l4)
        total = draw(st.sampled_from([None, None, None, 0, 10, 20, size - 1, size + 1, 2000]))
        l3, etype = _ipv4(l4, proto, options, frag, total), 0x0800
    else:
        plen = draw(
            st.sampled_from([None, None, None, 0, 4, max(len(l4) - 1, 0), len(l4) + 1, 3000])
        )
        label = draw(st.sampled_from([0, 0x3C, 0x1234, 0xFFFFF]))
        l3, etype = _ipv6(l4, proto, plen, label), 0x86DD
    if draw(st.integers(0, 7)) == 0:  # a version nibble that lies
        l3 = bytes([l3[0] ^ draw(st.sampled_from([0x20, 0x03]))]) + l3[1:]
    link = draw(
        st.sampled_from([LinkType.EN10MB, LinkType.LINUX_SLL, LinkType.LINUX_SLL2, LinkType.RAW])
    )
    if link == LinkType.EN10MB:
        tags = draw(st.sampled_from([(), (0x8100,), (0x88A8, 0x8100), (0x8100, 0x8100, 0x8100)]))
        frame = _ether(etype, l3, tags)
    elif link == LinkType.LINUX_SLL:
        frame = bytes(14) + struct.pack("!H", etype) + l3
    elif link == LinkType.LINUX_SLL2:
        frame = struct.pack("!H", etype) + bytes(18) + l3
    else:
        frame = l3
    # mostly whole (with Ethernet padding now and then), sometimes snapped anywhere
    frame += bytes(draw(st.sampled_from([0, 0, 0, 6])))
    cut = len(frame) if draw(st.integers(0, 3)) else draw(st.integers(0, len(frame)))
    return int(link), frame, cut


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(frames(), min_size=1, max_size=25))
def test_edge_frames_decode_alike(tmp_path: Path, made: list[tuple[int, bytes, int]]) -> None:
    paths = []
    for linktype in {link for link, _, _ in made}:
        path = tmp_path / f"edge-{linktype}.pcap"
        with PcapWriter(path, linktype) as w:
            for k, (link, frame, cut) in enumerate(made):
                if link == linktype:
                    w.write(T0 + k * 1000, frame[:cut], len(frame))
        paths.append(path)
    fast, slow = both_ways(paths)
    assert_same(fast, slow)


def test_every_short_payload_and_message_start_decode_alike(tmp_path: Path) -> None:
    """Each payload length around the 8 bytes hashed and each word a message starts with,
    over TCP and UDP, IPv4 and IPv6: hypothesis may not draw every one of them."""
    starts = [b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"\x16\x03\x01\x00\x10",
              b"\x15\x03\x03\x00\x02", b"\x15\x03\x05\x00\x02", b"PRI * HTTP/2.0\r\n",
              b"PROPFIND / HTTP/1.1\r\n", b"UNSUBSCRIBE", b"ACL ", b"A_-Z", b"@ABC",
              b"AB[ ", b"\x00\x00\x2a\x01", b"\x00\x40\xff\x09", b"\x00\x41\x00\x00",
              b"\x00\x00\x04\x0a"]  # fmt: skip
    payloads = [bytes(range(1, n + 1)) for n in range(10)] + starts
    path = tmp_path / "edges.pcap"
    with PcapWriter(path, LinkType.EN10MB) as w:
        for k, payload in enumerate(payloads):
            for proto, l4 in ((6, _tcp(payload)), (17, _udp(payload))):
                w.write(T0 + k, _ether(0x0800, _ipv4(l4, proto)))
                w.write(T0 + k, _ether(0x86DD, _ipv6(l4, proto)))
    fast, slow = both_ways([path])
    assert_same(fast, slow)
    assert len(set(fast.columns.phash.tolist())) > 10  # the hashes do differ


def test_a_snap_length_cuts_bytes_not_lengths(
    make_pcap,  # type: ignore[no-untyped-def]
) -> None:
    """Cut by a snap length, a packet keeps the payload length its headers give (both ways:
    C and numpy), and its payload hash says the first bytes were not all captured."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from ktrace.decode.rows import UNKNOWN_HASH
    from tests.helpers import frames

    whole = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / (b"x" * 500)
    path = make_pcap(frames([whole, whole]))
    blob = bytearray(path.read_bytes())
    # the second record as a 58-byte capture of the same frame: 4 of its payload's bytes
    second = 24 + 16 + len(bytes(whole))
    struct.pack_into("<I", blob, second + 8, 58)
    del blob[second + 16 + 58 :]
    path.write_bytes(bytes(blob))
    fast, slow = both_ways([path])
    assert_same(fast, slow)
    assert fast.columns.paylen.tolist() == [500, 500]
    assert fast.columns.phash[1] == UNKNOWN_HASH != fast.columns.phash[0]


def test_length_fields_that_contradict_the_packet_are_malformed(make_pcap) -> None:  # type: ignore[no-untyped-def]
    """An IPv4 total length below its header's, or beyond the frame: counted as malformed,
    and nothing past the IP header is read (no ports, no payload, no TLS or HTTP)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from tests.helpers import run_analysis

    hello = bytes.fromhex("16030100") + b"\x00" * 60
    short = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", len=11) / TCP(dport=443) / hello
    long = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", len=4000) / TCP(dport=443) / hello
    fine = Ether() / IP(src="10.0.0.3", dst="10.0.0.4") / TCP(dport=80) / b"x"
    _, data = run_analysis(make_pcap([short, long, fine]))
    said = [w for w in data["warnings"] if "malformed" in w]
    assert said == [
        "2 packets whose IP length fields contradict the packet (malformed): nothing past "
        "their IP header is decoded"
    ]
    assert not data["tls"] and {f["b"] for f in data["flows"]} >= {"10.0.0.4:80"}
    assert "10.0.0.2:443" not in {f["b"] for f in data["flows"]}
