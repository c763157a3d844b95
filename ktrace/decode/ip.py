"""IPv4 and IPv6 headers (with IPv6 extension headers and fragments), vectorised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktrace.decode.rows import Rows

# ipflags bits
MORE_FRAGMENTS = 1
LATER_FRAGMENT = 2  # fragment offset > 0: no transport header in this packet
DONT_FRAGMENT = 4
SHORT = 8  # headers cut by the snap length: transport fields unknown
ICMP_ERROR = 16
MALFORMED = 64  # length fields that contradict the packet: nothing decoded past the IP header
# not an IP flag, kept here for the column's spare bits: the TCP payload starts like a message
# ktrace reads (decode.lead)
APP_START = 32

IPV6_EXT = (0, 43, 60, 51, 44)  # hop-by-hop, routing, destination options, AH, fragment
IPV6_FRAGMENT = 44
IPV6_AH = 51


@dataclass(eq=False)
class IpHeader:
    """Network-layer fields for m packets; `src`/`dst` are IPv4 values or None for IPv6 rows."""

    ok: np.ndarray  # bool: a whole IP header was captured
    version: np.ndarray  # uint8: 4 or 6
    proto: np.ndarray  # uint8: transport protocol (after IPv6 extension headers)
    src4: np.ndarray  # uint32
    dst4: np.ndarray
    src6: np.ndarray | None  # (m, 16) uint8 for IPv6 rows, zeros elsewhere
    dst6: np.ndarray | None
    ipid: np.ndarray  # uint16 (IPv6: low 16 bits of the fragment identification)
    flags: np.ndarray  # uint8: bits above
    l4: np.ndarray  # int64: position of the transport header
    end: np.ndarray  # int64: end of the IP payload by the length fields (a snap length may
    # have cut what was captured of it)


def parse_ip(rows: Rows, pos: np.ndarray, etype: np.ndarray) -> IpHeader:
    m = len(rows)
    v4 = etype == 0x0800
    v6 = etype == 0x86DD
    first, ok = rows.u8(pos)
    total, _ = rows.u16(pos + 2)
    ihl = (first & 15).astype(np.int64) * 4
    ipid, _ = rows.u16(pos + 4)
    frag, _ = rows.u16(pos + 6)
    proto, _ = rows.u8(pos + 9)
    src4, ok_src = rows.u32(pos + 12)
    dst4, ok_dst = rows.u32(pos + 16)
    ok4 = v4 & ok & ok_src & ok_dst & ((first >> 4) == 4) & (ihl >= 20)
    flags = np.zeros(m, np.uint8)
    flags |= np.where(v4 & ((frag & 0x2000) != 0), MORE_FRAGMENTS, 0).astype(np.uint8)
    flags |= np.where(v4 & ((frag & 0x1FFF) != 0), LATER_FRAGMENT, 0).astype(np.uint8)
    flags |= np.where(v4 & ((frag & 0x4000) != 0), DONT_FRAGMENT, 0).astype(np.uint8)
    # A zero total length is what TSO/GRO leaves in captures: the frame's own length. A
    # total length below the header's or beyond the frame contradicts the packet.
    end = np.where(total > 0, pos + total.astype(np.int64), rows.wire)
    flags |= np.where(ok4 & (total > 0) & ((total < ihl) | (end > rows.wire)), MALFORMED, 0).astype(
        np.uint8
    )
    l4 = pos + ihl
    version = np.where(ok4, 4, 0).astype(np.uint8)
    src6 = dst6 = None
    if v6.any():
        plen, _ = rows.u16(pos + 4)
        nxt6, _ = rows.u8(pos + 6)
        s6, ok_s = rows.raw(pos + 8, 16)
        d6, ok_d = rows.raw(pos + 24, 16)
        ok6 = v6 & ok & ok_s & ok_d & ((first >> 4) == 6)
        src6 = np.where(ok6[:, None], s6, 0).astype(np.uint8)
        dst6 = np.where(ok6[:, None], d6, 0).astype(np.uint8)
        version = np.where(ok6, 6, version).astype(np.uint8)
        proto = np.where(ok6, nxt6, proto)
        l4 = np.where(ok6, pos + 40, l4)
        end = np.where(ok6 & (plen > 0), pos + 40 + plen.astype(np.int64), end)
        end = np.where(ok6 & (plen == 0), rows.wire, end)  # a jumbogram: the frame says
        flags |= np.where(ok6 & (plen > 0) & (end > rows.wire), MALFORMED, 0).astype(np.uint8)
        ipid = np.where(ok6, 0, ipid).astype(np.uint16)
        proto, l4, ipid, ok6 = _extensions(rows, ok6, (proto, l4, ipid), flags)
        ok4 = ok4 | ok6
    return IpHeader(
        ok4,
        version,
        proto.astype(np.uint8),
        np.where(v4, src4, 0).astype(np.uint32),
        np.where(v4, dst4, 0).astype(np.uint32),
        src6,
        dst6,
        ipid.astype(np.uint16),
        flags,
        l4,
        end,
    )


def _extensions(
    rows: Rows,
    ok6: np.ndarray,
    fields: tuple[np.ndarray, np.ndarray, np.ndarray],
    flags: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IPv6 extension headers walked to the transport header: (protocol, its position, the
    fragment id, still whole); `flags` gains the fragment and short-header bits in place."""
    proto, l4, ipid = fields
    for _ in range(6):
        ext = ok6 & np.isin(proto, IPV6_EXT)
        if not ext.any():
            break
        nxt, _ = rows.u8(l4)
        hlen, ok_len = rows.u8(l4 + 1)
        is_frag = ext & (proto == IPV6_FRAGMENT)
        if is_frag.any():
            fw, _ = rows.u16(l4 + 2)
            ident, _ = rows.u32(l4 + 4)
            flags |= np.where(is_frag & ((fw & 1) != 0), MORE_FRAGMENTS, 0).astype(np.uint8)
            flags |= np.where(is_frag & ((fw >> 3) != 0), LATER_FRAGMENT, 0).astype(np.uint8)
            ipid = np.where(is_frag, ident & 0xFFFF, ipid).astype(np.uint16)
        size = np.where(
            is_frag,
            8,
            np.where(
                proto == IPV6_AH,
                (hlen.astype(np.int64) + 2) * 4,
                (hlen.astype(np.int64) + 1) * 8,
            ),
        )
        stuck = ext & ~ok_len
        flags |= np.where(stuck, SHORT, 0).astype(np.uint8)
        proto = np.where(ext & ok_len, nxt, proto)
        l4 = np.where(ext & ok_len, l4 + size, l4)
        ok6 = ok6 & ~stuck
    return proto, l4, ipid, ok6
