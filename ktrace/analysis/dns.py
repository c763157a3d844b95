"""DNS transactions: queries paired with their responses, per capture point."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from ktrace.decode.dns import DnsError, DnsMessage, parse_dns, rcode_name
from ktrace.decode.dns_bulk import read_questions, tcp_messages
from ktrace.decode.index import PacketIndex
from ktrace.decode.mix import K1, K2, mix
from ktrace.decode.transport import TCP, UDP

DNS_PORT = 53
BUILD_SLICE = 8192  # transactions made into tuples at a time
T = TypeVar("T")
RCODES = [rcode_name(v) for v in range(16)]


class DnsTransaction(NamedTuple):
    """One query and its response. A named tuple, not a dataclass: a DNS storm makes hundreds
    of thousands, and a frozen dataclass costs ten times as much to build."""

    point: int
    transport: str  # udp | tcp
    client: str  # "ip:port"
    server: str
    id: int
    qname: str
    qtype: str
    query_ts: int  # ns, first query
    queries: tuple[int, ...]  # packet rows of the query and its retries
    response: int | None  # packet row of the response
    rcode: str | None
    latency_ns: int | None  # first query -> response
    answers: tuple[str, ...]
    truncated: bool

    @property
    def answered(self) -> bool:
        return self.response is not None

    @property
    def retries(self) -> int:
        return len(self.queries) - 1


@dataclass(frozen=True)
class DnsResult:
    transactions: list[DnsTransaction]
    malformed: int  # DNS-port packets that did not parse
    orphan_responses: int  # responses whose query was not captured
    # per transaction, as arrays for the analyses that group them: the first query's packet
    # row, the point, the first query's time
    first_row: np.ndarray
    point: np.ndarray
    query_ts: np.ndarray


def dns_rows(index: PacketIndex) -> np.ndarray:
    c = index.columns
    port = (c.sport == DNS_PORT) | (c.dport == DNS_PORT)
    return np.flatnonzero(port & ((c.proto == UDP) | ((c.proto == TCP) & (c.paylen > 2))))


@dataclass(frozen=True)
class _Pairs:
    """Transactions over messages sorted by (key, packet): each is a run of queries with the
    same key (the first and its retries), closed by the response that follows, if any."""

    order: np.ndarray  # message positions, sorted
    begin: np.ndarray  # per transaction: where its run starts in `order`
    queries: np.ndarray  # per transaction: how many queries (0: a response without query)
    answered: np.ndarray  # per transaction: whether a response closes the run


def _pair(k1: np.ndarray, k2: np.ndarray, response: np.ndarray) -> _Pairs:
    # by (k1, k2), file order among equals; k1 alone almost always decides, and one stable
    # sort of it costs a third of the three-key lexsort
    order = np.argsort(k1, kind="stable")
    a, b = k1[order], k2[order]
    if ((a[1:] == a[:-1]) & (b[1:] != b[:-1])).any():
        order = np.lexsort((k2, k1))
        a, b = k1[order], k2[order]
    r = response[order]
    new = np.ones(len(order), bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1]) | r[:-1]  # a response closes a run
    begin = np.flatnonzero(new)
    end = np.r_[begin[1:], len(order)]
    answered = r[end - 1] if len(order) else np.zeros(0, bool)
    return _Pairs(order, begin, end - begin - answered, answered)


def dns_transactions(index: PacketIndex, cancel: threading.Event | None = None) -> DnsResult:
    tx, found = _pair_messages(index, cancel)
    out: list[DnsTransaction] = []
    # a slice at a time, the per-message arrays gone: a storm's lists of fields never exist
    # whole beside its tuples
    for a in range(0, len(tx.row), BUILD_SLICE):
        out.extend(tx.build(a, min(a + BUILD_SLICE, len(tx.row))))
    return DnsResult(out, *found, tx.row, np.asarray(tx.point, np.int64), tx.ts)


def _pair_messages(
    index: PacketIndex, cancel: threading.Event | None
) -> tuple[_TxArrays, tuple[int, int]]:
    """Every transaction's fields as arrays, and (malformed, orphan responses)."""
    c = index.columns
    rows = dns_rows(index)
    point = c.point[rows]
    payload = c.offset[rows] + c.payoff[rows]
    caplen = c.caplen[rows].astype(np.int64) - c.payoff[rows]
    size = np.minimum(c.paylen[rows].astype(np.int64), caplen).clip(0)
    start, size = tcp_messages(index.mapped, point, payload, size, c.proto[rows] == TCP)
    q = read_questions(index.mapped, point, start, size, cancel)
    keep = np.flatnonzero(q.ok)
    rows, point, start, size = rows[keep], point[keep], start[keep], size[keep]
    response = (q.flags[keep] & 0x8000) != 0
    src, dst, sport, dport = c.src[rows], c.dst[rows], c.sport[rows], c.dport[rows]
    client = np.where(response, dst, src), np.where(response, dport, sport)
    server = np.where(response, src, dst), np.where(response, sport, dport)
    l3, proto = c.l3[rows], c.proto[rows]
    fields = (point, proto, l3, *client, *server, q.ident[keep], q.qtype[keep])
    name = q.name[keep]
    k1 = mix((*fields, name[:, 0]), len(rows), K1)
    k2 = mix((*fields, name[:, 1]), len(rows), K2)
    pairs = _pair(k1, k2, response)
    ts = c.ts[rows]
    tx = np.flatnonzero(pairs.queries > 0)
    first = pairs.order[pairs.begin[tx]]
    tx = tx[np.lexsort((point[first], ts[first]))]
    lo, count, answered = pairs.begin[tx], pairs.queries[tx], pairs.answered[tx]
    first = pairs.order[lo]
    # the response's position where there is one, else the query's (never read then)
    last = np.where(answered, pairs.order[np.minimum(lo + count, len(rows) - 1)], first)
    message, distinct = _distinct(q.body[keep])
    messages = _Messages.read(index, point[distinct], start[distinct], size[distinct])
    endpoint, ends = _endpoints(index, l3, (client, server))
    tx_arrays = _TxArrays(
        point=point[first].tolist(),
        tcp=(proto[first] == TCP).tolist(),
        client=ends[0][first],
        server=ends[1][first],
        ident=q.ident[keep][first],
        asked=message[first],
        ts=ts[first],
        row=rows[first],
        response=rows[last],
        rcode=q.flags[keep][last] & 15,
        latency=ts[last] - ts[first],
        got=message[last],
        answered=answered,
        retries={
            k: tuple(rows[pairs.order[lo[k] : lo[k] + count[k]]].tolist())
            for k in np.flatnonzero(count > 1).tolist()
        },
        endpoint=endpoint,
        messages=messages,
    )
    return tx_arrays, (int((~q.ok).sum()), int((pairs.queries == 0).sum()))


