"""HTTP transactions and TLS handshakes, per capture point: the requests each connection carried
and their answers (HTTP/1.x, HTTP/2 and gRPC), and what TLS showed in clear."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from ktrace.analysis.flows import FlowTable, flow_endpoint
from ktrace.analysis.http_walk import Exchange, HttpEnd, Side, Tally, oriented, walk_http
from ktrace.analysis.tcp_streams import Connection, connections
from ktrace.analysis.tls_sessions import TlsSession, tls_session, tls_start
from ktrace.decode.index import PacketIndex
from ktrace.decode.tls import looks_like_tls
from ktrace.errors import Cancelled

# gRPC statuses that say the server or the way to it failed, not that the caller asked wrong
GRPC_FAILURES = {2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED",
                 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS"}  # fmt: skip
GRPC_NAMES = {0: "OK", 1: "CANCELLED", 3: "INVALID_ARGUMENT", 5: "NOT_FOUND",
              6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 9: "FAILED_PRECONDITION",
              10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 16: "UNAUTHENTICATED",
              **GRPC_FAILURES}  # fmt: skip


class HttpTransaction(NamedTuple):
    """One request and its answer as seen at one point."""

    point: int
    flow: int
    protocol: str  # HTTP/1.1, HTTP/1.0, HTTP/2
    client: str  # "ip:port"
    server: str
    # HTTP/2 stream id; HTTP/1.x: the request's number on its connection; 0 for an answer to a
    # request made before the capture began (method and path empty, times those of the answer)
    stream: int
    method: str
    host: str
    path: str
    status: int | None  # None: no answer (yet)
    grpc_status: int | None
    grpc_message: str
    content_type: str
    request_bytes: int  # body bytes
    response_bytes: int  # body bytes seen
    request_ts: int  # first byte of the request
    request_row: int
    response_ts: int | None  # first byte of the answer
    response_row: int | None
    done_ts: int | None  # last byte of the answer; None when it did not complete
    ended: HttpEnd
    ended_by: Side  # who reset or closed it when the answer did not complete
    ended_ts: int | None  # when
    # request -> first byte of the answer (None without either): every check and row reads it
    latency_ns: int | None

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def grpc(self) -> bool:
        return self.content_type.startswith("application/grpc")

    @property
    def grpc_service(self) -> str:
        return self.path.strip("/").rpartition("/")[0] if self.grpc else ""

    @property
    def grpc_method(self) -> str:
        return self.path.strip("/").rpartition("/")[2] if self.grpc else ""

    @property
    def failed(self) -> bool:
        """A server-side failure: a 5xx, or a gRPC status saying the server failed."""
        return (self.status or 0) >= 500 or self.grpc_status in GRPC_FAILURES

    @property
    def asked(self) -> bool:
        """The request is in the capture (not an answer to one made before it began)."""
        return bool(self.method)


@dataclass(frozen=True)
class HttpResult:
    """The HTTP stage's output: requests, TLS sessions, connections looked at."""

    transactions: list[HttpTransaction]  # by request time
    tls: list[TlsSession]
    connections: int  # connections at any point that carried HTTP or TLS
    unread: Tally = field(default_factory=Tally)  # what could not be read whole


def http_transactions(
    index: PacketIndex, flows: FlowTable, cancel: threading.Event | None = None
) -> HttpResult:
    out: list[HttpTransaction] = []
    sessions: list[TlsSession] = []
    seen = 0
    tally = Tally()
    named: dict[tuple[int, str], str] = {}  # a connection seen at several points: named once

    def endpoint(flow: int, side: str) -> str:
        text = named.get((flow, side))
        if text is None:
            text = named[flow, side] = flow_endpoint(index, flows, flow, side)
        return text

    for found in connections(index, flows):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        seen += 1
        conn = oriented(found)
        client = endpoint(conn.flow, "a" if conn.client_is_a else "b")
        server = endpoint(conn.flow, "b" if conn.client_is_a else "a")
        read = _Read(conn, client, server, tally)
        read.connection()
        out.extend(read.transactions)
        sessions.extend(read.sessions)
    out.sort(key=lambda t: (t.request_ts, t.point, t.stream))
    sessions.sort(key=lambda s: (s.hello_ts, s.point))
    return HttpResult(out, sessions, seen, tally)


@dataclass
class _Read:
    """What one connection carries: TLS from its start; HTTP, and inside an answered CONNECT
    what the tunnel carries (TLS or HTTP); or a plaintext start and TLS after it."""

    conn: Connection
    client: str
    server: str
    tally: Tally
    transactions: list[HttpTransaction] = field(default_factory=list)
    sessions: list[TlsSession] = field(default_factory=list)

    def connection(self, conn: Connection | None = None, tunnelled: bool = False) -> None:
        conn = conn or self.conn
        if looks_like_tls(conn.client.read(0, 3)):
            self._tls(conn)
            return
        exchanges = list(walk_http(conn, self.tally))
        self.transactions.extend(
            _transaction(conn.point, conn.flow, self.client, self.server, e) for e in exchanges
        )
        tunnel = next((e.tunnel for e in exchanges if e.tunnel is not None), None)
        if tunnel is not None and not tunnelled:
            self.connection(conn.after(*tunnel), tunnelled=True)
        elif not exchanges and (start := tls_start(conn)) is not None:
            self._tls(conn.after(*start))

    def _tls(self, conn: Connection) -> None:
        session = tls_session(conn, self.client, self.server)
        if session is not None:
            self.sessions.append(session)


def _transaction(point: int, flow: int, client: str, server: str, e: Exchange) -> HttpTransaction:
    grpc_status = e.grpc_status()
    asked = bool(e.request.get(":method"))
    return HttpTransaction(
        point,
        flow,
        e.protocol,
        client,
        server,
        e.stream,
        e.request.get(":method", ""),
        e.request.get(":authority", ""),
        e.request.get(":path", ""),
        e.status(),
        grpc_status,
        e.grpc_message(),
        e.response.get("content-type", "") or e.request.get("content-type", ""),
        e.request_bytes,
        e.response_bytes,
        e.request_ts,
        e.request_row,
        e.response_ts,
        e.response_row,
        e.done_ts,
        e.ended,
        e.ended_by,
        e.ended_ts,
        e.response_ts - e.request_ts if e.response_ts is not None and asked else None,
    )
