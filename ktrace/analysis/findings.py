"""Checks are plugins: objects with an `id` and a `run(analysis)`, registered under the
`ktrace.checks` entry-point group. The built-in ones register exactly the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
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
    chosen = checks if checks is not None else load_checks()
    for check in chosen:
        try:
            findings.extend(check.run(analysis))
        except Exception as exc:
            errors.append(CheckError(check.id, f"{type(exc).__name__}: {exc}"))
    explains = {c.id: tuple(getattr(c, "explains", ())) for c in chosen}
    findings = fold_symptoms(analysis, findings, explains)
    findings.sort(key=lambda f: (-f.severity, f.id, f.title))
    return findings, errors


def fold_symptoms(
    analysis: Analysis, findings: list[Finding], explains: dict[str, tuple[str, ...]]
) -> list[Finding]:
    """One cause, one finding: a symptom (an unanswered SYN, a retransmission) whose every
    conversation a cause's finding of at least its severity covers (a missing DNAT, an MTU
    black hole) is said in that finding, not again on its own."""

    def about(f: Finding) -> frozenset[int]:
        return f.about or analysis.conversations_of(f)

    out = list(findings)
    for symptom in findings:
        causes = [
            k
            for k, c in enumerate(out)
            if symptom.id in explains.get(c.id, ()) and c.severity >= symptom.severity
        ]
        mine = about(symptom)
        covered = frozenset().union(*(about(out[k]) for k in causes)) if causes else frozenset()
        if not mine or not mine <= covered:
            continue
        k = next(k for k in causes if about(out[k]) & mine)
        cause = out[k]
        out[k] = replace(
            cause,
            explanation=f"{cause.explanation} The same connections: {symptom.title} "
            f"({symptom.id}).",
            about=about(cause) | mine,
        )
        out.remove(symptom)
    return out
