"""`kubectl ktrace` against a real Kubernetes (tests/cluster): the real API server validates
every object and patch, the real kubelet starts the ephemeral containers and streams exec,
real kube-proxy and kube-router write the rules the diagnosis quotes. The same assertions as
against the lab's API server (tests/test_plugin.py) where the two apply, each test checked
for leftovers: no tcpdump on the machine, no node pod, no running ephemeral container."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ktrace.analysis.pipeline import analyze
from ktrace.bundle.manifest import read_manifest
from ktrace.kube.api import Api, KubeFlags, explain, status_of
from ktrace.kube.debug import node_pod_spec
from ktrace.report.json_report import json_document
from tests.cluster import build
from tests.cluster.cluster import Cluster, unavailable
from tests.cluster.layout import DNS_VIP, NODES, WEB_VIP
from tests.cluster.manifests import RESTRICTED_SECURITY
from tests.cluster.processes import running
from tests.lab import topology as topo
from tests.lab.apiserver.server import ApiServer
from tests.lab.lab import Lab
from tests.running import Running, rows

WHY = unavailable()
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
SCRIPTS = sysconfig.get_path("scripts")
IMAGE = build.DEBUG_IMAGE
MANAGED = "app.kubernetes.io/managed-by=ktrace"


@dataclass
class Real:
    cluster: Cluster
    environ: dict[str, str]

    def kubectl(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.cluster.kubectl_path), "--kubeconfig", str(self.cluster.kubeconfig(user)),
             *args],
            capture_output=True, text=True, timeout=120, env=self.environ,
        )  # fmt: skip

    def ktrace(self, *args: str, user: str = "admin") -> list[str]:
        """`kubectl ktrace ARGS` through the real kubectl's plugin dispatch, with the debug
        image built here (no image can be pulled) for the commands that start one."""
        image = ["--image", IMAGE] if args[0] in ("capture", "trace", "dns") else []
        return [
            str(self.cluster.kubectl_path), "ktrace", *args,
            "--kubeconfig", str(self.cluster.kubeconfig(user)), *image,
        ]  # fmt: skip

    def run(self, *args: str, user: str = "admin", timeout: float = 180) -> tuple[int, str, str]:
        done = subprocess.run(
            self.ktrace(*args, user=user), capture_output=True, text=True, timeout=timeout,
            env=self.environ,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    def plugin(self, *args: str) -> Running:
        return Running(self.ktrace(*args), self.environ)

    def leftovers(self) -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "comm").read_text().strip() == "tcpdump":
                        found.append(f"tcpdump pid {proc.name}")
                except OSError:
                    continue
        pods = json.loads(self.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        for pod in pods:
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") == "ktrace":
                phase = pod.get("status", {}).get("phase")
                if phase not in ("Succeeded", "Failed") and "deletionTimestamp" not in meta:
                    found.append(f"node pod {meta['namespace']}/{meta['name']}")
            for status in pod.get("status", {}).get("ephemeralContainerStatuses") or []:
                if status["name"].startswith("ktrace-") and "running" in status.get("state", {}):
                    found.append(f"ephemeral container {status['name']} in {meta['name']}")
        return found

    def wait_clean(self, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def fault(self, name: str, on: bool) -> None:
        self.cluster.fault(name, on)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    # a cluster someone brought up by hand stays up; one started here goes
    ours = running("kube-apiserver") is None
    cluster = Cluster().up("iptables")
    plugins = tmp_path_factory.mktemp("path")
    # kubectl finds `kubectl-ktrace` on PATH; the cluster's own kubectl is within the skew
    os.symlink(cluster.kubectl_path, plugins / "kubectl")
    environ = dict(
        os.environ,
        PATH=f"{plugins}{os.pathsep}{SCRIPTS}{os.pathsep}{os.environ['PATH']}",
        KUBECACHEDIR=str(tmp_path_factory.mktemp("kube-cache")),
    )
    environ.pop("KUBECONFIG", None)
    try:
        yield Real(cluster, environ)
    finally:
        if ours:
            cluster.down()


@pytest.fixture(autouse=True)
def fresh(real: Real) -> Iterator[None]:
    yield
    for fault in list(real.cluster.settings.get("faults", [])):
        real.fault(fault, False)
    assert real.wait_clean() == []


def web(real: Real, times: int = 2) -> None:
    """The client calls the Service, as an application would."""
    for _ in range(times):
        # (busybox 1.35's wget dies of a segfault with -q -T; the plain form works)
        done = real.kubectl("exec", "client", "-c", "main", "--", "wget", "-O", "/dev/null",
                            f"http://{WEB_VIP}/")  # fmt: skip
        assert done.returncode == 0, done.stderr


def points(bundle: Path) -> dict[str, str | None]:
    manifest = read_manifest(bundle)
    assert manifest is not None
    return {p.id: p.node for p in manifest.points}


# --- the cluster itself ------------------------------------------------------------------------
def test_the_real_server_and_two_ready_nodes(real: Real) -> None:
    version = json.loads(real.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"
    nodes = real.kubectl("get", "nodes", "--no-headers").stdout.splitlines()
    assert [line.split()[:2] for line in nodes] == [[n.name, "Ready"] for n in NODES]


# --- captures --------------------------------------------------------------------------------
def test_capture_a_pod_through_kubectls_plugin_dispatch(real: Real, tmp_path: Path) -> None:
    """An ephemeral container the real kubelet starts, tcpdump streamed through the real API
    server's exec, the pod's veth and its node's NIC from a node debug pod on that node."""
    bundle = tmp_path / "client"
    run = real.plugin("capture", "pod/client", "--duration", "6", "-o", str(bundle))
    run.wait_for("capturing at", timeout=120)
    web(real)
    code, out, err = run.finish(timeout=120)
    assert code == 0, err
    assert out.strip() == str(bundle)
    assert points(bundle) == {"client-eth0": "node-a", "client-veth": "node-a",
                              "node-a-eth0": "node-a"}  # fmt: skip
    for point in ("client-eth0", "client-veth"):
        assert any(r[3] == 80 for r in rows(bundle, point)), point
    pod = json.loads(real.kubectl("get", "pod", "client", "-o", "json").stdout)
    ours = [
        s for s in pod["status"]["ephemeralContainerStatuses"]
        if s["name"].startswith("ktrace-") and s["image"].endswith(IMAGE)
    ]  # fmt: skip
    assert ours and all(s["containerID"].startswith("containerd://") for s in ours)
    http = json_document(analyze([bundle]))["http"]
    assert [r["status"] for r in http if r["server"].startswith(f"{WEB_VIP}:")]


