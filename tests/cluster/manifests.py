"""The objects the cluster runs once its control plane is up: the lab's workload (client,
web-1 and web-2 behind Service web), CoreDNS as kube-dns, the NetworkPolicy controller, the
namespaces and users the refusal tests need. Plain dicts, applied as JSON."""

from __future__ import annotations

from typing import Any

from tests.cluster import build
from tests.cluster.layout import DNS_VIP, DOMAIN, NODES, UPSTREAM, WEB_VIP

Obj = dict[str, Any]
NODE_A, NODE_B = NODES[0].name, NODES[1].name
WEB_PORT = 80
# a NetworkPolicy that lets nothing in to web-2: the policy-drop fault
POLICY_DROP = "ktrace-test-deny-web-2"
RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def meta(name: str, namespace: str | None = "default", **labels: str) -> Obj:
    out: Obj = {"name": name}
    if namespace is not None:
        out["namespace"] = namespace
    if labels:
        out["labels"] = dict(labels)
    return out


def pod(
    name: str,
    node: str,
    command: list[str],
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    ready_port: int | None = None,
    security: Obj | None = None,
) -> Obj:
    container: Obj = {
        "name": "main",
        "image": build.BUSYBOX_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
    }
    if ready_port is not None:
        container["ports"] = [{"containerPort": ready_port, "name": "http"}]
        container["readinessProbe"] = {
            "tcpSocket": {"port": ready_port},
            "periodSeconds": 2,
        }
    if security is not None:
        container["securityContext"] = security
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, namespace, **(labels or {})),
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


SLEEP = ["sleep", "2147483647"]


def web_pod(name: str, node: str) -> Obj:
    serve = f"mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"
    return pod(name, node, ["sh", "-c", serve], labels={"app": "web", "pod": name},
               ready_port=WEB_PORT)  # fmt: skip


def workload() -> list[Obj]:
    return [
        pod("client", NODE_A, SLEEP, labels={"app": "client"}),
        web_pod("web-1", NODE_A),
        web_pod("web-2", NODE_B),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta("web"),
            "spec": {
                "clusterIP": WEB_VIP,
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": WEB_PORT, "targetPort": "http"}],
            },
        },
        # what refusals are tested on: PodSecurity levels, a pod that never runs
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(
            "restricted", None, **{"pod-security.kubernetes.io/enforce": "restricted"})},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(
            "baseline", None, **{"pod-security.kubernetes.io/enforce": "baseline"})},
        pod("client", NODE_A, SLEEP, namespace="restricted", security=RESTRICTED_SECURITY),
        pod("client", NODE_A, SLEEP, namespace="baseline"),
        {
            **pod("pending", NODE_A, SLEEP),
            "spec": {
                **pod("pending", NODE_A, SLEEP)["spec"],
                "nodeSelector": {"kubernetes.io/hostname": "no-such-node"},
            },
        },
        # view-only users: the group a client certificate of the test CA names
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta("ktrace-test-viewers", None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": "ktrace-test:viewers"}],
        },
    ]  # fmt: skip


def static_pod() -> Obj:
    """A host-network pod the kubelet of node-b runs from a file: its mirror pod is what the
    API shows, and it cannot take ephemeral containers."""
    serve = "mkdir -p /www && echo static > /www/index.html && exec httpd -f -p 8081 -h /www"
    spec = pod("static-web", NODE_B, ["sh", "-c", serve], labels={"app": "static-web"})
    spec["metadata"].pop("namespace")
    spec["metadata"]["namespace"] = "default"
    spec["spec"].pop("nodeSelector")
    spec["spec"]["hostNetwork"] = True
    return spec


def coredns() -> list[Obj]:
    corefile = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . {UPSTREAM}
    cache 30
    loop
    reload
}}
"""
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ]  # fmt: skip
    labels = {"k8s-app": "kube-dns"}
    container = {
        "name": "coredns",
        "image": build.COREDNS_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"containerPort": 53, "name": "dns", "protocol": "UDP"},
            {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("coredns", "kube-system")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": meta("system:coredns", None), "rules": rules},
        _binding("system:coredns", "coredns"),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("coredns", "kube-system"),
         "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("coredns", "kube-system", **labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "nodeSelector": {"kubernetes.io/hostname": NODE_B},
                        "dnsPolicy": "Default",
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta("kube-dns", "kube-system", **labels),
            "spec": {
                "clusterIP": DNS_VIP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
    ]  # fmt: skip


def network_policies() -> list[Obj]:
    """What kube-router's firewall reads, for the group its client certificate names: it runs
    on each node as a host process, as k3s runs it."""
    rules = [
        {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
         "verbs": ["create", "patch", "update"]},
    ]  # fmt: skip
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": meta("ktrace-test:kube-router", None), "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta("ktrace-test:kube-router", None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "ktrace-test:kube-router"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": "ktrace-test:kube-router"}],
        },
    ]  # fmt: skip


def deny_web_2() -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(POLICY_DROP),
        "spec": {"podSelector": {"matchLabels": {"pod": "web-2"}}, "policyTypes": ["Ingress"]},
    }


def _binding(role: str, account: str) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(role, None),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "kube-system"}],
    }


def as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": items}
