"""The lab as Kubernetes objects, and what changes them: ephemeral containers, node debug
pods, namespace labels. Objects are the JSON the real API serves, with every field the
`kubernetes` v37 models require."""

from __future__ import annotations

import copy
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.lab.apiserver.runtime import Running, cap_argv, start_container

KNOWN_IMAGES = {"nicolaka/netshoot", "busybox", "registry.k8s.io/pause"}
LAB_APP_IMAGE = "registry.k8s.io/pause:3.10"
PRIVILEGED_NAMESPACE_LABELS = {"pod-security.kubernetes.io/enforce": "privileged"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_caps(container: dict[str, Any]) -> list[str]:
    """setpriv's argv for a container's securityContext (nothing when privileged)."""
    sc = container.get("securityContext") or {}
    return cap_argv((sc.get("capabilities") or {}).get("add") or [], bool(sc.get("privileged")))


def mounts_tracefs(spec: dict[str, Any], container: dict[str, Any]) -> bool:
    """The container mounts a hostPath volume of the host's tracefs where tracefs lives."""
    traced = {
        v["name"]
        for v in spec.get("volumes") or []
        if (v.get("hostPath") or {}).get("path") == "/sys/kernel/tracing"
    }
    return any(
        m.get("name") in traced and m.get("mountPath") == "/sys/kernel/tracing"
        for m in container.get("volumeMounts") or []
    )


def image_known(image: str) -> bool:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: -(len(last) - last.index(":"))]
    for prefix in ("docker.io/library/", "docker.io/"):
        name = name.removeprefix(prefix)
    return name in KNOWN_IMAGES


@dataclass
class Behaviour:
    """Switches tests flip to reproduce what goes wrong on real clusters."""

    ephemeral_enabled: bool = True
    cut_exec_after_bytes: int | None = None  # the connection drops once this much was sent
    # a policy engine (a ValidatingAdmissionPolicy, Kyverno, Gatekeeper) refuses hostPath
    refuse_host_path: bool = False


