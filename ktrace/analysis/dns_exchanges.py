"""Each DNS exchange once: the copies of one query seen at several points are one exchange,
shown as seen closest to its client, with the points that saw it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.analysis.correlate import Correlation
from ktrace.analysis.dns import DnsTable


@dataclass(frozen=True)
class DnsExchanges:
    tx: np.ndarray  # per exchange in time order, its transaction nearest the client
    points: list[frozenset[int]]  # per exchange, the points that saw it

    def __len__(self) -> int:
        return len(self.tx)


def dns_exchanges(table: DnsTable, correlation: Correlation) -> DnsExchanges:
    if not len(table):
        return DnsExchanges(np.zeros(0, np.int64), [])
    first, point = table.row, table.point
    key = correlation.ident[first]
    position = np.arange(len(table))
    # per exchange: its copies, earliest (clock-corrected) first, ties in table order
    order = np.lexsort((position, correlation.when[first], key))
    starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    best = order[starts]
    appears = np.minimum.reduceat(order, starts)
    shown = np.lexsort((appears, table.ts[best]))
    sizes = np.diff(np.r_[starts, len(order)])
    alone = {p: frozenset((p,)) for p in np.unique(point).tolist()}
    points = [alone[p] for p in point[best[shown]].tolist()]
    for k in np.flatnonzero(sizes[shown] > 1).tolist():  # seen at more than one point
        g = int(shown[k])
        points[k] = frozenset(point[order[starts[g] : starts[g] + sizes[g]]].tolist())
    return DnsExchanges(best[shown], points)
