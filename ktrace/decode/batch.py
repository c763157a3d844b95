"""Decode one batch of records into index columns: link layer, IP, transport, decapsulation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from ktrace.decode.columns import SCHEMA, PacketColumns, Quotes
from ktrace.decode.ip import ICMP_ERROR, LATER_FRAGMENT, SHORT, parse_ip
from ktrace.decode.link import ETH_IPV4, ETH_IPV6, by_version, ethernet, link_layer
from ktrace.decode.rows import Rows
from ktrace.decode.transport import parse_transport
from ktrace.decode.tunnel import Tunnel, TunnelKind, find_inner
from ktrace.pcap.records import WINDOW, RecordBatch

MAX_DEPTH = 3  # tunnels inside tunnels, at most
# An inner packet starting this close to the window's end is re-read from the file.
INNER_ROOM = 96


@dataclass
class DecodedBatch:
    """Columns for one batch; IPv6 ids and tunnel ids point into this batch's own tables."""

    columns: PacketColumns
    v6: list[bytes]
    tunnels: list[Tunnel]
    quotes: Quotes


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


def decode_batch(
    batch: RecordBatch, linktypes: list[int], points: list[int], view: memoryview
) -> DecodedBatch:
    """`linktypes`/`points`: per file interface, its link type and the capture point it feeds."""
    n = len(batch)
    out = {name: np.zeros(n, dtype) for name, dtype in SCHEMA.items()}
    out["offset"], out["ts"] = batch.offset, batch.ts
    out["caplen"], out["wirelen"] = batch.caplen, batch.wirelen
    out["point"] = np.asarray(points, np.uint16)[batch.iface]
    rows = Rows(batch.window, batch.caplen, skip=batch.skip)

    if len(set(linktypes)) == 1:
        pos, etype = link_layer(rows, linktypes[0])
    else:
        pos = np.zeros(n, np.int64)
        etype = np.zeros(n, np.uint16)
        iface_lt = np.asarray(linktypes, np.int64)[batch.iface]
        for lt in set(linktypes):
            sel = np.flatnonzero(iface_lt == lt)
            p, e = link_layer(rows.subset(sel), lt)
            pos[sel], etype[sel] = p, e

    src6 = dst6 = None
    tunnel_rows: list[np.ndarray] = []
    tunnel_keys: list[tuple[np.ndarray, ...]] = []
    todo = np.flatnonzero((etype == ETH_IPV4) | (etype == ETH_IPV6))
    quote_parts: list[tuple[np.ndarray, ...]] = []
    for _depth in range(MAX_DEPTH):
        if not len(todo):
            break
        sub = rows.subset(todo)
        ip = parse_ip(sub, pos[todo], etype[todo])
        whole = ip.ok & ((ip.flags & LATER_FRAGMENT) == 0)
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
        out["paylen"][at] = np.where(t, tr.paylen, np.maximum(ip.end - ip.l4, 0))[good]
        out["payoff"][at] = np.minimum(np.where(t, tr.payload, ip.l4), 0xFFFF)[good]
        if ip.src6 is not None:
            if src6 is None:
                src6 = np.zeros((n, 16), np.uint8)
                dst6 = np.zeros((n, 16), np.uint8)
            assert dst6 is not None
            six = good & (ip.version == 6)
            src6[todo[six]] = ip.src6[six]
            dst6[todo[six]] = ip.dst6[six]

        err = t & tr.icmp_error
        if err.any():
            quote_parts.append(_quoted(sub.subset(np.flatnonzero(err)), tr.payload[err], todo[err]))

        inner = find_inner(sub, ip, tr)
        found = inner.found & whole
        if not found.any():
            break
        hit = todo[found]
        # Record the outside before the inner packet overwrites the row's fields.
        outer = (
            inner.kind[found],
            out["l3"][hit].copy(),
            out["src"][hit].copy(),
            out["dst"][hit].copy(),
            inner.vni[found],
            np.where(inner.kind[found] <= TunnelKind.GENEVE, tr.dport[found], 0),
            None if src6 is None else src6[hit].copy(),
            None if dst6 is None else dst6[hit].copy(),
        )
        tunnel_rows.append(hit)
        tunnel_keys.append(outer)
        ipos = inner.pos[found]
        far = ipos + INNER_ROOM > rows.base[hit] + WINDOW
        if far.any():
            _rewindow(rows, view, batch.offset, hit[far], ipos[far])
        eth = inner.ethernet[found]
        ietype = inner.etype[found].copy()
        if eth.any():
            sel = hit[eth]
            p, e = ethernet(rows.subset(sel), ipos[eth])
            ipos[eth], ietype[eth] = p, e
        unknown = ~np.isin(ietype, (ETH_IPV4, ETH_IPV6))
        if unknown.any():
            ietype[unknown] = by_version(rows.subset(hit[unknown]), ipos[unknown])
        pos[hit], etype[hit] = ipos, ietype
        keep = np.isin(ietype, (ETH_IPV4, ETH_IPV6))
        todo = hit[keep]

    ip_rows = out["l3"] > 0
    if ip_rows.any():
        sel = np.flatnonzero(ip_rows)
        out["phash"][sel] = rows.subset(sel).prefix_hash(
            out["payoff"][sel].astype(np.int64), out["paylen"][sel].astype(np.int64)
        )

    v6_table: list[bytes] = []
    if src6 is not None:
        assert dst6 is not None
        six = np.flatnonzero(out["l3"] == 6)
        both = np.concatenate([src6[six], dst6[six]])
        uniq, inv = np.unique(both, axis=0, return_inverse=True)
        v6_table = [bytes(row) for row in uniq]
        inv = inv.reshape(-1)
        out["src"][six] = inv[: len(six)]
        out["dst"][six] = inv[len(six) :]

    tunnels: list[Tunnel] = []
    if tunnel_rows:
        # The outermost encapsulation wins: apply innermost first, outer ones overwrite.
        index: dict[Tunnel, int] = {}
        for hit, key in reversed(list(zip(tunnel_rows, tunnel_keys, strict=True))):
            kind, l3, src, dst, vni, port, s6, d6 = key
            parts = [kind, l3, src, dst, vni, port]
            if s6 is not None and d6 is not None:
                parts += [s6, d6]
            matrix = np.column_stack([np.asarray(p, np.int64).reshape(len(hit), -1) for p in parts])
            uniq, first, inv = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
            ids = np.zeros(len(uniq), np.uint16)
            for u, j in enumerate(first.tolist()):
                tun = Tunnel(
                    TunnelKind(int(kind[j])).name.lower(),
                    _address_text(int(l3[j]), int(src[j]), None if s6 is None else s6[j]),
                    _address_text(int(l3[j]), int(dst[j]), None if d6 is None else d6[j]),
                    int(vni[j]),
                    int(port[j]),
                )
                ids[u] = index.setdefault(tun, len(index) + 1)
            out["tunnel"][hit] = ids[inv.reshape(-1)]
        tunnels = list(index)

    quotes = Quotes.empty()
    if quote_parts:
        quotes = Quotes(*(np.concatenate([q[k] for q in quote_parts]) for k in range(7)))
    return DecodedBatch(PacketColumns(**out), v6_table, tunnels, quotes)


def _quoted(rows: Rows, at: np.ndarray, row_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """The IP + first transport bytes an ICMP error carries, IPv4 only for addresses."""
    etype = by_version(rows, at)
    ip = parse_ip(rows, at, etype)
    # The quote is cut short by design: ports are all we need from the transport header.
    sport, ok = rows.u16(ip.l4)
    dport, _ = rows.u16(ip.l4 + 2)
    ok &= ip.ok
    return (
        row_ids.astype(np.int64),
        np.where(ok, ip.version, 0).astype(np.uint8),
        ip.proto,
        ip.src4,
        ip.dst4,
        np.where(ok, sport, 0).astype(np.uint16),
        np.where(ok, dport, 0).astype(np.uint16),
    )
