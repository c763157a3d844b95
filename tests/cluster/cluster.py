"""A real Kubernetes on this machine: etcd, the API server (TLS, RBAC, PodSecurity,
NodeRestriction), the controller manager and the scheduler in the machine's own network
namespace; two nodes, each a network namespace and a mount namespace of its own running
containerd (with runc), a kubelet and kube-proxy; CNI's bridge and host-local plugins with the
pod CIDRs routed between the nodes; CoreDNS as kube-dns forwarding to a DNS server outside the
cluster; NetworkPolicy enforced by kube-router's firewall.

State lives in /run/ktrace-cluster (pids, settings) and /var/lib/ktrace-cluster (certificates,
etcd, the nodes' runtimes, logs), so `down` cleans up after a crash too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.cluster import build, manifests, pki
from tests.cluster.layout import (
    API_PORT,
    API_VIP,
    BRIDGE,
    CLUSTER_CIDR,
    DATA,
    DNS_VIP,
    DOMAIN,
    ETCD_CLIENT,
    ETCD_PEER,
    EXTERNAL_NAMES,
    GATEWAY,
    NODES,
    PREFIX,
    SERVICE_CIDR,
    STATE,
    UPSTREAM,
    UPSTREAM_NS,
    WEB_VIP,
    Node,
)
from tests.cluster.processes import ClusterError, running, sh, start, stop, wait_for

FAULTS = ("policy-drop", "no-endpoints", "kube-proxy-down", "dns-upstream-down")
PROXY_MODES = ("iptables", "nftables")
TRACEFS = Path("/sys/kernel/tracing")
CGROUP = Path("/sys/fs/cgroup")
CNI_BIN = Path("/usr/lib/cni")
PKI = DATA / "pki"
KUBECONFIGS = DATA / "kubeconfigs"
SETTINGS = STATE / "cluster.json"
NEEDED = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "openssl", "nsenter",
          "unshare", "iptables", "nft", "dnsmasq", "ip")  # fmt: skip
# the node's own mount namespace: private runtime directories for its containerd and runc
NODE_HOLDER = """set -e
mkdir -p /run/containerd /run/netns
mount -t tmpfs -o mode=0711 ktrace-node /run/containerd
mount -t tmpfs -o mode=0755 ktrace-node /run/netns
exec sleep 2147483647
"""


def unavailable() -> str | None:
    """Why the real cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "the real cluster needs root"
    if shutil.which("go") is None:
        return "the real cluster is built with Go, which is not installed"
    for tool in NEEDED:
        if shutil.which(tool) is None:
            return f"the real cluster needs {tool} (tests/run.sh installs it)"
    if not (CNI_BIN / "bridge").exists():
        return "the real cluster needs the CNI plugins (containernetworking-plugins)"
    return None


