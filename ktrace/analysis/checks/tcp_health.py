"""tcp.retransmissions and tcp.zero-window."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.names import NameKind
from ktrace.analysis.stitch_rules import address_key, home_addresses
from ktrace.analysis.tcp_sequence import per_point_max, resent_rows
from ktrace.decode.transport import FIN, SYN, TCP
from ktrace.model import Finding, Severity

MIN_RETRANS = 3
MIN_RATIO = 0.02


def _retransmitting(analysis: Analysis) -> dict[str, list[tuple[int, int]]]:
    """Destination -> (flow, retransmissions) for one flow per conversation that resent too
    much (counted at the point that saw the most, not summed over the points that saw the same
    segments)."""
    f = analysis.flows
    total = f.packets_ab + f.packets_ba
    bad = np.flatnonzero(
        (f.proto == TCP)
        & (f.synack + (f.handshake_ns >= 0) > 0)
        & (f.retransmissions >= MIN_RETRANS)
        & (f.retransmissions >= MIN_RATIO * total)
    )
    resent = _lost_and_resent(analysis, bad)
    best: dict[int, int] = {}
    for flow in bad.tolist():
        n = int(resent[flow])
        if n < MIN_RETRANS or n < MIN_RATIO * total[flow]:
            continue
        conv = int(analysis.correlation.conv[flow])
        if conv in analysis.bypasses:
            continue  # the client resends because it rejects the replies: nat.asymmetric-return
        if conv not in best or n > resent[best[conv]]:
            best[conv] = flow
    by_dest: dict[str, list[tuple[int, int]]] = {}
    for flow in best.values():
        path = analysis.path_of_flow(flow)
        dest = analysis.named(analysis.endpoint(path.flows[-1] if path else flow, "b"))
        by_dest.setdefault(dest, []).append((flow, int(resent[flow])))
    return by_dest


def _lost_and_resent(analysis: Analysis, flows: np.ndarray) -> np.ndarray:
    """Per flow (0 for those not given): its retransmissions at the point that saw the most,
    but for the resends of segments that reached their receiver's own interface as often as
    they were sent. A segment that arrived every time was not lost: its resends answered a
    late ACK, a reply held up (a neighbour not yet resolved), or reordering on the way. So a
    segment sent k times where a point saw it, and seen n times at its receiver's interface,
    counts at most k - n of its resends there; where no capture shows the receiver, all."""
    f, c = analysis.flows, analysis.index.columns
    npoints = len(analysis.index.points)
    if not len(flows):
        return np.zeros(len(f), np.int64)
    conv = analysis.correlation.conv
    # the conversations' flows, before and after NAT: the receiver's copies may be in another
    wanted = np.append(np.isin(conv, conv[flows]), False)  # the last: "no flow" (-1)
    tcp = np.flatnonzero(wanted[f.flow] & (c.proto == TCP))
    walk = resent_rows(c, tcp, f.flow, f.forward, npoints)
    rows, again = walk.rows, walk.again
    carries = (c.paylen[rows] > 0) | ((c.tcp_flags[rows] & (SYN | FIN)) != 0)
    rows, again = rows[carries], again[carries]
    point = c.point[rows].astype(np.int64)
    received = _at_receiver(analysis, rows)
    # one segment wherever seen: conversation (fewer than 2**30), direction, sequence number
    segment = conv[f.flow[rows]].astype(np.int64) << 33
    segment |= f.forward[rows].astype(np.int64) << 32
    segment |= c.seq[rows]
    _, which = np.unique(segment, return_inverse=True)
    pairs, at = np.unique(which.reshape(-1) * npoints + point, return_inverse=True)
    at = at.reshape(-1)
    sent = np.bincount(at, minlength=len(pairs))  # per (segment, point): copies there
    resent = np.bincount(at, again, minlength=len(pairs)).astype(np.int64)
    of = pairs // npoints  # the pair's segment
    arrived = np.zeros(int(of.max()) + 1 if len(of) else 0, np.int64)
    receiver = np.flatnonzero(np.bincount(at, received, minlength=len(pairs)) > 0)
    np.maximum.at(arrived, of[receiver], sent[receiver])  # at the receiver that saw most
    lost = np.minimum(resent, np.maximum(0, sent - arrived[of]))
    first = np.empty(len(pairs), np.int64)
    first[at[::-1]] = np.arange(len(at) - 1, -1, -1)  # a row of each (segment, point)
    counted = np.repeat(rows[first], lost)
    return per_point_max(f.flow[counted], c.point[counted], len(f), npoints)


def _at_receiver(analysis: Analysis, rows: np.ndarray) -> np.ndarray:
    """Per row: whether it was seen on its receiver's own interface. A point the bundle
    places on a pod whose addresses the inventory lists is that pod's; else the point's
    packets of the row's IP version must all involve the row's destination and no other
    address (stitch_rules.home_addresses): a point that saw one conversation could be on
    either end of it."""
    c, points, names = analysis.index.columns, analysis.index.points, analysis.names
    point = c.point[rows].astype(np.int64)
    dst = address_key(c.l3[rows], c.dst[rows])
    out = np.zeros(len(rows), bool)
    for l3 in (4, 6):
        home = home_addresses(c, points, analysis.correlation.local, l3, guess=False)
        out |= home[point] == dst
    listed = {n.name for n in names.by_ip.values() if n.kind is NameKind.POD}
    pairs, at = np.unique((point << 36) | dst, return_inverse=True)  # a key: below 2**35
    at = at.reshape(-1)
    for k, pair in enumerate(pairs.tolist()):
        p, key = pair >> 36, pair & ((1 << 36) - 1)
        pod = f"{points[p].namespace}/{points[p].pod}"
        if points[p].pod and pod in listed:
            named = names.get(analysis.index.address(key % 8, key // 8))
            out[at == k] = named is not None and named.kind is NameKind.POD and named.name == pod
    return out


def run_retransmissions(analysis: Analysis) -> Iterator[Finding]:
    f = analysis.flows
    for dest, resent in _retransmitting(analysis).items():
        flows = [flow for flow, _ in resent]
        n = sum(count for _, count in resent)
        total = int((f.packets_ab[flows] + f.packets_ba[flows]).sum())
        labels = [analysis.flow_label(flow) for flow in flows]
        where = labels[0] if len(flows) == 1 else f"{plural(len(flows), 'connection')} to {dest}"
        yield Finding(
            id="tcp.retransmissions",
            severity=Severity.MEDIUM,
            title=f"{plural(n, 'retransmission')} in {where}",
            explanation=(
                f"{n} segments were sent again ({100 * n / max(total, 1):.0f}% of the packets): "
                "packets are being lost between the endpoints, or the receiver stalls. Losses "
                "of only the big segments point at the MTU."
            ),
            next_step=(
                "Capture at more points on the path to see where the originals "
                "disappear; check interface drops and the MTU along the path."
            ),
            flows=tuple(labels),
            about=frozenset(int(analysis.correlation.conv[flow]) for flow in flows),
        )


def run_zero_window(analysis: Analysis) -> Iterator[Finding]:
    """One finding per receiver: its stalled connections, the zero-window packets counted
    once each however many points saw them."""
    f = analysis.flows
    c = analysis.index.columns
    ident = analysis.correlation.ident
    zero = np.flatnonzero((c.proto == TCP) & (c.win == 0) & ((c.tcp_flags & 0x07) == 0))
    zero = zero[f.flow[zero] >= 0]
    by_receiver: dict[str, list[int]] = {}
    for row in zero.tolist():
        receiver = analysis.index.address(int(c.l3[row]), int(c.src[row]))
        by_receiver.setdefault(receiver, []).append(row)
    for receiver, rows in by_receiver.items():
        convs = sorted({int(analysis.correlation.conv[f.flow[r]]) for r in rows})
        labels = sorted({analysis.flow_label(int(f.flow[r])) for r in rows})
        packets = len({int(ident[r]) for r in rows})
        where = labels[0] if len(convs) == 1 else plural(len(convs), "connection")
        yield Finding(
            id="tcp.zero-window",
            severity=Severity.MEDIUM,
            title=f"{analysis.named(receiver)} stopped reading: zero window in {where}",
            explanation=(
                f"{plural(packets, 'packet')} advertised a zero receive window: "
                f"{receiver}'s application is not reading its socket fast enough, so the "
                "sender has to wait. The network is fine; the receiver is the bottleneck."
            ),
            next_step=(
                "Look at the receiving process: CPU throttling (container limits), a "
                "blocked thread, slow disk or downstream calls."
            ),
            evidence=tuple(analysis.index.ref(r) for r in rows[:MAX_EVIDENCE]),
            flows=tuple(labels),
        )


RETRANSMISSIONS = FunctionCheck("tcp.retransmissions", run_retransmissions)
ZERO_WINDOW = FunctionCheck("tcp.zero-window", run_zero_window)
