"""The lab's CoreDNS stand-in: a DNS proxy on the pod's port 53 in front of dnsmasq.

The kernel here has no netem, so DNS faults live in this proxy: it reads a control file before
every query ({"delay_ms": N, "drop_aaaa": bool}) and delays responses, or drops the responses
to AAAA queries (the symptom of the conntrack insert race: A answered, AAAA lost).

Usage: python -m tests.lab.dns_proxy LISTEN_ADDR BACKEND_PORT CONTROL_FILE
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from pathlib import Path

AAAA = 28


def qtype(msg: bytes) -> int:
    off = 12
    while off < len(msg) and msg[off]:
        off += msg[off] + 1
    return struct.unpack_from("!H", msg, off + 1)[0] if off + 3 <= len(msg) else 0


class Faults:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, object]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


def ask(backend: tuple[str, int], query: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(4)
        s.sendto(query, backend)
        try:
            return s.recv(65535)
        except OSError:
            return None


def answer(faults: Faults, backend: tuple[str, int], query: bytes) -> bytes | None:
    f = faults.read()
    if f.get("drop_aaaa") and qtype(query) == AAAA:
        return None
    reply = ask(backend, query)
    delay = float(f.get("delay_ms", 0) or 0)
    if delay:
        time.sleep(delay / 1000)
    return reply


def serve_udp(sock: socket.socket, faults: Faults, backend: tuple[str, int]) -> None:
    while True:
        query, peer = sock.recvfrom(65535)

        def handle(q: bytes = query, p: tuple[str, int] = peer) -> None:
            reply = answer(faults, backend, q)
            if reply is not None:
                sock.sendto(reply, p)

        threading.Thread(target=handle, daemon=True).start()


def serve_tcp(sock: socket.socket, faults: Faults, backend: tuple[str, int]) -> None:
    def handle(conn: socket.socket) -> None:
        with conn:
            head = conn.recv(2)
            if len(head) < 2:
                return
            query = b""
            need = struct.unpack("!H", head)[0]
            while len(query) < need:
                chunk = conn.recv(need - len(query))
                if not chunk:
                    return
                query += chunk
            f = faults.read()
            if f.get("drop_aaaa") and qtype(query) == AAAA:
                return
            with socket.create_connection(backend, timeout=4) as up:
                up.sendall(head + query)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                    chunk = up.recv(65535)
                    if not chunk:
                        break
                    data += chunk
            conn.sendall(data)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main() -> None:
    listen, backend_port, control = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    backend = ("127.0.0.1", backend_port)
    faults = Faults(control)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((listen, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((listen, 53))
    tcp.listen(64)
    threading.Thread(target=serve_tcp, args=(tcp, faults, backend), daemon=True).start()
    print("ready", flush=True)
    serve_udp(udp, faults, backend)


if __name__ == "__main__":
    main()
