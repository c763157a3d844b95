"""`kubectl ktrace capture | dns | trace | cleanup`: what each command does with the cluster,
between the parsed flags (cli.py) and the capture session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ktrace.capture.session import Options, capture, default_bundle
from ktrace.errors import ClusterError, ExitStatus
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.targets import resolve


def capture_command(
    flags: KubeFlags, target: str | None, selector: str | None, opts: Options, out: Path | None
) -> int:
    api = Api(flags)
    label, pods = resolve(api, target, selector)
    bundle = out or default_bundle(label)
    outcome = capture(api, label, pods, bundle, opts)
    print(bundle)
    if outcome.status != "complete":
        print(f"ktrace: bundle marked interrupted: {outcome.reason}", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED if "Ctrl-C" in outcome.reason else ExitStatus.CLUSTER)
    print(f"ktrace: analyze it with: ktrace analyze {bundle}", file=sys.stderr)
    return int(ExitStatus.OK)


def cleanup_command(flags: KubeFlags, all_namespaces: bool) -> int:
    """Node pods by label; ephemeral containers by name prefix, ended through their PID 1
    (they cannot be removed from a pod's spec)."""
    from ktrace.kube import debug

    api = Api(flags)
    label = ",".join(f"{k}={v}" for k, v in debug.MANAGED_BY.items())
    if all_namespaces:
        nodes = api.call(api.core.list_pod_for_all_namespaces, label_selector=label)["items"]
        pods = api.call(api.core.list_pod_for_all_namespaces)["items"]
    else:
        nodes = api.call(api.core.list_namespaced_pod, api.namespace, label_selector=label)["items"]
        pods = api.call(api.core.list_namespaced_pod, api.namespace)["items"]
    done = failed = 0
    for obj in nodes:
        meta = obj["metadata"]
        c = debug.Container(meta["namespace"], meta["name"], "capture", "")
        try:
            debug.delete_pod(api, c)
            print(f"deleted pod {c.where}")
            done += 1
        except ClusterError as exc:
            print(f"ktrace: could not delete pod {c.where}: {exc}", file=sys.stderr)
            failed += 1
    for obj in pods:
        for name in _running_ephemeral(obj):
            meta = obj["metadata"]
            c = debug.Container(meta["namespace"], meta["name"], name, "")
            try:
                if debug.end_ephemeral(api, c):
                    print(f"ended ephemeral container {name} in {c.where}")
                    done += 1
            except ClusterError as exc:
                print(f"ktrace: could not end {name} in {c.where}: {exc}", file=sys.stderr)
                failed += 1
    if not done and not failed:
        scope = "any namespace" if all_namespaces else f'namespace "{api.namespace}"'
        print(f"nothing of ktrace's is running in {scope}")
    return int(ExitStatus.CLUSTER if failed else ExitStatus.OK)


def _running_ephemeral(pod: dict[str, Any]) -> list[str]:
    return [
        s["name"]
        for s in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []
        if s.get("name", "").startswith("ktrace-") and "running" in (s.get("state") or {})
    ]
