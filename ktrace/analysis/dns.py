"""DNS transactions: queries paired with their responses, per capture point."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ktrace.analysis.dns_tcp import TcpMessages, tcp_dns_messages
from ktrace.analysis.row_columns import Coded, Column, Integers, Vocabulary, flags, or_none
from ktrace.chunking import chunks, row_type
from ktrace.decode.columns import PacketColumns
from ktrace.decode.dns import DNS_PORT, QR, DnsError, DnsMessage, parse_dns, rcode_name
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP, UDP
from ktrace.kernels.dns_questions import Questions, read_questions
from ktrace.kernels.mix import K1, K2, mix_rows
from ktrace.kernels.sorting import factorize, sorted_runs
from ktrace.pcap.hot import Buffer

BUILD_SLICE = 8192  # transactions made into tuples at a time when iterating
RCODES = [rcode_name(v) for v in range(16)]
ANSWER_CODES = Vocabulary([*RCODES, None])  # None: unanswered
TRANSPORTS = Vocabulary(["udp", "tcp"])


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
    """The DNS stage's output: the transactions and what could not be paired."""

    transactions: DnsTable
    malformed: int  # DNS-port messages that did not parse, TCP segments without one
    orphan_responses: int  # responses whose query was not captured


def dns_rows(index: PacketIndex) -> np.ndarray:
    """The packets that carry one DNS message each: UDP to or from port 53 (over TCP they
    are read from the streams: dns_tcp)."""
    c = index.columns
    rows = np.flatnonzero(((c.sport == DNS_PORT) | (c.dport == DNS_PORT)) & (c.proto == UDP))
    return rows.astype(row_type(len(c)), copy=False)  # held through the stage: half the bytes


