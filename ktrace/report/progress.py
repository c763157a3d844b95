"""One self-rewriting line on a terminal's stderr while a long analysis runs: bytes and packets
read, the rate and what is left. Silent for the first second and when stderr is not a
terminal, so scripts and short runs see nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TextIO

from ktrace.analysis.pipeline import Analysing, Indexed, Step
from ktrace.decode.index import IndexProgress
from ktrace.report.table import human_size

QUIET_FOR_S = 1.0
EVERY_S = 0.2


class ProgressLine:
    def __init__(self, stream: TextIO, files: tuple[Path, ...] | list[Path]) -> None:
        self.stream = stream
        self.total = sum(p.stat().st_size for p in files if p.exists())
        self.started = time.monotonic()
        self.shown = 0.0
        self.current: Path | None = None
        self.current_size = 0
        self.base = 0  # bytes of the files walked before the current one
        self.width = 0
        self.lock = threading.Lock()
        self.closed = False
        self.timer: threading.Timer | None = None
        self.stage: Analysing | None = None

    def step(self, step: Step) -> None:
        if isinstance(step, IndexProgress) and step.file != self.current:
            self.base += self.current_size
            self.current = step.file
        if isinstance(step, IndexProgress):
            self.current_size = step.total
        now = time.monotonic()
        if isinstance(step, Indexed):
            # a stage can run for many seconds without a step: say so once it has taken a second
            wait = max(QUIET_FOR_S - (now - self.started), 0.0)
            self.timer = threading.Timer(wait, self._analysing)
            self.timer.daemon = True
            self.timer.start()
            return
        if isinstance(step, Analysing):
            self.stage = step
            if now - self.started >= QUIET_FOR_S:
                self._analysing()
            return
        if now - self.started < QUIET_FOR_S or now - self.shown < EVERY_S:
            return
        if isinstance(step, IndexProgress):
            self._write(self._indexing(step, now))
        self.shown = now

    def _indexing(self, p: IndexProgress, now: float) -> str:
        done = self.base + p.done
        rate = done / max(now - self.started, 1e-6)
        left = (self.total - done) / rate if rate else 0.0
        return (
            f"reading {p.file.name}: {human_size(done)} of {human_size(self.total)}, "
            f"{p.packets:,} packets, {human_size(int(rate))}/s, {left:.0f} s left"
        )

    def _analysing(self) -> None:
        stage = self.stage
        if stage is not None:
            self._write(f"analysing {stage.packets:,} packets: {stage.stage}…")

    def _write(self, text: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.closed = True
            if self.width:  # leave the terminal as it was
                self.stream.write("\r" + " " * self.width + "\r")
                self.stream.flush()
