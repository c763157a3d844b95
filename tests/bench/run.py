"""Benchmark: ktrace's index + flow table and the whole `ktrace analyze` against tshark's
conversation table, a dpkt loop and scapy, on the same >= 1M-packet capture, in one run; then
`ktrace analyze` on 20M packets built from it (tests/bench/scale.py). Two kinds of traffic by
default: bench.pcap (bulk TCP, keep-alive HTTP, a DNS storm) and busy.pcap (a busy service's
node: bulk TCP, short non-keep-alive HTTP, sequential DNS).

    python -m tests.bench.run [CAPTURE...]   (without CAPTURE, root records the two from real
                                              traffic between network namespaces into bench-data/)
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.samples.record import REPO

T = TypeVar("T")
DEFAULT = REPO / "bench-data" / "bench.pcap"
BUSY = REPO / "bench-data" / "busy.pcap"
COMMANDS = (("ktrace analyze FILE (text)", ()), ("ktrace analyze FILE --json", ("--json",)))
BUSY_SECONDS = 60  # about a million packets
BUSY_BUFFER_KIB = 65536  # tcpdump keeps up: the benchmark measures ktrace, not loss
SCAPY_SUBSET = 20_000
SCALE_PACKETS = 20_000_000


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[float, T]:
    """Best of `repeat` runs: the machine is shared, the minimum is the least disturbed."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def run_ktrace(path: Path, workers: int | None) -> tuple[int, int, int]:
    """Index + flow table: what `ktrace analyze` needs before DNS and checks."""
    from ktrace.analysis.flows import build_flows
    from ktrace.decode.index import build_index

    with build_index([path], workers=workers) as index:
        flows = build_flows(index.columns, len(index.points))
        return len(index), len(flows), index.columns.nbytes


def run_http(path: Path) -> tuple[float, int, int]:
    """The HTTP and TLS step of the analysis alone, on a built index: (seconds, best of 3;
    transactions; connections read)."""
    from ktrace.analysis.flows import build_flows
    from ktrace.analysis.http import http_transactions
    from ktrace.decode.index import build_index

    with build_index([path]) as index:
        flows = build_flows(index.columns, len(index.points))
        seconds, found = timed(lambda: http_transactions(index, flows), repeat=3)
        return seconds, len(found.transactions), found.connections


def run_analyze(path: Path, *flags: str) -> tuple[float, int]:
    """The whole `ktrace analyze` as a user runs it: (seconds, peak anonymous memory in bytes
    of it and any children, sampled every 10 ms: what it holds beside the mapped capture).
    Bytecode is written as an installed package has it; the first run warms it. The end is
    timed when the process is reaped, not at the next sample (up to 10 ms late)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-m", "ktrace", "analyze", str(path), "-q", *flags]
    warm = [*command[:4], str(REPO / "pcaps" / "http-dns.pcap"), *command[5:]]
    subprocess.run(warm, env=env, check=True, capture_output=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    ended = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not ended.is_set():
            peak = max(peak, _anon(proc.pid))
            ended.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    status = proc.wait()
    seconds = time.perf_counter() - start
    ended.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"ktrace analyze {' '.join(flags)} failed")
    return seconds, peak


def best_analyze(path: Path, *flags: str, repeat: int = 3) -> tuple[float, int]:
    """The fastest of `repeat` runs, with its peak memory."""
    return min((run_analyze(path, *flags) for _ in range(repeat)), key=lambda r: r[0])


def _anon(pid: int) -> int:
    """Anonymous memory of a process and its children, from the kernel's counters in
    /proc/PID/status: smaps_rollup walks every page table under the process's memory lock,
    and sampled every 10 ms it doubled the time of the process it measured."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1]) * 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_anon(int(child)) for child in children)


def run_tshark(path: Path) -> int:
    subprocess.run(
        ["tshark", "-n", "-q", "-r", str(path), "-z", "conv,tcp", "-z", "conv,udp"],
        check=True,
        capture_output=True,
    )
    return 0


