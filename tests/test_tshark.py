"""Differential tests: ktrace and tshark read the same captures and must agree on the
conversation tables (endpoints, packets and bytes each way) and on DNS transactions."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.vxlan import VXLAN
from scapy.main import load_contrib
from scapy.packet import Raw

from ktrace.decode.dns import type_name
from ktrace.pcap.writer import write_pcap
from tests.helpers import PCAPS, answer, frames, query, run_analysis, tcp_session

for contrib in ("geneve", "mpls", "gtp", "erspan", "nsh", "chdlc"):
    load_contrib(contrib)
from scapy.contrib.chdlc import CHDLC  # noqa: E402
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III  # noqa: E402
from scapy.contrib.geneve import GENEVE  # noqa: E402
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer  # noqa: E402
from scapy.contrib.mpls import MPLS  # noqa: E402
from scapy.contrib.nsh import NSH  # noqa: E402
from scapy.layers.ppp import PPP, PPPoE  # noqa: E402

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]
TUNNEL_PORTS = {4789, 8472, 6081, 4790, 2152}  # outer UDP: tshark lists it, ktrace looks inside
CONV = re.compile(
    r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+)\s+([\d,]+)\s+(bytes|kB|MB|GB)\s+(\d+)\s+"
    r"([\d,]+)\s+(bytes|kB|MB|GB)"
)
UNIT = {"bytes": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


def tshark(*args: str) -> str:
    # tshark knows VXLAN on 4789 only; flannel's kernel VXLAN uses 8472.
    return subprocess.run(
        ["tshark", "-n", "-d", "udp.port==8472,vxlan", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout


def tshark_conversations(path: Path) -> dict[tuple[str, frozenset[str]], dict[str, tuple]]:
    """{(proto, {endpoint, endpoint}): {endpoint: (frames sent, bytes sent, exact?)}}"""
    out = tshark("-q", "-r", str(path), "-z", "conv,tcp", "-z", "conv,udp")
    convs: dict[tuple[str, frozenset[str]], dict[str, tuple]] = {}
    proto = ""
    for line in out.splitlines():
        if line.startswith(("TCP Conversations", "UDP Conversations")):
            proto = line[:3].lower()
        m = CONV.match(line)
        if not m:
            continue
        a_ip, a_port, b_ip, b_port = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if proto == "udp" and (a_port in TUNNEL_PORTS or b_port in TUNNEL_PORTS):
            continue  # the outside of a tunnel: ktrace keys flows on the inner packet
        a, b = _ep(a_ip, a_port), _ep(b_ip, b_port)
        b_frames, b_bytes, b_unit = int(m.group(5)), int(m.group(6).replace(",", "")), m.group(7)
        a_frames, a_bytes, a_unit = int(m.group(8)), int(m.group(9).replace(",", "")), m.group(10)
        convs[(proto, frozenset((a, b)))] = {
            a: (a_frames, a_bytes * UNIT[a_unit], a_unit == "bytes"),
            b: (b_frames, b_bytes * UNIT[b_unit], b_unit == "bytes"),
        }
    return convs


def tshark_stream_bytes(path: Path) -> dict[tuple[str, frozenset[str]], dict[str, int]]:
    """Exact bytes per direction of tshark's own tcp.stream/udp.stream assignment."""
    fields = [
        "frame.len",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "udp.srcport",
        "tcp.stream",
        "udp.stream",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "udp.dstport",
        "icmp.type",
        "icmpv6.type",
    ]
    out = tshark(
        "-r",
        str(path),
        "-T",
        "fields",
        "-E",
        "separator=/t",
        *[x for f in fields for x in ("-e", f)],
    )
    acc: dict[tuple[str, frozenset[str]], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in out.splitlines():
        v = dict(zip(fields, line.split("\t"), strict=False))
        last = {name: value.split(",")[-1] for name, value in v.items()}.get
        if v.get("icmp.type") or v.get("icmpv6.type"):
            continue  # an ICMP error quoting a segment: tshark's conv table leaves it out too
        proto = "tcp" if last("tcp.stream") else "udp" if last("udp.stream") else ""
        if not proto:
            continue
        sport, dport = last(f"{proto}.srcport"), last(f"{proto}.dstport")
        if (
            proto == "udp"
            and {int(sport), int(dport)} & TUNNEL_PORTS
            and len(v.get("udp.srcport", "").split(",")) == 1
        ):
            continue
        src = (
            last("ipv6.src")
            if len(v.get("ipv6.src", "")) > len(v.get("ip.src", ""))
            else last("ip.src")
        )
        dst = (
            last("ipv6.dst")
            if len(v.get("ipv6.dst", "")) > len(v.get("ip.dst", ""))
            else last("ip.dst")
        )
        a, b = _ep(src, int(sport)), _ep(dst, int(dport))
        acc[(proto, frozenset((a, b)))][a] += int(v["frame.len"])
    return acc


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def tshark_dns(path: Path) -> dict[tuple[int, str, str], tuple[bool, str | None]]:
    """First query frame of each transaction -> (answered, rcode)."""
    fields = [
        "frame.number",
        "dns.id",
        "dns.qry.name",
        "dns.qry.type",
        "dns.flags.response",
        "dns.flags.rcode",
        "dns.response_in",
        "dns.retransmission",
    ]
    out = tshark(
        "-2",
        "-r",
        str(path),
        "-Y",
        "dns",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        *[x for f in fields for x in ("-e", f)],
    )
    rcodes: dict[tuple[str, int], int] = {}  # (frame, id) of a response -> its rcode
    queries = []
    for line in out.splitlines():
        # a frame of DNS over TCP holds several messages: each field lists one value each
        frame, *listed = [value.split(",") for value in line.split("\t")]
        n = len(listed[0])
        for k in range(n):
            v = {f: (x[k] if len(x) == n else "") for f, x in zip(fields[1:], listed, strict=False)}
            v["frame.number"] = frame[0]
            if v["dns.flags.response"] in ("1", "True"):
                rcodes[v["frame.number"], int(v["dns.id"], 0)] = int(v["dns.flags.rcode"])
            elif not v.get("dns.retransmission"):
                queries.append(v)
    result = {}
    names = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
    for q in queries:
        resp, ident = q.get("dns.response_in", ""), int(q["dns.id"], 0)
        name = "<root>" if q["dns.qry.name"] == "<Root>" else q["dns.qry.name"]  # its spelling
        qtype = type_name(int(q["dns.qry.type"])) if q["dns.qry.type"] else ""  # no question
        rcode = rcodes.get((resp, ident))
        result[ident, name, qtype] = (bool(resp), names.get(rcode) if rcode is not None else None)
    return result


def assert_agree(*paths: Path) -> None:
    report, data = run_analysis(*paths)
    for path in paths:
        mine = [f for f in data["flows"] if f["proto"] in ("tcp", "udp")]
        if len(paths) > 1:
            point = path.name.split(".")[0]
            mine = [f for f in mine if point in f["points"]]
        theirs = tshark_conversations(path)
        exact = tshark_stream_bytes(path)
        assert len(mine) == len(theirs), (path, len(mine), len(theirs))
        for f in mine:
            key = (f["proto"], frozenset((f["a"], f["b"])))
            assert key in theirs, (path, key)
            t = theirs[key]
            assert t[f["a"]][0] == f["packets_ab"] and t[f["b"]][0] == f["packets_ba"], key
            for side, mine_bytes in ((f["a"], f["bytes_ab"]), (f["b"], f["bytes_ba"])):
                shown, is_exact = t[side][1], t[side][2]
                if is_exact:
                    assert shown == mine_bytes, key
                else:  # tshark prints "156 kB": agree to its precision
                    unit = 1000 if shown < 1000**2 else 1000**2
                    assert abs(shown - mine_bytes) < unit, key
                assert exact[key][side] == mine_bytes, key
        dns_theirs = tshark_dns(path)
        dns_mine = {
            (d["id"], d["qname"], d["qtype"]): (d["answered"], d["rcode"])
            for d in data["dns"]
            if len(paths) == 1 or d["point"] == path.name.split(".")[0]
        }
        assert dns_mine == dns_theirs, path
    assert report.analysis.index.warnings == []


SAMPLES = sorted(p for p in PCAPS.glob("**/*") if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.parametrize("path", SAMPLES, ids=[str(p.relative_to(PCAPS)) for p in SAMPLES])
def test_samples_agree_with_tshark(path: Path) -> None:
    assert_agree(path)


def _traffic(wrap) -> list[object]:  # type: ignore[no-untyped-def]
    """A TCP session with payload, a DNS exchange and an unanswered query, each IP packet
    passed through `wrap` to put it on a link type or in a tunnel."""
    pkts = tcp_session(data=b"x" * 700, reply=b"y" * 1300)
    pkts += tcp_session(sport=40001, data=b"x" * 50, reply=b"z" * 20000)
    pkts += [
        query("web.default.svc.cluster.local"),
        answer("web.default.svc.cluster.local"),
        query("nope.default.svc.cluster.local", ident=2),
        answer("nope.default.svc.cluster.local", ident=2, rcode=3, rdata=None),
        query("lost.example.com", ident=3, sport=41000),
    ]
    return [wrap(p[IP]) for p in pkts]


LINKS = {
    "ethernet": (1, lambda ip: Ether() / ip),
    "vlan": (1, lambda ip: Ether() / Dot1Q(vlan=5) / ip),
    "qinq": (1, lambda ip: Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=5) / ip),
    "sll": (113, lambda ip: CookedLinux(proto=0x800) / ip),
    "sll2": (276, lambda ip: CookedLinuxV2(proto=0x800) / ip),
    "raw": (101, lambda ip: ip),
    "null": (0, lambda ip: Loopback(type=2) / ip),
    "pppoe": (1, lambda ip: Ether(type=0x8864) / PPPoE(sessionid=0x1234) / PPP(proto=0x21) / ip),
    "mpls": (1, lambda ip: Ether() / MPLS(label=16, s=0) / MPLS(label=2001, s=1) / ip),
    "vlan-mpls": (1, lambda ip: Ether() / Dot1Q(vlan=5, type=0x8847) / MPLS(label=16, s=1) / ip),
    "chdlc": (104, lambda ip: CHDLC(proto=0x0800) / ip),
    # BSD loopback carrying an EtherType, in either byte order, or PPP in HDLC framing
    "null-ethertype-le": (0, lambda ip: Raw(struct.pack("<I", 0x0800)) / ip),
    "null-ethertype-be": (0, lambda ip: Raw(struct.pack(">I", 0x0800)) / ip),
    "null-ppp": (0, lambda ip: Raw(b"\xff\x03\x00\x21") / ip),
    # PPP's protocol compressed to one byte (RFC 1661 6.5)
    "pppoe-short-protocol": (
        1,
        lambda ip: Ether(type=0x8864) / PPPoE(sessionid=0x1234) / Raw(b"\x21") / ip,
    ),
    "ppp": (9, lambda ip: Raw(b"\xff\x03\x00\x21") / ip),
    "ppp-short-protocol": (9, lambda ip: Raw(b"\x21") / ip),
    "ppp-hdlc": (50, lambda ip: Raw(b"\xff\x03\x00\x21") / ip),
    "ppp-ether": (51, lambda ip: PPPoE(sessionid=0x1234) / PPP(proto=0x21) / ip),
    "ipv6": (
        1,
        lambda ip: (
            Ether()
            / IPv6(src="fd00::" + ip.src.split(".")[-1], dst="fd00::" + ip.dst.split(".")[-1])
            / ip.payload
        ),
    ),
}
OUTER = IP(src="172.18.0.2", dst="172.18.0.3")


def _pptp(ip: IP, ppp: bytes) -> IP:
    payload = ppp + bytes(ip)
    header = struct.pack("!HHHHI", 0x3001, 0x880B, len(payload), 7, 1)  # K, S, version 1
    return IP(src=OUTER.src, dst=OUTER.dst, proto=47) / Raw(header + payload)


TUNNELS = {
    "vxlan-flannel": lambda ip: (
        Ether() / OUTER / UDP(sport=40000, dport=8472) / VXLAN(vni=1) / Ether() / ip
    ),
    "vxlan": lambda ip: (
        Ether() / OUTER / UDP(sport=40000, dport=4789) / VXLAN(vni=7) / Ether() / ip
    ),
    "geneve": lambda ip: (
        Ether() / OUTER / UDP(sport=40000, dport=6081) / GENEVE(vni=3, proto=0x6558) / Ether() / ip
    ),
    # reserved bytes a receiver ignores (RFC 7348), set by the sender anyway
    "vxlan-reserved": lambda ip: (
        Ether()
        / OUTER
        / UDP(sport=40000, dport=4789)
        / VXLAN(vni=7, reserved0=0x12, reserved2=0x5A)
        / Ether()
        / ip
    ),
    "ipip": lambda ip: Ether() / OUTER / ip,
    # PPTP: enhanced GRE (version 1, a key of payload length and call id, a sequence
    # number) carrying PPP, with and without its address and control bytes
    "pptp": lambda ip: Ether() / _pptp(ip, b"\xff\x03\x00\x21"),
    "pptp-compressed": lambda ip: Ether() / _pptp(ip, b"\x21"),
    "gre": lambda ip: Ether() / OUTER / GRE(proto=0x0800) / ip,
    "gtpu": lambda ip: Ether() / OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=77) / ip,
    # 5G N3: a PDU session container extension header before the user's packet
    "gtpu-5g": lambda ip: (
        Ether()
        / OUTER
        / UDP(sport=2152, dport=2152)
        / GTP_U_Header(teid=78, E=1, next_ex=0x85)
        / GTPPDUSessionContainer(type=1, QFI=9)
        / ip
    ),
    "erspan1": lambda ip: Ether() / OUTER / GRE(proto=0x88BE) / Ether() / ip,
    "erspan2": lambda ip: (
        Ether()
        / OUTER
        / GRE(proto=0x88BE, seqnum_present=1)
        / ERSPAN_II(session_id=5)
        / Ether()
        / ip
    ),
    "erspan3": lambda ip: (
        Ether()
        / OUTER
        / GRE(proto=0x22EB, seqnum_present=1)
        / ERSPAN_III(session_id=6)
        / Ether()
        / ip
    ),
    "nsh-gre": lambda ip: (
        Ether() / OUTER / GRE(proto=0x894F) / NSH(spi=42, si=255, nextproto=1) / ip
    ),
    "nsh-ethernet": lambda ip: Ether() / NSH(spi=43, si=254, nextproto=3) / Ether() / ip,
    "mpls-gre": lambda ip: Ether() / OUTER / GRE(proto=0x8847) / MPLS(label=300, s=1) / ip,
    # a GRE tunnel carried inside Geneve: both listed, each with its packets
    "gre-in-geneve": lambda ip: (
        Ether()
        / OUTER
        / UDP(sport=40000, dport=6081)
        / GENEVE(vni=3, proto=0x0800)
        / IP(src="192.168.50.1", dst="192.168.50.2")
        / GRE(proto=0x0800)
        / ip
    ),
}


