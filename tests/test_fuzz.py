"""Fuzzing the readers and the DNS parser with a bounded budget: any input gives a result or
a CaptureFileError/DnsError, never another exception and never a hang."""

from __future__ import annotations

import contextlib
import gzip
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.pcapng_build as ng
from ktrace.analysis.pipeline import analyze
from ktrace.decode.dns import DnsError, parse_dns
from ktrace.errors import CaptureFileError
from ktrace.pcap.writer import write_pcap
from tests.helpers import PCAPS, answer, frames, query, tcp_session

SEEDS: list[bytes] = []


def seeds(tmp: Path) -> list[bytes]:
    if not SEEDS:
        pkts = tcp_session() + [query("a.example"), answer("a.example")]
        SEEDS.append(write_pcap(tmp / "s.pcap", 1, frames(pkts)).read_bytes())
        SEEDS.append(
            ng.shb() + ng.idb(1) + b"".join(ng.epb(0, k, bytes(p)) for k, p in enumerate(pkts))
        )
        SEEDS.append((PCAPS / "dns-blackhole.pcap").read_bytes())
    return SEEDS


@st.composite
def mutated(draw: st.DrawFn, tmp: Path) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds(tmp))))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        else:
            data = data[:pos]
        if not data:
            data = bytearray(b"\0")
    return bytes(data)


def test_readers_survive_mutations(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fuzz")

    @settings(
        max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(mutated(tmp), st.booleans())
    def check(blob: bytes, compress: bool) -> None:
        path = tmp / ("f.pcap.gz" if compress else "f.pcap")
        path.write_bytes(gzip.compress(blob) if compress else blob)
        try:
            report = analyze([path], workers=1)
        except CaptureFileError:
            return
        report.analysis.index.close()

    check()


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_dns_parser_never_raises_anything_else(blob: bytes) -> None:
    with contextlib.suppress(DnsError):
        parse_dns(blob)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=4), st.integers(0, 2))
def test_dns_parser_with_corrupted_real_messages(pos: int, junk: bytes, which: int) -> None:
    base = bytes(
        [
            query("web.default.svc.cluster.local"),
            answer("x.example"),
            answer("nope.example", rcode=3, rdata=None),
        ][which].payload.payload.payload
    )
    blob = bytearray(base)
    blob[pos % len(blob) : pos % len(blob) + len(junk)] = junk
    with contextlib.suppress(DnsError):
        parse_dns(bytes(blob))
