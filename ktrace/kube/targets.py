"""Which pods a TARGET means (`pod/x`, `x`, `deploy/x`, `svc/x`, `-l sel`), and the cluster
snapshot that turns addresses into names (the bundle's inventory.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ktrace.errors import ClusterError, UsageError
from ktrace.kube.api import Api

KINDS = {
    "pod": "pod",
    "pods": "pod",
    "po": "pod",
    "deploy": "deployment",
    "deployment": "deployment",
    "deployments": "deployment",
    "svc": "service",
    "service": "service",
    "services": "service",
}


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: str
    phase: str
    host_network: bool
    containers: tuple[str, ...]
    static: bool

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_of(obj: dict[str, Any]) -> Pod:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return Pod(
        namespace=meta["namespace"],
        name=meta["name"],
        node=spec.get("nodeName") or "",
        ip=status.get("podIP") or "",
        phase=status.get("phase") or "Unknown",
        host_network=bool(spec.get("hostNetwork")),
        containers=tuple(c["name"] for c in spec.get("containers") or []),
        static="kubernetes.io/config.mirror" in (meta.get("annotations") or {}),
    )


def _selector(match: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match.items()))


def resolve(api: Api, target: str | None, selector: str | None) -> tuple[str, list[Pod]]:
    """(what the user asked for, as the bundle names it; the running pods it means)."""
    ns = api.namespace
    if selector:
        if target:
            raise UsageError("give a TARGET or -l SELECTOR, not both")
        items = api.call(api.core.list_namespaced_pod, ns, label_selector=selector)["items"]
        if not items:
            raise ClusterError(f'no pods in namespace "{ns}" match -l {selector}')
        return f"-l {selector}", _running([pod_of(o) for o in items], f"-l {selector}")
    if not target:
        raise UsageError("name a TARGET (pod/NAME, deploy/NAME, svc/NAME) or -l SELECTOR")
    kind, _, name = target.rpartition("/")
    kind = KINDS.get(kind or "pod", "")
    if not kind or not name:
        raise UsageError(
            f"cannot read target {target!r}", "use pod/NAME, NAME, deploy/NAME, svc/NAME or -l"
        )
    label = f"{kind if kind != 'deployment' else 'deploy'}/{name}"
    if kind == "pod":
        obj = get_object(api, api.core.read_namespaced_pod, name, "pod", ns)
        return label, _running([pod_of(obj)], label)
    if kind == "deployment":
        dep = get_object(api, api.apps.read_namespaced_deployment, name, "deployment", ns)
        match = (dep.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        items = api.call(api.core.list_namespaced_pod, ns, label_selector=_selector(match))
        return label, _running([pod_of(o) for o in items["items"]], label)
    get_object(api, api.core.read_namespaced_service, name, "service", ns)
    slices = api.call(
        api.discovery.list_namespaced_endpoint_slice,
        ns,
        label_selector=f"kubernetes.io/service-name={name}",
    )["items"]
    names = sorted(
        {
            ep["targetRef"]["name"]
            for sl in slices
            for ep in sl.get("endpoints") or []
            if (ep.get("targetRef") or {}).get("kind") == "Pod"
        }
    )
    if not names:
        raise NoEndpoints(
            f'service "{ns}/{name}" has no endpoint pods',
            "its selector matches no ready pod: that may be the incident itself "
            f"(kubectl get endpointslices -n {ns} -l kubernetes.io/service-name={name})",
        )
    pods = [pod_of(get_object(api, api.core.read_namespaced_pod, n, "pod", ns)) for n in names]
    return label, _running(pods, label)


class NoEndpoints(ClusterError):
    """A Service whose selector matches no ready pod: nothing of it to capture at."""


def get_object(
    api: Api, method: Any, name: str, kind: str, ns: str | None = None
) -> dict[str, Any]:
    """One object, or a not-found error that names the namespace and how to pick another."""
    ns = ns or api.namespace
    try:
        return dict(api.call(method, name, ns))
    except ClusterError as exc:
        if "not found" in exc.message:
            raise ClusterError(
                f'{kind} "{name}" not found in namespace "{ns}"',
                f"kubectl get {kind}s -n {ns}; or pass -n NAMESPACE",
            ) from None
        raise


def _running(pods: list[Pod], label: str) -> list[Pod]:
    if not pods:
        raise ClusterError(f"{label} has no pods")
    idle = [p for p in pods if p.phase != "Running"]
    if idle:
        p = idle[0]
        raise ClusterError(
            f"pod {p.ref} is {p.phase}, not Running: there is no network namespace to capture in",
            f"kubectl describe pod -n {p.namespace} {p.name}",
        )
    return pods


def _pod_entry(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": p["metadata"]["name"],
        "namespace": p["metadata"]["namespace"],
        "ip": p.get("status", {}).get("podIP", ""),
        # dual-stack: one address per family (podIP is the first of them)
        "ips": [a["ip"] for a in p.get("status", {}).get("podIPs") or [] if a.get("ip")],
        "node": p.get("spec", {}).get("nodeName", ""),
        "labels": p["metadata"].get("labels") or {},
        "hostNetwork": bool(p.get("spec", {}).get("hostNetwork")),
    }


def _service_entry(s: dict[str, Any]) -> dict[str, Any]:
    spec = s.get("spec") or {}
    ingress = ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return {
        "name": s["metadata"]["name"],
        "namespace": s["metadata"]["namespace"],
        "clusterIP": spec.get("clusterIP", ""),
        "clusterIPs": spec.get("clusterIPs") or [],
        "type": spec.get("type", "ClusterIP"),
        "externalTrafficPolicy": spec.get("externalTrafficPolicy", ""),
        # what the load balancer answers on (hostname-only ingresses have no address here)
        "loadBalancerIPs": [i["ip"] for i in ingress if i.get("ip")],
        "healthCheckNodePort": spec.get("healthCheckNodePort", 0),
        "ports": [
            {
                "name": p.get("name", ""),
                "port": p["port"],
                "target": p.get("targetPort", p["port"]),
                "protocol": p.get("protocol", "TCP"),
                "nodePort": p.get("nodePort", 0),
            }
            for p in spec.get("ports") or []
        ],
    }


def inventory(api: Api) -> dict[str, Any]:
    """Pods, Services, endpoint slices and nodes across namespaces, as names for addresses.
    Nodes are cluster-scoped, which namespaced roles (kubectl's `view`) do not read: without
    them the inventory says so in its "notes" and the capture goes on."""
    pods = api.call(api.core.list_pod_for_all_namespaces)["items"]
    services = api.call(api.core.list_service_for_all_namespaces)["items"]
    slices = api.call(api.discovery.list_endpoint_slice_for_all_namespaces)["items"]
    notes = []
    try:
        nodes = api.call(api.core.list_node)["items"]
    except ClusterError as exc:
        nodes = []
        notes.append(f"nodes not listed ({exc.message}): node addresses are shown without names")

    def internal_ip(node: dict[str, Any]) -> str:
        for a in node.get("status", {}).get("addresses") or []:
            if a.get("type") == "InternalIP":
                return str(a["address"])
        return ""

    return {
        "notes": notes,
        "nodes": [
            {
                "name": n["metadata"]["name"],
                "internalIP": internal_ip(n),
                "podCIDR": n.get("spec", {}).get("podCIDR", ""),
            }
            for n in nodes
        ],
        "pods": [_pod_entry(p) for p in pods if p.get("status", {}).get("podIP")],
        "services": [_service_entry(s) for s in services],
        "endpointslices": [
            {
                "service": (sl["metadata"].get("labels") or {}).get(
                    "kubernetes.io/service-name", ""
                ),
                "namespace": sl["metadata"]["namespace"],
                "endpoints": [
                    {
                        "ip": ep["addresses"][0],
                        "pod": (ep.get("targetRef") or {}).get("name", ""),
                        "node": ep.get("nodeName", ""),
                        "ready": bool((ep.get("conditions") or {}).get("ready", True)),
                    }
                    for ep in sl.get("endpoints") or []
                    if ep.get("addresses")
                ],
                "ports": [
                    {
                        "name": p.get("name", ""),
                        "port": p.get("port"),
                        "target": p.get("port"),
                        "protocol": p.get("protocol", "TCP"),
                    }
                    for p in sl.get("ports") or []
                ],
            }
            for sl in slices
        ],
    }
