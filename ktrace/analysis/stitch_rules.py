"""When two sightings of one fingerprint may be the same packet.

A fingerprint leaves addresses out so that it survives NAT and encapsulation; these rules put
the addresses back in wherever nothing on a path can change them:

1. Link-scoped packets (multicast, broadcast, link-local or unspecified addresses: ND, RS/RA,
   MLD, DHCP, mDNS) never cross a router, and identical ones are sent by many hosts at once
   (no IP ID, same bytes): they are never joined across points, nor followed as paths.
2. Without a random sequence number (anything but TCP), a packet may change one end of its
   address pair between points (a DNAT or an SNAT), not both.
3. A unicast packet has one sender and one receiver: sightings at two endpoint points (a pod's
   eth0 or its veth, or a file in which every packet involves one address) that each show
   their own, different address as the sender (or each as the receiver) are two packets.
"""

from __future__ import annotations

import ipaddress

import numpy as np

from ktrace.chunking import chunks
from ktrace.decode.columns import PacketColumns
from ktrace.decode.transport import TCP
from ktrace.distinct import distinct
from ktrace.model import Point, PointKind

# node NICs and tunnels carry many hosts' packets
ENDPOINT_KINDS = (PointKind.POD, PointKind.VETH, PointKind.FILE)
MIN_HOME_PACKETS = 2


def _v4_scoped(a: np.ndarray) -> np.ndarray:
    """Multicast, broadcast, link-local or unspecified, of IPv4 addresses as uint32."""
    return ((a >> 28) == 0xE) | (a == 0xFFFFFFFF) | ((a >> 16) == 0xA9FE) | (a == 0)


def _v6_scoped(a: ipaddress.IPv6Address) -> bool:
    return a.is_multicast or a.is_link_local or a.is_unspecified


def link_scoped(c: PacketColumns, v6: list[bytes]) -> np.ndarray:
    """Per packet: rule 1 (IP packets only), a chunk at a time."""
    six = np.array([_v6_scoped(ipaddress.IPv6Address(a)) for a in v6] + [False], bool)
    out = np.empty(len(c), bool)
    for lo, hi in chunks(len(c)):
        l3, src, dst = c.l3[lo:hi], c.src[lo:hi], c.dst[lo:hi]
        is4, is6 = l3 == 4, l3 == 6
        v6_src = six.take(np.where(is6, src, len(v6)))
        v6_dst = six.take(np.where(is6, dst, len(v6)))
        v4 = _v4_scoped(src) | _v4_scoped(dst)
        out[lo:hi] = (is4 & v4) | (is6 & (v6_src | v6_dst))
    return out


def address_key(l3: np.ndarray, addr: np.ndarray) -> np.ndarray:
    """An address with its IP version, as one integer (what `home_addresses` holds)."""
    return addr.astype(np.int64) * 8 + l3.astype(np.int64)


def home_addresses(
    c: PacketColumns, points: list[Point], scoped: np.ndarray, l3: int = 0, guess: bool = True
) -> np.ndarray:
    """Per point: the address every one of its unicast packets involves (a pod's own), or -1;
    with `l3` (4 or 6), of its packets of that IP version alone (a dual-stack pod has one of
    each). The candidates are its first packet's two addresses, struck out chunk by chunk.
    A point that saw one conversation has both: its first packet's sender is taken (a pod
    more often opens its connections than answers them), or with `guess` False, none."""
    home = np.full(len(points), -1, np.int64)
    wanted = [k for k, p in enumerate(points) if p.kind in ENDPOINT_KINDS]
    candidates: dict[int, list[int]] = {}
    packets = dict.fromkeys(wanted, 0)
    for lo, hi in chunks(len(c) if wanted else 0):
        version, src, dst = c.l3[lo:hi], c.src[lo:hi], c.dst[lo:hi]
        usable = ((version == l3) if l3 else (version > 0)) & ~scoped[lo:hi]
        point = c.point[lo:hi]
        for k in wanted:
            mine = usable & (point == k)
            if not mine.any():
                continue
            if k not in candidates:
                at = int(mine.argmax())
                v = int(version[at])
                candidates[k] = [int(src[at]) * 8 + v, int(dst[at]) * 8 + v]
            candidates[k] = [
                a
                for a in candidates[k]
                if not (mine & ((version != a % 8) | ((src != a // 8) & (dst != a // 8)))).any()
            ]
            packets[k] += int(mine.sum())
    for k, alive in candidates.items():
        if alive and (guess or len(alive) == 1) and packets[k] >= MIN_HOME_PACKETS:
            home[k] = alive[0]
    return home


def sequenced(c: PacketColumns, rows: np.ndarray) -> np.ndarray:
    """Per row: a TCP segment with a sequence or ack number, random per connection, so a
    fingerprint no other connection's packet shares."""
    return (c.proto.take(rows) == TCP) & ((c.seq.take(rows) != 0) | (c.ack.take(rows) != 0))


def _compatible(c: PacketColumns, home: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rules 2 and 3 between rows a and b (arrays of the same length)."""
    src_a, src_b = (
        address_key(c.l3.take(a), c.src.take(a)),
        address_key(c.l3.take(b), c.src.take(b)),
    )
    dst_a, dst_b = (
        address_key(c.l3.take(a), c.dst.take(a)),
        address_key(c.l3.take(b), c.dst.take(b)),
    )
    same_src = (src_a == src_b) & (c.sport.take(a) == c.sport.take(b))
    same_dst = (dst_a == dst_b) & (c.dport.take(a) == c.dport.take(b))
    ok = sequenced(c, a) | same_src | same_dst
    ha, hb = home.take(c.point.take(a)), home.take(c.point.take(b))
    two_homes = (ha >= 0) & (hb >= 0) & (ha != hb)
    two_senders = two_homes & (src_a == ha) & (src_b == hb)
    two_receivers = two_homes & (dst_a == ha) & (dst_b == hb)
    return ok & ~two_senders & ~two_receivers


def split_identities(
    ident: np.ndarray, rows: np.ndarray, ts: np.ndarray, c: PacketColumns, home: np.ndarray
) -> np.ndarray:
    """Identities (one per element of `rows`) with every sighting that breaks rule 2 or 3
    against its identity's first one regrouped: a sighting joins the first group of its
    fingerprint it is consistent with, or starts one."""
    if not len(ident):
        return ident
    order = np.lexsort((ts, ident))  # by identity, then time
    sorted_ident = ident[order]
    firsts = np.r_[True, sorted_ident[1:] != sorted_ident[:-1]]
    ref_pos = np.maximum.accumulate(np.where(firsts, np.arange(len(order)), 0))
    ref = np.empty(len(ident), np.int64)
    ref[order] = order[ref_pos]
    bad = ~_compatible(c, home, rows, rows[ref])
    if not bad.any():
        return ident
    out = ident.copy()
    fresh = int(ident.max()) + 1
    for identity in distinct(ident[bad]).tolist():
        lo, hi = np.searchsorted(sorted_ident, [identity, identity + 1])
        members = order[lo:hi]
        groups: list[tuple[int, int]] = []  # (reference element, identity)
        for m in members.tolist():
            pair = np.array([m])
            for r, gid in groups:
                if _compatible(c, home, rows[pair], rows[np.array([r])])[0]:
                    out[m] = gid
                    break
            else:  # the first group keeps the identity, later ones get new ones
                gid = fresh if groups else identity
                fresh += bool(groups)
                groups.append((m, gid))
                out[m] = gid
    return out
