"""Write classic pcap files (nanosecond timestamps), as the capture bundle stores its points."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

NS_MAGIC = 0xA1B23C4D
SNAPLEN = 262144


class PcapWriter:
    """Files are created 0600: captures hold payloads."""

    def __init__(self, path: str | os.PathLike[str], linktype: int, snaplen: int = SNAPLEN) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self._fh.write(struct.pack("<IHHiIII", NS_MAGIC, 2, 4, 0, 0, snaplen, linktype))
        self.packets = 0

    def write(self, ts_ns: int, data: bytes, wirelen: int | None = None) -> None:
        sec, frac = divmod(ts_ns, 1_000_000_000)
        wire = len(data) if wirelen is None else wirelen
        self._fh.write(struct.pack("<IIII", sec, frac, len(data), wire))
        self._fh.write(data)
        self.packets += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_pcap(
    path: str | os.PathLike[str], linktype: int, packets: Iterable[tuple[int, bytes]]
) -> Path:
    with PcapWriter(path, linktype) as w:
        for ts, data in packets:
            w.write(ts, data)
    return Path(path)