@dataclass(frozen=True, eq=False)
class _Sources:
    """Where each message lies: the UDP packets' first, then the TCP streams'."""

    index: PacketIndex
    udp: np.ndarray  # packets
    tcp: TcpMessages

    def __len__(self) -> int:
        return len(self.udp) + len(self.tcp)

    def rows(self) -> np.ndarray:
        """Each message's packet."""
        rows = np.concatenate([self.udp, self.tcp.row]) if len(self.tcp) else self.udp
        return rows.astype(row_type(len(self.index.columns)), copy=False)

    def buffer(self, point: int) -> Buffer:
        return self.tcp.joined if point == self.tcp.joined_point else self.index.mapped(point)

    def located(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, start, size) of these messages."""
        udp = at < len(self.udp)
        if udp.all():
            return _located(self.index, self.udp.take(at))
        point, start, size = (np.empty(len(at), np.int64) for _ in range(3))
        out = (point, start, size)
        for got, where in zip(_located(self.index, self.udp.take(at[udp])), out, strict=True):
            where[udp] = got
        k = at[~udp] - len(self.udp)
        for got, where in zip((self.tcp.point, self.tcp.start, self.tcp.size), out, strict=True):
            where[~udp] = got.take(k)
        return point, start, size


@dataclass(frozen=True, eq=False)
class _Pairs:
    """Transactions over messages sorted by (key, packet): each is a run of queries with the
    same key (the first and its retries), closed by the response that follows, if any."""

    order: np.ndarray  # message positions, sorted
    begin: np.ndarray  # per transaction: where its run starts in `order`
    queries: np.ndarray  # per transaction: how many queries (0: a response without query)
    answered: np.ndarray  # per transaction: whether a response closes the run


def _pair(k1: np.ndarray, k2: np.ndarray, response: np.ndarray) -> _Pairs:
    # by (k1, k2), file order among equals. k1 alone almost always decides: its top bits
    # packed with each message's position are sorted as plain values (a fifth of a stable
    # argsort); whole keys out of order after it (top bits shared by different keys, or
    # one k1 with two k2) are rare and then sorted by both
    bits = np.uint64(max(1, (len(k1) - 1).bit_length()))
    order, _ = sorted_runs((k1 >> bits).view(np.int64), spend=True)
    new, by_key = _key_runs(k1, k2, order)
    if not by_key:
        order = np.lexsort((k2, k1))
        new, _ = _key_runs(k1, k2, order)
    # positions as int32 where they fit: these live on while the transactions are laid out
    position = row_type(len(order))
    order = order.astype(position, copy=False)
    r = response[order]
    new[1:] |= r[:-1]  # a response closes a run
    begin = np.flatnonzero(new).astype(position, copy=False)
    end = np.r_[begin[1:], len(order)].astype(position, copy=False)
    answered = r[end - 1] if len(order) else np.zeros(0, bool)
    return _Pairs(order, begin, end - begin - answered, answered)


def _key_runs(k1: np.ndarray, k2: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, bool]:
    """Per element of `order`, whether its keys differ from the one before's, the keys read a
    chunk at a time (not copied whole in that order); and whether that order is by k1 with
    one k2 per k1, as runs need."""
    new = np.ones(len(order), bool)
    by_key = True
    for lo, hi in chunks(len(order) - 1):
        at = order[lo : hi + 1]
        a, b = k1[at], k2[at]
        same, differ = a[1:] == a[:-1], b[1:] != b[:-1]
        by_key = by_key and not ((a[1:] < a[:-1]) | (same & differ)).any()
        np.logical_or(~same, differ, out=new[lo + 1 : hi + 1])
    return new, by_key


def dns_transactions(index: PacketIndex, cancel: threading.Event | None = None) -> DnsResult:
    table, (malformed, orphans) = _pair_messages(index, cancel)
    return DnsResult(table, malformed, orphans)


@dataclass(frozen=True, eq=False)
class _Found:
    """The DNS messages that parsed, per message, in packet order."""

    rows: np.ndarray  # packet
    at: np.ndarray  # message position in the sources
    response: np.ndarray
    ident: np.ndarray
    flags: np.ndarray
    malformed: int


def _found(
    sources: _Sources, cancel: threading.Event | None
) -> tuple[_Found, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The messages; per message the two hashes that pair a query with its response, and the
    two words of the hash of all of it but its id: given apart, so each goes once used. Read
    a chunk of packets at a time, whose questions and packet fields die with it: for every
    message at once they would be the stage's peak, beside the stages DNS runs alongside."""
    index, rows = sources.index, sources.rows()
    n = len(rows)
    ok = np.empty(n, bool)
    columns: list[np.ndarray] = [
        np.empty(n, t) for t in (np.uint16, np.uint16, np.uint64, np.uint64, np.uint64, np.uint64)
    ]
    ident, flags, k1, k2, body0, body1 = columns
    for lo, hi in chunks(n):
        at = np.arange(lo, hi, dtype=np.int64)
        q = read_questions(sources.buffer, *sources.located(at), cancel)
        ok[lo:hi], ident[lo:hi], flags[lo:hi] = q.ok, q.ident, q.flags
        body0[lo:hi], body1[lo:hi] = q.body[:, 0], q.body[:, 1]
        k1[lo:hi], k2[lo:hi] = _exchange_keys(index.columns, rows[lo:hi], q)
    bad = n - int(np.count_nonzero(ok))
    at = np.arange(n, dtype=rows.dtype)
    if bad:  # no copies when every one parsed
        keep = np.flatnonzero(ok)
        at, rows, ident, flags, k1, k2, body0, body1 = (a[keep] for a in (at, rows, *columns))
    del columns
    malformed = bad + sources.tcp.not_dns
    found = _Found(rows, at, (flags & QR) != 0, ident, flags, malformed)
    return found, (k1, k2), (body0, body1)