@dataclass
class Cluster:
    lab: dict[str, Any]
    behaviour: Behaviour = field(default_factory=Behaviour)
    lock: threading.RLock = field(default_factory=threading.RLock)
    version: int = 1000
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    slices: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # (namespace, pod, container) -> its processes
    running: dict[tuple[str, str, str], Running] = field(default_factory=dict)
    netns: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        started = now()
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            labels = {"kubernetes.io/metadata.name": name}
            if name == "kube-system":
                labels |= PRIVILEGED_NAMESPACE_LABELS
            self.namespaces[name] = self._meta(
                "Namespace", {"name": name, "labels": labels}, {"phase": "Active"}
            )
        for node in self.lab["nodes"]:
            self.nodes[node["name"]] = self._node(node, started)
        for pod in self.lab["pods"]:
            key = (pod["namespace"], pod["name"])
            self.netns[key] = self.lab["namespaces"][pod["name"]]
            self.pods[key] = self._pod(pod, started)
        # a static (mirror) pod in the host network, and one no node has taken yet
        node_a = self.lab["nodes"][0]
        etcd = self._pod(
            {
                "name": f"etcd-{node_a['name']}",
                "namespace": "kube-system",
                "node": node_a["name"],
                "ip": node_a["ip"],
                "labels": {"component": "etcd", "tier": "control-plane"},
            },
            started,
            host_network=True,
        )
        etcd["metadata"]["annotations"] = {"kubernetes.io/config.mirror": secrets.token_hex(16)}
        etcd["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_a["name"], "uid": "node-a-uid"}
        ]
        self.pods[("kube-system", etcd["metadata"]["name"])] = etcd
        self.netns[("kube-system", etcd["metadata"]["name"])] = self.lab["namespaces"][
            node_a["name"]
        ]
        pending = self._pod(
            {"name": "pending-1", "namespace": "default", "node": "", "ip": "", "labels": {}},
            started,
        )
        pending["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient memory.",
                }
            ],
            "qosClass": "BestEffort",
        }
        del pending["spec"]["nodeName"]
        self.pods[("default", "pending-1")] = pending
        for svc in self.lab["services"]:
            self.services[(svc["namespace"], svc["name"])] = self._service(svc)
        for sl in self.lab["inventory"]["endpointslices"]:
            self.slices[(sl["namespace"], sl["service"])] = self._slice(sl)
        self.deployments[("default", "web")] = self._meta(
            "Deployment",
            {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2},
            api="apps/v1",
            spec={"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
        )

    # --- object builders ----------------------------------------------------------------------
    def bump(self) -> str:
        self.version += 1
        return str(self.version)

    def _meta(
        self,
        kind: str,
        metadata: dict[str, Any],
        status: dict[str, Any] | None = None,
        api: str = "v1",
        spec: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        meta = {
            "uid": secrets.token_hex(16),
            "resourceVersion": self.bump(),
            "creationTimestamp": now(),
            **metadata,
        }
        obj: dict[str, Any] = {"kind": kind, "apiVersion": api, "metadata": meta}
        if spec is not None:
            obj["spec"] = spec
        if status is not None:
            obj["status"] = status
        return obj

    def _node(self, node: dict[str, Any], started: str) -> dict[str, Any]:
        return self._meta(
            "Node",
            {"name": node["name"], "labels": {"kubernetes.io/hostname": node["name"]}},
            {
                "addresses": [
                    {"type": "InternalIP", "address": node["ip"]},
                    {"type": "Hostname", "address": node["name"]},
                ],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": started}],
                "nodeInfo": {
                    "kubeletVersion": "v1.32.5",
                    "containerRuntimeVersion": "containerd://1.7.24",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0",
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                    "kubeProxyVersion": "v1.32.5",
                },
            },
            spec={"podCIDR": node["pod_cidr"], "podCIDRs": [node["pod_cidr"]]},
        )

    def _pod(self, pod: dict[str, Any], started: str, host_network: bool = False) -> dict[str, Any]:
        node = next((n for n in self.lab["nodes"] if n["name"] == pod["node"]), None)
        container = {
            "name": "app",
            "image": LAB_APP_IMAGE,
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
        return self._meta(
            "Pod",
            {"name": pod["name"], "namespace": pod["namespace"], "labels": pod["labels"]},
            {
                "phase": "Running",
                "podIP": pod["ip"],
                "podIPs": [{"ip": pod["ip"]}],
                "hostIP": node["ip"] if node else "",
                "hostIPs": [{"ip": node["ip"]}] if node else [],
                "startTime": started,
                "qosClass": "BestEffort",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": started}
                    for t in ("PodReadyToStartContainers", "Initialized", "Ready", "PodScheduled")
                ],
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": LAB_APP_IMAGE,
                        "imageID": "",
                        "containerID": f"containerd://{secrets.token_hex(32)}",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            },
            spec={
                "containers": [container],
                "nodeName": pod["node"],
                "restartPolicy": "Always",
                "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
                "hostNetwork": host_network,
                "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 30,
                "tolerations": [],
            },
        )

    def _service(self, svc: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "type": svc["type"],
            "clusterIP": svc["cluster_ip"],
            "clusterIPs": [svc["cluster_ip"]],
            "selector": svc["selector"],
            "ports": [
                {
                    "name": p["name"],
                    "port": p["port"],
                    "targetPort": p["target"],
                    "protocol": p["protocol"],
                    **({"nodePort": p["node_port"]} if svc["type"] != "ClusterIP" else {}),
                }
                for p in svc["ports"]
            ],
            "ipFamilies": ["IPv4"],
            "sessionAffinity": "None",
        }
        if svc["type"] != "ClusterIP":
            spec["externalTrafficPolicy"] = svc["external_policy"]
        if svc["health_port"]:
            spec["healthCheckNodePort"] = svc["health_port"]
        ingress = [{"ip": svc["lb_ip"], "ipMode": "VIP"}] if svc["lb_ip"] else []
        return self._meta(
            "Service",
            {"name": svc["name"], "namespace": svc["namespace"], "labels": {}},
            {"loadBalancer": {"ingress": ingress} if ingress else {}},
            spec=spec,
        )

    def _slice(self, sl: dict[str, Any]) -> dict[str, Any]:
        obj = self._meta(
            "EndpointSlice",
            {
                "name": f"{sl['service']}-{secrets.token_hex(3)[:5]}",
                "namespace": sl["namespace"],
                "labels": {"kubernetes.io/service-name": sl["service"]},
            },
            api="discovery.k8s.io/v1",
        )
        obj["addressType"] = "IPv4"
        obj["endpoints"] = [
            {
                "addresses": [e["ip"]],
                "conditions": {"ready": e["ready"], "serving": e["ready"], "terminating": False},
                "nodeName": e["node"],
                "targetRef": {"kind": "Pod", "name": e["pod"], "namespace": sl["namespace"]},
            }
            for e in sl["endpoints"]
        ]
        obj["ports"] = [
            {"name": p["name"], "port": p["target"], "protocol": p["protocol"]} for p in sl["ports"]
        ]
        return obj

    # --- pods at run time ---------------------------------------------------------------------
    def pod_netns(self, namespace: str, name: str) -> str | None:
        pod = self.pods[(namespace, name)]
        if pod["spec"].get("hostNetwork"):
            node = pod["spec"].get("nodeName", "")
            return self.lab["namespaces"].get(node)
        return self.netns.get((namespace, name))

    def start_ephemeral(self, namespace: str, name: str, ec: dict[str, Any]) -> None:
        """Pull (or fail to), then start: the status the kubelet would report."""
        key = (namespace, name, ec["name"])
        image = ec.get("image", "")
        if not image_known(image):
            state: dict[str, Any] = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": (
                        "rpc error: code = NotFound desc = failed to pull and unpack image "
                        f'"{image}": failed to resolve reference "{image}": not found'
                    ),
                }
            }
        else:
            netns = self.pod_netns(namespace, name)
            assert netns is not None
            caps = container_caps(ec)
            self.running[key] = start_container(
                netns,
                list(ec.get("command") or ["sleep", "infinity"]),
                caps,
                True,
                stdin=bool(ec.get("stdin")),
            )
            state = {"running": {"startedAt": now()}}
        status = {
            "name": ec["name"],
            "image": image,
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": state,
        }
        pod = self.pods[(namespace, name)]
        pod["status"].setdefault("ephemeralContainerStatuses", []).append(status)
        pod["metadata"]["resourceVersion"] = self.bump()

    def refresh(self) -> None:
        """Container exits and pod deadlines, as the kubelet would notice them."""
        with self.lock:
            for (namespace, name, container), run in list(self.running.items()):
                pod = self.pods.get((namespace, name))
                if pod is None:
                    continue
                deadline = pod["spec"].get("activeDeadlineSeconds")
                if deadline is not None and time.time() - run.started > deadline:
                    run.kill()
                    pod["status"]["phase"] = "Failed"
                    pod["status"]["reason"] = "DeadlineExceeded"
                if run.alive():
                    continue
                for status in [
                    *pod["status"].get("ephemeralContainerStatuses", []),
                    *pod["status"].get("containerStatuses", []),
                ]:
                    if status["name"] == container and "terminated" not in status["state"]:
                        status["state"] = {
                            "terminated": {
                                "exitCode": run.exit_code if run.exit_code is not None else 137,
                                "reason": "Completed" if run.exit_code == 0 else "Error",
                                "finishedAt": now(),
                            }
                        }
                        status["ready"] = False
                        pod["metadata"]["resourceVersion"] = self.bump()
                        if pod["spec"].get("restartPolicy") == "Never" and container in {
                            c["name"] for c in pod["spec"]["containers"]
                        }:
                            pod["status"]["phase"] = "Succeeded" if run.exit_code == 0 else "Failed"

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod.setdefault("metadata", {})
        namespace = meta["namespace"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        spec = pod["spec"]
        node = next((n for n in self.lab["nodes"] if n["name"] == spec.get("nodeName")), None)
        obj = self._meta(
            "Pod", {**meta, "labels": meta.get("labels") or {}}, {"phase": "Pending"}, spec=spec
        )
        key = (namespace, meta["name"])
        self.pods[key] = obj
        if node is None or not spec.get("hostNetwork"):
            # only node debug pods (host network, pinned to a node) can run in the lab
            obj["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
            ]
            return obj
        self.netns[key] = self.lab["namespaces"][node["name"]]
        statuses = []
        for c in spec["containers"]:
            if image_known(c.get("image", "")):
                caps = container_caps(c)
                self.running[(namespace, meta["name"], c["name"])] = start_container(
                    self.netns[key],
                    list(c.get("command") or ["sleep", "infinity"]),
                    caps,
                    False,
                    tracefs=mounts_tracefs(spec, c),
                )
                state: dict[str, Any] = {"running": {"startedAt": now()}}
            else:
                state = {"waiting": {"reason": "ErrImagePull", "message": "not found"}}
            statuses.append(
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": "running" in state,
                    "restartCount": 0,
                    "started": "running" in state,
                    "state": state,
                }
            )
        obj["status"] = {
            "phase": "Running" if all("running" in s["state"] for s in statuses) else "Pending",
            "hostIP": node["ip"],
            "hostIPs": [{"ip": node["ip"]}],
            "podIP": node["ip"],
            "podIPs": [{"ip": node["ip"]}],
            "startTime": now(),
            "containerStatuses": statuses,
        }
        return obj

    def delete_pod(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.pods.pop((namespace, name))
        for key in [k for k in self.running if k[:2] == (namespace, name)]:
            self.running.pop(key).kill()
        self.netns.pop((namespace, name), None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["deletionTimestamp"] = now()
        return gone

    def stop_all(self) -> None:
        with self.lock:
            for run in self.running.values():
                run.kill()
            self.running.clear()
