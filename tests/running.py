"""What the plugin's end-to-end tests share, against the lab's API server and the real
cluster alike: a plugin process followed as it runs, and the packets a bundle's point holds."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from ktrace.decode.index import build_index


class Running:
    """A plugin process whose stderr is followed line by line."""

    def __init__(self, argv: list[str], environ: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self.seen = threading.Condition()
        # both pipes read by threads of their own, to their end: communicate() would race
        # the stderr follower for the same pipe and close it under it
        self.readers = [
            threading.Thread(target=self._follow, daemon=True),
            threading.Thread(target=self._collect, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _follow(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        self.out.extend(self.proc.stdout)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        with self.seen:
            ok = self.seen.wait_for(
                lambda: any(text in ln for ln in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        assert ok and any(text in ln for ln in self.lines), "".join(self.lines)

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout)
        return self.proc.returncode, "".join(self.out), "".join(self.lines)


def rows(bundle: Path, point: str) -> list[tuple[str, int, str, int, int]]:
    """(src, sport, dst, dport, tunnel id) of every TCP packet at a point, inner addresses."""
    with build_index([bundle / "points" / f"{point}.pcap"], workers=1) as index:
        c = index.columns
        out = []
        for k in range(len(index)):
            if int(c.proto[k]) == 6:
                out.append(
                    (
                        index.address(int(c.l3[k]), int(c.src[k])),
                        int(c.sport[k]),
                        index.address(int(c.l3[k]), int(c.dst[k])),
                        int(c.dport[k]),
                        int(c.tunnel[k]),
                    )
                )
        return out
