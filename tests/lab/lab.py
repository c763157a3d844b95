"""Bring the lab up and down, switch faults, and record capture bundles from it.

Everything lives in network namespaces named `<prefix>-*`; nothing touches the host's own
interfaces. State (process ids, DNS fault switches, logs) is kept in /run/ktrace-lab/<prefix>,
so `down` can clean up after a crash, and `down` with no prefix removes every lab it finds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tests.lab import proxy
from tests.lab import topology as topo

STATE_ROOT = Path("/run/ktrace-lab")
ETC_NETNS = Path("/etc/netns")
REPO = Path(__file__).resolve().parents[2]
PREFIX_START = "ktl"
FAULTS = (
    "policy-drop",
    "no-endpoints",
    "mtu-blackhole",
    "dns-aaaa-drop",
    "dns-slow",
    "dns-upstream-down",
    "kube-proxy-down",
    "nodeport-blocked",
    "no-external-snat",
    "health-check-down",
    "web-503",
    "web-slow",
    "web-reset",
)
# the application faults: web-2's HTTP and gRPC servers read them before every request
WEB_FAULTS = {
    "web-503": {"status": 503},
    "web-slow": {"delay_ms": 800},
    "web-reset": {"reset": True},
}
GRPC_PORT = 50051
RULE_FAULTS = (
    "policy-drop",
    "no-endpoints",
    "kube-proxy-down",
    "nodeport-blocked",
    "no-external-snat",
)
SLOW_DNS_MS = 800
STALLED_PORT = 8080
SINK = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.bind(("0.0.0.0", {STALLED_PORT})); s.listen(8); print("ready", flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)  # never read: the receive window fills and closes
"""


class LabError(RuntimeError):
    pass


