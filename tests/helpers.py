"""What several test modules build or read: captures made with scapy, the bundled samples,
the analysis of a few files."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.dns import DNS, DNSQR, DNSRR  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from ktrace.analysis.pipeline import analyze  # noqa: E402
from ktrace.analysis.result import Result  # noqa: E402
from ktrace.kernels import twins_only  # noqa: E402
from ktrace.report.json_report import json_document  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO / "pcaps"
LAB = PCAPS / "lab"
T0 = 1_700_000_000_000_000_000  # ns
CLIENT, SERVER = "10.244.0.5", "10.96.0.10"  # of the DNS helpers


def frames(
    packets: Iterable[object], step_ns: int = 1_000_000, start: int = T0
) -> list[tuple[int, bytes]]:
    return [(start + k * step_ns, bytes(p)) for k, p in enumerate(packets)]  # type: ignore[call-overload]


# What each lab bundle must find, and nothing more.
EXPECTED = {
    "healthy": set(),
    "dns-search": {"dns.search-path", "dns.nxdomain"},
    "policy-drop": {"path.drop"},
    "no-endpoints": {"svc.no-endpoints"},
    "mtu-blackhole": {"mtu.blackhole"},  # its retransmissions are the same cause
    "dns-aaaa-drop": {"dns.aaaa-race"},
    "dns-slow": {"dns.slow"},
    "dns-upstream-down": {"dns.upstream", "dns.search-path"},
    "kube-proxy-down": {"nat.missing"},  # its unanswered SYNs are the same cause
    "zero-window": {"tcp.zero-window"},
    "refused": {"tcp.rst"},
    "http-keepalive": set(),
    "http-503": {"http.errors"},
    "http-slow": {"http.slow"},
    "http-reset": {"http.reset"},
    "grpc-midway": set(),
    # recorded fresh on the dual-stack shape only (tests/test_lab.py)
    "healthy-v6": set(),
    "policy-drop-v6": {"path.drop"},
    # from outside the cluster (NodePort, LoadBalancer), a hairpin and a hostNetwork client
    "external": {"nat.snat-hides-client"},  # info only: a healthy Cluster-policy call
    "external-local": set(),
    "health-check-down": {"svc.health-check"},
    "local-no-endpoint": {"svc.local-no-endpoint"},
    "nodeport-blocked": {"tcp.syn-unanswered"},
    "asymmetric-return": {"nat.asymmetric-return"},
    "hairpin": set(),
    "host-network": set(),
}


def c_parts(on: bool) -> contextlib.AbstractContextManager[None]:
    """The speed wing's C parts in use (where built), or every twin instead."""
    return contextlib.nullcontext() if on else twins_only()


def findings(*paths: Path) -> list[dict[str, Any]]:
    return run_analysis(*paths)[1]["findings"]  # type: ignore[no-any-return]


def run_analysis(*paths: Path) -> tuple[Result, dict[str, Any]]:
    result = analyze(list(paths), workers=1)
    return result, json_document(result)


def tcp_session(
    client: str = "10.0.0.1",
    server: str = "10.0.1.5",
    sport: int = 40000,
    dport: int = 80,
    data: bytes = b"ping 1\n",  # not HTTP: tests that want HTTP say so (tests/test_http.py)
    reply: bytes = b"pong 1\n",
) -> list[object]:
    """A whole TCP conversation over Ethernet: handshake, request, response, FIN exchange.
    Each connection its own initial sequence numbers, as every TCP stack picks them."""
    c, s = Ether() / IP(src=client, dst=server), Ether() / IP(src=server, dst=client)
    cs, ss = (1000 + sport * 7919) % 2**31, (5000 + sport * 104729) % 2**31
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


def query(name: str, qtype: str = "A", ident: int = 1, sport: int = 40123) -> object:
    return (
        Ether()
        / IP(src=CLIENT, dst=SERVER)
        / UDP(sport=sport, dport=53)
        / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    )


def answer(
    name: str,
    qtype: str = "A",
    ident: int = 1,
    rcode: int = 0,
    rdata: str | None = "10.96.0.20",
    sport: int = 40123,
) -> object:
    an = [DNSRR(rrname=name, type=qtype, rdata=rdata, ttl=30)] if rdata else []
    return (
        Ether()
        / IP(src=SERVER, dst=CLIENT)
        / UDP(sport=53, dport=sport)
        / DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode, qd=DNSQR(qname=name, qtype=qtype), an=an)
    )
