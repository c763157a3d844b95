"""Scenarios run in the lab and recorded as capture bundles: tcpdump at every point on the
path, node metadata, inventory and manifest, as `ktrace analyze` reads them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ktrace.bundle.manifest import (
    Manifest,
    PointSpec,
    write_json,
    write_manifest,
    write_private,
)
from ktrace.bundle.node_evidence import CLOCK_MARK, KFREE_SKB_FILTER, SNAPSHOT
from ktrace.model import PointKind
from tests.lab import topology as topo
from tests.lab.lab import GRPC_PORT, Lab, LabError

RESOLVE = """
import socket, time
for name in NAMES:
    t = time.monotonic()
    try:
        found = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as exc:
        found = str(exc)
    print(f"resolve {name}: {found} in {time.monotonic() - t:.2f}s", flush=True)
"""
FETCH = """
import urllib.request, time
for path in PATHS:
    t = time.monotonic()
    try:
        body = urllib.request.urlopen(f"http://{HOST}" + path, timeout=TIMEOUT).read()
        print(f"GET {path}: {len(body)} bytes {body[:30]!r} in {time.monotonic() - t:.2f}s")
    except Exception as exc:
        print(f"GET {path}: failed ({exc}) after {time.monotonic() - t:.2f}s", flush=True)
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[str, ...]
    code: str
    shows: str
    ipv6: bool = False  # needs a dual-stack shape
    runs_in: str = "client"  # the lab namespace the code runs in (a pod, a node, outside)
    extra_points: tuple[str, ...] = ()  # ids from EXTRA_POINTS, besides the usual ones
    target: str = "pod/client"
    # the code starts before the capture, prints READY once its connections are open, and
    # goes on when a line comes on its stdin: the capture begins mid-connection
    begun_before: bool = False


def resolve(*names: str) -> str:
    return f"NAMES = {list(names)!r}\n" + RESOLVE


def fetch(*paths: str, timeout: float = 3, host: str = "web") -> str:
    return f"PATHS = {list(paths)!r}\nTIMEOUT = {timeout}\nHOST = {host!r}\n" + FETCH


KEEPALIVE = """
import http.client, time
for connection in range(2):  # the round-robin sends the first to web-1, the second to web-2
    conn = http.client.HTTPConnection(HOST, 80, timeout=TIMEOUT)
    for path in PATHS:
        t = time.monotonic()
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            print(f"GET {path}: {answer.status} {len(body)} bytes in {time.monotonic() - t:.2f}s")
        except Exception as exc:
            print(f"GET {path}: failed ({exc!r}) after {time.monotonic() - t:.2f}s", flush=True)
            break
    conn.close()
"""
GRPC = """
import grpc
with grpc.insecure_channel("WEB2:PORT") as channel:
    say = channel.unary_unary("/ktrace.lab.Echo/Say")
    for k in range(3):
        try:
            print("Say:", say(b"hello %d" % k, timeout=3))
        except grpc.RpcError as exc:
            print("Say failed:", exc.code(), exc.details())
"""


READY = "ready: the capture may start"
GRPC_MIDWAY = """
import grpc, sys
with grpc.insecure_channel("WEB2:PORT") as channel:
    say = channel.unary_unary("/ktrace.lab.Echo/Say")
    try:  # opens the connection, whatever the answer
        print("Say (before the capture):", say(b"before", timeout=3))
    except grpc.RpcError as exc:
        print("Say (before the capture) failed:", exc.code(), exc.details())
    print("READY", flush=True)
    sys.stdin.readline()
    for k in range(3):
        try:
            print("Say:", say(b"hello %d" % k, timeout=3))
        except grpc.RpcError as exc:
            print("Say failed:", exc.code(), exc.details())
"""


def keepalive(*paths: str, timeout: float = 5, host: str = "web") -> str:
    """Two keep-alive connections to `host`, each asking for every path in turn."""
    return f"PATHS = {list(paths)!r}\nTIMEOUT = {timeout}\nHOST = {host!r}\n" + KEEPALIVE