def run_dpkt(path: Path) -> int:
    import dpkt

    convs: dict[tuple, int] = {}
    n = 0
    with path.open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            n += 1
            try:
                ip = dpkt.ethernet.Ethernet(buf).data
            except (dpkt.UnpackError, IndexError):
                continue
            if not isinstance(ip, dpkt.ip.IP):
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) else (0, 0)
            key = (ip.p, *sorted(((ip.src, ports[0]), (ip.dst, ports[1]))))
            convs[key] = convs.get(key, 0) + 1
    return n


def run_scapy(path: Path) -> int:
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers.inet import IP
    from scapy.utils import PcapReader

    convs: dict[tuple, int] = {}
    n = 0
    for pkt in PcapReader(str(path)):
        n += 1
        if IP in pkt:
            ip = pkt[IP]
            key = (
                ip.proto,
                ip.src,
                ip.dst,
                getattr(ip.payload, "sport", 0),
                getattr(ip.payload, "dport", 0),
            )
            convs[key] = convs.get(key, 0) + 1
        if n >= SCAPY_SUBSET:
            break
    return n


CORRELATE_POINTS = 4
CORRELATE_PACKETS = 250_000


def correlation_inputs(path: Path) -> list[Path]:
    """The capture's first 250k packets as seen at 4 points, each 30 µs further on."""
    from ktrace.decode.index import build_index
    from ktrace.pcap.writer import PcapWriter

    out = [path.parent / f"point{k}.pcap" for k in range(CORRELATE_POINTS)]
    if all(p.exists() for p in out):
        return out
    with build_index([path], workers=1) as index:
        n = min(CORRELATE_PACKETS, len(index))
        ts = index.columns.ts[:n].tolist()
        for k, target in enumerate(out):
            with PcapWriter(target, index.points[0].linktype) as w:
                for row in range(n):
                    w.write(ts[row] + k * 30_000, index.packet_bytes(row))
    return out


def run_correlation(paths: list[Path]) -> tuple[float, float, int, int]:
    """(seconds to index + flows, seconds to correlate + paths, packets, conversations)."""
    from ktrace.analysis.correlate import correlate
    from ktrace.analysis.flows import build_flows
    from ktrace.analysis.names import Names
    from ktrace.analysis.paths import conversation_paths
    from ktrace.decode.index import build_index

    start = time.perf_counter()
    with build_index(paths) as index:
        flows = build_flows(index.columns, len(index.points))
        mid = time.perf_counter()
        cor = correlate(index.columns, flows, index.points, index.v6)
        paths_found = conversation_paths(index, flows, cor, Names())
        end = time.perf_counter()
        return mid - start, end - mid, len(index), len(paths_found)


def main() -> None:
    from ktrace.perf import tune_process

    tune_process()
    paths = [Path(a) for a in sys.argv[1:]] or [DEFAULT, BUSY]
    for path in paths:
        if not path.exists():
            record_capture(path)
    for path in paths:
        measure(path)
        measure_scaled(path)
    points = correlation_inputs(paths[0])
    best = min((run_correlation(points) for _ in range(3)), key=lambda r: r[1])
    t_index, t_corr, n, convs = best
    print(
        f"\ncorrelation, {len(points)} points x {n // len(points):,} packets (best of 3): "
        f"index + flows {t_index:.2f} s, correlate + paths {t_corr:.2f} s "
        f"({n / t_corr:,.0f} packets/s), {convs:,} conversations across points"
    )


def record_capture(path: Path) -> None:
    """The default captures, from real traffic between two network namespaces (as root):
    bench.pcap (bulk TCP, keep-alive HTTP, DNS as fast as it goes) or busy.pcap (a busy
    service's node: bulk TCP in 1200-byte segments, ~10,000 short non-keep-alive HTTP
    requests, ~37,000 sequential DNS lookups)."""
    from tests.bench.traffic import record, record_busy

    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"recording {path} from real traffic (about a minute)...", flush=True)
    if path.name == BUSY.name:
        record_busy(path, BUSY_SECONDS, buffer_kib=BUSY_BUFFER_KIB)
    else:
        record(path, bulk_bytes=1_000_000_000)