def _located(index: PacketIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, start, size) of the DNS message in each of these UDP packets."""
    c = index.columns
    payload = c.offset.take(rows) + c.payoff.take(rows)
    caplen = c.caplen.take(rows).astype(np.int64) - c.payoff.take(rows)
    size = np.minimum(c.paylen.take(rows).astype(np.int64), caplen).clip(0)
    del caplen
    return c.point.take(rows), payload, size


def _exchange_keys(
    c: PacketColumns, rows: np.ndarray, q: Questions
) -> tuple[np.ndarray, np.ndarray]:
    """Two hashes of what pairs a query with its response: (point, transport, client and
    server addresses and ports, id, question type and name)."""
    r = (q.flags & QR) != 0
    src, dst, sport, dport = (
        c.src.take(rows),
        c.dst.take(rows),
        c.sport.take(rows),
        c.dport.take(rows),
    )
    client = (np.where(r, dst, src), np.where(r, dport, sport))
    server = (np.where(r, src, dst), np.where(r, sport, dport))
    del src, dst, sport, dport
    kind = q.qtype.view(np.uint32)  # the type's bits (-2 marks a compressed name), unsigned
    fields = (
        c.point.take(rows),
        c.proto.take(rows),
        c.l3.take(rows),
        *client,
        *server,
        q.ident,
        kind,
    )
    every = np.arange(len(rows), dtype=np.int32)  # a chunk's
    k1 = mix_rows((*fields, q.name[:, 0]), every, K1)
    return k1, mix_rows((*fields, q.name[:, 1]), every, K2)


def _pair_messages(
    index: PacketIndex, cancel: threading.Event | None
) -> tuple[DnsTable, tuple[int, int]]:
    """Every transaction's fields as arrays, and (malformed, orphan responses). Built in
    steps whose per-message arrays die with them, each deleted once read for the last time:
    in a storm, where most packets are DNS, the stage's peak is what is alive at once."""
    c = index.columns
    sources = _Sources(index, dns_rows(index), tcp_dns_messages(index))
    m, (k1, k2), (body0, body1) = _found(sources, cancel)
    rows = m.rows
    message, distinct = _distinct(body0, body1)
    del body0, body1
    distinct = m.at.take(distinct)  # where they lie
    pairs = _pair(k1, k2, m.response)
    del k1, k2
    # in time order, then by point, then in file order: put in the order of their first
    # messages (a scatter: they are distinct positions), the stable sort by time and point
    # finds the keys nearly sorted (a hundredth of sorting them from the pairs' order)
    tx = np.flatnonzero(pairs.queries > 0).astype(pairs.order.dtype, copy=False)
    slot = np.full(len(rows), -1, pairs.order.dtype)
    slot[pairs.order.take(pairs.begin.take(tx))] = tx
    tx = slot[slot >= 0]
    opening = rows.take(pairs.order.take(pairs.begin.take(tx)))  # each transaction's first packet
    tx = tx[np.lexsort((c.point.take(opening), c.ts.take(opening)))]
    del opening, slot
    lo, count, answered = pairs.begin.take(tx), pairs.queries.take(tx), pairs.answered.take(tx)
    first = pairs.order.take(lo)
    # the response's position where there is one, else the query's (never read then)
    last = np.where(answered, pairs.order.take(np.minimum(lo + count, len(rows) - 1)), first)
    retries = {
        k: tuple(rows[pairs.order[lo[k] : lo[k] + count[k]]].tolist())
        for k in np.flatnonzero(count > 1).tolist()
    }
    counts = m.malformed, int((pairs.queries == 0).sum())  # malformed, orphan responses
    del pairs, tx, lo, count
    row, response, ident, asked = (
        rows.take(first),
        rows.take(last),
        m.ident.take(first),
        message.take(first),
    )
    rcode, got = (m.flags.take(last) & 15).astype(np.uint8), message.take(last)
    del m, rows, message, first, last
    sides = (
        (c.src.take(row), c.sport.take(row)),
        (c.dst.take(row), c.dport.take(row)),
    )  # a query: client first
    messages = _Messages.read(sources.buffer, *sources.located(distinct))
    endpoint, (client, server) = _endpoints(index, c.l3.take(row), sides)
    del sides
    ts = c.ts.take(row)
    table = DnsTable(
        point=c.point.take(row).astype(np.int64),
        tcp=c.proto.take(row) == TCP,
        client=client,
        server=server,
        ident=ident,
        asked=asked,
        ts=ts,
        row=row,
        response=response,
        rcode=rcode,
        latency=c.ts.take(response) - ts,
        got=got,
        answered=answered,
        retries=retries,
        endpoint=endpoint,
        messages=messages,
    )
    return table, counts


