"""Walks along TCP sequence numbers (`_sequence.c`), and their numpy twins: each direction's
segments against what it had already sent, retransmissions told from late segments, and the
times of each handshake's three packets.

Rows come grouped by (flow, point, direction), file order within a group; `start` marks each
group's first row. The numpy twins work a chunk of rows at a time, with what one chunk hands
the next carried over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.chunking import chunks
from ktrace.decode.transport import ACK, FIN, RST, SYN, TCP
from ktrace.kernels import load, native

_C = load("ktrace.kernels._sequence")
SHIFT = 34  # a direction's rank above the 33 bits an end can take (32-bit sequence + length)
LOW = (1 << SHIFT) - 1


@dataclass(frozen=True, eq=False)
class Walk:
    """TCP rows grouped by (flow, point, direction), file order within a group."""

    rows: np.ndarray
    start: np.ndarray  # bool: the first row of its group
    rel: np.ndarray  # uint32: sequence number relative to the group's first row's
    again: np.ndarray  # bool: sent again (a retransmission)
    late: np.ndarray  # bool: filled a gap late (out of order)


def behind_sent(
    columns: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sorted row: whether it ends at or below what its direction already sent (and is
    not a keep-alive), its sequence relative to the direction's first, whether it carries
    anything that takes sequence space. `columns`: every packet's (tcp_flags, paylen, seq)."""
    c_part = native(_C)
    if c_part is None:
        return _behind_numpy(columns, rows, start)
    n = len(rows)
    behind, rel, carries = np.empty(n, bool), np.empty(n, np.uint32), np.empty(n, bool)
    arrays = (*columns, rows, start)
    c_part.behind(
        *map(np.ascontiguousarray, arrays), behind.view(np.uint8), rel, carries.view(np.uint8)
    )
    return behind, rel, carries


