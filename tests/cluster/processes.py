"""The cluster's long-running processes: started in the background with a log and a pid file
each, so that `down` (another process, maybe after a crash) finds and ends them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.cluster.layout import DATA, STATE


class ClusterError(Exception):
    pass


def pid_file(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def log_file(name: str) -> Path:
    return DATA / "logs" / f"{name}.log"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def running(name: str) -> int | None:
    try:
        pid = int(pid_file(name).read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """`argv` in the background under `name`, unless it runs already."""
    pid = running(name)
    if pid is not None:
        return pid
    pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    log_file(name).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file(name), "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pid_file(name).write_text(str(proc.pid))
    return proc.pid


def stop(name: str, timeout: float = 15) -> None:
    """End the process group `name` leads: SIGTERM, then SIGKILL when it lingers."""
    pid = running(name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pid_file(name).unlink()


def names() -> list[str]:
    return sorted(p.stem for p in (STATE / "pids").glob("*.pid"))


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def wait_for(what: str, test: object, timeout: float, every: float = 0.5) -> None:
    """Until `test()` is true; the error names `what` and, where a log says why, its tail."""
    assert callable(test)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if test():
                return
        except (ClusterError, OSError, subprocess.SubprocessError):
            pass
        time.sleep(every)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
