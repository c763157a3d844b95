"""The pipeline's steps: DNS runs on a thread of its own beside the stages before it, and
whatever ends the pipeline early (a cancel, a failure, a caller that stops reading) ends that
thread with it; after DNS the capture leaves the page tables on another."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ktrace.analysis import pipeline
from ktrace.analysis.dns import DnsResult, dns_transactions
from ktrace.analysis.pipeline import Analysing, Analyzed, Indexed, run_pipeline
from ktrace.bundle.inputs import read_inputs
from ktrace.decode.index import PacketIndex, build_index
from ktrace.errors import Cancelled
from tests.helpers import PCAPS, answer, query, tcp_session

Make = Callable[..., Path]


def _capture(make_pcap: Make) -> Path:
    dns = [
        p
        for k in range(20)
        for p in (query(f"n{k}.example", ident=k), answer(f"n{k}.example", ident=k))
    ]
    return make_pcap([*tcp_session(), *dns])


def test_dns_beside_the_other_stages_is_dns_alone() -> None:
    path = PCAPS / "http-dns.pcap"
    result = next(s.result for s in run_pipeline(read_inputs([path])) if isinstance(s, Analyzed))
    with build_index([path]) as index:
        alone = dns_transactions(index).transactions
    got = result.analysis.dns.transactions
    assert len(got) == len(alone) > 0
    for name in ("row", "response", "ts", "latency", "client", "server", "asked", "got"):
        assert np.array_equal(getattr(got, name), getattr(alone, name)), name


def test_a_failure_in_dns_surfaces_at_its_stage_and_leaves_no_thread(
    make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(index: PacketIndex, cancel: threading.Event | None) -> DnsResult:
        raise ValueError("DNS broke")

    monkeypatch.setattr(pipeline, "dns_transactions", broken)
    before = threading.active_count()
    stages = []
    with pytest.raises(ValueError, match="DNS broke"):
        for step in run_pipeline(read_inputs([_capture(make_pcap)])):
            if isinstance(step, Analysing):
                stages.append(step.stage)
    assert stages[-1] == "DNS"  # the stages before it ran meanwhile, none after
    assert threading.active_count() == before


def test_a_cancel_stops_dns_where_it_runs_and_leaves_no_thread(
    make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    def waiting(index: PacketIndex, cancel: threading.Event | None) -> DnsResult:
        assert cancel is not None
        cancel.wait(10)
        raise Cancelled()

    monkeypatch.setattr(pipeline, "dns_transactions", waiting)
    before = threading.active_count()
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        for step in run_pipeline(read_inputs([_capture(make_pcap)]), cancel):
            if isinstance(step, Analysing) and step.stage == "correlation":
                cancel.set()
    assert threading.active_count() == before


def test_a_caller_that_stops_reading_waits_for_dns_to_end(
    make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index DNS reads must outlive it: closing the steps returns once DNS is done."""
    ended = threading.Event()

    def slow(index: PacketIndex, cancel: threading.Event | None) -> DnsResult:
        time.sleep(0.2)
        ended.set()
        return dns_transactions(index, cancel)

    monkeypatch.setattr(pipeline, "dns_transactions", slow)
    before = threading.active_count()
    steps = run_pipeline(read_inputs([_capture(make_pcap)]))
    for step in steps:
        if isinstance(step, Analysing) and step.stage == "flows":
            break
    steps.close()
    assert ended.is_set()
    assert threading.active_count() == before


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (0 when none)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's line: its range first
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_the_capture_leaves_the_page_tables_after_the_passes_over_every_packet() -> None:
    """After DNS, the last stage that reads every packet, the capture's pages are dropped
    from the page tables on a thread; a packet read after that maps its page again, with the
    same bytes, and closing the index waits for that thread."""
    path = (PCAPS / "http-dns.pcap").resolve()
    with build_index([path]) as fresh:
        want = [fresh.packet_bytes(r) for r in range(len(fresh))]
    before = threading.active_count()
    for step in run_pipeline(read_inputs([path])):
        if isinstance(step, Indexed):
            index = step.index
            assert _resident_kb(path) > 0 and index._forgetting is None
        if isinstance(step, Analysing) and step.stage == "HTTP":  # DNS done, HTTP to come
            assert index._forgetting is not None
            index._forgetting.join()
            assert _resident_kb(path) == 0
    assert [index.packet_bytes(r) for r in range(len(index))] == want
    assert _resident_kb(path) > 0
    index.close()
    assert threading.active_count() == before
