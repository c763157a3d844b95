"""Record the lab's scenarios that have a real counterpart on the real cluster, as the bundles
`kubectl ktrace trace` writes: pcaps/cluster/<scenario>, each with the finding its lab twin
gives (tests/test_diagnosis.py holds both to it).

    sudo python -m tests.cluster record all pcaps/cluster
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import build
from tests.cluster.cluster import Cluster


@dataclass(frozen=True)
class Scenario:
    fault: str | None
    probe: tuple[str, ...]  # the trace's arguments after the source pod


SCENARIOS = {
    "healthy": Scenario(None, ("--to", "svc/web")),
    "policy-drop": Scenario("policy-drop", ("--to", "svc/web")),
    "no-endpoints": Scenario("no-endpoints", ("--to", "svc/web")),
    "kube-proxy-down": Scenario("kube-proxy-down", ("--to", "svc/web")),
    "dns-upstream-down": Scenario("dns-upstream-down", ("--dns", "example.com")),
}


def record(cluster: Cluster, name: str, out: Path) -> Path:
    """One scenario into `out` (replaced): its fault on, a trace from the client, off."""
    scenario = SCENARIOS[name]
    shutil.rmtree(out, ignore_errors=True)
    if scenario.fault:
        cluster.fault(scenario.fault, True)
        time.sleep(2)  # kube-router and kube-proxy apply their rules
    try:
        subprocess.run(
            [sys.executable, "-m", "ktrace", "trace", "client", *scenario.probe, "-o", str(out),
             "--image", build.DEBUG_IMAGE, "--kubeconfig", str(cluster.admin_kubeconfig)],
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        if scenario.fault:
            cluster.fault(scenario.fault, False)
    for path in out.rglob("*"):  # readable by the checkout's owner, as the lab's are
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.chmod(0o755)
    return out
