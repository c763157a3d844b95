"""HTTP/1.x message heads (RFC 9112): the start line and headers of a request or response, and
how its body is framed, read from the start of a message in a reassembled stream.

Headers are parsed by dpkt (plain ones by a faster equivalent); bodies are never read whole,
only measured, so that a keep-alive connection carrying a 100 MB download costs one head and
one length.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace

METHODS = frozenset(
    b"GET HEAD POST PUT DELETE OPTIONS PATCH CONNECT TRACE PROPFIND MKCOL COPY MOVE".split()
)
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110)
ASCII_SPACE = " \t\x0b\x0c"  # what dpkt strips from the end of a line (bytes.strip)
MAX_HEAD = 32768  # a head longer than this is not HTTP as servers accept it
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _word(start: bytes) -> int:
    return int.from_bytes(start[:4].ljust(4, b" "), "big")


# the first bytes of a message, as a 32-bit big-endian word: how streams are spotted in bulk
# (any other method is spotted by its shape: method_like)
REQUEST_WORDS = frozenset(_word(m + b" ") for m in METHODS) | {_word(H2_PREFACE)}
RESPONSE_WORD = _word(b"HTTP/")
PREFACE_WORD = _word(H2_PREFACE)
STARTS = (*REQUEST_WORDS, RESPONSE_WORD)


def method_like(word: int) -> bool:
    """The first four bytes could start a request line of a method not in METHODS (a method
    is any token: WebDAV's, UPnP's NOTIFY and SUBSCRIBE, custom ones): an uppercase letter,
    then uppercase letters, '-' or '_', the fourth also a space. parse_head decides."""
    b = word.to_bytes(4, "big")
    inner = all(c in _TOKEN_UPPER for c in b[1:3])
    return 65 <= b[0] <= 90 and inner and (b[3] in _TOKEN_UPPER or b[3] == 32)


_TOKEN_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


class NeedMore(Exception):
    """The head goes on past the bytes given."""


@dataclass(frozen=True)
class Head:
    """A request (method set) or a response (status set): its start line and headers."""

    length: int  # bytes of start line and headers, through the empty line
    version: str  # "1.1", "1.0"
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    method: str = ""
    target: str = ""
    status: int = 0
    cut: bool = False  # cut by the capture's snap length: `length` is what was captured

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def chunked(self) -> bool:
        return "chunked" in self.header("transfer-encoding").lower()

    @property
    def content_length(self) -> int | None:
        text = self.header("content-length").split(",")[0].strip()
        return int(text) if text.isdigit() else None


def head_end(data: bytes) -> int:
    """Where the head ends (after its empty line); NeedMore when it is not all in `data`,
    ValueError when it cannot be a head."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    bare = data.find(b"\n\n")  # tolerated by every server: bare LF line ends
    if bare >= 0:
        return bare + 2
    if len(data) >= MAX_HEAD:
        raise ValueError("no end of headers")
    raise NeedMore


def parse_head(data: bytes) -> Head:
    """The message head at the start of `data`. ValueError when it is not HTTP/1.x."""
    length = head_end(data)
    line, _, rest = data[:length].partition(b"\n")
    parts = line.rstrip(b"\r").split(b" ", 2)
    joined = plain_headers(rest)
    if joined is None:
        joined = dpkt_headers(rest)
    if parts[0].startswith(b"HTTP/1.") and len(parts) >= 2 and parts[1].isdigit():
        return Head(length, parts[0][5:].decode(), joined, status=int(parts[1]))
    method_ok = parts[0] in METHODS or TOKEN.fullmatch(parts[0].decode("latin-1")) is not None
    if len(parts) == 3 and method_ok and parts[2].startswith(b"HTTP/1."):
        method, target = parts[0].decode(), parts[1].decode("latin-1")
        return Head(length, parts[2][5:].decode("latin-1"), joined, method=method, target=target)
    raise ValueError("not an HTTP/1.x start line")


def parse_cut_head(data: bytes) -> Head:
    """A head the capture's snap length cut: its start line and the header lines whole
    before the cut (a cut line could read as another value: Content-Length: 12 of 1234).
    NeedMore when not even the start line is whole; ValueError when it is not HTTP/1.x."""
    whole = data.rfind(b"\n") + 1
    if whole == 0:
        raise NeedMore
    ending = b"\r\n" if data[:whole].endswith(b"\r\n") else b"\n"
    head = parse_head(data[:whole] + ending)
    return replace(head, length=whole, cut=True)


def dpkt_headers(block: bytes) -> dict[str, str]:
    """Header lines parsed by dpkt: names lowercased, repeated ones joined with ", ". Imported
    here: dpkt loads every protocol it knows (45 ms), and most heads never need it."""
    import dpkt

    try:
        headers = dpkt.http.parse_headers(io.BytesIO(block))
    except dpkt.UnpackError as exc:
        raise ValueError(str(exc)) from None
    return {k: v if isinstance(v, str) else ", ".join(v) for k, v in headers.items()}


def plain_headers(block: bytes) -> dict[str, str] | None:
    """The same as dpkt_headers for the heads nearly every client and server write (ASCII,
    CRLF line ends, "Name: value" lines, no folding) in half the time (6 instead of 11 µs
    for six headers: 50,000 short connections spent a third of their HTTP time in dpkt);
    None for any other head, which dpkt_headers then reads."""
    if not block.isascii() or block.count(b"\n") != block.count(b"\r\n"):
        return None
    out: dict[str, str] = {}
    for line in block.decode("ascii").split("\r\n"):
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.fullmatch(name):
            return None
        key = name.lower()
        value = value.rstrip(ASCII_SPACE).lstrip()  # as dpkt: the line, then the value
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def body_length(head: Head, request_method: str = "") -> int | None:
    """Bytes of body after the head when its length is known from the head: 0 for requests
    without Content-Length, for HEAD answers, 1xx, 204 and 304; None for chunked bodies and
    for responses that end with the connection."""
    if head.status and (request_method == "HEAD" or head.status < 200 or head.status in (204, 304)):
        return 0
    if head.chunked:
        return None
    length = head.content_length
    if length is not None:
        return length
    return 0 if head.method else None


def chunk_size(line: bytes) -> int:
    """The size on a chunk's first line (extensions after ';' ignored); ValueError if none."""
    text = line.split(b";", 1)[0].strip()
    if not text:
        raise ValueError("empty chunk size")
    return int(text, 16)
