"""The same HTTP request at every point that saw it: its copies joined by the identity of the
packet that began it (the correlation's, which survives DNAT and tunnels), ordered from the
client towards the server, with the client's wait split into server time and network time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from ktrace.analysis.correlate import Correlation
from ktrace.analysis.http import HttpTransaction


@dataclass(frozen=True)
class HttpExchange:
    """One HTTP request across the points that saw it, and where its time went."""

    copies: tuple[HttpTransaction, ...]  # one per point, nearest the client first
    backend: str  # "ip:port" that answered, after any DNAT; "" when no point shows it
    # the wait at the point nearest the server: time spent in the server (and its hop)
    server_ns: int | None = field(init=False)
    # the client's wait less the server's: time on the way there and back
    network_ns: int | None = field(init=False)

    def __post_init__(self) -> None:
        answered = [t.latency_ns for t in self.copies if t.latency_ns is not None]
        server = answered[-1] if answered else None
        first = self.copies[0].latency_ns
        network = None
        if first is not None and server is not None and len(self.copies) > 1:
            network = max(first - server, 0)
        object.__setattr__(self, "server_ns", server)
        object.__setattr__(self, "network_ns", network)

    @property
    def primary(self) -> HttpTransaction:
        return self.copies[0]

    def hops_ns(self) -> list[int | None]:
        """Per step between consecutive points: how much of the wait it added."""
        waits = [t.latency_ns for t in self.copies]
        return [a - b if a is not None and b is not None else None for a, b in pairwise(waits)]


def http_exchanges(
    transactions: list[HttpTransaction],
    correlation: Correlation,
    backend_of: Callable[[HttpTransaction], str],
) -> list[HttpExchange]:
    """Each request once, in the order it was first made. `backend_of` names the server a
    copy reached when the copy itself shows only a Service address (the path knows)."""
    if not transactions:
        return []
    row = np.array([t.request_row for t in transactions], np.int64)
    ident = np.where(row >= 0, correlation.ident[row.clip(0)], -1).astype(np.int64)
    alone = ident < 0
    ident[alone] = -1 - np.flatnonzero(alone)  # a request not joined is its own exchange
    h2 = np.array(_within_packet(transactions, ident), np.int64)
    when = correlation.when[row.clip(0)]
    order = np.lexsort((when, h2, ident))
    key = np.stack([ident, h2], axis=1)[order]
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
    out = []
    for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist(), strict=True):
        copies = _one_per_point([transactions[k] for k in order[lo:hi].tolist()])
        server_side = [t for t in copies if t.answered] or copies
        out.append(HttpExchange(tuple(copies), backend_of(server_side[-1])))
    out.sort(key=lambda e: (e.primary.request_ts, e.primary.point, e.primary.stream))
    return out


def _one_per_point(copies: list[HttpTransaction]) -> list[HttpTransaction]:
    """A point that saw a request twice (a node NIC before and after DNAT, a hairpin) keeps
    the first: the copies stay one hop each."""
    seen: set[int] = set()
    out = []
    for t in copies:
        if t.point not in seen:
            seen.add(t.point)
            out.append(t)
    return out


def _within_packet(transactions: list[HttpTransaction], ident: np.ndarray) -> list[int]:
    """What tells apart requests begun by one packet: the HTTP/2 stream, or for HTTP/1.x
    pipelining the request's rank among those of its packet at its point."""
    rank: dict[tuple[int, int], int] = {}
    out = []
    for t, i in zip(transactions, ident.tolist(), strict=True):
        if t.protocol == "HTTP/2":
            out.append(t.stream)
            continue
        k = rank[i, t.point] = rank.get((i, t.point), -1) + 1
        out.append(k)
    return out
