"""HTTP/1.x, HTTP/2 (gRPC) and TLS read from TCP streams: messages across segments, keep-alive
and pipelining, the ways a body is framed, reordered and resent segments, captures cut by the
snap length or begun mid-connection, h2c, and the checks on what they carry."""

from __future__ import annotations

import ssl
from pathlib import Path

import hpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ktrace.analysis.http import HttpTransaction
from ktrace.decode.h2 import HeaderDecoder
from ktrace.pcap.writer import PcapWriter
from tests.helpers import LAB, PCAPS, T0, run_analysis

CLIENT_IP, SERVER_IP = "10.244.0.7", "10.244.1.9"
MS = 1_000_000


class Conn:
    """One TCP connection written packet by packet: each call sends one segment, 1 ms after
    the previous packet unless told otherwise."""

    def __init__(
        self, sport: int = 41000, dport: int = 80, handshake: bool = True, start: int = T0
    ) -> None:
        self.sport, self.dport = sport, dport
        self.seq = {"c": 1000 + sport * 7, "s": 900_000 + sport * 13}
        self.packets: list[tuple[int, bytes, int]] = []  # (ts, frame, wire length)
        self.t = start
        if handshake:
            self._send("c", b"", "S")
            self._send("s", b"", "SA")
            self._send("c", b"", "A")

    def _send(self, side: str, data: bytes, flags: str, at: int | None = None) -> int:
        c = side == "c"
        src, dst = (CLIENT_IP, SERVER_IP) if c else (SERVER_IP, CLIENT_IP)
        sport, dport = (self.sport, self.dport) if c else (self.dport, self.sport)
        other = self.seq["s" if c else "c"]
        seq = self.seq[side] if at is None else at
        frame = (
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=other % 2**32)
            / data
        )
        self.t += MS
        self.packets.append((self.t, bytes(frame), len(frame)))
        if at is None:
            self.seq[side] += len(data) + (1 if ("S" in flags or "F" in flags) else 0)
        return seq

    def c(self, data: bytes) -> int:
        return self._send("c", data, "PA")

    def s(self, data: bytes) -> int:
        return self._send("s", data, "PA")

    def again(self, side: str, at: int, data: bytes) -> None:
        """A segment sent again (or late) at an earlier sequence number."""
        self._send(side, data, "PA", at=at)

    def lose(self, side: str, data: bytes) -> None:
        """A segment sent and missed by the capture."""
        self.seq[side] += len(data)
        self.t += MS

    def wait(self, ms: int) -> None:
        self.t += ms * MS

    def fin(self, side: str = "s") -> None:
        self._send(side, b"", "FA")

    def rst(self, side: str = "s") -> None:
        self._send(side, b"", "R")


def write(path: Path, conns: list[Conn], snap: int = 262144) -> Path:
    packets = sorted(p for conn in conns for p in conn.packets)
    with PcapWriter(path, 1, snaplen=snap) as w:
        for ts, frame, wire in packets:
            w.write(ts, frame[:snap], wire)
    return path


def transactions(path: Path) -> list[HttpTransaction]:
    return run_analysis(path)[0].analysis.http.transactions


