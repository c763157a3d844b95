from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from ktrace.analysis.report import Report, analyze, to_dict  # noqa: E402
from ktrace.pcap.writer import write_pcap  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO / "pcaps"
T0 = 1_700_000_000_000_000_000  # ns


def frames(
    packets: Iterable[object], step_ns: int = 1_000_000, start: int = T0
) -> list[tuple[int, bytes]]:
    return [(start + k * step_ns, bytes(p)) for k, p in enumerate(packets)]


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


def run_analysis(*paths: Path) -> tuple[Report, dict]:  # type: ignore[type-arg]
    report = analyze(list(paths), workers=1)
    return report, to_dict(report)


def tcp_session(
    client: str = "10.0.0.1",
    server: str = "10.0.1.5",
    sport: int = 40000,
    dport: int = 80,
    data: bytes = b"GET / HTTP/1.1\r\n\r\n",
    reply: bytes = b"HTTP/1.1 200 OK\r\n\r\nhello",
) -> list[object]:
    """A whole TCP conversation over Ethernet: handshake, request, response, FIN exchange."""
    c, s = Ether() / IP(src=client, dst=server), Ether() / IP(src=server, dst=client)
    cs, ss = 1000, 5000
    return [
        c / TCP(sport=sport, dport=dport, flags="S", seq=cs),
        s / TCP(sport=dport, dport=sport, flags="SA", seq=ss, ack=cs + 1),
        c / TCP(sport=sport, dport=dport, flags="A", seq=cs + 1, ack=ss + 1),
        c / TCP(sport=sport, dport=dport, flags="PA", seq=cs + 1, ack=ss + 1) / data,
        s / TCP(sport=dport, dport=sport, flags="PA", seq=ss + 1, ack=cs + 1 + len(data)) / reply,
        c
        / TCP(
            sport=sport, dport=dport, flags="FA", seq=cs + 1 + len(data), ack=ss + 1 + len(reply)
        ),
        s
        / TCP(
            sport=dport, dport=sport, flags="FA", seq=ss + 1 + len(reply), ack=cs + 2 + len(data)
        ),
        c
        / TCP(sport=sport, dport=dport, flags="A", seq=cs + 2 + len(data), ack=ss + 2 + len(reply)),
    ]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> object:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload
