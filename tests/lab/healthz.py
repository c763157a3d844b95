"""kube-proxy's health check node port for a Service with externalTrafficPolicy Local, as the
lab runs it in each node's namespace: `GET /healthz` answers 200 with the node's count of
local endpoints, or 503 when it has none, so that a load balancer only sends to nodes that
can serve. While the state file says "down" the server stops listening, as when kube-proxy
is not running on the node: the kernel then resets every connection to the port.

    python -m tests.lab.healthz PORT LOCAL_ENDPOINTS STATE_FILE
It prints "ready" once listening.
"""

from __future__ import annotations

import json
import select
import socket
import sys
from pathlib import Path


def _listener(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s


def _answer(conn: socket.socket, local: int) -> None:
    conn.settimeout(1)
    try:
        conn.recv(4096)
        body = json.dumps({"localEndpoints": local}).encode()
        status = "200 OK" if local else "503 Service Unavailable"
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
    except OSError:
        pass
    finally:
        conn.close()


def serve(port: int, local: int, state: Path) -> None:
    listener: socket.socket | None = _listener(port)
    print("ready", flush=True)
    while True:
        down = state.exists() and state.read_text().strip() == "down"
        if down and listener is not None:
            listener.close()
            listener = None
        elif not down and listener is None:
            listener = _listener(port)
        if listener is None:
            select.select([], [], [], 0.05)
            continue
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            _answer(listener.accept()[0], local)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