@pytest.mark.parametrize("name", sorted(LINKS))
def test_link_types_agree_with_tshark(tmp_path: Path, name: str) -> None:
    linktype, wrap = LINKS[name]
    path = write_pcap(tmp_path / f"{name}.pcap", linktype, frames(_traffic(wrap)))
    assert_agree(path)


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_tunnels_agree_with_tshark(tmp_path: Path, name: str) -> None:
    path = write_pcap(tmp_path / f"{name}.pcap", 1, frames(_traffic(TUNNELS[name])))
    assert_agree(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gtpu", [("gtpu", 77, 2152)]),
        ("gtpu-5g", [("gtpu", 78, 2152)]),
        ("erspan1", [("erspan", 0, 0)]),
        ("erspan2", [("erspan", 5, 0)]),
        ("erspan3", [("erspan", 6, 0)]),
        ("nsh-gre", [("gre", 0, 0)]),
        ("mpls-gre", [("gre", 0, 0)]),
        ("gre-in-geneve", [("gre", 0, 0), ("geneve", 3, 6081)]),
        ("pptp", [("gre", 7, 0)]),  # the call id
        ("vxlan-reserved", [("vxlan", 7, 4789)]),
    ],
)
def test_each_tunnel_is_listed_with_every_packet_it_carried(
    tmp_path: Path, name: str, expected: list[tuple[str, int, int]]
) -> None:
    path = write_pcap(tmp_path / f"{name}.pcap", 1, frames(_traffic(TUNNELS[name])))
    _, data = run_analysis(path)
    rows = sorted((t["kind"], t["vni"], t["port"], t["packets"]) for t in data["tunnels"])
    # every packet of the traffic went through each layer: a nested tunnel is no empty row
    assert rows == sorted((*e, len(_traffic(TUNNELS[name]))) for e in expected)


