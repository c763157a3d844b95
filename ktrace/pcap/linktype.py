"""Link-layer header types (the LINKTYPE_* registry) that ktrace decodes."""

from __future__ import annotations

from enum import IntEnum


class LinkType(IntEnum):
    NULL = 0  # BSD loopback: 4-byte address family in host byte order
    EN10MB = 1  # Ethernet
    PPP = 9  # PPP, its address and control bytes optional
    PPP_HDLC = 50  # PPP in HDLC-like framing
    PPP_ETHER = 51  # PPPoE without the Ethernet header
    RAW = 101  # raw IPv4/IPv6, version nibble tells which
    C_HDLC = 104  # Cisco HDLC: address, control, EtherType
    LOOP = 108  # OpenBSD loopback: address family in network byte order
    LINUX_SLL = 113  # Linux cooked v1 (tcpdump -i any, libpcap < 1.10)
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276  # Linux cooked v2 (tcpdump -i any, libpcap >= 1.10)


# Some systems write the DLT value of raw IP (12 or 14) instead of LINKTYPE_RAW.
ALIASES = {12: LinkType.RAW, 14: LinkType.RAW}


def normalise(value: int) -> int:
    return int(ALIASES.get(value, value))


def name(value: int) -> str:
    try:
        return LinkType(normalise(value)).name
    except ValueError:
        return f"LINKTYPE_{value}"


def supported(value: int) -> bool:
    try:
        LinkType(normalise(value))
    except ValueError:
        return False
    return True
