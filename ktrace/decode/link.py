"""Link-layer headers -> (position of the network header, its EtherType)."""

from __future__ import annotations

import numpy as np

from ktrace.decode.rows import Rows
from ktrace.pcap.linktype import LinkType, normalise

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame inside GRE/Geneve
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ outer), pre-standard QinQ
AF_INET = 2
AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, macOS


def ethernet(rows: Rows, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    etype, _ = rows.u16(pos + 12)
    pos = pos + 14
    for _ in range(2):  # 802.1Q and QinQ
        tagged = np.isin(etype, VLAN_TAGS)
        if not tagged.any():
            break
        inner, _ = rows.u16(pos + 2)
        etype = np.where(tagged, inner, etype)
        pos = np.where(tagged, pos + 4, pos)
    return pos, etype


def by_version(rows: Rows, pos: np.ndarray) -> np.ndarray:
    first, _ = rows.u8(pos)
    version = first >> 4
    return np.where(version == 4, ETH_IPV4, np.where(version == 6, ETH_IPV6, 0)).astype(np.uint16)


def _family(af: np.ndarray) -> np.ndarray:
    return np.where(af == AF_INET, ETH_IPV4, np.where(np.isin(af, AF_INET6), ETH_IPV6, 0)).astype(
        np.uint16
    )


def link_layer(rows: Rows, linktype: int) -> tuple[np.ndarray, np.ndarray]:
    """For packets of one link type: network header position and EtherType (0 if unknown)."""
    n = len(rows)
    zero = np.zeros(n, np.int64)
    lt = normalise(linktype)
    if lt == LinkType.EN10MB:
        return ethernet(rows, zero)
    if lt == LinkType.LINUX_SLL:
        etype, _ = rows.u16(zero + 14)
        return zero + 16, etype
    if lt == LinkType.LINUX_SLL2:
        etype, _ = rows.u16(zero)
        return zero + 20, etype
    if lt in (LinkType.RAW, LinkType.IPV4, LinkType.IPV6):
        return zero, by_version(rows, zero)
    if lt in (LinkType.NULL, LinkType.LOOP):
        af, _ = rows.u32(zero)
        if lt == LinkType.NULL:
            # host byte order of the writer: a small value read big-endian means it was BE
            af = np.where(af > 0xFFFF, af.byteswap(), af)
        return zero + 4, _family(af)
    return zero, np.zeros(n, np.uint16)
