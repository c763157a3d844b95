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
ETH_PPPOE = 0x8864  # PPPoE session stage
ETH_MPLS = (0x8847, 0x8848)  # unicast, multicast
ETH_NSH = 0x894F  # network service header (service function chaining)
PPP_ADDRESS_CONTROL = 0xFF03  # HDLC-like framing's all-stations address, unnumbered info
# PPP's protocol numbers of what ktrace reads -> EtherType
PPP_CARRIES = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6, 0x0281: ETH_MPLS[0], 0x0283: ETH_MPLS[1]}
IEEE_802_3_MAX_LEN = 1500  # above it a 16-bit type field is an EtherType, not a length
MAX_LABELS = 8
SHIMS = (ETH_PPPOE, ETH_NSH, *ETH_MPLS)
# NSH's next protocol -> EtherType: 1 IPv4, 2 IPv6, 3 Ethernet, 5 MPLS
NSH_NEXT = np.zeros(256, np.uint16)
NSH_NEXT[[1, 2, 3, 5]] = (ETH_IPV4, ETH_IPV6, ETH_TEB, ETH_MPLS[0])
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
    return unwrap(rows, pos, etype)


def unwrap(rows: Rows, pos: np.ndarray, etype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Past the shims that sit between a link header and IP: a PPPoE session (with its PPP
    protocol), an MPLS label stack (IP after the bottom label, by its version nibble), and a
    network service header (NSH; an Ethernet frame after it is entered too)."""
    pos, etype = pos.copy(), etype.copy()
    for _ in range(3):  # a shim inside a shim (MPLS after NSH, PPPoE carrying MPLS)
        if not np.isin(etype, SHIMS).any():
            break
        pppoe = np.flatnonzero(etype == ETH_PPPOE)
        if len(pppoe):
            pos[pppoe], etype[pppoe] = ppp(rows.subset(pppoe), pos[pppoe] + 6)
        mpls = np.isin(etype, ETH_MPLS)
        for _ in range(MAX_LABELS):
            if not mpls.any():
                break
            word, ok = rows.u32(pos)
            bottom = mpls & ok & ((word & 0x100) != 0)
            pos[mpls] += 4
            if bottom.any():
                etype[bottom] = by_version(rows.subset(np.flatnonzero(bottom)), pos[bottom])
            etype[mpls & ~ok] = 0
            mpls &= ok & ~bottom
        etype[mpls] = 0  # a stack deeper than MAX_LABELS
        nsh = etype == ETH_NSH
        if nsh.any():
            words, ok = rows.u8(pos + 1)
            nxt, _ = rows.u8(pos + 3)
            size = (words & 0x3F).astype(np.int64) * 4
            etype[nsh] = np.where(ok & (size >= 8), NSH_NEXT[nxt], 0)[nsh]
            pos[nsh] += size[nsh]
            bridged = nsh & (etype == ETH_TEB)
            if bridged.any():
                sel = np.flatnonzero(bridged)
                pos[sel], etype[sel] = ethernet(rows.subset(sel), pos[sel])
    return pos, etype


def ppp(rows: Rows, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Past a PPP header: its address and control bytes where framed with them, then its
    protocol, one byte where compressed (RFC 1661 6.5: the first byte odd). EtherType 0 for
    a protocol ktrace does not read (LCP, IPCP, CHAP)."""
    framed, _ = rows.u16(pos)
    pos = np.where(framed == PPP_ADDRESS_CONTROL, pos + 2, pos)
    first, ok = rows.u8(pos)
    wide, wide_ok = rows.u16(pos)
    short = (first & 1) == 1
    proto = np.where(short, first, wide)
    known = [proto == number for number in PPP_CARRIES]
    etype = np.select(known, list(PPP_CARRIES.values()), 0).astype(np.uint16)
    etype[~np.where(short, ok, wide_ok)] = 0
    return pos + np.where(short, 1, 2), etype


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
        return unwrap(rows, zero + 16, etype)
    if lt == LinkType.LINUX_SLL2:
        etype, _ = rows.u16(zero)
        return unwrap(rows, zero + 20, etype)
    if lt == LinkType.C_HDLC:  # address, control, then an EtherType
        etype, _ = rows.u16(zero + 2)
        return unwrap(rows, zero + 4, etype)
    if lt in (LinkType.RAW, LinkType.IPV4, LinkType.IPV6):
        return zero, by_version(rows, zero)
    if lt in (LinkType.PPP, LinkType.PPP_HDLC):
        return unwrap(rows, *ppp(rows, zero))
    if lt == LinkType.PPP_ETHER:  # a PPPoE header without the Ethernet one
        return unwrap(rows, zero, np.full(n, ETH_PPPOE, np.uint16))
    if lt in (LinkType.NULL, LinkType.LOOP):
        return _loopback(rows, lt == LinkType.NULL)
    return zero, np.zeros(n, np.uint16)


def _loopback(rows: Rows, host_order: bool) -> tuple[np.ndarray, np.ndarray]:
    """BSD loopback: a 4-byte address family, in the writer's byte order (NULL) or the
    network's (LOOP); some writers put an EtherType there instead, or a PPP header."""
    zero = np.zeros(len(rows), np.int64)
    value, _ = rows.u32(zero)
    if host_order:
        # the family fits in the low bytes: whichever order leaves the top ones zero
        value = np.where(value > 0xFFFF, value.byteswap(), value)
    ether = (value > IEEE_802_3_MAX_LEN) & (value <= 0xFFFF)
    pos, etype = unwrap(rows, zero + 4, np.where(ether, value, 0).astype(np.uint16))
    etype = np.where(ether, etype, _family(value))
    framed, _ = rows.u16(zero)
    hdlc = np.flatnonzero(framed == PPP_ADDRESS_CONTROL)
    if len(hdlc):
        pos[hdlc], etype[hdlc] = ppp(rows.subset(hdlc), zero[hdlc])
    return pos, etype.astype(np.uint16)
