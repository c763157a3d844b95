"""Walk one connection's two streams as HTTP: HTTP/1.x messages one after the other (keep-alive,
pipelining, chunked bodies, bodies that end with the connection), HTTP/2 frames with prior
knowledge or after an h2c upgrade. Bodies are measured, never copied."""

from __future__ import annotations

import urllib.parse
from bisect import bisect_right
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from ktrace.analysis.tcp_streams import Connection, Stream
from ktrace.decode import h2
from ktrace.decode.http1 import (
    H2_PREFACE,
    MAX_HEAD,
    PREFACE_WORD,
    Head,
    NeedMore,
    body_length,
    chunk_size,
    parse_cut_head,
    parse_head,
)

FIRST_READ = 4096
MAX_MESSAGES = 100_000  # per connection: a bound on a hostile or garbled stream
RESYNC_SEGMENTS = 64  # a capture that began mid-connection: segments tried for a message start
FRAMES_TO_TRUST = 8  # frames followed from a segment's start to where a segment ends
REQUEST_PSEUDO = frozenset({":method", ":path", ":scheme", ":authority"})


class HttpEnd(StrEnum):
    """How an answer ended."""

    COMPLETE = "complete"  # its last byte seen
    RESET = "reset"
    CLOSED = "closed"
    OPEN = "open"  # the capture ended first
    # the server had closed the idle connection before the request reached it (clients send
    # it again), or a GOAWAY left the stream untaken
    CROSSED = "crossed"
    UNSEEN = "unseen"  # the answer was in bytes the capture missed


class Side(StrEnum):
    """Which end of a connection did something."""

    CLIENT = "client"
    SERVER = "server"
    NEITHER = ""


@dataclass
class Exchange:
    """One request and what came back, filled in as the streams are walked."""

    protocol: str
    stream: int
    request_ts: int
    request_row: int
    request: dict[str, str]  # HTTP/2 style: ":method", ":path", ":authority", then headers
    response: dict[str, str] = field(default_factory=dict)  # ":status", then headers
    trailers: dict[str, str] = field(default_factory=dict)
    request_bytes: int = 0
    response_bytes: int = 0
    response_ts: int | None = None
    response_row: int | None = None
    done_ts: int | None = None
    ended: HttpEnd = HttpEnd.OPEN
    ended_by: Side = Side.NEITHER
    ended_ts: int | None = None  # when the reset or the close came
    request_end: int | None = None  # where the request ends in the client's stream
    # an answered CONNECT: where the tunnel starts in the client's and the server's streams
    tunnel: tuple[int, int] | None = None

    def status(self) -> int | None:
        text = self.response.get(":status", "")
        return int(text) if text.isdigit() else None

    def grpc_status(self) -> int | None:
        text = self.trailers.get("grpc-status") or self.response.get("grpc-status", "")
        return int(text) if text.isdigit() else None

    def grpc_message(self) -> str:
        text = self.trailers.get("grpc-message") or self.response.get("grpc-message", "")
        return urllib.parse.unquote(text)


@dataclass
class Tally:
    """What a walk could not read whole, over all connections: said once in the warnings."""

    cut_heads: int = 0  # message heads the capture's snap length cut
    unseen_fields: int = 0  # HTTP/2 header fields naming table entries the capture missed


@dataclass(frozen=True)
class _Message:
    """An HTTP/1.x message in a stream: where its head, body and end are."""

    offset: int
    head: Head
    body: int  # where its body starts
    end: int | None  # where it ends; None: not known (lost bytes, or until the close)
    chunked: int | None = None  # a chunked body's size, its chunks' framing left out
    until_close: bool = False  # its body ends with the connection: nothing follows it


def oriented(conn: Connection) -> Connection:
    """The connection with its client the side that asks. Only HTTP/2 caught midway needs
    it (its first bytes are frames either side sends): the side whose header blocks carry
    a request's pseudo-headers asks, the one whose carry :status answers."""
    if conn.client.lead == PREFACE_WORD or _http1(conn):
        return conn
    starts = _frames_start(conn.client), _frames_start(conn.server)
    if starts == (None, None):
        return conn
    asks = [0, 0]
    for side, (s, at) in enumerate(zip((conn.client, conn.server), starts, strict=True)):
        for _, _, headers in _frames(s, s.length if at is None else at, Tally()):
            if headers is not None:
                asks[side] += bool(REQUEST_PSEUDO & headers.keys())
                asks[side] -= ":status" in headers
    if asks[1] > asks[0]:
        return Connection(conn.flow, conn.point, conn.server, conn.client, not conn.client_is_a)
    return conn


