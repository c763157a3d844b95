"""DNS transactions: queries paired with their responses, per capture point."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ktrace.decode.dns import DnsError, DnsMessage, parse_dns, rcode_name
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
    """A query waiting for its response."""

    key: tuple[int, bool, tuple[str, int], tuple[str, int], int, str, str]
    qname: str
    queries: list[int]
    response: int | None = None
    message: DnsMessage | None = None


def _message(index: PacketIndex, row: int) -> DnsMessage:
    data = index.payload(row)
    if int(index.columns.proto[row]) == TCP:  # DNS over TCP: 2-byte length prefix
        data = data[2 : 2 + int.from_bytes(data[:2], "big")]
    return parse_dns(data)


def dns_transactions(index: PacketIndex, cancel: threading.Event | None = None) -> DnsResult:
    c = index.columns
    pending: dict[tuple[object, ...], _Open] = {}
    done: list[_Open] = []
    malformed = orphans = 0
    for count, row in enumerate(dns_rows(index).tolist()):
        if cancel is not None and count % 4096 == 0 and cancel.is_set():
            raise Cancelled()
        try:
            msg = _message(index, row)
        except DnsError:
            malformed += 1
            continue
        l3 = int(c.l3[row])
        src = (index.address(l3, int(c.src[row])), int(c.sport[row]))
        dst = (index.address(l3, int(c.dst[row])), int(c.dport[row]))
        client, server = (dst, src) if msg.response else (src, dst)
        tcp = int(c.proto[row]) == TCP
        key = (int(c.point[row]), tcp, client, server, msg.id, msg.qname.lower(), msg.qtype)
        if not msg.response:
            if key in pending:
                pending[key].queries.append(row)  # a retry with the same id
            else:
                pending[key] = _Open(key, msg.qname, [row])
            continue
        entry = pending.pop(key, None)
        if entry is None:
            orphans += 1
            continue
        entry.response, entry.message = row, msg
        done.append(entry)
    done.extend(pending.values())
    out = [_transaction(index, e) for e in done]
    out.sort(key=lambda t: (t.query_ts, t.point))
    return DnsResult(out, malformed, orphans)


def _transaction(index: PacketIndex, e: _Open) -> DnsTransaction:
    ts = index.columns.ts
    point, tcp, client, server, ident, _, qtype = e.key
    first, msg, resp = e.queries[0], e.message, e.response
    return DnsTransaction(
        point=point,
        transport="tcp" if tcp else "udp",
        client=f"{client[0]}:{client[1]}",
        server=f"{server[0]}:{server[1]}",
        id=ident,
        qname=e.qname,
        qtype=qtype,
        query_ts=int(ts[first]),
        queries=tuple(e.queries),
        response=resp,
        rcode=rcode_name(msg.rcode) if msg else None,
        latency_ns=int(ts[resp]) - int(ts[first]) if resp is not None else None,
        answers=tuple(a.data for a in msg.answers) if msg else (),
        truncated=msg.truncated if msg else False,
    )
