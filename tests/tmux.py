"""A real terminal for tests: a private tmux server running one command in a pane of a
fixed size, read back as text."""

from __future__ import annotations

import re
import subprocess
import time


class Tmux:
    def __init__(self, command: str, env: dict[str, str], size: tuple[int, int]) -> None:
        self.session = f"ktrace-test-{time.monotonic_ns()}"
        # COLUMNS/LINES from the test runner would override the pane's real size
        self.env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        width, height = size
        started = self.run("new-session", "-d", "-s", self.session, "-x", str(width), "-y",
                           str(height), command)  # fmt: skip
        assert started.returncode == 0, started.stderr

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.session, *args], capture_output=True, text=True, env=self.env
        )

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first match of a regular expression on the screen."""
        deadline = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < deadline:
            shown = self.run("capture-pane", "-p", "-t", self.session).stdout
            m = re.search(pattern, shown)
            if m:
                return m
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared:\n{shown}")

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session).returncode == 0

    def close(self) -> None:
        self.run("kill-server")