def _http1(conn: Connection) -> bool:
    """Either side starts an HTTP/1.x message somewhere near its start."""
    return (
        _resync(conn.client, request=True) is not None
        or _resync(conn.server, request=False) is not None
    )


def walk_http(conn: Connection, tally: Tally) -> Iterator[Exchange]:
    client = conn.client
    if client.lead == PREFACE_WORD and client.read(0, len(H2_PREFACE)) == H2_PREFACE:
        yield from _h2(conn, len(H2_PREFACE), 0, {}, tally)
        return
    requests = _messages(client, _resync(client, request=True))
    if not requests and _resync(conn.server, request=False) is None:
        # no HTTP/1.x either way: HTTP/2 whose preface came before the capture, if any
        client_at, server_at = _frames_start(client), _frames_start(conn.server)
        if (client_at, server_at) != (None, None):
            client_from = client.length if client_at is None else client_at
            server_from = conn.server.length if server_at is None else server_at
            yield from _h2(conn, client_from, server_from, {}, tally)
        return
    exchanges: list[Exchange] = []
    _asked(client, requests, exchanges)
    upgrade = yield from _answers(conn, requests, exchanges, tally)
    if upgrade is not None:
        k, after_101 = upgrade
        after_request = (requests[k].end or 0) + len(H2_PREFACE)
        yield from _h2(conn, after_request, after_101, {1: exchanges[k]}, tally)


def _asked(client: Stream, requests: list[_Message], exchanges: list[Exchange]) -> None:
    """An exchange for each request not yet given one."""
    for k in range(len(exchanges), len(requests)):
        h, m = requests[k].head, requests[k]
        request = {":method": h.method, ":path": h.target, ":authority": h.header("host")}
        exchanges.append(
            Exchange(
                f"HTTP/{h.version}",
                k + 1,
                _when(client, m.offset),
                _row(client, m.offset),
                request | h.headers,
                request_bytes=_measured(m),
                request_end=m.end,
            )
        )


def _answers(
    conn: Connection, requests: list[_Message], exchanges: list[Exchange], tally: Tally
) -> Generator[Exchange, None, tuple[int, int] | None]:
    """Pair responses with requests in order; the exchanges are yielded as they complete.
    After an h2c upgrade, returns the upgraded request's number and where the server's
    HTTP/2 starts."""
    server, client = conn.server, conn.client
    m = _resync(server, request=False)
    k = 0
    after_gap = False
    while m is not None:
        if after_gap:
            j = _answered(server, m, requests, k)
            for e in exchanges[k:j]:
                e.ended = HttpEnd.UNSEEN  # its answer was in the bytes the capture missed
                yield e
            k, after_gap = j, False
        method = requests[k].head.method if k < len(requests) else ""
        if method == "HEAD":  # its answer's Content-Length has no body behind it
            m = _message(server, m.offset, request=False, method=method)
            if m is None:
                break
        status = m.head.status
        if 100 <= status < 200 and status != 101:  # interim (100 Continue): the answer follows
            m = _message(server, m.body, request=False)
            continue
        at = _when(server, m.offset)
        if k == len(requests) or at < exchanges[k].request_ts or _before(server, m, requests[k]):
            # the answer to a request made before the capture began, or lost from it
            e = Exchange(f"HTTP/{m.head.version}", 0, at, _row(server, m.offset), {})
        else:
            if status == 101 and "h2c" in m.head.header("upgrade").lower():
                return k, m.body  # the answer comes as HTTP/2 stream 1
            e = exchanges[k]
            k += 1
        e.response_ts, e.response_row = at, _row(server, m.offset)
        e.response = {":status": str(status)} | m.head.headers
        e.response_bytes = _measured(m, server)
        tally.cut_heads += m.head.cut
        _finish(e, server, client, m.end)
        yield e
        if e.request.get(":method") == "CONNECT":
            if 200 <= status < 300:
                e.tunnel = (e.request_end or 0, m.body)
            elif k == len(requests):  # refused (407): the client may ask again, in HTTP
                requests += _messages(client, _next(client, requests[-1], request=True))
                _asked(client, requests, exchanges)
        if status == 101 or e.tunnel is not None:
            break  # another protocol (a WebSocket, a tunnel) follows: nothing more to pair
        previous, m = m, _next(server, m, request=False)
        after_gap = m is not None and m.offset != previous.end
    for e in exchanges[k:]:
        _finish(e, server, client, None)
        yield e
    return None


