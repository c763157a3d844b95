"""A busy capture: bulk TCP, thousands of short non-keep-alive HTTP connections whose client
ports come back seconds later, and sequential DNS lookups of cluster and outside names,
recorded from real traffic between two network namespaces by a tcpdump with a small buffer,
then thinned as a capture under load loses packets. Nothing on that network was wrong: no
finding at warning level or above may be made of the capture's own loss or of port reuse."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from ktrace.decode.transport import ACK, SYN
from tests.bench.traffic import record_busy
from tests.helpers import run_analysis
from tests.lab.lab import unavailable

WHY = unavailable()
pytestmark = [pytest.mark.lab, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
SECONDS = 20
LOST = 0.003  # of the packets the capture records, dropped at random: a capture under load


def thinned(source: Path, out: Path, share: float, seed: int = 7) -> int:
    """A copy of a little-endian pcap without a random `share` of its records."""
    rng = random.Random(seed)
    blob = source.read_bytes()
    kept, off, dropped = bytearray(blob[:24]), 24, 0
    while off + 16 <= len(blob):
        size = struct.unpack_from("<I", blob, off + 8)[0]
        if rng.random() >= share:
            kept += blob[off : off + 16 + size]
        else:
            dropped += 1
        off += 16 + size
    out.write_bytes(bytes(kept))
    return dropped


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("busy")
    recorded = record_busy(root / "busy.pcap", SECONDS)
    lossy = root / "busy-lossy.pcap"
    assert thinned(recorded, lossy, LOST) > 100
    return recorded, lossy


@pytest.mark.parametrize("which", [0, 1], ids=["as recorded", "thinned"])
def test_a_busy_healthy_capture_has_no_warning(busy: tuple[Path, Path], which: int) -> None:
    _, data = run_analysis(busy[which])
    found = data["findings"]
    serious = [(f["id"], f["title"]) for f in found if f["severity"] in ("medium", "high")]
    assert serious == [], serious
    assert len(found) <= 8, [f["title"] for f in found]
    for f in found:  # anything "unanswered" says how much the capture itself lost
        if "unanswered" in f["id"]:
            assert "capture" in f["explanation"], f


def test_reused_client_ports_are_separate_connections(busy: tuple[Path, Path]) -> None:
    """Every HTTP connection is a flow of its own, however often its client port came back:
    each flow opens once (one initial sequence number) and its requests are answered."""
    result, data = run_analysis(busy[0])
    a = result.analysis
    f, c = a.flows, a.index.columns
    http = np.flatnonzero(f.b_port == 80)
    syns = np.flatnonzero((c.dport == 80) & ((c.tcp_flags & (SYN | ACK)) == SYN))
    isns = {(int(f.a_port[a.flows.flow[r]]), int(c.seq[r])) for r in syns}
    assert len(http) == len(isns) > 1000
    ports = [int(p) for p in f.a_port[http]]
    assert len(set(ports)) < len(ports) / 3, "the client's ports came back"
    assert all(n == 1 for n in np.bincount(a.flows.flow[syns])[a.flows.flow[syns]]), (
        "one opening per flow"
    )
    answered = [r for r in data["http"] if r["status"] == 200]
    assert len(answered) >= 0.99 * len(http)
    # an answer whose request tcpdump lost under load has no wait to tell, and says so
    asked = [r for r in answered if r["method"]]
    assert len(asked) >= 0.99 * len(answered)
    assert all(r["latency_ms"] < 1000 for r in asked)
    assert all(r["latency_ms"] is None for r in answered if not r["method"])
