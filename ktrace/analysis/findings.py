"""Checks are plugins: objects with an `id` and a `run(analysis)`, registered under the
`ktrace.checks` entry-point group. The built-in ones register exactly the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from ktrace.analysis.context import Analysis
from ktrace.entry_points import entry_points
from ktrace.model import Finding

GROUP = "ktrace.checks"


class Check(Protocol):
    id: str

    def run(self, analysis: Analysis) -> Iterable[Finding]: ...


@dataclass(frozen=True)
class CheckError:
    """A check that failed, and why: reported, never fatal."""

    check: str
    message: str


def load_checks() -> list[Check]:
    checks = [cast(Check, ep.load()) for ep in entry_points(GROUP)]
    return sorted(checks, key=lambda c: c.id)


def run_checks(
    analysis: Analysis, checks: list[Check] | None = None
) -> tuple[list[Finding], list[CheckError]]:
    """All findings, most severe first. A failing third-party check is reported, not fatal."""
    findings: list[Finding] = []
    errors: list[CheckError] = []
    for check in checks if checks is not None else load_checks():
        try:
            findings.extend(check.run(analysis))
        except Exception as exc:
            errors.append(CheckError(check.id, f"{type(exc).__name__}: {exc}"))
    findings.sort(key=lambda f: (-f.severity, f.id, f.title))
    return findings, errors
