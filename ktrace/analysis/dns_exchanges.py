"""Each DNS exchange once: the copies of one query seen at several points are one exchange,
shown as seen closest to its client, with the points that saw it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.analysis.correlate import Correlation
from ktrace.analysis.dns import DnsTable
from ktrace.kernels.sorting import repeated


@dataclass(frozen=True, eq=False)
class DnsExchanges:
    """Each DNS exchange once, by its copy nearest the client, across points."""

    tx: np.ndarray  # per exchange in time order, its transaction nearest the client
    point: np.ndarray  # per exchange, the point of that transaction
    shared: dict[int, frozenset[int]]  # exchanges seen at more than one point: those points

    def __len__(self) -> int:
        return len(self.tx)

    def points(self, k: int) -> frozenset[int]:
        """The points that saw exchange k."""
        return self.shared.get(k) or frozenset((int(self.point[k]),))


def dns_exchanges(table: DnsTable, correlation: Correlation) -> DnsExchanges:
    first, point = table.row, table.point
    packet = correlation.ident.take(first)
    if not repeated(packet).any():  # each seen once: the table's own order (time, point, file)
        return DnsExchanges(np.arange(len(table)), point, {})
    position = np.arange(len(table))
    # one packet over TCP carries several messages: a copy is the same packet, id and message
    keys = (table.asked, table.ident, packet)
    # per exchange: its copies, earliest (clock-corrected) first, ties in table order
    order = np.lexsort((position, correlation.when.take(first), *keys))
    new = np.zeros(len(order), bool)
    new[:1] = True
    for key in keys:
        ordered = key[order]
        new[1:] |= ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new)
    best = order[starts]
    appears = np.minimum.reduceat(order, starts)
    shown = np.lexsort((appears, table.ts[best]))
    sizes = np.diff(np.r_[starts, len(order)])
    shared = {}
    for k in np.flatnonzero(sizes[shown] > 1).tolist():  # seen at more than one point
        g = int(shown[k])
        shared[k] = frozenset(point[order[starts[g] : starts[g] + sizes[g]]].tolist())
    return DnsExchanges(best[shown], point[best[shown]], shared)
