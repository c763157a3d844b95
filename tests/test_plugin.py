"""`kubectl ktrace` end to end: the real kubectl 1.32 and the Python client against the lab's
API server, captures of real packets in real network namespaces, every refusal, and every way
a capture can stop, each checked for leftovers (tcpdump processes, node pods, running
ephemeral containers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ktrace.analysis.pipeline import analyze
from ktrace.bundle.manifest import read_manifest
from ktrace.cli import main
from ktrace.decode.index import build_index
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.debug import Container, add_ephemeral, end_ephemeral, wait_running
from ktrace.kube.execstream import run as exec_in
from ktrace.kube.targets import resolve
from ktrace.report.json_report import json_document
from tests.lab import topology as topo
from tests.lab.apiserver.server import ApiServer
from tests.lab.lab import Lab, unavailable
from tests.lab.record import fetch
from tests.running import Running, rows
from tests.tmux import Tmux

WHY = unavailable()
pytestmark = [pytest.mark.lab, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
SCRIPTS = sysconfig.get_path("scripts")
KUBECTL = shutil.which("kubectl")
VIP = "10.96.0.20"


@dataclass
class Env:
    lab: Lab
    server: ApiServer
    kubeconfig: Path
    env: dict[str, str]

    def leftovers(self) -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "comm").read_text().strip() == "tcpdump":
                        found.append(f"tcpdump pid {proc.name}")
                except OSError:
                    continue
        cluster = self.server.cluster
        with cluster.lock:
            for (ns, name), pod in cluster.pods.items():
                labels = pod["metadata"].get("labels") or {}
                if labels.get("app.kubernetes.io/managed-by") == "ktrace":
                    found.append(f"node pod {ns}/{name}")
            for (ns, name, container), run in cluster.running.items():
                if container.startswith("ktrace-") and run.alive():
                    found.append(f"ephemeral container {container} in {ns}/{name}")
        return found

    def wait_clean(self, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def ktrace(self, *args: str) -> list[str]:
        return [*args, "--kubeconfig", str(self.kubeconfig)]

    def plugin(self, *args: str) -> Running:
        """`python -m ktrace ARGS` against the lab, followed as it runs."""
        return Running([sys.executable, "-m", "ktrace", *self.ktrace(*args)], self.env)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cluster")
    lab = Lab().up()
    server = ApiServer(lab.description()).start()
    try:
        kubeconfig = server.kubeconfig(root / "kubeconfig")
        environ = dict(
            os.environ,
            KUBECONFIG=str(kubeconfig),
            KUBECACHEDIR=str(root / "cache"),  # never an older simulator's discovery
            PATH=f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}",
        )
        environ.pop("COLUMNS", None)
        yield Env(lab, server, kubeconfig, environ)
    finally:
        server.stop()
        lab.down()


@pytest.fixture(autouse=True)
def fresh(env: Env) -> Iterator[None]:
    """Each test starts from the default switches and leaves nothing running."""
    yield
    env.server.behaviour.ephemeral_enabled = True
    env.server.behaviour.cut_exec_after_bytes = None
    env.server.behaviour.refuse_host_path = False
    env.server.cluster.namespaces["default"]["metadata"]["labels"] = {
        "kubernetes.io/metadata.name": "default"
    }
    assert env.wait_clean() == []


def kubectl(
    env: Env, *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    return subprocess.run(
        [KUBECTL, *args], capture_output=True, text=True, timeout=timeout, env=env.env, input=input
    )


def assert_private(bundle: Path, env: Env) -> None:
    token_words = list(env.server.tokens)
    assert bundle.stat().st_mode & 0o077 == 0
    for path in bundle.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path
        if path.is_file():
            data = path.read_bytes()
            assert not any(t.encode() in data for t in token_words), f"credential in {path}"


# --- the API server, as kubectl and the Python client see it ---------------------------------
def test_kubectl_lists_execs_and_debugs_against_the_lab(env: Env) -> None:
    out = kubectl(env, "get", "pods", "-o", "wide")
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert "pending-1" in out.stdout and "Pending" in out.stdout
    web2 = next(ln for ln in out.stdout.splitlines() if ln.startswith("web-2 "))
    assert topo.pod("web-2").ip in web2 and "node-b" in web2

    out = kubectl(env, "exec", "web-2", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert out.returncode == 0 and topo.pod("web-2").ip in out.stdout  # really in its netns
    assert kubectl(env, "exec", "web-2", "--", "sh", "-c", "exit 3").returncode == 3

    # attach (-i): the container's own shell, our stdin, its output
    out = kubectl(
        env, "debug", "-i", "web-2", "--image=busybox", "-c", "att", "--profile=general",
        "--", "sh", input="ip -4 -o addr show eth0; echo to-stderr >&2\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert topo.pod("web-2").ip in out.stdout and "to-stderr" in out.stderr
    assert "falling back" not in out.stderr
    logs = kubectl(env, "logs", "web-2", "-c", "att")
    assert topo.pod("web-2").ip in logs.stdout

    out = kubectl(env, "debug", "web-1", "--image=busybox", "-c", "dbg", "--", "sleep", "30")
    assert out.returncode == 0, out.stderr
    out = kubectl(env, "exec", "web-1", "-c", "dbg", "--", "sh", "-c", "echo $$; cat /proc/1/comm")
    pid, comm = out.stdout.split()
    assert comm == "sleep" and int(pid) > 1  # its own PID namespace, sleep as PID 1
    out = kubectl(
        env, "debug", "web-1", "--image=busybox", "-c", "dbg", "--profile=general", "--", "true"
    )
    assert out.returncode == 1 and 'existing ephemeral containers "dbg" may not be changed' in (
        out.stderr
    )
    out = kubectl(env, "debug", "-n", "kube-system", "etcd-node-a", "--image=busybox")
    assert "static pods do not support ephemeral containers" in out.stderr
    for key, container in env.server.cluster.running.items():
        if key[2] == "dbg":
            container.kill()


def test_python_client_streams_binary_bytes_exactly(env: Env) -> None:
    api = Api(KubeFlags(kubeconfig=str(env.kubeconfig)))
    blob = os.urandom(3_000_000)
    src = env.lab.state / "blob.bin"
    src.write_bytes(blob)
    result = exec_in(
        api, "default", "web-2", "app", ["sh", "-c", f"cat {src}; echo done >&2; exit 7"]
    )
    assert result.stdout == blob  # frame boundaries, non-UTF-8 bytes: all intact
    assert result.stderr == b"done\n" and result.code == 7


def test_v4_clients_get_binary_frames_and_the_status_channel(env: Env) -> None:
    import websocket

    token = next(t for t, u in env.server.tokens.items() if u.admin)
    url = env.server.url.replace("https", "wss") + (
        "/api/v1/namespaces/default/pods/web-2/exec?command=printf&command=%5Cxff%5Cx00ok"
        "&container=app&stdout=true&stderr=true"
    )
    ws = websocket.create_connection(
        url,
        header=[f"Authorization: Bearer {token}"],
        subprotocols=["v4.channel.k8s.io"],
        sslopt={"ca_certs": str(env.server.cert)},
    )
    assert ws.subprotocol == "v4.channel.k8s.io"
    frames = []
    while True:
        op, frame = ws.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            break
        assert op == websocket.ABNF.OPCODE_BINARY
        frames.append(frame.data)
    assert frames[0] == b"\x01\xff\x00ok"
    assert json.loads(frames[-1][1:]) == {"metadata": {}, "status": "Success"}


# --- refusals: one sentence each, nothing left behind ----------------------------------------
def refused(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    out = env.lab.state / "refused"
    code = main(env.ktrace("capture", *args, "--duration", "1", "-o", str(out)))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ktrace: error:")]
    assert code == 4, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()  # nothing captured, no bundle
    assert not out.exists()  # nothing captured, no bundle
    return lines[0]


def test_pod_security_baseline(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = env.server.cluster.namespaces["default"]["metadata"]["labels"]
    labels["pod-security.kubernetes.io/enforce"] = "baseline"
    line = refused(env, capsys, "client")
    assert 'node capture refused: namespace "default" enforces PodSecurity "baseline"' in line
    assert "pod-security.kubernetes.io/enforce=baseline" in line and "--no-node" in line
    # the pod side alone works: retried without added capabilities, NET_RAW is a default
    bundle = tmp_path / "b"
    assert (
        main(env.ktrace("capture", "client", "--no-node", "--duration", "1", "-o", str(bundle)))
        == 0
    )
    err = capsys.readouterr().err
    assert "retrying without added capabilities" in err
    assert read_manifest(bundle).status == "complete"  # type: ignore[union-attr]
    # and the node side in a namespace that allows it
    bundle = tmp_path / "c"
    argv = env.ktrace(
        "capture", "client", "--node-namespace", "kube-system", "--duration", "1", "-o", str(bundle)
    )
    assert main(argv) == 0
    assert "client-veth" in {p.id for p in read_manifest(bundle).points}  # type: ignore[union-attr]
    # a privileged namespace admits the hostPath volume of tracefs: drop events recorded
    trace = (bundle / "nodes" / "node-a" / "kfree_skb.txt").read_text()
    assert "ktrace-clock" in trace and not (bundle / "nodes" / "node-a" / "evidence.txt").exists()
    assert "kernel drop reasons not recorded" not in capsys.readouterr().err


def test_pod_security_restricted(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    labels = env.server.cluster.namespaces["default"]["metadata"]["labels"]
    labels["pod-security.kubernetes.io/enforce"] = "restricted"
    line = refused(env, capsys, "client", "--no-node")
    assert 'enforces PodSecurity "restricted"' in line and "runAsNonRoot" in line


# --- captures --------------------------------------------------------------------------------
def call_web(env: Env, times: int = 2) -> str:
    env.lab.reset_balancing()
    return env.lab.client_python(fetch(*["/"] * times, host=VIP))


def test_capture_through_kubectl_sees_the_vip_then_the_overlay(env: Env, tmp_path: Path) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    bundle = tmp_path / "client"
    run = Running(
        [KUBECTL, "ktrace", "capture", "pod/client", "--duration", "4", "-o", str(bundle)],
        env.env,
    )
    run.wait_for("capturing at")
    answers = call_web(env)
    code, out, err = run.finish()
    assert code == 0, err
    assert out.strip() == str(bundle)
    assert answers.count("GET /: ") == 2 and "failed" not in answers
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "complete"
    ids = {p.id for p in manifest.points}
    assert ids == {"client-eth0", "client-veth", "node-a-eth0", "node-a-flannel.1"}
    web2 = topo.pod("web-2").ip
    pod_side = rows(bundle, "client-eth0")
    assert any(d == VIP and dp == 80 for _, _, d, dp, _ in pod_side)  # before DNAT
    assert not any(d == web2 for _, _, d, _, _ in pod_side)
    nic = rows(bundle, "node-a-eth0")  # after DNAT, inside VXLAN
    assert nic and all(t > 0 for *_, t in nic)
    assert any(d == web2 and dp == 80 for _, _, d, dp, _ in nic)
    stats = {p.id: p for p in manifest.points}
    with build_index([bundle / "points" / "client-eth0.pcap"], workers=1) as index:
        assert stats["client-eth0"].packets == len(index) >= len(pod_side) > 0
    assert stats["client-eth0"].kernel_drops == 0
    assert (bundle / "nodes" / "node-a" / "iptables-save.txt").read_text().count("KUBE-SVC") > 0
    inventory = json.loads((bundle / "inventory.json").read_text())
    assert {s["clusterIP"] for s in inventory["services"]} >= {VIP, "10.96.0.10"}
    assert_private(bundle, env)
    assert env.wait_clean() == []


def test_capture_a_service_through_the_python_entry_point(env: Env, tmp_path: Path) -> None:
    bundle = tmp_path / "web"
    run = env.plugin(
        "capture", "svc/web", "-f", "tcp port 80", "--duration", "4", "-o", str(bundle)
    )
    run.wait_for("capturing at")
    call_web(env)
    code, _, err = run.finish()
    assert code == 0, err
    web1, web2, client = (topo.pod(n).ip for n in ("web-1", "web-2", "client"))
    # the lab's noise reaches the web pods too (kubelet probes, web-1's background requests)
    assert (client, web2) in {(s, d) for s, _, d, dp, _ in rows(bundle, "web-2-eth0") if dp == 80}
    assert (client, web1) in {(s, d) for s, _, d, dp, _ in rows(bundle, "web-1-eth0") if dp == 80}
    # the user's filter does not hide the overlay on the NIC
    assert any(t and d == web2 for _, _, d, _, t in rows(bundle, "node-b-eth0"))
    report = json_document(analyze([bundle]))
    assert report["findings"] == []
    crossing = [
        p
        for p in report["paths"]
        if f"{client}:" in p["conversation"] and web2 in p["conversation"]
    ]
    assert [h["point"] for h in crossing[0]["hops"]] == [
        "node-a-flannel.1",
        "node-a-eth0",
        "node-b-eth0",
        "node-b-flannel.1",
        "web-2-veth",
        "web-2-eth0",
    ]


def test_capture_from_outside_places_a_nodeport_call_on_the_node_that_dropped_it(
    env: Env, tmp_path: Path
) -> None:
    """svc/edge has one endpoint (web-2, node-b) and externalTrafficPolicy Local: without
    --from-outside only node-b would be captured, and a call to node-a's NodePort unseen."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    edge = next(s for s in topo.SERVICES if s.name == "edge")
    node_a = topo.node("node-a").ip
    bundle = tmp_path / "edge"
    argv = ["capture", "svc/edge", "--from-outside", "--duration", "4", "-o", str(bundle)]
    run = Running([KUBECTL, "ktrace", *argv], env.env)
    run.wait_for("capturing at")
    answers = env.lab.client_python(
        fetch("/", timeout=2, host=f"{node_a}:{edge.ports[0].node_port}"), ns="outside"
    )
    code, _, err = run.finish()
    assert code == 0, err
    assert "timed out" in answers
    manifest = read_manifest(bundle)
    assert manifest is not None
    assert {p.id for p in manifest.points} >= {"web-2-eth0", "node-a-eth0", "node-b-eth0"}
    serious = [f for f in json_document(analyze([bundle]))["findings"] if f["severity"] != "info"]
    assert [(f["id"], "no ready endpoint on node-a" in f["title"]) for f in serious] == [
        ("svc.local-no-endpoint", True)
    ]
    assert env.wait_clean() == []


