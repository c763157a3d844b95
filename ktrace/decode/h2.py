"""HTTP/2 frames (RFC 9113) and their header blocks, decoded with hpack as a passive observer:
one decoder per direction, fed every header block in order."""

from __future__ import annotations

import struct
from dataclasses import dataclass

FRAME_HEADER = 9
DATA, HEADERS, RST_STREAM, GOAWAY, CONTINUATION = 0, 1, 3, 7, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24
# the largest dynamic table an observer accepts: it sees the peer's SETTINGS only when they
# were captured, so it takes whatever size the encoder announces
TABLE_LIMIT = 1 << 20


class H2Error(ValueError):
    pass


@dataclass(frozen=True)
class FrameHeader:
    """An HTTP/2 frame's 9-byte header."""

    length: int
    type: int
    flags: int
    stream: int


def frame_header(data: bytes) -> FrameHeader:
    if len(data) < FRAME_HEADER:
        raise H2Error("short frame header")
    high, low, kind, flags, stream = struct.unpack("!BHBBI", data[:FRAME_HEADER])
    return FrameHeader(high << 16 | low, kind, flags, stream & 0x7FFFFFFF)


def block_fragment(frame: FrameHeader, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS or CONTINUATION frame: padding and priority
    fields taken off."""
    if frame.type != HEADERS:
        return payload
    start, end = 0, len(payload)
    if frame.flags & PADDED:
        if not payload:
            raise H2Error("padded frame without pad length")
        start, end = 1, len(payload) - payload[0]
    if frame.flags & PRIORITY:
        start += 5
    if start > end:
        raise H2Error("padding longer than the frame")
    return payload[start:end]


class HeaderDecoder:
    """HPACK for one direction of one connection."""

    def __init__(self) -> None:
        import hpack  # here: only captures with HTTP/2 in clear pay for it (10 ms)

        self._decoder = hpack.Decoder()
        self._error = hpack.HPACKError
        self._decoder.max_allowed_table_size = TABLE_LIMIT
        self._decoder.max_header_list_size = MAX_FRAME

    def decode(self, block: bytes) -> dict[str, str]:
        try:
            pairs = self._decoder.decode(block, raw=True)
        except self._error as exc:
            raise H2Error(f"header block: {exc}") from None
        out: dict[str, str] = {}
        for name, value in pairs:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out
