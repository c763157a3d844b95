"""Recognise a capture file and walk its records in batches, optionally split across threads."""

from __future__ import annotations

import gzip
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
    windows: dict[int, tuple[int, int]]

    def prime(self) -> None: ...

    def walk(self, start: int, stop: int, batch: int) -> Iterator[RecordBatch]: ...

    def sync(self, near: int, depth: int = 8, scan: int = 1 << 18) -> int | None: ...


def _check_magic(path: Path | str, head: bytes) -> int:
    (magic,) = struct.unpack("<I", head.ljust(4, b"\0"))
    if not head:
        raise CaptureFileError(
            f"{path}: file is empty", "was the capture stopped before it started?"
        )
    if magic not in MAGICS and magic != SHB:
        raise CaptureFileError(
            f"{path}: not a pcap or pcapng file (starts with {head.hex(' ')})",
            "give a file written by tcpdump, Wireshark, ktrace or any libpcap tool",
        )
    return int(magic)


def check_capture(path: Path) -> None:
    """Fail with one clear sentence unless `path` starts like a capture: the check the UI
    makes before it opens, without reading (or inflating) the whole file."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(4)
            if head[:2] == b"\x1f\x8b":
                raw.seek(0)
                with gzip.open(raw) as inflated:
                    head = inflated.read(4)
    except (OSError, EOFError) as e:
        raise CaptureFileError(
            f"{path}: cannot read: {e}", "check the path and its permissions"
        ) from e
    _check_magic(path, head)


def open_capture(path: str | Path) -> CaptureFormat:
    """Open a pcap or pcapng file (gzip allowed) or fail with one clear sentence."""
    mf = open_mapped(path)
    try:
        fmt = reader_over(mf)
        if mf.warning:
            fmt.warnings.append(mf.warning)
        return fmt
    except Exception:
        mf.close()
        raise


def reader_over(mf: MappedFile) -> CaptureFormat:
    """A reader of its own over an open mapping: threads walking parts of one file each
    need their own place in it, and share the mapping (its pages are mapped once)."""
    magic = _check_magic(mf.path, bytes(mf.view[:4]))
    fmt: CaptureFormat = ClassicPcap(mf) if magic in MAGICS else Pcapng(mf)
    fmt.prime()
    return fmt


def check_linktypes(fmt: CaptureFormat) -> None:
    for iface in fmt.interfaces:
        if not linktype.supported(iface.linktype):
            fmt.warnings.append(
                f"interface {iface.name or 0} has link type {linktype.name(iface.linktype)}, "
                "which ktrace cannot read: its packets are counted, nothing in them analysed"
            )
