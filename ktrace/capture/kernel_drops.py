"""The kernel's drop events on a node during a capture: a tracefs instance of ktrace's own
with the skb:kfree_skb tracepoint (IPv4 and IPv6 only), a clock marker to map its timestamps
to capture time, read back whole at the end. The commands run in the node debug pod, which
sees the host's tracefs only when it was created with it (debug.node_pod_spec)."""

from __future__ import annotations

from ktrace.bundle.node_evidence import CLOCK_MARK, KFREE_SKB_FILTER
from ktrace.kube.debug import TRACEFS

# $1: the instance's name, $2: the event filter. mono: one clock across CPUs. The clock marker
# is written once with the time before it, then again with the time after the first write:
# the first write happened between the two (a fork of date can take milliseconds).
_SETUP = f"""set -e
I={TRACEFS}/instances/$1
mkdir "$I"
echo mono > "$I/trace_clock" 2>/dev/null || true
echo "$2" > "$I/events/skb/kfree_skb/filter"
echo 1 > "$I/events/skb/kfree_skb/enable"
a=$(date +%s%N)
echo "{CLOCK_MARK} $a" > "$I/trace_marker"
echo "{CLOCK_MARK} $a $(date +%s%N)" > "$I/trace_marker"
"""
_COLLECT = f"""I={TRACEFS}/instances/$1
echo 0 > "$I/events/skb/kfree_skb/enable"
cat "$I/trace"
rmdir "$I"
"""


def instance(session: str, node: str) -> str:
    """Named for the node too: nodes that share a kernel (a lab, kind) must not collide."""
    return f"ktrace-{session}-{node}"


def setup_argv(session: str, node: str) -> list[str]:
    return ["sh", "-c", _SETUP, "ktrace", instance(session, node), KFREE_SKB_FILTER]


def collect_argv(session: str, node: str) -> list[str]:
    """Stop the events, print what the instance holds, remove it."""
    return ["sh", "-c", _COLLECT, "ktrace", instance(session, node)]


def skipped(namespace: str, level: str) -> str:
    """Why no drop reasons were recorded: PodSecurity refused the tracefs volume."""
    return (
        f'kernel drop reasons not recorded: namespace "{namespace}" enforces PodSecurity '
        f'"{level}", which refuses the hostPath volume of tracefs they need (--node-namespace '
        "with pod-security.kubernetes.io/enforce=privileged admits it); rule, conntrack and "
        "interface counters are recorded"
    )


def refused(namespace: str, why: str) -> str:
    """Why no drop reasons were recorded: the cluster refused the node pod with tracefs."""
    return (
        f'kernel drop reasons not recorded: a node pod with tracefs in namespace "{namespace}" '
        f"was refused ({why}); rule, conntrack and interface counters are recorded"
    )
