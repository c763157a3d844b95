"""The HTTP and TLS checks: server errors concentrated on a backend, slow answers and where
their time went, requests never answered, answers cut by a reset, failed TLS handshakes.

Each request is counted once (its exchange across points) and grouped by what the client asked
for (a Service address, a pod), so one finding names one target and, when it is one of them,
the backend at fault."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from statistics import median

from ktrace.analysis.checks import MAX_EVIDENCE, FunctionCheck, plural
from ktrace.analysis.context import Analysis
from ktrace.analysis.http import GRPC_NAMES
from ktrace.analysis.http_exchanges import HttpExchange
from ktrace.model import Finding, PacketRef, Severity

SLOW_MS = 500  # to the first byte of the answer
HANG_NS = 10_000_000_000  # a request still unanswered this long before the capture ended
CONCENTRATED = 0.8  # share of a target's failures on one backend that names it


def _refs(analysis: Analysis, exchanges: list[HttpExchange]) -> tuple[PacketRef, ...]:
    rows: list[int] = []
    for e in exchanges:
        t = e.primary
        rows += [t.request_row] + ([t.response_row] if t.response_row is not None else [])
    return tuple(analysis.index.ref(r) for r in rows[:MAX_EVIDENCE] if r >= 0)


def _by_target(exchanges: list[HttpExchange]) -> dict[str, list[HttpExchange]]:
    out: dict[str, list[HttpExchange]] = defaultdict(list)
    for e in exchanges:
        out[e.primary.server].append(e)
    return out


def _what(e: HttpExchange) -> str:
    t = e.primary
    if t.grpc_status is not None and t.grpc_status != 0:
        return f"grpc {GRPC_NAMES.get(t.grpc_status, t.grpc_status)}"
    return str(t.status)


def _health_check(analysis: Analysis, target: str) -> bool:
    """kube-proxy's health check node port answers 503 on nodes without a local endpoint by
    design: that is how a load balancer picks nodes, not a failure."""
    ip, _, port = target.rpartition(":")
    return port.isdigit() and analysis.names.health_check(ip.strip("[]"), int(port)) is not None


def run_errors(analysis: Analysis) -> Iterator[Finding]:
    for target, group in _by_target(analysis.http_exchanges).items():
        if _health_check(analysis, target):
            continue  # svc.health-check reads those answers
        failed = [e for e in group if e.primary.failed]
        if not failed:
            continue
        backends = Counter(e.backend for e in failed)
        asked = Counter(e.backend for e in group)
        top, n = backends.most_common(1)[0]
        others_ok = sum(asked.values()) - asked[top] - (len(failed) - n)
        one = len(asked) > 1 and n >= CONCENTRATED * len(failed) and others_ok > 0
        kinds = Counter(_what(e) for e in failed)
        kind_text = ", ".join(f"{k} ({v}x)" for k, v in kinds.most_common(3))
        name = analysis.named(target)
        rate = len(failed) / len(group)
        yield Finding(
            id="http.errors",
            severity=Severity.HIGH
            if len(failed) >= 3 and rate >= 0.1
            else Severity.MEDIUM
            if len(failed) > 1
            else Severity.LOW,
            title=f"{len(failed)} of {plural(len(group), 'request')} to {name} failed"
            + (f", {n} of them answered by {analysis.named(top)}" if one else "")
            + f": {kind_text}",
            explanation=(
                f"Backend {analysis.named(top)} gave {n} of the {len(failed)} failures while "
                f"{others_ok} request(s) to the other backends succeeded: the fault is that "
                "backend, not the Service or the network."
                if one
                else "The failures are answers from the server side (5xx or a gRPC failure "
                "status): the requests reached a server, which failed them."
            ),
            next_step=(
                f"Look at {analysis.named(top)}: its logs, readiness, and what it depends on; "
                "take it out of the endpoints (fail its readiness probe) if it keeps failing."
                if one
                else "Read the servers' logs at the times of the failing requests; a 502/503/504 "
                "from a proxy or ingress names the upstream it could not reach."
            ),
            evidence=_refs(analysis, failed),
        )


def _where(analysis: Analysis, slow: list[HttpExchange]) -> str:
    """Which part of the wait holds the time, summed over the slow requests."""
    server = sum(e.server_ns or 0 for e in slow)
    network = sum(e.network_ns or 0 for e in slow)
    hops: Counter[str] = Counter()
    for e in slow:
        for k, ns in enumerate(e.hops_ns()):
            if ns is not None:
                a, b = e.copies[k].point, e.copies[k + 1].point
                hops[f"{analysis.point_id(a)} -> {analysis.point_id(b)}"] += ns
    seen_at = {e.copies[-1].point for e in slow if len(e.copies) > 1}
    if not seen_at:
        return (
            "the capture saw these requests at one point only, so it cannot tell server time "
            "from network time (capture on the server side too)"
        )
    if server >= network:
        where = ", ".join(sorted(analysis.point_id(p) for p in seen_at))
        return (
            f"the time is spent in the server: {server / len(slow) / 1e6:.0f} ms on average "
            f"between the request and the answer at {where}, the network added "
            f"{network / len(slow) / 1e6:.0f} ms"
        )
    hop, ns = hops.most_common(1)[0]
    return (
        f"the time is spent in the network: {network / len(slow) / 1e6:.0f} ms on average, most "
        f"of it between {hop} ({ns / len(slow) / 1e6:.0f} ms), against "
        f"{server / len(slow) / 1e6:.0f} ms in the server"
    )


def run_slow(analysis: Analysis) -> Iterator[Finding]:
    limit = SLOW_MS * 1_000_000
    for target, group in _by_target(analysis.http_exchanges).items():
        answered = [e for e in group if e.primary.latency_ns is not None]
        slow = [e for e in answered if (e.primary.latency_ns or 0) >= limit]
        if not slow:
            continue
        backends = Counter(e.backend for e in slow)
        asked = Counter(e.backend for e in answered)
        top, n = backends.most_common(1)[0]
        one = len(asked) > 1 and n >= CONCENTRATED * len(slow) and asked[top] < len(answered)
        waits = [(e.primary.latency_ns or 0) / 1e6 for e in slow]
        yield Finding(
            id="http.slow",
            severity=Severity.MEDIUM,
            title=f"slow HTTP: {len(slow)} of {plural(len(answered), 'answer')} from "
            f"{analysis.named(target)} took {median(waits):.0f} ms (median) to the first byte"
            + (f", {n} of them from {analysis.named(top)}" if one else ""),
            explanation=(
                f"{len(slow)} answers took over {SLOW_MS} ms (up to {max(waits):.0f} ms); "
                + _where(analysis, slow)
                + (
                    f". The other backends answered in time: {analysis.named(top)} is the slow one."
                    if one
                    else "."
                )
            ),
            next_step=(
                "Server time: look at the backend's CPU throttling, its logs and what it waits "
                "on (databases, other services). Network time: capture on the hop named above "
                "and check its queues and drops (ip -s link, tc -s qdisc)."
            ),
            evidence=_refs(analysis, slow),
        )


def run_unanswered(analysis: Analysis) -> Iterator[Finding]:
    end = analysis.end_ts
    lost = [
        e
        for e in analysis.http_exchanges
        if e.primary.response_ts is None
        and (e.primary.ended in ("reset", "closed") or e.primary.request_ts + HANG_NS <= end)
    ]
    if not lost:
        return
    how = Counter(
        "the server closed the connection"
        if e.primary.ended == "closed"
        else f"the {e.primary.reset_by} reset the connection"
        if e.primary.ended == "reset"
        else "still waiting when the capture ended"
        for e in lost
    )
    targets = Counter(analysis.named(e.primary.server) for e in lost)
    yield Finding(
        id="http.unanswered",
        severity=Severity.HIGH,
        title=f"{plural(len(lost), 'HTTP request')} never answered, to "
        + ", ".join(t for t, _ in targets.most_common(2)),
        explanation=(
            "No byte of an answer came back: "
            + "; ".join(f"{text} ({n}x)" for text, n in how.most_common())
            + ". The request reached the connection; the server took it and did not answer, "
            "or it was lost on the way."
        ),
        next_step=(
            "Look at where the request was last seen (the exchange's points) and at the "
            "server's logs for it; a server that accepts and never answers is stuck or "
            "overloaded (thread pool, connection limits)."
        ),
        evidence=_refs(analysis, lost),
    )


def run_reset(analysis: Analysis) -> Iterator[Finding]:
    cut = [
        e
        for e in analysis.http_exchanges
        if e.primary.response_ts is not None and e.primary.ended == "reset"
    ]
    if not cut:
        return
    servers = [e for e in cut if e.primary.reset_by == "server"]
    backends = Counter(analysis.named(e.backend) for e in cut)
    yield Finding(
        id="http.reset",
        severity=Severity.HIGH if servers else Severity.LOW,
        title=f"{plural(len(cut), 'answer')} cut by a reset mid-answer, from "
        + ", ".join(b for b, _ in backends.most_common(2)),
        explanation=(
            f"The answer had begun (status {_what(cut[0])}) when the connection or stream was "
            f"reset: {len(servers)} by the server side, {len(cut) - len(servers)} by the "
            "client. A server reset mid-answer is a crash, a killed worker, a proxy timeout or "
            "an OOM kill; a client reset is a caller giving up (its timeout)."
        ),
        next_step=(
            "Check the backend's restarts and logs at these times (kubectl get pod, "
            "kubectl logs --previous) and the timeouts of any proxy on the way."
        ),
        evidence=_refs(analysis, cut),
    )


def run_tls(analysis: Analysis) -> Iterator[Finding]:
    ident = analysis.correlation.ident
    seen: set[int] = set()
    failed = []
    for s in analysis.http.tls:
        key = int(ident[s.hello_row])
        if not s.failed or (key >= 0 and key in seen):
            continue
        seen.add(key)
        failed.append(s)
    if not failed:
        return
    reasons = Counter(s.alert or "server closed without a ServerHello" for s in failed)
    names = Counter(s.sni or analysis.named(s.server) for s in failed)
    yield Finding(
        id="tls.handshake",
        severity=Severity.HIGH,
        title=f"{plural(len(failed), 'TLS handshake')} failed with "
        + ", ".join(n for n, _ in names.most_common(3)),
        explanation=(
            "Reasons: "
            + "; ".join(f"{r} ({n}x)" for r, n in reasons.most_common(3))
            + ". The handshake ended before any application data: the client and server do "
            "not agree on versions, ciphers, names or certificates."
        ),
        next_step=(
            "Compare the server name (SNI) with the certificate's names, the versions offered "
            "with the server's minimum, and the CA the client trusts; openssl s_client "
            "-connect HOST:PORT -servername NAME shows the server's side."
        ),
        evidence=tuple(analysis.index.ref(r) for s in failed for r in s.rows)[:MAX_EVIDENCE],
    )


ERRORS = FunctionCheck("http.errors", run_errors)
SLOW = FunctionCheck("http.slow", run_slow)
UNANSWERED = FunctionCheck("http.unanswered", run_unanswered)
RESET = FunctionCheck("http.reset", run_reset)
TLS = FunctionCheck("tls.handshake", run_tls)