@dataclass(frozen=True)
class _Messages:
    """What the transactions take from each distinct message (its question, its answers)."""

    qname: list[str]
    qtype: list[str]
    answers: list[tuple[str, ...]]
    truncated: list[bool]

    @classmethod
    def read(
        cls, index: PacketIndex, point: np.ndarray, start: np.ndarray, size: np.ndarray
    ) -> _Messages:
        parsed = [
            _parse(index, p, a, n)
            for p, a, n in zip(point.tolist(), start.tolist(), size.tolist(), strict=True)
        ]
        return cls(
            [m.qname if m else "" for m in parsed],
            [m.qtype if m else "" for m in parsed],
            [tuple(x.data for x in m.answers) if m else () for m in parsed],
            [bool(m and m.truncated) for m in parsed],
        )


@dataclass(frozen=True)
class _TxArrays:
    """Per transaction, as arrays: its fields before they become DnsTransaction tuples."""

    point: list[int]
    tcp: list[bool]
    client: np.ndarray  # endpoint ids
    server: np.ndarray
    ident: np.ndarray
    asked: np.ndarray  # message ids of the first query and of the response
    ts: np.ndarray
    row: np.ndarray  # the first query's packet
    response: np.ndarray  # the response's packet (the query's when unanswered)
    rcode: np.ndarray
    latency: np.ndarray
    got: np.ndarray
    answered: np.ndarray
    retries: dict[int, tuple[int, ...]]  # transaction -> all its queries' packets, if several
    endpoint: list[str]  # "address:port" by endpoint id
    messages: _Messages  # by message id

    def build(self, a: int, b: int) -> list[DnsTransaction]:
        """The transactions a to b as tuples."""
        endpoint, m = self.endpoint, self.messages
        asked, ok = self.asked[a:b].tolist(), self.answered[a:b].tolist()
        got = [k if y else -1 for k, y in zip(self.got[a:b].tolist(), ok, strict=True)]
        queries: list[tuple[int, ...]] = [(r,) for r in self.row[a:b].tolist()]
        for k in self.retries.keys() & range(a, b):
            queries[k - a] = self.retries[k]
        return list(
            map(
                DnsTransaction._make,
                zip(
                    self.point[a:b],
                    ["tcp" if t else "udp" for t in self.tcp[a:b]],
                    [endpoint[k] for k in self.client[a:b].tolist()],
                    [endpoint[k] for k in self.server[a:b].tolist()],
                    self.ident[a:b].tolist(),
                    [m.qname[k] for k in asked],
                    [m.qtype[k] for k in asked],
                    self.ts[a:b].tolist(),
                    queries,
                    _if(self.response[a:b].tolist(), ok),
                    _if([RCODES[v] for v in self.rcode[a:b].tolist()], ok),
                    _if(self.latency[a:b].tolist(), ok),
                    [m.answers[k] if k >= 0 else () for k in got],
                    [k >= 0 and m.truncated[k] for k in got],
                    strict=True,
                ),
            )
        )


def _if(values: list[T], ok: list[bool]) -> list[T | None]:
    """Each value where `ok`, else None (what an unanswered query has)."""
    return [v if y else None for v, y in zip(values, ok, strict=True)]


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id of each message, position of each distinct message's first copy) for messages
    keyed by hash: storms repeat a few messages thousands of times, each parsed once."""
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    k = keys[order]
    new = np.ones(len(k), bool)
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    ids = np.empty(len(k), np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, order[new]


def _parse(index: PacketIndex, point: int, start: int, size: int) -> DnsMessage | None:
    try:
        return parse_dns(index.mapped(int(point))[int(start) : int(start) + int(size)])
    except DnsError:
        return None  # its question matched; what follows could not be read


def _endpoints(
    index: PacketIndex, l3: np.ndarray, sides: tuple[tuple[np.ndarray, np.ndarray], ...]
) -> tuple[list[str], list[np.ndarray]]:
    """ "address:port" of each distinct endpoint, and per side the endpoint of each message."""
    keys = [
        (l3.astype(np.uint64) << np.uint64(48))
        | (port.astype(np.uint64) << np.uint64(32))
        | addr.astype(np.uint64)
        for addr, port in sides
    ]
    distinct, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    texts = [
        f"{index.address(int(v >> 48), int(v & 0xFFFFFFFF))}:{int(v >> 32) & 0xFFFF}"
        for v in distinct.tolist()
    ]
    n = len(l3)
    return texts, [inverse[k * n : (k + 1) * n] for k in range(len(sides))]
