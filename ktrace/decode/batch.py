"""Decode one batch of records into index columns: link layer, IP, transport, decapsulation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from ktrace.decode.columns import SCHEMA, PacketColumns, Quotes
from ktrace.decode.ip import (
    APP_START,
    ICMP_ERROR,
    LATER_FRAGMENT,
    MALFORMED,
    SHORT,
    parse_ip,
)
from ktrace.decode.lead import looks_like_app
from ktrace.decode.link import (
    ETH_IPV4,
    ETH_IPV6,
    SHIMS,
    by_version,
    ethernet,
    link_layer,
    unwrap,
)
from ktrace.decode.rows import Rows
from ktrace.decode.transport import TCP, parse_transport
from ktrace.decode.tunnel import (
    UNDECODED_ETHERTYPES,
    Tunnel,
    TunnelKind,
    find_inner,
    undecoded,
)
from ktrace.kernels.plain import decode_plain
from ktrace.pcap.records import WINDOW, RecordBatch

MAX_DEPTH = 3  # tunnels inside tunnels, at most
# An inner packet starting this close to the window's end is re-read from the file.
INNER_ROOM = 96


MALFORMED_IP = "malformed IP"


@dataclass
class DecodedBatch:
    """Columns for one batch; IPv6 ids and tunnel ids point into this batch's own tables."""

    columns: PacketColumns
    v6: list[bytes]
    tunnels: list[Tunnel]
    quotes: Quotes
    # per tunnel: packets it carried inside another tunnel (the column holds the outermost)
    nested: list[int] = field(default_factory=list)
    undecoded: dict[str, int] = field(default_factory=dict)  # encapsulation -> packets
    # (and under MALFORMED_IP, the packets whose IP lengths contradict them)


def _address_text(l3: int, value: int, v6: np.ndarray | None) -> str:
    if l3 == 4:
        return str(ipaddress.IPv4Address(int(value)))
    assert v6 is not None
    return str(ipaddress.IPv6Address(bytes(v6)))


def _rewindow(
    rows: Rows, view: memoryview, offset: np.ndarray, idx: np.ndarray, at: np.ndarray
) -> None:
    """Re-read windows for packets whose next header starts near or past the window's end."""
    rows.writable()
    k = rows.skip
    for i, start in zip(idx.tolist(), at.tolist(), strict=True):
        piece = view[int(offset[i]) + start : int(offset[i]) + start + WINDOW]
        rows.win[i, k : k + len(piece)] = np.frombuffer(piece, np.uint8)
        rows.win[i, k + len(piece) :] = 0
        rows.base[i] = start


@dataclass(frozen=True, eq=False)
class _Outer:
    """The outside of the packets one decapsulation step found (their rows in the batch)."""

    rows: np.ndarray
    kind: np.ndarray
    l3: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    vni: np.ndarray
    port: np.ndarray
    src6: np.ndarray | None
    dst6: np.ndarray | None

    def matrix(self) -> np.ndarray:
        parts = [self.kind, self.l3, self.src, self.dst, self.vni, self.port]
        if self.src6 is not None and self.dst6 is not None:
            parts += [self.src6, self.dst6]
        n = len(self.rows)
        return np.column_stack([np.asarray(p, np.int64).reshape(n, -1) for p in parts])

    def tunnel(self, j: int) -> Tunnel:
        l3 = int(self.l3[j])
        return Tunnel(
            TunnelKind(int(self.kind[j])).name.lower(),
            _address_text(l3, int(self.src[j]), None if self.src6 is None else self.src6[j]),
            _address_text(l3, int(self.dst[j]), None if self.dst6 is None else self.dst6[j]),
            int(self.vni[j]),
            int(self.port[j]),
        )


