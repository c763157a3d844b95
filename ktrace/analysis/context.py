"""What a check gets to look at, and how it names endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ktrace.analysis.capture_loss import PointLoss, point_losses
from ktrace.analysis.correlate import Correlation
from ktrace.analysis.dns import DnsResult
from ktrace.analysis.dns_exchanges import DnsExchanges, dns_exchanges
from ktrace.analysis.dns_patterns import DnsPicture, dns_picture
from ktrace.analysis.flows import FlowTable, flow_endpoint, flow_host
from ktrace.analysis.http import HttpResult, HttpTransaction
from ktrace.analysis.http_exchanges import HttpExchange, http_exchanges
from ktrace.analysis.names import Names
from ktrace.analysis.paths import ConvPath
from ktrace.analysis.returns import Bypass, bypasses
from ktrace.chunking import bincount
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP, UDP
from ktrace.model import Finding, PacketRef

if TYPE_CHECKING:
    from ktrace.bundle.node_evidence import NodeEvidence

PROTO_NAMES = {TCP: "tcp", UDP: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}


def proto_name(value: int) -> str:
    return PROTO_NAMES.get(value, f"ip-{value}")


@dataclass(frozen=True)
class Analysis:
    """Everything the stages found, as the checks and the views read it."""

    index: PacketIndex
    flows: FlowTable
    dns: DnsResult
    correlation: Correlation
    paths: list[ConvPath]
    names: Names
    http: HttpResult
    nodes: dict[str, NodeEvidence] = field(default_factory=dict)  # what the nodes recorded

    @cached_property
    def point_extents(self) -> tuple[np.ndarray, ...]:
        """Per point: packets, bytes, first and last time."""
        return point_extents(self.index)

    @cached_property
    def capture_loss(self) -> list[PointLoss]:
        """Per point, what its capture failed to record: asked only by the checks that judge
        something "unanswered" against it."""
        return point_losses(self.index, self.flows)

    @cached_property
    def _path_by_conv(self) -> dict[int, ConvPath]:
        return {p.conv: p for p in self.paths}

    @cached_property
    def _rows_by_flow(self) -> tuple[np.ndarray, np.ndarray]:
        flow = self.flows.flow
        order = np.argsort(flow, kind="stable")
        bounds = np.searchsorted(flow[order], np.arange(len(self.flows) + 1))
        return order, bounds

    def rows_of_flows(self, flows: tuple[int, ...] | list[int]) -> np.ndarray:
        """The packet rows of these flows, in index order, without scanning every packet."""
        order, bounds = self._rows_by_flow
        parts = [order[bounds[f] : bounds[f + 1]] for f in flows]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    @cached_property
    def bypasses(self) -> dict[int, Bypass]:
        """Conversations whose replies skipped the node that translated them, by conversation."""
        found = bypasses(self.index, self.flows, self.paths, self.names, self.rows_of_flows)
        return {b.conv: b for b in found}

    def row_of(self, ref: PacketRef) -> int | None:
        """The index row of a packet as findings cite it (point id, number in its file)."""
        point = self._point_by_id.get(ref.point)
        if point is None:
            return None
        row = self.index.file_of(point).first_row + ref.number - 1
        return row if 0 <= row < len(self.index) else None

    @cached_property
    def _point_by_id(self) -> dict[str, int]:
        return {p.id: k for k, p in enumerate(self.index.points)}

    def conversations_of(self, finding: Finding) -> frozenset[int]:
        """The conversations a finding's evidence packets belong to: what it is about, however
        its text names them. An ICMP error is about the conversation of the packet it quotes."""
        found = set()
        for ref in finding.evidence:
            row = self.row_of(ref)
            if row is None:
                continue
            conv = self.quoted_conv.get(row)
            flow = int(self.flows.flow[row])
            if conv is not None:
                found.add(conv)
            elif flow >= 0:
                found.add(int(self.correlation.conv[flow]))
        return frozenset(found)

    @cached_property
    def quoted_conv(self) -> dict[int, int]:
        """ICMP error row -> the conversation of the packet it quotes, where that is known:
        the conversations something on the way answered with an error."""
        q, f = self.index.quotes, self.flows
        if not len(q.row):
            return {}
        keys: dict[tuple[int, int, int, int, int], int] = {}
        for k in range(len(f)):
            ends = ((int(f.a_addr[k]), int(f.a_port[k])), (int(f.b_addr[k]), int(f.b_port[k])))
            for (sa, sp), (da, dp) in (ends, ends[::-1]):
                keys.setdefault((int(f.l3[k]), sa, sp, da, dp), k)
        out = {}
        quoted = zip(q.row.tolist(), q.l3.tolist(), q.src.tolist(), q.sport.tolist(),
                     q.dst.tolist(), q.dport.tolist(), strict=True)  # fmt: skip
        for row, l3, src, sport, dst, dport in quoted:
            flow = keys.get((l3, src, sport, dst, dport))
            if flow is not None:
                out[row] = int(self.correlation.conv[flow])
        return out

    def path_of_conv(self, conv: int) -> ConvPath | None:
        return self._path_by_conv.get(conv)

    def path_of_flow(self, flow: int) -> ConvPath | None:
        return self._path_by_conv.get(int(self.correlation.conv[flow]))

    @cached_property
    def http_exchanges(self) -> list[HttpExchange]:
        """Each HTTP request once, with its copies at every point that saw it."""
        return http_exchanges(self.http.transactions, self.correlation, self._backend)

    def _backend(self, t: HttpTransaction) -> str:
        """Who answered: the copy's server unless that is the address before a DNAT the
        conversation's path went through."""
        path = self.path_of_flow(t.flow)
        if path is None or self.endpoint(t.flow, "b") != t.server:
            return t.server
        return self.endpoint(path.flows[-1], "b")

    def point_id(self, point: int) -> str:
        return self.index.points[point].id

    def named(self, endpoint: str) -> str:
        return self.names.label(endpoint)

    @cached_property
    def dns_exchanges(self) -> DnsExchanges:
        """Each DNS exchange once, as seen closest to its client, with the points that saw it."""
        return dns_exchanges(self.dns.transactions, self.correlation)

    def dns_primary(self) -> np.ndarray:
        """The transactions (ids in the DNS table) of every exchange, in time order."""
        return self.dns_exchanges.tx

    @cached_property
    def dns_picture(self) -> DnsPicture:
        """What the DNS exchanges add up to, once per analysis: every DNS check asks."""
        table = self.dns.transactions
        domain = self.names.cluster_domain
        return dns_picture(table, self.dns_primary(), domain, self.index.columns.ts)

    @property
    def end_ts(self) -> int:
        """The time of the last packet of all."""
        return int(self.point_extents[3].max()) if len(self.index) else 0

    def host(self, flow: int, side: str) -> str:
        """The address of one end of a flow ("a" or "b"), as text."""
        return flow_host(self.index, self.flows, flow, side)

    def endpoint(self, flow: int, side: str) -> str:
        return flow_endpoint(self.index, self.flows, flow, side)

    def proto(self, flow: int) -> str:
        return proto_name(int(self.flows.proto[flow]))

    def flow_label(self, flow: int) -> str:
        return f"{self.proto(flow)} {self.endpoint(flow, 'a')} -> {self.endpoint(flow, 'b')}"


