"""The typed result of an analysis: what `analyze` prints, `--json` writes, the UI and `trace`
read. Rows are frozen dataclasses built from the analysis on first use; each row's fields are
named for output by their metadata (plain, row_layout); report/json_report.py writes the
document."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, IntEnum
from functools import cache, cached_property
from itertools import islice
from typing import Any

import numpy as np

from ktrace.analysis.checks import conversation_label, plural
from ktrace.analysis.context import Analysis, proto_name
from ktrace.analysis.findings import CheckError
from ktrace.analysis.flows import flow_endpoints, packets_at_points
from ktrace.analysis.http import GRPC_NAMES
from ktrace.analysis.http_exchanges import HttpExchange
from ktrace.analysis.http_walk import HttpEnd, Side
from ktrace.analysis.paths import ConvPath, Direction, Hop, NatKind
from ktrace.analysis.row_columns import (
    Coded,
    Column,
    Integers,
    Listed,
    Millis,
    Objects,
    Times,
    Vocabulary,
)
from ktrace.analysis.views import ConversationRow, busiest_conversations, conversations
from ktrace.decode.h2 import UNSEEN
from ktrace.decode.tunnel import Tunnel
from ktrace.kernels.json_rows import isos
from ktrace.model import Finding, PacketRef
from ktrace.pcap import linktype

MAX_LOSS_EVIDENCE = 10
# FlowRow's fields read straight from the flow table's columns of the same name
FLOW_COUNTS = (
    "packets_ab",
    "packets_ba",
    "bytes_ab",
    "bytes_ba",
    "retransmissions",
    "out_of_order",
    "syn",
    "fin",
    "zero_window",
)
# HttpRow fields that are the first copy's own, as the transaction holds them
HTTP_AS_IS = (
    "protocol",
    "method",
    "host",
    "path",
    "status",
    "grpc_service",
    "grpc_method",
    "grpc_message",
    "client",
    "server",
    "request_bytes",
    "response_bytes",
    "ended",
    "ended_by",
)
HTTP_OBJECTS = ("points", "packet")  # rows held in the row


def _ms(ns: float | None) -> float | None:
    return round(ns / 1e6, 3) if ns is not None else None


@dataclass(frozen=True)
class PointRow:
    """A capture point as reported: its file, link type, counts and times."""

    id: str
    file: str
    interface: str
    linktype: str  # e.g. EN10MB, LINUX_SLL2
    format: str
    packets: int
    bytes: int
    first: str | None  # ISO time of the first packet
    duration_s: float
    kernel_drops: int | None  # from pcapng statistics or the manifest
    kind: str
    node: str | None
    pod: str | None  # namespace/name
    clock_offset_ms: float


@dataclass(frozen=True)
class FlowRow:
    """A flow as reported: endpoints, counts each way, timing, TCP health."""

    proto: str
    a: str  # the initiator, ip:port
    b: str
    packets_ab: int
    packets_ba: int
    bytes_ab: int
    bytes_ba: int
    start: str
    duration_s: float
    handshake_ms: float | None
    retransmissions: int
    out_of_order: int
    syn: int
    rst: int
    fin: int
    zero_window: int
    points: dict[str, int]  # packets per capture point


@dataclass(frozen=True)
class TunnelRow:
    """A tunnel as reported: its kind, outer endpoints, id and packets."""

    kind: str
    outer_src: str
    outer_dst: str
    vni: int
    port: int
    packets: int = field(default=0)


@dataclass(frozen=True)
class HopRow:
    """A hop of a path as reported."""

    point: str
    kind: str
    node: str | None
    packets: int
    expected: bool  # it should have seen the conversation and did not
    latency_ms: float | None  # from the previous hop
    flow: str | None  # the 5-tuple there
    tunnel: TunnelRow | None = field(metadata={"drop": ("packets",)})


@dataclass(frozen=True)
class NatRow:
    """An address translation of a path as reported."""

    kind: NatKind
    between: tuple[str, str]
    before: str
    after: str
    after_hop: int  # between hops[after_hop] and hops[after_hop + 1]


@dataclass(frozen=True)
class LossRow:
    """A loss on a path as reported."""

    direction: Direction
    last_seen: str
    never_at: str
    packets: int
    syn: int
    max_size: int
    evidence: tuple[PacketRef, ...]


@dataclass(frozen=True)
class PathRow:
    """A conversation's path as reported: flows, hops, NAT, losses."""

    conversation: str  # before => after NAT, with names
    proto: str
    flows: tuple[str, ...]
    hops: tuple[HopRow, ...]
    nat: tuple[NatRow, ...]
    lost: tuple[LossRow, ...]
    client: str = field(metadata={"json": None})  # ip:port of the initiator
    server: str = field(metadata={"json": None})  # ip:port it asked for, before NAT


