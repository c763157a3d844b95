"""The containers ktrace runs in: an ephemeral container in a pod (its network namespace),
and a node debug pod in the host network of a node.

Both start idle and are driven by exec, so no output is lost before we read it. The idle
process ends by itself after a deadline (a crashed ktrace leaves nothing running for long),
and ends at once on SIGTERM: a container's PID 1 only gets the signals it handles.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from ktrace.errors import ClusterError
from ktrace.kube.api import Api, api_errors
from ktrace.kube.execstream import run
from ktrace.kube.image import DEFAULT_IMAGE
from ktrace.kube.targets import Pod

MANAGED_BY = {"app.kubernetes.io/managed-by": "ktrace"}
CAPS = ["NET_ADMIN", "NET_RAW"]
FAILED_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # kubectl's: no vowels, no look-alikes


def suffix() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(5))


def idle(ttl: int) -> list[str]:
    return ["sh", "-c", f"trap 'exit 0' TERM INT; sleep {int(ttl)} & wait"]


@dataclass(frozen=True)
class Container:
    """Where to exec: a container of a pod."""

    namespace: str
    pod: str
    name: str
    node: str

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.pod}"


def add_ephemeral(
    api: Api,
    pod: Pod,
    name: str,
    image: str,
    ttl: int,
    capabilities: bool = True,
    target_container: str | None = None,
) -> Container:
    """PATCH pods/ephemeralcontainers (strategic merge: the list merges by name, so this
    appends) with an idle container; caps NET_RAW/NET_ADMIN unless told not to. Returns
    without waiting for it to run (wait_running)."""
    if pod.static:
        raise ClusterError(
            f"pod {pod.ref} is a static pod: static pods do not support ephemeral containers",
            "it runs in its node's network: capture there with the node side (drop --no-node)"
            if pod.host_network
            else "capture it from its node",
        )
    if target_container and target_container not in pod.containers:
        raise ClusterError(
            f'pod {pod.ref} has no container "{target_container}"',
            f"its containers: {', '.join(pod.containers)}",
        )
    security: dict[str, Any] = {"runAsUser": 0, "runAsNonRoot": False}
    if capabilities:
        security["capabilities"] = {"add": CAPS}
    body = {
        "spec": {
            "ephemeralContainers": [
                {
                    "name": name,
                    "image": image,
                    "command": idle(ttl),
                    "stdin": False,
                    "tty": False,
                    "imagePullPolicy": "IfNotPresent",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": security,
                    **({"targetContainerName": target_container} if target_container else {}),
                }
            ]
        }
    }
    try:
        with api_errors():
            api.core.patch_namespaced_pod_ephemeralcontainers(
                pod.name, pod.namespace, body, _request_timeout=api.timeout
            )
    except ClusterError as exc:
        if exc.message == "the server could not find the requested resource":
            raise ClusterError(
                "ephemeral containers are not available on this cluster (the "
                "pods/ephemeralcontainers subresource is missing)",
                "they need Kubernetes 1.25 or newer",
            ) from None
        raise
    return Container(pod.namespace, pod.name, name, pod.node)


def _status(pod: dict[str, Any], name: str, ephemeral: bool) -> dict[str, Any] | None:
    key = "ephemeralContainerStatuses" if ephemeral else "containerStatuses"
    for s in (pod.get("status") or {}).get(key) or []:
        if s.get("name") == name:
            return dict(s)
    return None


def wait_running(api: Api, c: Container, ephemeral: bool, timeout: float = 120) -> None:
    """Until the container runs; image pull and config errors end the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        obj = api.call(api.core.read_namespaced_pod, c.pod, c.namespace)
        status = _status(obj, c.name, ephemeral)
        state = (status or {}).get("state") or {}
        if "running" in state:
            return
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAILED_WAITING:
            raise ClusterError(
                f"container {c.name} in {c.where} cannot start: {waiting['reason']}: "
                f"{waiting.get('message', '')}".rstrip(": "),
                "check --image (it needs tcpdump and dig; the default is "
                f"{DEFAULT_IMAGE}) and that the node can pull it",
            )
        if "terminated" in state:
            t = state["terminated"]
            raise ClusterError(
                f"container {c.name} in {c.where} exited at once "
                f"(exit code {t.get('exitCode')}, {t.get('reason', '')})"
            )
        if time.monotonic() > deadline:
            raise ClusterError(
                f"container {c.name} in {c.where} did not start within {timeout:.0f}s",
                f"kubectl describe pod -n {c.namespace} {c.pod}",
            )
        time.sleep(0.25)


