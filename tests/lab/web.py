"""The web pods' HTTP/1.1 server (keep-alive, Content-Length on every answer) with fault
switches read before every request from a JSON file, keyed by pod name:

    {"web-2": {"status": 503}}      answer 503 instead of the file
    {"web-2": {"delay_ms": 800}}    answer late
    {"web-2": {"reset": true}}      for files *.bin: send the head and part of the body, then
                                    reset (a worker crashing on large answers)

    python -m tests.lab.web NAME DIRECTORY FAULTS_FILE PORT BIND
It prints "ready" once listening.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _faults(path: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()).get(name, {})  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def handler(name: str, faults: Path, root: str) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=root, **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{name}: {format % args}\n")

        def do_GET(self) -> None:
            fault = _faults(faults, name)
            time.sleep(fault.get("delay_ms", 0) / 1000)
            if "status" in fault:
                body = f"{name} unavailable\n".encode()
                self.send_response(int(fault["status"]))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if fault.get("reset") and self.path.endswith(".bin"):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"x" * 3000)
                self.wfile.flush()
                time.sleep(0.05)  # the partial answer leaves before the reset
                # a crashing worker: the kernel resets the connection (linger 0)
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            super().do_GET()

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bind: str, port: int, h: type[SimpleHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        super().__init__((bind, port), h)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # "::" serves both families
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    name, root, faults, port, bind = sys.argv[1:6]
    server = Server(bind, int(port), handler(name, Path(faults), root))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