@dataclass(frozen=True)
class DnsRow:
    """A DNS transaction as reported."""

    point: str
    transport: str
    client: str
    server: str
    id: int
    qname: str
    qtype: str
    rcode: str | None
    answered: bool
    latency_ms: float | None
    retries: int
    answers: tuple[str, ...]
    truncated: bool
    time: str
    packet: int


@dataclass(frozen=True)
class HttpPointRow:
    """An HTTP request's times at one point, as reported."""

    point: str
    request: str  # ISO time the request's first byte passed
    response: str | None  # the answer's first byte
    done: str | None  # the answer's last byte
    latency_ms: float | None  # request -> first byte of the answer, here
    added_ms: float | None  # how much of the client's wait this step towards the server added


@dataclass(frozen=True)
class HttpRow:
    """An HTTP request as reported: what was asked, the answer, the times."""

    time: str
    protocol: str
    method: str
    host: str
    path: str
    status: int | None
    grpc_service: str
    grpc_method: str
    grpc_status: str | None
    grpc_message: str
    client: str
    server: str  # what the client asked for (a Service address before DNAT)
    backend: str  # who answered, after DNAT
    backend_name: str  # the backend as the inventory names it
    latency_ms: float | None  # at the client's side: request -> first byte of the answer
    total_ms: float | None  # request -> last byte of the answer
    server_ms: float | None  # the same wait at the point nearest the server
    network_ms: float | None  # the client's wait less the server's
    request_bytes: int
    response_bytes: int
    ended: HttpEnd
    ended_by: Side
    points: tuple[HttpPointRow, ...]
    packet: PacketRef

    @property
    def outcome(self) -> str | int | None:
        """What a reader looks at first: the gRPC status when it is not OK, else the HTTP one."""
        return self.grpc_status if self.grpc_status not in (None, "OK") else self.status

    @property
    def failed(self) -> bool:
        """A server error or a gRPC call that did not end OK."""
        return (self.status or 0) >= 500 or self.grpc_status not in (None, "OK")


@dataclass(frozen=True)
class TlsRow:
    """A TLS session's handshake as reported."""

    time: str
    point: str
    client: str
    server: str
    sni: str
    version: str  # negotiated; "" when the server never said
    offered_version: str
    offered_alpn: tuple[str, ...]
    alpn: str
    server_hello: bool
    alert: str
    failed: bool
    packet: PacketRef


@dataclass(frozen=True)
class ExchangeRow:
    """A DNS exchange as reported, with the points that saw it."""

    dns: DnsRow
    points: tuple[str, ...]


def _tunnel_row(t: Tunnel, packets: int = 0) -> TunnelRow:
    return TunnelRow(t.kind, t.outer_src, t.outer_dst, t.vni, t.port, packets)


