"""The capture stream path, measured in one run (root; brings a lab and its API server up):

client   ktrace's reader alone: WebSocket frames from memory -> point file (its ceiling)
stream   `cat` of a pcap in a pod's ephemeral container -> API server (TLS, WebSocket,
         another process) -> ktrace's reader -> point file: the transport's ceiling
live     `kubectl ktrace capture` of a pod receiving a TCP flood: bundle MB/s and tcpdump's
         kernel drops, next to a plain local tcpdump of the same flood

  sudo .venv/bin/python -m tests.bench.stream [SECONDS]
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ktrace.capture.point import Plan, PointRun
from ktrace.capture.session import Options, Session
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.debug import Container
from ktrace.kube.execstream import ExecStream
from ktrace.kube.targets import resolve
from tests.lab.lab import Lab

SIZE = 512 << 20
SINK_PORT = 9000
SINK = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {SINK_PORT})); s.listen(4); print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 20):
        pass
"""
FLOOD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], {port}))
block, end, sent = b"x" * 65536, time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    sent += s.send(block)
print(sent)
""".replace("{port}", str(SINK_PORT))


def synthetic_pcap(path: Path, size: int) -> None:
    """Full-size frames, as a flood produces them."""
    record = struct.pack("<IIII", 0, 0, 1464, 1464) + bytes(1464)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        chunk = record * 700
        for _ in range(size // len(chunk)):
            out.write(chunk)


def ws_frames(data: bytes, frame: int = 1 << 20) -> list[bytes]:
    out = []
    for i in range(0, len(data), frame):
        payload = b"\x01" + data[i : i + frame]
        out.append(bytes([0x82, 127]) + struct.pack("!Q", len(payload)) + payload)
    return out


def bench_client(pcap: Path, outdir: Path) -> float:
    """ExecStream parsing + PointRun's write and record count, fed from memory."""
    data = pcap.read_bytes()
    status = b'\x03{"metadata":{},"status":"Success"}'
    wire = b"".join(ws_frames(data)) + bytes([0x82, len(status)]) + status
    wire += bytes([0x88, 2, 3, 0xE8])

    class Sock:
        def __init__(self) -> None:
            self.view, self.pos = memoryview(wire), 0

        def settimeout(self, t: float) -> None:
            pass

        def recv(self, n: int) -> bytes:
            chunk = bytes(self.view[self.pos : self.pos + n])
            self.pos += len(chunk)
            return chunk

    stream = ExecStream.__new__(ExecStream)
    stream.sock, stream.ws = Sock(), None  # type: ignore[assignment]
    stream.buf, stream.channel, stream.closed, stream.where = bytearray(), 0, False, "bench"
    stream.status = None
    stream.close = lambda: None  # type: ignore[method-assign]
    run = PointRun(_plan(), outdir / "client.pcap")
    start = time.perf_counter()
    run._run(lambda plan: stream)
    took = time.perf_counter() - start
    assert run.bytes == len(data), (run.bytes, len(data))
    return len(data) / took / 1e6


def _plan(container: Container | None = None) -> Plan:
    c = container or Container("default", "web-1", "x", "node-a")
    return Plan("bench", "pod", "node-a", "eth0", c, "")


def bench_stream(api: Api, c: Container, pcap: Path, outdir: Path) -> float:
    run = PointRun(_plan(c), outdir / "stream.pcap")
    start = time.perf_counter()
    run._run(lambda plan: ExecStream(api, c.namespace, c.pod, c.name, ["cat", str(pcap)]))
    took = time.perf_counter() - start
    assert run.bytes == pcap.stat().st_size and run.error is None, run.error
    return run.bytes / took / 1e6


def flood(lab: Lab, seconds: float) -> int:
    target = "10.244.0.3"
    proc = subprocess.run(
        lab.in_ns("client", sys.executable, "-c", FLOOD, target, str(seconds)),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    return int(proc.stdout.strip() or 0)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    lab = Lab().up()
    tmp = Path(tempfile.mkdtemp(prefix="ktrace-bench-"))
    server = None
    sink = None
    try:
        kubeconfig = tmp / "kubeconfig"
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.lab", "--prefix", lab.prefix, "serve", "--kubeconfig",
             str(kubeconfig)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert server.stdout is not None
        server.stdout.readline()
        api = Api(KubeFlags(kubeconfig=str(kubeconfig)))
        pcap = tmp / "synthetic.pcap"
        synthetic_pcap(pcap, SIZE)
        print(f"payload: {pcap.stat().st_size / 1e6:.0f} MB of 1464-byte frames")
        print(f"client   {bench_client(pcap, tmp):8.0f} MB/s  (frames from memory -> file on disk)")
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            print(
                f"client   {bench_client(pcap, Path(shm)):8.0f} MB/s  (frames from memory -> "
                "file in RAM: ktrace's own cost)"
            )

        _, pods = resolve(api, "web-1", None)
        session = Session(api, "bench", pods, tmp, Options(), sys.stderr)
        c = session._ephemeral(pods[0])
        try:
            rates = [bench_stream(api, c, pcap, tmp) for _ in range(3)]
            print(
                f"stream   {max(rates):8.0f} MB/s  (best of 3: cat in the pod -> TLS "
                "WebSocket -> file)"
            )
        finally:
            session.cleanup()

        sink = subprocess.Popen(
            lab.in_ns("web-1", sys.executable, "-c", SINK), stdout=subprocess.PIPE, text=True
        )
        assert sink.stdout is not None
        sink.stdout.readline()
        local = tmp / "local.pcap"
        dump = subprocess.Popen(
            lab.in_ns("web-1", "tcpdump", "-i", "eth0", "-n", "-s", "0", "-w", str(local)),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        sent = flood(lab, seconds)
        dump.send_signal(2)
        _, err = dump.communicate(timeout=30)
        drops = re.search(r"(\d+) packets dropped by kernel", err)
        print(
            f"local    {local.stat().st_size / seconds / 1e6:8.0f} MB/s  tcpdump -w file in the "
            f"pod's netns, flood of {sent / seconds / 1e6:.0f} MB/s, "
            f"{drops.group(1) if drops else '?'} dropped by kernel"
        )
        bundle = tmp / "live"
        cap = subprocess.Popen(
            [sys.executable, "-m", "ktrace", "capture", "web-1", "--no-node", "-o", str(bundle),
             "--duration", str(seconds + 2), "--kubeconfig", str(kubeconfig)],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert cap.stderr is not None
        for line in cap.stderr:
            if "capturing at" in line:
                break
        sent = flood(lab, seconds)
        _, err = cap.communicate(timeout=120)
        size = (bundle / "points" / "web-1-eth0.pcap").stat().st_size
        manifest = (bundle / "manifest.json").read_text()
        drops = re.search(r'"kernel_drops": (\d+)', manifest)
        print(
            f"live     {size / seconds / 1e6:8.0f} MB/s  kubectl ktrace capture of the same flood "
            f"({sent / seconds / 1e6:.0f} MB/s sent), {drops.group(1) if drops else '?'} dropped "
            "by kernel"
        )
    finally:
        if sink is not None:
            sink.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
