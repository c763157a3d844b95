"""Live progress on stderr: packets, bytes and kernel drops per point.

On a terminal the block is redrawn in place once a second; otherwise (a log, CI) one line per
point every 10 seconds, so a log stays readable.
"""

from __future__ import annotations

import time
from typing import TextIO

from ktrace.capture.point import PointRun
from ktrace.report.table import human_size


def line(r: PointRun) -> str:
    stats = r.stats()
    drops = stats.dropped
    packets = stats.captured if r.finished.is_set() and stats.captured is not None else r.packets
    state = " ended" if r.finished.is_set() else ""
    if r.error and r.bytes:
        state = f" LOST: {r.error}"
    dropped = f", {drops} dropped by kernel" if drops else ""
    return f"  {r.plan.id:<28} {packets:>9} packets {human_size(r.bytes):>9}{dropped}{state}"


class CaptureProgress:
    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.drawn = 0
        self.last = 0.0

    def show(self, runs: list[PointRun], elapsed: float) -> None:
        now = time.monotonic()
        if now - self.last < (1.0 if self.interactive else 10.0):
            return
        self.last = now
        lines = [f"ktrace: {elapsed:6.0f}s", *(line(r) for r in runs)]
        if self.interactive:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            self.out.write("".join(f"\x1b[2K{ln}\n" for ln in lines))
            self.drawn = len(lines)
        else:
            self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def done(self, runs: list[PointRun]) -> None:
        """The final counts; nothing when no point ever started (a refusal says why)."""
        if self.interactive and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
        if runs:
            self.out.write("ktrace: captured\n" + "".join(line(r) + "\n" for r in runs))
        self.out.flush()