def _answered(server: Stream, m: _Message, requests: list[_Message], k: int) -> int:
    """The request an answer found after bytes the capture missed is to: the last one whose
    head the server had received when it sent it (its acknowledgement says), the answers to
    those from k on lost with those bytes. Exact for keep-alive, where a client asks again
    once answered; pipelined requests answered in the lost bytes cannot be told apart."""
    acked = _acked(server, m)
    j = k
    while acked >= 0 and j + 1 < len(requests) and requests[j + 1].body <= acked:
        j += 1
    return j


def _before(server: Stream, m: _Message, request: _Message) -> bool:
    """The server sent this answer before the request's head had reached it: it answers
    another request, one the capture missed."""
    acked = _acked(server, m)
    return 0 <= acked < request.body


def _acked(s: Stream, m: _Message) -> int:
    k = s.segment(m.offset)
    return s.acked[k] if k >= 0 and s.acked else -1


def _finish(e: Exchange, server: Stream, client: Stream, end: int | None) -> None:
    """How the answer ended: its last byte seen, or the connection reset or closed first."""
    last = server.when(end - 1) if end is not None and end > 0 else None
    if last is not None and e.response_ts is not None:
        e.done_ts, e.ended = last, HttpEnd.COMPLETE
        return
    if e.ended == HttpEnd.UNSEEN:
        return  # its answer was in bytes the capture missed
    if (
        e.response_ts is None
        and server.fin_ack is not None
        and e.request_end is not None
        and server.fin_ack < e.request_end
    ):
        # the server closed an idle keep-alive connection before the request reached it:
        # the request crossed the FIN, and clients send it again on a new connection
        e.ended, e.ended_by, e.ended_ts = HttpEnd.CROSSED, Side.SERVER, server.fin_ts
        return
    for kind, server_ts, client_ts in (
        (HttpEnd.RESET, server.rst_ts, client.rst_ts),
        (HttpEnd.CLOSED, server.fin_ts, client.fin_ts),
    ):
        sides = ((server_ts, Side.SERVER), (client_ts, Side.CLIENT))
        ends = [(t, who) for t, who in sides if t]
        if ends:
            (e.ended_ts, e.ended_by), e.ended = min(ends), kind
            return


def _messages(s: Stream, first: _Message | None) -> list[_Message]:
    """The requests from the first one on."""
    out: list[_Message] = []
    m = first
    while m is not None and len(out) < MAX_MESSAGES:
        out.append(m)
        if m.head.header("upgrade").lower() == "h2c" or m.head.method == "CONNECT":
            break  # what follows depends on the answer
        m = _next(s, m, request=True)
    return out


def _next(s: Stream, m: _Message, request: bool) -> _Message | None:
    """The message after this one: at its end, or where bytes around there are missing from
    the capture, at the first of the next segments that starts a message head."""
    if m.until_close:
        return None
    if m.end is not None and m.end < s.length:
        found = _message(s, m.end, request)
        if found is not None:
            return found
    return _resync(s, request, after=m.end if m.end is not None else m.body)


def _message(s: Stream, pos: int, request: bool, method: str = "") -> _Message | None:
    """The message at `pos`, or None where none can be read (lost bytes, not HTTP/1.x). Empty
    lines before a request are skipped, as servers do (RFC 9112 2.2)."""
    if request:
        while (lead := s.read(pos, 2)) and lead[:1] in (b"\r", b"\n"):
            pos += 2 if lead == b"\r\n" else 1
    size = FIRST_READ
    while True:
        data = s.read(pos, size)
        try:
            head = parse_head(data)
            break
        except NeedMore:
            if len(data) < size and s.snapped(pos + len(data)):
                return _cut(s, pos, data, request)
            if len(data) < size or size >= MAX_HEAD:
                return None
            size *= 4
        except ValueError:
            return None
    if bool(head.method) != request:
        return None
    body = pos + head.length
    if head.chunked and not (head.status and body_length(head, method) == 0):
        end, size = _chunks_end(s, body)
        return _Message(pos, head, body, end, size)
    length = body_length(head, method)
    if length is None:  # the body ends with the connection
        end = s.length if s.fin_ts is not None else None
        return _Message(pos, head, body, end, until_close=True)
    return _Message(pos, head, body, body + length)


