"""The human rendering of an analysis report: findings first, then the tables."""

from __future__ import annotations

import textwrap

from ktrace.report.table import human_size, render


def _section(title: str, body: str) -> str:
    return f"{title}\n{'=' * len(title)}\n{body}\n"


def render_findings(findings: list[dict]) -> str:  # type: ignore[type-arg]
    if not findings:
        return _section("Findings", "none: nothing looks wrong in these captures")
    lines = []
    for f in findings:
        lines.append(f"[{f['severity'].upper()}] {f['id']}: {f['title']}")
        for text in (f["explanation"], "Next: " + f["next_step"]):
            lines.extend(textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="    "))
        if f["evidence"]:
            refs = ", ".join(f"{e['point']}#{e['packet']}" for e in f["evidence"][:6])
            lines.append(f"    Evidence: {refs}")
    return _section(f"Findings ({len(findings)})", "\n".join(lines))


def render_paths(paths: list[dict], limit: int, title: str = "Paths across capture points") -> str:  # type: ignore[type-arg]
    """Each conversation hop by hop; the paths that lost packets first."""
    paths = sorted((p for p in paths if len(p["hops"]) > 1), key=lambda p: not p["lost"])
    if not paths:
        return ""
    lines = []
    for p in paths[:limit]:
        lines.append(p["conversation"])
        for k, h in enumerate(p["hops"], 1):
            where = h["node"] or ""
            seen = "never" if h["expected"] else f"{h['packets']} pkts"
            lat = f"+{h['latency_ms']:.3f} ms" if h["latency_ms"] is not None else ""
            tun = (
                f"{h['tunnel']['kind']} vni {h['tunnel']['vni']} "
                f"{h['tunnel']['outer_src']} > {h['tunnel']['outer_dst']}"
                if h["tunnel"]
                else ""
            )
            lines.append(
                f"  {k:>2} {h['point']:<16} {h['kind']:<5} {where:<10} "
                f"{seen:>9} {lat:>13}  {tun}".rstrip()
            )
            for n in p["nat"]:
                if n["between"][0] == h["point"]:
                    lines.append(f"     {n['kind']}: {n['before']}  =>  {n['after']}")
        for x in p["lost"]:
            kind = "SYNs" if x["syn"] == x["packets"] else "packets"
            lines.append(
                f"  LOST {x['packets']} {kind} ({x['direction']}, up to "
                f"{x['max_size']} B): last seen at {x['last_seen']}, never at "
                f"{x['never_at']}"
            )
        lines.append("")
    more = f"... {len(paths) - limit} more\n" if len(paths) > limit else ""
    return _section(f"{title} ({len(paths)})", "\n".join(lines).rstrip() + "\n" + more)


def render_report(data: dict, limit: int) -> str:  # type: ignore[type-arg]
    parts = [render_findings(data["findings"])]
    paths = render_paths(data["paths"], limit)
    if paths:
        parts.append(paths)

    points = data["points"]
    parts.append(
        _section(
            f"Capture points ({len(points)})",
            render(
                [
                    "POINT",
                    "KIND",
                    "NODE",
                    "LINKTYPE",
                    "PACKETS",
                    "BYTES",
                    "DURATION",
                    "DROPS",
                    "CLOCK",
                    "FILE",
                ],
                [
                    [
                        p["id"],
                        p["kind"],
                        p["node"],
                        p["linktype"],
                        p["packets"],
                        human_size(p["bytes"]),
                        f"{p['duration_s']:.3f}s",
                        p["kernel_drops"],
                        f"{p['clock_offset_ms']:+.1f}ms" if p["clock_offset_ms"] else "",
                        p["file"],
                    ]
                    for p in points
                ],
                right=(4, 5, 6, 7, 8),
            ),
        )
    )

    flows = sorted(data["flows"], key=lambda f: -(f["bytes_ab"] + f["bytes_ba"]))
    shown = flows[:limit]
    more = f"\n... {len(flows) - limit} more (use --limit or -o json)" if len(flows) > limit else ""
    parts.append(
        _section(
            f"Conversations ({len(flows)})",
            render(
                [
                    "PROTO",
                    "A",
                    "B",
                    "PKTS A>B",
                    "PKTS B>A",
                    "BYTES A>B",
                    "BYTES B>A",
                    "START",
                    "DURATION",
                    "HANDSHAKE",
                    "RETRANS",
                    "RST",
                    "FIN",
                ],
                [
                    [
                        f["proto"],
                        f["a"],
                        f["b"],
                        f["packets_ab"],
                        f["packets_ba"],
                        human_size(f["bytes_ab"]),
                        human_size(f["bytes_ba"]),
                        f["start"][11:23],
                        f"{f['duration_s']:.3f}s",
                        f"{f['handshake_ms']:.2f}ms" if f["handshake_ms"] is not None else None,
                        f["retransmissions"],
                        f["rst"],
                        f["fin"],
                    ]
                    for f in shown
                ],
                right=(3, 4, 5, 6, 8, 9, 10, 11, 12),
            ),
        )
        + more
    )

    dns = data["dns"]
    if dns:
        rows = [
            [
                d["time"][11:23],
                d["client"],
                d["server"],
                f"{d['id']:#06x}",
                d["qname"],
                d["qtype"],
                d["rcode"] or "NO ANSWER",
                f"{d['latency_ms']:.2f}ms" if d["latency_ms"] is not None else None,
                d["retries"] or "",
                ", ".join(d["answers"][:3]),
            ]
            for d in dns[:limit]
        ]
        more = f"\n... {len(dns) - limit} more" if len(dns) > limit else ""
        parts.append(
            _section(
                f"DNS transactions ({len(dns)})",
                render(
                    [
                        "TIME",
                        "CLIENT",
                        "SERVER",
                        "ID",
                        "QNAME",
                        "TYPE",
                        "RCODE",
                        "LATENCY",
                        "RETRIES",
                        "ANSWERS",
                    ],
                    rows,
                    right=(7, 8),
                ),
            )
            + more
        )

    if data["tunnels"]:
        parts.append(
            _section(
                "Tunnels",
                render(
                    ["KIND", "OUTER SRC", "OUTER DST", "VNI/KEY", "PORT", "PACKETS"],
                    [
                        [
                            t["kind"],
                            t["outer_src"],
                            t["outer_dst"],
                            t["vni"],
                            t["port"] or "",
                            t["packets"],
                        ]
                        for t in data["tunnels"]
                    ],
                    right=(3, 4, 5),
                ),
            )
        )
    if data["warnings"]:
        parts.append(_section("Warnings", "\n".join(f"! {w}" for w in data["warnings"])))
    return "\n".join(parts)