def grpc_calls(code: str = GRPC) -> str:
    """Three gRPC calls (HTTP/2, prior knowledge) to web-2's server, across the overlay."""
    web2 = next(p.ip for p in topo.PODS if p.name == "web-2")
    return code.replace("WEB2", web2).replace("PORT", str(GRPC_PORT)).replace("READY", READY)


STALL = """
import socket, struct
s = socket.create_connection(("10.244.1.2", 8080), timeout=3)
s.settimeout(3)
sent = 0
try:
    while sent < 4_000_000:
        sent += s.send(b"x" * 65536)
except OSError as exc:
    print(f"send stalled after {sent} bytes ({exc})")
# abort (RST) rather than close: an orphaned socket with unsent data would go on probing the
# zero window into the scenarios recorded after this one
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"""
REFUSED = """
import socket
try:
    socket.create_connection(("10.244.1.2", 81), timeout=3)
except OSError as exc:
    print(f"connect to web-2:81: {exc}")
"""

NODE_A, NODE_B = (n.ip for n in topo.NODES)
WEB, EDGE = (s for s in topo.SERVICES if s.name in ("web", "edge"))
WEB_NODE_PORT, EDGE_NODE_PORT = WEB.ports[0].node_port, EDGE.ports[0].node_port

SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "healthy",
            (),
            resolve("web") + fetch("/", "/"),
            "client resolves web, then two HTTP calls to the ClusterIP: the first DNAT-ed to "
            "web-1 on the same node, the second to web-2 across the VXLAN overlay",
        ),
        Scenario(
            "http-keepalive",
            (),
            keepalive("/", "/index.html", "/big.bin") + grpc_calls(),
            "two HTTP/1.1 keep-alive connections to the web ClusterIP (three requests each, "
            "the first connection to web-1, the second to web-2 across the overlay) and three "
            "gRPC calls over HTTP/2 to web-2: all answered in time",
        ),
        Scenario(
            "http-503",
            ("web-503",),
            keepalive("/", "/index.html", "/") + grpc_calls(),
            "web-2 sheds load: its three answers on the second keep-alive connection are 503 "
            "while web-1 answers 200, and its gRPC calls fail UNAVAILABLE",
        ),
        Scenario(
            "grpc-midway",
            (),
            grpc_calls(GRPC_MIDWAY),
            "a gRPC channel to web-2 opened (preface, SETTINGS, a first call) before the "
            "capture began, as long-lived gRPC connections are: its three calls in the "
            "capture read from frames found mid-connection, what the header table held "
            "from before (the method's path, the gRPC status) unknown",
            begun_before=True,
        ),
        Scenario(
            "http-slow",
            ("web-slow",),
            keepalive("/", "/index.html"),
            "web-2 answers 800 ms late (its server, not the network): web-1's answers on the "
            "first connection take a millisecond",
        ),
        Scenario(
            "http-reset",
            ("web-reset",),
            keepalive("/big.bin"),
            "web-2 resets the connection after the head and 3 kB of a 100 kB answer, as a "
            "crashing worker does",
        ),
        Scenario(
            "dns-search",
            (),
            resolve("web", "web.default", "kube-dns.kube-system", "example.com", "nothing-here"),
            "ndots:5 search-path expansion: cluster names, an external name that costs "
            "three NXDOMAINs before its absolute query, and a name that exists nowhere",
        ),
        Scenario(
            "policy-drop",
            ("policy-drop",),
            fetch("/", "/"),
            "a NetworkPolicy-style DROP on node-b: the call to web-1 works, the SYN to web-2 "
            "crosses the overlay (seen on node-b eth0 inside VXLAN) and never reaches web-2",
        ),
        Scenario(
            "no-endpoints",
            ("no-endpoints",),
            fetch("/"),
            "the web Service has no endpoints: kube-proxy's REJECT answers the SYN to the "
            "ClusterIP with ICMP port unreachable",
        ),
        Scenario(
            "mtu-blackhole",
            ("mtu-blackhole",),
            fetch("/big.bin", "/big.bin", timeout=4),
            "the underlay is smaller than the overlay assumes: the download from web-1 (same "
            "node) works, from web-2 the handshake works but full-size segments vanish "
            "after encapsulation",
        ),
        Scenario(
            "dns-aaaa-drop",
            ("dns-aaaa-drop",),
            resolve("web.default.svc.cluster.local."),
            "responses to AAAA queries are lost (the conntrack race symptom): A answered at "
            "once, AAAA retried after the resolver's 5 s timeout",
        ),
        Scenario(
            "dns-slow",
            ("dns-slow",),
            resolve("web"),
            f"every DNS response delayed {800} ms at the DNS pod",
        ),
        Scenario(
            "dns-upstream-down",
            ("dns-upstream-down",),
            resolve("web", "example.com"),
            "the upstream resolver is unreachable: cluster names resolve, external names time out",
        ),
        Scenario(
            "kube-proxy-down",
            ("kube-proxy-down",),
            fetch("/", timeout=2, host="10.96.0.20"),
            "kube-proxy is not running on node-a: the SYN to the web ClusterIP leaves the "
            "node un-DNAT-ed, towards the underlay's default gateway, and nothing answers",
        ),
        Scenario(
            "zero-window",
            (),
            STALL,
            "web-2 runs an application that accepts a connection and never reads it: the "
            "client fills the receive window and web-2 advertises a zero window",
        ),
        Scenario(
            "refused",
            (),
            REFUSED,
            "the client connects to a port of web-2 where nothing listens: RST",
        ),
        Scenario(
            "healthy-v6",
            (),
            fetch("/", "/", host=f"[{topo.v6(topo.SERVICES[1].cluster_ip)}]"),
            "two HTTP calls to web's IPv6 ClusterIP: DNAT-ed by ip6tables to web-1, then to "
            "web-2 on the other node",
            ipv6=True,
        ),
        Scenario(
            "policy-drop-v6",
            ("policy-drop",),
            fetch("/", "/", host=f"[{topo.v6(topo.SERVICES[1].cluster_ip)}]"),
            "the NetworkPolicy-style DROP on node-b for IPv6: the call to web-1 works, the SYN "
            "to web-2 reaches node-b and never web-2",
            ipv6=True,
        ),
        Scenario(
            "external",
            (),
            fetch("/", "/", host=f"{NODE_A}:{WEB_NODE_PORT}")
            + fetch("/", host=f"{NODE_B}:{WEB_NODE_PORT}")
            + fetch("/", host=WEB.lb_ip),
            "a client outside the cluster calls web's NodePort on node-a twice (web-1 on that "
            "node, then web-2 on the other: DNAT and SNAT to the node's tunnel address, same "
            "NIC in and out), once on node-b (to web-1 across the nodes), and once its "
            "LoadBalancer address (announced by node-a): externalTrafficPolicy Cluster",
            runs_in="outside",
            extra_points=("outside-eth0",),
            target="svc/web",
        ),
        Scenario(
            "external-local",
            (),
            fetch("/healthz", timeout=2, host=f"{NODE_A}:{EDGE.health_port}")
            + fetch("/healthz", timeout=2, host=f"{NODE_B}:{EDGE.health_port}")
            + fetch("/", host=f"{NODE_B}:{EDGE_NODE_PORT}")
            + fetch("/", host=EDGE.lb_ip),
            "the outside client health-checks edge (externalTrafficPolicy Local, its one "
            "endpoint web-2 on node-b) on both nodes (node-a: 503, no local endpoint; node-b: "
            "200), then calls it through node-b's NodePort and its LoadBalancer address: DNAT "
            "only, web-2 sees the client's own address",
            runs_in="outside",
            target="svc/edge",
        ),
        Scenario(
            "health-check-down",
            ("health-check-down",),
            fetch("/healthz", timeout=2, host=f"{NODE_A}:{EDGE.health_port}")
            + fetch("/healthz", timeout=2, host=f"{NODE_B}:{EDGE.health_port}"),
            "a load balancer health-checks edge on both nodes: node-a answers 503 (no local "
            "endpoint, as designed), node-b, which has the endpoint, refuses the connection "
            "(kube-proxy is not running there), so no node passes",
            runs_in="outside",
            target="svc/edge",
        ),
        Scenario(
            "local-no-endpoint",
            (),
            fetch("/", timeout=2, host=f"{NODE_A}:{EDGE_NODE_PORT}"),
            "the outside client calls edge's NodePort on node-a, which has no endpoint of it: "
            "with externalTrafficPolicy Local kube-proxy drops the SYN there",
            runs_in="outside",
            extra_points=("outside-eth0",),
            target="svc/edge",
        ),
        Scenario(
            "nodeport-blocked",
            ("nodeport-blocked",),
            fetch("/", timeout=2, host=f"{NODE_B}:{WEB_NODE_PORT}"),
            "a host firewall rule on node-b drops what arrives for web's NodePort: the SYN "
            "reaches node-b's NIC and goes no further",
            runs_in="outside",
            target="svc/web",
        ),
        Scenario(
            "asymmetric-return",
            ("no-external-snat",),
            fetch("/", "/", timeout=2, host=f"{NODE_A}:{WEB_NODE_PORT}"),
            "external traffic is not masqueraded: the call through node-a to web-1 works, "
            "the one forwarded to web-2 is answered by node-b straight to the client, from "
            "the pod's address the client never called, and the client resets it",
            runs_in="outside",
            extra_points=("outside-eth0",),
            target="svc/web",
        ),
        Scenario(
            "hairpin",
            (),
            fetch("/", "/"),
            "web-1 calls its own Service: the first call is DNAT-ed back to web-1 itself "
            "(hairpin, masqueraded to the node's bridge address), the second to web-2",
            runs_in="web-1",
            extra_points=("web-1-eth0", "web-1-veth"),
            target="pod/web-1",
        ),
        Scenario(
            "host-network",
            (),
            fetch("/", "/", host=WEB.cluster_ip),
            "a hostNetwork pod on node-a (the node's own address) calls web's ClusterIP "
            "twice: to web-1 on its node, then to web-2, masqueraded as off-cluster traffic",
            runs_in="node-a",
            target="pod/agent",
        ),
    )
}


