"""Encapsulations in IP: the overlays Kubernetes CNIs use (VXLAN on 4789 and flannel's 8472,
Geneve, IPIP, GRE), VXLAN-GPE, GTP-U (mobile cores on Kubernetes) and ERSPAN (GRE types I,
II and III: traffic mirrored from switches and clouds). GRE may carry an Ethernet frame, IP,
an MPLS label stack, an NSH header or PPP (PPTP); the shims are unwrapped by link.unwrap."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ktrace.decode.ip import IpHeader
from ktrace.decode.link import (
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_MPLS,
    ETH_NSH,
    ETH_TEB,
    VLAN_TAGS,
    ppp,
)
from ktrace.decode.rows import Rows
from ktrace.decode.transport import UDP, Transport

VXLAN_PORTS = (4789, 8472)
VXLAN_INNER = (ETH_IPV4, ETH_IPV6, ETH_ARP, *VLAN_TAGS, *ETH_MPLS)
GENEVE_PORT = 6081
GPE_PORT = 4790
GTPU_PORT = 2152
ERSPAN_I_II, ERSPAN_III = 0x88BE, 0x22EB
GRE_PPP = 0x880B
GRE_CARRIES = (ETH_TEB, ETH_IPV4, ETH_IPV6, ETH_NSH, *ETH_MPLS, ERSPAN_I_II, ERSPAN_III, GRE_PPP)
# VXLAN-GPE's next protocol -> EtherType: 1 IPv4, 2 IPv6, 3 Ethernet, 4 NSH, 5 MPLS
GPE_NEXT = np.zeros(256, np.uint16)
GPE_NEXT[[1, 2, 3, 4, 5]] = (ETH_IPV4, ETH_IPV6, ETH_TEB, ETH_NSH, ETH_MPLS[0])
MAX_GTP_EXTENSIONS = 4
# What carries packets ktrace cannot look into, by EtherType, IP protocol or UDP port: named
# in a warning with their count, since their inner conversations are missing from the tables.
UNDECODED_ETHERTYPES = {
    0x88E5: "MACsec (encrypted)",
    0x88E7: "802.1ah provider backbone bridging",
    0x8906: "FCoE",
}
UNDECODED_PROTOCOLS = {50: "IPsec ESP (encrypted)", 51: "IPsec AH", 115: "L2TPv3"}
UNDECODED_PORTS = {
    51820: "WireGuard (encrypted)",
    4500: "IPsec NAT traversal (encrypted)",
    1701: "L2TP",
    2152: "GTP-U signalling or unknown GTP-U",
}
# Below this, a port names the service on that side (53 DNS, 123 NTP...): a DNS client whose
# ephemeral port happens to be 51820 is still talking DNS.
SERVICE_PORTS = 1024
IPIP = 4
IPV6_IN_IP = 41
GRE = 47


class TunnelKind(IntEnum):
    VXLAN = 1
    GENEVE = 2
    IPIP = 3
    GRE = 4
    GTPU = 5
    ERSPAN = 6

    @property
    def on_udp(self) -> bool:
        return self in (TunnelKind.VXLAN, TunnelKind.GENEVE, TunnelKind.GTPU)


@dataclass(frozen=True)
class Tunnel:
    """The outside of an encapsulated packet: what carried it between nodes."""

    kind: str
    outer_src: str
    outer_dst: str
    vni: int  # VXLAN/Geneve VNI, GRE key, GTP-U TEID, ERSPAN session; 0 when none
    port: int  # UDP destination port; 0 for IPIP/GRE/ERSPAN


@dataclass(eq=False)
class Inner:
    """Per row, the encapsulated packet a tunnel header carries, where one was found."""

    found: np.ndarray  # bool per row
    kind: np.ndarray  # uint8 TunnelKind
    vni: np.ndarray  # uint32
    pos: np.ndarray  # int64 position of the inner header
    ethernet: np.ndarray  # bool: the inner header is Ethernet (else IP, see etype)
    etype: np.ndarray  # uint16 for inner IP


def find_inner(rows: Rows, ip: IpHeader, tr: Transport) -> Inner:
    m = len(rows)
    p = tr.payload
    kind = np.zeros(m, np.uint8)
    vni = np.zeros(m, np.uint32)
    pos = np.zeros(m, np.int64)
    ethernet = np.zeros(m, bool)
    etype = np.zeros(m, np.uint16)
    udp = tr.ok & (ip.proto == UDP)

    vx = udp & np.isin(tr.dport, VXLAN_PORTS)
    if vx.any():
        vflags, ok = rows.u8(p)
        word, _ = rows.u32(p + 4)
        inner_type, _ = rows.u16(p + 8 + 12)
        # The I flag, and the last reserved byte zero (as every implementation sends it) or,
        # since a receiver ignores it (RFC 7348), a frame of a common kind inside: a reply
        # to a client whose ephemeral port is 4789 or 8472 is not VXLAN.
        plausible = ((word & 0xFF) == 0) | np.isin(inner_type, VXLAN_INNER)
        vx &= ok & ((vflags & 0x08) != 0) & plausible
        kind[vx], vni[vx], pos[vx], ethernet[vx] = TunnelKind.VXLAN, word[vx] >> 8, p[vx] + 8, True

    gv = udp & (tr.dport == GENEVE_PORT)
    if gv.any():
        first, ok = rows.u8(p)
        proto, _ = rows.u16(p + 2)
        word, _ = rows.u32(p + 4)
        gv &= ok & ((first >> 6) == 0) & np.isin(proto, (ETH_TEB, ETH_IPV4, ETH_IPV6))
        kind[gv], vni[gv] = TunnelKind.GENEVE, word[gv] >> 8
        pos[gv] = p[gv] + 8 + (first[gv] & 0x3F).astype(np.int64) * 4
        ethernet[gv] = proto[gv] == ETH_TEB
        etype[gv] = proto[gv]

    ipip = ip.ok & ((ip.proto == IPIP) | (ip.proto == IPV6_IN_IP)) & ((ip.flags & 2) == 0)
    if ipip.any():
        kind[ipip], pos[ipip] = TunnelKind.IPIP, ip.l4[ipip]
        etype[ipip] = np.where(ip.proto[ipip] == IPIP, ETH_IPV4, ETH_IPV6)

    gpe = udp & (tr.dport == GPE_PORT)
    if gpe.any():
        gflags, ok = rows.u8(p)
        nxt, _ = rows.u8(p + 3)
        word, _ = rows.u32(p + 4)
        gpe &= ok & ((gflags & 0x0C) == 0x0C) & (GPE_NEXT[nxt] > 0)
        kind[gpe], vni[gpe], pos[gpe] = TunnelKind.VXLAN, word[gpe] >> 8, p[gpe] + 8
        ethernet[gpe] = GPE_NEXT[nxt][gpe] == ETH_TEB
        etype[gpe] = GPE_NEXT[nxt][gpe]

    gtp = udp & ((tr.dport == GTPU_PORT) | (tr.sport == GTPU_PORT))
    if gtp.any():
        _gtp(rows, p, gtp, kind, vni, pos)

    gre = ip.ok & (ip.proto == GRE) & ((ip.flags & 2) == 0)
    if gre.any():
        _gre(rows, ip, gre, kind, vni, pos, ethernet, etype)
    return Inner(kind > 0, kind, vni, pos, ethernet, etype)


def undecoded(rows: Rows, ip: IpHeader, tr: Transport, inner: Inner) -> list[tuple[str, int]]:
    """(name, packets) of the encapsulations in this layer that were not entered. A UDP port
    alone claims nothing: the payload must have the encapsulation's structure, and the other
    side's port must not name a service of its own."""
    out = [(n, int(((ip.proto == p) & ip.ok).sum())) for p, n in UNDECODED_PROTOCOLS.items()]
    udp = tr.ok & (ip.proto == UDP) & ~inner.found
    for port, name in UNDECODED_PORTS.items():
        on = udp & (
            ((tr.dport == port) & ((tr.sport >= SERVICE_PORTS) | (tr.sport == port)))
            | ((tr.sport == port) & ((tr.dport >= SERVICE_PORTS) | (tr.dport == port)))
        )
        if on.any():
            on &= STRUCTURE[port](rows, tr.payload, tr.paylen)
        out.append((name, int(on.sum())))
    gre = ip.ok & (ip.proto == GRE) & ~inner.found
    out.append(("GRE with a payload of an unknown protocol", int(gre.sum())))
    return [(n, c) for n, c in out if c]


