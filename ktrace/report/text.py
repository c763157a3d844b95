"""The human rendering of an analysis result: findings first, then the tables."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ktrace.analysis.checks import plural
from ktrace.analysis.http_walk import HttpEnd
from ktrace.analysis.paths import NatKind
from ktrace.analysis.result import (
    ExchangeRow,
    HopRow,
    HttpRow,
    PathRow,
    PointRow,
    Result,
    TlsRow,
    TunnelRow,
)
from ktrace.analysis.views import ConversationRow
from ktrace.kernels.json_rows import iso
from ktrace.model import Finding
from ktrace.report.table import human_size, render

WRAP = 96


def _section(title: str, body: str) -> str:
    return f"{title}\n{'=' * len(title)}\n{body}\n"


def render_findings(
    findings: Sequence[Finding], packets: int | None = None, title: str = "Findings"
) -> str:
    if not findings:
        none = "none: nothing looks wrong in these captures" if packets != 0 else "none"
        return _section(title, none)
    lines = []
    for f in findings:
        lines.append(f"[{f.severity.name}] {f.id}: {f.title}")
        for text in (f.explanation, "Next: " + f.next_step):
            lines.extend(textwrap.wrap(text, WRAP, initial_indent="    ", subsequent_indent="    "))
        if f.evidence:
            refs = ", ".join(f"{e.point}#{e.number}" for e in f.evidence[:6])
            lines.append(f"    Evidence: {refs}")
    return _section(f"{title} ({len(findings)})", "\n".join(lines))


def _hop_line(k: int, h: HopRow) -> str:
    seen = "never" if h.expected else f"{h.packets} pkts"
    lat = f"+{h.latency_ms:.3f} ms" if h.latency_ms is not None else ""
    tun = (
        f"{h.tunnel.kind} vni {h.tunnel.vni} {h.tunnel.outer_src} > {h.tunnel.outer_dst}"
        if h.tunnel
        else ""
    )
    return (
        f"  {k:>2} {h.point:<16} {h.kind:<5} {h.node or '':<10} {seen:>9} {lat:>13}  {tun}".rstrip()
    )


def _path_lines(p: PathRow) -> list[str]:
    lines = [p.conversation]
    for k, h in enumerate(p.hops):
        lines.append(_hop_line(k + 1, h))
        lines.extend(f"     {n.kind}: {n.before}  =>  {n.after}" for n in p.nat if n.after_hop == k)
    for x in p.lost:
        kind = "SYNs" if x.syn == x.packets else "packets"
        lines.append(
            f"  LOST {x.packets} {kind} ({x.direction}, up to {x.max_size} B): last seen at "
            f"{x.last_seen}, never at {x.never_at}"
        )
    return [*lines, ""]


def render_paths(
    paths: Sequence[PathRow], limit: int, title: str = "Paths across capture points"
) -> str:
    """Each conversation hop by hop; the paths that lost packets first."""
    multi = sorted((p for p in paths if len(p.hops) > 1), key=lambda p: not p.lost)
    if not multi:
        return ""
    shown = multi[:limit]
    lines = [line for p in shown for line in _path_lines(p)]
    return _limited(title, "path", "\n".join(lines).rstrip(), len(shown), len(multi))


def render_points(points: Sequence[PointRow]) -> str:
    headers = ["POINT", "KIND", "NODE", "LINKTYPE", "PACKETS", "BYTES", "DURATION", "DROPS"]
    rows = [
        [
            p.id,
            p.kind,
            p.node,
            p.linktype,
            p.packets,
            human_size(p.bytes),
            f"{p.duration_s:.3f}s",
            p.kernel_drops,
            f"{p.clock_offset_ms:+.1f}ms" if p.clock_offset_ms else "",
            p.file,
        ]
        for p in points
    ]
    table = render([*headers, "CLOCK", "FILE"], rows, right=(4, 5, 6, 7, 8))
    return _section(f"Capture points ({len(points)})", table)


def _limited(title: str, what: str, table: str, shown: int, total: int) -> str:
    """A table section that says how much `--limit` hid and where the rest is."""
    more = (
        f"\n... {plural(total - shown, 'more ' + what)} not shown (--limit {shown}; -o json has "
        "them all)"
        if total > shown
        else ""
    )
    return _section(f"{title} ({total})", table + more)


def _ms_text(value: float | None) -> str | None:
    return f"{value:.2f}ms" if value is not None else None


def _ends(c: ConversationRow) -> tuple[str, str]:
    """The conversation's two ends, the one a translation rewrote followed by what it became
    (with both rewritten, the destination: the Service a client asked for)."""
    after = c.nat.split(" => ")[-1]
    kind = c.nat_kind
    a = f"{c.a} => {after}" if kind is NatKind.SNAT else c.a
    b = f"{c.b} => {after}" if kind is not None and kind.destination else c.b
    return a, b


def render_flows(ordered: Sequence[ConversationRow], total: int, points: int) -> str:
    """Conversations once each across the points (NAT and tunnels joined): those that lost
    packets, then the biggest (the rows as given: Result.busiest_conversations orders them)."""
    headers = ["PROTO", "A", "B", "PKTS", "BYTES", "START", "DURATION", "HANDSHAKE"]
    headers += ["RETRANS", "RST", "FIN", "LOST"] + (["POINTS"] if points > 1 else [])
    rows = [
        [
            c.proto,
            *_ends(c),
            c.packets,
            human_size(c.bytes),
            iso(c.first_ts)[11:23],
            f"{(c.last_ts - c.first_ts) / 1e9:.3f}s",
            _ms_text(c.handshake_ms),
            c.retransmissions or "",
            c.rst or "",
            c.fin or "",
            c.lost or "",
            *([len(c.points)] if points > 1 else []),
        ]
        for c in ordered
    ]
    table = render(headers, rows, right=(3, 4, 6, 7, 8, 9, 10, 11, 12))
    return _limited("Conversations", "conversation", table, len(rows), total)


def render_dns(
    exchanges: Sequence[ExchangeRow], points: int, limit: int, total: int | None = None
) -> str:
    """Each exchange once, as seen nearest its client, with how many points saw it; `total`:
    how many there are when only the shown ones were built."""
    headers = ["TIME", "CLIENT", "SERVER", "ID", "QNAME", "TYPE", "RCODE", "LATENCY", "RETRIES"]
    headers += ["ANSWERS"] + (["POINTS"] if points > 1 else [])
    rows = [
        [
            d.time[11:23],
            d.client,
            d.server,
            f"{d.id:#06x}",
            d.qname or QUESTIONLESS,
            d.qtype,
            d.rcode or "NO ANSWER",
            _ms_text(d.latency_ms),
            d.retries or "",
            ", ".join(d.answers[:3]),
            *([len(e.points)] if points > 1 else []),
        ]
        for e in exchanges[:limit]
        for d in (e.dns,)
    ]
    table = render(headers, rows, right=(7, 8, 10))
    return _limited("DNS exchanges", "exchange", table, len(rows), total or len(exchanges))


MAX_PATH = 40  # characters of a request path in the table; -o json has them whole
UNSEEN = "(asked before the capture)"
QUESTIONLESS = "(no question)"  # an inverse query, a FORMERR answer to junk


def clip(text: str, width: int | None) -> str:
    """The text cut to `width` characters (None: whole), the cut marked."""
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def render_http(ordered: Sequence[HttpRow], points: int, total: int) -> str:
    """Each request once, as its client saw it (the rows as given: Result.worst_http puts
    failures and the slowest first). SERVER and NETWORK split the wait where the request was
    seen on the server side too."""
    headers = ["TIME", "REQUEST", "STATUS", "BACKEND", "LATENCY", "SERVER", "NETWORK", "ENDED"]
    headers += ["POINTS"] if points > 1 else []
    table = render(
        headers,
        [
            [
                r.time[11:23],
                clip(f"{r.method} {r.host}{r.path}" if r.method else UNSEEN, MAX_PATH),
                r.outcome,
                r.backend_name,
                _ms_text(r.latency_ms),
                _ms_text(r.server_ms),
                _ms_text(r.network_ms),
                "" if r.ended == HttpEnd.COMPLETE else r.ended,
                *([len(r.points)] if points > 1 else []),
            ]
            for r in ordered
        ],
        right=(4, 5, 6, 8),
    )
    return _limited("HTTP requests", "request", table, len(ordered), total)


def render_tls(rows: Sequence[TlsRow], limit: int) -> str:
    """Failed handshakes first; in parentheses what the client offered where the server's
    choice is encrypted (TLS 1.3) or never came."""
    shown = sorted(rows, key=lambda r: not r.failed)[:limit]
    table = render(
        ["TIME", "POINT", "CLIENT", "SERVER", "SNI", "VERSION", "ALPN", "ALERT"],
        [
            [
                r.time[11:23],
                r.point,
                r.client,
                r.server,
                r.sni,
                r.version or f"({r.offered_version})",
                r.alpn or f"({','.join(r.offered_alpn)})" if r.offered_alpn else "",
                r.alert or ("no ServerHello" if r.failed else ""),
            ]
            for r in shown
        ],
    )
    return _limited("TLS handshakes", "handshake", table, len(shown), len(rows))


def render_tunnels(tunnels: Sequence[TunnelRow]) -> str:
    rows = [[t.kind, t.outer_src, t.outer_dst, t.vni, t.port or "", t.packets] for t in tunnels]
    headers = ["KIND", "OUTER SRC", "OUTER DST", "VNI/KEY", "PORT", "PACKETS"]
    return _section("Tunnels", render(headers, rows, right=(3, 4, 5)))


def verdict(result: Result) -> str:
    """The report's first line: what a reader at 3 a.m. needs before anything else."""
    points = result.points
    packets = sum(p.packets for p in points)
    if not packets:
        head = (
            f"Verdict: no packets were captured at any of the {plural(len(points), 'point')}: "
            "nothing to diagnose."
        )
    elif not result.ip_packets:
        head = (
            f"Verdict: none of the {packets:,} packets at {plural(len(points), 'point')} "
            "could be read as IP (see Warnings): nothing to diagnose."
        )
    elif result.findings:
        worst = result.findings[0]
        head = (
            f"Verdict: {plural(len(result.findings), 'finding')}, the most severe "
            f"[{worst.severity.name}] {worst.title}."
        )
    else:
        head = (
            f"Verdict: nothing looks wrong in {packets:,} packets at "
            f"{plural(len(points), 'point')}."
        )
    return "\n".join([head, *(f"Note: {n}" for n in result.notes)]) + "\n"


def render_report(result: Result, limit: int) -> str:
    parts = [verdict(result), render_findings(result.findings, result.ip_packets)]
    parts.append(render_paths(result.paths, limit))
    points = len(result.points)
    parts += [
        render_points(result.points),
        render_flows(*result.busiest_conversations(limit), points),
    ]
    total = len(result.analysis.dns_exchanges)
    if total:  # rows built for the shown exchanges only: a DNS-heavy capture has 100,000s
        parts.append(render_dns(result.exchange_rows(limit), points, limit, total))
    total = len(result.analysis.http_exchanges)
    if total:  # rows built for the shown requests only
        parts.append(render_http(result.worst_http(limit), points, total))
    if result.analysis.http.tls:
        parts.append(render_tls(result.tls, limit))
    if result.tunnels:
        parts.append(render_tunnels(result.tunnels))
    warnings = [w for w in result.warnings if w not in result.notes]  # notes lead already
    if warnings:
        parts.append(_section("Warnings", "\n".join(f"! {w}" for w in warnings)))
    return "\n".join(p for p in parts if p)
