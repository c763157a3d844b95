"""Frozen records shared by every layer: capture points, packet references, findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class PointKind(StrEnum):
    """Where a capture point sits, which decides what it can see and its place on a path."""

    POD = "pod"  # inside a pod's network namespace: its eth0
    VETH = "veth"  # the pod's host-side interface
    TUNNEL = "tunnel"  # a node's overlay device (VXLAN, Geneve, IPIP)
    NODE = "node"  # a node's NIC
    HOST = "host"  # a machine outside the cluster: a client, a load balancer
    FILE = "file"  # a capture file nothing says more of

    @classmethod
    def read(cls, text: str) -> PointKind:
        """A manifest's word; one this version does not know says no more than a file."""
        try:
            return cls(text)
        except ValueError:
            return cls.FILE


@dataclass(frozen=True)
class Point:
    """A place packets were captured: a file, a pcapng interface, or a bundle's declared point."""

    id: str
    file: str
    interface: str = ""
    linktype: int = 1
    kind: PointKind = PointKind.FILE
    node: str | None = None
    namespace: str | None = None
    pod: str | None = None
    # when it was capturing (ns, the point's own clock), where known: a point that recorded
    # nothing of a conversation inside it is a witness that the conversation never got there
    window: tuple[int, int] | None = None
    kernel_drops: int | None = None  # what the capturing kernel said it dropped


@dataclass(frozen=True)
class PacketRef:
    """One packet, as the user finds it again: its point and its number in that file."""

    point: str
    # 1-based packet number within the point's file, as tcpdump -r and tshark count
    number: int = field(metadata={"json": "packet"})


class Severity(IntEnum):
    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


@dataclass(frozen=True)
class Finding:
    """What a check concluded: how bad, why, what to do next, and the packets that show it."""

    id: str
    severity: Severity
    title: str
    explanation: str
    next_step: str
    evidence: tuple[PacketRef, ...] = field(default=())
    flows: tuple[str, ...] = field(default=())  # flow keys, "proto a -> b"
    # the conversations it is about (ids as paths and the Parquet tables number them), where
    # the check knows them all; else they are read from the evidence
    about: frozenset[int] = field(default=frozenset(), metadata={"json": None})
