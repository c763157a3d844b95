"""path.drop and mtu.blackhole: packets that stopped between two capture points while the rest
of their conversation got through. Big ones only, small ones passing: an MTU black hole."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ktrace.analysis.checks import (
    MAX_EVIDENCE,
    FunctionCheck,
    conversation_label,
    hop_name,
    plural,
)
from ktrace.analysis.context import Analysis
from ktrace.analysis.paths import Loss
from ktrace.model import Finding, Severity

BIG = 1200  # wire length from which a lost packet can be an MTU victim


def is_mtu(loss: Loss) -> bool:
    return loss.max_size >= BIG and loss.passed_max_size < loss.max_size


def frag_needed(analysis: Analysis) -> np.ndarray:
    """ICMP 'fragmentation needed' / ICMPv6 'packet too big' rows."""
    c = analysis.index.columns
    return np.flatnonzero(
        ((c.proto == 1) & (c.seq == (3 << 8) | 4)) | ((c.proto == 58) & ((c.seq >> 8) == 2))
    )


def run_drop(analysis: Analysis) -> Iterator[Finding]:
    for path in analysis.paths:
        label = conversation_label(analysis, path)
        for loss in path.losses:
            if is_mtu(loss):
                continue  # the next check
            last, missing = (
                hop_name(analysis, path, loss.last_hop),
                hop_name(analysis, path, loss.missing_hop),
            )
            dest = analysis.named(analysis.endpoint(path.flows[-1], "b"))
            what = (
                f"SYN to {dest}"
                if loss.syn == loss.packets
                else f"{plural(loss.packets, 'packet')} to {dest}"
                if loss.direction == "a->b"
                else f"{plural(loss.packets, 'reply packet')} from {dest}"
            )
            yield Finding(
                id="path.drop",
                severity=Severity.HIGH,
                title=f"{what} dropped between {last} and {missing}",
                explanation=(
                    f"{label}: {plural(loss.packets, 'packet')} ({loss.direction}) were seen "
                    f"at {last} and never at {missing}, "
                    + (
                        f"although {missing} saw the conversation's other packets: something "
                        "between the two points drops them selectively."
                        if path.hops[loss.missing_hop].packets
                        else f"which was capturing and is where {dest} receives its traffic: "
                        "something between the two points drops them."
                    )
                ),
                next_step=(
                    f"Look between {last} and {missing}: NetworkPolicies selecting "
                    f"{dest.split(' ', 1)[-1].strip('()')}, the node's iptables/nftables "
                    "FORWARD rules (nodes/<node>/iptables-save.txt in a bundle), conntrack "
                    "INVALID drops; between nodes, firewalls and security groups."
                ),
                evidence=tuple(analysis.index.ref(r) for r in loss.rows[:MAX_EVIDENCE]),
                flows=(label,),
            )


def run_mtu(analysis: Analysis) -> Iterator[Finding]:
    icmp = frag_needed(analysis)
    seen = False
    for path in analysis.paths:
        for loss in path.losses:
            if not is_mtu(loss):
                continue
            seen = True
            label = conversation_label(analysis, path)
            last, missing = (
                hop_name(analysis, path, loss.last_hop),
                hop_name(analysis, path, loss.missing_hop),
            )
            tunnel_id = int(analysis.index.columns.tunnel[loss.rows[0]])
            tunnels = [analysis.index.tunnels[tunnel_id - 1]] if tunnel_id else []
            inside = (
                f" inside {tunnels[0].kind.upper()} ({tunnels[0].outer_src} -> "
                f"{tunnels[0].outer_dst})"
                if tunnels
                else ""
            )
            yield Finding(
                id="mtu.blackhole",
                severity=Severity.HIGH,
                title=f"MTU black hole between {last} and {missing}: packets of "
                f"{loss.max_size} bytes vanish, up to {loss.passed_max_size} pass",
                explanation=(
                    f"{label}: {plural(loss.packets, 'packet')} of up to {loss.max_size} "
                    f"bytes on the wire{inside} left {last} and never reached {missing}, "
                    f"while packets of up to {loss.passed_max_size} bytes of the same "
                    "conversation did. "
                    + (
                        f"{plural(len(icmp), 'ICMP fragmentation-needed message')} seen."
                        if len(icmp)
                        else "No ICMP fragmentation-needed came back, so the senders never learn "
                        "to send smaller packets: connections hang once data flows."
                    )
                ),
                next_step=(
                    "Compare the pod/overlay MTU with the underlay's: an overlay needs the "
                    "underlay MTU minus its overhead (VXLAN 50, Geneve 50+, IPIP 20 bytes). "
                    "Lower the CNI MTU, or raise the underlay MTU, and let ICMP through."
                ),
                evidence=tuple(analysis.index.ref(r) for r in loss.rows[:MAX_EVIDENCE]),
                flows=(label,),
            )
    if not seen and len(icmp):
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


DROP = FunctionCheck("path.drop", run_drop)
MTU = FunctionCheck("mtu.blackhole", run_mtu)
