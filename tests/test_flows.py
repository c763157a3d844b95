"""Conversations and TCP health."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ktrace.analysis import flows as flows_module
from ktrace.analysis.flows import build_flows
from ktrace.decode.columns import PacketColumns
from ktrace.decode.index import build_index
from tests.helpers import T0, c_parts, frames, run_analysis, tcp_session, udp

Make = Callable[..., Path]


def test_conversation_counts_each_way(make_pcap: Make) -> None:
    pkts = tcp_session()
    _, data = run_analysis(make_pcap(pkts))
    (f,) = data["flows"]
    assert (f["proto"], f["a"], f["b"]) == ("tcp", "10.0.0.1:40000", "10.0.1.5:80")
    assert (f["packets_ab"], f["packets_ba"]) == (5, 3)
    sizes = [len(bytes(p)) for p in pkts]
    assert f["bytes_ab"] == sum(sizes[i] for i in (0, 2, 3, 5, 7))
    assert f["bytes_ba"] == sum(sizes[i] for i in (1, 4, 6))
    assert f["handshake_ms"] == 2.0  # SYN at 0 ms, ACK at 2 ms
    assert (f["syn"], f["fin"], f["rst"], f["retransmissions"]) == (1, 2, 0, 0)
    assert f["duration_s"] == 0.007


def test_initiator_is_the_syn_sender_even_when_the_synack_comes_first_in_the_file(
    make_pcap: Make,
) -> None:
    pkts = tcp_session(client="10.9.9.9", server="10.0.0.1")  # client > server numerically
    items = frames(pkts)
    items[0], items[1] = (items[1][0], items[0][1]), (items[0][0], items[1][1])  # SYN later
    _, data = run_analysis(make_pcap(items))
    assert data["flows"][0]["a"] == "10.9.9.9:40000"


def test_retransmissions_are_counted_once_per_segment(make_pcap: Make) -> None:
    pkts = tcp_session()
    data_seg = pkts[3]
    items = frames(pkts[:4] + [data_seg, data_seg] + pkts[4:])
    _, data = run_analysis(make_pcap(items))
    assert data["flows"][0]["retransmissions"] == 2


def test_same_segment_at_two_points_is_not_a_retransmission(make_pcap: Make) -> None:
    a = make_pcap(tcp_session(), name="pod.pcap")
    b = make_pcap(tcp_session(), name="node.pcap")
    _, data = run_analysis(a, b)
    (f,) = data["flows"]
    assert f["retransmissions"] == 0
    assert f["points"] == {"pod": 8, "node": 8}
    assert f["packets_ab"] == 10  # counts sum the points, as tshark does for one file


def test_keepalive_is_not_a_retransmission(make_pcap: Make) -> None:
    pkts = tcp_session()[:5]
    ka = (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.1.5")
        / TCP(
            sport=40000,
            dport=80,
            flags="A",
            seq=pkts[3][TCP].seq + len(pkts[3][TCP].payload) - 1,
            ack=pkts[4][TCP].seq + len(pkts[4][TCP].payload),
        )
        / b"\0"
    )
    _, data = run_analysis(make_pcap(pkts + [ka]))
    assert data["flows"][0]["retransmissions"] == 0


def test_udp_and_other_ip_flows(make_pcap: Make) -> None:
    pkts = [
        udp("10.0.0.1", "10.0.0.2", 5000, 9000),
        udp("10.0.0.2", "10.0.0.1", 9000, 5000),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=50) / b"esp",
    ]
    _, data = run_analysis(make_pcap(pkts))
    flows = {f["proto"]: f for f in data["flows"]}
    assert flows["udp"]["packets_ab"] == 1 and flows["udp"]["packets_ba"] == 1
    assert flows["ip-50"]["a"] == "10.0.0.1" and flows["ip-50"]["b"] == "10.0.0.2"


def test_rst_and_zero_window(make_pcap: Make) -> None:
    """Counted each way: packets and bytes on the wire; a zero window only on a segment that
    advertises one (a RST carries window 0 as Linux sends it, and is no stalled receiver)."""
    s = Ether() / IP(src="10.0.1.5", dst="10.0.0.1")
    pkts = tcp_session()[:4] + [
        s / TCP(sport=80, dport=40000, flags="A", seq=5001, ack=1019, window=0),
        s / TCP(sport=80, dport=40000, flags="A", seq=5001, ack=1019, window=0),
        s / TCP(sport=80, dport=40000, flags="R", seq=5001, window=0),
    ]
    _, data = run_analysis(make_pcap(pkts))
    f = data["flows"][0]
    assert f["rst"] == 1 and f["zero_window"] == 2
    sizes = [len(p) for p in pkts]
    client = [k for k, p in enumerate(pkts) if p[IP].src == "10.0.0.1"]
    assert (f["packets_ab"], f["packets_ba"]) == (len(client), len(pkts) - len(client)) == (3, 4)
    assert f["bytes_ab"] == sum(sizes[k] for k in client)
    assert f["bytes_ba"] == sum(sizes) - f["bytes_ab"] != f["bytes_ab"]


def test_many_flows_large_file_sharded_matches_sequential(make_pcap: Make, tmp_path: Path) -> None:
    """A file big enough to be split across worker processes indexes exactly as one walk."""
    from ktrace.decode import index as index_mod
    from ktrace.decode.index import build_index

    pkts = []
    for k in range(300):
        pkts += tcp_session(sport=20000 + k, data=b"x" * 1200, reply=b"y" * 1400)
    path = make_pcap(pkts, step_ns=1000)
    old = index_mod.SHARD_MIN_BYTES
    index_mod.SHARD_MIN_BYTES = 0
    try:
        with build_index([path], workers=2) as sharded, build_index([path], workers=1) as seq:
            for name in ("offset", "ts", "src", "dport", "seq", "paylen"):
                assert (getattr(sharded.columns, name) == getattr(seq.columns, name)).all()
            assert len(seq) == len(pkts)
            assert sharded.files[0].shards == 2 * index_mod.SHARDS_PER_WORKER
            assert seq.files[0].shards == 0
    finally:
        index_mod.SHARD_MIN_BYTES = old


def test_a_sharded_index_misjudged_by_its_first_shard_grows_its_arrays_rarely(
    make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bulk transfer first, tiny packets after: the first shard's packet size promises a
    third of the packets there are. The room is re-estimated as shards come in and grown by
    half at least, so the arrays grow a few times, not once per shard (each growth copies
    and zeroes them), not to many times what is needed, and the index is the one a single
    walk makes."""
    from ktrace.decode import index as index_mod
    from ktrace.decode.index import build_index

    pkts = tcp_session(sport=20000, data=b"x" * 1400, reply=b"y" * 1400) * 40
    pkts += [udp("10.0.0.1", "10.0.0.2", 5000 + k % 100, 53) for k in range(3000)]
    path = make_pcap(pkts, step_ns=1000)
    monkeypatch.setattr(index_mod, "SHARD_MIN_BYTES", 0)
    monkeypatch.setattr(index_mod, "SHARD_BYTES", 8 << 10)
    growths: list[int] = []
    reserve = index_mod._Growing.reserve

    def counted(self: index_mod._Growing, n: int) -> None:
        before = len(self.arrays["offset"])
        reserve(self, n)
        if len(self.arrays["offset"]) != before:
            growths.append(len(self.arrays["offset"]))

    monkeypatch.setattr(index_mod._Growing, "reserve", counted)
    with build_index([path], workers=2) as sharded:
        shards = sharded.files[0].shards
        kept = growths.copy()
        with build_index([path], workers=1) as seq:
            for name in ("offset", "ts", "src", "dport", "paylen"):
                assert (getattr(sharded.columns, name) == getattr(seq.columns, name)).all()
    assert shards > 20
    assert 1 < len(kept) <= 5, kept
    assert kept[-1] < 1.5 * len(pkts), kept  # grown room is zeroed: memory touched for nothing