def test_capture_a_deployment_and_a_service(real: Real, tmp_path: Path) -> None:
    """deploy/coredns in kube-system, and svc/web whose endpoints are on both nodes: a node
    debug pod on each, each capturing its own pods' veths."""
    dns = tmp_path / "dns"
    code, _, err = real.run("capture", "deploy/coredns", "-n", "kube-system", "--duration", "2",
                            "-o", str(dns))  # fmt: skip
    assert code == 0, err
    found = points(dns)
    assert any(p.startswith("coredns-") and p.endswith("-eth0") for p in found), found
    assert found.get("node-b-eth0") == "node-b"
    svc = tmp_path / "svc"
    code, _, err = real.run("capture", "svc/web", "--duration", "2", "-o", str(svc))
    assert code == 0, err
    assert points(svc) == {
        "web-1-eth0": "node-a", "web-2-eth0": "node-b", "web-1-veth": "node-a",
        "web-2-veth": "node-b", "node-a-eth0": "node-a", "node-b-eth0": "node-b",
    }  # fmt: skip


# --- trace -------------------------------------------------------------------------------------
def test_trace_to_a_healthy_service_exits_0(real: Real, tmp_path: Path) -> None:
    code, out, err = real.run("trace", "client", "--to", "svc/web:80", "-o", str(tmp_path / "t"))
    assert code == 0, out + err
    assert out.count("ok   ") == 3 and "FAIL" not in out
    assert out.startswith("Verdict: nothing looks wrong")
    assert "kernel drop reasons not recorded" not in err  # default admits tracefs


