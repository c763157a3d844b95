"""TCP, UDP, SCTP and ICMP/ICMPv6 headers, vectorised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.decode.rows import Rows

TCP = 6
UDP = 17
SCTP = 132
ICMP = 1
ICMPV6 = 58
# ICMP types that quote the offending packet: unreachable, time exceeded, parameter problem
ICMP_ERRORS = (3, 11, 12)
ICMPV6_ERRORS = (1, 2, 3, 4)  # unreachable, packet too big, time exceeded, parameter problem

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128


@dataclass(eq=False)
class Transport:
    """Each row's transport header: ports, TCP flags, numbers, window (ICMP: type, code)."""

    ok: np.ndarray  # bool: the transport header was captured
    sport: np.ndarray  # uint16
    dport: np.ndarray
    flags: np.ndarray  # uint8 TCP flags
    seq: np.ndarray  # uint32; ICMP: type << 8 | code
    ack: np.ndarray
    win: np.ndarray  # uint16
    payload: np.ndarray  # int64: payload position
    paylen: np.ndarray  # int64: payload length by the headers
    icmp_error: np.ndarray  # bool


def parse_transport(rows: Rows, proto: np.ndarray, l4: np.ndarray, end: np.ndarray) -> Transport:
    m = len(rows)
    sport, ok_p = rows.u16(l4)
    dport, _ = rows.u16(l4 + 2)
    seq, ok_seq = rows.u32(l4 + 4)
    ack, _ = rows.u32(l4 + 8)
    off_flags, ok_tcp = rows.u16(l4 + 12)
    win, _ = rows.u16(l4 + 14)
    tcp = proto == TCP
    udp = (proto == UDP) | (proto == SCTP)
    icmp = (proto == ICMP) | (proto == ICMPV6)
    doff = (off_flags >> 12).astype(np.int64) * 4
    tcp_ok = tcp & ok_tcp & (doff >= 20)
    udp_ok = udp & ok_p
    itype, ok_i = rows.u8(l4)
    icode, _ = rows.u8(l4 + 1)
    icmp_ok = icmp & ok_i
    header = np.where(
        tcp_ok, doff, np.where(udp & (proto == UDP), 8, np.where(proto == SCTP, 12, 8))
    )
    payload = l4 + header
    paylen = np.maximum(end - payload, 0)
    error = icmp_ok & (
        ((proto == ICMP) & np.isin(itype, ICMP_ERRORS))
        | ((proto == ICMPV6) & np.isin(itype, ICMPV6_ERRORS))
    )
    ports = tcp_ok | udp_ok
    zero16 = np.zeros(m, np.uint16)
    return Transport(
        ok=tcp_ok | udp_ok | icmp_ok,
        sport=np.where(ports, sport, zero16).astype(np.uint16),
        dport=np.where(ports, dport, zero16).astype(np.uint16),
        flags=np.where(tcp_ok, off_flags & 0xFF, 0).astype(np.uint8),
        seq=np.where(
            tcp_ok & ok_seq, seq, np.where(icmp_ok, (itype.astype(np.uint32) << 8) | icode, 0)
        ).astype(np.uint32),
        ack=np.where(tcp_ok, ack, 0).astype(np.uint32),
        win=np.where(tcp_ok, win, 0).astype(np.uint16),
        payload=payload,
        paylen=np.where(tcp_ok | udp_ok | icmp_ok, paylen, 0),
        icmp_error=error,
    )