def end_ephemeral(api: Api, c: Container) -> bool:
    """Ephemeral containers cannot be removed; ending their PID 1 stops them for good.
    False when it was not running (never added, never started, already ended)."""
    try:
        obj = api.call(api.core.read_namespaced_pod, c.pod, c.namespace)
    except ClusterError as exc:
        if "not found" in exc.message:
            return False
        raise
    status = _status(obj, c.name, ephemeral=True)
    if status is None or "running" not in (status.get("state") or {}):
        return False
    run(api, c.namespace, c.pod, c.name, ["kill", "-TERM", "1"], timeout=15)
    return True


def node_pod_name(node: str) -> str:
    return f"ktrace-node-{node}"[:57] + f"-{suffix()}"


TRACEFS = "/sys/kernel/tracing"


def node_pod_spec(
    node: str, namespace: str, image: str, ttl: int, session: str, tracefs: bool = False
) -> dict[str, Any]:
    """Host network, NET_ADMIN + NET_RAW: enough for tcpdump, ip, iptables-save and conntrack.
    Not privileged, no host PID; the host's tracefs (the kernel's drop events) only when
    asked for, as a hostPath volume, which only a privileged namespace admits."""
    mount = {"volumeMounts": [{"name": "tracefs", "mountPath": TRACEFS}]} if tracefs else {}
    volumes = (
        {"volumes": [{"name": "tracefs", "hostPath": {"path": TRACEFS, "type": "Directory"}}]}
        if tracefs
        else {}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": node_pod_name(node),
            "namespace": namespace,
            "labels": {**MANAGED_BY, "ktrace.io/session": session},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(ttl) + 60,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "capture",
                    "image": image,
                    "command": idle(ttl),
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": {"runAsUser": 0, "capabilities": {"add": CAPS}},
                    **mount,
                }
            ],
            **volumes,
        },
    }


def create_node_pod(
    api: Api,
    c: Container,
    image: str,
    ttl: int,
    session: str,
    tracefs: bool = False,
    dry_run: bool = False,
) -> None:
    """The pod named by `c`, created without waiting for it to run (wait_running). With
    `dry_run` the server judges it (authorization, admission) and keeps nothing."""
    spec = node_pod_spec(c.node, c.namespace, image, ttl, session, tracefs)
    spec["metadata"]["name"] = c.pod
    extra = {"dry_run": "All"} if dry_run else {}
    with api_errors():
        create = api.core.create_namespaced_pod
        # the client sends a plain dict body as it is; its stubs only name V1Pod
        create(c.namespace, spec, _request_timeout=api.timeout, **extra)  # type: ignore[arg-type]  # dict body


def namespace_level(api: Api, namespace: str) -> str | None:
    """The PodSecurity level the namespace enforces, as its label says (None: no label, or
    the namespace cannot be read)."""
    try:
        obj = api.call(api.core.read_namespace, namespace)
    except ClusterError:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("pod-security.kubernetes.io/enforce")


def delete_pod(api: Api, c: Container) -> None:
    try:
        with api_errors():
            api.core.delete_namespaced_pod(
                c.pod, c.namespace, grace_period_seconds=0, _request_timeout=api.timeout
            )
    except ClusterError as exc:
        if "not found" not in exc.message:
            raise