def _atomic_json(path: Path, value: object) -> None:
    """Written whole or not at all: the servers read it before every request."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _sh(*cmd: str, check: bool = True, stdin: str | None = None) -> str:
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables-restore", "tcpdump", "dnsmasq", "bridge", "ethtool", "conntrack"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool} (tests/run.sh installs it)"
    name = f"{PREFIX_START}probe{os.getpid()}"
    try:
        _sh("ip", "netns", "add", name)
    except LabError as exc:
        return f"cannot create network namespaces here: {exc}"
    _sh("ip", "netns", "del", name, check=False)
    return None


class Lab:
    def __init__(self, prefix: str | None = None, shape: str | None = None) -> None:
        self.prefix = prefix or f"{PREFIX_START}{secrets.token_hex(2)}"
        self.state = STATE_ROOT / self.prefix
        if shape is None:  # a running lab keeps the shape it was built with
            try:
                shape = json.loads((self.state / "state.json").read_text()).get("shape")
            except (OSError, ValueError):
                shape = None
        if (shape or topo.DEFAULT_SHAPE) not in topo.SHAPES:
            raise LabError(f"unknown shape {shape!r}; known: {', '.join(topo.SHAPES)}")
        self.shape = topo.SHAPES[shape or topo.DEFAULT_SHAPE]

    # --- naming -------------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def pod_ns(self, pod: str) -> str:
        return self.ns(pod)

    def node_ns(self, node: str) -> str:
        return self.ns(node)

    def exec(self, ns: str, *cmd: str, check: bool = True, stdin: str | None = None) -> str:
        return _sh("ip", "netns", "exec", self.ns(ns), *cmd, check=check, stdin=stdin)

    def in_ns(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(ns), *cmd]

    # --- lifecycle ----------------------------------------------------------------------------
    def up(self) -> Lab:
        reason = unavailable()
        if reason:
            raise LabError(reason)
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "state.json").write_text(
            json.dumps({"prefix": self.prefix, "shape": self.shape.name, "pids": []})
        )
        try:
            self._underlay()
            for node in topo.NODES:
                self._node(node)
            for node in topo.NODES:
                self._peers(node)
                self._iptables(node)
            for pod in topo.PODS:
                self._pod(pod)
            self._processes()
            self._announce()
            self._health_checks()
            self._noise()
            self._write_description()
            self._wait_ready()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every namespace, process and file of this lab; safe to call twice."""
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for ns in self._namespaces():
            for pid in _sh("ip", "netns", "pids", ns, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)

    def _namespaces(self) -> list[str]:
        names = [line.split()[0] for line in _sh("ip", "netns", "list").splitlines() if line]
        return [n for n in names if n.startswith(self.prefix + "-")]

    def _pids(self) -> list[int]:
        try:
            return list(json.loads((self.state / "state.json").read_text())["pids"])
        except (OSError, ValueError, KeyError):
            return []

    def status(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "namespaces": self._namespaces(),
            "processes": [p for p in self._pids() if Path(f"/proc/{p}").exists()],
            "faults": self.faults(),
        }

    # --- building -----------------------------------------------------------------------------
    def _netns(self, name: str) -> None:
        _sh("ip", "netns", "add", self.ns(name))
        # IPv6 stays on, as on every real node and pod: link-local addresses, router
        # solicitations, MLD and neighbour discovery are noise ktrace must live with.
        self.exec(name, "ip", "link", "set", "lo", "up")

    def _underlay(self) -> None:
        self._netns("underlay")
        self.exec("underlay", "ip", "link", "add", "br0", "type", "bridge")
        self.exec("underlay", "ip", "addr", "add", f"{topo.UNDERLAY_GW}/16", "dev", "br0")
        if self.shape.dual_stack:
            self._v6_addr("underlay", "br0", f"{topo.v6(topo.UNDERLAY_GW)}/64")
        self.exec("underlay", "ip", "link", "set", "br0", "up")
        self._netns("upstream")
        self._underlay_port("upstream", topo.UPSTREAM_DNS)
        self._netns("outside")
        self._underlay_port("outside", topo.OUTSIDE)

    def _veth_eth0(self, ns: str, peer: str, peer_ns: str) -> None:
        """A veth pair: `eth0` inside namespace `ns`, `peer` inside `peer_ns`."""
        _sh(
            "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", peer, "netns", peer_ns
        )

    def _underlay_port(self, ns: str, ip: str) -> None:
        port = f"ul-{ns}"[:15]
        self._veth_eth0(self.ns(ns), port, self.ns("underlay"))
        self.exec("underlay", "ip", "link", "set", port, "master", "br0", "up")
        self._no_offloads("underlay", port)
        self._no_offloads(ns, "eth0")
        self.exec(ns, "ip", "addr", "add", f"{ip}/16", "dev", "eth0")
        if self.shape.dual_stack:
            self._v6_addr(ns, "eth0", f"{topo.v6(ip)}/64")
        self.exec(ns, "ip", "link", "set", "eth0", "up")
        self.exec(ns, "ip", "route", "add", "default", "via", topo.UNDERLAY_GW)
        if self.shape.dual_stack:
            self.exec(ns, "ip", "-6", "route", "add", "default", "via", topo.v6(topo.UNDERLAY_GW))

    def _v6_addr(self, ns: str, dev: str, cidr: str) -> None:
        # nodad: usable at once, not after a second of duplicate detection
        self.exec(ns, "ip", "-6", "addr", "add", cidr, "dev", dev, "nodad")

    def _no_offloads(self, ns: str, dev: str) -> None:
        """One packet on the wire, one packet in the capture: without this, veth TSO/GRO hand
        tcpdump 64 KB super-packets and let oversized frames slip past an MTU."""
        self.exec(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", check=False)

    def _node(self, node: topo.Node) -> None:
        name = node.name
        self._netns(name)
        self._underlay_port(name, node.ip)
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
        ):
            self.exec(name, "sysctl", "-qw", f"{key}={value}")
        if self.shape.dual_stack:
            self.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        if self.shape.bridge:
            self.exec(name, "ip", "link", "add", "cni0", "type", "bridge")
            self.exec(name, "ip", "addr", "add", f"{node.gateway}/24", "dev", "cni0")
            if self.shape.dual_stack:
                self._v6_addr(name, "cni0", f"{topo.v6(node.gateway)}/64")
            self.exec(name, "ip", "link", "set", "cni0", "mtu", str(topo.FLANNEL_MTU), "up")
        if self.shape.overlay:
            self._vxlan(node)

    def _vxlan(self, node: topo.Node) -> None:
        name = node.name
        # flannel's kernel VXLAN: VNI 1, UDP 8472, no learning (flannel writes FDB/ARP), and DF
        # on the outer header so that an undersized underlay drops rather than fragments.
        self.exec(
            name,
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            str(topo.VNI),
            "local",
            node.ip,
            "dev",
            "eth0",
            "dstport",
            str(topo.VXLAN_PORT),
            "nolearning",
            "df",
            "set",
        )
        self.exec(
            name,
            "ip",
            "link",
            "set",
            "flannel.1",
            "address",
            node.flannel_mac,
            "mtu",
            str(topo.FLANNEL_MTU),
            "up",
        )
        self.exec(name, "ip", "addr", "add", f"{node.flannel_ip}/32", "dev", "flannel.1")

    def _peers(self, node: topo.Node) -> None:
        """Routes to the other nodes' pod CIDRs: through the overlay, or on the underlay."""
        for peer in topo.NODES:
            if peer.name == node.name:
                continue
            n = node.name
            if not self.shape.overlay:
                self.exec(n, "ip", "route", "add", peer.pod_cidr, "via", peer.ip, "dev", "eth0")
                if self.shape.dual_stack:
                    cidr, via = topo.v6_cidr(peer.pod_cidr), topo.v6(peer.ip)
                    self.exec(n, "ip", "-6", "route", "add", cidr, "via", via, "dev", "eth0")
                continue
            self.exec(
                n,
                "ip",
                "route",
                "add",
                peer.pod_cidr,
                "via",
                peer.flannel_ip,
                "dev",
                "flannel.1",
                "onlink",
            )
            self.exec(
                n,
                "ip",
                "neigh",
                "add",
                peer.flannel_ip,
                "lladdr",
                peer.flannel_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            )
            self.exec(
                n, "bridge", "fdb", "append", peer.flannel_mac, "dev", "flannel.1", "dst", peer.ip
            )

    def _pod(self, pod: topo.Pod) -> None:
        node = topo.node(pod.node)
        self._netns(pod.name)
        self._veth_eth0(self.ns(pod.name), pod.veth, self.ns(pod.node))
        mtu = str(topo.FLANNEL_MTU)
        if self.shape.bridge:
            self.exec(pod.node, "ip", "link", "set", pod.veth, "master", "cni0", "mtu", mtu, "up")
            # as flannel's bridge plugin sets it: a pod reaching itself through its Service
            self.exec(pod.node, "bridge", "link", "set", "dev", pod.veth, "hairpin", "on")
        else:  # the host answers ARP for the pod's gateway and routes the pod's /32 to it
            self.exec(pod.node, "sysctl", "-qw", f"net.ipv4.conf.{pod.veth}.proxy_arp=1")
            self.exec(pod.node, "ip", "link", "set", pod.veth, "mtu", mtu, "up")
            self.exec(pod.node, "ip", "route", "add", f"{pod.ip}/32", "dev", pod.veth)
        self._no_offloads(pod.node, pod.veth)
        self._no_offloads(pod.name, "eth0")
        self.exec(pod.name, "ip", "link", "set", "eth0", "mtu", mtu, "up")
        if self.shape.bridge:
            self.exec(pod.name, "ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            self.exec(pod.name, "ip", "route", "add", "default", "via", node.gateway)
            if self.shape.dual_stack:
                self._v6_addr(pod.name, "eth0", f"{topo.v6(pod.ip)}/64")
                gw6 = topo.v6(node.gateway)
                self.exec(pod.name, "ip", "-6", "route", "add", "default", "via", gw6)
        else:
            gw = topo.LINK_LOCAL_GW
            self.exec(pod.name, "ip", "addr", "add", f"{pod.ip}/32", "dev", "eth0")
            self.exec(pod.name, "ip", "route", "add", gw, "dev", "eth0", "scope", "link")
            self.exec(pod.name, "ip", "route", "add", "default", "via", gw, "dev", "eth0")
        etc = ETC_NETNS / self.ns(pod.name)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(topo.CLIENT_RESOLV)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{pod.ip} {pod.name}\n")

    def _iptables(self, node: topo.Node) -> None:
        """(Re)load the node's whole ruleset; reloading also restarts the round-robin."""
        faults = tuple(self.faults())
        nft = self.shape.proxy == "nftables"
        self.exec(node.name, "iptables-restore", stdin=proxy.iptables_rules(node, faults, not nft))
        if self.shape.dual_stack:
            self.exec(node.name, "ip6tables-restore", stdin=proxy.ip6tables_rules(node, faults))
        if nft:
            self.exec(node.name, "nft", "-f", "-", stdin=proxy.nft_rules(node, faults))

    # --- processes ----------------------------------------------------------------------------
    def _spawn(
        self, ns: str, cmd: list[str], name: str, ready: str | None = None, cwd: Path | None = None
    ) -> None:
        log = (self.state / f"{name}.log").open("w")
        proc = subprocess.Popen(
            self.in_ns(ns, *cmd),
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=cwd or REPO,
            start_new_session=True,
        )
        state = json.loads((self.state / "state.json").read_text())
        state["pids"].append(proc.pid)
        (self.state / "state.json").write_text(json.dumps(state))
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if ready not in line:
                raise LabError(f"{name} did not start; see {log.name}")

    def _processes(self) -> None:
        py = sys.executable
        # web-2 also runs a TCP server that accepts and never reads: a stalled application
        self._spawn("web-2", [py, "-c", SINK], "stalled-app", ready="ready")
        bind = "::" if self.shape.dual_stack else "0.0.0.0"  # "::" serves both families
        faults = str(self.state / "web-faults.json")
        for web in ("web-1", "web-2"):
            root = self.state / web
            root.mkdir(exist_ok=True)
            (root / "index.html").write_text(f"<html><body>{web}</body></html>\n")
            (root / "big.bin").write_bytes(os.urandom(100_000))
            self._spawn(
                web,
                [py, "-m", "tests.lab.web", web, str(root), faults, "80", bind],
                web,
                ready="ready",
            )
        self._spawn(
            "web-2",
            [py, "-m", "tests.lab.grpc_server", "web-2", str(GRPC_PORT), faults],
            "grpc",
            ready="ready",
        )
        coredns = topo.pod("coredns")
        six = self.shape.dual_stack
        records = [
            f"--host-record={s.name}.{s.namespace}.svc.cluster.local,{s.cluster_ip}"
            + (f",{topo.v6(s.cluster_ip)}" if six else "")
            for s in topo.SERVICES
        ]
        records += [
            f"--host-record={p.ip.replace('.', '-')}.{p.namespace}.pod.cluster.local,{p.ip}"
            for p in topo.PODS
        ]
        self._spawn(
            "coredns",
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--port=5353",
                f"--server={topo.UPSTREAM_DNS}",
                "--local=/cluster.local/",
                "--pid-file=",
                "--user=root",
                # no cache: a fault must show on the next query, not later
                "--cache-size=0",
                *records,
            ],
            "dnsmasq",
        )
        self.set_dns_faults({})
        self._spawn(
            "coredns",
            [
                py,
                "-m",
                "tests.lab.dns_proxy",
                coredns.ip,
                "5353",
                str(self.state / "dns-faults.json"),
            ],
            "dns-proxy",
            ready="ready",
        )
        self._spawn(
            "upstream",
            [
                py,
                "-m",
                "tests.samples.dns_server",
                topo.UPSTREAM_DNS,
                json.dumps({"records": topo.UPSTREAM_ZONE, "blackhole": []}),
            ],
            "upstream-dns",
            ready="ready",
        )

    def _announce(self) -> None:
        """LoadBalancer addresses, each answered for (ARP) by the node that announces it."""
        for node in topo.NODES:
            ips = [s.lb_ip for s in topo.SERVICES if s.lb_ip and s.announcer == node.name]
            if ips:
                self._spawn(
                    node.name,
                    [sys.executable, "-m", "tests.lab.announce", "eth0", *ips],
                    f"announce-{node.name}",
                    ready="ready",
                )

    def _health_checks(self) -> None:
        """kube-proxy's health check node port of each Local Service, on every node."""
        for svc in topo.SERVICES:
            if not svc.health_port:
                continue
            for node in topo.NODES:
                local = sum(1 for p in topo.endpoints(svc) if p.node == node.name)
                self._spawn(
                    node.name,
                    [
                        sys.executable,
                        "-m",
                        "tests.lab.healthz",
                        str(svc.health_port),
                        str(local),
                        str(self._health_state(node.name)),
                    ],
                    f"healthz-{svc.name}-{node.name}",
                    ready="ready",
                )

    def _health_state(self, node: str) -> Path:
        return self.state / f"healthz-{node}.state"

    def _noise(self) -> None:
        """What a real cluster carries besides the incident (tests.lab.noise): the kubelet
        probing each web pod from its node every second, web-1 fetching from web-2 across
        the nodes (pod IPs: the Service's round-robin stays the scenarios'), and every pod's
        IPv6 link-local chatter."""
        py = sys.executable
        for node in topo.NODES:
            urls = [f"http://{p.ip}/" for p in topo.PODS if p.node == node.name and "web" in p.name]
            if urls:
                self._spawn(
                    node.name,
                    [py, "-m", "tests.lab.noise", "http", *urls],
                    f"probes-{node.name}",
                    ready="ready",
                )
        web2 = topo.pod("web-2")
        self._spawn(
            "web-1",
            [py, "-m", "tests.lab.noise", "http", f"http://{web2.ip}/"],
            "background",
            ready="ready",
        )
        for pod in topo.PODS:
            self._spawn(
                pod.name,
                [py, "-m", "tests.lab.noise", "linklocal", "eth0"],
                f"linklocal-{pod.name}",
                ready="ready",
            )

    def _wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client_python(
                    "import socket, urllib.request\n"
                    "for ip in ('10.244.0.3', '10.244.1.2'):\n"
                    "    urllib.request.urlopen(f'http://{ip}/', timeout=1).read()\n"
                    "socket.getaddrinfo('web.default.svc.cluster.local.', 80)\n",
                    timeout=5,
                )
                return
            except LabError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def client_python(self, code: str, timeout: float = 30, ns: str = "client") -> str:
        """Run Python code in a namespace (a pod's, a node's for hostNetwork, `outside`)."""
        out = subprocess.run(
            self.in_ns(ns, sys.executable, "-c", code),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise LabError(
                out.stderr.strip().splitlines()[-1]
                if out.stderr.strip()
                else f"exit {out.returncode}"
            )
        return out.stdout

    # --- faults -------------------------------------------------------------------------------
    def set_dns_faults(self, faults: dict[str, object]) -> None:
        _atomic_json(self.state / "dns-faults.json", faults)

    def faults(self) -> list[str]:
        path = self.state / "faults.json"
        return json.loads(path.read_text()) if path.exists() else []

    def fault(self, name: str, on: bool) -> None:
        if name not in FAULTS:
            raise LabError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        if on == (name in self.faults()):
            return
        active = [f for f in self.faults() if f != name] + ([name] if on else [])
        (self.state / "faults.json").write_text(json.dumps(active))
        if name in RULE_FAULTS:
            for node in topo.NODES:
                self._iptables(node)
        elif name == "mtu-blackhole":
            # The underlay is smaller than what flannel assumed: full-size VXLAN packets (DF)
            # are dropped silently by the underlay, small ones pass.
            mtu = "1400" if on else str(topo.MTU)
            for node in topo.NODES:
                self.exec("underlay", "ip", "link", "set", f"ul-{node.name}", "mtu", mtu)
        elif name == "health-check-down":
            # kube-proxy stopped on the node that has edge's endpoint: its rules stay in
            # place, its health check port closes
            node = topo.pod("web-2").node
            self._health_state(node).write_text("down" if on else "up")
        elif name == "dns-upstream-down":
            for proto in ("udp", "tcp"):
                rule = ["INPUT", "-p", proto, "--dport", "53", "-j", "DROP"]
                if on:
                    self.exec("upstream", "iptables", "-I", *rule)
                else:
                    self.exec("upstream", "iptables", "-D", *rule, check=False)
        dns: dict[str, object] = {}
        if "dns-aaaa-drop" in active:
            dns["drop_aaaa"] = True
        if "dns-slow" in active:
            dns["delay_ms"] = SLOW_DNS_MS
        self.set_dns_faults(dns)
        app = [WEB_FAULTS[f] for f in active if f in WEB_FAULTS]
        _atomic_json(self.state / "web-faults.json", {"web-2": app[0]} if app else {})
        # Stale conntrack entries would keep old NAT decisions alive across a switch.
        for node in topo.NODES:
            self.exec(node.name, "conntrack", "-F", check=False)

    def reset_balancing(self) -> None:
        """Reload the rules: the round-robin starts over, so a scenario knows that its first
        connection to web reaches web-1 and its second web-2."""
        for node in topo.NODES:
            self._iptables(node)
        for node in topo.NODES:
            self.exec(node.name, "conntrack", "-F", check=False)

    # --- description --------------------------------------------------------------------------
    def description(self) -> dict[str, object]:
        """Machine-readable lab: what the Kubernetes API simulator serves."""
        return {
            "prefix": self.prefix,
            "shape": self.shape.name,
            "proxy": self.shape.proxy,
            "namespaces": {
                "underlay": self.ns("underlay"),
                "upstream": self.ns("upstream"),
                "outside": self.ns("outside"),
                **{n.name: self.ns(n.name) for n in topo.NODES},
                **{p.name: self.ns(p.name) for p in topo.PODS},
            },
            "nodes": [
                {
                    **asdict(n),
                    "interfaces": {
                        "nic": "eth0",
                        "overlay": "flannel.1" if self.shape.overlay else None,
                        "bridge": "cni0" if self.shape.bridge else None,
                    },
                }
                for n in topo.NODES
            ],
            "pods": [{**asdict(p), "interface": "eth0"} for p in topo.PODS],
            "services": [asdict(s) for s in topo.SERVICES],
            "inventory": topo.inventory(),
            "upstream_dns": topo.UPSTREAM_DNS,
        }

    def _write_description(self) -> None:
        (self.state / "lab.json").write_text(json.dumps(self.description(), indent=1))


def all_prefixes() -> list[str]:
    names = [line.split()[0] for line in _sh("ip", "netns", "list").splitlines() if line]
    found = {n.split("-")[0] for n in names if n.startswith(PREFIX_START)}
    if STATE_ROOT.exists():
        found |= {p.name for p in STATE_ROOT.iterdir()}
    return sorted(found)
