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
    return np.flatnonzero(((c.proto == 1) & (c.seq == (3 << 8) | 4))
                          | ((c.proto == 58) & ((c.seq >> 8) == 2)))


def run_drop(analysis: Analysis) -> Iterator[Finding]:
    for path in analysis.paths:
        label = conversation_label(analysis, path)
        for loss in path.losses:
            if is_mtu(loss) or (loss.syn == loss.packets and loss.direction == "a->b"):
                continue  # MTU: the next check; lost SYNs: tcp.syn-unanswered says where
            last, missing = hop_name(analysis, path, loss.last_hop), \
                hop_name(analysis, path, loss.missing_hop)
            yield Finding(
                id="path.drop",
                severity=Severity.HIGH,
                title=f"{plural(loss.packets, 'packet')} of {label.split(' ', 1)[0]} "
                      f"conversation dropped between {last} and {missing}",
                explanation=(
                    f"{label}: {plural(loss.packets, 'packet')} ({loss.direction}) were seen "
                    f"at {last} and never at {missing}, although {missing} saw the "
                    "conversation's other packets. Something between the two points drops "
                    "them selectively."
                ),
                next_step=(
                    f"Look between {last} and {missing}: NetworkPolicy and iptables/nftables "
                    "rules on the node, conntrack state (INVALID drops), rate limits."
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
            last, missing = hop_name(analysis, path, loss.last_hop), \
                hop_name(analysis, path, loss.missing_hop)
            tunnels = [analysis.index.tunnels[t - 1]
                       for t in path.hops[loss.last_hop].tunnels]
            inside = (f" inside {tunnels[0].kind.upper()} ({tunnels[0].outer_src} -> "
                      f"{tunnels[0].outer_dst})" if tunnels else "")
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
                    + (f"{plural(len(icmp), 'ICMP fragmentation-needed message')} seen."
                       if len(icmp) else
                       "No ICMP fragmentation-needed came back, so the senders never learn "
                       "to send smaller packets: connections hang once data flows.")
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
            explanation=("Some hop could not forward packets as big as they were sent and "
                         "said so: the path MTU is smaller than the senders' MTU."),
            next_step="Check the pod, overlay and underlay MTUs agree.",
            evidence=tuple(analysis.index.ref(int(r)) for r in icmp[:MAX_EVIDENCE]),
        )


DROP = FunctionCheck("path.drop", run_drop)
MTU = FunctionCheck("mtu.blackhole", run_mtu)
