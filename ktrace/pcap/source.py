"""Open a capture file as read-only memory, inflating gzip to a private temporary file first.

Packets are always read by offset from this mapping: nothing keeps payloads in memory.
"""

from __future__ import annotations

import gzip
import mmap
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ktrace.errors import CaptureFileError

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class MappedFile:
    path: Path
    size: int
    _mm: mmap.mmap | None = field(repr=False)
    view: memoryview = field(repr=False)
    _temp: Path | None = field(default=None, repr=False)
    compressed: bool = False
    warning: str | None = None

    def close(self) -> None:
        self.view.release()
        if self._mm is not None:
            self._mm.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inflate(path: Path) -> tuple[Path, str | None]:
    fd, name = tempfile.mkstemp(prefix="ktrace-", suffix=".pcap")  # mkstemp creates it 0600
    warning = None
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # A cut-off .gz still holds everything inflated before the cut: keep it.
        warning = f"gzip stream damaged ({exc}); read what was before the damage"
    except OSError as exc:
        os.unlink(name)
        raise CaptureFileError(f"{path}: cannot decompress: {exc}") from exc
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