@dataclass(frozen=True)
class _Messages:
    """What the transactions take from each distinct message (its question, its answers)."""

    qname: list[str]
    qtype: list[str]
    answers: list[tuple[str, ...]]
    truncated: list[bool]

    @classmethod
    def read(
        cls,
        buffer: Callable[[int], Buffer],
        point: np.ndarray,
        start: np.ndarray,
        size: np.ndarray,
    ) -> _Messages:
        parsed = [
            _parse(buffer, p, a, n)
            for p, a, n in zip(point.tolist(), start.tolist(), size.tolist(), strict=True)
        ]
        return cls(
            [m.qname if m else "" for m in parsed],
            [m.qtype if m else "" for m in parsed],
            [tuple(x.data for x in m.answers) if m else () for m in parsed],
            [bool(m and m.truncated) for m in parsed],
        )


@dataclass(frozen=True, eq=False)
class DnsTable:
    """Every transaction as columns, in time order. A DnsTransaction tuple is made only for
    the rows asked for: a storm has hundreds of thousands, which the checks count by column
    (ids of names, types and client addresses) instead of one object each."""

    point: np.ndarray
    tcp: np.ndarray
    client: np.ndarray  # endpoint ids
    server: np.ndarray
    ident: np.ndarray
    asked: np.ndarray  # message ids of the first query and of the response
    ts: np.ndarray  # the first query's time
    row: np.ndarray  # the first query's packet
    response: np.ndarray  # the response's packet (the query's when unanswered)
    rcode: np.ndarray  # read where answered
    latency: np.ndarray  # read where answered
    got: np.ndarray
    answered: np.ndarray
    retries: dict[int, tuple[int, ...]]  # transaction -> all its queries' packets, if several
    endpoint: list[str]  # "address:port" by endpoint id
    messages: _Messages  # by message id

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, k: int) -> DnsTransaction:
        return self.take(np.array([k], np.int64))[0]

    def __iter__(self) -> Iterator[DnsTransaction]:
        for a in range(0, len(self), BUILD_SLICE):
            yield from self.take(np.arange(a, min(a + BUILD_SLICE, len(self))))

    def queries(self, k: int) -> tuple[int, ...]:
        """The packets of transaction k's query and its retries."""
        return self.retries.get(k) or (int(self.row[k]),)

    @cached_property
    def qname(self) -> Interned:
        return _interned(self.messages.qname, self.asked)

    @cached_property
    def qtype(self) -> Interned:
        return _interned(self.messages.qtype, self.asked)

    @cached_property
    def client_ip(self) -> Interned:
        """The client's address without its port."""
        return _interned([e.rsplit(":", 1)[0] for e in self.endpoint], self.client)

    def rcode_is(self, *names: str) -> np.ndarray:
        """Answered with one of these codes."""
        wanted = np.zeros(256, bool)  # by rcode (a uint8): one lookup a row, not np.isin's sort
        wanted[[RCODES.index(n) for n in names]] = True
        return self.answered & wanted.take(self.rcode)

    @cached_property
    def endpoints(self) -> Vocabulary:
        return Vocabulary(self.endpoint)

    @cached_property
    def answer_lists(self) -> Vocabulary:
        """Per message its answers, and no answers at `nothing` (an unanswered query's)."""
        return Vocabulary([*self.messages.answers, ()])

    @property
    def nothing(self) -> int:
        return len(self.messages.answers)

    @cached_property
    def retry_counts(self) -> np.ndarray:
        """Per transaction: how many times its query was sent again."""
        counts = np.zeros(len(self), np.int64)
        counts[list(self.retries)] = [len(q) - 1 for q in self.retries.values()]
        return counts

    @cached_property
    def truncated(self) -> np.ndarray:
        """Per message: whether it was truncated (TC)."""
        return np.array(self.messages.truncated, bool)

    def shared_columns(self, ks: np.ndarray) -> dict[str, Column]:
        """The fields of these transactions that read the same in a tuple and in a DNS row
        (result.DnsRow), a column each."""
        answered = self.answered[ks]
        return {
            "transport": Coded(self.tcp[ks].astype(np.int8), TRANSPORTS),
            "client": Coded(self.client[ks], self.endpoints),
            "server": Coded(self.server[ks], self.endpoints),
            "id": Integers(self.ident[ks]),
            "qname": self.qname.coded(ks),
            "qtype": self.qtype.coded(ks),
            "rcode": Coded(np.where(answered, self.rcode[ks], len(RCODES)), ANSWER_CODES),
            "answered": flags(answered),
            "answers": Coded(np.where(answered, self.got[ks], self.nothing), self.answer_lists),
            "truncated": flags(answered & self.truncated.take(self.got[ks])),
        }

    def take(self, ks: np.ndarray) -> list[DnsTransaction]:
        """These transactions as tuples."""
        c = {name: column.listed() for name, column in self.shared_columns(ks).items()}
        ok = self.answered[ks]
        rows = zip(ks.tolist(), self.row[ks].tolist(), strict=True)
        queries = [self.retries.get(k) or (r,) for k, r in rows]
        return list(
            map(
                DnsTransaction._make,
                zip(
                    self.point[ks].tolist(),
                    c["transport"],
                    c["client"],
                    c["server"],
                    c["id"],
                    c["qname"],
                    c["qtype"],
                    self.ts[ks].tolist(),
                    queries,
                    or_none(self.response[ks], ok),
                    c["rcode"],
                    or_none(self.latency[ks], ok),
                    c["answers"],
                    c["truncated"],
                    strict=True,
                ),
            )
        )


