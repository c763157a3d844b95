"""Open a capture file as read-only memory, inflating gzip to a private temporary file first.

Packets are always read by offset from this mapping: nothing keeps payloads in memory.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import zlib
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from ktrace.errors import CaptureFileError
from ktrace.kernels import load

GZIP_MAGIC = b"\x1f\x8b"
_forget_c = getattr(load("ktrace.pcap._walk"), "forget", None)


@dataclass
class MappedFile:
    """A capture file mapped read-only (a gzip one inflated to a private file first)."""

    path: Path
    size: int
    mm: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)
    _temp: Path | None = field(default=None, repr=False)
    compressed: bool = False
    warning: str | None = None

    def forget(self) -> None:
        """Drop the mapping's pages from the process's page tables: they stay in the page
        cache, and a later read maps them again. Without the GIL where the C part was
        built (mmap.madvise holds it)."""
        if _forget_c is not None:
            _forget_c(self.view)
        else:
            with suppress(OSError):
                self.mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.view.release()
        self.mm.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inflate(path: Path) -> tuple[Path, str | None]:
    """Decompress to a private temporary file, keeping whatever precedes damage or a cut."""
    fd, name = tempfile.mkstemp(prefix="ktrace-", suffix=".pcap")  # mkstemp creates it 0600
    warning = None
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            inflater = zlib.decompressobj(wbits=47)  # gzip header, any window size
            while chunk := src.read(1 << 20):
                while chunk:
                    out.write(inflater.decompress(chunk))
                    chunk = b""
                    if inflater.eof and inflater.unused_data:  # concatenated gzip members
                        chunk = inflater.unused_data
                        inflater = zlib.decompressobj(wbits=47)
            out.write(inflater.flush())
            if not inflater.eof:
                warning = "gzip data ends early (file cut short); read what was there"
    except zlib.error as exc:
        warning = f"gzip data damaged ({exc}); read what came before the damage"
    except OSError as exc:
        os.unlink(name)
        raise CaptureFileError(f"{path}: cannot decompress: {exc.strerror}") from None
    if os.path.getsize(name) == 0:
        os.unlink(name)
        raise CaptureFileError(f"{path}: gzip file holds no data", "is it a complete .gz file?")
    return Path(name), warning


def open_mapped(path: str | os.PathLike[str]) -> MappedFile:
    p = Path(path)
    if p.is_dir():
        raise CaptureFileError(f"{p}: is a directory, not a capture file")
    try:
        with p.open("rb") as fh:
            head = fh.read(2)
    except FileNotFoundError:
        raise CaptureFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise CaptureFileError(f"{p}: cannot read: {exc.strerror}") from None
    temp, warning = _inflate(p) if head == GZIP_MAGIC else (None, None)
    real = temp or p
    size = real.stat().st_size
    if size == 0:
        if temp:
            temp.unlink()
        raise CaptureFileError(f"{p}: file is empty", "was the capture stopped before it started?")
    with real.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    return MappedFile(p, size, mm, memoryview(mm), temp, temp is not None, warning)