def _wireguard(rows: Rows, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """A message type 1-4, three reserved zero bytes, and the length that type has."""
    word, ok = rows.u32(p)
    kind = word >> 24
    size = np.select(
        [kind == 1, kind == 2, kind == 3],
        [n == 148, n == 92, n == 64],
        (kind == 4) & (n >= 32) & ((n - 32) % 16 == 0),
    )
    return ok & ((word & 0xFFFFFF) == 0) & size


def _nat_traversal(rows: Rows, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """RFC 3948: a keepalive (one 0xFF byte), IKE after four zero bytes, or ESP: an SPI above
    the reserved 1-255 and a sequence number."""
    first, ok1 = rows.u8(p)
    spi, ok = rows.u32(p)
    seq, _ = rows.u32(p + 4)
    ike = ok & (spi == 0) & (n >= 4 + 28)
    esp = ok & (spi > 255) & (seq > 0) & (n >= 24)
    return (ok1 & (n == 1) & (first == 0xFF)) | ike | esp


def _l2tp(rows: Rows, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """RFC 2661/3931: version 2 or 3 with its reserved bits zero; a control message (T) has
    its length and sequence bits set."""
    word, ok = rows.u16(p)
    version = word & 0xF
    v2 = (version == 2) & ((word & 0x34F0) == 0)
    v2 &= ((word & 0x8000) == 0) | ((word & 0x4800) == 0x4800)
    v3 = (version == 3) & ((word & 0x7FF0) == 0)
    return ok & (n >= 6) & (v2 | v3)


def _gtp_other(rows: Rows, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """GTP version 1 with its protocol-type bit, a message type of GTP-U (echo, error
    indication, supported extensions, end marker, G-PDU) and a length that fits."""
    gflags, ok = rows.u8(p)
    mtype, _ = rows.u8(p + 1)
    length, _ = rows.u16(p + 2)
    kinds = np.isin(mtype, (1, 2, 26, 31, 254, 255))
    return ok & ((gflags >> 5) == 1) & ((gflags & 0x10) != 0) & kinds & (length == n - 8)


STRUCTURE = {51820: _wireguard, 4500: _nat_traversal, 1701: _l2tp, 2152: _gtp_other}


def _gtp(
    rows: Rows, p: np.ndarray, gtp: np.ndarray, kind: np.ndarray, vni: np.ndarray, pos: np.ndarray
) -> None:
    """GTP-U G-PDUs (version 1, message type 255): the TEID, the optional sequence/N-PDU
    word, then extension headers (5G's PDU session container) chained by their last byte."""
    gflags, ok = rows.u8(p)
    mtype, _ = rows.u8(p + 1)
    teid, _ = rows.u32(p + 4)
    gtp &= ok & ((gflags >> 5) == 1) & ((gflags & 0x10) != 0) & (mtype == 0xFF)
    at = p + 8 + np.where((gflags & 0x07) != 0, 4, 0)
    nxt, _ = rows.u8(p + 11)
    ext = gtp & ((gflags & 0x04) != 0) & (nxt != 0)
    for _ in range(MAX_GTP_EXTENSIONS):
        if not ext.any():
            break
        words, ok = rows.u8(at)
        size = words.astype(np.int64) * 4
        gtp &= ~ext | (ok & (size > 0))
        ext &= ok & (size > 0)
        at = np.where(ext, at + size, at)
        nxt, _ = rows.u8(at - 1)
        ext &= nxt != 0
    gtp &= ~ext  # more extensions than we follow
    kind[gtp], vni[gtp], pos[gtp] = TunnelKind.GTPU, teid[gtp], at[gtp]


def _gre(
    rows: Rows,
    ip: IpHeader,
    gre: np.ndarray,
    kind: np.ndarray,
    vni: np.ndarray,
    pos: np.ndarray,
    ethernet: np.ndarray,
    etype: np.ndarray,
) -> None:
    gflags, ok = rows.u16(ip.l4)
    proto, _ = rows.u16(ip.l4 + 2)
    csum = ((gflags & 0x8000) != 0).astype(np.int64)
    has_key = (gflags & 0x2000) != 0
    seqn = ((gflags & 0x1000) != 0).astype(np.int64)
    key, _ = rows.u32(ip.l4 + 4 + 4 * csum)
    version = gflags & 7
    # version 1 is PPTP's enhanced GRE (RFC 2637): a key (payload length, call id), then
    # a sequence and an acknowledgement number where flagged, and PPP inside
    enhanced = (version == 1) & (proto == GRE_PPP) & has_key & (csum == 0)
    acked = (enhanced & ((gflags & 0x0080) != 0)).astype(np.int64)
    gre &= ok & (((version == 0) & np.isin(proto, GRE_CARRIES)) | enhanced)
    after = ip.l4 + 4 + 4 * (csum + has_key + seqn + acked)
    etype[gre] = proto[gre]
    carried = np.flatnonzero(gre & (proto == GRE_PPP))
    if len(carried):
        after[carried], etype[carried] = ppp(rows.subset(carried), after[carried])
        gre[carried] = etype[carried] != 0  # LCP and the like: no packets of ours inside
    kind[gre] = TunnelKind.GRE
    vni[gre] = np.where(has_key[gre], np.where(enhanced, key & 0xFFFF, key)[gre], 0)
    pos[gre] = after[gre]
    ethernet[gre] = proto[gre] == ETH_TEB
    # ERSPAN: type I has no header of its own (no sequence number), type II 8 bytes, type III
    # 12 and 8 more with its platform-specific subheader (the O flag); then the mirrored frame
    span = gre & np.isin(proto, (ERSPAN_I_II, ERSPAN_III))
    if span.any():
        session, _ = rows.u16(after + 2)
        last, _ = rows.u8(after + 11)
        three = proto == ERSPAN_III
        size = np.where(three, 12 + 8 * (last & 1).astype(np.int64), 8 * seqn)
        kind[span] = TunnelKind.ERSPAN
        vni[span] = np.where(size > 0, session & 0x3FF, 0)[span]
        pos[span] = (after + size)[span]
        ethernet[span] = True
        etype[span] = 0
