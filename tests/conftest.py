"""Fixtures; the helpers they and the tests share are in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from ktrace.pcap.writer import write_pcap
from tests.helpers import frames


@pytest.fixture
def make_pcap(tmp_path: Path) -> Callable[..., Path]:
    """make_pcap(packets, linktype=1, name=...) -> path; packets are scapy packets or
    (ts_ns, bytes) pairs."""
    counter = iter(range(10_000))

    def make(
        packets: Iterable[object],
        linktype: int = 1,
        name: str | None = None,
        step_ns: int = 1_000_000,
    ) -> Path:
        items = list(packets)
        if items and not isinstance(items[0], tuple):
            items = frames(items, step_ns)
        path = tmp_path / (name or f"capture{next(counter)}.pcap")
        return write_pcap(path, linktype, items)  # type: ignore[arg-type]

    return make
