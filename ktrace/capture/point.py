"""One capture point while it runs: tcpdump's stream from the cluster into the point's file.

Every chunk is written as it arrives (an interrupted capture keeps every packet received),
records are counted on the way for the live progress, and stderr is kept for tcpdump's pid,
its statistics and its complaints.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ktrace.capture import tcpdump
from ktrace.errors import ClusterError
from ktrace.kube.debug import Container
from ktrace.kube.execstream import STDOUT, ExecStream, exit_code
from ktrace.model import PointKind


@dataclass(frozen=True)
class Plan:
    """Where a point is and how it is captured."""

    id: str
    kind: PointKind
    node: str
    interface: str
    container: Container
    bpf: str
    namespace: str | None = None
    pod: str | None = None
    ifindex: int | None = None
    count: int | None = None


class RecordCounter:
    """Counts pcap records in a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.packets = 0
        self.skip = 24  # the global header
        self.pending = b""
        self.magic = b""
        self.order = "<"

    def feed(self, data: bytes) -> None:
        if len(self.magic) < 4:
            self.magic += data[: 4 - len(self.magic)]
            little = self.magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
            self.order = "<" if little else ">"
        buf = self.pending + data if self.pending else data
        pos = self.skip
        n = len(buf)
        fmt = self.order + "I"
        count = 0
        while pos + 16 <= n:
            pos += 16 + struct.unpack_from(fmt, buf, pos + 8)[0]
            count += 1
        self.packets += count
        if pos <= n:
            self.pending = buf[pos:]
            self.skip = 0
        else:
            self.pending = b""
            self.skip = pos - n


class PointRun:
    def __init__(self, plan: Plan, path: Path) -> None:
        self.plan = plan
        self.path = path
        self.bytes = 0
        self.counter = RecordCounter()
        self.stderr = bytearray()
        self.pid: int | None = None
        self.started = threading.Event()  # the pcap header arrived (or the start failed)
        self.finished = threading.Event()
        self.error: str | None = None  # why the stream ended early
        self.exit_code: int | None = None
        self.stop_requested = False
        self.thread: threading.Thread | None = None
        # when it was capturing, on this machine's clock (ns): from tcpdump saying it listens
        # (or its first bytes) until the stop was asked for or the stream ended
        self.began_ns: int | None = None
        self.ended_ns: int | None = None

    def mark_stopping(self) -> None:
        self.stop_requested = True
        if self.ended_ns is None:
            self.ended_ns = time.time_ns()

    @property
    def packets(self) -> int:
        return self.counter.packets

    def stats(self) -> tcpdump.Stats:
        return tcpdump.parse_stats(self.stderr.decode("utf-8", "replace"))

    def start(self, stream_factory: Callable[[Plan], ExecStream]) -> None:
        self.thread = threading.Thread(
            target=self._run, args=(stream_factory,), name=f"point-{self.plan.id}", daemon=True
        )
        self.thread.start()

    def _run(self, open_stream: Callable[[Plan], ExecStream]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                try:
                    stream = open_stream(self.plan)
                except ClusterError as exc:
                    self.error = exc.message
                    return
                try:
                    while not stream.closed and stream.status is None:
                        for channel, data in stream.frames(0.5):
                            if channel == STDOUT:
                                known = len(self.counter.magic) == 4
                                self.counter.feed(data)
                                if (
                                    not known
                                    and len(self.counter.magic) == 4
                                    and (self.counter.magic not in tcpdump.PCAP_MAGICS)
                                ):
                                    self.error = (
                                        "the stream is not a pcap (does the image run tcpdump?)"
                                    )
                                    return
                                out.write(data)
                                self.bytes += len(data)
                                self._began()
                                self.started.set()
                            else:
                                self._stderr(data)
                except ClusterError as exc:
                    self.error = exc.message
                finally:
                    stream.close()
                if stream.status is not None:
                    self.exit_code = exit_code(stream.status)
                    if self.bytes == 0:
                        self.error = tcpdump.complaint(self.stderr.decode("utf-8", "replace"))
        finally:
            if self.began_ns is not None and self.ended_ns is None:
                self.ended_ns = time.time_ns()
            self.finished.set()
            self.started.set()

    def _began(self) -> None:
        if self.began_ns is None:
            self.began_ns = time.time_ns()

    def linktype(self) -> int | None:
        """From the pcap header tcpdump wrote (an IPIP device is not Ethernet)."""
        with self.path.open("rb") as f:
            head = f.read(24)
        if len(head) < 24:
            return None
        return int(struct.unpack_from(self.counter.order + "I", head, 20)[0]) & 0xFFFF

    def _stderr(self, data: bytes) -> None:
        self.stderr += data
        if b"listening on" in self.stderr:
            self._began()
        if self.pid is None:
            m = tcpdump.PID_LINE.search(self.stderr)
            if m:
                self.pid = int(m.group(1))

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.started.wait(0.2):
            if time.monotonic() > deadline:
                break
            # tcpdump writes its header only when it starts; a quiet interface still says
            # "listening on" on stderr
            if b"listening on" in self.stderr:
                return