def _cut(s: Stream, pos: int, data: bytes, request: bool) -> _Message | None:
    """A message whose head the snap length cut: what it is and the headers before the cut;
    where its body starts and ends is not known."""
    try:
        head = parse_cut_head(data)
    except (NeedMore, ValueError):
        return None
    if bool(head.method) != request:
        return None
    return _Message(pos, head, pos + head.length, None)


def _chunks_end(s: Stream, pos: int) -> tuple[int | None, int]:
    """Where a chunked body ends (after its trailers; None where a chunk line is missing),
    and the size of its chunks so far."""
    total = 0
    for _ in range(MAX_MESSAGES):
        line = s.read(pos, 256)
        eol = line.find(b"\n")
        if eol < 0:
            return None, total
        try:
            size = chunk_size(line[:eol])
        except ValueError:
            return None, total
        pos += eol + 1
        if size == 0:
            trailers = s.read(pos, MAX_HEAD)
            if trailers[:1] == b"\n":
                return pos + 1, total
            if trailers[:2] == b"\r\n":
                return pos + 2, total
            end = trailers.find(b"\r\n\r\n")
            return (pos + end + 4 if end >= 0 else None), total
        total += size
        pos += size + 2
    return None, total


def _resync(s: Stream, request: bool, after: int = -1) -> _Message | None:
    """The first message after `after` that starts a segment (the first of all: at 0, or
    for a capture begun mid-connection where a segment's bytes first parse as a head)."""
    first = bisect_right(s.start, after)
    for start in s.start[first : first + RESYNC_SEGMENTS]:
        m = _message(s, start, request)
        if m is not None:
            return m
    return None


def _measured(m: _Message, s: Stream | None = None) -> int:
    """Body bytes of a message (a chunked one's chunks): to its end, or to the last byte seen
    when it did not end."""
    if m.head.cut:
        return 0  # not known: the body's start was cut
    if m.chunked is not None:
        return m.chunked
    if m.end is not None:
        return max(m.end - m.body, 0)
    return max((s.length if s is not None else m.body) - m.body, 0)


def _when(s: Stream, offset: int) -> int:
    t = s.when(offset)
    return t if t is not None else 0


def _row(s: Stream, offset: int) -> int:
    k = s.segment(offset)
    return int(s.row[k]) if k >= 0 else -1


def _h2(
    conn: Connection,
    client_at: int,
    server_at: int,
    known: dict[int, Exchange],
    tally: Tally,
) -> Iterator[Exchange]:
    """HTTP/2 from these offsets: the client's frames, then the server's (each direction has
    its own header table), exchanges keyed by stream id."""
    exchanges = dict(known)
    for e in exchanges.values():
        e.protocol = "HTTP/2"
    _follow(conn.client, client_at, exchanges, True, tally)
    _follow(conn.server, server_at, exchanges, False, tally)
    for sid in sorted(exchanges):
        e = exchanges[sid]
        if e.ended == HttpEnd.OPEN and e.done_ts is None:
            _finish(e, conn.server, conn.client, None)
        yield e


def _frames(
    s: Stream, pos: int, tally: Tally
) -> Iterator[tuple[h2.FrameHeader, int, dict[str, str] | None]]:
    """Each frame from `pos` with its offset, and for the frame that ends a header block the
    block's headers. Where frames were lost, the next segment that starts a run of frames
    is where they go on; the header table is then known only from what follows."""
    decoder = h2.HeaderDecoder()
    block = bytearray()
    try:
        for _ in range(MAX_MESSAGES * 10):
            head = s.read(pos, h2.FRAME_HEADER)
            if len(head) < h2.FRAME_HEADER or not h2.plausible(*_frame(head)):
                if pos >= s.length:
                    return
                found = _frames_start(s, after=pos)
                if found is None:
                    return
                pos = found
                decoder.forget()  # what the lost blocks added is unknown
                block.clear()
                continue
            frame = h2.frame_header(head)
            headers = None
            if frame.type in (h2.HEADERS, h2.CONTINUATION):
                payload = s.read(pos + h2.FRAME_HEADER, frame.length)
                if len(payload) < frame.length:
                    decoder.forget()
                    block.clear()
                else:
                    if frame.type == h2.HEADERS:
                        block.clear()
                    block += h2.block_fragment(frame, payload)
                    if frame.flags & h2.END_HEADERS:
                        headers = decoder.decode(bytes(block))
            yield frame, pos, headers
            pos += h2.FRAME_HEADER + frame.length
    except h2.H2Error:
        return
    finally:
        tally.unseen_fields += decoder.unseen


