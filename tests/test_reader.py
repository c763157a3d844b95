"""Reading: every container format and byte order, and bad input that must never crash."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

import tests.pcapng_build as ng
from ktrace.decode.index import build_index
from ktrace.errors import CaptureFileError
from ktrace.pcap import hot
from ktrace.pcap.records import MAX_CAPLEN, WINDOW
from tests.helpers import PCAPS, T0, tcp_session


@pytest.fixture(autouse=True, params=["c", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every reader test runs with both implementations of the hot loop."""
    if request.param == "c":
        if hot.walk_c is None:
            pytest.skip("the C walker was not built (no compiler at install time)")
        monkeypatch.setattr(hot, "walk", hot.walk_c)
    else:
        monkeypatch.setattr(hot, "walk", hot.walk_python)
    return str(request.param)


def test_walk_implementations_agree(tmp_path: Path, walker: str) -> None:
    if hot.walk_c is None:
        pytest.skip("the C walker was not built")
    eth = [bytes(p) for p in tcp_session()]
    ng_blob = ng.shb() + ng.idb(1) + b"".join(ng.epb(0, k, p) for k, p in enumerate(eth))
    classic_blob = classic("<", True, packets())
    cases = [
        (classic_blob, 16, 24),
        (classic("<", False, packets(), magic=0xA1B2CD34, hdr_extra=8), 24, 24),
        (ng_blob, 0, 60),
    ]
    cases += [(p.read_bytes(), 16, 24) for p in sorted(PCAPS.glob("*.pcap"))]
    for blob, mode, first in cases:
        for cut in (len(blob), len(blob) - 7, len(blob) - 100):
            data = blob[:cut]
            for budget in (1, 300, 1 << 20):
                args = (data, first, len(data), budget, mode, 0, WINDOW, MAX_CAPLEN)
                assert hot.walk_c(*args) == hot.walk_python(*args), (mode, cut, budget)


def classic(
    order: str,
    nano: bool,
    records: list[tuple[int, bytes]],
    linktype: int = 1,
    magic: int | None = None,
    hdr_extra: int = 0,
) -> bytes:
    magic = magic or (0xA1B23C4D if nano else 0xA1B2C3D4)
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for ts, data in records:
        sec, ns = divmod(ts, 1_000_000_000)
        frac = ns if nano else ns // 1000
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + b"\0" * hdr_extra
        out += data
    return out


def packets() -> list[tuple[int, bytes]]:
    return [(T0 + k * 1_500_000, bytes(p)) for k, p in enumerate(tcp_session())]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_byte_orders_and_resolutions(tmp_path: Path, order: str, nano: bool) -> None:
    recs = packets()
    path = tmp_path / "x.pcap"
    path.write_bytes(classic(order, nano, recs))
    with build_index([path]) as idx:
        assert len(idx) == len(recs)
        assert idx.columns.ts.tolist() == [ts for ts, _ in recs]
        assert idx.columns.caplen.tolist() == [len(d) for _, d in recs]
        assert idx.packet_bytes(3) == recs[3][1]
        assert idx.warnings == []


def test_kuznetzov_variant(tmp_path: Path) -> None:
    recs = packets()
    path = tmp_path / "k.pcap"
    path.write_bytes(classic("<", False, recs, magic=0xA1B2CD34, hdr_extra=8))
    with build_index([path]) as idx:
        assert len(idx) == len(recs)
        assert idx.packet_bytes(0) == recs[0][1]


def test_gzip(tmp_path: Path) -> None:
    recs = packets()
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(gzip.compress(classic("<", True, recs)))
    with build_index([path]) as idx:
        assert len(idx) == len(recs)
        assert idx.packet_bytes(4) == recs[4][1]


def test_truncated_gzip_keeps_what_inflated(tmp_path: Path) -> None:
    recs = packets() * 50
    blob = gzip.compress(classic("<", True, recs))
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    with build_index([path]) as idx:
        assert 0 < len(idx) < len(recs)
        assert any("gzip" in w for w in idx.warnings)