def test_sharded_pcapng_whose_layout_changes_falls_back_to_one_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interface declared half way through a pcapng file: a shard starting after it cannot
    know it, so the scan goes on sequentially from the last shard placed, and the index is
    the one a single walk gives."""
    import tests.pcapng_build as ng
    from ktrace.decode import index as index_mod
    from ktrace.decode.index import build_index

    frames = [bytes(p) for k in range(150) for p in tcp_session(sport=20000 + k, data=b"x" * 900)]
    half = len(frames) // 2
    blob = ng.shb() + ng.idb(1, "eth0")
    blob += b"".join(ng.epb(0, T0 // 1000 + k, f) for k, f in enumerate(frames[:half]))
    blob += ng.idb(1, "eth1")
    blob += b"".join(ng.epb(k % 2, T0 // 1000 + k, f) for k, f in enumerate(frames[half:]))
    path = tmp_path / "late-interface.pcapng"
    path.write_bytes(blob)
    monkeypatch.setattr(index_mod, "SHARD_MIN_BYTES", 0)
    with build_index([path], workers=2) as sharded, build_index([path], workers=1) as seq:
        assert 0 < sharded.files[0].shards < 2 * index_mod.SHARDS_PER_WORKER
        for name in ("offset", "ts", "point", "sport", "seq"):
            assert (getattr(sharded.columns, name) == getattr(seq.columns, name)).all(), name
        assert len(sharded.points) == len(seq.points) == 2


def test_a_sharded_scan_cancelled_stops_its_threads(
    make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from ktrace.decode import index as index_mod
    from ktrace.decode.index import IndexBuilder, scan
    from ktrace.errors import Cancelled

    pkts = [p for k in range(300) for p in tcp_session(sport=20000 + k, data=b"x" * 1200)]
    path = make_pcap(pkts, step_ns=1000)
    monkeypatch.setattr(index_mod, "SHARD_MIN_BYTES", 0)
    monkeypatch.setattr(index_mod, "BATCH", 4096)  # many batches: the threads meet the event
    before = threading.active_count()
    cancel = threading.Event()
    builder = IndexBuilder()
    with pytest.raises(Cancelled):
        for _ in scan([path], builder, cancel, workers=2):
            cancel.set()
    builder.close()
    assert threading.active_count() == before


def test_gap_filling_segment_is_out_of_order_not_a_retransmission(make_pcap: Make) -> None:
    c = Ether() / IP(src="10.0.0.1", dst="10.0.1.5")
    pkts = tcp_session()[:3]
    seg = [
        c / TCP(sport=40000, dport=80, flags="A", seq=1001 + k * 100, ack=5001) / (b"d" * 100)
        for k in range(3)
    ]
    _, data = run_analysis(make_pcap([*pkts, seg[0], seg[2], seg[1], seg[1]]))
    f = data["flows"][0]
    assert (f["out_of_order"], f["retransmissions"]) == (1, 1)


def _resent_reference(
    rows: np.ndarray, start: np.ndarray, behind: np.ndarray, rel: np.ndarray, carries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """tcp_sequence._resent as first written, with set operations: the one it must equal."""
    n = len(rows)
    group = np.cumsum(start) - 1
    key = (group.astype(np.int64) << 34) | rel
    maybe = np.isin(key, key[behind]) & carries
    cand = np.flatnonzero(maybe)
    _, first = np.unique(key[cand], return_index=True)
    repeated = np.zeros(n, bool)
    repeated[cand] = True
    repeated[cand[first]] = False
    return behind & repeated, behind & ~repeated


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 6), st.booleans(), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_resent_and_late_segments_match_the_set_operations(
    segments: list[tuple[bool, int, bool, bool]],
) -> None:
    """Directions (a new one where `start`), sequence numbers drawn from a few so that they
    repeat, segments below what was sent and segments carrying nothing, in any mix: in C
    (where built) and in numpy."""
    from ktrace.analysis import tcp_sequence

    start = np.array([k == 0 or s for k, (s, _, _, _) in enumerate(segments)])
    rel = np.array([r for _, r, _, _ in segments], np.uint32)
    behind = np.array([b for _, _, b, _ in segments])
    carries = np.array([c for _, _, _, c in segments]) | behind
    rows = np.arange(len(segments))
    want = _resent_reference(rows, start, behind, rel, carries)
    for on in (True, False):
        with c_parts(on):
            got = tcp_sequence._resent(rows, start, behind, rel, carries)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def _random_columns(n: int, seed: int) -> tuple[PacketColumns, np.ndarray, np.ndarray]:
    """Packets of few hosts and ports (flows repeat, both ways), some not IP, some IPv6, some
    between equal addresses (the ports then order the ends)."""
    rng = np.random.default_rng(seed)
    c = PacketColumns.empty(n)
    c.l3[:] = rng.choice(np.array([0, 4, 4, 4, 6], np.uint8), n)
    c.proto[:] = rng.choice(np.array([6, 17, 1], np.uint8), n)
    c.src[:] = rng.integers(0, 6, n)
    c.dst[:] = np.where(rng.random(n) < 0.1, c.src, rng.integers(0, 6, n))
    sport = rng.integers(0, 6, n).astype(np.uint16)
    dport = rng.integers(0, 6, n).astype(np.uint16)
    return c, sport, dport


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flows_grouped_by_the_c_hash_table_are_numbered_as_by_sorting(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktrace.kernels import sorting

    if sorting._C is None:
        pytest.skip("no compiler where ktrace was installed: sorting is the one in use")
    c, sport, dport = _random_columns(50_000, seed)
    keys = (c.l3, c.proto, c.src, c.dst, sport, dport)
    for mix in (flows_module._MIX, np.uint64(0)):  # 0: every hash collides with others
        monkeypatch.setattr(flows_module, "_MIX", mix)
        assert sorting.flow_ids(keys, len(c)) is not None
        hashed = flows_module._group(c, sport, dport)
        for got, want in zip(hashed, flows_module._group_sorted(c, sport, dport), strict=True):
            assert np.array_equal(got, want)
    # mostly flows of their own: the table gives way to sorting
    c.src[:] = np.arange(len(c))
    assert sorting.flow_ids(keys, len(c)) is None


@pytest.mark.parametrize("seed", [6, 7])
def test_the_c_flow_sums_equal_numpys(seed: int) -> None:
    """Per-flow times and counts of random packets (every flag mix, zero windows, packets not
    IP in the last flow, more than a chunk): C and numpy alike, and the C refuses a flow
    number outside its outputs."""
    from ktrace.chunking import CHUNK
    from ktrace.kernels import tally

    if tally._C is None:
        pytest.skip("no compiler where ktrace was installed: numpy is the one in use")
    rng = np.random.default_rng(seed)
    n, nflows = 2 * CHUNK + 5, 40
    c = PacketColumns.empty(n)
    c.ts[:] = rng.integers(-(2**40), 2**40, n)
    c.tcp_flags[:] = rng.integers(0, 256, n)
    c.win[:] = rng.choice(np.array([0, 1, 65535], np.uint16), n)
    c.proto[:] = rng.choice(np.array([6, 17, 1], np.uint8), n)
    c.wirelen[:] = rng.integers(0, 2**32, n, dtype=np.uint32)
    flow = rng.integers(0, nflows + 1, n).astype(np.int32)
    fw, is_syn = rng.random(n) < 0.5, rng.random(n) < 0.1
    columns = (c.wirelen, c.tcp_flags, c.win, c.proto)
    got = tally.counts(flow, fw, columns, nflows)
    with c_parts(False):
        want = tally.counts(flow, fw, columns, nflows)
        spans_numpy = tally.time_spans(flow, c.ts, is_syn, nflows + 1)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]) and got[name].any(), name
    spans = tally.time_spans(flow, c.ts, is_syn, nflows + 1)
    for g, w in zip(spans, spans_numpy, strict=True):
        assert np.array_equal(g, w)
    flow[7] = nflows + 1
    with pytest.raises(ValueError, match="outside"):
        tally.counts(flow, fw, columns, nflows)


@pytest.mark.parametrize(("seed", "npoints"), [(8, 1), (9, 3)])
def test_the_c_handshake_times_equal_numpys(seed: int, npoints: int) -> None:
    """SYN, SYN/ACK and ACK of random packets (every flag mix, both directions, packets of no
    flow, not TCP, several points, ties in time): C and numpy time the same handshakes, and
    the C refuses a point outside its tables."""
    from ktrace.analysis import tcp_sequence
    from ktrace.chunking import CHUNK
    from ktrace.kernels import sequence

    if sequence._C is None:
        pytest.skip("no compiler where ktrace was installed: numpy is the one in use")
    rng = np.random.default_rng(seed)
    n, nflows = 2 * CHUNK + 9, 50
    c = PacketColumns.empty(n)
    c.ts[:] = rng.integers(0, 5_000, n)
    c.tcp_flags[:] = rng.choice(np.array([0x02, 0x12, 0x10, 0x14, 0x18, 0x11], np.uint8), n)
    c.proto[:] = rng.choice(np.array([6, 6, 6, 17], np.uint8), n)
    c.point[:] = rng.integers(0, npoints, n)
    flow = rng.integers(-1, nflows, n).astype(np.int32)
    c.proto[flow >= nflows - 5] = 17  # flows without a handshake
    forward = rng.random(n) < 0.5
    got = tcp_sequence._handshakes(c, flow, forward, nflows, npoints)
    with c_parts(False):
        want = tcp_sequence._handshakes(c, flow, forward, nflows, npoints)
    assert np.array_equal(got, want) and (got >= 0).any() and (got == -1).any()
    c.point[5] = npoints
    with pytest.raises(ValueError, match="outside"):
        tcp_sequence._handshakes(c, flow, forward, nflows, npoints)


@pytest.mark.parametrize("seed", [4, 5])
def test_the_c_sequence_walk_equals_numpys(seed: int) -> None:
    """Directions of random segments (keep-alives, SYN and FIN, repeats, sequence numbers
    wrapping past 2**32, runs crossing numpy's chunks): C and numpy mark the same rows."""
    from ktrace.chunking import CHUNK
    from ktrace.kernels import sequence

    if sequence._C is None:
        pytest.skip("no compiler where ktrace was installed: numpy is the one in use")
    n = 3 * CHUNK + 17
    rng, c = _random_segments(seed, n)
    step = c.paylen.astype(np.int64) * (rng.random(n) < 0.8)  # a fifth resent or late
    c.seq[:] = (2**32 - 5000 + np.cumsum(step) - rng.integers(0, 2, n) * 700) % 2**32
    start = np.r_[True, rng.random(n - 1) < 0.002]
    for rows in (rng.permutation(n).astype(np.int32), np.arange(n, dtype=np.int64)):
        got = sequence.behind_sent((c.tcp_flags, c.paylen, c.seq), rows, start)
        with c_parts(False):
            want = sequence.behind_sent((c.tcp_flags, c.paylen, c.seq), rows, start)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w) and g.dtype == w.dtype
        assert got[0].any() and (got[0] != got[2]).any()  # rows of each kind were there


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 30), st.integers(0, 3)), max_size=200),
    st.sampled_from([3, 1 << 16]),
    st.sampled_from([0, 1, 8]),
)
def test_packets_per_flow_and_point_counted_every_way_alike(
    packets: list[tuple[int, int]], chunk: int, most: int
) -> None:
    """Counted in a table (by bincount where it is small, else one add at a time) or by
    sorting the pairs: the same pairs, in order, with the same counts; no flow (-1) none."""
    from unittest import mock

    from ktrace import chunking

    flow = np.array([f for f, _ in packets], np.int32)
    point = np.array([p for _, p in packets], np.uint16)
    want: dict[int, int] = {}
    for f, p in packets:
        if f >= 0:
            want[f * 4 + p] = want.get(f * 4 + p, 0) + 1
    with (
        mock.patch.object(chunking, "CHUNK", chunk),
        mock.patch.object(flows_module, "CHUNK", chunk),
        mock.patch.object(flows_module, "COUNTERS_PER_PACKET", most),
    ):
        keys, counts = flows_module.flow_point_counts(flow, point, 31, 4)
    assert keys.tolist() == sorted(want) and counts.tolist() == [want[k] for k in sorted(want)]