def _behind_numpy(
    columns: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """behind_sent in numpy: running maxima over (direction rank, end) packed in one integer."""
    tcp_flags, paylen, seq_all = columns
    n = len(rows)
    behind = np.empty(n, bool)
    rel_all = np.empty(n, np.uint32)
    carries_all = np.empty(n, bool)
    base_carry, seen_carry, rank_carry = 0, -1, -1
    for lo, hi in chunks(n):
        r, st = rows[lo:hi], start[lo:hi]
        flags = tcp_flags[r]
        syn = ((flags & SYN) != 0).astype(np.int64)
        fin = ((flags & FIN) != 0).astype(np.int64)
        length = paylen[r].astype(np.int64)
        seq = seq_all[r].astype(np.int64)
        here = np.maximum.accumulate(np.where(st, np.arange(hi - lo), -1))
        base = np.where(here >= 0, seq[here.clip(0)], base_carry)
        rel = (seq - base) & 0xFFFFFFFF
        end = rel + length + syn + fin
        rank = rank_carry + np.cumsum(st)
        seen = np.maximum(np.maximum.accumulate((rank << SHIFT) | end), seen_carry)
        prev = np.empty_like(seen)
        prev[0] = seen_carry
        prev[1:] = seen[:-1]
        same = (prev >> SHIFT) == rank
        prev_end = np.where(same, prev & LOW, -1)
        carries = (length > 0) | (syn > 0) | (fin > 0)
        keepalive = (length <= 1) & (rel + 1 == prev_end) & (syn == 0) & (fin == 0)
        behind[lo:hi] = carries & same & (end <= prev_end) & ~keepalive
        rel_all[lo:hi] = rel
        carries_all[lo:hi] = carries
        base_carry, seen_carry, rank_carry = int(base[-1]), int(seen[-1]), int(rank[-1])
    return behind, rel_all, carries_all


def resent(
    start: np.ndarray,
    rel: np.ndarray,
    carries: np.ndarray,
    behind: np.ndarray,
    suspects: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(retransmitted, late) per sorted row behind what was sent: retransmitted where an
    earlier row of its direction carried a segment at the same sequence number, else late.
    `suspects`: the sorted keys (direction << SHIFT | rel) of the rows behind."""
    n = len(start)
    again, late = np.zeros(n, bool), np.zeros(n, bool)
    c_part = native(_C)
    if c_part is not None:
        start8, carries8, behind8 = (
            np.ascontiguousarray(a).view(np.uint8) for a in (start, carries, behind)
        )
        c_part.resent(
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
        key <<= SHIFT
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


def handshake_times(
    flow: np.ndarray,
    forward: np.ndarray,
    columns: tuple[np.ndarray, ...],
    width: int,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Fill the (flow, point) tables, flat, `width` points a flow, with the earliest SYN,
    SYN/ACK and the initiator's ACK after the SYN/ACK. `columns`: every packet's (point,
    tcp_flags, proto, ts). A row of no flow (-1) lands in the spare last flow's place."""
    c_part = native(_C)
    if c_part is not None:
        point, tcp_flags, proto, ts = columns
        arrays = (point, forward.view(np.uint8), tcp_flags, proto, ts)
        flow32 = np.ascontiguousarray(flow, np.int32)
        c_part.handshakes(flow32, *map(np.ascontiguousarray, arrays), width, *tables)
        return
    _handshakes_numpy(flow, forward, columns, width, tables)


def _handshakes_numpy(
    flow: np.ndarray,
    forward: np.ndarray,
    columns: tuple[np.ndarray, ...],
    width: int,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """handshake_times by ufunc.at (ten times faster on one index than on a pair); negative
    indices put rows of no flow in the spare last flow's place."""
    point, tcp_flags, proto, ts = columns
    t_syn, t_synack, t_ack = tables
    tcp = proto == TCP
    kind = tcp_flags & (SYN | ACK)
    for table, mask in (
        (t_syn, tcp & (kind == SYN) & forward),
        (t_synack, tcp & (kind == (SYN | ACK)) & ~forward),
    ):
        rows = np.flatnonzero(mask)
        np.minimum.at(table, flow[rows].astype(np.int64) * width + point[rows], ts[rows])
    for lo, hi in chunks(len(flow)):
        place = flow[lo:hi].astype(np.int64) * width + point[lo:hi]
        is_ack = tcp[lo:hi] & ((tcp_flags[lo:hi] & (SYN | ACK | RST)) == ACK) & forward[lo:hi]
        after = np.flatnonzero(is_ack & (ts[lo:hi] >= t_synack[place]))
        np.minimum.at(t_ack, place[after], ts[lo:hi][after])


def missed_segments(
    columns: tuple[np.ndarray, ...], walk: Walk, npoints: int, tail_ns: int
) -> np.ndarray:
    """Per point, the data segments of the walked rows it did not record (see
    tcp_sequence.unrecorded). `columns`: every packet's (tcp_flags, paylen, ts, point)."""
    out = np.zeros(max(npoints, 1), np.int64)
    c_part = native(_C)
    if c_part is not None:
        tcp_flags, paylen, ts, point = map(np.ascontiguousarray, columns)
        rows = np.ascontiguousarray(walk.rows)
        c_part.unrecorded(tcp_flags, paylen, ts, point, rows, walk.start.view(np.uint8),
                          walk.rel, walk.late.view(np.uint8), tail_ns, out)  # fmt: skip
        return out[:npoints]
    return _unrecorded_numpy(columns, walk, npoints, tail_ns)


def _unrecorded_numpy(
    columns: tuple[np.ndarray, ...], walk: Walk, npoints: int, tail_ns: int
) -> np.ndarray:
    """missed_segments a chunk at a time, with what one chunk hands the next carried over."""
    tcp_flags, paylen, ts_all, point = columns
    rows, start, rel, late = walk.rows, walk.start, walk.rel, walk.late
    n = len(rows)
    groups = int(np.count_nonzero(start))
    opened = np.zeros(groups, np.int64)  # gap bytes, per group
    filled = np.zeros(groups, np.int64)  # bytes late segments brought
    largest = np.zeros(groups, np.int64)
    point_of = np.zeros(groups, np.int64)
    last = _point_ends(rows, ts_all, point, npoints)
    seen_carry, group_carry = -1, -1
    for lo, hi in chunks(n):
        r, st = rows[lo:hi], start[lo:hi]
        group = group_carry + np.cumsum(st)
        size = paylen.take(r).astype(np.int64)
        flags = tcp_flags.take(r)
        first = rel[lo:hi].astype(np.int64)
        ahead = first < 1 << 31  # else before the direction's first row (reordered)
        syn_fin = ((flags & SYN) != 0).astype(np.int64) + ((flags & FIN) != 0)
        end = first + size + syn_fin
        # what was sent so far: a pure ACK's number is where the next byte will be, sent or not
        sent = np.where(ahead & ((size > 0) | (syn_fin > 0)), end, 0)
        seen = np.maximum.accumulate((group << SHIFT) | sent)
        seen = np.maximum(seen, seen_carry)
        prev = np.r_[seen_carry, seen[:-1]]
        same = (prev >> SHIFT) == group
        reach = np.where(same, prev & LOW, first)
        ts = ts_all.take(r)
        judged = ts + tail_ns <= last.take(point.take(r))
        gap = np.where(ahead & same & (size > 0) & judged, np.maximum(first - reach, 0), 0)
        opened += np.bincount(group, gap, minlength=groups).astype(np.int64)
        filled += np.bincount(group, np.where(late[lo:hi], size, 0), minlength=groups).astype(
            np.int64
        )
        heads = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        np.maximum.at(largest, group[heads], np.maximum.reduceat(size, heads))
        point_of[group[heads]] = point.take(r[heads])
        seen_carry, group_carry = int(seen[-1]), int(group[-1])
    lost = np.maximum(opened - filled, 0)
    segments = -(-lost // np.maximum(largest, 1))
    return np.bincount(point_of, segments, minlength=npoints).astype(np.int64)[:npoints]


def _point_ends(rows: np.ndarray, ts: np.ndarray, point: np.ndarray, npoints: int) -> np.ndarray:
    """Each point's last time among these rows."""
    ends = np.full(max(npoints, 1), np.iinfo(np.int64).min, np.int64)
    for lo, hi in chunks(len(rows)):
        r = rows[lo:hi]
        np.maximum.at(ends, point.take(r), ts.take(r))
    return ends
