"""How much each capture point itself failed to record, from the evidence it holds: TCP data
that must have passed (later data of the same stream was seen, and nothing filled the gap,
so the sender never had to send it again) and the kernel's own drop counts. An "unanswered"
rate no higher than what the capture lost is not evidence of anything on the network."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP

# A gap this close to the end of a point's capture may be filled after it stopped.
TAIL_NS = 1_500_000_000
# How far above the loss a count of unanswered things must be before it is a finding: the
# count a loss rate explains, plus this many standard deviations of it (a binomial count).
SIGMAS = 3.0


@dataclass(frozen=True)
class PointLoss:
    """What one point failed to record: TCP segments that must have passed it and the
    packets its kernel dropped, each against what it did record."""

    missing: int  # TCP data segments inferred from gaps never filled
    data_seen: int  # TCP data segments recorded
    kernel_drops: int
    recorded: int  # every packet recorded

    @property
    def rate(self) -> float:
        """The larger of the two estimates of the share of packets not recorded."""
        tcp = self.missing / (self.missing + self.data_seen) if self.data_seen else 0.0
        kernel = self.kernel_drops / (self.kernel_drops + self.recorded) if self.recorded else 0.0
        return max(tcp, kernel)

    def said(self) -> str:
        """' (the capture at it lost ~0.3% of packets: ...)' or ''."""
        if not self.missing and not self.kernel_drops:
            return "no loss of its own is seen in the capture"
        why = []
        if self.missing:
            why.append(f"{self.missing:,} TCP segments that must have passed were not recorded")
        if self.kernel_drops:
            why.append(f"its kernel dropped {self.kernel_drops:,} packets")
        return f"the capture lost about {100 * self.rate:.2g}% of packets ({'; '.join(why)})"

    def explains(self, unanswered: int, asked: int) -> bool:
        """Whether `unanswered` of `asked` is no more than this capture loss accounts for:
        an answer (or the question) missing from the file, not from the network."""
        expected = asked * self.rate
        return unanswered <= expected + SIGMAS * math.sqrt(expected)


def point_losses(index: PacketIndex, flow: np.ndarray) -> list[PointLoss]:
    """Per point of the index, its own capture loss."""
    c = index.columns
    npoints = len(index.points)
    drops = np.array([index.kernel_drops(k) or 0 for k in range(npoints)], np.int64)
    recorded = np.bincount(c.point, minlength=npoints)
    data = np.flatnonzero((c.proto == TCP) & (c.paylen > 0) & (flow >= 0))
    seen = np.bincount(c.point[data], minlength=npoints)
    missing = _unfilled_gaps(index, flow, data, npoints)
    return [
        PointLoss(int(missing[k]), int(seen[k]), int(drops[k]), int(recorded[k]))
        for k in range(npoints)
    ]


def _unfilled_gaps(
    index: PacketIndex, flow: np.ndarray, data: np.ndarray, npoints: int
) -> np.ndarray:
    """Per point: segments missing from gaps in a stream's sequence space that later data
    of the stream proves were sent, and that nothing recorded later filled."""
    c = index.columns
    missing = np.zeros(npoints, np.int64)
    if not len(data):
        return missing
    # one stream per (flow, point, sender): the sender told apart by its address and port
    sender = c.src[data].astype(np.int64) << 16 | c.sport[data]
    stream = (flow[data].astype(np.int64) * npoints + c.point[data]) * 2
    order = np.lexsort((c.ts[data], sender, stream))
    rows = data[order]
    key = stream[order] << 48 | sender[order]
    begins = np.r_[True, key[1:] != key[:-1]]
    first = np.maximum.accumulate(np.where(begins, np.arange(len(rows)), 0))
    base = c.seq[rows[first]].astype(np.int64)
    rel = (c.seq[rows].astype(np.int64) - base) & 0xFFFFFFFF
    rel = np.where(rel >= 1 << 31, rel - (1 << 32), rel)  # before the first: below zero
    size = c.paylen[rows].astype(np.int64)
    # in sequence order within each stream: what is covered up to each segment
    by_seq = np.lexsort((rel, key))
    k, r, n = key[by_seq], rel[by_seq], size[by_seq]
    starts = np.r_[True, k[1:] != k[:-1]]
    # the end covered so far, stream by stream: each stream's ends lifted above the last's
    lift = (np.cumsum(starts) << 35).astype(np.int64)
    covered = np.maximum.accumulate(lift + r + n) - lift
    reach = np.r_[0, covered[:-1]]
    gap = np.where(starts, 0, np.maximum(r - reach, 0))
    # not judged near the end of the point's capture: the refill may come after it
    ends = np.full(npoints, np.iinfo(np.int64).min, np.int64)
    point = c.point[rows[by_seq]]
    np.maximum.at(ends, point, c.ts[rows[by_seq]])
    late = c.ts[rows[by_seq]] + TAIL_NS > ends[point]
    gap[late] = 0
    if not gap.any():
        return missing
    segment = np.maximum(np.maximum.reduceat(n, np.flatnonzero(starts)), 1)
    stream_of = np.cumsum(starts) - 1
    lost = -(-gap // segment[stream_of])  # whole segments, rounded up
    np.add.at(missing, point, lost)
    return missing