@pytest.mark.parametrize("sample", ["http-dns.pcap", "lab/hairpin"])
def test_packets_at_points_are_the_packets_counted(sample: str) -> None:
    """At one point the flows' own counts stand for counting the packets again; at several
    the packets are counted: either way what flow_point_counts finds."""
    from ktrace.analysis.pipeline import analyze
    from tests.helpers import PCAPS

    a = analyze([PCAPS / sample]).analysis
    npoints = len(a.index.points)
    got = flows_module.packets_at_points(a.flows, a.index.columns.point, npoints)
    want = flows_module.flow_point_counts(
        a.flows.flow, a.index.columns.point, len(a.flows), max(npoints, 1)
    )
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert len(got[0]) >= len(a.flows) and (npoints == 1) == (sample == "http-dns.pcap")


def test_a_reused_client_port_is_a_new_connection(make_pcap: Make) -> None:
    """The same 5-tuple twice, seconds apart, with a new initial sequence number: two flows,
    each its own handshake and counts; a missed SYN is made up by the SYN/ACK that
    acknowledges it; packets that are not IP stay out of every flow."""
    from scapy.layers.l2 import ARP

    first = tcp_session(sport=40001)
    again = [p.copy() for p in first]
    for p in again:  # the same ports, another connection: new ISNs on both sides
        if p[IP].src == "10.0.0.1":
            p[TCP].seq = (p[TCP].seq + 777_000) % 2**32
            p[TCP].ack = (p[TCP].ack + 999_000) % 2**32 if p[TCP].ack else 0
        else:
            p[TCP].seq = (p[TCP].seq + 999_000) % 2**32
            p[TCP].ack = (p[TCP].ack + 777_000) % 2**32
    third = [p.copy() for p in again[1:]]  # its SYN missed by the capture
    for p in third:
        if p[IP].src == "10.0.0.1":
            p[TCP].seq = (p[TCP].seq + 5_000_000) % 2**32
            p[TCP].ack = (p[TCP].ack + 3_000_000) % 2**32
        else:
            p[TCP].seq = (p[TCP].seq + 3_000_000) % 2**32
            p[TCP].ack = (p[TCP].ack + 5_000_000) % 2**32
    arp = Ether() / ARP()
    with build_index([make_pcap([arp, *first, arp, *again, *third, arp])], workers=1) as index:
        f = build_flows(index.columns, 1)
        assert len(f) == 3
        assert f.flow.tolist() == [
            -1,
            *[f.flow[1]] * 8,
            -1,
            *[f.flow[10]] * 8,
            *[f.flow[18]] * 7,
            -1,
        ]
        assert len({int(f.flow[1]), int(f.flow[10]), int(f.flow[18])}) == 3
        assert f.packets_ab.tolist() == [5, 5, 4] and f.packets_ba.tolist() == [3, 3, 3]
        assert (f.a_port == 40001).all() and f.syn.tolist() == [1, 1, 0]
        assert (f.handshake_ns[:2] > 0).all()


