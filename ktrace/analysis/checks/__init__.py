"""Built-in checks. Each module exports CHECK, registered in pyproject's `ktrace.checks` group."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ktrace.analysis.context import Analysis
from ktrace.analysis.paths import ConvPath
from ktrace.model import Finding

# A query or SYN this close to the end of the capture may simply have had no time to be answered.
GRACE_NS = 1_000_000_000
MAX_EVIDENCE = 10
# Linux sends an unacknowledged segment or SYN again after its RTO (1 s at first): a capture
# that went on this long after a packet would show the retransmission had it been lost.
RETRY_NS = 1_500_000_000
CAPTURE_LOSS_STEP = (
    "Nothing to fix on the network for these. If the capture drops packets (DROPS in the "
    "points table), capture with a narrower -f filter or fewer points at once."
)


@dataclass(frozen=True)
class FunctionCheck:
    """A check written as a function of the analysis, under its id. `explains`: the ids of
    checks whose findings are symptoms of this one's cause (run_checks folds them in)."""

    id: str
    run: Callable[[Analysis], Iterable[Finding]]
    explains: tuple[str, ...] = ()


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def kernel_drops_note(analysis: Analysis) -> str:
    """' (N packets dropped by the kernel in this capture)', or '' when none were."""
    drops = sum(v for f in analysis.index.files for v in f.drops.values())
    return f" ({plural(drops, 'packet')} dropped by the kernel in this capture)" if drops else ""


def within_capture_loss(
    analysis: Analysis, unanswered: list[int] | np.ndarray, asked: list[int] | np.ndarray
) -> tuple[bool, str]:
    """Whether these unanswered things (by the point that saw them) are no more than each
    point's own capture loss accounts for among all that was asked there, and the sentence
    that says each point's loss: what every "unanswered" finding states."""
    npoints = len(analysis.index.points)
    missing = np.bincount(np.asarray(unanswered, np.int64), minlength=npoints)
    total = np.bincount(np.asarray(asked, np.int64), minlength=npoints)
    losses = analysis.capture_loss
    explained = True
    said = []
    for k in np.flatnonzero(missing).tolist():
        loss = losses[k]
        explained &= loss.explains(int(missing[k]), int(total[k]))
        said.append(f"at {analysis.point_id(k)} {loss.said()}")
    return explained, "; ".join(said)


def hop_name(analysis: Analysis, path: ConvPath, hop: int) -> str:
    return analysis.point_id(path.hops[hop].point)


def conversation_label(analysis: Analysis, path: ConvPath) -> str:
    """'tcp 10.244.0.2:50648 (default/client) -> 10.96.0.20:80 (svc default/web)
    => 10.244.1.2:80 (default/web-2)': the conversation before and after NAT."""
    first, last = path.flows[0], path.flows[-1]
    text = (
        f"{analysis.proto(first)} {analysis.named(analysis.endpoint(first, 'a'))} -> "
        f"{analysis.named(analysis.endpoint(first, 'b'))}"
    )
    if last != first and analysis.endpoint(last, "b") != analysis.endpoint(first, "b"):
        text += f" => {analysis.named(analysis.endpoint(last, 'b'))}"
    return text