@dataclass(frozen=True, eq=False)
class Interned:
    """A text column of the transactions as ids into its distinct values."""

    ids: np.ndarray
    values: list[str]  # in order of first appearance

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.values)

    def coded(self, ks: np.ndarray) -> Coded:
        """The column of these transactions."""
        return Coded(self.ids.take(ks), self.vocabulary)

    def where(self, value: str) -> np.ndarray:
        """Whether each transaction holds `value`."""
        if value not in self.values:
            return np.zeros(len(self.ids), bool)
        return self.ids == self.values.index(value)


def _interned(values: list[str], rows: np.ndarray) -> Interned:
    """`values` (per message or endpoint) interned, taken at `rows`."""
    ids: dict[str, int] = {}
    codes = np.fromiter((ids.setdefault(v, len(ids)) for v in values), np.int32, len(values))
    return Interned(codes.take(rows), list(ids))


def _distinct(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id of each message, position of each distinct message's first copy) for messages
    keyed by a 128-bit hash, given as its two words: storms repeat a few messages thousands
    of times, each parsed once. Numbered by the first word (a hash table where it pays); the
    second confirms it, and only if two messages shared a first word would both words be
    sorted."""
    firsts, ids = factorize(first)
    for lo, hi in chunks(len(ids)):
        if (second[firsts[ids[lo:hi]]] != second[lo:hi]).any():
            return _distinct_sorting(first, second)
    return ids, firsts


def _distinct_sorting(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((second, first))
    new = np.ones(len(order), bool)
    a, b = first[order], second[order]
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    ids = np.empty(len(order), np.int32)
    ids[order] = np.cumsum(new, dtype=np.int32) - 1
    return ids, order[new]


def _parse(buffer: Callable[[int], Buffer], point: int, start: int, size: int) -> DnsMessage | None:
    try:
        return parse_dns(bytes(buffer(int(point))[int(start) : int(start) + int(size)]))
    except DnsError:
        return None  # its question matched; what follows could not be read


def _endpoints(
    index: PacketIndex, l3: np.ndarray, sides: tuple[tuple[np.ndarray, np.ndarray], ...]
) -> tuple[list[str], list[np.ndarray]]:
    """ "address:port" of each distinct endpoint, and per side the endpoint of each message,
    numbered as np.unique would (sorted by value) but by a hash table where it pays."""
    n = len(l3)
    keys = np.empty(n * len(sides), np.uint64)
    for k, (addr, port) in enumerate(sides):
        side = keys[k * n : (k + 1) * n]
        np.left_shift(l3, np.uint64(48), out=side, dtype=np.uint64)
        side |= port.astype(np.uint64) << np.uint64(32)
        side |= addr
    firsts, ids = factorize(keys)
    texts = [
        f"{index.address(int(v >> 48), int(v & 0xFFFFFFFF))}:{int(v >> 32) & 0xFFFF}"
        for v in keys[firsts].tolist()
    ]
    return texts, [ids[k * n : (k + 1) * n] for k in range(len(sides))]
