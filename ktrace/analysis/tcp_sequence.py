"""TCP health per flow from sequence numbers: handshake time, retransmissions, segments out of
order. Judged within each capture point, so that the same segment seen at two points is not
taken for a retransmission.

Row-local work runs in chunks with what one chunk hands the next carried over (the sequence
base and the highest end sent so far in the current direction), so that the temporaries stay a
few MB whatever the capture's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.analysis.sorting import sorted_runs
from ktrace.chunking import chunks, row_type
from ktrace.decode.columns import PacketColumns
from ktrace.decode.transport import ACK, FIN, RST, SYN, TCP
from ktrace.distinct import distinct
from ktrace.native import compiled

_behind_c = compiled("ktrace.analysis._sequence", "behind")
_resent_c = compiled("ktrace.analysis._sequence", "resent")
_handshakes_c = compiled("ktrace.analysis._sequence", "handshakes")
_SHIFT = 34  # a direction's rank above the 33 bits an end can take (32-bit sequence + length)
# A gap this close to the end of a point's capture may be filled after it stopped.
TAIL_NS = 1_500_000_000
_LOW = (1 << _SHIFT) - 1


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


@dataclass(frozen=True, eq=False)
class Walk:
    """TCP rows grouped by (flow, point, direction), file order within a group."""

    rows: np.ndarray
    start: np.ndarray  # bool: the first row of its group
    rel: np.ndarray  # uint32: sequence number relative to the group's first row's
    again: np.ndarray  # bool: sent again (a retransmission)
    late: np.ndarray  # bool: filled a gap late (out of order)


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
    behind, rel, carries = _behind(c, rows, start)
    again, late = _resent(rows, start, behind, rel, carries)
    return Walk(rows, start, rel, again, late)


def unrecorded(c: PacketColumns, walk: Walk, npoints: int) -> np.ndarray:
    """Per point: TCP data segments it did not record, that a gap in a direction's sequence
    proves passed it (later data was seen) and nothing recorded later filled (the sender
    never had to send them again: they arrived). A gap opened within TAIL_NS of the point's
    last packet is not judged: its fill may have come after the capture stopped. Counted in
    segments of the direction's largest size; a chunk at a time, with what one chunk hands
    the next carried over."""
    rows, start, rel, late = walk.rows, walk.start, walk.rel, walk.late
    n = len(rows)
    groups = int(np.count_nonzero(start))
    opened = np.zeros(groups, np.int64)  # gap bytes, per group
    filled = np.zeros(groups, np.int64)  # bytes late segments brought
    largest = np.zeros(groups, np.int64)
    point_of = np.zeros(groups, np.int64)
    last = _point_ends(c, rows, npoints)
    seen_carry, group_carry = -1, -1
    for lo, hi in chunks(n):
        r, st = rows[lo:hi], start[lo:hi]
        group = group_carry + np.cumsum(st)
        size = c.paylen.take(r).astype(np.int64)
        flags = c.tcp_flags.take(r)
        first = rel[lo:hi].astype(np.int64)
        ahead = first < 1 << 31  # else before the direction's first row (reordered)
        syn_fin = ((flags & SYN) != 0).astype(np.int64) + ((flags & FIN) != 0)
        end = first + size + syn_fin
        # what was sent so far: a pure ACK's number is where the next byte will be, sent or not
        sent = np.where(ahead & ((size > 0) | (syn_fin > 0)), end, 0)
        seen = np.maximum.accumulate((group << _SHIFT) | sent)
        seen = np.maximum(seen, seen_carry)
        prev = np.r_[seen_carry, seen[:-1]]
        same = (prev >> _SHIFT) == group
        reach = np.where(same, prev & _LOW, first)
        ts = c.ts.take(r)
        judged = ts + TAIL_NS <= last.take(c.point.take(r))
        gap = np.where(ahead & same & (size > 0) & judged, np.maximum(first - reach, 0), 0)
        opened += np.bincount(group, gap, minlength=groups).astype(np.int64)
        filled += np.bincount(group, np.where(late[lo:hi], size, 0), minlength=groups).astype(
            np.int64
        )
        heads = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        np.maximum.at(largest, group[heads], np.maximum.reduceat(size, heads))
        point_of[group[heads]] = c.point.take(r[heads])
        seen_carry, group_carry = int(seen[-1]), int(group[-1])
    lost = np.maximum(opened - filled, 0)
    segments = -(-lost // np.maximum(largest, 1))
    return np.bincount(point_of, segments, minlength=npoints).astype(np.int64)


def _point_ends(c: PacketColumns, rows: np.ndarray, npoints: int) -> np.ndarray:
    """Each point's last time among these rows."""
    ends = np.full(max(npoints, 1), np.iinfo(np.int64).min, np.int64)
    for lo, hi in chunks(len(rows)):
        r = rows[lo:hi]
        np.maximum.at(ends, c.point.take(r), c.ts.take(r))
    return ends


