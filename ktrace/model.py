"""Frozen records shared by every layer: capture points, packet references, findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


@dataclass(frozen=True)
class Point:
    """A place packets were captured: a file, a pcapng interface, or a bundle's declared point."""

    id: str
    file: str
    interface: str = ""
    linktype: int = 1
    kind: str = "file"  # pod | veth | node | tunnel | file
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
