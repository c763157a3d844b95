"""`kubectl ktrace dns TARGET [NAME...]`: DNS as the pod sees it, from inside its network
namespace, with the DNS packets captured meanwhile.

For each name: the queries the pod's resolver would send (search list, ndots), each answer
and its latency. For the cluster DNS: each nameserver of resolv.conf and each endpoint
behind the DNS Service asked directly, the Service VIP against its endpoints, UDP
truncation and the TCP fallback.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ktrace.bundle.manifest import write_json
from ktrace.capture.resolver import (
    DigAnswer,
    Lookup,
    ResolvConf,
    candidates,
    dig_argv,
    parse_dig,
    parse_resolv_conf,
)
from ktrace.capture.session import Options, Session, capture
from ktrace.errors import ClusterError, ExitStatus
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.debug import Container
from ktrace.kube.execstream import run
from ktrace.kube.targets import Pod, resolve

DEFAULT_NAMES = ("kubernetes.default",)
TIMEOUT = 2
SETTLE = 1.0
DNS_FILTER = "udp port 53 or tcp port 53"


def query(
    api: Api,
    c: Container,
    name: str,
    qtype: str,
    server: str,
    tcp: bool = False,
    small: bool = False,
) -> DigAnswer:
    began = time.monotonic()
    r = run(api, c.namespace, c.pod, c.name, dig_argv(name, qtype, server, TIMEOUT, tcp, small))
    took = (time.monotonic() - began) * 1000
    text = (r.stdout + r.stderr).decode("utf-8", "replace")
    return parse_dig(text, name, qtype, server, "tcp" if tcp else "udp", took)


def lookup(api: Api, c: Container, name: str, conf: ResolvConf) -> Lookup:
    """Tries each candidate at the first nameserver, A and AAAA as getaddrinfo does; stops
    at the first that has addresses."""
    result = Lookup(name)
    server = conf.nameservers[0]
    for candidate in candidates(name, conf):
        a = query(api, c, candidate, "A", server)
        aaaa = query(api, c, candidate, "AAAA", server)
        if aaaa.addresses and not a.addresses:
            a = replace(a, status=aaaa.status, addresses=aaaa.addresses)
        result.tried.append(a)
        if a.status == "NOERROR" and a.addresses:
            break
    return result


def dns_endpoints(inventory: dict[str, Any], vip: str) -> list[tuple[str, str]]:
    """(pod, IP) behind the Service whose ClusterIP is `vip`."""
    svc = next((s for s in inventory.get("services", []) if s.get("clusterIP") == vip), None)
    if svc is None:
        return []
    return [
        (f"{sl['namespace']}/{e['pod']}", e["ip"])
        for sl in inventory.get("endpointslices", [])
        if sl["service"] == svc["name"] and sl["namespace"] == svc["namespace"]
        for e in sl["endpoints"]
    ]


def cluster_dns_name(inventory: dict[str, Any], conf: ResolvConf) -> str | None:
    """The DNS Service's own name: an in-cluster name every cluster DNS server must know."""
    domain = next((d[4:] for d in conf.search if d.startswith("svc.")), None)
    for s in inventory.get("services", []):
        if domain and s.get("clusterIP") in conf.nameservers:
            return f"{s['name']}.{s['namespace']}.svc.{domain}."
    return None


def server_checks(
    api: Api, c: Container, conf: ResolvConf, inventory: dict[str, Any], probe: str
) -> dict[str, Any]:
    """Each nameserver and DNS endpoint asked directly over UDP and TCP; truncation."""
    servers = [(ns, ns) for ns in conf.nameservers]
    for vip in conf.nameservers:
        servers += dns_endpoints(inventory, vip)
    rows = []
    for label, ip in servers:
        udp = query(api, c, probe, "A", ip)
        tcp = query(api, c, probe, "A", ip, tcp=True)
        rows.append({"server": label, "ip": ip, "udp": asdict(udp), "tcp": asdict(tcp)})
    small = query(api, c, probe, "A", conf.nameservers[0], small=True)
    return {"probe": probe, "servers": rows, "truncated_at_512": small.truncated}


def findings(conf: ResolvConf, lookups: list[Lookup], checks: dict[str, Any]) -> list[str]:
    out = []
    rows = checks["servers"]
    vips = [r for r in rows if r["server"] == r["ip"] and r["ip"] in conf.nameservers]
    endpoints = [r for r in rows if r not in vips]
    for v in vips:
        ok_eps = [e for e in endpoints if e["udp"]["status"] not in ("TIMEOUT", "ERROR")]
        if v["udp"]["status"] == "TIMEOUT" and ok_eps:
            out.append(
                f"nameserver {v['ip']} (the Service VIP) does not answer but its endpoints "
                f"{', '.join(e['server'] for e in ok_eps)} do: the VIP's path is broken "
                "(kube-proxy rules, conntrack, a NetworkPolicy on port 53)"
            )
        if v["udp"]["status"] == "TIMEOUT" and endpoints and not ok_eps:
            out.append(
                "neither the DNS Service nor any of its endpoints answers: the DNS pods "
                "are down or unreachable from this pod"
            )
        if v["udp"]["status"] not in ("TIMEOUT", "ERROR") and v["tcp"]["status"] == "TIMEOUT":
            out.append(
                f"nameserver {v['ip']} answers over UDP but not TCP: large answers "
                "(truncated over UDP) will fail"
            )
    for e in endpoints:
        if e["udp"]["status"] == "TIMEOUT":
            out.append(f"DNS endpoint {e['server']} ({e['ip']}) does not answer")
    slow = [x for x in rows if (x["udp"]["ms"] or 0) >= 100]
    for x in slow:
        out.append(f"{x['server']} took {x['udp']['ms']:.0f} ms to answer (slow)")
    if checks["truncated_at_512"]:
        out.append(
            f"the answer for {checks['probe']} does not fit 512 bytes: clients fall back to TCP"
        )
    servers_ok = rows and all(r["udp"]["status"] == "NOERROR" for r in rows)
    for lk in lookups:
        late = [a for a in lk.tried if a.status == "TIMEOUT"]
        if lk.found is None and late and servers_ok:
            out.append(
                f"{lk.name}: the DNS servers answer for cluster names but {late[0].name} times "
                "out: their upstream resolvers do not answer (CoreDNS forward / upstream DNS)"
            )
        if lk.found is not None and len(lk.tried) > 1:
            out.append(
                f"{lk.name}: {len(lk.tried) - 1} useless search-list queries (ndots:{conf.ndots}); "
                f"use the fully qualified {lk.found.name}"
            )
    return out