def _behind(
    c: PacketColumns, rows: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sorted row: whether it ends at or below what its direction already sent (and is
    not a keep-alive), its sequence relative to the direction's first, whether it carries
    anything that takes sequence space."""
    if _behind_c is None:
        return _behind_numpy(c, rows, start)
    n = len(rows)
    behind, rel, carries = np.empty(n, bool), np.empty(n, np.uint32), np.empty(n, bool)
    columns = (c.tcp_flags, c.paylen, c.seq, rows, start)
    _behind_c(
        *map(np.ascontiguousarray, columns), behind.view(np.uint8), rel, carries.view(np.uint8)
    )
    return behind, rel, carries


def _behind_numpy(
    c: PacketColumns, rows: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_behind in numpy: running maxima over (direction rank, end) packed in one integer, a
    chunk at a time with what one chunk hands the next carried over."""
    n = len(rows)
    behind = np.empty(n, bool)
    rel_all = np.empty(n, np.uint32)
    carries_all = np.empty(n, bool)
    base_carry, seen_carry, rank_carry = 0, -1, -1
    for lo, hi in chunks(n):
        r, st = rows[lo:hi], start[lo:hi]
        flags = c.tcp_flags[r]
        syn = ((flags & SYN) != 0).astype(np.int64)
        fin = ((flags & FIN) != 0).astype(np.int64)
        length = c.paylen[r].astype(np.int64)
        seq = c.seq[r].astype(np.int64)
        here = np.maximum.accumulate(np.where(st, np.arange(hi - lo), -1))
        base = np.where(here >= 0, seq[here.clip(0)], base_carry)
        rel = (seq - base) & 0xFFFFFFFF
        end = rel + length + syn + fin
        rank = rank_carry + np.cumsum(st)
        seen = np.maximum(np.maximum.accumulate((rank << _SHIFT) | end), seen_carry)
        prev = np.empty_like(seen)
        prev[0] = seen_carry
        prev[1:] = seen[:-1]
        same = (prev >> _SHIFT) == rank
        prev_end = np.where(same, prev & _LOW, -1)
        carries = (length > 0) | (syn > 0) | (fin > 0)
        keepalive = (length <= 1) & (rel + 1 == prev_end) & (syn == 0) & (fin == 0)
        behind[lo:hi] = carries & same & (end <= prev_end) & ~keepalive
        rel_all[lo:hi] = rel
        carries_all[lo:hi] = carries
        base_carry, seen_carry, rank_carry = int(base[-1]), int(seen[-1]), int(rank[-1])
    return behind, rel_all, carries_all


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
    if _resent_c is not None:
        start8, carries8, behind8 = (
            np.ascontiguousarray(a).view(np.uint8) for a in (start, carries, behind)
        )
        _resent_c(
            start8, rel, carries8, behind8, suspects, again.view(np.uint8), late.view(np.uint8)
        )
        return again, late
    repeated = _repeated_numpy(start, rel, carries, suspects)
    np.logical_and(behind, repeated, out=again)
    np.logical_and(behind, ~repeated, out=late)
    return again, late


def _repeated_numpy(
    start: np.ndarray, rel: np.ndarray, carries: np.ndarray, suspects: np.ndarray
) -> np.ndarray:
    """Per row: it carries a segment at a suspect key that an earlier row carried too, the
    rows at those keys found by binary search a chunk at a time."""
    n = len(start)
    cand, keys, done = [], [], -1
    for lo, hi in chunks(n):
        key = done + np.cumsum(start[lo:hi], dtype=np.int64)  # the row's direction
        done = int(key[-1])
        key <<= _SHIFT
        key |= rel[lo:hi]
        at = np.searchsorted(suspects, key).clip(max=len(suspects) - 1)
        found = np.flatnonzero((suspects[at] == key) & carries[lo:hi])
        cand.append(lo + found)
        keys.append(key[found])
    rows_found, key_found = np.concatenate(cand), np.concatenate(keys)
    _, first = np.unique(key_found, return_index=True)  # the first segment at each key
    repeated = np.zeros(n, bool)
    repeated[rows_found] = True
    repeated[rows_found[first]] = False
    return repeated


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
    if _handshakes_c is not None:
        flow32 = np.ascontiguousarray(flow, np.int32)
        columns = (c.point, forward.view(np.uint8), c.tcp_flags, c.proto, c.ts)
        _handshakes_c(flow32, *map(np.ascontiguousarray, columns), width, *tables)
    else:
        _handshakes_numpy(c, flow, forward, width, tables)
    t_syn, _, t_ack = tables
    syn = t_syn.reshape(nflows + 1, width)[:nflows]
    first_point = syn.argmin(axis=1)
    idx = np.arange(nflows)
    s, a = syn[idx, first_point], t_ack.reshape(nflows + 1, width)[idx, first_point]
    return np.where((s < big) & (a < big), a - s, -1)


def _handshakes_numpy(
    c: PacketColumns,
    flow: np.ndarray,
    forward: np.ndarray,
    width: int,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """_handshakes' tables filled by ufunc.at (ten times faster on one index than on a
    pair); a row of no flow (-1) lands in the spare last flow's place, as negative indices
    do."""
    t_syn, t_synack, t_ack = tables
    tcp = c.proto == TCP
    kind = c.tcp_flags & (SYN | ACK)
    for table, mask in (
        (t_syn, tcp & (kind == SYN) & forward),
        (t_synack, tcp & (kind == (SYN | ACK)) & ~forward),
    ):
        rows = np.flatnonzero(mask)
        np.minimum.at(table, flow[rows].astype(np.int64) * width + c.point[rows], c.ts[rows])
    for lo, hi in chunks(len(c)):
        place = flow[lo:hi].astype(np.int64) * width + c.point[lo:hi]
        is_ack = tcp[lo:hi] & ((c.tcp_flags[lo:hi] & (SYN | ACK | RST)) == ACK) & forward[lo:hi]
        after = np.flatnonzero(is_ack & (c.ts[lo:hi] >= t_synack[place]))
        np.minimum.at(t_ack, place[after], c.ts[lo:hi][after])


def per_point_max(flow: np.ndarray, point: np.ndarray, nflows: int, npoints: int) -> np.ndarray:
    """Counted at every point that saw it, a segment is reported once: the max over points."""
    if npoints <= 1:
        return np.bincount(flow, minlength=nflows)[:nflows].astype(np.int64)
    place = flow.astype(np.int64) * npoints + point
    per_point = np.bincount(place, minlength=nflows * npoints).reshape(nflows, npoints)
    return per_point.max(axis=1)
