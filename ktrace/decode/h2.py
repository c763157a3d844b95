"""HTTP/2 frames (RFC 9113) and their header blocks, decoded as a passive observer that may
have come in mid-connection: one decoder per direction, fed every header block in order."""

from __future__ import annotations

import struct
from dataclasses import dataclass

FRAME_HEADER = 9
DATA, HEADERS, RST_STREAM, GOAWAY, CONTINUATION = 0, 1, 3, 7, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24
MAX_ENTRIES = 4096  # table entries an observer keeps: a 64 KB table holds at most 2,048
UNSEEN = "?"  # a pseudo-header a table entry the capture never saw holds (:method, :path)

# a frame's first four bytes: a length up to 16,640 (16,384 unless a peer raised it), a type
# of RFC 9113's ten: what spots a connection that began before the capture (frame_like)
FRAME_LENGTH_HIGH = 0x40
LAST_FRAME_TYPE = CONTINUATION
SETTINGS, PING, WINDOW_UPDATE = 4, 6, 8
PRIORITY_FRAME, PUSH_PROMISE = 2, 5
FIXED_LENGTH = {PRIORITY_FRAME: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
ON_CONNECTION = frozenset({SETTINGS, PING, GOAWAY})  # stream 0 only
ON_STREAM = frozenset({DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, PUSH_PROMISE, CONTINUATION})


def frame_like(word: int) -> bool:
    """The first four bytes of a payload could start an HTTP/2 frame (lead.looks_like_app
    and the C loop spot them in bulk; plausible() decides)."""
    high, kind = (word >> 16) & 0xFF, word & 0xFF
    return word >> 24 == 0 and high <= FRAME_LENGTH_HIGH and kind <= LAST_FRAME_TYPE


def plausible(frame: FrameHeader, reserved: bool) -> bool:
    """A frame header as RFC 9113 allows it, for finding frames in a stream caught midway:
    a known type on the streams it may go on, of a length it may have."""
    if reserved or frame.type > LAST_FRAME_TYPE or frame.length >= MAX_FRAME:
        return False
    if frame.type in ON_CONNECTION and frame.stream != 0:
        return False
    if frame.type in ON_STREAM and frame.stream == 0:
        return False
    if frame.type in FIXED_LENGTH and frame.length != FIXED_LENGTH[frame.type]:
        return False
    if frame.type == SETTINGS and frame.length % 6:
        return False
    return not (frame.type == GOAWAY and frame.length < 8)


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
    """HPACK (RFC 7541) for one direction of one connection, read by an observer that may
    have come in late. A field that names a table entry added before the capture began (or
    in a header block the capture missed) is left out, and counted. The entries added since
    are known exactly: HPACK numbers the newest first, so theirs do not depend on the older
    ones, nor on evictions (an evicted entry is never named again)."""

    def __init__(self) -> None:
        from hpack.huffman_table import decode_huffman  # here: only HTTP/2 in clear pays

        self._huffman = decode_huffman
        self._known: list[tuple[str | None, str]] = []  # newest last; None: name unseen
        self.unseen = 0  # fields that named an entry the capture never saw added

    def forget(self) -> None:
        """A header block was lost: the entries it added are unknown, and so what the ones
        known so far are numbered now."""
        self._known.clear()

    def decode(self, block: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        pos = 0
        try:
            while pos < len(block):
                first = block[pos]
                if first & 0x80:  # an indexed field
                    index, pos = _integer(block, pos, 7)
                    name, value = self._entry(index)
                elif first & 0xC0 == 0x40:  # a literal, added to the table
                    name, value, pos = self._literal(block, pos, 6)
                    self._add(name, value)
                elif first & 0xE0 == 0x20:  # a dynamic table size update
                    _, pos = _integer(block, pos, 5)
                    continue
                else:  # a literal, not added (never indexed, or without indexing)
                    name, value, pos = self._literal(block, pos, 4)
                if name is None or value is None:
                    self.unseen += 1  # its value under an unknown name tells nothing
                    continue
                key = name.lower()
                out[key] = f"{out[key]}, {value}" if key in out else value
        except (IndexError, ValueError) as exc:
            raise H2Error(f"header block: {exc}") from None
        return out

    def _entry(self, index: int) -> tuple[str | None, str | None]:
        """The table's entry at `index`; None for what the capture never saw."""
        if index == 0:
            raise ValueError("index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        newest = index - len(STATIC_TABLE)
        if newest > len(self._known):
            return None, None
        return self._known[-newest]

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[str | None, str, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        huffman = block[pos] & 0x80
        length, pos = _integer(block, pos, 7)
        raw = block[pos : pos + length]
        if len(raw) < length:
            raise ValueError("string past the block's end")
        if huffman:
            raw = self._huffman(raw)
        return raw.decode("latin-1"), pos + length

    def _add(self, name: str | None, value: str) -> None:
        self._known.append((name, value))
        if len(self._known) > MAX_ENTRIES:
            del self._known[: len(self._known) - MAX_ENTRIES]


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1), and where it ends."""
    limit = (1 << prefix) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 28:
            raise ValueError("integer too long")


# RFC 7541 appendix A
STATIC_TABLE: tuple[tuple[str, str], ...] = tuple(
    (name, value)
    for line in [
        ":authority",
        ":method GET",
        ":method POST",
        ":path /",
        ":path /index.html",
        ":scheme http",
        ":scheme https",
        ":status 200",
        ":status 204",
        ":status 206",
        ":status 304",
        ":status 400",
        ":status 404",
        ":status 500",
        "accept-charset",
        "accept-encoding gzip, deflate",
        "accept-language",
        "accept-ranges",
        "accept",
        "access-control-allow-origin",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "cookie",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "link",
        "location",
        "max-forwards",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "refresh",
        "retry-after",
        "server",
        "set-cookie",
        "strict-transport-security",
        "transfer-encoding",
        "user-agent",
        "vary",
        "via",
        "www-authenticate",
    ]
    for name, _, value in (line.partition(" "),)
)
