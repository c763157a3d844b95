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


# A busy service's node: bulk TCP in 1200-byte segments, short non-keep-alive HTTP/1.1
# requests (connect, GET, a tiny 200, close) and sequential DNS lookups of cluster and
# outside names, all from a client whose ephemeral ports are few, so that ports come back
# seconds later for new connections (with new initial sequence numbers).
BUSY_ZONE = {
    "records": {
        "web.default.svc.cluster.local": {"A": SERVER_IP},
        "api.default.svc.cluster.local": {"A": SERVER_IP},
        "example.com": {"A": SERVER_IP},
        "www.example.org": {"A": SERVER_IP},
    },
    "blackhole": [],
}
BUSY_PORTS = "40000 40999"
HTTP_SERVER = """
import http.server, socketserver
class Tiny(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True
srv = Server(("0.0.0.0", 80), Tiny)
print("ready", flush=True)
srv.serve_forever()
"""
BUSY_LOAD = """
import random, socket, struct, sys, threading, time
server, seconds = sys.argv[1], float(sys.argv[2])
http_rate, dns_rate, bulk_rate = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
end = time.monotonic() + seconds
def bulk():
    s = socket.socket(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1200)
    s.connect((server, 5001))
    chunk = random.randbytes(1 << 16)
    t = time.monotonic()
    while t < end:
        s.sendall(chunk)
        t += len(chunk) / bulk_rate
        time.sleep(max(0.0, t - time.monotonic()))
    s.close()
def paced(rate, once):
    t = time.monotonic()
    while t < end:
        try:
            once()
        except OSError:
            pass
        t += 1 / rate
        time.sleep(max(0.0, t - time.monotonic()))
def http():
    s = socket.create_connection((server, 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n")
    while s.recv(4096):
        pass
    s.close()
names = [b"web.default.svc.cluster.local", b"api.default.svc.cluster.local",
         b"example.com", b"www.example.org"]
def dns():
    name = random.choice(names)
    q = struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\\0\\0\\1\\0\\1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(1)
    try:
        sock.sendto(q, (server, 53)); sock.recv(512)
    finally:
        sock.close()
threads = [threading.Thread(target=bulk)]
threads += [threading.Thread(target=paced, args=(http_rate / 2, http)) for _ in range(2)]
threads += [threading.Thread(target=paced, args=(dns_rate, dns))]
[t.start() for t in threads]; [t.join() for t in threads]
"""


def record_busy(
    out: Path,
    seconds: float,
    http_rate: float = 166,
    dns_rate: float = 616,
    bulk_rate: float = 12e6,
    buffer_kib: int = 1024,
) -> Path:
    """The busy mix for `seconds`, captured at the client by a tcpdump with a small buffer
    while the machine is loaded: the capture itself loses packets, as on a busy node."""
    py = sys.executable
    with network():
        sh(*in_ns(CLIENT, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={BUSY_PORTS}"))
        for ns in (CLIENT, SERVER):
            sh(*in_ns(ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off"),
               check=False)  # fmt: skip
        with (
            background(
                in_ns(
                    SERVER, py, "-m", "tests.samples.dns_server", SERVER_IP, json.dumps(BUSY_ZONE)
                ),
                ready="ready",
                cwd=REPO,
            ),  # fmt: skip
            background(in_ns(SERVER, py, "-c", SINK), ready="ready"),
            background(in_ns(SERVER, py, "-c", HTTP_SERVER), ready="ready"),
        ):
            threading.Event().wait(0.5)
            with tcpdump(CLIENT, "eth0", out, buffer_kib=buffer_kib):
                subprocess.run(
                    in_ns(CLIENT, py, "-c", BUSY_LOAD, SERVER_IP, str(seconds), str(http_rate),
                          str(dns_rate), str(bulk_rate)),
                    check=True,
                    timeout=seconds + 120,
                )  # fmt: skip
    return out
