"""TCP health per flow from sequence numbers: handshake time, retransmissions, segments out of
order. Judged within each capture point, so that the same segment seen at two points is not
taken for a retransmission.

Row-local work runs in chunks with what one chunk hands the next carried over (the sequence
base and the highest end sent so far in the current direction), so that the temporaries stay a
few MB whatever the capture's size.
"""

from __future__ import annotations

import numpy as np

from ktrace.chunking import chunks, row_type
from ktrace.decode.columns import PacketColumns
from ktrace.decode.transport import TCP
from ktrace.distinct import distinct
from ktrace.kernels.sequence import SHIFT as _SHIFT
from ktrace.kernels.sequence import Walk, behind_sent, handshake_times, missed_segments, resent
from ktrace.kernels.sorting import sorted_runs

# A gap this close to the end of a point's capture may be filled after it stopped.
TAIL_NS = 1_500_000_000


def tcp_health(
    c: PacketColumns, flow: np.ndarray, forward: np.ndarray, nflows: int, npoints: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(handshake ns or -1, retransmissions, segments out of order) per flow; `flow` per row,
    -1 outside any flow; and per point the segments it did not record (unrecorded)."""
    retrans, out_of_order, unrecorded = _resends(c, flow, forward, nflows, npoints)
    return _handshakes(c, flow, forward, nflows, npoints), retrans, out_of_order, unrecorded


def _resends(
    c: PacketColumns, flow: np.ndarray, forward: np.ndarray, nflows: int, npoints: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(retransmissions, segments out of order) per flow, and unrecorded segments per point."""
    tcp = np.flatnonzero((c.proto == TCP) & (flow >= 0)).astype(row_type(len(c)), copy=False)
    if not len(tcp):
        return np.zeros(nflows, np.int64), np.zeros(nflows, np.int64), np.zeros(npoints, np.int64)
    walk = resent_rows(c, tcp, flow, forward, npoints)
    rows, again, late = walk.rows, walk.again, walk.late
    missing = unrecorded(c, walk, npoints)
    f, p = flow.take(rows), c.point.take(rows)
    return (
        per_point_max(f[again], p[again], nflows, npoints),
        per_point_max(f[late], p[late], nflows, npoints),
        missing,
    )


def resent_rows(
    c: PacketColumns, tcp: np.ndarray, flow: np.ndarray, forward: np.ndarray, npoints: int
) -> Walk:
    """Of these TCP rows (in flows), grouped by (flow, point, direction) in file order: the
    rows so ordered, and per row whether it was sent again (retransmitted) or filled a gap
    late (out of order)."""
    tcp = tcp.astype(row_type(len(c)), copy=False)  # lives through this function
    width = max(npoints, 1)
    # one group per (flow, point, direction), file order within it
    group = np.empty(len(tcp), np.int64)
    for lo, hi in chunks(len(tcp)):
        r = tcp[lo:hi]
        place = flow.take(r).astype(np.int64) * width + c.point.take(r)
        group[lo:hi] = place * 2 + forward.take(r)
    order, start = sorted_runs(group, spend=True)
    del group
    rows = tcp.take(order)
    del tcp, order
    behind, rel, carries = behind_sent((c.tcp_flags, c.paylen, c.seq), rows, start)
    again, late = _resent(rows, start, behind, rel, carries)
    return Walk(rows, start, rel, again, late)


def unrecorded(c: PacketColumns, walk: Walk, npoints: int) -> np.ndarray:
    """Per point: TCP data segments it did not record, that a gap in a direction's sequence
    proves passed it (later data was seen) and nothing recorded later filled (the sender
    never had to send them again: they arrived). A gap opened within TAIL_NS of the point's
    last packet is not judged: its fill may have come after the capture stopped. Counted in
    segments of the direction's largest size."""
    columns = (c.tcp_flags, c.paylen, c.ts, c.point)
    return missed_segments(columns, walk, npoints, TAIL_NS)


def _resent(
    rows: np.ndarray, start: np.ndarray, behind: np.ndarray, rel: np.ndarray, carries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(retransmitted, late) per sorted row. Below what was already sent: a retransmission if
    a segment starting at the same sequence number was seen before in its direction, else a
    late segment filling a gap. The segments below what was sent are few: only rows whose
    key (direction, sequence number) is one of theirs are looked at."""
    n = len(rows)
    again, late = np.zeros(n, bool), np.zeros(n, bool)
    hits = np.flatnonzero(behind)
    if not len(hits):
        return again, late
    begins = np.flatnonzero(start)
    direction = np.searchsorted(begins, hits, side="right") - 1
    suspects = distinct((direction.astype(np.int64) << _SHIFT) | rel[hits])
    return resent(start, rel, carries, behind, suspects)


def _handshakes(
    c: PacketColumns, flow: np.ndarray, forward: np.ndarray, nflows: int, npoints: int
) -> np.ndarray:
    """SYN -> the initiator's ACK after the SYN/ACK, at each point; kept from the point that
    saw the SYN first. -1 where there was no complete handshake. The tables are per (flow,
    point), flat; a row of no flow (-1) lands in the spare last flow's place."""
    big = np.iinfo(np.int64).max
    width = max(npoints, 1)
    size = (nflows + 1) * width
    tables = (
        np.full(size, big, np.int64),
        np.full(size, big, np.int64),
        np.full(size, big, np.int64),
    )
    handshake_times(flow, forward, (c.point, c.tcp_flags, c.proto, c.ts), width, tables)
    t_syn, _, t_ack = tables
    syn = t_syn.reshape(nflows + 1, width)[:nflows]
    first_point = syn.argmin(axis=1)
    idx = np.arange(nflows)
    s, a = syn[idx, first_point], t_ack.reshape(nflows + 1, width)[idx, first_point]
    return np.where((s < big) & (a < big), a - s, -1)


def per_point_max(flow: np.ndarray, point: np.ndarray, nflows: int, npoints: int) -> np.ndarray:
    """Counted at every point that saw it, a segment is reported once: the max over points."""
    if npoints <= 1:
        return np.bincount(flow, minlength=nflows)[:nflows].astype(np.int64)
    place = flow.astype(np.int64) * npoints + point
    per_point = np.bincount(place, minlength=nflows * npoints).reshape(nflows, npoints)
    return per_point.max(axis=1)
