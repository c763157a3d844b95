"""The human rendering of an analysis report: findings first, then the tables."""

from __future__ import annotations

import textwrap

from ktrace.report.table import render


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def _section(title: str, body: str) -> str:
    return f"{title}\n{'=' * len(title)}\n{body}\n"


def render_report(data: dict, limit: int) -> str:  # type: ignore[type-arg]
    parts = []
    findings = data["findings"]
    if findings:
        lines = []
        for f in findings:
            lines.append(f"[{f['severity'].upper()}] {f['id']}: {f['title']}")
            for text in (f["explanation"], "Next: " + f["next_step"]):
                lines.extend(
                    textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="    ")
                )
            if f["evidence"]:
                refs = ", ".join(f"{e['point']}#{e['packet']}" for e in f["evidence"][:6])
                lines.append(f"    Evidence: {refs}")
        parts.append(_section(f"Findings ({len(findings)})", "\n".join(lines)))
    else:
        parts.append(_section("Findings", "none: nothing looks wrong in these captures"))

    points = data["points"]
    parts.append(
        _section(
            f"Capture points ({len(points)})",
            render(
                ["POINT", "LINKTYPE", "PACKETS", "BYTES", "DURATION", "DROPS", "FILE"],
                [
                    [
                        p["id"],
                        p["linktype"],
                        p["packets"],
                        _size(p["bytes"]),
                        f"{p['duration_s']:.3f}s",
                        p["kernel_drops"],
                        p["file"],
                    ]
                    for p in points
                ],
                right=(2, 3, 4, 5),
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
                        _size(f["bytes_ab"]),
                        _size(f["bytes_ba"]),
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
