"""`kubectl ktrace trace SOURCE --to DEST`: capture at every point on the way, send probes
from the source pod, and say where each went and where it stopped.

A probe is a TCP connect (bash's /dev/tcp: host and port are argv words, not shell text)
or a DNS query through the pod's resolver (dig). A Service gets one probe through its
ClusterIP and one to each ready endpoint, so a bad backend is found on the first run.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ktrace.capture.session import Options, Session, capture, default_bundle
from ktrace.errors import ClusterError, ExitStatus, UsageError
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.execstream import run
from ktrace.kube.targets import Pod, get_object, pod_of, resolve
from ktrace.model import Severity

if TYPE_CHECKING:
    from ktrace.analysis.result import PathRow, Result

TCP_PROBE = 'exec 3<>"/dev/tcp/$0/$1"'
PROBE_TIMEOUT = 3
SETTLE = 1.5  # late packets (retransmitted SYNs, RSTs) after the probe returns


@dataclass(frozen=True)
class Probe:
    label: str  # what it reaches: "svc/web:80 via 10.96.0.20", "default/web-2 at 10.244.1.2:80"
    host: str  # IP for TCP, the name for DNS
    port: int
    dns: bool = False


@dataclass(frozen=True)
class Destination:
    label: str
    probes: tuple[Probe, ...]
    pods: tuple[Pod, ...]  # to capture at
    how: str = ""  # how the probes cover it, when there are several


@dataclass(frozen=True)
class Sent:
    probe: Probe
    line: str
    ok: bool


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
        return _service_destination(api, name, int(port) if port else None)
    if not port:
        raise UsageError(f"--to {to!r}: which port? e.g. {to}:80")
    if kind in ("pod", "po"):
        pod = pod_of(get_object(api, api.core.read_namespaced_pod, name, "pod"))
        probe = Probe(f"{pod.ref} at {pod.ip}:{port}", pod.ip, int(port))
        return Destination(f"pod/{name}:{port}", (probe,), (pod,))
    return Destination(f"{name}:{port}", (Probe(f"{name}:{port}", name, int(port)),), ())


def _service_destination(api: Api, name: str, port: int | None) -> Destination:
    """The ClusterIP once (what the application does), then every endpoint directly: a
    backend that fails shows up on the first run, whichever one the VIP picked."""
    svc = get_object(api, api.core.read_namespaced_service, name, "service")
    ports = svc["spec"].get("ports") or []
    numbers = [p["port"] for p in ports]
    chosen = port if port else (numbers[0] if len(numbers) == 1 else None)
    spec = next((p for p in ports if p["port"] == chosen), None)
    if spec is None:
        raise UsageError(f"service {name} has ports {numbers}: pick one with --to svc/{name}:PORT")
    vip = svc["spec"]["clusterIP"]
    _, pods = resolve(api, f"svc/{name}", None)
    backends = endpoint_ports(api, name, spec.get("name") or "")
    probes = [Probe(f"svc/{name}:{chosen} via {vip}", vip, int(spec["port"]))]
    probes += [
        Probe(f"{p.ref} at {p.ip}:{backends[p.name]}", p.ip, backends[p.name])
        for p in pods
        if p.name in backends
    ]
    how = (
        f"the ClusterIP once, then each of its {len(probes) - 1} endpoints directly"
        if len(probes) > 2
        else ""
    )
    return Destination(f"svc/{name}:{spec['port']}", tuple(probes), tuple(pods), how)


def endpoint_ports(api: Api, service: str, port_name: str) -> dict[str, int]:
    """Pod name -> the port the Service's port reaches on it (targetPort, named or not),
    from the EndpointSlices, which resolve named ports per pod."""
    slices = api.call(
        api.discovery.list_namespaced_endpoint_slice,
        api.namespace,
        label_selector=f"kubernetes.io/service-name={service}",
    )["items"]
    out: dict[str, int] = {}
    for sl in slices:
        number = next(
            (p["port"] for p in sl.get("ports") or [] if (p.get("name") or "") == port_name),
            None,
        )
        for ep in sl.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            ready = (ep.get("conditions") or {}).get("ready") is not False
            if number is not None and ref.get("kind") == "Pod" and ready:
                out[ref["name"]] = int(number)
    return out


def _dns_destination(api: Api, name: str) -> Destination:
    """The cluster DNS pods are on the way of a query: kube-dns's endpoints."""
    try:
        _, pods = resolve(api.in_namespace("kube-system"), "svc/kube-dns", None)
    except ClusterError:
        pods = []
    return Destination(
        f"dns {name}", (Probe(f"DNS query for {name}", name, 53, True),), tuple(pods)
    )


def probe_argv(probe: Probe) -> list[str]:
    if probe.dns:
        return ["dig", "+search", f"+time={PROBE_TIMEOUT}", "+tries=1", probe.host]
    return ["timeout", str(PROBE_TIMEOUT), "bash", "-c", TCP_PROBE, probe.host, str(probe.port)]