class _Decoder:
    """One batch's columns, filled layer by layer; tunnels loop back to the IP layer."""

    def __init__(self, batch: RecordBatch, points: list[int], view: memoryview) -> None:
        n = len(batch)
        self.batch, self.view = batch, view
        self.out = {name: np.zeros(n, dtype) for name, dtype in SCHEMA.items()}
        self.out["offset"], self.out["ts"] = batch.offset, batch.ts
        self.out["caplen"], self.out["wirelen"] = batch.caplen, batch.wirelen
        self.out["point"] = np.asarray(points, np.uint16)[batch.iface]
        self.rows = Rows(batch.window, batch.caplen, skip=batch.skip, wire=batch.wirelen)
        self.src6: np.ndarray | None = None
        self.dst6: np.ndarray | None = None
        self.outers: list[_Outer] = []
        self.quote_parts: list[_Quoted] = []
        self.undecoded: dict[str, int] = {}  # encapsulation -> packets not looked into

    def count_undecoded(self, found: list[tuple[str, int]]) -> None:
        for name, n in found:
            self.undecoded[name] = self.undecoded.get(name, 0) + n

    def link_layer(self, linktypes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(set(linktypes)) == 1:
            return link_layer(self.rows, linktypes[0])
        n = len(self.batch)
        pos = np.zeros(n, np.int64)
        etype = np.zeros(n, np.uint16)
        iface_lt = np.asarray(linktypes, np.int64)[self.batch.iface]
        for lt in set(linktypes):
            sel = np.flatnonzero(iface_lt == lt)
            pos[sel], etype[sel] = link_layer(self.rows.subset(sel), lt)
        return pos, etype

    def plain(self, linktypes: list[int]) -> np.ndarray | None:
        """The common packets decoded in C (kernels.plain): the rows it took, or None."""
        if len(set(linktypes)) != 1:
            return None
        b = self.batch
        found = decode_plain(b.window, b.skip, b.caplen, b.wirelen, linktypes[0], self.out)
        if found is None:
            return None
        taken, src6, dst6 = found
        if src6 is not None:
            self.src6, self.dst6 = src6, dst6
        return taken

    def ip_layer(self, todo: np.ndarray, pos: np.ndarray, etype: np.ndarray) -> np.ndarray:
        """Decode IP and transport at `pos` for rows `todo`; returns the rows found to carry
        an inner packet, with pos/etype moved onto it."""
        out = self.out
        sub = self.rows.subset(todo)
        ip = parse_ip(sub, pos[todo], etype[todo])
        # a later fragment has no transport header; a malformed packet is read no further
        whole = ip.ok & ((ip.flags & (LATER_FRAGMENT | MALFORMED)) == 0)
        self.count_undecoded([(MALFORMED_IP, int(((ip.flags & MALFORMED) != 0).sum()))])
        tr = parse_transport(sub, ip.proto, ip.l4, ip.end)
        good = ip.ok
        at = todo[good]
        out["l3"][at] = ip.version[good]
        out["proto"][at] = ip.proto[good]
        out["src"][at] = ip.src4[good]
        out["dst"][at] = ip.dst4[good]
        out["ipid"][at] = ip.ipid[good]
        flags = ip.flags | np.where(whole & ~tr.ok, SHORT, 0).astype(np.uint8)
        flags |= np.where(tr.icmp_error, ICMP_ERROR, 0).astype(np.uint8)
        out["ipflags"][at] = flags[good]
        t = whole & tr.ok
        for name in ("sport", "dport", "seq", "ack", "win"):
            out[name][at] = np.where(t, getattr(tr, name), 0)[good]
        out["tcp_flags"][at] = np.where(t, tr.flags, 0)[good]
        out["paylen"][at] = np.where(
            t, tr.paylen, np.where(whole, np.maximum(ip.end - ip.l4, 0), 0)
        )[good]
        out["payoff"][at] = np.minimum(np.where(t, tr.payload, ip.l4), 0xFFFF)[good]
        if ip.src6 is not None and ip.dst6 is not None:
            self._keep_v6(todo, good & (ip.version == 6), ip.src6, ip.dst6)
        err = t & tr.icmp_error
        if err.any():
            self.quote_parts.append(
                _quoted(sub.subset(np.flatnonzero(err)), tr.payload[err], todo[err])
            )
        inner = find_inner(sub, ip, tr)
        self.count_undecoded(undecoded(sub, ip, tr, inner))
        found = inner.found & whole
        if not found.any():
            return todo[:0]
        hit = todo[found]
        self._keep_outer(hit, inner.kind[found], inner.vni[found], tr.dport[found])
        return self._enter(
            hit, inner.pos[found], inner.ethernet[found], inner.etype[found], pos, etype
        )

    def _keep_v6(self, todo: np.ndarray, six: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
        if self.src6 is None or self.dst6 is None:
            n = len(self.batch)
            self.src6, self.dst6 = np.zeros((n, 16), np.uint8), np.zeros((n, 16), np.uint8)
        self.src6[todo[six]] = src[six]
        self.dst6[todo[six]] = dst[six]

    def _keep_outer(
        self, hit: np.ndarray, kind: np.ndarray, vni: np.ndarray, dport: np.ndarray
    ) -> None:
        """Record the outside before the inner packet overwrites the rows' fields."""
        out = self.out
        self.outers.append(
            _Outer(
                hit,
                kind,
                out["l3"][hit].copy(),
                out["src"][hit].copy(),
                out["dst"][hit].copy(),
                vni,
                np.where(np.isin(kind, [k for k in TunnelKind if k.on_udp]), dport, 0),
                None if self.src6 is None else self.src6[hit].copy(),
                None if self.dst6 is None else self.dst6[hit].copy(),
            )
        )

    def _enter(
        self,
        hit: np.ndarray,
        ipos: np.ndarray,
        eth: np.ndarray,
        ietype: np.ndarray,
        pos: np.ndarray,
        etype: np.ndarray,
    ) -> np.ndarray:
        rows = self.rows
        far = ipos + INNER_ROOM > rows.base[hit] + WINDOW
        if far.any():
            _rewindow(rows, self.view, self.batch.offset, hit[far], ipos[far])
        ietype = ietype.copy()
        if eth.any():
            p, e = ethernet(rows.subset(hit[eth]), ipos[eth])
            ipos[eth], ietype[eth] = p, e
        shim = np.isin(ietype, SHIMS)
        if shim.any():  # MPLS or NSH straight inside GRE or VXLAN-GPE
            p, e = unwrap(rows.subset(hit[shim]), ipos[shim], ietype[shim])
            ipos[shim], ietype[shim] = p, e
        unknown = ~np.isin(ietype, (ETH_IPV4, ETH_IPV6))
        if unknown.any():
            ietype[unknown] = by_version(rows.subset(hit[unknown]), ipos[unknown])
        pos[hit], etype[hit] = ipos, ietype
        return hit[np.isin(ietype, (ETH_IPV4, ETH_IPV6))]

    def payload_marks(self, done: np.ndarray | None) -> None:
        """Per IP packet (but the `done` rows): the hash of its first payload bytes (for the
        fingerprint), and for TCP segments whose payload starts like HTTP or TLS the
        APP_START flag (decode.lead)."""
        out = self.out
        ip = out["l3"] > 0
        sel = np.flatnonzero(ip if done is None else ip & ~done)
        if not len(sel):
            return
        rows = self.rows.subset(sel)
        pos = out["payoff"][sel].astype(np.int64)
        paylen = out["paylen"][sel].astype(np.int64)
        out["phash"][sel], word = rows.payload_prefix(pos, paylen)
        have = np.minimum(paylen, rows.limit - pos)
        tcp = (out["proto"][sel] == TCP) & (have >= 4)
        # a payload past its window (deep encapsulation, long options) is read from the file
        for k in np.flatnonzero(tcp & (pos - rows.base + 4 > rows.width)).tolist():
            at = int(self.batch.offset[sel[k]]) + int(pos[k])
            word[k] = int.from_bytes(self.view[at : at + 4], "big")
        out["ipflags"][sel[tcp & looks_like_app(word)]] |= APP_START

    def v6_table(self) -> list[bytes]:
        """IPv6 addresses (of packets and of the packets ICMPv6 errors quote) as ids into the
        batch's own table."""
        quoted = [q for q in self.quote_parts if (q.quotes.l3 == 6).any()]
        if (self.src6 is None or self.dst6 is None) and not quoted:
            return []
        out = self.out
        six = np.flatnonzero(out["l3"] == 6)
        src6, dst6 = self.src6, self.dst6
        parts = [src6[six], dst6[six]] if src6 is not None and dst6 is not None else []
        for q in quoted:
            q6 = q.quotes.l3 == 6
            parts += [q.src6[q6], q.dst6[q6]]
        uniq, inv = unique_rows(np.concatenate(parts))
        at = 0
        if src6 is not None:
            out["src"][six], out["dst"][six] = inv[: len(six)], inv[len(six) : 2 * len(six)]
            at = 2 * len(six)
        for q in quoted:
            q6 = np.flatnonzero(q.quotes.l3 == 6)
            q.quotes.src[q6] = inv[at : at + len(q6)]
            q.quotes.dst[q6] = inv[at + len(q6) : at + 2 * len(q6)]
            at += 2 * len(q6)
        return [bytes(row) for row in uniq]

    def tunnels(self) -> tuple[list[Tunnel], list[int]]:
        """Tunnel ids per row, the outermost encapsulation winning (applied last), and per
        tunnel the packets it carried nested inside another one."""
        index: dict[Tunnel, int] = {}
        nested: dict[int, int] = {}
        for depth, outer in reversed(list(enumerate(self.outers))):
            uniq, first, inv = np.unique(
                outer.matrix(), axis=0, return_index=True, return_inverse=True
            )
            ids = np.zeros(len(uniq), np.uint16)
            for u, j in enumerate(first.tolist()):
                ids[u] = index.setdefault(outer.tunnel(j), len(index) + 1)
            per_row = ids[inv.reshape(-1)]
            self.out["tunnel"][outer.rows] = per_row
            if depth:
                for tid, n in zip(*np.unique(per_row, return_counts=True), strict=True):
                    nested[int(tid)] = nested.get(int(tid), 0) + int(n)
        return list(index), [nested.get(k + 1, 0) for k in range(len(index))]

    def quotes(self) -> Quotes:
        """After v6_table: the quoted IPv6 addresses are ids into the same table."""
        if not self.quote_parts:
            return Quotes.empty()
        done = [q.quotes for q in self.quote_parts]
        fields = Quotes.__dataclass_fields__
        return Quotes(*(np.concatenate([getattr(q, f) for q in done]) for f in fields))


def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(a, axis=0, return_inverse=True) for (n, 16) uint8 addresses, as two 64-bit
    keys: several times faster than unique over rows."""
    if not len(a):  # IPv6-typed frames none of which parsed
        return a, np.zeros(0, np.uint32)
    halves = np.ascontiguousarray(a).view(np.uint64).reshape(-1, 2)
    order = np.lexsort((halves[:, 1], halves[:, 0]))
    sorted_halves = halves[order]
    new = np.r_[True, np.any(sorted_halves[1:] != sorted_halves[:-1], axis=1)]
    ids = np.cumsum(new) - 1
    inv = np.empty(len(a), np.uint32)
    inv[order] = ids
    return a[order[new]], inv


def decode_batch(
    batch: RecordBatch, linktypes: list[int], points: list[int], view: memoryview
) -> DecodedBatch:
    """`linktypes`/`points`: per file interface, its link type and the capture point it feeds."""
    d = _Decoder(batch, points, view)
    pos, etype = d.link_layer(linktypes)
    d.count_undecoded(
        [(name, int((etype == value).sum())) for value, name in UNDECODED_ETHERTYPES.items()]
    )
    taken = d.plain(linktypes)
    ip = (etype == ETH_IPV4) | (etype == ETH_IPV6)
    todo = np.flatnonzero(ip if taken is None else ip & ~taken)
    for _depth in range(MAX_DEPTH):
        if not len(todo):
            break
        todo = d.ip_layer(todo, pos, etype)
    d.payload_marks(taken)
    v6 = d.v6_table()
    tunnels, nested = d.tunnels()
    undecoded = {k: v for k, v in d.undecoded.items() if v}
    return DecodedBatch(PacketColumns(**d.out), v6, tunnels, d.quotes(), nested, undecoded)


def _quoted(rows: Rows, at: np.ndarray, row_ids: np.ndarray) -> _Quoted:
    """The IP + first transport bytes an ICMP or ICMPv6 error carries."""
    etype = by_version(rows, at)
    ip = parse_ip(rows, at, etype)
    # The quote is cut short by design: ports are all we need from the transport header.
    sport, ok = rows.u16(ip.l4)
    dport, _ = rows.u16(ip.l4 + 2)
    ok &= ip.ok
    none6 = np.zeros((len(at), 16), np.uint8)
    quotes = Quotes(
        row_ids.astype(np.int64),
        np.where(ok, ip.version, 0).astype(np.uint8),
        ip.proto,
        ip.src4,
        ip.dst4,
        np.where(ok, sport, 0).astype(np.uint16),
        np.where(ok, dport, 0).astype(np.uint16),
    )
    return _Quoted(
        quotes,
        ip.src6 if ip.src6 is not None else none6,
        ip.dst6 if ip.dst6 is not None else none6,
    )


@dataclass(frozen=True, eq=False)
class _Quoted:
    """Quotes as decoded: their IPv6 addresses stay bytes until the batch's table numbers
    them (into the quotes' src/dst)."""

    quotes: Quotes
    src6: np.ndarray
    dst6: np.ndarray