def tshark_http_tree(path: Path) -> tuple[Counter[str], Counter[int]]:
    """(requests by method, responses by status) from tshark's `-z http,tree`."""
    methods: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    section = ""
    for line in tshark("-q", "-r", str(path), "-z", "http,tree").splitlines():
        if line.startswith(" HTTP "):
            section = line.split()[1]  # Request | Response
        elif line.startswith(" Other"):
            section = ""
        elif section == "Request" and (m := re.match(r"^  ([A-Z]+)\s+(\d+)\s", line)):
            methods[m.group(1)] += int(m.group(2))
        elif section == "Response" and (m := re.match(r"^   (\d{3}) .*?\s{2,}(\d+)\s", line)):
            statuses[int(m.group(1))] += int(m.group(2))
    return +methods, +statuses


HTTP_FILES = [
    PCAPS / "http-dns.pcap",
    PCAPS / "tls-http.pcap",
    *(
        PCAPS / "lab" / bundle / "points" / f"{point}.pcap"
        for bundle in ("healthy", "http-keepalive", "http-503", "http-slow", "http-reset")
        for point in ("client-eth0", "node-a-eth0", "web-2-eth0")
    ),
]


@pytest.mark.parametrize("path", HTTP_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_http_requests_and_answers_match_tshark_http_tree(path: Path) -> None:
    """HTTP/1.x requests by method and answers by status, as `tshark -z http,tree` counts
    them: an answer counts once it is whole (tshark reassembles the body first), answers to
    requests made before the capture began too."""
    txs = [t for t in run_analysis(path)[0].analysis.http.transactions if t.protocol != "HTTP/2"]
    methods = Counter(t.method for t in txs if t.method)
    statuses = Counter(t.status for t in txs if t.status is not None and t.done_ts is not None)
    assert (methods, statuses) == tshark_http_tree(path)
    assert methods  # every file here carries HTTP


def test_methods_beyond_the_common_ones_count_as_tshark_counts_them(tmp_path: Path) -> None:
    """Requests of WebDAV and UPnP methods, as `tshark -z http,tree` counts them. tshark knows
    methods from a list, so a made-up one (PURGE) is ktrace's alone; its answer it counts."""
    packets = []
    for k, method in enumerate([b"PROPFIND", b"MKCOL", b"NOTIFY", b"SUBSCRIBE", b"GET", b"PURGE"]):
        request = method + b" /r HTTP/1.1\r\nHost: h\r\n\r\n"
        reply = b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % (200 + k)
        packets += tcp_session(sport=41000 + k, data=request, reply=reply)
    path = write_pcap(tmp_path / "methods.pcap", 1, frames(packets))
    txs = run_analysis(path)[0].analysis.http.transactions
    methods = Counter(t.method for t in txs if t.method)
    statuses = Counter(t.status for t in txs if t.status is not None and t.done_ts is not None)
    assert methods.pop("PURGE") == 1
    assert (methods, statuses) == tshark_http_tree(path)
    assert len(methods) == 5


def _hello(kind: int, versions: bytes, suites: bytes) -> bytes:
    """A TLS 1.3-style hello carrying only a supported_versions extension."""
    ext = struct.pack("!HH", 43, len(versions)) + versions
    body = b"\x03\x03" + bytes(32) + b"\x00" + suites + struct.pack("!H", len(ext)) + ext
    handshake = bytes([kind]) + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake


@pytest.mark.parametrize(
    ("offered", "selected"),
    [((0x7F17,), 0x7F17), ((0x0A0A, 0x0304, 0x0303), 0x0304), ((0xFE0D,), 0xFE0D)],
    ids=["draft-23", "grease-then-1.3", "unlisted"],
)
def test_the_selected_tls_version_is_the_one_shown(
    tmp_path: Path, offered: tuple[int, ...], selected: int
) -> None:
    """A version the table lacks (a draft, an experiment) is shown by its selected code, as
    tshark shows it, never as the legacy 0x0303 the hello also carries."""
    listed = b"".join(struct.pack("!H", v) for v in offered)
    client = _hello(1, bytes([len(listed)]) + listed, b"\x00\x02\x13\x01\x01\x00")
    server = _hello(2, struct.pack("!H", selected), b"\x13\x01\x00")
    path = write_pcap(
        tmp_path / "tls.pcap", 1, frames(tcp_session(dport=443, data=client, reply=server))
    )
    shown = tshark("-r", str(path), "-Y", "tls.handshake.type==2", "-T", "fields", "-e",
                   "tls.handshake.extensions.supported_version").split()  # fmt: skip
    assert shown == [f"0x{selected:04x}"]
    (session,) = run_analysis(path)[0].analysis.http.tls
    names = {0x0304: "TLS 1.3", 0x7F17: "TLS 1.3 (draft 23)", 0xFE0D: "0xfe0d"}
    assert session.version == session.offered_version == names[selected]


def _segments(client_port: int, asked: bytes, answered: list[bytes]) -> list[object]:
    """A TCP connection to port 53: the handshake, `asked` in one segment, then each piece
    of `answered` in a segment of its own."""
    seq = {"c": 1000 + client_port * 7919, "s": 5000 + client_port * 104729}
    out: list[object] = []

    def send(side: str, data: bytes, flags: str = "PA") -> None:
        c = side == "c"
        ip = IP(src="10.0.0.1", dst="10.0.1.5") if c else IP(src="10.0.1.5", dst="10.0.0.1")
        ports = (client_port, 53) if c else (53, client_port)
        tcp = TCP(sport=ports[0], dport=ports[1], flags=flags, seq=seq[side] % 2**32)
        out.append(Ether() / ip / tcp / data)
        seq[side] += len(data) + (1 if "S" in flags else 0)

    send("c", b"", "S")
    send("s", b"", "SA")
    send("c", asked)
    for piece in answered:
        send("s", piece)
    return out


def _length_prefixed(message: object) -> bytes:
    body = bytes(message)  # type: ignore[call-overload]
    return struct.pack("!H", len(body)) + body


def test_dns_over_tcp_and_without_a_question_pair_as_tshark_pairs_them(tmp_path: Path) -> None:
    """Twenty queries in one segment and their answers cut anywhere, one answer across two
    segments; a stream on port 53 that is not DNS; an inverse query and a FORMERR answer to
    junk, which carry no question. tshark reassembles the TCP streams likewise."""
    names = [f"n{k}.example" for k in range(20)]
    asked = b"".join(
        _length_prefixed(DNS(id=k + 1, rd=1, qd=DNSQR(qname=n))) for k, n in enumerate(names)
    )
    answers = b"".join(
        _length_prefixed(DNS(id=k + 1, qr=1, rcode=3 * (k % 2), qd=DNSQR(qname=n)))
        for k, n in enumerate(names)
    )
    packets = _segments(41000, asked, [answers[:100], answers[100:333], answers[333:]])
    packets += _segments(41001, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [b"HTTP/1.1 200 OK\r\n\r\n"])
    to, back = IP(src="10.0.0.1", dst="10.0.1.5"), IP(src="10.0.1.5", dst="10.0.0.1")
    packets += [
        Ether()
        / to
        / UDP(sport=41002, dport=53)
        / DNS(id=77, opcode=1, qd=[], an=DNSRR(rrname="x")),
        Ether() / back / UDP(sport=53, dport=41002) / DNS(id=77, qr=1, opcode=1, rcode=4, qd=[]),
        Ether() / to / UDP(sport=41003, dport=53) / struct.pack("!6H", 88, 0, 0, 0, 0, 0),
        Ether() / back / UDP(sport=53, dport=41003) / DNS(id=88, qr=1, rcode=1, qd=[]),
    ]
    path = write_pcap(tmp_path / "dns-tcp.pcap", 1, frames(packets))
    _, data = run_analysis(path)
    mine = {(d["id"], d["qname"], d["qtype"]): (d["answered"], d["rcode"]) for d in data["dns"]}
    assert mine == tshark_dns(path)
    assert len(mine) == 22 and all(answered for answered, _ in mine.values())
    assert {d["transport"] for d in data["dns"]} == {"tcp", "udp"}
    assert data["dns_orphan_responses"] == 0


def test_http_after_holes_in_a_keep_alive_connection_counts_as_tshark_counts(
    tmp_path: Path,
) -> None:
    """Requests and answers after bytes the capture missed (a whole answer, the head of
    another, a request) are read again from the next message head, as tshark reads them.
    Where tshark is wrong: the answer after the orphaned tail of a body, whole in its own
    segment, it reads as that body's continuation and does not count (204)."""
    from tests.test_http import keep_alive_with_holes, write

    path = write(tmp_path / "holes.pcap", [keep_alive_with_holes()])
    txs = run_analysis(path)[0].analysis.http.transactions
    methods = Counter(t.method for t in txs if t.method)
    statuses = Counter(t.status for t in txs if t.status is not None and t.done_ts is not None)
    theirs_methods, theirs_statuses = tshark_http_tree(path)
    assert methods == theirs_methods == {"GET": 6}
    assert statuses == theirs_statuses + Counter({204: 1})


def test_http_heads_cut_by_the_snap_length_count_as_tshark_counts(tmp_path: Path) -> None:
    """Answers whose heads a 128-byte snap length cut count by the status line captured,
    as tshark counts them."""
    from tests.test_http import snapped_heads, write

    path = write(tmp_path / "snapped.pcap", [snapped_heads()], snap=128)
    txs = run_analysis(path)[0].analysis.http.transactions
    methods = Counter(t.method for t in txs if t.method)
    statuses = Counter(t.status for t in txs if t.status is not None)
    theirs_methods, theirs_statuses = tshark_http_tree(path)
    assert methods == theirs_methods == {"GET": 3}
    assert statuses == theirs_statuses == {201: 1, 202: 1, 203: 1}


def test_http2_caught_midway_reads_as_tshark_reads_it(tmp_path: Path) -> None:
    """gRPC whose preface, SETTINGS and first calls came before the capture: each stream's
    method, path and status as tshark decodes them. tshark must be told the port is HTTP/2
    (its heuristic is off by default); ktrace finds the frames by their structure. What the
    header table held from before reads '?' in ktrace and is missing from tshark's."""
    from tests.test_http import grpc_connection, write

    conn = grpc_connection()
    conn.packets = conn.packets[9:]
    path = write(tmp_path / "midway.pcap", [conn])
    fields = ["tcp.dstport", "http2.streamid", "http2.headers.method", "http2.headers.path",
              "http2.headers.status"]  # fmt: skip
    out = tshark("-r", str(path), "-d", "tcp.port==50051,http2", "-Y", "http2.type==1",
                 "-T", "fields", *[x for f in fields for x in ("-e", f)])  # fmt: skip
    theirs: dict[int, dict[str, str]] = defaultdict(dict)
    for line in out.splitlines():
        port, streams, method, target, status = line.split("\t")
        sid = int(streams.split(",")[0])
        if port == "50051" and method:
            theirs[sid] |= {"method": method, "path": target or "?"}
        elif status:
            theirs[sid]["status"] = status
    mine: dict[int, dict[str, str]] = defaultdict(dict)
    for t in run_analysis(path)[0].analysis.http.transactions:
        if t.method:
            mine[t.stream] |= {"method": t.method, "path": t.path}
        if t.status is not None:
            mine[t.stream]["status"] = str(t.status)
    assert mine == theirs
    assert len(theirs) == 11 and sum("method" in v for v in theirs.values()) == 10


def test_tls_after_a_plaintext_start_is_found_as_tshark_finds_it(tmp_path: Path) -> None:
    """ClientHellos after SMTP's STARTTLS, PostgreSQL's SSL request, a SOCKS5 handshake and
    an HTTP CONNECT (asked twice) carry the server names tshark's dissectors find; and the
    HTTP requests and answers are tshark's, but for the plain HTTP inside the CONNECT
    tunnel to port 80, which tshark leaves undissected (bare TCP segments)."""
    from tests.test_http import tls_after_plaintext, write

    path = write(tmp_path / "upgraded.pcap", tls_after_plaintext())
    result = run_analysis(path)[0]
    theirs = tshark("-r", str(path), "-Y", "tls.handshake.type==1", "-T", "fields",
                    "-e", "tcp.dstport", "-e", "tls.handshake.extensions_server_name")  # fmt: skip
    mine = {f"{s.server.rsplit(':', 1)[1]}\t{s.sni}" for s in result.analysis.http.tls}
    assert mine == set(theirs.splitlines()) and len(mine) == 4
    txs = result.analysis.http.transactions
    methods = Counter(t.method for t in txs if t.method)
    statuses = Counter(t.status for t in txs if t.status is not None)
    theirs_methods, theirs_statuses = tshark_http_tree(path)
    assert methods == theirs_methods + Counter({"GET": 1})
    assert statuses == theirs_statuses + Counter({404: 1})


def test_ip_lengths_that_contradict_the_packet_are_malformed_as_for_tshark(
    tmp_path: Path,
) -> None:
    """IPv4 total lengths below the header's (11) and beyond the frame: tshark flags both
    as errors, and ktrace counts both as malformed. Where tshark is wrong: it still reads a
    ClientHello from the second, whose IP header contradicts the frame it came in; ktrace
    invents nothing from it and reads only the well-formed one beside them."""
    from tests.test_http import client_hello

    hello = client_hello("real.example", [])
    bogus = [11, 4000]
    packets = [
        *(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", len=n) / TCP(dport=443) / hello
          for n in bogus),
        *tcp_session(sport=41000, dport=443, data=hello, reply=b"\x15\x03\x03\x00\x02\x02\x28"),
    ]  # fmt: skip
    path = write_pcap(tmp_path / "bogus.pcap", 1, frames(packets))
    result, data = run_analysis(path)
    flagged = tshark("-r", str(path), "-Y", "_ws.expert.severity == error && ip", "-T",
                     "fields", "-e", "frame.number")  # fmt: skip
    hellos = tshark("-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
                    "-e", "frame.number")  # fmt: skip
    said = [w for w in data["warnings"] if "malformed" in w]
    assert flagged.split() == ["1", "2"]
    assert said[0].startswith("2 packets whose IP length fields contradict the packet")
    assert hellos.split() == ["2", "6"]  # the first from the bogus frame 2
    assert [s.hello_row + 1 for s in result.analysis.http.tls] == [6]