def test_capture_a_deployment_and_a_selector(env: Env, tmp_path: Path) -> None:
    for target, name in ((["deploy/web"], "deploy"), (["-l", "app=web"], "selector")):
        bundle = tmp_path / name
        assert main(env.ktrace("capture", *target, "--no-node", "--count", "1", "--duration",
                               "2", "-o", str(bundle))) == 0  # fmt: skip
        manifest = read_manifest(bundle)
        assert manifest is not None
        assert {p.id for p in manifest.points} == {"web-1-eth0", "web-2-eth0"}
        assert manifest.target == ("deploy/web" if name == "deploy" else "-l app=web")


def test_python_client_watches_a_pod_change(env: Env) -> None:
    """The typed models (strict about required fields) read every event of a watch."""
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(str(env.kubeconfig)))
    rv = api.list_namespaced_pod("default").metadata.resource_version
    seen: list[tuple[str, str]] = []

    def change() -> None:
        time.sleep(0.5)
        kapi = Api(KubeFlags(kubeconfig=str(env.kubeconfig)))
        pod = resolve(kapi, "web-2", None)[1][0]
        add_ephemeral(kapi, pod, "ktrace-watch", "busybox", 60)
        c = Container("default", "web-2", "ktrace-watch", "node-b")
        wait_running(kapi, c, ephemeral=True)
        end_ephemeral(kapi, c)

    t = threading.Thread(target=change)
    t.start()
    w = watch.Watch()
    for event in w.stream(
        api.list_namespaced_pod,
        "default",
        field_selector="metadata.name=web-2",
        resource_version=rv,
        timeout_seconds=10,
    ):
        pod = event["object"]
        names = [s.name for s in pod.status.ephemeral_container_statuses or []]
        seen.append((event["type"], ",".join(names)))
        if "ktrace-watch" in names:
            w.stop()
    t.join()
    assert seen and seen[-1][0] == "MODIFIED" and "ktrace-watch" in seen[-1][1]


