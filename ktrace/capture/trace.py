"""`kubectl ktrace trace SOURCE --to DEST`: capture at every point on the way, send one probe
from the source pod, and say where it went and where it stopped.

The probe is a TCP connect (bash's /dev/tcp: host and port are argv words, not shell text)
or a DNS query through the pod's resolver (dig).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ktrace.capture.session import Options, Session, capture, default_bundle
from ktrace.errors import ClusterError, ExitStatus, UsageError
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.execstream import run
from ktrace.kube.targets import Pod, pod_of, resolve

TCP_PROBE = 'exec 3<>"/dev/tcp/$0/$1"'
PROBE_TIMEOUT = 3
SETTLE = 1.5  # late packets (retransmitted SYNs, RSTs) after the probe returns


@dataclass(frozen=True)
class Destination:
    label: str
    host: str  # IP for TCP, the name for DNS
    port: int
    pods: tuple[Pod, ...]
    dns: bool = False


def parse_destination(api: Api, to: str | None, dns: str | None) -> Destination:
    if bool(to) == bool(dns):
        raise UsageError("give --to svc/NAME[:PORT]|pod/NAME:PORT|HOST:PORT or --dns NAME")
    if dns:
        return _dns_destination(api, dns)
    assert to is not None
    m = re.fullmatch(r"(?:(svc|service|pod|po)/)?([^:/]+)(?::(\d+))?", to)
    if not m:
        raise UsageError(f"--to {to!r}: use svc/NAME[:PORT], pod/NAME:PORT or HOST:PORT")
    kind, name, port = m.group(1), m.group(2), m.group(3)
    if kind in ("svc", "service"):
        svc = api.call(api.core.read_namespaced_service, name, api.namespace)
        ports = [p["port"] for p in svc["spec"].get("ports") or []]
        chosen = int(port) if port else (ports[0] if len(ports) == 1 else None)
        if chosen is None:
            raise UsageError(
                f"service {name} has ports {ports}: pick one with --to svc/{name}:PORT"
            )
        _, pods = resolve(api, f"svc/{name}", None)
        return Destination(f"svc/{name}:{chosen}", svc["spec"]["clusterIP"], chosen, tuple(pods))
    if not port:
        raise UsageError(f"--to {to!r}: which port? e.g. {to}:80")
    if kind in ("pod", "po"):
        obj = api.call(api.core.read_namespaced_pod, name, api.namespace)
        pod = pod_of(obj)
        return Destination(f"pod/{name}:{port}", pod.ip, int(port), (pod,))
    return Destination(f"{name}:{port}", name, int(port), ())


def _dns_destination(api: Api, name: str) -> Destination:
    """The cluster DNS pods are on the way of a query: kube-dns's endpoints."""
    try:
        _, pods = resolve(api.in_namespace("kube-system"), "svc/kube-dns", None)
    except ClusterError:
        pods = []
    return Destination(f"dns {name}", name, 53, tuple(pods), dns=True)


def probe_argv(dest: Destination) -> list[str]:
    if dest.dns:
        return ["dig", "+search", f"+time={PROBE_TIMEOUT}", "+tries=1", dest.host]
    return ["timeout", str(PROBE_TIMEOUT), "bash", "-c", TCP_PROBE, dest.host, str(dest.port)]


def describe_probe(dest: Destination, code: int, took: float, output: str) -> str:
    if dest.dns:
        status = re.search(r"status: (\w+)", output)
        if status:
            return f"DNS query for {dest.host}: {status.group(1)} in {took * 1000:.0f} ms"
        return f"DNS query for {dest.host}: no answer within {PROBE_TIMEOUT}s"
    if code == 0:
        return f"TCP connect to {dest.host}:{dest.port}: connected in {took * 1000:.1f} ms"
    if code == 124:
        return f"TCP connect to {dest.host}:{dest.port}: no answer within {PROBE_TIMEOUT}s"
    why = output.strip().splitlines()[-1] if output.strip() else f"exit {code}"
    return f"TCP connect to {dest.host}:{dest.port}: failed ({why.split(': ')[-1]})"


def probe_paths(data: dict[str, Any], src_ip: str, dest: Destination) -> list[dict[str, Any]]:
    """The paths of the probe's conversation(s) among everything captured meanwhile."""
    out = []
    for p in data["paths"]:
        flows = " ".join(p["flows"])
        if f" {src_ip}:" not in f" {flows}":
            continue
        wanted = ":53 " if dest.dns else f"{dest.host}:{dest.port} "
        if wanted in f"{flows} ":
            out.append(p)
    return out


def verdict(path: dict[str, Any]) -> str:
    hops = path["hops"]
    seen = [h for h in hops if not h["expected"]]
    if path["lost"]:
        x = path["lost"][0]
        return f"the probe stopped after {x['last_seen']}: never seen at {x['never_at']}"
    if seen and len(seen) < len(hops):
        return f"last seen at {seen[-1]['point']}; never at {hops[len(seen)]['point']}"
    return f"seen at every point on the way ({' -> '.join(h['point'] for h in hops)})"


def trace_command(
    flags: KubeFlags,
    source: str,
    to: str | None,
    dns: str | None,
    opts: Options,
    out: Path | None,
) -> int:
    from ktrace.analysis.report import analyze, to_dict
    from ktrace.report.text import render_findings, render_paths

    api = Api(flags)
    label, sources = resolve(api, source, None)
    if len(sources) != 1:
        raise UsageError(f"{label} is {len(sources)} pods: trace from one (pod/NAME)")
    src = sources[0]
    dest = parse_destination(api, to, dns)
    pods = [src, *[p for p in dest.pods if p.ref != src.ref]]
    result: dict[str, Any] = {}

    def send(session: Session) -> None:
        c = session.ephemeral.get(src.ref)
        if c is None:
            raise UsageError(f"{src.ref} uses the host network: trace from a pod with its own")
        time.sleep(0.3)  # every tcpdump is listening; let the first packets land
        began = time.monotonic()
        r = run(api, c.namespace, c.pod, c.name, probe_argv(dest), PROBE_TIMEOUT + 10)
        took = time.monotonic() - began
        text = (r.stdout + r.stderr).decode("utf-8", "replace")
        result["line"] = describe_probe(dest, r.code, took, text)
        session.say(result["line"])

    bundle = out or default_bundle(f"trace-{src.name}")
    opts = replace(opts, duration=SETTLE, count=None)
    outcome = capture(api, f"trace {label} -> {dest.label}", pods, bundle, opts, during=send)
    data = to_dict(analyze([bundle]))
    paths = probe_paths(data, src.ip, dest)
    print(f"Probe from {src.ref}: {result.get('line', 'not sent')}")
    if paths:
        print(f"Where it went: {verdict(paths[-1])}\n")
        print(render_paths(paths, 5, "Path of the probe"))
    else:
        print("Where it went: no packet of the probe was captured at any point\n")
    probe_flows = {f for p in paths for f in p["flows"]}
    related = [f for f in data["findings"] if probe_flows & set(f["flows"])]
    print(render_findings(related or data["findings"]))
    print(f"bundle: {bundle}", file=sys.stderr)
    if outcome.status != "complete":
        print(f"ktrace: bundle marked interrupted: {outcome.reason}", file=sys.stderr)
        return int(ExitStatus.CLUSTER)
    return int(ExitStatus.OK)