def scenarios_for(lab: Lab) -> list[str]:
    """The scenarios this lab can run: the IPv6 ones only on a dual-stack shape."""
    return [n for n, s in SCENARIOS.items() if lab.shape.dual_stack or not s.ipv6]


@dataclass(frozen=True)
class Where:
    id: str
    kind: str
    ns: str  # lab namespace short name
    interface: str
    node: str
    pod: str | None = None
    namespace: str | None = None


def capture_points(extra: tuple[str, ...] = ()) -> list[Where]:
    client, web2, dns = topo.pod("client"), topo.pod("web-2"), topo.pod("coredns")
    web1 = topo.pod("web-1")
    optional = {
        # a capture on the machine outside the cluster: what a user can add by hand (tcpdump
        # on their laptop or load balancer), never a point kubectl ktrace places
        "outside-eth0": Where("outside-eth0", "host", "outside", "eth0", ""),
        "web-1-eth0": Where("web-1-eth0", "pod", "web-1", "eth0", "node-a", "web-1", "default"),
        "web-1-veth": Where(
            "web-1-veth", "veth", "node-a", web1.veth, "node-a", "web-1", "default"
        ),
    }
    return [optional[e] for e in extra] + [
        Where("client-eth0", "pod", "client", "eth0", "node-a", "client", "default"),
        Where("client-veth", "veth", "node-a", client.veth, "node-a", "client", "default"),
        Where("node-a-eth0", "node", "node-a", "eth0", "node-a"),
        Where("node-b-eth0", "node", "node-b", "eth0", "node-b"),
        Where("web-2-veth", "veth", "node-b", web2.veth, "node-b", "web-2", "default"),
        Where("web-2-eth0", "pod", "web-2", "eth0", "node-b", "web-2", "default"),
        Where("coredns-eth0", "pod", "coredns", "eth0", "node-b", dns.name, dns.namespace),
    ]