def measure(path: Path) -> None:
    """Index + flows against tshark, dpkt and scapy, then the whole command, on one capture."""
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    from ktrace.decode.index import default_workers
    from ktrace.pcap import hot

    walker = "C walker" if hot.walk_c is not None else "Python walker"
    workers = default_workers()
    t_par, (packets, flows, nbytes) = timed(lambda: run_ktrace(path, None), repeat=3)
    results = [(f"ktrace index+flows (default: {workers} threads)", t_par, packets)]
    one_or_more = "thread" if workers != 1 else "threads"
    other = 2 if workers == 1 else 1
    t_other, _ = timed(lambda: run_ktrace(path, other), repeat=3)
    results.append((f"ktrace index+flows ({other} {one_or_more})", t_other, packets))
    if hot.walk_c is not None:
        from ktrace.kernels import twins_only

        hot.walk = hot.walk_python
        try:
            with twins_only():
                t_py, _ = timed(lambda: run_ktrace(path, workers), repeat=1)
        finally:
            hot.walk = hot.walk_c
        results.append(("ktrace, no C (no compiler at install)", t_py, packets))
    t_tshark = None
    if shutil.which("tshark"):
        t_tshark, _ = timed(lambda: run_tshark(path))
        results.append(("tshark -z conv,tcp -z conv,udp", t_tshark, packets))
    whole = [(label, *best_analyze(path, *flags)) for label, flags in COMMANDS]
    t, n = timed(lambda: run_dpkt(path))
    results.append(("dpkt loop, 5-tuple table", t, n))
    t, n = timed(lambda: run_scapy(path))
    results.append((f"scapy, first {n} packets (extrapolated)", t * packets / n, packets))

    print(f"\ncapture: {path} — {packets:,} packets, {size / 1e9:.2f} GB, {flows:,} flows")
    print(
        f"index: {nbytes / packets:.1f} bytes/packet, no payloads (read back by offset); "
        f"{walker}, {os.cpu_count()} cores"
    )
    print(
        f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}"
        " MB (includes the page cache of the mapped capture)\n"
    )
    print("ktrace: best of 3 runs; the others: one run each")
    print(f"{'':44} {'seconds':>9} {'packets/s':>12} {'ktrace is':>10}")
    for name, seconds, n in results:
        ratio = seconds / t_par
        print(f"{name:44} {seconds:9.2f} {n / seconds:12,.0f} {ratio:9.1f}x")

    print("\nthe whole command, as a user runs it (best of 3; peak anonymous memory, beside the")
    print("mapped capture):")
    print(f"{'':44} {'seconds':>9} {'vs tshark':>10} {'peak anon':>10} {'B/packet':>9}")
    for label, seconds, peak in whole:
        vs = f"{t_tshark / seconds:9.1f}x" if t_tshark else "-"
        print(f"{label:44} {seconds:9.2f} {vs:>10} {peak / 1e6:8.0f} MB {peak / packets:9.0f}")

    t_http, transactions, connections = run_http(path)
    print(
        f"of which HTTP and TLS ({transactions:,} requests on {connections:,} connections): "
        f"{t_http:.2f} s, {100 * t_http / whole[0][1]:.0f}% of `ktrace analyze FILE`"
    )


def measure_scaled(path: Path) -> None:
    """The whole command on SCALE_PACKETS built from the capture (tests/bench/scale.py)."""
    scaled = path.parent / f"{path.stem}-{SCALE_PACKETS // 1_000_000}m.pcap"
    if not scaled.exists():
        from tests.bench.scale import build

        print(f"\nbuilding {scaled} from {path} ...", flush=True)
        build(path, scaled, SCALE_PACKETS)
    subprocess.run(["cat", str(scaled)], stdout=subprocess.DEVNULL, check=True)  # warm it too
    print(f"\n{SCALE_PACKETS:,} packets ({scaled.name}: {path.name} repeated with shifted times,")
    print("ports and IP IDs, cut to 192 bytes a packet; one run each):")
    print(f"{'':44} {'seconds':>9} {'packets/s':>12} {'peak anon':>10} {'B/packet':>9}")
    for label, flags in COMMANDS:
        seconds, peak = run_analyze(scaled, *flags)
        print(
            f"{label.replace('FILE', scaled.name):44} {seconds:9.2f} "
            f"{SCALE_PACKETS / seconds:12,.0f} {peak / 1e6:8.0f} MB {peak / SCALE_PACKETS:9.0f}"
        )


if __name__ == "__main__":
    main()