def _frame(head: bytes) -> tuple[h2.FrameHeader, bool]:
    """A frame header, and whether its reserved bit is set."""
    return h2.frame_header(head), bool(head[5] & 0x80)


def _frames_start(s: Stream, after: int = -1) -> int | None:
    """Where HTTP/2 frames start after `after`: the first of the next segments to start a
    run of plausible frames that ends where a segment does (a frame spanning segments is
    followed to its end)."""
    first = bisect_right(s.start, after)
    for start in s.start[first : first + RESYNC_SEGMENTS]:
        pos = start
        for _ in range(FRAMES_TO_TRUST):
            head = s.read(pos, h2.FRAME_HEADER)
            if len(head) < h2.FRAME_HEADER or not h2.plausible(*_frame(head)):
                break
            pos += h2.FRAME_HEADER + h2.frame_header(head).length
            k = s.segment(pos - 1)
            if k >= 0 and s.end[k] == pos:
                return start
    return None


def _follow(
    s: Stream, pos: int, exchanges: dict[int, Exchange], from_client: bool, tally: Tally
) -> None:
    opened: dict[int, int] = {}  # stream -> offset of the HEADERS frame that began its block
    for frame, offset, headers in _frames(s, pos, tally):
        sid = frame.stream
        if frame.type == h2.HEADERS:
            opened[sid] = offset
        if headers is not None:
            _headers(s, exchanges, (sid, opened.get(sid, offset)), headers, from_client)
        if frame.type == h2.GOAWAY and not from_client:
            _unprocessed(s, exchanges, offset)
        e = exchanges.get(sid)
        if e is None:
            continue
        if frame.type == h2.DATA:
            if from_client:
                e.request_bytes += frame.length
            else:
                e.response_bytes += frame.length
        elif frame.type == h2.RST_STREAM and e.done_ts is None:
            e.ended, e.ended_by = HttpEnd.RESET, Side.CLIENT if from_client else Side.SERVER
            e.ended_ts = s.when(offset)
        if (
            frame.flags & h2.END_STREAM
            and frame.type in (h2.DATA, h2.HEADERS)
            and not from_client
            and e.response_ts is not None
        ):
            last = s.when(offset + h2.FRAME_HEADER + frame.length - 1)
            if last is not None:
                e.done_ts, e.ended = last, HttpEnd.COMPLETE


def _unprocessed(s: Stream, exchanges: dict[int, Exchange], offset: int) -> None:
    """A GOAWAY names the last stream the server will process: the streams after it were
    never taken up and clients send them again (RFC 9113 6.8), like a request that crossed
    an idle close."""
    last = int.from_bytes(s.read(offset + h2.FRAME_HEADER, 4).ljust(4, b"\xff"), "big")
    for sid, e in exchanges.items():
        if sid > last & 0x7FFFFFFF and e.response_ts is None:
            e.ended, e.ended_by, e.ended_ts = HttpEnd.CROSSED, Side.SERVER, s.when(offset)


def _headers(
    s: Stream,
    exchanges: dict[int, Exchange],
    where: tuple[int, int],
    headers: dict[str, str],
    from_client: bool,
) -> None:
    sid, offset = where
    if from_client:
        # a block with a request's pseudo-headers opens a stream (a trailer has none); those
        # a table entry set before the capture held read UNSEEN
        if sid not in exchanges and REQUEST_PSEUDO & headers.keys():
            request = {":method": h2.UNSEEN, ":path": h2.UNSEEN} | headers
            exchanges[sid] = Exchange("HTTP/2", sid, _when(s, offset), _row(s, offset), request)
        return
    status = headers.get(":status", "")
    e = exchanges.get(sid)
    if e is None:
        if not status:
            return
        # the answer to a request made before the capture began
        e = exchanges[sid] = Exchange("HTTP/2", sid, _when(s, offset), _row(s, offset), {})
    if status.startswith("1"):
        return  # interim
    if status and not e.response:
        e.response = headers
        e.response_ts, e.response_row = _when(s, offset), _row(s, offset)
    elif e.response:
        e.trailers = headers