def test_pcapng_interfaces_linktypes_resolutions(tmp_path: Path) -> None:
    eth = bytes(tcp_session()[0])
    raw_ip = eth[14:]
    blob = (
        ng.shb(comment="made by a test")
        + ng.idb(1, "eth0")
        + ng.idb(101, "tun0", tsresol=9)  # ns
        + ng.idb(1, "eth1", tsresol=0x80 | 20)  # 2^-20 s
        + ng.epb(0, (T0 // 1000), eth, comment="first")  # default: microseconds
        + ng.epb(1, T0 + 5, raw_ip)
        + ng.epb(2, ((T0 // 1_000_000_000) << 20) | (1 << 19), eth)
        + ng.spb(eth)
        + ng.isb(0, drops=7)
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(blob)
    with build_index([path]) as idx:
        assert [p.id for p in idx.points] == ["multi:eth0", "multi:tun0", "multi:eth1"]
        assert [p.linktype for p in idx.points] == [1, 101, 1]
        c = idx.columns
        assert c.point.tolist() == [0, 1, 2, 0]
        assert c.ts[0] == T0 // 1000 * 1000
        assert c.ts[1] == T0 + 5
        assert c.ts[2] == (T0 // 1_000_000_000) * 1_000_000_000 + 500_000_000
        assert c.ts[3] == c.ts[2]  # SPB carries no time: the previous packet's
        # Both link types decode to the same IPv4 SYN.
        assert c.l3.tolist() == [4, 4, 4, 4]
        assert c.dport.tolist() == [80, 80, 80, 80]
        assert idx.files[0].drops == {0: 7}


def test_pcapng_big_endian(tmp_path: Path) -> None:
    eth = bytes(tcp_session()[1])
    path = tmp_path / "be.pcapng"
    path.write_bytes(ng.shb(">") + ng.idb(1, order=">") + ng.epb(0, 123, eth, order=">"))
    with build_index([path]) as idx:
        assert len(idx) == 1 and idx.columns.sport[0] == 80
        assert idx.columns.ts[0] == 123_000


def test_pcapng_two_sections_with_different_byte_orders(tmp_path: Path) -> None:
    a, b = bytes(tcp_session()[0]), bytes(tcp_session()[1])
    blob = (
        ng.shb("<")
        + ng.idb(1, "le")
        + ng.epb(0, 1, a)
        + ng.shb(">")
        + ng.idb(101, "be", order=">")
        + ng.epb(0, 2, b[14:], order=">")
    )
    path = tmp_path / "two.pcapng"
    path.write_bytes(blob)
    with build_index([path]) as idx:
        assert len(idx) == 2
        assert idx.columns.point.tolist() == [0, 1]
        assert [p.linktype for p in idx.points] == [1, 101]
        assert idx.columns.sport.tolist() == [40000, 80]


# --- bad input: a clear error, or a partial result with a warning that says how much --------


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a pcap\n")
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng file"):
        build_index([path])


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(CaptureFileError, match="empty"):
        build_index([path])


def test_cut_inside_global_header(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(classic("<", False, [])[:10])
    with pytest.raises(CaptureFileError, match="truncated pcap header"):
        build_index([path])


@pytest.mark.parametrize("cut", [5, 20])  # inside a record header, inside the packet data
def test_cut_mid_record(tmp_path: Path, cut: int) -> None:
    recs = packets()
    blob = classic("<", False, recs)
    path = tmp_path / "cut.pcap"
    path.write_bytes(blob[: len(blob) - len(recs[-1][1]) - 16 + cut])
    with build_index([path]) as idx:
        if cut < 16:
            assert len(idx) == len(recs) - 1
            assert any("inside a record header" in w for w in idx.warnings)
        else:
            assert len(idx) == len(recs)  # the partial packet is kept
            assert int(idx.columns.caplen[-1]) == cut - 16
            assert any("cut short" in w for w in idx.warnings)


def test_caplen_over_limit_stops_with_partial_result(tmp_path: Path) -> None:
    recs = packets()
    blob = bytearray(classic("<", False, recs))
    # corrupt the 4th record's caplen
    off = 24 + sum(16 + len(d) for _, d in recs[:3])
    struct.pack_into("<I", blob, off + 8, 300_000)
    path = tmp_path / "huge.pcap"
    path.write_bytes(bytes(blob))
    with build_index([path]) as idx:
        assert len(idx) == 3
        assert any("300000" in w and "corrupt" in w for w in idx.warnings)


def test_caplen_beyond_end_of_file(tmp_path: Path) -> None:
    recs = packets()
    blob = bytearray(classic("<", False, recs))
    off = 24 + sum(16 + len(d) for _, d in recs[:-1])
    struct.pack_into("<I", blob, off + 8, 60_000)
    path = tmp_path / "beyond.pcap"
    path.write_bytes(bytes(blob))
    with build_index([path]) as idx:
        assert len(idx) == len(recs)
        assert int(idx.columns.caplen[-1]) == len(recs[-1][1])
        assert any("cut short" in w for w in idx.warnings)


def test_zero_length_records(tmp_path: Path) -> None:
    recs = [(T0, b""), *packets(), (T0 + 99, b"")]
    path = tmp_path / "zero.pcap"
    path.write_bytes(classic("<", False, recs))
    with build_index([path]) as idx:
        assert len(idx) == len(recs)
        assert idx.columns.l3[0] == 0 and idx.columns.l3[1] == 4


def test_unknown_linktype_counts_but_warns(tmp_path: Path) -> None:
    path = tmp_path / "odd.pcap"
    path.write_bytes(classic("<", False, packets(), linktype=147))  # USER0
    with build_index([path]) as idx:
        assert len(idx) == len(packets())
        assert (idx.columns.l3 == 0).all()
        assert any("LINKTYPE_147" in w for w in idx.warnings)


def test_pcapng_bad_block_length(tmp_path: Path) -> None:
    eth = bytes(tcp_session()[0])
    good = ng.shb() + ng.idb(1) + ng.epb(0, 1, eth) + ng.epb(0, 2, eth)
    bad = bytearray(ng.epb(0, 3, eth))
    struct.pack_into("<I", bad, 4, 7)  # not a multiple of 4, less than a header
    path = tmp_path / "badlen.pcapng"
    path.write_bytes(good + bytes(bad) + ng.epb(0, 4, eth))
    with build_index([path]) as idx:
        assert len(idx) == 2
        assert any("bad length (7)" in w for w in idx.warnings)


def test_pcapng_packet_for_undeclared_interface(tmp_path: Path) -> None:
    eth = bytes(tcp_session()[0])
    path = tmp_path / "noif.pcapng"
    path.write_bytes(ng.shb() + ng.idb(1) + ng.epb(0, 1, eth) + ng.epb(3, 2, eth))
    with build_index([path]) as idx:
        assert len(idx) == 1
        assert any("interface 3" in w for w in idx.warnings)


@pytest.mark.parametrize("btype", [1, 5, 3, 2])  # IDB, ISB, SPB, PB
def test_pcapng_tiny_block_at_the_end(tmp_path: Path, btype: int) -> None:
    """Found by the fuzzer: a block whose length covers only its header, last in the file."""
    eth = bytes(tcp_session()[0])
    tiny = struct.pack("<III", btype, 12, 12)
    path = tmp_path / "tiny.pcapng"
    path.write_bytes(ng.shb() + ng.idb(1) + ng.epb(0, 1, eth) + tiny)
    with build_index([path]) as idx:
        assert len(idx) == 1
        assert any("bad length (12)" in w for w in idx.warnings)


def test_pcapng_header_block_cut_by_the_end_of_file(tmp_path: Path) -> None:
    eth = bytes(tcp_session()[0])
    path = tmp_path / "cut.pcapng"
    path.write_bytes(ng.shb() + ng.idb(1) + ng.epb(0, 1, eth) + ng.isb(0, 3)[:-8])
    with build_index([path]) as idx:
        assert len(idx) == 1
        assert any("ends inside a pcapng block" in w for w in idx.warnings)
