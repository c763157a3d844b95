"""Built-in checks. Each module exports CHECK, registered in pyproject's `ktrace.checks` group."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ktrace.analysis.context import Analysis
from ktrace.model import Finding

# A query or SYN this close to the end of the capture may simply have had no time to be answered.
GRACE_NS = 1_000_000_000
MAX_EVIDENCE = 10


@dataclass(frozen=True)
class FunctionCheck:
    id: str
    run: Callable[[Analysis], Iterable[Finding]]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"
