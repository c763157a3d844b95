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
else:
    print(resolve("blackhole.example"))
    s = socket.socket()
    try:
        s.connect(("{SERVER_IP}", 81))
    except OSError as exc:
        print("refused:", exc)
"""


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
    files = [outdir / "http-dns.pcap", outdir / "dns-blackhole.pcap"]
    try:
        with (
            network(),
            background(
                in_ns(SERVER, py, "-m", "tests.samples.dns_server", SERVER_IP, json.dumps(ZONE)),
                ready="ready",
                cwd=REPO,
            ),
            background(in_ns(SERVER, py, "-m", "http.server", "--bind", "::", "80"), cwd=web),
        ):
            time.sleep(0.5)
            for (ns, iface, mode), out in zip(
                [(CLIENT, "eth0", "healthy"), (SERVER, "any", "blackhole")], files, strict=True
            ):
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
