"""Record a large benchmark capture from real traffic between two network namespaces:
bulk TCP, short HTTP connections and DNS queries at once, offloads off so that packets on the
wire are MTU-sized as on a real NIC."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.samples.record import (
    CLIENT,
    REPO,
    SERVER,
    SERVER_IP,
    ZONE,
    background,
    in_ns,
    network,
    sh,
    tcpdump,
)

SINK = """
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5001)); srv.listen(16); print("ready", flush=True)
def drain(c):
    while c.recv(1 << 20):
        pass
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

CLIENT_LOAD = """
import socket, struct, sys, threading, time, urllib.request, random
server, total = sys.argv[1], int(sys.argv[2])
done = threading.Event()
def bulk():
    s = socket.create_connection((server, 5001))
    chunk = bytes(random.getrandbits(8) for _ in range(65536))
    sent = 0
    while sent < total:
        s.sendall(chunk); sent += len(chunk)
        time.sleep(0.0002)  # pace it so that tcpdump keeps up: drops would skew the counts
    s.close(); done.set()
def http():
    while not done.is_set():
        try:
            urllib.request.urlopen(f"http://{server}/", timeout=5).read()
        except OSError:
            pass
def dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(1)
    names = [b"web.example", b"missing.example", b"web.svc.example"]
    i = 0
    while not done.is_set():
        name = names[i % 3]; i += 1
        q = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\\0\\0\\1\\0\\1"
        sock.sendto(q, (server, 53))
        try:
            sock.recv(512)
        except OSError:
            pass
threads = [threading.Thread(target=f) for f in (bulk, http, http, dns)]
[t.start() for t in threads]; [t.join() for t in threads]
"""


def record(out: Path, bulk_bytes: int) -> Path:
    py = sys.executable
    web = Path(tempfile.mkdtemp(prefix="ktrace-bench-web-"))
    (web / "index.html").write_text("x" * 2000)
    with network():
        for ns in (CLIENT, SERVER):
            sh(
                *in_ns(ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off"),
                check=False,
            )
        with (
            background(
                in_ns(SERVER, py, "-m", "tests.samples.dns_server", SERVER_IP, json.dumps(ZONE)),
                ready="ready",
                cwd=REPO,
            ),
            background(in_ns(SERVER, py, "-c", SINK), ready="ready"),
            background(in_ns(SERVER, py, "-m", "http.server", "--bind", "::", "80"), cwd=web),
        ):
            threading.Event().wait(0.5)
            with tcpdump(CLIENT, "eth0", out, buffer_kib=262144):
                subprocess.run(
                    in_ns(CLIENT, py, "-c", CLIENT_LOAD, SERVER_IP, str(bulk_bytes)),
                    check=True,
                    timeout=600,
                )
    return out
