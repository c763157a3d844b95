"""Overlay encapsulations Kubernetes CNIs use: VXLAN (4789, flannel's 8472), Geneve, IPIP, GRE."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ktrace.decode.ip import IpHeader
from ktrace.decode.link import ETH_IPV4, ETH_IPV6, ETH_TEB
from ktrace.decode.rows import Rows
from ktrace.decode.transport import UDP, Transport

VXLAN_PORTS = (4789, 8472)
GENEVE_PORT = 6081
IPIP = 4
IPV6_IN_IP = 41
GRE = 47


class TunnelKind(IntEnum):
    VXLAN = 1
    GENEVE = 2
    IPIP = 3
    GRE = 4


@dataclass(frozen=True)
class Tunnel:
    """The outside of an encapsulated packet: what carried it between nodes."""

    kind: str
    outer_src: str
    outer_dst: str
    vni: int  # VXLAN/Geneve VNI, GRE key; 0 when the encapsulation has none
    port: int  # UDP destination port; 0 for IPIP/GRE


@dataclass
class Inner:
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
        vx &= ok & ((vflags & 0x08) != 0)
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

    gre = ip.ok & (ip.proto == GRE) & ((ip.flags & 2) == 0)
    if gre.any():
        gflags, ok = rows.u16(ip.l4)
        proto, _ = rows.u16(ip.l4 + 2)
        csum = ((gflags & 0x8000) != 0).astype(np.int64)
        has_key = (gflags & 0x2000) != 0
        seqn = ((gflags & 0x1000) != 0).astype(np.int64)
        key, _ = rows.u32(ip.l4 + 4 + 4 * csum)
        gre &= ok & ((gflags & 7) == 0) & np.isin(proto, (ETH_TEB, ETH_IPV4, ETH_IPV6))
        kind[gre] = TunnelKind.GRE
        vni[gre] = np.where(has_key[gre], key[gre], 0)
        pos[gre] = (ip.l4 + 4 + 4 * (csum + has_key + seqn))[gre]
        ethernet[gre] = proto[gre] == ETH_TEB
        etype[gre] = proto[gre]
    return Inner(kind > 0, kind, vni, pos, ethernet, etype)