def test_trace_a_network_policy_drop(real: Real, tmp_path: Path) -> None:
    """A real NetworkPolicy, enforced by kube-router: the SYNs to web-2 stop between node-b's
    NIC and web-2's veth, and the finding quotes kube-router's own rule."""
    real.fault("policy-drop", True)
    time.sleep(2)  # kube-router syncs its rules
    code, out, err = real.run("trace", "client", "--to", "svc/web", "-o", str(tmp_path / "t"))
    assert code == 1, out + err
    text = " ".join(out.split())
    assert re.search(r"FAIL default/web-2 at \S+:80: failed \(Connection refused\)", out), out
    assert "rejected between node-b-eth0 and web-2-veth" in text
    assert "-A KUBE-POD-FW-" in text and "-j REJECT" in text
    assert "rule to REJECT traffic destined for POD name:web-2" in text


def test_trace_with_kube_proxy_down(real: Real, tmp_path: Path) -> None:
    real.fault("kube-proxy-down", True)
    code, out, err = real.run("trace", "client", "--to", "svc/web", "-o", str(tmp_path / "t"))
    assert code == 1, out + err
    verdict = f"Verdict: 1 finding, the most severe [HIGH] traffic to svc default/web ({WEB_VIP})"
    assert out.startswith(verdict), out
    again = analyze([tmp_path / "t"])
    assert [f.id for f in again.findings] == ["nat.missing"]
    assert f"has no rule for {WEB_VIP} at all" in " ".join(again.findings[0].explanation.split())


def test_trace_a_service_without_endpoints(real: Real, tmp_path: Path) -> None:
    """kube-proxy (iptables) would REJECT, but kube-router's ACCEPT in FORWARD comes first:
    the SYNs leave the node un-DNAT-ed, and the finding says both."""
    real.fault("no-endpoints", True)
    code, out, err = real.run("trace", "client", "--to", "svc/web", "-o", str(tmp_path / "t"))
    assert code == 1, out + err
    assert "it has no ready endpoint pod: the ClusterIP alone" in out
    text = " ".join(out.split())
    assert "left the node without DNAT" in text
    assert "The inventory lists no ready endpoint for it" in text
    assert "KUBE-ROUTER-FORWARD" in text


# --- dns ---------------------------------------------------------------------------------------
def test_dns_as_the_pod_resolves(real: Real, tmp_path: Path) -> None:
    code, out, err = real.run("dns", "client", "web", "example.com", "-o", str(tmp_path / "d"))
    assert code == 0, out + err
    assert DNS_VIP in out and WEB_VIP in out
    real.fault("dns-upstream-down", True)
    code, out, err = real.run("dns", "client", "ktrace.example", "-o", str(tmp_path / "e"))
    assert code == 1, out + err
    assert "ktrace.example" in out


# --- stopping and cleaning up ------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["setting up", "capturing"])
def test_ctrl_c_at_each_stage(real: Real, tmp_path: Path, stage: str) -> None:
    bundle = tmp_path / "b"
    run = real.plugin("capture", "svc/web", "-o", str(bundle))
    run.wait_for("adding ephemeral container" if stage == "setting up" else "capturing at", 120)
    if stage == "capturing":
        web(real, 1)
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=120)
    assert code == 130, err
    manifest = read_manifest(bundle)
    assert manifest is not None and manifest.status == "interrupted"


def test_kill_9_leaves_what_cleanup_removes(real: Real, tmp_path: Path) -> None:
    run = real.plugin("capture", "client", "-o", str(tmp_path / "k"))
    run.wait_for("capturing at", 120)
    run.proc.kill()
    run.finish()
    left = real.leftovers()
    assert any("node pod" in x for x in left) and any("ephemeral" in x for x in left), left
    code, out, err = real.run("cleanup")
    assert code == 0, err
    assert "deleted pod default/ktrace-node-node-a-" in out
    assert "ended ephemeral container ktrace-" in out
    assert real.wait_clean() == []