def render(
    pod: Pod, conf: ResolvConf, lookups: list[Lookup], checks: dict[str, Any], notes: list[str]
) -> str:
    lines = [
        f"DNS from {pod.ref}",
        f"  resolv.conf: nameservers {', '.join(conf.nameservers)}; search "
        f"{' '.join(conf.search) or '-'}; ndots:{conf.ndots} timeout:{conf.timeout} "
        f"attempts:{conf.attempts}",
        "",
    ]
    for lk in lookups:
        lines.append(f"  {lk.name}: {lk.verdict()}")
        for a in lk.tried:
            ms = f"{a.ms:.0f} ms" if a.ms is not None else "-"
            lines.append(f"      {a.name:<48} {a.status:<9} {ms:>7}  {' '.join(a.addresses)}")
    lines += ["", f"  servers, asked directly for {checks['probe']}:"]
    for row in checks["servers"]:
        udp, tcp = row["udp"], row["tcp"]
        lines.append(
            f"      {row['server']:<28} {row['ip']:<15} udp {udp['status']:<9} "
            f"{(udp['ms'] or 0):>5.0f} ms   tcp {tcp['status']:<9} {(tcp['ms'] or 0):>5.0f} ms"
        )
    lines.append("")
    if notes:
        lines.append("  Findings:")
        lines += [f"    - {n}" for n in notes]
    else:
        lines.append("  Findings: none")
    return "\n".join(lines) + "\n"


def dns_command(
    flags: KubeFlags,
    target: str | None,
    selector: str | None,
    names: list[str],
    opts: Options,
    out: Path | None,
) -> int:
    api = Api(flags)
    label, pods = resolve(api, target, selector)
    names = names or list(DEFAULT_NAMES)
    reports: list[str] = []
    failed = False

    def check(session: Session) -> None:
        nonlocal failed
        for pod in pods:
            c = session.ephemeral.get(pod.ref)
            if c is None:
                continue
            r = run(api, c.namespace, c.pod, c.name, ["cat", "/etc/resolv.conf"])
            conf = parse_resolv_conf(r.text)
            if not conf.nameservers:
                raise ClusterError(f"{pod.ref}: /etc/resolv.conf names no nameserver")
            lookups = [lookup(api, c, n, conf) for n in names]
            found = next((lk.found.name for lk in lookups if lk.found), None)
            probe = (
                found or cluster_dns_name(session.inventory, conf) or candidates(names[0], conf)[-1]
            )
            checks = server_checks(api, c, conf, session.inventory, probe)
            notes = findings(conf, lookups, checks)
            broken = any(r["udp"]["status"] == "TIMEOUT" for r in checks["servers"])
            failed = failed or broken or any(lk.found is None for lk in lookups)
            write_json(
                session.bundle / "dns" / f"{pod.namespace}_{pod.name}.json",
                {
                    "pod": pod.ref,
                    "resolv_conf": asdict(conf),
                    "lookups": [
                        {
                            "name": lk.name,
                            "verdict": lk.verdict(),
                            "queries": lk.queries,
                            "tried": [asdict(a) for a in lk.tried],
                        }
                        for lk in lookups
                    ],
                    "servers": checks,
                    "findings": notes,
                },
            )
            reports.append(render(pod, conf, lookups, checks, notes))

    # Without -o the packets go to a private directory removed at the end: nothing is left
    # in the current directory unasked.
    bundle = out or Path(tempfile.mkdtemp(prefix="ktrace-dns-")) / "bundle"
    opts = replace(opts, bpf=opts.bpf or DNS_FILTER, duration=SETTLE, count=None, node=False)
    try:
        outcome = capture(api, f"dns {label}", pods, bundle, opts, during=check)
    finally:
        if out is None:
            shutil.rmtree(bundle.parent, ignore_errors=True)
    sys.stdout.write("\n".join(reports))
    if out is not None:
        print(f"bundle: {bundle} (the DNS packets; ktrace analyze {bundle})", file=sys.stderr)
    if outcome.interrupted() is not None:
        return int(ExitStatus.CLUSTER)
    return int(ExitStatus.ERROR if failed else ExitStatus.OK)
