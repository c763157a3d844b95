"""How much each capture point itself failed to record, from the evidence it holds: TCP data
that must have passed (later data of the same stream was seen, and nothing filled the gap,
so the sender never had to send it again) and the kernel's own drop counts. An "unanswered"
rate no higher than what the capture lost is not evidence of anything on the network."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ktrace.analysis.flows import FlowTable
from ktrace.chunking import chunks
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP

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


def point_losses(index: PacketIndex, flows: FlowTable) -> list[PointLoss]:
    """Per point of the index, its own capture loss (the unrecorded segments are worked out
    with TCP health: tcp_sequence.unrecorded)."""
    c = index.columns
    npoints = len(index.points)
    drops = np.array([index.kernel_drops(k) or 0 for k in range(npoints)], np.int64)
    recorded = np.bincount(c.point, minlength=npoints)
    seen = np.zeros(npoints, np.int64)
    for lo, hi in chunks(len(c)):
        data = (c.proto[lo:hi] == TCP) & (c.paylen[lo:hi] > 0) & (flows.flow[lo:hi] >= 0)
        seen += np.bincount(c.point[lo:hi][data], minlength=npoints)
    missing = np.zeros(npoints, np.int64)
    missing[: len(flows.unrecorded)] = flows.unrecorded[:npoints]
    return [
        PointLoss(int(missing[k]), int(seen[k]), int(drops[k]), int(recorded[k]))
        for k in range(npoints)
    ]