# --- refusals from the real thing --------------------------------------------------------------
def refusal(real: Real, *args: str, user: str = "admin") -> str:
    code, _, err = real.run("capture", *args, "--duration", "1", user=user)
    lines = [x for x in err.splitlines() if ": error:" in x]
    assert code == 4, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_pod_security_restricted(real: Real) -> None:
    line = refusal(real, "client", "-n", "restricted", "--no-node")
    assert 'namespace "restricted" enforces PodSecurity "restricted"' in line
    assert "tcpdump cannot run under restricted" in line


def test_pod_security_baseline(real: Real, tmp_path: Path) -> None:
    """baseline refuses the added capabilities (retried without: containerd's defaults keep
    NET_RAW) and the node debug pod."""
    line = refusal(real, "client", "-n", "baseline")
    assert 'node capture refused: namespace "baseline" enforces PodSecurity "baseline"' in line
    code, _, err = real.run("capture", "client", "-n", "baseline", "--no-node", "--duration",
                            "2", "-o", str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    assert "retrying without added capabilities" in err


def test_a_view_only_user(real: Real) -> None:
    line = refusal(real, "client", user="viewer")
    assert line == (
        'kubectl ktrace: error: RBAC: user "ktrace-test-viewer" may not patch '
        'pods/ephemeralcontainers in namespace "default" nor create pods/exec in namespace '
        '"default" (ktrace needs them to run tcpdump in the pods; ask for them, or use another '
        "--context)"
    )


def test_a_pending_pod_and_a_static_pod(real: Real, tmp_path: Path) -> None:
    line = refusal(real, "pending")
    assert "pod default/pending is Pending, not Running: there is no network namespace" in line
    static = f"static-web-{NODES[1].name}"
    code, _, err = real.run("capture", static, "--duration", "2", "-o", str(tmp_path / "s"))
    assert code == 0, err  # a host-network pod: captured on its node
    assert points(tmp_path / "s") == {"node-b-eth0": "node-b"}


def test_a_policy_refusing_hostpath_costs_only_the_drop_reasons(real: Real, tmp_path: Path) -> None:
    """A ValidatingAdmissionPolicy refuses hostPath volumes in the namespace: the server's dry
    run says so, one line tells what is given up, the capture goes on."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "ktrace-test-no-host-path"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                 "operations": ["CREATE"], "resources": ["pods"]}]},
            "validations": [{"expression": "!has(object.spec.volumes) || "
                             "object.spec.volumes.all(v, !has(v.hostPath))",
                             "message": "hostPath volumes are not allowed"}],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "ktrace-test-no-host-path"},
        "spec": {
            "policyName": "ktrace-test-no-host-path",
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "default"}}},
        },
    }  # fmt: skip
    real.cluster.apply([policy, binding])
    try:
        time.sleep(2)  # the policy takes effect once the API server has read it
        code, out, err = real.run("trace", "client", "--to", "pod/web-1:80", "-o",
                                  str(tmp_path / "t"))  # fmt: skip
    finally:
        real.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     "ktrace-test-no-host-path")  # fmt: skip
    assert code == 0, out + err
    lines = [x for x in err.splitlines() if "kernel drop reasons not recorded" in x]
    assert len(lines) == 1, err
    assert "hostPath volumes are not allowed" in lines[0]


# --- kube-proxy in nftables mode (last: the cluster is brought up again for it) ---------------
def test_kube_proxy_in_nftables_mode(real: Real, tmp_path: Path) -> None:
    """The same faults with kube-proxy's nftables rules, which run before the filter table:
    a Service without endpoints is refused by kube-proxy itself, and the finding quotes the
    nft rule."""
    real.cluster.down()
    real.cluster.up("nftables")
    expected = {
        "no-endpoints": ("svc.no-endpoints", "goto reject-chain"),
        "kube-proxy-down": ("nat.missing", f"has no rule for {WEB_VIP} at all"),
        "policy-drop": ("path.drop", "-j REJECT --reject-with icmp-port-unreachable"),
    }
    for fault, (check, words) in expected.items():
        real.fault(fault, True)
        time.sleep(2)
        try:
            code, out, err = real.run("trace", "client", "--to", "svc/web", "-o",
                                      str(tmp_path / fault))  # fmt: skip
        finally:
            real.fault(fault, False)
        assert code == 1, out + err
        found = analyze([tmp_path / fault]).findings
        assert [f.id for f in found if f.severity >= 3] == [check], [f.title for f in found]
        assert words in " ".join(" ".join(f.explanation.split()) for f in found)


# --- the lab's imitation answers every request ktrace makes as the real server does ----------
@dataclass
class World:
    """One API server, and where in it each request's subject lives."""

    admin: Api
    viewer: Api
    pending: str  # a pod that never runs
    node: str
    psa: Callable[[str], str]  # an enforce level -> the namespace of a `client` pod under it
    names: dict[str, str]  # this world's own names -> what they read as in the comparison


Ask = Callable[[World], tuple[Api, Callable[[Api], Any]]]


def _caps_patch(api: Api, namespace: str, pod: str) -> Any:
    body = {"spec": {"ephemeralContainers": [{
        "name": "ktrace-conform", "image": IMAGE, "command": ["sleep", "1"],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
    }]}}  # fmt: skip
    return api.core.patch_namespaced_pod_ephemeralcontainers(
        pod, namespace, body, dry_run="All", _preload_content=False
    )


def _node_pod(api: Api, namespace: str, node: str) -> Any:
    spec = node_pod_spec(node, namespace, IMAGE, 60, "conform")
    spec["metadata"]["name"] = "ktrace-node-conform"
    return api.core.create_namespaced_pod(namespace, spec, dry_run="All", _preload_content=False)


def _review(api: Api, namespace: str) -> Any:
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": namespace, "verb": "patch",
                                            "resource": "pods",
                                            "subresource": "ephemeralcontainers"}}}  # fmt: skip
    return client.AuthorizationV1Api(api.api_client).create_self_subject_access_review(
        body, _preload_content=False
    )