def describe_probe(probe: Probe, code: int, took: float, output: str) -> Sent:
    if probe.dns:
        status = re.search(r"status: (\w+)", output)
        if status:
            ok = status.group(1) == "NOERROR"
            return Sent(probe, f"{probe.label}: {status.group(1)} in {took * 1000:.0f} ms", ok)
        return Sent(probe, f"{probe.label}: no answer within {PROBE_TIMEOUT} s", False)
    if code == 0:
        return Sent(probe, f"{probe.label}: connected in {took * 1000:.1f} ms", True)
    if code == 124:
        return Sent(probe, f"{probe.label}: no answer within {PROBE_TIMEOUT} s", False)
    why = output.strip().splitlines()[-1] if output.strip() else f"exit {code}"
    return Sent(probe, f"{probe.label}: failed ({why.split(': ')[-1]})", False)


def probe_paths(result: Result, src_ip: str, probe: Probe) -> list[PathRow]:
    """The paths of one probe's conversation(s) among everything captured meanwhile."""
    return [
        p
        for p in result.paths
        if host_of(p.client) == src_ip
        and (p.server.endswith(":53") if probe.dns else p.server == f"{probe.host}:{probe.port}")
    ]


def host_of(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]")


def verdict(path: PathRow) -> str:
    hops = path.hops
    seen = [h for h in hops if not h.expected]
    if path.lost:
        x = path.lost[0]
        return f"stopped after {x.last_seen}: never seen at {x.never_at}"
    if seen and len(seen) < len(hops):
        return f"last seen at {seen[-1].point}; never at {hops[len(seen)].point}"
    return f"seen at every point on the way ({' -> '.join(h.point for h in hops)})"


def _send_all(api: Api, src: Pod, dest: Destination, sent: list[Sent]) -> Callable[[Session], None]:
    def send(session: Session) -> None:
        c = session.ephemeral.get(src.ref)
        if c is None:
            raise UsageError(f"{src.ref} uses the host network: trace from a pod with its own")
        time.sleep(0.3)  # every tcpdump is listening; let the first packets land
        for probe in dest.probes:
            began = time.monotonic()
            r = run(api, c.namespace, c.pod, c.name, probe_argv(probe), PROBE_TIMEOUT + 10)
            took = time.monotonic() - began
            text = (r.stdout + r.stderr).decode("utf-8", "replace")
            sent.append(describe_probe(probe, r.code, took, text))
            session.say(sent[-1].line)

    return send


def report(result: Result, src: Pod, dest: Destination, sent: list[Sent]) -> tuple[str, bool]:
    """The text `trace` prints, and whether everything went through without a finding."""
    from ktrace.report.text import render_findings, render_paths

    how = f" ({dest.how})" if dest.how else ""
    lines = [f"Probes from {src.ref} to {dest.label}{how}:"]
    lines += [f"  {'ok  ' if s.ok else 'FAIL'} {s.line}" for s in sent] or ["  not sent"]
    lines += ["", "Where each went:"]
    paths: list[PathRow] = []
    for s in sent:
        mine = probe_paths(result, src.ip, s.probe)
        where = verdict(mine[-1]) if mine else "no packet of it was captured at any point"
        lines.append(f"  {s.probe.label}: {where}")
        paths += [p for p in mine[-1:] if p not in paths]
    lines.append("")
    if paths:
        lines.append(render_paths(paths, len(paths), "Paths of the probes"))
    conversations = {p.conversation for p in paths} | {f for p in paths for f in p.flows}
    related = tuple(f for f in result.findings if conversations & set(f.flows))
    shown = related or result.findings
    lines.append(render_findings(shown))
    clean = (
        bool(sent) and all(s.ok for s in sent) and all(f.severity < Severity.MEDIUM for f in shown)
    )
    return "\n".join(lines), clean


def trace_command(
    flags: KubeFlags,
    source: str,
    to: str | None,
    dns: str | None,
    opts: Options,
    out: Path | None,
) -> int:
    from ktrace.analysis.pipeline import analyze

    api = Api(flags)
    label, sources = resolve(api, source, None)
    if len(sources) != 1:
        raise UsageError(f"{label} is {len(sources)} pods: trace from one (pod/NAME)")
    src = sources[0]
    dest = parse_destination(api, to, dns)
    pods = [src, *[p for p in dest.pods if p.ref != src.ref]]
    sent: list[Sent] = []
    bundle = out or default_bundle(f"trace-{src.name}")
    opts = replace(opts, duration=SETTLE, count=None)
    send = _send_all(api, src, dest, sent)
    outcome = capture(api, f"trace {label} -> {dest.label}", pods, bundle, opts, during=send)
    text, clean = report(analyze([bundle]), src, dest, sent)
    print(text)
    print(f"bundle: {bundle}", file=sys.stderr)
    if outcome.interrupted() is not None:
        return int(ExitStatus.CLUSTER)  # the probes' picture is incomplete
    return int(ExitStatus.OK if clean else ExitStatus.ERROR)