def test_trace_says_where_the_probe_stopped(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    env.lab.fault("policy-drop", True)
    try:
        code = main(
            env.ktrace("trace", "client", "--to", "pod/web-2:80", "-o", str(tmp_path / "t"))
        )
    finally:
        env.lab.fault("policy-drop", False)
    out, err = capsys.readouterr()
    assert code == 1, out  # a probe failed
    assert "FAIL default/web-2 at 10.244.1.2:80: no answer within 3 s" in out
    assert re.search(
        r"default/web-2 at 10.244.1.2:80 \(from \S+\): \[HIGH\] SYN to 10.244.1.2:80 "
        r"\(default/web-2\) dropped between node-b-flannel.1 and web-2-veth",
        out,
    ), out
    assert "path.drop" in out
    # node-b's rule counters over the capture quote the rule that dropped it, with its chain
    assert "Its rule ipv4 filter FORWARD: -A FORWARD -s 10.244.0.2/32 -d 10.244.1.2/32" in " ".join(
        out.split()
    )
    counters = tmp_path / "t" / "nodes" / "node-b" / "counters"
    assert "-j DROP" in (counters / "end" / "iptables-save.txt").read_text()
    assert "insert_failed=" in (counters / "start" / "conntrack-stats.txt").read_text()
    # the target's namespace has no PodSecurity label: the cluster admits the tracefs
    # volume (asked by a dry run), so the kernel's own reason is there without any flag
    assert "kernel drop reasons not recorded" not in err
    assert "NETFILTER_DROP" in " ".join(out.split())


def test_trace_says_what_a_refused_tracefs_gave_up(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy refuses hostPath volumes, not the node pod: one line says the kernel's drop
    reasons are given up, and the rest of the node evidence is still recorded."""
    env.server.behaviour.refuse_host_path = True
    code = main(env.ktrace("trace", "client", "--to", "pod/web-1:80", "-o", str(tmp_path / "t")))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = [x for x in err.splitlines() if "kernel drop reasons not recorded" in x]
    assert len(lines) == 1, err
    assert "ValidatingAdmissionPolicy 'ktrace-test-no-host-path'" in lines[0]
    assert "rule, conntrack and interface counters are recorded" in lines[0]
    counters = tmp_path / "t" / "nodes" / "node-a" / "counters" / "end"
    assert "*filter" in (counters / "iptables-save.txt").read_text()
    assert (counters.parent.parent / "evidence.txt").read_text() == lines[0].removeprefix(
        "ktrace: "
    ) + "\n"


def test_trace_tells_its_own_probe_apart_from_the_pods_other_traffic(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client also calls the Service in a loop while the probe runs, a NetworkPolicy
    dropping what reaches web-2: each probe's story is its own connection's (the client port
    its socket had), and the loop's failures are told apart, as other traffic."""
    capsys.readouterr()
    loop = subprocess.Popen(
        env.lab.in_ns(
            "client",
            "bash",
            "-c",
            'while :; do timeout 1 bash -c \'exec 3<>"/dev/tcp/$0/80"\' "$1"; sleep 0.2; done',
            "ktrace-loop",
            VIP,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env.lab.fault("policy-drop", True)
    try:
        code = main(env.ktrace("trace", "client", "--to", "svc/web", "-o", str(tmp_path / "t")))
    finally:
        env.lab.fault("policy-drop", False)
        os.killpg(loop.pid, signal.SIGKILL)
        loop.wait()
    out = capsys.readouterr().out
    assert code == 1, out
    stories = re.findall(r"^  (\S+ \S+ \S+) \(from (\S+)\): (.*)$", out, re.MULTILINE)
    assert len(stories) == 3, out
    section = out.split("Paths of the probes")[1].split("Findings about the probes")[0]
    shown = re.findall(r"^tcp (\S+) \(default/client\)", section, re.MULTILINE)
    assert sorted(shown) == sorted(client for _, client, _ in stories)
    # the loop's own connections to the VIP were captured, and none is taken for a probe
    result = analyze([tmp_path / "t"])
    loop = {p.client for p in result.paths if p.server == f"{VIP}:80"} - set(shown)
    assert loop, "the loop's connections were captured too"
    (_, client, story), *_ = stories
    vip_path = next(p for p in result.paths if p.client == client)
    went_through = not vip_path.lost and all(not h.expected for h in vip_path.hops)
    ok = re.search(rf"ok   svc/web:80 via {VIP}: connected", out) is not None
    assert went_through == ok, (ok, story)
    if ok:
        assert story.startswith("seen at every point on the way"), story


def test_trace_through_kubectl_names_the_kernel_reason_and_the_rule(
    env: Env, tmp_path: Path
) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    argv = ["trace", "client", "--to", "svc/web", "--node-namespace", "kube-system"]
    env.lab.fault("policy-drop", True)
    try:
        run = Running([KUBECTL, "ktrace", *argv, "-o", str(tmp_path / "t")], env.env)
        code, out, err = run.finish()
    finally:
        env.lab.fault("policy-drop", False)
    text = " ".join(out.split())
    assert code == 1, err  # the probe to web-2 failed
    assert "NETFILTER_DROP" in text, text
    assert "Its rule ipv4 filter FORWARD: -A FORWARD -s 10.244.0.2/32 -d 10.244.1.2/32" in text
    assert "kernel drop reasons not recorded" not in err
    # the same offline, from the bundle
    again = " ".join(
        " ".join(f["explanation"].split())
        for f in json_document(analyze([tmp_path / "t"]))["findings"]
        if f["id"] == "path.drop"
    )
    assert "NETFILTER_DROP" in again and "-j DROP" in again


def test_trace_to_a_service_probes_every_backend(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One of two endpoints blocked: found on the first run, whichever the VIP picks."""
    env.lab.fault("policy-drop", True)
    try:
        code = main(env.ktrace("trace", "client", "--to", "svc/web", "-o", str(tmp_path / "t")))
    finally:
        env.lab.fault("policy-drop", False)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "the ClusterIP once, then each of its 2 endpoints directly" in out
    assert "ok   default/web-1 at 10.244.0.3:80: connected in" in out
    assert "FAIL default/web-2 at 10.244.1.2:80: no answer within 3 s" in out
    assert re.search(
        r"default/web-2 at 10.244.1.2:80 \(from \S+\): \[HIGH\] .*SYNs? .*dropped between "
        r"\S+ and web-2-veth",
        out,
    ), out
    assert "path.drop" in out


def test_trace_to_a_healthy_service_exits_0(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(env.ktrace("trace", "client", "--to", "svc/web:80", "-o", str(tmp_path / "t")))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("ok   ") == 3 and "FAIL" not in out


def test_trace_to_a_missing_service_names_the_namespace(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(env.ktrace("trace", "client", "--to", "svc/nope", "-o", str(tmp_path / "t")))
    err = capsys.readouterr().err
    assert code == 4
    assert 'service "nope" not found in namespace "default"' in err and "-n NAMESPACE" in err


def test_dns_resolves_as_the_pod_does(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "dns"
    code = main(env.ktrace("dns", "client", "web", "example.com", "-o", str(bundle)))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "web: resolves as web.default.svc.cluster.local. -> 10.96.0.20" in out
    assert "example.com: resolves as example.com. -> 93.184.216.34" in out
    assert "3 search-list names tried first" in out
    results = json.loads((bundle / "dns" / "default_client.json").read_text())
    assert results["resolv_conf"]["ndots"] == 5
    assert [s["server"] for s in results["servers"]["servers"]] == [
        "10.96.0.10",
        "kube-system/coredns",
    ]
    assert all(s["tcp"]["status"] == "NOERROR" for s in results["servers"]["servers"])
    # the queries are in the bundle: every one tried, answered at the pod's eth0
    dns = json_document(analyze([bundle]))["dns"]
    names = {d["qname"].rstrip(".") for d in dns}
    assert {
        "example.com.default.svc.cluster.local",
        "example.com",
        "web.default.svc.cluster.local",
    } <= names


def test_dns_names_the_upstream_when_only_external_names_fail(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.lab.fault("dns-upstream-down", True)
    try:
        code = main(env.ktrace("dns", "client", "example.com", "-o", str(tmp_path / "d")))
    finally:
        env.lab.fault("dns-upstream-down", False)
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "example.com: no answer" in out, err
    assert "their upstream resolvers do not answer" in out


def test_pod_security_counts_containers_added_before_the_label(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = env.server.cluster.namespaces["default"]["metadata"]["labels"]
    labels["pod-security.kubernetes.io/enforce"] = "baseline"
    line = refused(env, capsys, "web-2", "--no-node")  # captured with NET_RAW/NET_ADMIN above
    assert "pod default/web-2 already holds containers it refuses" in line
    assert "ephemeral containers cannot be removed" in line


def test_rbac(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A view-only user is refused before anything is created, in one sentence naming every
    missing permission; nothing else is printed (no "captured", no cleanup error)."""
    out = env.lab.state / "refused"
    code = main(env.ktrace("capture", "client", "--context", "ktrace-lab-viewer", "-o", str(out)))
    err = capsys.readouterr().err
    assert code == 4 and not out.exists()
    assert err.splitlines() == [
        'ktrace: error: RBAC: user "viewer" may not patch pods/ephemeralcontainers in namespace '
        '"default" nor create pods/exec in namespace "default" (ktrace needs them to run '
        "tcpdump in the pods; ask for them, or use another --context)"
    ]


def test_unknown_image(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(env, capsys, "client", "--image", "example.invalid/nothing:1")
    assert "cannot start: ErrImagePull" in line and "--image" in line


def test_ephemeral_containers_disabled(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.server.behaviour.ephemeral_enabled = False
    line = refused(env, capsys, "client")
    assert "ephemeral containers are not available on this cluster" in line


def test_pod_not_running_and_not_found(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert "pod default/pending-1 is Pending, not Running" in refused(env, capsys, "pending-1")
    assert 'pod "nope" not found in namespace "default"' in refused(env, capsys, "pod/nope")
    assert 'service "nope" not found' in refused(env, capsys, "svc/nope")


def test_static_host_network_pod_is_captured_on_its_node(env: Env, tmp_path: Path) -> None:
    bundle = tmp_path / "etcd"
    argv = env.ktrace(
        "capture", "-n", "kube-system", "etcd-node-a", "--duration", "1", "-o", str(bundle)
    )
    assert main(argv) == 0
    kinds = {p.kind for p in read_manifest(bundle).points}  # type: ignore[union-attr]
    assert kinds == {"node", "tunnel"}


# --- stopping ----------------------------------------------------------------------------------
def test_a_cut_stream_keeps_what_arrived_and_kills_tcpdump(env: Env, tmp_path: Path) -> None:
    env.server.behaviour.cut_exec_after_bytes = 1500
    bundle = tmp_path / "cut"
    run = env.plugin("capture", "client", "--no-node", "--duration", "3", "-o", str(bundle))
    run.wait_for("capturing at")
    call_web(env)
    code, _, err = run.finish()
    assert code == 4, err
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "interrupted"
    assert "client-eth0" in manifest.reason and "connection" in manifest.reason
    data = (bundle / "points" / "client-eth0.pcap").read_bytes()
    assert len(data) > 1000 and rows(bundle, "client-eth0")  # what arrived is readable
    warnings = json_document(analyze([bundle]))["warnings"]
    assert any("the capture was cut short" in w and "client-eth0" in w for w in warnings)


@pytest.mark.parametrize("limit", [("--count", "5"), ("--max-size", "2K")])
def test_count_and_size_stop_the_capture(env: Env, tmp_path: Path, limit: tuple[str, str]) -> None:
    bundle = tmp_path / "b"
    began = time.monotonic()
    run = env.plugin(
        "capture", "client", "--no-node", *limit, "--duration", "60", "-o", str(bundle)
    )
    run.wait_for("capturing at")
    call_web(env, 3)
    code, _, err = run.finish()
    assert code == 0, err
    assert time.monotonic() - began < 45  # the limit ended it, not --duration
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "complete"
    size = (bundle / "points" / "client-eth0.pcap").stat().st_size
    if limit[0] == "--count":
        with build_index([bundle / "points" / "client-eth0.pcap"], workers=1) as index:
            assert manifest.points[0].packets == len(index) == 5
    else:
        assert size >= 2048


@pytest.fixture(params=["idle", "loaded"])
def machine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The machine as it is, or with every core kept busy (a CI run beside other jobs)."""
    burners = []
    if request.param == "loaded":
        spin = "while True: pass"
        burners = [
            subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)
        ]
    try:
        yield request.param
    finally:
        for b in burners:
            b.kill()
            b.wait()


@pytest.mark.parametrize("stage", ["setting up", "capturing"])
def test_ctrl_c_at_each_stage(env: Env, tmp_path: Path, stage: str, machine: str) -> None:
    """Ctrl-C ends the capture in bounded time and leaves nothing running, however busy the
    machine (the autouse fixture checks for leftovers)."""
    bundle = tmp_path / "b"
    run = env.plugin("capture", "svc/web", "-o", str(bundle))
    run.wait_for("adding ephemeral container" if stage == "setting up" else "capturing at")
    if stage == "capturing":
        call_web(env, 1)
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish()
    assert code == 130, err
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "interrupted"
    assert "Ctrl-C" in manifest.reason
    if stage == "capturing":
        assert sum(len(rows(bundle, p.id)) for p in manifest.points) > 0


def test_kill_9_leaves_what_cleanup_removes(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = env.plugin("capture", "client", "-o", str(tmp_path / "k"))
    run.wait_for("capturing at")
    run.proc.kill()
    run.finish()
    left = env.leftovers()
    assert any("node pod" in x for x in left) and any("ephemeral" in x for x in left)
    assert main(env.ktrace("cleanup")) == 0
    out = capsys.readouterr().out
    assert "deleted pod default/ktrace-node-node-a-" in out
    assert "ended ephemeral container ktrace-" in out
    # tcpdump dies when its container does, as on a node
    assert env.wait_clean() == []
    assert main(env.ktrace("cleanup")) == 0
    assert "nothing of ktrace's is running" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_capture_open_follows_the_capture_live_and_q_stops_it(env: Env, tmp_path: Path) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    bundle, rc = tmp_path / "live", tmp_path / "rc"
    command = f"{KUBECTL} ktrace capture pod/client --open -o {bundle}; echo $? > {rc}"
    term = Tmux(command, env.env, (160, 40))
    try:
        term.wait_for(r"LIVE capturing: 4 points", 60)
        call_web(env)
        # the UI indexes what arrived while the capture goes on: the call's packets reach it
        # (a refresh may land mid-call and show part of them first)
        term.wait_for(r"(?<![\d,])([2-9]\d|\d{3,}|\d{1,3}(,\d{3})+) packets, 4 points", 60)
        term.wait_for(r"LIVE capturing")
        term.keys("q")
        deadline = time.monotonic() + 60
        while not rc.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rc.read_text().strip() == "0"
    finally:
        term.close()
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "complete"
    assert {p.id for p in manifest.points} == {
        "client-eth0", "client-veth", "node-a-eth0", "node-a-flannel.1"
    }  # fmt: skip
    assert rows(bundle, "client-eth0")