def _self(api: Api) -> Any:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    return client.AuthenticationV1Api(api.api_client).create_self_subject_review(
        body, _preload_content=False
    )


# every request ktrace makes (kube/), asked so that it succeeds and so that it is refused
REQUESTS: dict[str, Ask] = {
    "read pod": lambda w: (w.admin, lambda a: a.core.read_namespaced_pod(
        "client", "default", _preload_content=False)),
    "read pod, missing": lambda w: (w.admin, lambda a: a.core.read_namespaced_pod(
        "nope", "default", _preload_content=False)),
    "read pending pod": lambda w: (w.admin, lambda a: a.core.read_namespaced_pod(
        w.pending, "default", _preload_content=False)),
    "list pods by label": lambda w: (w.admin, lambda a: a.core.list_namespaced_pod(
        "default", label_selector="app=web", _preload_content=False)),
    "list every pod": lambda w: (w.viewer, lambda a: a.core.list_pod_for_all_namespaces(
        _preload_content=False)),
    "read deployment, missing": lambda w: (w.admin, lambda a: a.apps.read_namespaced_deployment(
        "nope", "default", _preload_content=False)),
    "read service": lambda w: (w.admin, lambda a: a.core.read_namespaced_service(
        "web", "default", _preload_content=False)),
    "read service, missing": lambda w: (w.admin, lambda a: a.core.read_namespaced_service(
        "nope", "default", _preload_content=False)),
    "list every service": lambda w: (w.viewer, lambda a: a.core.list_service_for_all_namespaces(
        _preload_content=False)),
    "list a service's slices": lambda w: (w.admin, lambda a: (
        a.discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=web", _preload_content=False))),
    "list every slice": lambda w: (w.viewer, lambda a: (
        a.discovery.list_endpoint_slice_for_all_namespaces(_preload_content=False))),
    "read namespace": lambda w: (w.admin, lambda a: a.core.read_namespace(
        "default", _preload_content=False)),
    "list nodes": lambda w: (w.admin, lambda a: a.core.list_node(_preload_content=False)),
    "list nodes, view-only": lambda w: (w.viewer, lambda a: a.core.list_node(
        _preload_content=False)),
    "access review": lambda w: (w.admin, lambda a: _review(a, "default")),
    "access review, view-only": lambda w: (w.viewer, lambda a: _review(a, "default")),
    "self review, view-only": lambda w: (w.viewer, _self),
    "ephemeral container, view-only": lambda w: (w.viewer, lambda a: _caps_patch(
        a, "default", "client")),
    "ephemeral container, restricted": lambda w: (w.admin, lambda a: _caps_patch(
        a, w.psa("restricted"), "client")),
    "ephemeral container, baseline": lambda w: (w.admin, lambda a: _caps_patch(
        a, w.psa("baseline"), "client")),
    "node pod": lambda w: (w.admin, lambda a: _node_pod(a, "default", w.node)),
    "node pod, view-only": lambda w: (w.viewer, lambda a: _node_pod(a, "default", w.node)),
    "node pod, baseline": lambda w: (w.admin, lambda a: _node_pod(a, w.psa("baseline"), w.node)),
    "delete pod, missing": lambda w: (w.admin, lambda a: a.core.delete_namespaced_pod(
        "ktrace-node-gone", "default", grace_period_seconds=0, _preload_content=False)),
}  # fmt: skip


def answer(world: World, ask: Ask) -> tuple[int, str]:
    """(HTTP code, and what ktrace makes of it: the object's kind and the fields it reads,
    or its one sentence), each world's own names replaced."""
    api, request = ask(world)
    try:
        data = json.loads(request(api).data)
        code = 200
        read = {"kind": data.get("kind"), "allowed": data.get("status", {}).get("allowed"),
                "phase": data.get("status", {}).get("phase"),
                "items": sorted({i.get("kind", "") for i in data.get("items", [])})}  # fmt: skip
        said = json.dumps({k: v for k, v in read.items() if v not in (None, [])})
    except ApiException as exc:
        code, status = status_of(exc)
        said = f"{status.get('reason')}: {explain(code, status)}"
    for own, common in world.names.items():
        said = said.replace(own, common)
    return code, said


@pytest.fixture(scope="module")
def imitation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Path]]:
    lab = Lab().up()
    server = ApiServer(lab.description()).start()
    try:
        yield server, server.kubeconfig(tmp_path_factory.mktemp("imitation") / "kubeconfig")
    finally:
        server.stop()
        lab.down()


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
def test_the_labs_api_server_answers_as_the_real_one(
    real: Real, imitation: tuple[ApiServer, Path], request_name: str
) -> None:
    server, kubeconfig = imitation
    labels = server.cluster.namespaces["default"]["metadata"]["labels"]

    client_pod = server.cluster.pods[("default", "client")]
    as_it_was = copy.deepcopy(client_pod)

    def lab_level(level: str) -> str:
        labels["pod-security.kubernetes.io/enforce"] = level
        if level == "restricted":  # as the real world's pod there, made to be admitted
            for c in client_pod["spec"]["containers"]:
                c["securityContext"] = RESTRICTED_SECURITY
        return "default"

    real_world = World(
        Api(KubeFlags(kubeconfig=str(real.cluster.kubeconfig("admin")))),
        Api(KubeFlags(kubeconfig=str(real.cluster.kubeconfig("viewer")))),
        "pending", NODES[0].name, lambda level: level,
        {"ktrace-test-viewer": "VIEWER", "pending": "PENDING", '"restricted" enforces':
         '"NS" enforces', '"baseline" enforces': '"NS" enforces', NODES[0].name: "NODE"},
    )  # fmt: skip
    lab_world = World(
        Api(KubeFlags(kubeconfig=str(kubeconfig), context="ktrace-lab")),
        Api(KubeFlags(kubeconfig=str(kubeconfig), context="ktrace-lab-viewer")),
        "pending-1", topo.NODES[0].name, lab_level,
        {"viewer": "VIEWER", "pending-1": "PENDING", '"default" enforces': '"NS" enforces',
         topo.NODES[0].name: "NODE"},
    )  # fmt: skip
    try:
        theirs = answer(real_world, REQUESTS[request_name])
        ours = answer(lab_world, REQUESTS[request_name])
    finally:
        labels.pop("pod-security.kubernetes.io/enforce", None)
        server.cluster.pods[("default", "client")] = as_it_was
    assert ours == theirs
