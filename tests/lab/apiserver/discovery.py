"""Discovery documents and the Table kubectl asks for, in their legacy shapes (kubectl falls
back to them when the answer is not the aggregated Content-Type)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

READ = ["get", "list", "watch"]
ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

# group/version -> resources: (name, singular, kind, namespaced, verbs, short names)
RESOURCES: dict[str, list[tuple[str, str, str, bool, list[str], list[str]]]] = {
    "v1": [
        ("namespaces", "namespace", "Namespace", False, ALL, ["ns"]),
        ("nodes", "node", "Node", False, ALL, ["no"]),
        ("pods", "pod", "Pod", True, ALL, ["po"]),
        ("pods/attach", "", "PodAttachOptions", True, ["create", "get"], []),
        ("pods/ephemeralcontainers", "", "Pod", True, ["get", "patch", "update"], []),
        ("pods/exec", "", "PodExecOptions", True, ["create", "get"], []),
        ("pods/log", "", "Pod", True, ["get"], []),
        ("pods/status", "", "Pod", True, ["get", "patch", "update"], []),
        ("services", "service", "Service", True, ALL, ["svc"]),
    ],
    "discovery.k8s.io/v1": [
        ("endpointslices", "endpointslice", "EndpointSlice", True, ALL, []),
    ],
    "apps/v1": [
        ("deployments", "deployment", "Deployment", True, ALL, ["deploy"]),
    ],
}


def api_versions(host: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def api_groups() -> dict[str, Any]:
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        name, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": name, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list(gv: str) -> dict[str, Any] | None:
    if gv not in RESOURCES:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": [
            {
                "name": name,
                "singularName": singular,
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
                **({"shortNames": short} if short else {}),
                **({"categories": ["all"]} if kind in {"Pod", "Service"} and singular else {}),
            }
            for name, singular, kind, namespaced, verbs, short in RESOURCES[gv]
        ],
    }


def _age(stamp: str) -> str:
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    s = int((datetime.now(UTC) - then).total_seconds())
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def _pod_row(pod: dict[str, Any]) -> list[Any]:
    statuses = pod["status"].get("containerStatuses", [])
    ready = sum(1 for s in statuses if s.get("ready"))
    reason = pod["status"].get("reason") or pod["status"].get("phase", "")
    for s in statuses:
        waiting = s["state"].get("waiting")
        if waiting:
            reason = waiting.get("reason", reason)
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(pod['spec']['containers'])}",
        reason,
        str(sum(s.get("restartCount", 0) for s in statuses)),
        _age(pod["metadata"]["creationTimestamp"]),
        pod["status"].get("podIP") or "<none>",
        pod["spec"].get("nodeName") or "<none>",
    ]


def table(items: list[dict[str, Any]], kind: str, version: str) -> dict[str, Any]:
    """`kubectl get` output: the columns the server chooses (pods get the usual five)."""
    pods = kind == "Pod"
    columns = (
        [
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
        ]
        if pods or not items
        else [("Name", 0), ("Age", 0)]
    )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": version},
        "columnDefinitions": [
            {
                "name": name,
                "type": "string",
                "format": "name" if name == "Name" else "",
                "description": name,
                "priority": priority,
            }
            for name, priority in columns
        ],
        "rows": [
            {
                "cells": _pod_row(obj)
                if pods
                else [obj["metadata"]["name"], _age(obj["metadata"]["creationTimestamp"])],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in items
        ],
    }
