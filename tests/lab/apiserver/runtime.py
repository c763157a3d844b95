"""Containers as real processes: what the kubelet and the runtime would do on the lab's nodes.

A pod's containers run in the pod's network namespace. An ephemeral container also gets its
own PID and mount namespaces (as it does without `targetContainerName`), so `kill 1` inside it
reaches its own init and `echo $$` prints a pid that means something there. Capabilities are
the runtime's default set plus `capabilities.add` (everything when privileged), enforced with
the bounding set, so a capture without NET_RAW fails as it would on a real node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# containerd's default capability set (NET_RAW included: what lets tcpdump run under baseline)
DEFAULT_CAPS = (
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
)


def cap_argv(added: list[str], privileged: bool) -> list[str]:
    if privileged:
        return []
    caps = sorted({*DEFAULT_CAPS, *(c.lower().removeprefix("cap_") for c in added)})
    bounding = "-all," + ",".join(f"+{c}" for c in caps)
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={bounding}", "--"]


@dataclass
class Sandbox:
    """Where a container's processes run: a network namespace, and for ephemeral containers
    the PID/mount namespaces of their init process."""

    netns: str
    caps: list[str] = field(default_factory=list)
    init_pid: int | None = None  # host pid of the container's PID 1, when it has its own
    # a hostPath volume of the host's tracefs at /sys/kernel/tracing: `ip netns exec` mounts a
    # fresh sysfs, where tracefs is only seen once mounted again (as the volume would)
    tracefs: bool = False

    def argv(self, command: list[str]) -> list[str]:
        if self.init_pid is not None:
            enter = ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--net", "--"]
        else:
            enter = ["ip", "netns", "exec", self.netns]
        if self.tracefs:
            mount = 'mount -t tracefs nodev /sys/kernel/tracing && exec "$@"'
            enter = [*enter, "sh", "-c", mount, "sh"]
        return [*enter, *self.caps, *command]


@dataclass
class Running:
    """A container's main process and every exec'd process, so deleting the pod ends them all
    (a kubelet kills the container's cgroup)."""

    sandbox: Sandbox
    main: subprocess.Popen[bytes] | None = None
    execs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    output: Fanout | None = None
    started: float = field(default_factory=time.time)
    exit_code: int | None = None

    def alive(self) -> bool:
        if self.main is None:
            return True
        code = self.main.poll()
        if code is not None and self.exit_code is None:
            self.exit_code = code
        return code is None

    def kill(self) -> None:
        for proc in [*self.execs, *([self.main] if self.main else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in [*self.execs, *([self.main] if self.main else [])]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.alive()


def start_container(
    netns: str,
    command: list[str],
    caps: list[str],
    own_pid_namespace: bool,
    stdin: bool = False,
    tracefs: bool = False,
) -> Running:
    """The container's main process; its output goes to whoever attaches (and to its log)."""
    sandbox = Sandbox(netns, caps, tracefs=tracefs)
    if own_pid_namespace:
        argv = ["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--mount-proc",
                "--kill-child", *caps, *command]  # fmt: skip
    else:
        argv = sandbox.argv(command)
    main = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if own_pid_namespace:
        sandbox.init_pid = _forked_child(main.pid)
    return Running(sandbox, main, output=Fanout(main))


class Fanout:
    """A main process's stdout and stderr, copied to every attached client as records
    (channel byte, 4-byte length, data) on a pipe each; the tail is kept as its log."""

    LOG_LIMIT = 1 << 16

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lock = threading.Lock()
        self.subscribers: list[int] = []
        self.log = bytearray()
        self.open = 2
        for pipe, channel in ((proc.stdout, 1), (proc.stderr, 2)):
            assert pipe is not None
            threading.Thread(target=self._pump, args=(pipe, channel), daemon=True).start()

    def subscribe(self) -> int:
        """A pipe's read end that carries the records until the process ends."""
        r, w = os.pipe()
        with self.lock:
            if self.open:
                self.subscribers.append(w)
            else:
                os.close(w)
        return r

    def _pump(self, pipe: object, channel: int) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        while data := os.read(fd, 65536):
            record = bytes([channel]) + len(data).to_bytes(4, "big") + data
            with self.lock:
                self.log += data
                del self.log[: -self.LOG_LIMIT]
                for w in list(self.subscribers):
                    try:
                        os.write(w, record)
                    except OSError:  # that client went away
                        self.subscribers.remove(w)
                        os.close(w)
        with self.lock:
            self.open -= 1
            if not self.open:
                for w in self.subscribers:
                    os.close(w)
                self.subscribers.clear()


def _forked_child(pid: int, timeout: float = 5) -> int:
    """The pid `unshare --fork` started as PID 1 of the new namespace (ip netns exec execs)."""
    deadline = time.monotonic() + timeout
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            children = Path(path).read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.01)
    raise RuntimeError(f"container init of {pid} did not start")
