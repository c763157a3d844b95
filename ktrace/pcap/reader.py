"""Recognise a capture file and walk its records in batches, optionally split across processes."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ktrace.errors import CaptureFileError
from ktrace.pcap import linktype
from ktrace.pcap.classic import MAGICS, ClassicPcap
from ktrace.pcap.pcapng import SHB, Pcapng
from ktrace.pcap.records import Interface, RecordBatch
from ktrace.pcap.source import MappedFile, open_mapped


class CaptureFormat(Protocol):
    kind: str
    mf: MappedFile
    first: int
    interfaces: list[Interface]
    warnings: list[str]
    drops: dict[int, int]

    def prime(self) -> None: ...

    def walk(self, start: int, stop: int, batch: int) -> Iterator[RecordBatch]: ...

    def sync(self, near: int, depth: int = 8, scan: int = 1 << 18) -> int | None: ...


def open_capture(path: str | Path) -> CaptureFormat:
    """Open a pcap or pcapng file (gzip allowed) or fail with one clear sentence."""
    mf = open_mapped(path)
    try:
        head = bytes(mf.view[:4])
        (magic,) = struct.unpack("<I", head.ljust(4, b"\0"))
        fmt: CaptureFormat
        if magic in MAGICS:
            fmt = ClassicPcap(mf)
        elif magic == SHB:
            fmt = Pcapng(mf)
        else:
            raise CaptureFileError(
                f"{mf.path}: not a pcap or pcapng file (starts with {head.hex(' ')})",
                "give a file written by tcpdump, Wireshark, ktrace or any libpcap tool",
            )
        if mf.warning:
            fmt.warnings.append(mf.warning)
        fmt.prime()
        return fmt
    except Exception:
        mf.close()
        raise


def check_linktypes(fmt: CaptureFormat) -> None:
    for iface in fmt.interfaces:
        if not linktype.supported(iface.linktype):
            fmt.warnings.append(
                f"interface {iface.name or 0} has link type {linktype.name(iface.linktype)}, "
                "which ktrace does not decode: its packets are counted but not dissected"
            )
