"""path.drop and mtu.blackhole: packets that stopped between two capture points while the rest
of their conversation got through. Big ones only, small ones passing: an MTU black hole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ktrace.analysis.checks import (
    CAPTURE_LOSS_STEP,
    MAX_EVIDENCE,
    RETRY_NS,
    FunctionCheck,
    conversation_label,
    hop_name,
    kernel_drops_note,
    plural,
)
from ktrace.analysis.context import Analysis
from ktrace.analysis.node_story import (
    SIZE_REASONS,
    drop_recorded,
    drops_at,
    link_story,
    loss_story,
)
from ktrace.analysis.paths import ConvPath, Direction, Loss
from ktrace.decode.transport import TCP
from ktrace.model import Finding, Severity

BIG = 1200  # wire length from which a lost packet can be an MTU victim


def is_mtu(loss: Loss) -> bool:
    return loss.max_size >= BIG and loss.passed_max_size < loss.max_size


def frag_needed(analysis: Analysis) -> np.ndarray:
    """ICMP 'fragmentation needed' / ICMPv6 'packet too big' rows."""
    c = analysis.index.columns
    icmp = np.flatnonzero((c.proto == 1) | (c.proto == 58))  # few: their fields read alone
    proto, seq = c.proto[icmp], c.seq[icmp]
    return icmp[((proto == 1) & (seq == (3 << 8) | 4)) | ((proto == 58) & ((seq >> 8) == 2))]


@dataclass
class _Drops:
    """Losses that share a cause and a place: one finding."""

    last: str
    missing: str
    dest: str
    direction: Direction
    syn_only: bool
    missing_saw_others: bool
    missed: bool  # never retransmitted: the capture at `missing` lost them, not the network
    labels: list[str] = field(default_factory=list)
    clients: set[str] = field(default_factory=set)
    packets: int = 0
    rows: list[int] = field(default_factory=list)  # the first evidence of each conversation
    times: list[int] = field(default_factory=list)  # every lost packet's last sighting
    family: int = 4
    about: set[int] = field(default_factory=set)  # the conversations


def never_resent(analysis: Analysis, path: ConvPath, loss: Loss) -> bool:
    """TCP segments that vanished but were never sent again although the capture went on
    long enough for a retransmission: the receiver had them, the capture missed them. A SYN
    never sent again proves nothing by itself (the client may have given up before its
    retry was due): only when the point that missed it saw the connection go on."""
    c = analysis.index.columns
    rows = np.asarray(loss.rows)
    if not len(rows) or not bool(np.all(c.proto[rows] == TCP)):
        return False
    if loss.syn == loss.packets and not path.hops[loss.missing_hop].packets:
        return False
    missing_point = path.hops[loss.missing_hop].point
    at_missing = np.flatnonzero(c.point == missing_point)
    if not len(at_missing) or int(c.ts[at_missing].max()) - int(c.ts[rows].max()) < RETRY_NS:
        return False
    mine = analysis.rows_of_flows(path.flows)
    ident = analysis.correlation.ident
    for r in rows.tolist():
        again = mine[
            (c.seq[mine] == c.seq[r])
            & (c.paylen[mine] == c.paylen[r])
            & (c.tcp_flags[mine] == c.tcp_flags[r])
            & (ident[mine] != ident[r])
        ]
        if len(again):
            return False
    return True


def _drop_groups(analysis: Analysis) -> list[_Drops]:
    groups: dict[tuple[str, str, str, str, bool, bool], _Drops] = {}
    for path in analysis.paths:
        if path.conv in analysis.bypasses:
            continue  # nat.asymmetric-return says where its replies went
        for loss in path.losses:
            if is_mtu(loss):
                continue  # the next check
            last, missing = (
                hop_name(analysis, path, loss.last_hop),
                hop_name(analysis, path, loss.missing_hop),
            )
            dest = analysis.named(analysis.endpoint(path.flows[-1], "b"))
            syn_only = loss.syn == loss.packets
            missed = never_resent(analysis, path, loss)
            key = (last, missing, dest, loss.direction, syn_only, missed)
            seen_there = bool(path.hops[loss.missing_hop].packets)
            g = groups.setdefault(
                key, _Drops(last, missing, dest, loss.direction, syn_only, seen_there, missed)
            )
            g.labels.append(conversation_label(analysis, path))
            g.about.add(path.conv)
            g.clients.add(analysis.endpoint(path.flows[0], "a").rsplit(":", 1)[0])
            g.packets += loss.packets
            g.rows += list(loss.rows[: max(1, MAX_EVIDENCE // 4)])
            g.times += analysis.index.columns.ts[list(loss.rows)].tolist()
            g.family = int(analysis.flows.l3[path.flows[-1]])
    return list(groups.values())


def _what(g: _Drops) -> str:
    conns = len(g.labels)
    if g.syn_only:
        if conns == 1:  # its retries are in the explanation
            return f"SYN to {g.dest}"
        clients = f" from {plural(len(g.clients), 'client')}" if len(g.clients) > 1 else ""
        return f"{plural(g.packets, 'SYN')}{clients} to {g.dest}"
    if g.direction is Direction.FORWARD:
        return f"{plural(g.packets, 'packet')} to {g.dest}"
    return f"{plural(g.packets, 'reply packet')} from {g.dest}"


def _capture_missed(analysis: Analysis, g: _Drops) -> Finding:
    return Finding(
        id="path.drop",
        severity=Severity.INFO,
        title=f"{_what(g)} not recorded at {g.missing}: never retransmitted, so they arrived "
        "(capture loss, not network loss)",
        explanation=(
            f"{plural(g.packets, 'TCP segment')} seen at {g.last} were missing from "
            f"{g.missing}'s capture, but the sender never sent them again although the capture "
            "went on: the receiver acknowledged them, so the network delivered them and the "
            f"capture did not record them{kernel_drops_note(analysis)}."
        ),
        next_step=CAPTURE_LOSS_STEP,
        evidence=tuple(analysis.index.ref(r) for r in g.rows[:MAX_EVIDENCE]),
        flows=tuple(g.labels),
        about=frozenset(g.about),
    )


def _node_story(analysis: Analysis, g: _Drops) -> str:
    """The nodes' records of the loss: the node the packets should have reached first, then
    the one they were last seen on."""
    node_of = {p.id: p.node for p in analysis.index.points if p.node}
    for node in dict.fromkeys(n for n in (node_of.get(g.missing), node_of.get(g.last)) if n):
        ev = analysis.nodes.get(node)
        story = loss_story(ev, g.times, g.family) if ev else ""
        if story:
            return story
    return ""


def _nodes_recorded_drop(analysis: Analysis, g: _Drops) -> bool:
    """The nodes on either side of the loss recorded dropping packets like these."""
    node_of = {p.id: p.node for p in analysis.index.points if p.node}
    for node in {node_of.get(g.missing), node_of.get(g.last)} - {None}:
        ev = analysis.nodes.get(node or "")
        if ev is not None and drop_recorded(ev, g.times, g.family):
            return True
    return False


def run_drop(analysis: Analysis) -> Iterator[Finding]:
    for g in _drop_groups(analysis):
        if g.missed and not _nodes_recorded_drop(analysis, g):
            yield _capture_missed(analysis, g)
            continue
        conns = len(g.labels)
        verb = "rejects" if g.about <= set(analysis.quoted_conv.values()) else "drops"
        where = (
            f"although {g.missing} saw the conversation's other packets: something "
            f"between the two points {verb} them selectively."
            if g.missing_saw_others
            else f"which was capturing and is where {g.dest} receives its traffic: "
            f"something between the two points {verb} them."
        )
        node = next((p.node for p in analysis.index.points if p.node and p.id == g.missing), None)
        rules = f"nodes/{node}/iptables-save.txt" if node else "the node's iptables-save"
        story = _node_story(analysis, g)
        # an ICMP error came back for every one of them: refused on the way, not dropped
        refused = g.about <= set(analysis.quoted_conv.values())
        yield Finding(
            id="path.drop",
            severity=Severity.HIGH,
            title=f"{_what(g)} {'rejected' if refused else 'dropped'} between {g.last} and "
            f"{g.missing}",
            explanation=(
                f"{g.labels[0] if conns == 1 else plural(conns, 'connection')}: "
                f"{plural(g.packets, 'packet')} ({g.direction}) were seen at {g.last} and never "
                f"at {g.missing}, {where}" + (f" {story}" if story else "")
            ),
            next_step=(
                f"Look between {g.last} and {g.missing}: NetworkPolicies selecting "
                f"{g.dest.split(' ', 1)[-1].strip('()')}, the node's iptables/nftables "
                f"FORWARD rules ({rules} in a bundle), conntrack INVALID drops; between "
                "nodes, firewalls and security groups."
            ),
            evidence=tuple(analysis.index.ref(r) for r in g.rows[:MAX_EVIDENCE]),
            flows=tuple(g.labels),
            about=frozenset(g.about),
        )


@dataclass
class _TooBig:
    """Big packets lost between the same two points: one black hole, however many
    conversations fell into it."""

    last: str
    missing: str
    labels: list[str] = field(default_factory=list)
    about: set[int] = field(default_factory=set)
    packets: int = 0
    biggest: int = 0
    passed: int = 0  # the biggest that got through, of the conversation that passed least
    rows: list[int] = field(default_factory=list)
    story: str = ""
    inside: str = ""


def _black_holes(analysis: Analysis) -> list[_TooBig]:
    holes: dict[tuple[str, str], _TooBig] = {}
    for path in analysis.paths:
        for loss in path.losses:
            if not is_mtu(loss):
                continue
            last = hop_name(analysis, path, loss.last_hop)
            missing = hop_name(analysis, path, loss.missing_hop)
            h = holes.setdefault((last, missing), _TooBig(last, missing))
            if not h.labels:
                tunnel_id = int(analysis.index.columns.tunnel[loss.rows[0]])
                if tunnel_id:
                    t = analysis.index.tunnels[tunnel_id - 1]
                    h.inside = f" inside {t.kind.upper()} ({t.outer_src} -> {t.outer_dst})"
                h.story = _mtu_story(analysis, path, loss)
                h.passed = loss.passed_max_size
            h.labels.append(conversation_label(analysis, path))
            h.about.add(path.conv)
            h.packets += loss.packets
            h.biggest = max(h.biggest, loss.max_size)
            h.passed = min(h.passed, loss.passed_max_size)
            h.rows += list(loss.rows[: max(1, MAX_EVIDENCE // 4)])
    return list(holes.values())


def run_mtu(analysis: Analysis) -> Iterator[Finding]:
    icmp = frag_needed(analysis)
    holes = _black_holes(analysis)
    for h in holes:
        conns = len(h.labels)
        yield Finding(
            id="mtu.blackhole",
            severity=Severity.HIGH,
            title=f"MTU black hole between {h.last} and {h.missing}: packets of "
            f"{h.biggest} bytes vanish, up to {h.passed} pass",
            explanation=(
                f"{h.labels[0] if conns == 1 else plural(conns, 'connection')}: "
                f"{plural(h.packets, 'packet')} of up to {h.biggest} bytes on the wire"
                f"{h.inside} left {h.last} and never reached {h.missing}, while packets of up "
                f"to {h.passed} bytes of the same conversation{'s' if conns > 1 else ''} did. "
                + (
                    f"{plural(len(icmp), 'ICMP fragmentation-needed message')} seen."
                    if len(icmp)
                    else "No ICMP fragmentation-needed came back, so the senders never learn "
                    "to send smaller packets: connections hang once data flows."
                )
                + h.story
            ),
            next_step=(
                "Compare the pod/overlay MTU with the underlay's: an overlay needs the "
                "underlay MTU minus its overhead (VXLAN 50, Geneve 50+, IPIP 20 bytes). "
                "Lower the CNI MTU, or raise the underlay MTU, and let ICMP through."
            ),
            evidence=tuple(analysis.index.ref(r) for r in sorted(h.rows)[:MAX_EVIDENCE]),
            flows=tuple(h.labels),
            about=frozenset(h.about),
        )
    if not holes and len(icmp):
        yield Finding(
            id="mtu.blackhole",
            severity=Severity.MEDIUM,
            title=f"{plural(len(icmp), 'ICMP fragmentation-needed message')} seen",
            explanation=(
                "Some hop could not forward packets as big as they were sent and "
                "said so: the path MTU is smaller than the senders' MTU."
            ),
            next_step="Check the pod, overlay and underlay MTUs agree.",
            evidence=tuple(analysis.index.ref(int(r)) for r in icmp[:MAX_EVIDENCE]),
        )


def _mtu_story(analysis: Analysis, path: ConvPath, loss: Loss) -> str:
    """Interface drops and the kernel's size-related drop reasons on the two nodes."""
    said = []
    for hop in (loss.last_hop, loss.missing_hop):
        node = analysis.index.points[path.hops[hop].point].node
        ev = analysis.nodes.get(node or "")
        if ev is None:
            continue
        times = analysis.index.columns.ts[list(loss.rows)].tolist()
        family = int(analysis.flows.l3[path.flows[-1]])
        sized = {k: n for k, n in drops_at(ev, times, family).items() if k[0] in SIZE_REASONS}
        if sized:
            said.append(
                f"On {node} the kernel dropped them as "
                + ", ".join(f"{reason} in {fn} ({n})" for (reason, fn), n in sized.items())
                + "."
            )
        said.append(link_story(ev))
    text = " ".join(dict.fromkeys(s for s in said if s))
    return f" {text}" if text else ""


DROP = FunctionCheck(
    "path.drop",
    run_drop,
    explains=("tcp.syn-unanswered", "tcp.retransmissions", "net.unreachable"),
)
MTU = FunctionCheck(
    "mtu.blackhole",
    run_mtu,
    explains=("tcp.retransmissions", "tcp.syn-unanswered", "http.unanswered"),
)