def test_keep_alive_pipelining_and_every_body_framing(tmp_path: Path) -> None:
    conn = Conn()
    conn.c(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nGET /b HTTP/1.1\r\nHo")  # pipelined, split
    conn.c(b"st: web\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    conn.s(b"56789HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd")
    conn.s(b"\r\n0\r\nX-Trailer: yes\r\n\r\n")
    conn.c(b"POST /c HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n")
    conn.s(b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.c(b"abc")
    conn.c(b"def")
    conn.wait(40)
    conn.s(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    conn.c(b"HEAD /d HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")  # HEAD: no body follows
    conn.c(b"GET /e HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 204 No Content\r\n\r\n")
    conn.c(b"GET /f HTTP/1.0\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.0 200 OK\r\n\r\nuntil the close")
    conn.fin()
    txs = transactions(write(tmp_path / "h1.pcap", [conn]))
    got = [(t.method, t.path, t.status, t.request_bytes, t.response_bytes, t.ended) for t in txs]
    assert got == [
        ("GET", "/a", 200, 0, 10, "complete"),
        ("GET", "/b", 404, 0, 4, "complete"),
        ("POST", "/c", 201, 6, 0, "complete"),
        ("HEAD", "/d", 200, 0, 0, "complete"),
        ("GET", "/e", 204, 0, 0, "complete"),
        ("GET", "/f", 200, 0, 15, "complete"),
    ]
    assert [t.stream for t in txs] == [1, 2, 3, 4, 5, 6]
    assert {t.protocol for t in txs} == {"HTTP/1.1", "HTTP/1.0"}
    assert txs[0].host == "web" and txs[0].client == f"{CLIENT_IP}:41000"
    # /a asked in the first segment, answered in the third packet after it
    assert txs[0].latency_ns == 2 * MS and txs[0].done_ts == txs[0].response_ts + MS
    # the 201 follows the 100 Continue: the wait counts to the final answer, 40 ms later
    assert txs[2].latency_ns is not None and txs[2].latency_ns > 40 * MS


def test_reordered_and_resent_segments_keep_first_arrival_times(tmp_path: Path) -> None:
    conn = Conn()
    conn.c(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n"
    first = conn.seq["s"]
    conn.seq["s"] += len(head) + 1000  # the head and the first 1000 bytes arrive late
    conn.s(b"y" * 1000)
    conn.s(b"z" * 1000)
    conn.again("s", first, head + b"x" * 1000)
    conn.again("s", first, head + b"x" * 1000)  # and once more: a retransmission
    txs = transactions(write(tmp_path / "reorder.pcap", [conn]))
    (t,) = txs
    assert (t.status, t.response_bytes, t.ended) == (200, 3000, "complete")
    # the first byte of the answer came in the late segment (3 ms after the request); the
    # last one had come before it
    assert t.latency_ns == 3 * MS and t.done_ts == t.request_ts + 2 * MS


def test_snapped_capture_still_measures_bodies(tmp_path: Path) -> None:
    conn = Conn()
    conn.c(b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2400\r\n\r\n" + b"a" * 1200)
    conn.s(b"b" * 1200)
    conn.c(b"GET /y HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad")
    (a, b) = transactions(write(tmp_path / "snap.pcap", [conn], snap=200))
    assert (a.status, a.response_bytes, a.ended) == (200, 2400, "complete")
    assert (b.path, b.status) == ("/y", 500)


def test_capture_begun_mid_connection_finds_the_next_message(tmp_path: Path) -> None:
    conn = Conn(handshake=False)
    conn.c(b"xt/plain\r\n\r\nrest of an earlier body")
    conn.s(b"tail of an earlier answer")
    conn.c(b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    (t,) = transactions(write(tmp_path / "mid.pcap", [conn]))
    assert (t.path, t.status, t.ended) == ("/next", 200, "complete")


def test_an_answer_to_a_request_made_before_the_capture(tmp_path: Path) -> None:
    """It is kept (tshark counts it too), without a method and without a wait."""
    conn = Conn(handshake=False)
    conn.s(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    conn.c(b"GET /again HTTP/1.1\r\nHost: web\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    earlier, again = transactions(write(tmp_path / "orphan.pcap", [conn]))
    assert (earlier.method, earlier.stream, earlier.status, earlier.latency_ns) == (
        "",
        0,
        503,
        None,
    )
    assert earlier.client == f"{CLIENT_IP}:41000"  # the side that does not answer
    assert (again.path, again.status, again.latency_ns) == ("/again", 200, MS)


def test_reset_mid_answer_and_a_request_never_answered(tmp_path: Path) -> None:
    cut = Conn(41001)
    cut.c(b"GET /big.bin HTTP/1.1\r\nHost: web\r\n\r\n")
    cut.s(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    cut.rst("s")
    closed = Conn(41002)
    closed.c(b"GET /hang HTTP/1.1\r\nHost: web\r\n\r\n")
    closed.wait(30)
    closed.fin("s")
    path = write(tmp_path / "cut.pcap", [cut, closed])
    result, data = run_analysis(path)
    by_path = {t.path: t for t in result.analysis.http.transactions}
    assert (by_path["/big.bin"].ended, by_path["/big.bin"].ended_by) == ("reset", "server")
    assert by_path["/big.bin"].done_ts is None and by_path["/big.bin"].status == 200
    assert (by_path["/hang"].status, by_path["/hang"].ended) == (None, "closed")
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["http.reset"]["severity"] == "high"
    assert ids["http.unanswered"]["title"].startswith("1 HTTP request never answered")
    assert "closed the connection" in ids["http.unanswered"]["explanation"]


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def test_grpc_over_http2_prior_knowledge(tmp_path: Path) -> None:
    client, server = hpack.Encoder(), hpack.Encoder()
    conn = Conn(dport=50051)
    call = [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Greeter/Hello"),
            (":authority", "greeter:50051"), ("content-type", "application/grpc")]  # fmt: skip
    conn.c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b""))
    conn.c(h2_frame(1, 4, 1, client.encode(call)) + h2_frame(0, 1, 1, b"\0\0\0\0\x05hello"))
    # the second call reuses the header table (indexed fields): both must decode
    conn.c(h2_frame(1, 4, 3, client.encode(call)) + h2_frame(0, 1, 3, b"\0\0\0\0\x02hi"))
    conn.s(h2_frame(4, 0, 0, b"") + h2_frame(4, 1, 0, b""))
    conn.wait(5)
    answer = [(":status", "200"), ("content-type", "application/grpc")]
    conn.s(h2_frame(1, 4, 1, server.encode(answer)) + h2_frame(0, 0, 1, b"\0\0\0\0\x03bye"))
    trailers = [("grpc-status", "14"), ("grpc-message", "backend%20down")]
    conn.s(h2_frame(1, 5, 1, server.encode(trailers)))
    conn.s(h2_frame(3, 0, 3, (2).to_bytes(4, "big")))  # RST_STREAM INTERNAL_ERROR
    path = write(tmp_path / "grpc.pcap", [conn])
    result, data = run_analysis(path)
    one, three = result.analysis.http.transactions
    assert (one.protocol, one.stream, one.method, one.path) == (
        "HTTP/2",
        1,
        "POST",
        "/pkg.Greeter/Hello",
    )
    assert (one.grpc_service, one.grpc_method) == ("pkg.Greeter", "Hello")
    assert (one.status, one.grpc_status, one.grpc_message) == (200, 14, "backend down")
    assert (one.request_bytes, one.response_bytes, one.ended) == (10, 8, "complete")
    assert one.failed and one.latency_ns is not None and one.latency_ns > 5 * MS
    assert (three.stream, three.status, three.ended, three.ended_by) == (3, None, "reset", "server")
    row = next(r for r in data["http"] if r["path"] == "/pkg.Greeter/Hello")
    assert row["grpc_status"] == "UNAVAILABLE" and row["grpc_method"] == "Hello"
    assert {f["id"] for f in data["findings"]} >= {"http.errors", "http.unanswered"}


def test_h2c_upgrade_answers_the_upgraded_request_as_stream_1(tmp_path: Path) -> None:
    server = hpack.Encoder()
    conn = Conn()
    conn.c(b"GET /up HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")  # fmt: skip
    conn.s(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn.c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b""))
    conn.s(h2_frame(4, 0, 0, b""))
    conn.s(h2_frame(1, 4, 1, server.encode([(":status", "200")])) + h2_frame(0, 1, 1, b"hey"))
    (t,) = transactions(write(tmp_path / "h2c.pcap", [conn]))
    assert (t.protocol, t.stream, t.path, t.status, t.response_bytes) == (
        "HTTP/2",
        1,
        "/up",
        200,
        3,
    )
    assert t.ended == "complete"


def client_hello(name: str, alpn: list[str]) -> bytes:
    """A real ClientHello, from Python's TLS stack writing into memory."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_tls_hello_and_a_handshake_refused_with_an_alert(tmp_path: Path) -> None:
    ok = Conn(41010, 443)
    ok.c(client_hello("api.example", ["h2", "http/1.1"]))
    refused = Conn(41011, 443, start=T0 + 100 * MS)
    refused.c(client_hello("old.example", ["http/1.1"]))
    refused.s(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
    refused.fin("s")
    result, data = run_analysis(write(tmp_path / "tls.pcap", [ok, refused]))
    first, second = result.analysis.http.tls
    assert (first.sni, first.offered_alpn, first.failed) == (
        "api.example",
        ("h2", "http/1.1"),
        False,
    )
    assert first.offered_version == "TLS 1.3"
    assert (second.sni, second.alert, second.failed) == (
        "old.example",
        "server fatal handshake_failure",
        True,
    )
    assert (second.client, second.server) == (f"{CLIENT_IP}:41011", f"{SERVER_IP}:443")
    (finding,) = [f for f in data["findings"] if f["id"] == "tls.handshake"]
    assert "old.example" in finding["title"] and len(finding["evidence"]) == 2
    assert not result.analysis.http.transactions  # nothing of HTTP is read inside TLS


def test_tls_sample_recorded_from_real_stacks() -> None:
    result, data = run_analysis(PCAPS / "tls-http.pcap")
    tls = {s.sni: s for s in result.analysis.http.tls}
    assert tls["web.example"].version == "TLS 1.3" and not tls["web.example"].failed
    assert tls["legacy.example"].alert == "server fatal protocol_version"
    assert {f["id"] for f in data["findings"]} == {"tls.handshake", "http.unanswered"}


@pytest.mark.parametrize(
    "capture",
    [PCAPS / "tls-http.pcap", PCAPS / "http-dns.pcap", LAB / "http-keepalive", LAB / "hairpin"],
    ids=lambda p: p.name,
)
def test_app_start_flag_is_the_payloads_first_word(capture: Path) -> None:
    """The decoder's APP_START flag, set from the header windows (inner packets of VXLAN
    included), says what the payload's first four bytes read from the file say."""
    from ktrace.bundle.inputs import read_inputs
    from ktrace.decode.gather import gather
    from ktrace.decode.index import build_index
    from ktrace.decode.ip import APP_START
    from ktrace.decode.lead import looks_like_app

    with build_index(read_inputs([capture]).files) as index:
        c = index.columns
        have = np.minimum(c.paylen.astype(np.int64), c.caplen.astype(np.int64) - c.payoff)
        tcp = (c.proto == 6) & (c.l3 > 0) & (have >= 4)
        rows = np.flatnonzero(tcp)
        got = gather(index.mapped, c.point[rows], c.offset[rows] + c.payoff[rows], 4)
        words = got.copy().view(">u4").reshape(-1)
        flagged = (c.ipflags & APP_START) != 0
        assert flagged[rows].tolist() == looks_like_app(words).tolist()
        assert flagged[rows].any() and not flagged[~tcp].any()


def test_lab_request_followed_from_client_to_backend() -> None:
    """The keep-alive connection DNAT-ed to web-2: each request at all six points, its wait
    shrinking towards the server, the backend named although the client asked the VIP."""
    _, data = run_analysis(LAB / "http-keepalive")
    rows = [r for r in data["http"] if r["server"] == "10.96.0.20:80" and len(r["points"]) == 6]
    assert [r["path"] for r in rows] == ["/", "/index.html", "/big.bin"]
    for r in rows:
        assert r["backend_name"].endswith("(default/web-2)")
        assert (r["points"][0]["point"], r["points"][-1]["point"]) == ("client-eth0", "web-2-eth0")
        waits = [p["latency_ms"] for p in r["points"]]
        assert waits == sorted(waits, reverse=True)  # each hop towards the server waits less
        assert r["server_ms"] == waits[-1] and r["network_ms"] == pytest.approx(
            waits[0] - waits[-1], abs=0.002
        )
    grpc = [r for r in data["http"] if r["grpc_service"]]
    assert len(grpc) == 3 and {r["grpc_status"] for r in grpc} == {"OK"}
    assert not data["findings"]


def test_lab_grpc_channel_opened_before_the_capture() -> None:
    """A real gRPC stack's channel, opened before the capture began: its three calls are
    found at every point from the client to web-2, each with its status and its wait split
    into server and network time; the path it indexed before reads '?' and is said."""
    _, data = run_analysis(LAB / "grpc-midway")
    calls = [r for r in data["http"] if r["protocol"] == "HTTP/2"]
    assert [(r["method"], r["path"], r["status"]) for r in calls] == [("POST", "?", 200)] * 3
    for r in calls:
        assert r["backend_name"].endswith("(default/web-2)") and len(r["points"]) == 6
        assert r["server_ms"] > 0 and r["network_ms"] > 0
    assert any("HTTP/2 header field" in w for w in data["warnings"])
    assert not data["findings"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.lists(st.binary(max_size=300), max_size=6),
)
def test_garbage_after_a_request_start_never_breaks_the_analysis(
    tmp_path: Path, client: list[bytes], server: list[bytes]
) -> None:
    conn = Conn()
    conn.c(b"GET / HTTP/1.1\r\n" + client[0])
    for data in client[1:]:
        conn.c(data)
    for data in server:
        conn.s(b"HTTP/1.1 " + data)
    path = write(tmp_path / "junk.pcap", [conn])
    for t in transactions(path):
        assert t.method == "GET" and t.ended in ("complete", "reset", "closed", "open")


def test_websocket_upgrade_is_an_answer_and_a_client_giving_up_is_named(tmp_path: Path) -> None:
    ws = Conn(41020)
    ws.c(b"GET /chat HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    ws.s(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    ws.c(b"\x81\x85abcd" + b"\x00" * 5)  # frames, not HTTP
    ws.wait(20_000)
    ws.fin("s")
    impatient = Conn(41021, start=T0 + 5 * MS)
    impatient.c(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
    impatient.wait(3000)
    impatient.fin("c")  # its timeout
    impatient.fin("s")
    hedged = Conn(41022, start=T0 + 9 * MS)  # a duplicate request, cancelled when the first won
    hedged.c(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
    hedged.wait(100)
    hedged.rst("c")
    result, data = run_analysis(write(tmp_path / "ws.pcap", [ws, impatient, hedged]))
    chat, slow, cancelled = result.analysis.http.transactions
    assert (cancelled.ended, cancelled.ended_by) == ("reset", "client")
    assert (chat.path, chat.status, chat.ended) == ("/chat", 101, "complete")
    assert (slow.path, slow.status, slow.ended, slow.ended_by) == (
        "/slow",
        None,
        "closed",
        "client",
    )
    (finding,) = [f for f in data["findings"] if f["id"] == "http.unanswered"]
    assert "1 HTTP request never answered" in finding["title"]
    assert "the client closed the connection" in finding["explanation"]


def test_tls_warning_goes_on_and_a_silent_close_fails(tmp_path: Path) -> None:
    warned = Conn(41030, 443)
    warned.c(client_hello("a.example", []))
    server_hello = bytes.fromhex(
        "0200002603030000000000000000000000000000000000000000000000000000000000000000c02f00"
    )
    warned.s(
        b"\x15\x03\x03\x00\x02\x01\x70"
        + b"\x16\x03\x03"
        + len(server_hello).to_bytes(2, "big")
        + server_hello
    )
    silent = Conn(41031, 443, start=T0 + 50 * MS)
    silent.c(client_hello("b.example", []))
    silent.fin("s")
    result, _ = run_analysis(write(tmp_path / "warn.pcap", [warned, silent]))
    a, b = result.analysis.http.tls
    assert (a.alert, a.server_hello, a.version, a.failed) == (
        "server warning unrecognized_name",
        True,
        "TLS 1.2",
        False,
    )
    assert (b.sni, b.server_hello, b.failed) == ("b.example", False, True)


HEADER_NAME = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_0123456789 \t\x1c",
    min_size=1,
    max_size=12,
)
HEADER_VALUE = st.text(
    st.characters(min_codepoint=0, max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=20
)


@settings(max_examples=300, deadline=None)
@example([("X-Sep", ": ", "end\x1c"), ("X-Tab", ":", "\x0bmid\t")], "\r\n")
@example([("Bad\x1cName", ": ", "v")], "\r\n")
@example([("0", ":", "\x1f")], "\r\n")
@given(
    st.lists(
        st.tuples(HEADER_NAME, st.sampled_from([":", ": ", ":  ", " : ", ""]), HEADER_VALUE),
        max_size=8,
    ),
    st.sampled_from(["\r\n", "\n"]),
)
def test_plain_header_path_reads_as_dpkt_does(fields: list[tuple[str, str, str]], eol: str) -> None:
    """The fast path either declines or gives exactly dpkt's headers."""
    from ktrace.decode.http1 import dpkt_headers, plain_headers

    block = "".join(f"{n}{sep}{v}{eol}" for n, sep, v in fields).encode("latin-1") + eol.encode()
    fast = plain_headers(block)
    try:
        slow: dict[str, str] | None = dpkt_headers(block)
    except ValueError:
        slow = None
    if fast is not None:
        assert fast == slow
    plain = all(n.isalnum() and sep.startswith(":") for n, sep, _ in fields)
    if eol == "\r\n" and block.isascii() and plain:
        assert fast is not None  # the common case does take the fast path


def test_a_request_crossing_the_servers_idle_close_is_not_unanswered(tmp_path: Path) -> None:
    """The keep-alive race every HTTP client meets: the server closes an idle connection as
    the client sends on it. The server's FIN acknowledges none of the request: it closed
    first, and the client sends the request again elsewhere. A server that reads the request
    (acknowledges it) and then closes did not answer it."""
    raced = Conn(41040)
    raced.c(b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n")
    raced.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raced.wait(5000)  # idle
    acked = raced.seq["c"]
    raced.c(b"GET /two HTTP/1.1\r\nHost: web\r\n\r\n")
    sent = raced.seq["c"]
    raced.seq["c"] = acked  # the FIN acknowledges what came before the second request
    raced.fin("s")
    raced.seq["c"] = sent
    raced.rst("s")  # the request then reached a closed socket
    read = Conn(41041, start=T0 + 10 * MS)
    read.c(b"GET /three HTTP/1.1\r\nHost: web\r\n\r\n")
    read.fin("s")
    result, data = run_analysis(write(tmp_path / "race.pcap", [raced, read]))
    by_path = {t.path: t for t in result.analysis.http.transactions}
    assert (by_path["/two"].ended, by_path["/two"].ended_by) == ("crossed", "server")
    assert (by_path["/three"].ended, by_path["/three"].ended_by) == ("closed", "server")
    (finding,) = [f for f in data["findings"] if f["id"] == "http.unanswered"]
    assert finding["title"].startswith("1 HTTP request never answered")


def test_http2_streams_after_a_goaway_were_never_taken_up(tmp_path: Path) -> None:
    client, server = hpack.Encoder(), hpack.Encoder()
    conn = Conn(41050, 8080)
    get = [(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":authority", "web")]
    conn.c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b""))
    conn.c(h2_frame(1, 5, 1, client.encode(get)))
    conn.c(h2_frame(1, 5, 3, client.encode([*get[:2], (":path", "/b"), get[3]])))
    conn.s(h2_frame(4, 0, 0, b"") + h2_frame(1, 5, 1, server.encode([(":status", "204")])))
    conn.s(h2_frame(7, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")))  # GOAWAY, last 1
    conn.fin("s")
    result, data = run_analysis(write(tmp_path / "goaway.pcap", [conn]))
    a, b = result.analysis.http.transactions
    assert (a.path, a.status, a.ended) == ("/a", 204, "complete")
    assert (b.path, b.status, b.ended, b.ended_by) == ("/b", None, "crossed", "server")
    assert not [f for f in data["findings"] if f["id"] == "http.unanswered"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400), st.binary(max_size=400), st.sampled_from(["h2", "tls"]))
def test_garbage_after_a_preface_or_a_hello_never_breaks_the_analysis(
    tmp_path: Path, client: bytes, server: bytes, kind: str
) -> None:
    """Frames with any lengths, flags and header blocks (hpack errors), records cut anywhere:
    whatever is read is kept, nothing raises."""
    conn = Conn(dport=443 if kind == "tls" else 50051)
    if kind == "h2":
        conn.c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + client)
    else:
        conn.c(b"\x16\x03\x01" + len(client).to_bytes(2, "big") + b"\x01" + client)
    if server:
        conn.s(server)
    result, _ = run_analysis(write(tmp_path / "junk.pcap", [conn]))
    for t in result.analysis.http.transactions:
        assert t.protocol == "HTTP/2" and t.stream > 0


def test_any_token_is_a_method_and_empty_lines_before_a_request_are_skipped(
    tmp_path: Path,
) -> None:
    """WebDAV, UPnP and home-made methods are requests like GET (a method is any token), and a
    client's stray CRLF between pipelined requests does not hide the next one (RFC 9112 2.2)."""
    conn = Conn(dport=8080)
    conn.c(b"PROPFIND /dav/ HTTP/1.1\r\nHost: files\r\nDepth: 1\r\n\r\n")
    conn.s(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 3\r\n\r\n<m>")
    conn.c(b"\r\nSUBSCRIBE /events HTTP/1.1\r\nHost: files\r\n\r\n\r\n")
    conn.c(b"X-PURGE_ALL /cache HTTP/1.1\r\nHost: files\r\n\r\n")
    conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    conn.s(b"HTTP/1.1 405 Nope\r\nContent-Length: 0\r\n\r\n")
    conn.fin()
    txs = transactions(write(tmp_path / "dav.pcap", [conn]))
    assert [(t.method, t.path, t.status, t.ended) for t in txs] == [
        ("PROPFIND", "/dav/", 207, "complete"),
        ("SUBSCRIBE", "/events", 200, "complete"),
        ("X-PURGE_ALL", "/cache", 405, "complete"),
    ]


@pytest.mark.parametrize("lead", [b"EHLO mail.example\r\n", b"PING\r\n", b"AUTH x\r\n"])
def test_uppercase_words_that_are_not_http_make_no_request(tmp_path: Path, lead: bytes) -> None:
    """A payload shaped like a method (SMTP, Redis, IMAP) is only a candidate: without an
    HTTP/1.x start line it is no transaction."""
    conn = Conn(dport=25)
    conn.c(lead)
    conn.s(b"250 ok\r\n")
    conn.fin()
    assert transactions(write(tmp_path / "other.pcap", [conn])) == []


def keep_alive_with_holes() -> Conn:
    """Seven requests one after the other on one connection; the capture missed all of the
    second answer, the head of the third, and the sixth request."""
    conn = Conn()
    for k in range(1, 8):
        request = f"GET /{k} HTTP/1.1\r\nHost: web\r\n\r\n".encode()
        if k == 6:
            conn.lose("c", request)
        else:
            conn.c(request)
        answer = f"HTTP/1.1 {200 + k} S\r\nContent-Length: 10\r\n\r\n".encode()
        if k == 2:
            conn.lose("s", answer + b"0123456789")
        elif k == 3:
            conn.lose("s", answer)
            conn.s(b"0123456789")
        else:
            conn.s(answer + b"0123456789")
    conn.wait(20_000)  # long enough for a request never answered to be called so
    conn.fin()
    return conn


def test_a_hole_in_a_keep_alive_stream_costs_only_what_was_in_it(tmp_path: Path) -> None:
    """After bytes the capture missed, the next message head is found again; the answers
    are paired by what the server had received when it sent them (its acknowledgement),
    those lost are said to be unseen, not unanswered, and an answer to a request the
    capture missed pairs with no request."""
    path = write(tmp_path / "holes.pcap", [keep_alive_with_holes()])
    result, data = run_analysis(path)
    got = [(t.path, t.status, t.ended) for t in result.analysis.http.transactions]
    assert got == [
        ("/1", 201, "complete"),
        ("/2", None, "unseen"),
        ("/3", None, "unseen"),
        ("/4", 204, "complete"),
        ("/5", 205, "complete"),
        ("", 206, "complete"),  # its request was never captured
        ("/7", 207, "complete"),
    ]
    assert "http.unanswered" not in {f["id"] for f in data["findings"]}


def test_the_server_stream_counts_from_the_syn_ack_the_client_acknowledged(
    tmp_path: Path,
) -> None:
    """Two SYN/ACKs of different sequence numbers (a middlebox's and the server's, a Fast
    Open retry): the client's ACK says which one the stream counts from."""
    conn = Conn(41020, 443, handshake=False)
    conn._send("c", b"", "S")
    decoy = conn.seq["s"] + 77_777
    conn._send("s", b"", "SA", at=decoy)  # answered by nobody
    conn._send("s", b"", "SA")
    conn._send("c", b"", "A")
    conn.c(client_hello("api.example", ["h2"]))
    conn.s(b"\x15\x03\x03\x00\x02\x02\x28")  # the server refuses: fatal handshake_failure
    conn.fin("s")
    (session,) = run_analysis(write(tmp_path / "two-syn-acks.pcap", [conn]))[0].analysis.http.tls
    assert (session.sni, session.alert) == ("api.example", "server fatal handshake_failure")


def snapped_heads() -> Conn:
    """Answers whose heads go past a 128-byte snap length: the status line is captured,
    the headers only in part."""
    conn = Conn()
    for k in range(1, 4):
        conn.c(f"GET /{k} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
        cookie = "x" * 200
        conn.s(
            f"HTTP/1.1 {200 + k} OK\r\nContent-Type: text/plain\r\nSet-Cookie: {cookie}\r\n"
            f"Content-Length: 5\r\n\r\nhello".encode()
        )
    conn.fin()
    return conn


def test_an_answer_whose_head_the_snap_length_cut_still_counts(tmp_path: Path) -> None:
    """What is in the capture counts: a status line before the cut is an answer (never an
    unanswered request), its headers before the cut are read, and the cut is said."""
    path = write(tmp_path / "snapped.pcap", [snapped_heads()], snap=128)
    result, data = run_analysis(path)
    txs = result.analysis.http.transactions
    assert [(t.path, t.status, t.response_bytes) for t in txs] == [
        ("/1", 201, 0),
        ("/2", 202, 0),
        ("/3", 203, 0),
    ]
    assert all(t.content_type == "text/plain" for t in txs)
    assert "http.unanswered" not in {f["id"] for f in data["findings"]}
    assert any(
        "3 HTTP message heads cut by the capture's snap length" in w for w in data["warnings"]
    )


def grpc_connection(calls: int = 12) -> Conn:
    """A long-lived gRPC connection: calls one after another on streams 1, 3, 5 ..., each
    request, answer and trailers encoded by real HPACK encoders (names and values reused
    from the connection's header table once sent); the fifth call onwards asks a method
    not asked before, every third answer fails with UNAVAILABLE, the eighth NOT_FOUND."""
    client, server = hpack.Encoder(), hpack.Encoder()
    conn = Conn(dport=50051)
    conn.c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b""))
    conn.s(h2_frame(4, 0, 0, b"") + h2_frame(4, 1, 0, b""))
    for k in range(calls):
        sid = 2 * k + 1
        method = "Hello" if k < 4 else "Bye"
        call = [(":method", "POST"), (":scheme", "http"), (":path", f"/pkg.Greeter/{method}"),
                (":authority", "greeter:50051"), ("content-type", "application/grpc"),
                ("te", "trailers")]  # fmt: skip
        conn.c(h2_frame(1, 4, sid, client.encode(call)) + h2_frame(0, 1, sid, b"\0\0\0\0\x02hi"))
        conn.wait(3)
        answer = [(":status", "200"), ("content-type", "application/grpc")]
        status = "5" if k == 7 else "14" if k % 3 == 2 else "0"
        conn.s(h2_frame(1, 4, sid, server.encode(answer)) + h2_frame(0, 0, sid, b"\0\0\0\0\x01x"))
        conn.s(h2_frame(1, 5, sid, server.encode([("grpc-status", status)])))
    return conn


def test_http2_caught_midway_reads_what_the_capture_holds(tmp_path: Path) -> None:
    """A capture begun long after a gRPC connection's preface, SETTINGS and first calls:
    its frames are found where a segment starts, each call still has its stream, method,
    status, gRPC status and times, and what the header table held from before the capture
    reads '?' and is said."""
    conn = grpc_connection()
    conn.packets = conn.packets[9:]  # the handshake, the preface, SETTINGS, two calls
    result, data = run_analysis(write(tmp_path / "midway.pcap", [conn]))
    got = [(t.stream, t.method, t.path, t.status, t.grpc_status, t.ended)
           for t in result.analysis.http.transactions]  # fmt: skip
    assert got == [
        (3, "", "", 200, None, "complete"),  # asked before the capture began
        # a gRPC status sent before reads again as a table entry: not known
        (5, "POST", "?", 200, None, "complete"),
        (7, "POST", "?", 200, None, "complete"),
        *((sid, "POST", "/pkg.Greeter/Bye", 200, None, "complete") for sid in (9, 11, 13)),
        # a status new to the table, under the name the table held from before: not known
        (15, "POST", "/pkg.Greeter/Bye", 200, None, "complete"),
        *((sid, "POST", "/pkg.Greeter/Bye", 200, None, "complete") for sid in (17, 19, 21, 23)),
    ]
    assert all(t.latency_ns == 4 * MS for t in result.analysis.http.transactions if t.asked)
    assert any("HTTP/2 header field" in w and "reads ?" in w for w in data["warnings"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([":path", ":status", "grpc-status", "x-id", "cookie", "Te"]),
                st.text("abcXYZ019/-_ ", max_size=12),
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 11),
)
def test_header_blocks_read_as_hpack_reads_them_from_any_block_on(
    blocks: list[list[tuple[str, str]]], first: int
) -> None:
    """From the first block, every field reads as the hpack library reads it; from any
    later one, each field read is the one sent, and each left out is counted."""
    encoder, reference = hpack.Encoder(), hpack.Decoder()
    wire = [encoder.encode(b) for b in blocks]
    whole, midway = HeaderDecoder(), HeaderDecoder()
    for k, block in enumerate(wire):
        sent = reference.decode(block)
        expected: dict[str, str] = {}
        for name, value in sent:
            key = name.lower()
            expected[key] = f"{expected[key]}, {value}" if key in expected else value
        assert whole.decode(block) == expected
        if k >= min(first, len(wire) - 1):
            for name, value in midway.decode(block).items():
                values = iter([v for n, v in sent if n.lower() == name])
                # in the order sent, some left out (values hold no ", " here)
                assert all(any(v == got for v in values) for got in value.split(", "))
    assert whole.unseen == 0


def tls_after_plaintext() -> list[Conn]:
    """TLS that starts after a plaintext part: SMTP's STARTTLS, PostgreSQL's SSL request, a
    SOCKS5 tunnel, an HTTP CONNECT tunnel (asked twice: the proxy wants credentials); and
    plain HTTP through a CONNECT tunnel."""
    alert = b"\x15\x03\x03\x00\x02\x02\x28"  # the server refuses: fatal handshake_failure
    smtp = Conn(41100, 25)
    smtp.s(b"220 mail.example ESMTP\r\n")
    smtp.c(b"EHLO client.example\r\n")
    smtp.s(b"250-mail.example\r\n250 STARTTLS\r\n")
    smtp.c(b"STARTTLS\r\n")
    smtp.s(b"220 Ready to start TLS\r\n")
    smtp.c(client_hello("mail.example", []))
    smtp.s(alert)
    postgres = Conn(41101, 5432)
    postgres.c(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
    postgres.s(b"S")
    postgres.c(client_hello("db.example", ["postgresql"]))
    postgres.s(alert)
    socks = Conn(41102, 1080)
    socks.c(b"\x05\x01\x00")
    socks.s(b"\x05\x00")
    socks.c(b"\x05\x01\x00\x03\x0bapi.example\x01\xbb")
    socks.s(b"\x05\x00\x00\x01\x0a\x00\x00\x01\x01\xbb")
    socks.c(client_hello("api.example", ["h2"]))
    socks.s(alert)
    connect = Conn(41103, 3128)
    connect.c(b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n")
    connect.s(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    connect.c(b"CONNECT api.example:443 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
    connect.s(b"HTTP/1.1 200 Connection established\r\n\r\n")
    connect.c(client_hello("api.example", ["h2", "http/1.1"]))
    connect.s(alert)
    proxied = Conn(41104, 3128)
    proxied.c(b"CONNECT web.example:80 HTTP/1.1\r\nHost: web.example:80\r\n\r\n")
    proxied.s(b"HTTP/1.1 200 Connection established\r\n\r\n")
    proxied.c(b"GET /inside HTTP/1.1\r\nHost: web.example\r\n\r\n")
    proxied.s(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return [smtp, postgres, socks, connect, proxied]


def test_tls_and_http_after_a_plaintext_start_are_read(tmp_path: Path) -> None:
    result, _ = run_analysis(write(tmp_path / "upgraded.pcap", tls_after_plaintext()))
    tls = sorted((s.server.rsplit(":", 1)[1], s.sni, s.alert) for s in result.analysis.http.tls)
    refused = "server fatal handshake_failure"
    assert tls == [
        ("1080", "api.example", refused),
        ("25", "mail.example", refused),
        ("3128", "api.example", refused),
        ("5432", "db.example", refused),
    ]
    http = sorted((t.method, t.path, t.status) for t in result.analysis.http.transactions)
    assert http == [
        ("CONNECT", "api.example:443", 200),
        ("CONNECT", "api.example:443", 407),  # asked again with credentials
        ("CONNECT", "web.example:80", 200),
        ("GET", "/inside", 404),
    ]
