"""Exec into a container and read its output as bytes, binary-safe and without limit.

The client's `stream()` does the handshake (auth, TLS, subprotocol v5/v4); the frames are then
read here straight from the socket: `WSClient.update()` keeps every byte in a hidden buffer
for the stream's life and decodes per read, which a capture of gigabytes cannot afford.
Frames from the server are unmasked: one channel byte, then data (1 stdout, 2 stderr,
3 the exit status as a Status JSON).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ktrace.errors import ClusterError
from ktrace.kube.api import Api, explain, status_of

STDOUT, STDERR, STATUS = 1, 2, 3
OP_CONT, OP_BINARY, OP_CLOSE, OP_PING = 0, 2, 8, 9
READ_SIZE = 1 << 20


class StreamLost(ClusterError):
    """The connection ended before the command did."""


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def exit_code(status: dict[str, Any]) -> int:
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1))
    return 1


class ExecStream:
    def __init__(
        self, api: Api, namespace: str, pod: str, container: str, command: list[str]
    ) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream

        self.where = f"{namespace}/{pod} container {container}"
        # stream() swaps its client's call_api while it runs: on a shared client a request
        # from another thread would go out as a WebSocket. Each stream gets its own.
        core = client.CoreV1Api(client.ApiClient(api.api_client.configuration))
        try:
            ws = stream(
                core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                container=container,
                command=command,
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
                binary=True,
            )
        except ApiException as exc:
            raise explain(*status_of(exc)) from None
        self.ws = ws.sock
        self.sock: socket.socket = ws.sock.sock
        self.protocol = ws.subprotocol
        self.buf = bytearray()
        self.channel = 0  # of a fragmented message's first frame
        self.status: dict[str, Any] | None = None
        self.closed = False

    def frames(self, timeout: float) -> Iterator[tuple[int, bytes]]:
        """(channel, data) for what arrives within `timeout`; nothing when it times out.
        Raises StreamLost when the connection drops before the exit status came."""
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            return
        except OSError as exc:
            self.closed = True
            raise StreamLost(f"{self.where}: connection lost ({exc})") from None
        if not data:
            self.closed = True
            if self.status is None:
                raise StreamLost(f"{self.where}: the connection closed before the command ended")
            return
        self.buf += data
        yield from self._parse()

    def _parse(self) -> list[tuple[int, bytes]]:
        buf = self.buf
        out: list[tuple[int, bytes]] = []
        pos = 0
        with memoryview(buf) as view:
            while len(buf) - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                n, head = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) - pos < 4:
                        break
                    n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
                elif n == 127:
                    if len(buf) - pos < 10:
                        break
                    n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                start, end = pos + head, pos + head + n
                if len(buf) < end:
                    break
                pos = end
                opcode = b0 & 0x0F
                if opcode == OP_BINARY and n:
                    self.channel = buf[start]
                    start += 1
                elif opcode == OP_PING:
                    self.ws.pong(bytes(view[start:end]))
                    continue
                elif opcode == OP_CLOSE:
                    self.closed = True
                    continue
                elif opcode != OP_CONT:
                    continue
                if self.channel == STATUS:
                    self.status = json.loads(bytes(view[start:end]) or b"{}")
                elif end > start:
                    out.append((self.channel, bytes(view[start:end])))
        del buf[:pos]
        return out

    def close(self) -> None:
        self.closed = True
        try:
            self.ws.close(timeout=1)
        except Exception:
            self.sock.close()


def run(
    api: Api, namespace: str, pod: str, container: str, command: list[str], timeout: float = 30
) -> ExecResult:
    """A short command: its exit code and whole output."""
    stream = ExecStream(api, namespace, pod, container, command)
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    try:
        while not stream.closed and stream.status is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"{stream.where}: {command[0]} did not finish in {timeout:.0f}s")
            for channel, data in stream.frames(1.0):
                (out if channel == STDOUT else err).extend(data)
    finally:
        stream.close()
    return ExecResult(exit_code(stream.status or {}), bytes(out), bytes(err))
