"""`kubectl ktrace trace SOURCE --to DEST`: capture at every point on the way, send probes
from the source pod, and say where each went and where it stopped.

A probe is a TCP connect (bash's /dev/tcp: host and port are argv words, not shell text)
or a DNS query through the pod's resolver (dig). A Service gets one probe through its
ClusterIP and one to each ready endpoint, so a bad backend is found on the first run.

A probe's story is its own connection's: the TCP probe reports the client port its socket got
(the pod's kernel shows it in /proc while the connect runs), the DNS probe sends a query id of
its own. Other traffic the capture saw meanwhile, failing or not, is reported apart.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ktrace.capture.session import Options, Session, capture, default_bundle
from ktrace.errors import ClusterError, ExitStatus, UsageError
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.execstream import run
from ktrace.kube.targets import NoEndpoints, Pod, get_object, pod_of, resolve
from ktrace.model import Finding, Severity

if TYPE_CHECKING:
    from ktrace.analysis.result import PathRow, Result

# $0 host, $1 port. The connect runs in a subshell; the socket's inode (its fd) leads to its
# local port in /proc/net/tcp*. The subshell says it once connected; meanwhile the shell
# looks too, since a connect that gets no answer blocks until the timeout ends it all.
TCP_PROBE = r"""port_of() {
    while read -r _ here _ _ _ _ _ _ _ inode _; do
        if [ "$inode" = "$1" ]; then echo "ktrace-port $((16#${here##*:}))" >&2; return 0; fi
    done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    return 1
}
socket_of() {
    local f l
    for f in /proc/$1/fd/*; do
        l=$(readlink "$f" 2>/dev/null)
        case $l in socket:\[*) l=${l#socket:[}; echo "${l%]}"; return 0;; esac
    done
    return 1
}
( exec 3<>"/dev/tcp/$0/$1" || exit $?; port_of "$(socket_of $BASHPID)" ) & c=$!
while kill -0 "$c" 2>/dev/null; do
    s=$(socket_of "$c") && port_of "$s" && break
    sleep 0.05
done
wait "$c"
"""
PORT_LINE = re.compile(r"^ktrace-port (\d+)$", re.MULTILINE)
PROBE_TIMEOUT = 3
SETTLE = 1.5  # late packets (retransmitted SYNs, RSTs) after the probe returns


@dataclass(frozen=True)
class Probe:
    label: str  # what it reaches: "svc/web:80 via 10.96.0.20", "default/web-2 at 10.244.1.2:80"
    host: str  # IP for TCP, the name for DNS
    port: int
    dns: bool = False
    query_id: int = field(default_factory=lambda: secrets.randbelow(65536))  # DNS only


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
    port: int | None = None  # TCP: the client port the probe's socket had, when seen


@dataclass(frozen=True)
class Story:
    """What became of one probe: its own conversation, where it went, what was found of it."""

    sent: Sent
    path: PathRow | None
    where: str
    findings: tuple[Finding, ...]


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
    probes = [Probe(f"svc/{name}:{chosen} via {vip}", vip, int(spec["port"]))]
    try:
        _, pods = resolve(api, f"svc/{name}", None)
    except NoEndpoints:  # the incident itself, maybe: the ClusterIP is still worth a probe
        how = "it has no ready endpoint pod: the ClusterIP alone, from the client's side"
        return Destination(f"svc/{name}:{spec['port']}", tuple(probes), (), how)
    backends = endpoint_ports(api, name, spec.get("name") or "")
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
        return ["dig", "+search", f"+time={PROBE_TIMEOUT}", "+tries=1",
                f"+qid={probe.query_id}", probe.host]  # fmt: skip
    return ["timeout", str(PROBE_TIMEOUT), "bash", "-c", TCP_PROBE, probe.host, str(probe.port)]


def describe_probe(probe: Probe, code: int, took: float, output: str) -> Sent:
    if probe.dns:
        status = re.search(r"status: (\w+)", output)
        if status:
            ok = status.group(1) == "NOERROR"
            return Sent(probe, f"{probe.label}: {status.group(1)} in {took * 1000:.0f} ms", ok)
        return Sent(probe, f"{probe.label}: no answer within {PROBE_TIMEOUT} s", False)
    found = PORT_LINE.search(output)
    port = int(found.group(1)) if found else None
    output = PORT_LINE.sub("", output)
    if code == 0:
        return Sent(probe, f"{probe.label}: connected in {took * 1000:.1f} ms", True, port)
    if code == 124:
        return Sent(probe, f"{probe.label}: no answer within {PROBE_TIMEOUT} s", False, port)
    why = output.strip().splitlines()[-1] if output.strip() else f"exit {code}"
    return Sent(probe, f"{probe.label}: failed ({why.split(': ')[-1]})", False, port)


def own_path(result: Result, src_ip: str, sent: Sent) -> tuple[int | None, str]:
    """The index of the probe's own conversation among the result's paths, or None and why
    not. Its client port (TCP) or its query id (DNS) picks it out of everything else the
    capture saw; without either, only a single conversation between the two is taken."""
    probe = sent.probe
    paths = result.paths
    if probe.dns:
        clients = {
            d.client for d in result.dns if d.id == probe.query_id and host_of(d.client) == src_ip
        }
        mine = [k for k, p in enumerate(paths) if p.client in clients]
    else:
        target = f"{probe.host}:{probe.port}"
        towards = [
            k for k, p in enumerate(paths) if host_of(p.client) == src_ip and p.server == target
        ]
        if sent.port is not None:
            mine = [k for k in towards if paths[k].client.endswith(f":{sent.port}")]
        elif len(towards) > 1:
            return None, (
                f"its own connection is not known ({len(towards)} connections from the pod to "
                f"{target} were captured, and the pod's kernel did not show the probe's port)"
            )
        else:
            mine = towards
    if not mine:
        return None, "no packet of it was captured at any point"
    return mine[0], ""


def host_of(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]")


def where_it_went(path: PathRow, sent: Sent, about: tuple[Finding, ...]) -> str:
    hops = path.hops
    seen = [h for h in hops if not h.expected]
    if about:
        return f"[{about[0].severity.name}] {about[0].title}"
    if path.lost:
        x = path.lost[0]
        return f"stopped after {x.last_seen}: never seen at {x.never_at}"
    if seen and len(seen) < len(hops):
        return f"last seen at {seen[-1].point}; never at {hops[len(seen)].point}"
    route = " -> ".join(h.point for h in hops)
    if sent.ok:
        return f"seen at every point on the way ({route})"
    return f"seen at each point that captured it ({route}), and no answer came back"


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


def stories(result: Result, src: Pod, sent: list[Sent]) -> list[Story]:
    """Each probe with its own conversation and the findings whose evidence is in it."""
    out = []
    for s in sent:
        k, why = own_path(result, src.ip, s)
        if k is None:
            out.append(Story(s, None, why, ()))
            continue
        conv = result.analysis.paths[k].conv
        about = tuple(f for f in result.findings if conv in result.analysis.conversations_of(f))
        out.append(Story(s, result.paths[k], where_it_went(result.paths[k], s, about), about))
    return out


def _whose(t: Story) -> str:
    """Which connection the story is of: what finds it again in the bundle."""
    if t.path is None:
        return ""
    if t.sent.probe.dns:
        return f" (query id {t.sent.probe.query_id} from {t.path.client})"
    return f" (from {t.path.client})"


def report(result: Result, src: Pod, dest: Destination, sent: list[Sent]) -> tuple[str, bool]:
    """The text `trace` prints, and whether every probe went through with no finding of its
    own. The verdict is the one `ktrace analyze` gives the same bundle; findings about other
    traffic the capture saw meanwhile come last, apart."""
    from ktrace.report.text import render_findings, render_paths, verdict

    told = stories(result, src, sent)
    how = f" ({dest.how})" if dest.how else ""
    lines = [verdict(result), f"Probes from {src.ref} to {dest.label}{how}:"]
    lines += [f"  {'ok  ' if s.ok else 'FAIL'} {s.line}" for s in sent] or ["  not sent"]
    lines += ["", "Where each went:"]
    lines += [f"  {t.sent.probe.label}{_whose(t)}: {t.where}" for t in told]
    lines.append("")
    paths: list[PathRow] = []
    for t in told:
        if t.path is not None and t.path not in paths:
            paths.append(t.path)
    if paths:
        lines.append(render_paths(paths, len(paths), "Paths of the probes"))
    mine: list[Finding] = []
    for t in told:
        mine += [f for f in t.findings if f not in mine]
    lines.append(render_findings(mine, title="Findings about the probes"))
    others = [f for f in result.findings if f not in mine]
    if others:
        lines.append(render_findings(others, title="Other traffic seen meanwhile"))
    clean = (
        bool(sent) and all(s.ok for s in sent) and all(f.severity < Severity.MEDIUM for f in mine)
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
