"""The one way from capture files to a result: index, then flows, DNS, correlation, paths and
findings. A generator of steps (progress while indexing, the index once built, each stage of
the analysis as it begins, the result), cancelled through an event; `analyze`, `open`, live
mode and `trace` all drive it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ktrace.analysis.context import Analysis
from ktrace.analysis.correlate import correlate, scope
from ktrace.analysis.dns import DnsResult, dns_transactions
from ktrace.analysis.findings import run_checks
from ktrace.analysis.flows import flow_table, with_tcp_health
from ktrace.analysis.http import http_transactions
from ktrace.analysis.names import Names
from ktrace.analysis.paths import conversation_paths
from ktrace.analysis.result import Result
from ktrace.bundle.inputs import Inputs, read_inputs
from ktrace.decode.index import IndexBuilder, IndexProgress, PacketIndex, scan
from ktrace.errors import Cancelled, KtraceError
from ktrace.perf import release_free_memory

if TYPE_CHECKING:
    from ktrace.bundle.inventory import Inventory
    from ktrace.bundle.node_evidence import NodeEvidence

# A live point whose tcpdump has not written its file header yet has nothing to read.
PCAP_HEADER = 24


@dataclass(frozen=True)
class FileFailed:
    """One file could not be read; with `keep_going` the others still are."""

    path: Path
    message: str


@dataclass(frozen=True)
class Indexed:
    """The index is built."""

    index: PacketIndex


@dataclass(frozen=True)
class Analysing:
    """A stage of the analysis after the index begins: minutes on tens of millions of packets
    are worth naming, and the memory the last stage freed can be handed back here."""

    stage: str
    packets: int


@dataclass(frozen=True)
class Analyzed:
    """The analysis is done."""

    result: Result


Step = IndexProgress | FileFailed | Indexed | Analysing | Analyzed


def run_pipeline(
    found: Inputs,
    cancel: threading.Event | None = None,
    workers: int | None = None,
    keep_going: bool = False,
    live: bool = False,
) -> Iterator[Step]:
    """Steps until the result. `keep_going`: a bad file is a FileFailed step and a note on
    the result, not the end, unless no file at all could be read; `live`: files still without
    a header (capture starting) are skipped, not errors."""
    builder = IndexBuilder()
    failed: list[KtraceError] = []
    try:
        for path in found.files:
            if live and path.stat().st_size < PCAP_HEADER:
                continue
            try:
                yield from scan([path], builder, cancel, workers, found.declared)
            except Cancelled:
                raise
            except KtraceError as exc:
                if not keep_going:
                    raise
                failed.append(exc)
                yield FileFailed(path, str(exc))
        if failed and not builder.files and not live:
            raise failed[0]
    except BaseException:
        builder.close()
        raise
    index = builder.result()
    yield Indexed(index)
    left_out = (f"{exc.message}: left out, the other files analysed" for exc in failed)
    notes = (*found.notes, *left_out)
    result = yield from analysis_steps(index, found.inventory, cancel, notes, found.nodes)
    yield Analyzed(result)


def analysis_steps(
    index: PacketIndex,
    inventory: Inventory | None = None,
    cancel: threading.Event | None = None,
    notes: tuple[str, ...] = (),
    nodes: dict[str, NodeEvidence] | None = None,
) -> Generator[Analysing, None, Result]:
    """Everything after the index: flows, correlation, paths, DNS, HTTP, findings; a step
    before each, the result at the end. DNS needs the index alone and is mostly numpy sorts
    and C loops that release the GIL: it runs on another thread meanwhile, where the stages
    before it would leave a core idle, after what correlation takes from the packets alone
    (correlate.scope). Stopped early (cancelled, failed, closed), this waits for that thread,
    which sees `cancel` too."""
    n = len(index)
    with ThreadPoolExecutor(1, thread_name_prefix="ktrace-dns") as pool:
        scoped = pool.submit(scope, index.columns, index.points, index.v6)
        pending = pool.submit(_dns_then_trim, index, cancel)
        yield Analysing("flows", n)
        table = flow_table(index.columns)
        yield Analysing("TCP health", n)
        flows = with_tcp_health(table, index.columns, len(index.points))
        del table
        yield Analysing("correlation", n)
        same_clock: dict[str, list[int]] = {}
        for k, point in enumerate(index.points):
            if point.node:
                same_clock.setdefault(point.node, []).append(k)
        correlation = correlate(
            index.columns,
            flows,
            index.points,
            index.v6,
            list(same_clock.values()),
            scoped.result(),
        )
        yield Analysing("paths", n)
        names = Names.from_inventory(inventory)
        paths = conversation_paths(index, flows, correlation, names)
        yield Analysing("DNS", n)
        dns = pending.result()
    # what follows reads a few packets at most, on one core: the other drops the capture's
    # pages from the page tables meanwhile, work the output would otherwise wait for
    index.forget_pages()
    yield Analysing("HTTP", n)
    http = http_transactions(index, flows, cancel)
    yield Analysing("checks", n)
    analysis = Analysis(index, flows, dns, correlation, paths, names, http, nodes or {})
    findings, errors = run_checks(analysis)
    return Result(analysis, tuple(findings), tuple(errors), notes)


def _dns_then_trim(index: PacketIndex, cancel: threading.Event | None) -> DnsResult:
    """DNS, then its freed temporaries handed back at once: between steps is too late for
    the stage it ran beside, whose peak they would otherwise add to."""
    found = dns_transactions(index, cancel)
    release_free_memory()
    return found


def drain(
    found: Inputs,
    cancel: threading.Event | None = None,
    workers: int | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Result:
    """The pipeline run to its result; `on_step` sees every step before it (progress). Of
    several files, one that cannot be read is left out with a note: incidents leave partial
    bundles, and what the others hold is still worth reading."""
    for step in run_pipeline(found, cancel, workers, keep_going=len(found.files) > 1):
        if isinstance(step, Analyzed):
            return step.result
        if on_step is not None:
            on_step(step)
    raise AssertionError("the pipeline ends with its result")


def analyze(
    inputs: list[Path], cancel: threading.Event | None = None, workers: int | None = None
) -> Result:
    """The pipeline drained: for callers that need only the result."""
    return drain(read_inputs(inputs), cancel, workers)