def point_extents(index: PacketIndex) -> tuple[np.ndarray, ...]:
    """Per point: packets, bytes, first and last time. A file's rows are contiguous, so a
    file of one point is summed by slice; only a file of several (pcapng interfaces) is
    grouped by point."""
    c, npoints = index.columns, len(index.points)
    counts, sizes = np.zeros(npoints, np.int64), np.zeros(npoints, np.int64)
    first = np.full(npoints, np.iinfo(np.int64).max, np.int64)
    last = np.full(npoints, np.iinfo(np.int64).min, np.int64)
    ends = [f.first_row for f in index.files[1:]] + [len(c)]
    for f, end in zip(index.files, ends, strict=True):
        rows = slice(f.first_row, end)
        if f.first_row == end:
            continue
        if len(f.points) == 1:
            k = f.points[0]
            counts[k] += end - f.first_row
            sizes[k] += int(c.wirelen[rows].sum())
            first[k] = min(first[k], int(c.ts[rows].min()))
            last[k] = max(last[k], int(c.ts[rows].max()))
            continue
        point = c.point[rows]
        counts += bincount(point, npoints)
        sizes += bincount(point, npoints, c.wirelen[rows]).astype(np.int64)
        np.minimum.at(first, point, c.ts[rows])
        np.maximum.at(last, point, c.ts[rows])
    return counts, sizes, first, last
