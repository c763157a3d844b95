"""The HTTP and TLS checks: server errors concentrated on a backend, slow answers and where
their time went, requests never answered, answers cut by a reset, failed TLS handshakes.

Each request is counted once (its exchange across points) and grouped by what the client asked
for (a Service address, a pod), so one finding names one target and, when it is one of them,
the backend at fault."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

import numpy as np

from ktrace.analysis.checks import (
    GRACE_NS,
    MAX_EVIDENCE,
    FunctionCheck,
    plural,
    within_capture_loss,
)
from ktrace.analysis.context import Analysis
from ktrace.analysis.http import GRPC_NAMES
from ktrace.analysis.http_exchanges import HttpExchange
from ktrace.analysis.http_walk import HttpEnd, Side
from ktrace.model import Finding, PacketRef, Severity

SLOW_MS = 500  # to the first byte of the answer
SLOW_MANY = 3  # slow answers from one backend that are a pattern, not an endpoint's nature
HANG_NS = 10_000_000_000  # a request still unanswered this long before the capture ended


def _refs(analysis: Analysis, exchanges: list[HttpExchange]) -> tuple[PacketRef, ...]:
    rows: list[int] = []
    for e in exchanges:
        t = e.primary
        rows += [t.request_row] + ([t.response_row] if t.response_row is not None else [])
    return tuple(analysis.index.ref(r) for r in rows[:MAX_EVIDENCE] if r >= 0)


def _host(endpoint: str) -> str:
    return (
        endpoint.rsplit(":", 1)[0].strip("[]")
        if endpoint.count(":") == 1 or endpoint.startswith("[")
        else endpoint
    )


def _tally(counts: Counter[str], n: int, sep: str = ", ") -> str:
    """'a (3x), b (1x)': the n most common, with their counts."""
    return sep.join(f"{what} ({k}x)" for what, k in counts.most_common(n))


def _top(counts: Counter[str], n: int) -> str:
    """'a, b': the n most common."""
    return ", ".join(what for what, _ in counts.most_common(n))


def _by_backend(exchanges: list[HttpExchange]) -> dict[str, list[HttpExchange]]:
    """Exchanges by the pod (address) that answered them, whatever port or name was asked."""
    out: dict[str, list[HttpExchange]] = defaultdict(list)
    for e in exchanges:
        out[_host(e.backend)].append(e)
    return out


def _asked_as(analysis: Analysis, exchanges: list[HttpExchange]) -> str:
    """How the clients reached it: '10.96.0.20:80 (svc default/web) 3x, directly 6x'."""
    asked = Counter(
        "directly" if e.primary.server == e.backend else analysis.named(e.primary.server)
        for e in exchanges
    )
    return ", ".join(f"{how} {n}x" for how, n in asked.most_common(4))


def _siblings(
    analysis: Analysis, mine: list[HttpExchange], host: str, bad: Callable[[HttpExchange], bool]
) -> int:
    """Requests to the same Services as `mine` that other backends answered well."""
    services = {e.primary.server for e in mine if e.primary.server != e.backend}
    return sum(
        1
        for e in analysis.http_exchanges
        if e.primary.server in services
        and _host(e.backend) != host
        and e.primary.answered
        and not bad(e)
    )


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
    # kube-proxy's health check node ports are read by svc.health-check
    targets = {e.primary.server for e in analysis.http_exchanges}
    probes = {t for t in targets if _health_check(analysis, t)}
    asked = [e for e in analysis.http_exchanges if e.primary.server not in probes]
    for host, group in _by_backend(asked).items():
        failed = [e for e in group if e.primary.failed]
        if not failed:
            continue
        kinds = Counter(_what(e) for e in failed)
        kind_text = _tally(kinds, 3)
        fine = _siblings(analysis, failed, host, lambda e: e.primary.failed)
        rate = len(failed) / len(group)
        name = analysis.named(host)
        yield Finding(
            id="http.errors",
            severity=Severity.HIGH
            if len(failed) >= 3 and rate >= 0.1
            else Severity.MEDIUM
            if len(failed) > 1
            else Severity.LOW,
            title=f"{name} failed {len(failed)} of {plural(len(group), 'request')}: {kind_text}",
            explanation=(
                f"Asked as: {_asked_as(analysis, failed)}. These are answers from the server "
                "side (5xx or a gRPC failure status): the requests reached it and it failed "
                "them."
                + (
                    f" Through the same Service, {plural(fine, 'request')} to other backends "
                    "succeeded: the fault is this backend, not the Service or the network."
                    if fine
                    else ""
                )
            ),
            next_step=(
                f"Look at {name}: its logs, readiness, and what it depends on"
                + ("; fail its readiness probe to take it out of the Service" if fine else "")
                + ". A 502/503/504 from a proxy or an ingress names the upstream it could not "
                "reach."
            ),
            evidence=_refs(analysis, failed),
        )


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.0f} ms" if ns >= 10e6 else f"{ns / 1e6:.1f} ms"


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
            f"the time is spent in the server: {_ms(server / len(slow))} on average between "
            f"the request and the answer at {where}, the network added "
            f"{_ms(network / len(slow))}"
        )
    hop, ns = hops.most_common(1)[0]
    return (
        f"the time is spent in the network: {_ms(network / len(slow))} on average, most of it "
        f"between {hop} ({_ms(ns / len(slow))}), against {_ms(server / len(slow))} in the "
        "server"
    )


def run_slow(analysis: Analysis) -> Iterator[Finding]:
    limit = SLOW_MS * 1_000_000

    def late(e: HttpExchange) -> bool:
        return (e.primary.latency_ns or 0) >= limit

    for host, group in _by_backend(analysis.http_exchanges).items():
        answered = [e for e in group if e.primary.latency_ns is not None]
        slow = [e for e in answered if late(e)]
        if not slow:
            continue
        fine = _siblings(analysis, slow, host, late)
        waits = [(e.primary.latency_ns or 0) / 1e6 for e in slow]
        name = analysis.named(host)
        network = sum(e.network_ns or 0 for e in slow) > sum(e.server_ns or 0 for e in slow)
        # a lone slow answer may be a slow endpoint by design (a report, a long poll)
        telling = len(slow) >= SLOW_MANY or fine > 0 or network
        yield Finding(
            id="http.slow",
            severity=Severity.MEDIUM if telling else Severity.LOW,
            title=f"slow HTTP: {len(slow)} of {plural(len(answered), 'answer')} from {name} "
            f"took {np.median(waits):.0f} ms (median) to the first byte",
            explanation=(
                f"Asked as: {_asked_as(analysis, slow)}; over {SLOW_MS} ms each (up to "
                f"{max(waits):.0f} ms): "
                + _where(analysis, slow)
                + (
                    f". Through the same Service, {plural(fine, 'answer')} from other backends "
                    "came in time: this backend is the slow one."
                    if fine
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


def _unanswered(e: HttpExchange, end: int) -> bool:
    """No answer: the server ended the connection, the client gave up after waiting (a hedged
    or cancelled request is let go sooner), or the capture went on long after the request."""
    t = e.primary
    if t.response_ts is not None or not t.asked or t.ended == HttpEnd.UNSEEN:
        return False  # answered, no request, or answered in bytes the capture missed
    if t.ended in (HttpEnd.RESET, HttpEnd.CLOSED):
        return t.ended_by == Side.SERVER or (t.ended_ts or 0) - t.request_ts >= GRACE_NS
    return t.request_ts + HANG_NS <= end


def run_unanswered(analysis: Analysis) -> Iterator[Finding]:
    end = analysis.end_ts
    lost = [e for e in analysis.http_exchanges if _unanswered(e, end)]
    if not lost:
        return
    by_capture, loss = within_capture_loss(
        analysis,
        [e.primary.point for e in lost],
        [e.primary.point for e in analysis.http_exchanges],
    )
    if by_capture:
        return  # answers the capture itself failed to record, as far as can be told
    ended = any(e.primary.ended != HttpEnd.OPEN for e in lost)
    how = Counter(
        f"the {e.primary.ended_by} {'closed' if e.primary.ended == HttpEnd.CLOSED else 'reset'} "
        "the connection"
        if e.primary.ended in (HttpEnd.CLOSED, HttpEnd.RESET)
        else "still waiting when the capture ended"
        for e in lost
    )
    targets = Counter(analysis.named(e.primary.server) for e in lost)
    yield Finding(
        id="http.unanswered",
        # still waiting at the end may be a stream the server answers when it has news
        severity=Severity.HIGH if ended else Severity.MEDIUM,
        title=f"{plural(len(lost), 'HTTP request')} never answered, to " + _top(targets, 2),
        explanation=(
            "No byte of an answer came back: "
            + _tally(how, len(how), "; ")
            + ". The request reached the connection; the server took it and did not answer, "
            f"or it was lost on the way. More than the capture's own loss accounts for: {loss}."
        ),
        next_step=(
            "Look at where the request was last seen (the exchange's points) and at the "
            "server's logs for it; a server that accepts and never answers is stuck or "
            "overloaded (thread pool, connection limits)."
        ),
        evidence=_refs(analysis, lost),
    )


def run_reset(analysis: Analysis) -> Iterator[Finding]:
    # a client resetting mid-answer gave up (its timeout): the table shows it, the cause is
    # elsewhere; a server that resets mid-answer is the fault
    cut = [
        e
        for e in analysis.http_exchanges
        if e.primary.response_ts is not None
        and e.primary.ended == HttpEnd.RESET
        and e.primary.ended_by == Side.SERVER
    ]
    if not cut:
        return
    backends = Counter(analysis.named(e.backend) for e in cut)
    yield Finding(
        id="http.reset",
        severity=Severity.HIGH,
        title=f"{plural(len(cut), 'answer')} cut by the server's reset mid-answer, from "
        + _top(backends, 2),
        explanation=(
            f"The answer had begun (status {_what(cut[0])}) when the server side reset the "
            "connection or the stream: a crash, a killed worker, an OOM kill, or a proxy's "
            "timeout on the way."
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
        title=f"{plural(len(failed), 'TLS handshake')} failed with " + _top(names, 3),
        explanation=(
            "Reasons: "
            + _tally(reasons, 3, "; ")
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