@pytest.mark.parametrize(("seed", "npoints"), [(10, 1), (11, 3)])
def test_the_c_count_of_missed_segments_equals_numpys(seed: int, npoints: int) -> None:
    """Directions of random segments (gaps opened and filled late, pure ACKs, SYN and FIN,
    sequence numbers before the direction's first, times near each point's end, more than a
    chunk): C and numpy count the same missed segments at each point."""
    from ktrace.chunking import CHUNK
    from ktrace.kernels import sequence

    if sequence._C is None:
        pytest.skip("no compiler where ktrace was installed: numpy is the one in use")
    n = 3 * CHUNK + 11
    rng, c = _random_segments(seed, n)
    c.ts[:] = np.sort(rng.integers(0, 4_000_000_000, n))
    c.point[:] = rng.integers(0, npoints, n)
    step = c.paylen.astype(np.int64) * (rng.random(n) < 0.9)
    c.seq[:] = (2**32 - 3000 + np.cumsum(step) + rng.integers(0, 3, n) * 1448) % 2**32
    rows = np.lexsort((np.arange(n), c.point)).astype(np.int32)  # by point, file order
    start = np.r_[True, (c.point[rows][1:] != c.point[rows][:-1]) | (rng.random(n - 1) < 0.003)]
    behind, rel, _ = sequence.behind_sent((c.tcp_flags, c.paylen, c.seq), rows, start)
    late = behind & (rng.random(n) < 0.5)
    walk = sequence.Walk(rows, start, rel, behind & ~late, late)
    columns = (c.tcp_flags, c.paylen, c.ts, c.point)
    got = sequence.missed_segments(columns, walk, npoints, 1_500_000_000)
    with c_parts(False):
        want = sequence.missed_segments(columns, walk, npoints, 1_500_000_000)
    assert got.tolist() == want.tolist() and got.sum() > 0
    rows[3] = n
    with pytest.raises(ValueError, match="outside"):
        sequence.missed_segments(columns, walk, npoints, 1_500_000_000)


def _random_segments(seed: int, n: int) -> tuple[np.random.Generator, PacketColumns]:
    """n TCP segments of every common flag mix and size (empty, one byte, small, full)."""
    rng = np.random.default_rng(seed)
    c = PacketColumns.empty(n)
    c.tcp_flags[:] = rng.choice(np.array([0x10, 0x18, 0x02, 0x12, 0x11, 0x04], np.uint8), n)
    c.paylen[:] = rng.choice(np.array([0, 0, 1, 100, 1448], np.uint32), n)
    return rng, c
