"""Build pcapng files block by block, including the odd ones real tools write."""

from __future__ import annotations

import struct


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    body = _pad(body)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def shb(order: str = "<", comment: str | None = None) -> bytes:
    opts = option(1, comment.encode()) + option(0, b"") if comment else b""
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opts
    return block(0x0A0D0D0A, body, order)


def idb(linktype: int, name: str = "", tsresol: int | None = None, order: str = "<") -> bytes:
    opts = b""
    if name:
        opts += option(2, name.encode())
    if tsresol is not None:
        opts += option(9, bytes([tsresol]))
    if opts:
        opts += option(0, b"")
    return block(1, struct.pack(order + "HHI", linktype, 0, 262144) + opts, order)


def epb(
    iface: int,
    ts_units: int,
    data: bytes,
    order: str = "<",
    comment: str | None = None,
    wirelen: int | None = None,
) -> bytes:
    body = struct.pack(
        order + "IIIII",
        iface,
        ts_units >> 32,
        ts_units & 0xFFFFFFFF,
        len(data),
        len(data) if wirelen is None else wirelen,
    )
    body += _pad(data)
    if comment:
        body += option(1, comment.encode()) + option(0, b"")
    return block(6, body, order)


def spb(data: bytes, order: str = "<") -> bytes:
    return block(3, struct.pack(order + "I", len(data)) + data, order)


def isb(iface: int, drops: int, order: str = "<") -> bytes:
    opts = option(5, struct.pack(order + "Q", drops)) + option(0, b"")
    return block(5, struct.pack(order + "III", iface, 0, 0) + opts, order)
