"""One TLS connection at one point: what its handshake showed in clear, and whether it failed."""

from __future__ import annotations

from typing import NamedTuple

from ktrace.analysis.tcp_streams import Connection, Stream
from ktrace.decode.tls import (
    ALERT,
    HANDSHAKE,
    Alert,
    Hello,
    NotTls,
    alert,
    hello,
    looks_like_tls,
    records,
)

HANDSHAKE_READ = 16384  # the hellos and any plaintext alert are within the first records
TLS_SEARCH = 64  # segments of a plaintext start searched for a ClientHello


class TlsSession(NamedTuple):
    point: int
    flow: int
    client: str
    server: str
    sni: str
    offered_alpn: tuple[str, ...]
    alpn: str  # chosen by the server where it says so in clear (TLS 1.2), else ""
    version: str  # negotiated ("" without a ServerHello)
    offered_version: str  # the client's highest
    hello_ts: int
    hello_row: int
    server_hello: bool
    alert: str  # "" or "<sender> <level> <description>", the first plaintext alert
    failed: bool  # a fatal alert during the handshake, or the server closed without a word
    rows: tuple[int, ...]  # the ClientHello's, and the alert's or the close's packet


def tls_start(conn: Connection) -> tuple[int, int] | None:
    """Where TLS starts in each side after a plaintext start (STARTTLS in SMTP, IMAP or FTP,
    PostgreSQL's and MySQL's SSL requests, a SOCKS or HTTP CONNECT tunnel): the client's
    first segment that starts a ClientHello, and the server's first after it that starts a
    TLS record (its end when none did)."""
    client, server = conn.client, conn.server
    for k, begin in enumerate(client.start[:TLS_SEARCH]):
        head = client.read(begin, 6)
        if len(head) == 6 and looks_like_tls(head) and head[0] == HANDSHAKE and head[5] == 1:
            asked = client.ts[k]
            for j, answer in enumerate(server.start[:TLS_SEARCH]):
                if server.ts[j] >= asked and looks_like_tls(server.read(answer, 3)):
                    return begin, answer
            return begin, server.length
    return None


def tls_session(conn: Connection, client: str, server: str) -> TlsSession | None:
    mine = _hellos_and_alerts(conn.client)
    if mine is None or mine.hello is None or mine.hello.server:
        return None
    theirs = _hellos_and_alerts(conn.server) or _Side(None, None, -1)
    offered = mine.hello
    answer = theirs.hello if theirs.hello is not None and theirs.hello.server else None
    warned = theirs if theirs.alert is not None else mine if mine.alert is not None else None
    said = warned.alert if warned is not None else None
    # the server closed on the ClientHello without a byte back (bytes that could not be read,
    # the capture's loss perhaps, are not taken for a refusal)
    back = conn.server
    gave_up = (
        answer is None and not back.start and (back.fin_ts is not None or back.rst_ts is not None)
    )
    # a warning (unrecognized_name from some servers) lets the handshake go on
    bad = said is not None and (said.level == "fatal" or gave_up)
    evidence = [conn.client.row[0]]
    if bad and warned is not None:
        side = conn.server if warned is theirs else conn.client
        evidence.append(side.row[side.segment(warned.alert_at)])
    elif gave_up and len(conn.server.row):
        evidence.append(conn.server.row[-1])
    text = ""
    if said is not None:
        text = f"{'server' if warned is theirs else 'client'} {said.level} {said.description}"
    return TlsSession(
        conn.point,
        conn.flow,
        client,
        server,
        offered.sni,
        offered.alpn,
        answer.alpn[0] if answer is not None and answer.alpn else "",
        answer.version if answer is not None else "",
        offered.version,
        conn.client.ts[0],
        conn.client.row[0],
        answer is not None,
        text,
        bad or gave_up,
        tuple(evidence),
    )


class _Side(NamedTuple):
    hello: Hello | None
    alert: Alert | None
    alert_at: int  # stream offset of the alert's record


def _hellos_and_alerts(s: Stream) -> _Side | None:
    """The first hello and the first plaintext alert in this side's records; None when the
    side does not speak TLS."""
    try:
        found = records(s.read(0, HANDSHAKE_READ))
    except NotTls:
        return None
    first_hello, first_alert, at = None, None, -1
    for kind, offset, body in found:
        if kind == HANDSHAKE and first_hello is None:
            first_hello = hello(body)
        elif kind == ALERT and first_alert is None:
            first_alert, at = alert(body), offset
    return _Side(first_hello, first_alert, at)