STATS = re.compile(r"(\d+) packets (captured|received by filter|dropped by kernel)")


@contextlib.contextmanager
def tcpdumps(lab: Lab, points: list[Where], outdir: Path) -> Iterator[dict[str, dict[str, int]]]:
    """tcpdump at every point, each writing to a file we create 0600; stats filled at exit."""
    procs = []
    stats: dict[str, dict[str, int]] = {}
    try:
        for p in points:
            fd = os.open(outdir / f"{p.id}.pcap", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                proc = subprocess.Popen(
                    # immediate mode: without it TPACKET_V3 holds packets in a ring block
                    # until a timeout, and a short scenario could end before any arrive
                    lab.in_ns(
                        p.ns,
                        "tcpdump",
                        "-i",
                        p.interface,
                        "-n",
                        "-U",
                        "-s",
                        "0",
                        "--immediate-mode",
                        "--time-stamp-precision=nano",
                        "-w",
                        "-",
                    ),
                    stdout=out,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            procs.append((p, proc))
            assert proc.stderr is not None
            line = ""
            while "listening on" not in line:
                line = proc.stderr.readline().decode()
                if not line:
                    raise LabError(f"tcpdump did not start on {p.id}")
        yield stats
        time.sleep(0.5)  # the last packets of the scenario
    finally:
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        for p, proc in procs:
            _, err = proc.communicate(timeout=10)
            stats[p.id] = {
                m.group(2).split()[0]: int(m.group(1)) for m in STATS.finditer(err.decode())
            }


def node_metadata(lab: Lab, bundle: Path) -> None:
    for node in topo.NODES:
        for name, cmd in (
            ("ip-addr", ["ip", "-d", "addr"]),
            ("ip-link", ["ip", "-d", "link"]),
            ("ip-route", ["ip", "route", "show", "table", "all"]),
            ("ip-neigh", ["ip", "neigh"]),
            ("bridge-fdb", ["bridge", "fdb", "show"]),
            ("iptables-save", ["iptables-save"]),
            ("nft-ruleset", ["nft", "list", "ruleset"]),
            ("conntrack", ["conntrack", "-L", "-o", "extended"]),
        ):
            path = bundle / "nodes" / node.name / f"{name}.txt"
            path.parent.mkdir(exist_ok=True, mode=0o700)
            write_private(path, lab.exec(node.name, *cmd, check=False))


TRACEFS = Path("/sys/kernel/tracing")


def counters(lab: Lab, bundle: Path, when: str) -> None:
    """Each node's counters (rules, conntrack, nstat, links) into counters/<when>/."""
    for node in topo.NODES:
        out = bundle / "nodes" / node.name / "counters" / when
        for level in (out.parent.parent, out.parent, out):  # each 0700, as the bundle's are
            level.mkdir(exist_ok=True, mode=0o700)
        for name, cmd in SNAPSHOT.items():
            write_private(out / name, lab.exec(node.name, *cmd, check=False))


@contextlib.contextmanager
def kernel_drops(bundle: Path) -> Iterator[None]:
    """skb:kfree_skb over the scenario, in a tracefs instance of its own. The lab's nodes
    share this machine's kernel, so every node's file holds every namespace's drops (each
    real node has its own); where tracefs cannot be had, evidence.txt says so."""
    instance = TRACEFS / "instances" / f"ktrace-lab-{os.getpid()}"
    why = None
    try:
        if not (TRACEFS / "events").is_dir():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True,
                           capture_output=True)  # fmt: skip
        instance.mkdir()
        (instance / "trace_clock").write_text("mono")
        event = instance / "events" / "skb" / "kfree_skb"
        (event / "filter").write_text(KFREE_SKB_FILTER)
        (event / "enable").write_text("1")
        (instance / "trace_marker").write_text(f"{CLOCK_MARK} {time.time_ns()}")
    except (OSError, subprocess.CalledProcessError) as exc:
        why = f"kernel drop reasons not recorded: tracefs unavailable ({exc})"
    try:
        yield
    finally:
        trace = ""
        if why is None:
            (instance / "events" / "skb" / "kfree_skb" / "enable").write_text("0")
            trace = (instance / "trace").read_text(errors="replace")
            instance.rmdir()
        for node in topo.NODES:
            where = bundle / "nodes" / node.name
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            if why is None:
                write_private(where / "kfree_skb.txt", trace)
            else:
                write_private(where / "evidence.txt", why + "\n")


def record(lab: Lab, scenario: str, bundle: Path) -> Path:
    try:
        spec = SCENARIOS[scenario]
    except KeyError:
        raise LabError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}") from None
    if spec.ipv6 and not lab.shape.dual_stack:
        raise LabError(f"{scenario} needs a dual-stack lab: --shape native")
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True, mode=0o700)
    points_dir = bundle / "points"
    points_dir.mkdir(mode=0o700)
    points = capture_points(spec.extra_points)
    for fault in spec.faults:
        lab.fault(fault, True)
    # as ktrace takes it: the cluster's state when the capture starts (faults on)
    inventory = topo.inventory(lab.shape.dual_stack, lab.faults())
    try:
        lab.reset_balancing()
        (bundle / "nodes").mkdir(mode=0o700)
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(_begun(lab, spec)) if spec.begun_before else None
            stats = stack.enter_context(tcpdumps(lab, points, points_dir))
            stack.enter_context(kernel_drops(bundle))
            counters(lab, bundle, "start")
            if opened is None:
                output = lab.client_python(spec.code, timeout=60, ns=spec.runs_in)
            else:
                output = opened.communicate("go\n", timeout=60)[0]
                if opened.returncode:
                    raise LabError(f"{spec.name}: the client exited {opened.returncode}")
            counters(lab, bundle, "end")
        node_metadata(lab, bundle)
    finally:
        for fault in spec.faults:
            lab.fault(fault, False)
    manifest = Manifest(
        points=tuple(
            PointSpec(
                id=p.id,
                kind=PointKind(p.kind),
                file=f"points/{p.id}.pcap",
                node=p.node or None,
                namespace=p.namespace,
                pod=p.pod,
                interface=p.interface,
                linktype=1,
                packets=stats[p.id].get("captured"),
                kernel_drops=stats[p.id].get("dropped"),
            )
            for p in points
        ),
        cluster="ktrace-lab",
        target=spec.target,
    )
    write_manifest(bundle, manifest)
    write_json(bundle / "inventory.json", inventory)
    write_json(
        bundle / "scenario.json",
        {
            "scenario": spec.name,
            "shape": lab.shape.name,
            "faults": list(spec.faults),
            "shows": spec.shows,
            "client_output": output.splitlines(),
        },
    )
    return bundle


@contextlib.contextmanager
def _begun(lab: Lab, spec: Scenario) -> Iterator[subprocess.Popen[str]]:
    """The scenario's client, started and waited for until its connections are open."""
    proc = subprocess.Popen(
        lab.in_ns(spec.runs_in, sys.executable, "-c", spec.code),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        before = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == READY:
                break
            before.append(line)
        else:
            raise LabError(f"{spec.name}: the client ended before it was ready: {before}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def describe(bundle: Path) -> str:
    data = json.loads((bundle / "scenario.json").read_text())
    return f"{data['scenario']}: {data['shows']}"
