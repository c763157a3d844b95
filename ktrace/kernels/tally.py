"""Per-flow sums in one pass over the packets (`_tally.c`), and their numpy twins: each
flow's earliest and latest time and earliest SYN, its packets and bytes each way and its
TCP flags."""

from __future__ import annotations

import numpy as np

from ktrace.chunking import chunks
from ktrace.decode.transport import ACK, FIN, RST, SYN, TCP
from ktrace.kernels import load, native

_C = load("ktrace.kernels._tally")

COUNTS = (
    "packets_ab",
    "packets_ba",
    "bytes_ab",
    "bytes_ba",
    "syn",
    "synack",
    "rst_ab",
    "rst_ba",
    "fin",
    "zero_window",
)


def time_spans(
    flow: np.ndarray, ts: np.ndarray, is_syn: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per flow of m (the last: packets not IP), its earliest and latest time and its
    earliest SYN's; int64's largest, smallest and largest where there is none."""
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    first, last = np.full(m, big, np.int64), np.full(m, small, np.int64)
    first_syn = np.full(m, big, np.int64)
    c_part = native(_C)
    if c_part is not None:
        flow32 = np.ascontiguousarray(flow, np.int32)
        c_part.spans(flow32, ts, is_syn.view(np.uint8), first, last, first_syn)
        return first, last, first_syn
    np.minimum.at(first, flow, ts)
    np.maximum.at(last, flow, ts)
    syn_rows = np.flatnonzero(is_syn)
    np.minimum.at(first_syn, flow[syn_rows], ts[syn_rows])
    return first, last, first_syn


def counts(
    flow: np.ndarray, forward: np.ndarray, columns: tuple[np.ndarray, ...], nflows: int
) -> dict[str, np.ndarray]:
    """Per flow (of nflows; `flow` is nflows for packets of none): COUNTS, from each packet's
    flow, whether its flow's initiator sent it, and its (wirelen, tcp_flags, win, proto)."""
    c_part = native(_C)
    if c_part is None:
        return _counts_numpy(flow, forward, columns, nflows)
    out = np.zeros((len(COUNTS), nflows + 1), np.int64)
    flow32 = np.ascontiguousarray(flow, np.int32)
    c_part.tally(flow32, forward.view(np.uint8), *columns, out)
    return {name: out[k, :nflows].copy() for k, name in enumerate(COUNTS)}


def _counts_numpy(
    flow: np.ndarray, fw: np.ndarray, columns: tuple[np.ndarray, ...], nflows: int
) -> dict[str, np.ndarray]:
    """counts summed chunk by chunk. Packets and bytes are counted by flow and direction in
    one pass each; the flags only on the segments that carry SYN, RST or FIN or a zero
    window, a few among many."""
    wirelen, tcp_flags, win, proto = columns
    out = {name: np.zeros(nflows + 1, np.int64) for name in COUNTS}
    packets, size = np.zeros(2 * nflows + 2, np.int64), np.zeros(2 * nflows + 2, np.int64)
    for lo, hi in chunks(len(flow)):
        f, flags = flow[lo:hi], tcp_flags[lo:hi]
        side = f.astype(np.int64) * 2 + fw[lo:hi]  # by flow, then from a (1) or b (0)
        packets += np.bincount(side, minlength=2 * nflows + 2)
        wire = wirelen[lo:hi].astype(np.float64)
        size += np.bincount(side, wire, 2 * nflows + 2).astype(np.int64)
        marked = ((flags & (SYN | RST | FIN)) != 0) | (win[lo:hi] == 0)
        rows = np.flatnonzero(marked & (proto[lo:hi] == TCP))
        f, w, flags = f[rows], fw[lo:hi][rows], flags[rows]
        kind = flags & (SYN | ACK)
        rst = (flags & RST) != 0
        masks = {
            "syn": (kind == SYN) & w,
            "synack": (kind == (SYN | ACK)) & ~w,
            "rst_ab": rst & w,
            "rst_ba": rst & ~w,
            "fin": (flags & FIN) != 0,
            "zero_window": (win[lo:hi][rows] == 0) & ((flags & (RST | SYN | FIN)) == 0),
        }
        for name, mask in masks.items():
            out[name] += np.bincount(f[mask], minlength=nflows + 1)
    out["packets_ab"], out["packets_ba"] = packets[1::2], packets[0::2]
    out["bytes_ab"], out["bytes_ba"] = size[1::2], size[0::2]
    return {name: np.ascontiguousarray(v[:nflows]) for name, v in out.items()}