@dataclass(frozen=True)
class Result:
    """The analysis and its findings: what the reports, JSON and export are made from."""

    analysis: Analysis
    findings: tuple[Finding, ...]
    check_errors: tuple[CheckError, ...] = ()
    notes: tuple[str, ...] = ()  # about the inputs: a bundle cut short, still being written

    @cached_property
    def points(self) -> tuple[PointRow, ...]:
        index = self.analysis.index
        counts, sizes, first, last = self.analysis.point_extents
        offsets = self.analysis.correlation.offsets.tolist()
        firsts = isos(np.where(counts > 0, first, 0))  # the unseen points' are not written
        out = []
        for k, p in enumerate(index.points):
            seen = bool(counts[k])
            f = index.file_of(k)
            out.append(
                PointRow(
                    id=p.id,
                    file=p.file,
                    interface=p.interface,
                    linktype=linktype.name(p.linktype),
                    format=f.format,
                    packets=int(counts[k]),
                    bytes=int(sizes[k]),
                    first=firsts[k] if seen else None,
                    duration_s=round((int(last[k]) - int(first[k])) / 1e9, 6) if seen else 0.0,
                    kernel_drops=f.drops.get(k),
                    kind=p.kind,
                    node=p.node,
                    pod=f"{p.namespace}/{p.pod}" if p.pod else None,
                    clock_offset_ms=round(offsets[k] / 1e6, 3),
                )
            )
        return tuple(out)

    @cached_property
    def _flow_points(self) -> list[dict[str, int]]:
        """Per flow: its packets at each point that saw it."""
        a = self.analysis
        f = a.flows
        npts = max(len(a.index.points), 1)
        uniq, counts = packets_at_points(f, a.index.columns.point, npts)
        per_flow: list[dict[str, int]] = [{} for _ in range(len(f))]
        for k, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            per_flow[k // npts][a.index.points[k % npts].id] = n
        return per_flow

    @cached_property
    def flows(self) -> tuple[FlowRow, ...]:
        columns = self.flow_columns(np.arange(len(self.analysis.flows)))
        listed = [c.listed() for c in columns.values()]
        return tuple(FlowRow(*row) for row in zip(*listed, strict=True))

    def flow_columns(self, flows: np.ndarray) -> dict[str, Column]:
        """The FlowRow fields of these flows, in field order, a column each: a capture can
        hold hundreds of thousands of flows (--json writes them from these directly)."""
        a = self.analysis
        f, index = a.flows, a.index
        handshake = f.handshake_ns[flows].tolist()
        first, last = f.first_ts[flows], f.last_ts[flows]
        protos, proto_at = np.unique(f.proto[flows], return_inverse=True)
        names = [proto_name(v) for v in protos.tolist()]
        per_flow = self._flow_points
        columns: dict[str, Column] = {
            "proto": Coded(proto_at.reshape(-1), Vocabulary(names)),
            "a": Listed(flow_endpoints(index, f, flows, "a")),
            "b": Listed(flow_endpoints(index, f, flows, "b")),
            "start": Times(first),
            "duration_s": Listed([round(d / 1e9, 6) for d in (last - first).tolist()]),
            "handshake_ms": Listed([_ms(h) if h >= 0 else None for h in handshake]),
            "rst": Integers(f.rst_ab[flows] + f.rst_ba[flows]),
            "points": Listed([per_flow[k] for k in flows.tolist()]),
        }
        for name in FLOW_COUNTS:
            columns[name] = Integers(getattr(f, name)[flows])
        return {field.name: columns[field.name] for field in fields(FlowRow)}

    @cached_property
    def paths(self) -> tuple[PathRow, ...]:
        return tuple(self._path_row(p) for p in self.analysis.paths)

    def _hop_row(self, h: Hop) -> HopRow:
        a = self.analysis
        p = a.index.points[h.point]
        tunnel = a.index.tunnels[h.tunnels[0] - 1] if h.tunnels else None
        return HopRow(
            point=p.id,
            kind=p.kind,
            node=p.node,
            packets=h.packets,
            expected=h.packets == 0,
            latency_ms=_ms(h.latency_ns),
            flow=a.flow_label(h.flow) if h.flow is not None else None,
            tunnel=_tunnel_row(tunnel) if tunnel else None,
        )

    def _path_row(self, path: ConvPath) -> PathRow:
        a = self.analysis

        def hop(k: int) -> str:
            return a.point_id(path.hops[k].point)

        return PathRow(
            conversation=conversation_label(a, path),
            proto=a.proto(path.first_flow),
            flows=tuple(a.flow_label(f) for f in path.flows),
            hops=tuple(self._hop_row(h) for h in path.hops),
            nat=tuple(
                NatRow(
                    n.kind,
                    (hop(n.after_hop), hop(n.after_hop + 1)),
                    a.flow_label(n.before),
                    a.flow_label(n.after),
                    n.after_hop,
                )
                for n in path.nat
            ),
            lost=tuple(
                LossRow(
                    x.direction,
                    hop(x.last_hop),
                    hop(x.missing_hop),
                    x.packets,
                    x.syn,
                    x.max_size,
                    tuple(a.index.ref(k) for k in x.rows[:MAX_LOSS_EVIDENCE]),
                )
                for x in path.losses
            ),
            client=a.endpoint(path.first_flow, "a"),
            server=a.endpoint(path.first_flow, "b"),
        )

    @cached_property
    def dns(self) -> tuple[DnsRow, ...]:
        return self.dns_rows(np.arange(len(self.analysis.dns.transactions)))

    def dns_rows(self, txs: np.ndarray) -> tuple[DnsRow, ...]:
        """The rows of these transactions (ids in the DNS table)."""
        columns = [column.listed() for column in self.dns_columns(txs).values()]
        return tuple(DnsRow(*row) for row in zip(*columns, strict=True))

    def dns_columns(self, txs: np.ndarray) -> dict[str, Column]:
        """The DnsRow fields of many transactions, in field order, from the DNS table's
        columns: a storm has hundreds of thousands (--json writes them from these directly)."""
        index, table = self.analysis.index, self.analysis.dns.transactions
        if not len(txs):
            return {f.name: Listed([]) for f in fields(DnsRow)}
        shared = table.shared_columns(txs)
        answered = table.answered[txs]
        first = table.row[txs]
        starts = [index.file_of(k).first_row for k in range(len(index.points))]
        file_start = np.array(starts, np.int64)
        at = index.columns.point.take(first).astype(np.int64)
        # whole ns to ms with three decimals: rounded to the nearest microsecond (halves up)
        # in integers, a column at once (round() per value cost 1.3 µs)
        micros = (table.latency[txs] + 500) // 1000
        columns = {
            "point": Coded(table.point[txs], self._point_ids),
            **shared,
            "latency_ms": Millis(micros, answered),
            "retries": Integers(table.retry_counts[txs]),
            "time": Times(table.ts[txs]),
            "packet": Integers(first - file_start[at] + 1),
        }
        return {f.name: columns[f.name] for f in fields(DnsRow)}  # in DnsRow's order

    @cached_property
    def _point_ids(self) -> Vocabulary:
        return Vocabulary([p.id for p in self.analysis.index.points])

    @cached_property
    def conversations(self) -> tuple[ConversationRow, ...]:
        return tuple(conversations(self.analysis))

    def busiest_conversations(self, limit: int) -> tuple[list[ConversationRow], int]:
        """The `limit` conversations shown first (lost packets, then the biggest), and how
        many there are."""
        return busiest_conversations(self.analysis, limit)

    @cached_property
    def exchanges(self) -> tuple[ExchangeRow, ...]:
        """Each DNS exchange once, as near its client as it was seen, with where it was seen."""
        return self.exchange_rows()

    def exchange_rows(self, limit: int | None = None) -> tuple[ExchangeRow, ...]:
        """The first `limit` exchanges (all without one), in time order."""
        a = self.analysis
        ex = a.dns_exchanges
        rows = self.dns_rows(ex.tx[:limit])
        return tuple(
            ExchangeRow(row, tuple(sorted(a.point_id(p) for p in ex.points(k))))
            for k, row in enumerate(rows)
        )

    @cached_property
    def http(self) -> tuple[HttpRow, ...]:
        """Each HTTP request once, with its times at every point that saw it."""
        return self.http_rows(self.analysis.http_exchanges)

    def http_rows(self, exchanges: list[HttpExchange]) -> tuple[HttpRow, ...]:
        """The rows of these exchanges."""
        columns = [column.listed() for column in self.http_columns(exchanges).values()]
        return tuple(HttpRow(*row) for row in zip(*columns, strict=True))

    def http_columns(self, exchanges: list[HttpExchange]) -> dict[str, Column]:
        """The HttpRow fields of these exchanges, in field order, a column each (--json
        writes them from these directly); their times written in one pass."""
        a = self.analysis
        first = [e.primary for e in exchanges]
        copies = [c for e in exchanges for c in e.copies]
        times = [v for c in copies for v in (c.request_ts, c.response_ts, c.done_ts)]
        known = np.array([-1 if v is None else v for v in times], np.int64)
        texts: list[str | None] = list(isos(known)) if len(known) else []
        for k in np.flatnonzero(known < 0).tolist():
            texts[k] = None
        steps = [step for e in exchanges for step in (None, *e.hops_ns())]
        # one per copy, in order: each exchange takes as many as it has copies
        point_rows = iter(
            HttpPointRow(
                a.point_id(c.point),
                texts[3 * k] or "",
                texts[3 * k + 1],
                texts[3 * k + 2],
                _ms(c.latency_ns),
                _ms(step),
            )
            for k, (c, step) in enumerate(zip(copies, steps, strict=True))
        )
        starts = np.cumsum([0, *(len(e.copies) for e in exchanges)])[:-1].tolist()
        columns: dict[str, list[Any]] = {
            "time": [texts[3 * k] or "" for k in starts],
            "grpc_status": [
                None if t.grpc_status is None else GRPC_NAMES.get(t.grpc_status, str(t.grpc_status))
                for t in first
            ],
            "backend": [e.backend for e in exchanges],
            "backend_name": [a.names.label(e.backend) for e in exchanges],
            "latency_ms": [_ms(t.latency_ns) for t in first],
            "total_ms": [
                _ms(t.done_ts - t.request_ts if t.done_ts is not None and t.asked else None)
                for t in first
            ],
            "server_ms": [_ms(e.server_ns) for e in exchanges],
            "network_ms": [_ms(e.network_ns) for e in exchanges],
            "points": [tuple(islice(point_rows, len(e.copies))) for e in exchanges],
            "packet": [a.index.ref(t.request_row) for t in first],
        }
        for name in HTTP_AS_IS:
            columns[name] = [getattr(t, name) for t in first]
        return {
            f.name: Objects(columns[f.name], row_dict)
            if f.name in HTTP_OBJECTS
            else Listed(columns[f.name])
            for f in fields(HttpRow)
        }

    def worst_http(self, limit: int) -> tuple[HttpRow, ...]:
        """The rows of the `limit` requests a reader wants first: failed or cut short, then
        the slowest."""

        def rank(e: HttpExchange) -> tuple[bool, int]:
            t = e.primary
            return t.ended == HttpEnd.COMPLETE and not t.failed, -(t.latency_ns or 0)

        return self.http_rows(sorted(self.analysis.http_exchanges, key=rank)[:limit])

    @cached_property
    def tls(self) -> tuple[TlsRow, ...]:
        a = self.analysis
        hellos = isos(np.array([s.hello_ts for s in a.http.tls], np.int64))
        return tuple(
            TlsRow(
                hello,
                a.point_id(s.point),
                s.client,
                s.server,
                s.sni,
                s.version,
                s.offered_version,
                s.offered_alpn,
                s.alpn,
                s.server_hello,
                s.alert,
                s.failed,
                a.index.ref(s.hello_row),
            )
            for s, hello in zip(a.http.tls, hellos, strict=True)
        )

    @cached_property
    def ip_packets(self) -> int:
        """Packets read as IP: what the analysis is about (ARP, LLDP and link types ktrace
        cannot read are counted at their points, and nothing more)."""
        return int(np.count_nonzero(self.analysis.index.columns.l3))

    @cached_property
    def tunnels(self) -> tuple[TunnelRow, ...]:
        index = self.analysis.index
        counts = index.tunnel_packets()
        return tuple(_tunnel_row(t, int(counts[k])) for k, t in enumerate(index.tunnels))

    @property
    def warnings(self) -> list[str]:
        unread = self.analysis.http.unread
        http = []
        if unread.cut_heads:
            http.append(
                f"{plural(unread.cut_heads, 'HTTP message head')} cut by the capture's snap "
                "length: read up to the cut (the start line, the headers whole before it); "
                "their bodies are not measured. Capture whole packets to read them (tcpdump "
                "-s 0; ktrace's own captures keep them whole)"
            )
        if unread.unseen_fields:
            http.append(
                f"{plural(unread.unseen_fields, 'HTTP/2 header field')} (counted at each point "
                "that saw them) named entries of their connection's header table set before "
                "the capture began or in frames it missed: left out, and a method or path "
                f"they held reads {UNSEEN}"
            )
        return (
            list(self.notes)
            + self.analysis.index.warnings
            + http
            + [f"check {e.check} failed: {e.message}" for e in self.check_errors]
        )


SCALARS = (str, int, float, bool, type(None))


def row_dict(row: object) -> dict[str, object]:
    """A row as plain() lays it out (names, fields left out or dropped from the row held),
    its values left to orjson: a Python call per row, not per field."""
    if not is_dataclass(row) or isinstance(row, type):
        raise TypeError(f"{type(row).__name__} is not JSON")
    return {
        name: plain(getattr(row, attr), inner) if inner else getattr(row, attr)
        for attr, name, inner in row_layout(type(row))
    }


@cache
def row_layout(cls: type) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """A row class's fields as JSON shows them: (attribute, JSON name, fields to drop)."""
    return tuple(
        (f.name, f.metadata.get("json", f.name), f.metadata.get("drop", ()))
        for f in fields(cls)
        if f.metadata.get("json", f.name) is not None
    )


def plain(value: object, drop: tuple[str, ...] = ()) -> object:
    """JSON-ready data from rows: a field's metadata may rename it ("json": name), keep it out
    ("json": None) or drop fields of the row it holds ("drop")."""
    kind = type(value)
    if kind in SCALARS:  # most of a large result: answered before any other test
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {
            name: plain(getattr(value, attr), inner)
            for attr, name, inner in row_layout(type(value))
            if attr not in drop
        }
    if isinstance(value, IntEnum):
        return value.name.lower()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
