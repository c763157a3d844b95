"""DNS transactions: queries paired with their responses, per capture point."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ktrace.decode.dns import DnsError, DnsMessage, parse_dns, question, rcode_name
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP, UDP
from ktrace.errors import Cancelled

DNS_PORT = 53


@dataclass(frozen=True)
class DnsTransaction:
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


def dns_rows(index: PacketIndex) -> np.ndarray:
    c = index.columns
    port = (c.sport == DNS_PORT) | (c.dport == DNS_PORT)
    return np.flatnonzero(port & ((c.proto == UDP) | ((c.proto == TCP) & (c.paylen > 2))))


@dataclass
class _Open:
    """A query waiting for its response; messages are parsed fully only once paired."""

    key: tuple[int, bool, tuple[str, int], tuple[str, int], int, bytes, int]
    query: bytes
    queries: list[int]
    response: int | None = None
    answer: bytes | None = None
    rcode: int = 0


def _payload(data: bytes, tcp: bool) -> bytes:
    if tcp:  # DNS over TCP: 2-byte length prefix
        return data[2 : 2 + int.from_bytes(data[:2], "big")]
    return data


def dns_transactions(index: PacketIndex, cancel: threading.Event | None = None) -> DnsResult:
    c = index.columns
    rows = dns_rows(index)
    # One bulk conversion instead of numpy scalar access per packet: this loop can see
    # hundreds of thousands of DNS packets in a DNS storm.
    start = (c.offset[rows] + c.payoff[rows]).tolist()
    size = (
        np.minimum(
            c.paylen[rows].astype(np.int64), c.caplen[rows].astype(np.int64) - c.payoff[rows]
        )
        .clip(0)
        .tolist()
    )
    cols = [
        a.tolist()
        for a in (
            c.point[rows],
            c.proto[rows],
            c.l3[rows],
            c.src[rows],
            c.sport[rows],
            c.dst[rows],
            c.dport[rows],
        )
    ]
    views = {p: index.mapped(p) for p in set(cols[0])}
    pending: dict[tuple[object, ...], _Open] = {}
    done: list[_Open] = []
    malformed = orphans = 0
    address = index.address
    for k, (row, point, proto, l3, src, sport, dst, dport) in enumerate(
        zip(rows.tolist(), *cols, strict=True)
    ):
        if cancel is not None and k % 4096 == 0 and cancel.is_set():
            raise Cancelled()
        tcp = proto == TCP
        data = _payload(views[point][start[k] : start[k] + size[k]], tcp)
        try:
            ident, flags, qwire, qtype = question(data)
            if qtype < 0:  # a compressed first name: rare enough for the slow path
                msg = parse_dns(data)
                qwire, qtype = msg.qname.encode(), -2
        except DnsError:
            malformed += 1
            continue
        response = bool(flags & 0x8000)
        a, b = (address(l3, src), sport), (address(l3, dst), dport)
        client, server = (b, a) if response else (a, b)
        key = (point, tcp, client, server, ident, qwire.lower(), qtype)
        if not response:
            if key in pending:
                pending[key].queries.append(row)  # a retry with the same id
            else:
                pending[key] = _Open(key, data, [row])
            continue
        entry = pending.pop(key, None)
        if entry is None:
            orphans += 1
            continue
        entry.response, entry.answer, entry.rcode = row, data, flags & 15
        done.append(entry)
    done.extend(pending.values())
    parsed: dict[bytes, DnsMessage] = {}
    ts = c.ts.tolist()
    out = [_transaction(ts, e, parsed) for e in done]
    out.sort(key=lambda t: (t.query_ts, t.point))
    return DnsResult(out, malformed, orphans)


def _parse_cached(data: bytes, cache: dict[bytes, DnsMessage]) -> DnsMessage:
    """Storms repeat the same messages with new ids: parse each distinct one once."""
    body = data[2:]
    msg = cache.get(body)
    if msg is None:
        if len(cache) > 65536:
            cache.clear()
        msg = cache[body] = parse_dns(data)
    return msg


def _transaction(ts: list[int], e: _Open, cache: dict[bytes, DnsMessage]) -> DnsTransaction:
    point, tcp, client, server, ident, _, _ = e.key
    first, resp = e.queries[0], e.response
    query = _parse_cached(e.query, cache)
    msg = None
    if e.answer is not None:
        try:
            msg = _parse_cached(e.answer, cache)
        except DnsError:
            msg = None  # its question matched; what follows could not be read
    return DnsTransaction(
        point=point,
        transport="tcp" if tcp else "udp",
        client=f"{client[0]}:{client[1]}",
        server=f"{server[0]}:{server[1]}",
        id=ident,
        qname=query.qname,
        qtype=query.qtype,
        query_ts=ts[first],
        queries=tuple(e.queries),
        response=resp,
        rcode=rcode_name(e.rcode) if resp is not None else None,
        latency_ns=ts[resp] - ts[first] if resp is not None else None,
        answers=tuple(x.data for x in msg.answers) if msg else (),
        truncated=msg.truncated if msg else False,
    )
