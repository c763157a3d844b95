"""Record the sample captures in pcaps/ from real traffic between two network namespaces.

    python -m tests.samples.record [OUTDIR]      (root; needs ip, tcpdump, python3)

A client namespace and a server namespace joined by a veth pair. The server runs an HTTP server
and a small DNS server (tests/samples/dns_server.py); the client resolves names through the
system resolver (search path and ndots from its resolv.conf) and fetches pages. Two captures:

- http-dns.pcap: client eth0 (Ethernet): A/AAAA lookups with search-path expansion, an
  NXDOMAIN, short HTTP requests and one bulk download. Healthy.
- dns-blackhole.pcap: server side with tcpdump -i any (Linux cooked v2): queries for a name
  the DNS server never answers (the resolver retries, then gives up), and a connection to a
  port nobody listens on (refused with a RST).
- tls-http.pcap: client eth0: a TLS 1.3 handshake with SNI and ALPN, one refused by a server
  that stops at TLS 1.2 (alert protocol_version), and an HTTP request the server reads and
  closes the connection on without answering.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"kts{os.getpid() % 100000}"
CLIENT, SERVER = f"{PREFIX}-cli", f"{PREFIX}-srv"
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
ZONE = {
    "records": {
        "web.example": {"A": SERVER_IP, "AAAA": "fd77::2"},
        "web.svc.example": {"A": SERVER_IP},
    },
    "blackhole": ["blackhole.example", "blackhole.example.svc.example"],
}
RESOLV = f"nameserver {SERVER_IP}\nsearch svc.example\noptions ndots:2 timeout:1 attempts:2\n"

CLIENT_SCRIPT = f"""
import socket, sys, urllib.request, urllib.error
def resolve(name):
    try:
        return sorted({{a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)}})
    except socket.gaierror as exc:
        return str(exc)
mode = sys.argv[1]
if mode == "healthy":
    print(resolve("web"), resolve("web.example"), resolve("missing.example"))
    for path in ("/", "/index.html", "/"):
        urllib.request.urlopen("http://web.example" + path, timeout=5).read()
    urllib.request.urlopen("http://web.example/big.bin", timeout=10).read()
elif mode == "tls":
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed sample server
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("{SERVER_IP}", 443)),
                         server_hostname="web.example") as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: web.example\\r\\n\\r\\n")
        print("tls:", s.version(), s.selected_alpn_protocol(), s.recv(100))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.wrap_socket(socket.create_connection(("{SERVER_IP}", 8443)),
                        server_hostname="legacy.example")
    except ssl.SSLError as exc:
        print("legacy:", exc)
    s = socket.create_connection(("{SERVER_IP}", 8080))
    s.sendall(b"GET /report HTTP/1.1\\r\\nHost: legacy.example\\r\\n\\r\\n")
    print("closed without an answer:", s.recv(100))
else:
    print(resolve("blackhole.example"))
    s = socket.socket()
    try:
        s.connect(("{SERVER_IP}", 81))
    except OSError as exc:
        print("refused:", exc)
"""


# The TLS sample's server: a good TLS 1.3 server on 443, one that stops at TLS 1.2 on 8443,
# and on 8080 an HTTP server that reads the request and closes without answering.
TLS_SERVER = """
import socket, ssl, sys, threading
cert, key = sys.argv[1:3]
def serve(port, ctx, answer):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(8)
    while True:
        conn, _ = srv.accept()
        try:
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            conn.recv(4096)
            if answer:
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        except OSError:
            pass
        finally:
            conn.close()
good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); good.load_cert_chain(cert, key)
good.set_alpn_protocols(["http/1.1"])
old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); old.load_cert_chain(cert, key)
old.maximum_version = ssl.TLSVersion.TLSv1_2
for args in ((443, good, True), (8443, old, True), (8080, None, False)):
    threading.Thread(target=serve, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def self_signed(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    curve = "ec_paramgen_curve:prime256v1"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", curve, "-nodes", "-days", "2",
       "-subj", "/CN=web.example", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, check=check, capture_output=True)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


@contextlib.contextmanager
def network() -> Iterator[None]:
    etc = Path("/etc/netns") / CLIENT
    try:
        for ns in (CLIENT, SERVER):
            sh("ip", "netns", "add", ns)
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh(
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            CLIENT,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            SERVER,
        )
        for ns, ip4, ip6 in ((CLIENT, CLIENT_IP, "fd77::1"), (SERVER, SERVER_IP, "fd77::2")):
            sh(*in_ns(ns, "ip", "addr", "add", f"{ip4}/24", "dev", "eth0"))
            sh(*in_ns(ns, "ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"))
            sh(*in_ns(ns, "ip", "link", "set", "eth0", "up"))
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(RESOLV)
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        yield
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        for ns in (CLIENT, SERVER):
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def background(
    cmd: list[str], ready: str | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if ready not in line:
                raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def tcpdump(ns: str, iface: str, out: Path, buffer_kib: int = 4096) -> Iterator[None]:
    cmd = in_ns(
        ns,
        "tcpdump",
        "-i",
        iface,
        "-n",
        "-U",
        "-s",
        "0",
        "-Z",
        "root",
        "-B",
        str(buffer_kib),
        "-w",
        str(out),
    )
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = ""
    while "listening on" not in line:  # printed once the capture socket is open
        line = proc.stderr.readline().decode()
        if not line:
            raise RuntimeError(f"tcpdump did not start in {ns}")
    try:
        yield
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        out.chmod(0o644)


def record(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    web = Path(tempfile.mkdtemp(prefix="ktrace-web-"))
    (web / "index.html").write_text("<html><body>ktrace sample</body></html>\n")
    (web / "big.bin").write_bytes(os.urandom(150_000))
    py = sys.executable
    files = [outdir / "http-dns.pcap", outdir / "dns-blackhole.pcap", outdir / "tls-http.pcap"]
    cert, key = self_signed(web)
    try:
        with (
            network(),
            background(
                in_ns(SERVER, py, "-m", "tests.samples.dns_server", SERVER_IP, json.dumps(ZONE)),
                ready="ready",
                cwd=REPO,
            ),
            background(in_ns(SERVER, py, "-m", "http.server", "--bind", "::", "80"), cwd=web),
            background(in_ns(SERVER, py, "-c", TLS_SERVER, str(cert), str(key)), ready="ready"),
        ):
            time.sleep(0.5)
            runs = [
                (CLIENT, "eth0", "healthy"),
                (SERVER, "any", "blackhole"),
                (CLIENT, "eth0", "tls"),
            ]
            for (ns, iface, mode), out in zip(runs, files, strict=True):
                with tcpdump(ns, iface, out):
                    result = subprocess.run(
                        in_ns(CLIENT, py, "-c", CLIENT_SCRIPT, mode),
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    print(f"{out.name}: {result.stdout.strip()} {result.stderr.strip()}")
                    time.sleep(1.5)  # let the last exchange land before tcpdump stops
    finally:
        shutil.rmtree(web, ignore_errors=True)
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "pcaps"
    for path in record(target):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