class Cluster:
    def __init__(self) -> None:
        self.bin = build.bin_dir()
        try:
            self.settings: dict[str, Any] = json.loads(SETTINGS.read_text())
        except (OSError, ValueError):
            self.settings = {"proxy_mode": "iptables", "faults": []}

    # --- using it ---------------------------------------------------------------------------
    @property
    def admin_kubeconfig(self) -> Path:
        return KUBECONFIGS / "admin.kubeconfig"

    def kubeconfig(self, user: str = "admin") -> Path:
        return KUBECONFIGS / f"{user}.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin / "kubectl"

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None) -> str:
        return sh(str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig(user)), *args,
                  input=input)  # fmt: skip

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifests.as_list(objects)))

    def pod_ready(self, name: str, namespace: str = "default") -> bool:
        out = self.kubectl(
            "get", "pod", name, "-n", namespace, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )  # fmt: skip
        return out.strip() == "True"

    # --- up -----------------------------------------------------------------------------------
    def up(self, proxy_mode: str = "iptables", kubeconfig: Path | None = None) -> Cluster:
        why = unavailable()
        if why:
            raise ClusterError(why)
        if proxy_mode not in PROXY_MODES:
            raise ClusterError(f"unknown proxy mode {proxy_mode!r}: {', '.join(PROXY_MODES)}")
        started = time.monotonic()
        self.bin = build.build()
        STATE.mkdir(parents=True, exist_ok=True)
        was = self.settings.get("proxy_mode")
        self.settings = {"proxy_mode": proxy_mode, "faults": []}
        self._save()
        if was != proxy_mode:  # a cluster up in the other mode: its kube-proxies change
            for node in NODES:
                if running(f"{node.name}-kube-proxy") is not None:
                    self._stop_proxy(node)
        self._tracefs()
        self._pki()
        self._network()
        self._control_plane()
        for node in NODES:
            self._node(node)
        wait_for("both nodes Ready", self._nodes_ready, 180)
        self.apply(manifests.network_policies())
        for node in NODES:
            self._firewall(node)
        self.apply(manifests.coredns() + manifests.workload())
        static = NODES[1].data / "manifests" / "static-web.json"
        static.write_text(json.dumps(manifests.static_pod()))
        for name, ns in (("client", "default"), ("web-1", "default"), ("web-2", "default")):
            wait_for(f"pod {ns}/{name} Ready", lambda n=name, s=ns: self.pod_ready(n, s), 240)
        wait_for("CoreDNS Ready", self._dns_ready, 180)
        if kubeconfig is not None:
            shutil.copyfile(self.admin_kubeconfig, kubeconfig)
            kubeconfig.chmod(0o600)
        build.say(f"up in {time.monotonic() - started:.0f} s")
        return self

    def _save(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        SETTINGS.write_text(json.dumps(self.settings))

    def _tracefs(self) -> None:
        """A node has its tracefs mounted: the node pods' kernel drop events read it."""
        if not (TRACEFS / "instances").is_dir():
            sh("mount", "-t", "tracefs", "nodev", str(TRACEFS), check=False)

    def _pki(self) -> None:
        ca = pki.authority(PKI)
        hosts = (
            GATEWAY,
            API_VIP,
            "127.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{DOMAIN}",
            "localhost",
        )
        pki.issue(ca, PKI, "apiserver", "/CN=kube-apiserver", hosts=hosts, server=True)
        pki.issue(ca, PKI, "apiserver-kubelet-client",
                  "/CN=kube-apiserver-kubelet-client/O=system:masters")  # fmt: skip
        pki.service_account_keys(PKI)
        server = f"https://{GATEWAY}:{API_PORT}"
        users = {
            "admin": "/CN=ktrace-test-admin/O=system:masters",
            "viewer": "/CN=ktrace-test-viewer/O=ktrace-test:viewers",
            "controller-manager": "/CN=system:kube-controller-manager",
            "scheduler": "/CN=system:kube-scheduler",
            "kube-proxy": "/CN=system:kube-proxy",
            "kube-router": "/CN=ktrace-test-kube-router/O=ktrace-test:kube-router",
            **{f"kubelet-{n.name}": f"/CN=system:node:{n.name}/O=system:nodes" for n in NODES},
        }
        for user, subject in users.items():
            pair = pki.issue(ca, PKI, user, subject)
            pki.kubeconfig(KUBECONFIGS / f"{user}.kubeconfig", server, ca, pair, user)
        for n in NODES:
            pki.issue(ca, PKI, f"kubelet-{n.name}-serving", f"/CN={n.name}",
                      hosts=(n.ip, n.name), server=True)  # fmt: skip

    # --- the network ----------------------------------------------------------------------
    def _network(self) -> None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE)
            sh("ip", "link", "set", BRIDGE, "up")
        for node in NODES:
            self._attach(node.netns, node.host_veth, node.ip)
            ip = ("ip", "netns", "exec", node.netns)
            sh(*ip, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh(*ip, "ip", "route", "replace", "default", "via", GATEWAY)
            for other in NODES:
                if other is not node:
                    sh(*ip, "ip", "route", "replace", other.pod_cidr, "via", other.ip)
            # what ip-masq-agent does: pods reach outside the cluster as their node
            rule = ["-s", CLUSTER_CIDR, "!", "-d", CLUSTER_CIDR, "-j", "MASQUERADE"]
            if subprocess.run([*ip, "iptables", "-t", "nat", "-C", "POSTROUTING", *rule],
                              capture_output=True).returncode:  # fmt: skip
                sh(*ip, "iptables", "-t", "nat", "-A", "POSTROUTING", *rule)
        self._attach(UPSTREAM_NS, "ktc-upstream", UPSTREAM)
        hosts = [f"--address=/{name}/{addr}" for name, addr in EXTERNAL_NAMES.items()]
        start("upstream-dns", ["ip", "netns", "exec", UPSTREAM_NS, "dnsmasq",
              "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
              f"--listen-address={UPSTREAM}",
              "--log-queries", "--log-facility=-", *hosts])  # fmt: skip

    def _attach(self, netns: str, host_side: str, address: str) -> None:
        """A namespace with one interface, eth0, on the nodes' bridge."""
        if not Path(f"/run/netns/{netns}").exists():
            sh("ip", "netns", "add", netns)
        if Path(f"/sys/class/net/{host_side}").exists():
            return
        sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", host_side, "master", BRIDGE, "up")
        ip = ("ip", "netns", "exec", netns, "ip")
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
        sh(*ip, "link", "set", "eth0", "up")

    # --- the control plane ------------------------------------------------------------------
    def _control_plane(self) -> None:
        b = self.bin
        etcd_data = DATA / "etcd"
        start("etcd", [str(b / "etcd"), "--name", "default", "--data-dir", str(etcd_data),
              "--listen-client-urls", f"http://{ETCD_CLIENT}",
              "--advertise-client-urls", f"http://{ETCD_CLIENT}",
              "--listen-peer-urls", f"http://{ETCD_PEER}",
              "--initial-advertise-peer-urls", f"http://{ETCD_PEER}",
              "--initial-cluster", f"default=http://{ETCD_PEER}",
              "--unsafe-no-fsync", "--log-level", "warn"])  # fmt: skip
        p = PKI
        start("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--advertise-address={GATEWAY}", f"--bind-address={GATEWAY}",
            f"--secure-port={API_PORT}", f"--etcd-servers=http://{ETCD_CLIENT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # PodSecurity is on by default
            "--allow-privileged=true",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer=https://kubernetes.default.svc.{DOMAIN}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        wait_for("the API server", lambda: self.kubectl("get", "--raw", "/readyz") == "ok", 120)
        start("kube-controller-manager", [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig('controller-manager')}",
            f"--authentication-kubeconfig={self.kubeconfig('controller-manager')}",
            f"--authorization-kubeconfig={self.kubeconfig('controller-manager')}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            f"--cluster-cidr={CLUSTER_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        ])  # fmt: skip
        start("kube-scheduler", [
            str(b / "kube-scheduler"), f"--kubeconfig={self.kubeconfig('scheduler')}",
            f"--authentication-kubeconfig={self.kubeconfig('scheduler')}",
            f"--authorization-kubeconfig={self.kubeconfig('scheduler')}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        # each node's pod CIDR is fixed before its kubelet registers: its CNI config names it
        nodes = [
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
             "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]}}
            for n in NODES
        ]  # fmt: skip
        wait_for("the default service account", self._default_account, 60)
        self.apply(nodes)

    def _default_account(self) -> bool:
        return bool(self.kubectl("get", "serviceaccount", "default", "-o", "name").strip())

    # --- a node -------------------------------------------------------------------------------
    def _node(self, node: Node) -> None:
        for d in ("containerd", "kubelet", "manifests", "cni/net.d", "cni/ipam", "pod-logs"):
            (node.data / d).mkdir(parents=True, exist_ok=True)
        node.run.mkdir(parents=True, exist_ok=True)
        self._cgroups(node)
        holder = start(f"{node.name}-namespaces", ["nsenter", f"--net=/run/netns/{node.netns}",
                       "unshare", "--mount", "--propagation", "slave",
                       "sh", "-c", NODE_HOLDER])  # fmt: skip
        wait_for(f"{node.name}'s mount namespace", lambda: self._holding(holder), 20, 0.1)
        enter = ["nsenter", "-t", str(holder), "-m", "-n", "--"]
        (node.data / "containerd.toml").write_text(self._containerd_config(node))
        (node.data / "cni/net.d/10-bridge.conflist").write_text(self._cni_config(node))
        start(f"{node.name}-containerd",
              [*enter, "containerd", "--config", str(node.data / "containerd.toml")])  # fmt: skip
        ctr = ["ctr", "--address", str(node.containerd_socket), "--namespace", "k8s.io"]
        wait_for(f"{node.name}'s containerd", lambda: sh(*ctr, "version") != "", 60)
        for image in sorted(build.image_dir().glob("*.tar")):
            sh(*ctr, "images", "import", str(image))
        (node.data / "kubelet.json").write_text(json.dumps(self._kubelet_config(node)))
        (node.data / "resolv.conf").write_text(f"nameserver {UPSTREAM}\n")
        start(f"{node.name}-kubelet", [
            *enter, str(self.bin / "kubelet"),
            f"--config={node.data / 'kubelet.json'}",
            f"--kubeconfig={self.kubeconfig(f'kubelet-{node.name}')}",
            f"--root-dir={node.data / 'kubelet'}",
            f"--hostname-override={node.name}", f"--node-ip={node.ip}", "--v=1",
        ])  # fmt: skip
        self.start_proxy(node)

    def _holding(self, holder: int) -> bool:
        mounts = Path(f"/proc/{holder}/mounts").read_text()
        return "ktrace-node /run/netns" in mounts

    def enter(self, node: Node) -> list[str]:
        """The argv prefix that runs a command inside `node` (its network and mounts)."""
        holder = running(f"{node.name}-namespaces")
        if holder is None:
            raise ClusterError(f"{node.name} is not running")
        return ["nsenter", "-t", str(holder), "-m", "-n", "--"]

    def start_proxy(self, node: Node) -> None:
        config = node.data / "kube-proxy.json"
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig("kube-proxy"))},
            "mode": self.settings["proxy_mode"],
            "hostnameOverride": node.name,
            "clusterCIDR": CLUSTER_CIDR,
            "bindAddress": node.ip,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "conntrack": {"maxPerCore": 0},
        }))  # fmt: skip
        start(
            f"{node.name}-kube-proxy",
            [*self.enter(node), str(self.bin / "kube-proxy"), f"--config={config}", "--v=1"],
        )

    def _proxied(self, node: Node, vip: str = DNS_VIP, word: str = "") -> bool:
        """kube-proxy's rules on the node have a line for `vip` holding `word` (a restarted
        kube-proxy answers its health check before its first full sync; one told of a
        Service without endpoints takes a moment to write its reject)."""
        iptables = self.settings["proxy_mode"] == "iptables"
        argv = ["iptables-save"] if iptables else ["nft", "list", "ruleset"]
        out = subprocess.run([*self.enter(node), *argv], capture_output=True, text=True)
        return any(vip in line and word in line.lower() for line in out.stdout.splitlines())

    def _firewall(self, node: Node) -> None:
        """kube-router's NetworkPolicy firewall alone (no routing, no service proxy, no CNI
        of its own): iptables chains and ipsets in the node's network namespace."""
        start(f"{node.name}-kube-router", [
            *self.enter(node), str(self.bin / "kube-router"),
            f"--kubeconfig={self.kubeconfig('kube-router')}", f"--hostname-override={node.name}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--enable-cni=false", "--metrics-port=0", "--health-port=0", "--v=1",
        ])  # fmt: skip

    def _stop_proxy(self, node: Node) -> None:
        """kube-proxy stopped, and every rule it wrote removed its own way (--cleanup)."""
        stop(f"{node.name}-kube-proxy")
        config = node.data / "kube-proxy.json"
        sh(*self.enter(node), str(self.bin / "kube-proxy"), f"--config={config}", "--cleanup",
           check=False)  # fmt: skip

    def _cgroups(self, node: Node) -> None:
        """The cgroup each kubelet roots its pods under, in every v1 hierarchy; a new cpuset
        cgroup starts with no CPUs and no memory nodes, so they are copied from the top."""
        for hierarchy in sorted(CGROUP.iterdir()):
            if hierarchy.is_symlink() or not hierarchy.is_dir() or hierarchy.name == "unified":
                continue
            target = hierarchy / node.cgroup_root.strip("/")
            target.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists() and not (target / knob).read_text().strip():
                    (target / knob).write_text((hierarchy / knob).read_text())

    def _containerd_config(self, node: Node) -> str:
        return f"""version = 2
root = "{node.data / "containerd"}"
state = "{node.run / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{node.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{build.PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  enable_unprivileged_ports = false
  # these machines run without CAP_SYS_RESOURCE, which lowering a process's oom_score_adj
  # needs (the kubelet asks -998 for sandboxes): keep containers at containerd's own value
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{node.data / "cni/net.d"}"
"""

    def _cni_config(self, node: Node) -> str:
        return json.dumps({
            "cniVersion": "1.0.0",
            "name": "ktrace-test",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": str(node.data / "cni/ipam")},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=1)  # fmt: skip

    def _kubelet_config(self, node: Node) -> dict[str, Any]:
        serving = PKI / f"kubelet-{node.name}-serving"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(PKI / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": f"{serving}.crt",
            "tlsPrivateKeyFile": f"{serving}.key",
            "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": node.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [DNS_VIP],
            "clusterDomain": DOMAIN,
            "resolvConf": str(node.data / "resolv.conf"),
            "staticPodPath": str(node.data / "manifests"),
            "podLogsDirectory": str(node.data / "pod-logs"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "protectKernelDefaults": False,
            "maxPods": 40,
            # a shared machine's disk must not evict the test's pods or collect its images
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }  # fmt: skip

    # --- readiness ----------------------------------------------------------------------------
    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get", "nodes", "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status} {end}",
        )  # fmt: skip
        return out.split() == ["True"] * len(NODES)

    def _dns_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
        )
        return out.split() == ["True"]

    # --- faults -------------------------------------------------------------------------------
    def fault(self, name: str, on: bool) -> None:
        if name not in FAULTS:
            raise ClusterError(f"unknown fault {name!r}: {', '.join(FAULTS)}")
        if name == "policy-drop":
            if on:
                self.apply([manifests.deny_web_2()])
            else:
                self.kubectl("delete", "networkpolicy", manifests.POLICY_DROP,
                             "--ignore-not-found")  # fmt: skip
        elif name == "no-endpoints":
            if on:
                self.kubectl("delete", "pod", "web-1", "web-2", "--ignore-not-found", "--wait")
                for node in NODES:
                    wait_for(f"kube-proxy's reject on {node.name}",
                             lambda n=node: self._proxied(n, WEB_VIP, "reject"), 60)  # fmt: skip
            else:
                self.apply([manifests.web_pod("web-1", NODES[0].name),
                            manifests.web_pod("web-2", NODES[1].name)])  # fmt: skip
                for pod in ("web-1", "web-2"):
                    wait_for(f"{pod} Ready", lambda p=pod: self.pod_ready(p), 120)
        elif name == "kube-proxy-down":
            for node in NODES:
                if on:
                    self._stop_proxy(node)
                else:
                    self.start_proxy(node)
            for node in NODES if not on else ():
                wait_for(f"kube-proxy's rules on {node.name}", lambda n=node: self._proxied(n), 60)
        else:
            self._upstream(on)
        faults = set(self.settings.get("faults", []))
        faults = faults | {name} if on else faults - {name}
        self.settings["faults"] = sorted(faults)
        self._save()

    def _upstream(self, down: bool) -> None:
        """The DNS server outside the cluster stops answering: its packets are dropped where
        it lives, as a dead upstream's would be."""
        for proto in ("udp", "tcp"):
            rule = ["INPUT", "-p", proto, "--dport", "53", "-j", "DROP"]
            ip = ("ip", "netns", "exec", UPSTREAM_NS, "iptables")
            present = subprocess.run([*ip, "-C", *rule], capture_output=True).returncode == 0
            if down and not present:
                sh(*ip, "-I", *rule)
            elif not down and present:
                sh(*ip, "-D", *rule)

    # --- status and down ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        from tests.cluster.processes import names

        out: dict[str, Any] = {
            "proxy_mode": self.settings.get("proxy_mode"),
            "faults": self.settings.get("faults", []),
            "processes": {n: running(n) for n in names()},
            "kubeconfig": str(self.admin_kubeconfig),
        }
        try:
            out["nodes"] = self.kubectl("get", "nodes", "-o", "wide").splitlines()
        except (ClusterError, OSError) as exc:
            out["nodes"] = f"not answering: {exc}"
        return out

    def down(self) -> None:
        from tests.cluster.processes import names

        for node in NODES:
            stop(f"{node.name}-kubelet")
        self._end_containers()
        for name in names():
            stop(name)
        for node in NODES:
            self._remove_cgroups(node)
        for netns in [n.netns for n in NODES] + [UPSTREAM_NS]:
            sh("ip", "netns", "del", netns, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            sh("ip", "link", "del", BRIDGE, check=False)
        for path in [DATA / "etcd", *(n.data for n in NODES), DATA / "logs", STATE]:
            shutil.rmtree(path, ignore_errors=True)

    def _end_containers(self) -> None:
        """Every process of every pod (they live in the kubelets' cgroups) and every shim that
        a node's containerd started: ending containerd leaves them running."""
        for _ in range(3):
            pids = set()
            for node in NODES:
                top = CGROUP / "pids" / node.cgroup_root.strip("/")
                for procs in top.glob("**/cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids |= {int(p) for p in procs.read_text().split()}
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        cmdline = (proc / "cmdline").read_bytes()
                        if b"containerd-shim" in cmdline and str(STATE).encode() in cmdline:
                            pids.add(int(proc.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def _remove_cgroups(self, node: Node) -> None:
        for hierarchy in CGROUP.iterdir():
            top = hierarchy / node.cgroup_root.strip("/")
            if not top.is_dir() or hierarchy.is_symlink():
                continue
            for d in sorted(top.glob("**/"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
