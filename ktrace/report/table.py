"""Aligned plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence


def render(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()
) -> str:
    """Columns in `right` (indices) are right-aligned: numbers."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for k, v in enumerate(row):
            widths[k] = max(widths[k], len(v))

    def line(values: Sequence[str]) -> str:
        out = [
            v.rjust(widths[k]) if k in right else v.ljust(widths[k]) for k, v in enumerate(values)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def human_size(n: int) -> str:
    """1234567 -> '1.2 MB' (SI units, as tshark prints them)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)
