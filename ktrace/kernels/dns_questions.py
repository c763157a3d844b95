"""DNS questions read in bulk: the header and first question of many messages at once, straight
from the mapped captures, so that pairing queries with responses needs no Python per packet.

A DNS storm is hundreds of thousands of messages. Where it was built, a C loop (`_dns.c`) reads
each question in place; else each is read here as a fixed window of bytes gathered by numpy,
its question name walked label by label across all messages together and hashed lowercased.
Either way the whole message but its id is hashed (storms repeat a few messages), and names
longer than the window or starting with a compression pointer (legal, never seen from real
resolvers) take `question`/`parse_dns` one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ktrace.chunking import in_threads
from ktrace.decode.dns import COMPRESSED, NO_QUESTION, DnsError, parse_dns, question
from ktrace.decode.gather import gather
from ktrace.distinct import distinct
from ktrace.errors import Cancelled
from ktrace.kernels import load, native
from ktrace.kernels.mix import K1, K2, mix
from ktrace.pcap.hot import Buffer

HEADER = 12
NAME_SPAN = 128  # wire bytes of a question name read in bulk
WIDTH = HEADER + NAME_SPAN + 12  # the name, its type and class, in whole words
BODY_SPAN = 512  # messages up to this long are hashed in bulk (the classic UDP limit)
CHUNK = 4096  # messages gathered at once: the windows take about 2 MB


@dataclass(frozen=True, eq=False)
class Questions:
    """One entry per message; `ok` False for messages that are not DNS (the rest is 0)."""

    ident: np.ndarray  # uint16
    flags: np.ndarray  # uint16
    qtype: np.ndarray  # int32; dns.NO_QUESTION, or dns.COMPRESSED (the name decoded to compare)
    name: np.ndarray  # (n, 2) uint64: hash of the lowercased question name (0 without one)
    body: np.ndarray  # (n, 2) uint64: hash of the whole message but its id
    ok: np.ndarray  # bool


_C = load("ktrace.kernels._dns")


def read_questions(
    buffer: Callable[[int], Buffer],
    point: np.ndarray,
    start: np.ndarray,
    size: np.ndarray,
    cancel: threading.Event | None = None,
) -> Questions:
    """The question of each message at `start` (`size` bytes) in point `point`'s buffer."""
    n = len(start)
    out = Questions(
        ident=np.zeros(n, np.uint16),
        flags=np.zeros(n, np.uint16),
        qtype=np.zeros(n, np.int32),
        name=np.zeros((n, 2), np.uint64),
        body=np.zeros((n, 2), np.uint64),
        ok=np.zeros(n, bool),
    )
    c_part = native(_C)
    if c_part is not None:
        _read_compiled(c_part.questions, buffer, point, start, size, out, cancel)
        return out
    for lo in range(0, n, CHUNK):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        hi = min(lo + CHUNK, n)
        longest = int(size[lo:hi].max(initial=0))
        width = max(WIDTH, min(BODY_SPAN, -(-longest // 8) * 8))
        window = gather(buffer, point[lo:hi], start[lo:hi], width)
        # Bytes past the message are the next packet's: never read them as this one's.
        window[np.arange(width) >= size[lo:hi, None]] = 0
        slow = _parse_windows(window[:, :WIDTH], size[lo:hi], out, lo)
        _hash_bodies(window, size[lo:hi], out.body[lo:hi])
        long = np.flatnonzero(size[lo:hi] > width)
        questions = set(slow.tolist())
        for k in np.union1d(slow, long).tolist():
            at = int(start[lo + k])
            data = bytes(buffer(int(point[lo + k]))[at : at + int(size[lo + k])])
            if k in questions:
                _parse_one(data, out, lo + k)
            if len(data) > width:
                out.body[lo + k] = _digest(data[2:])
    return out


def _read_compiled(
    questions: Callable[..., None],
    buffer: Callable[[int], Buffer],
    point: np.ndarray,
    start: np.ndarray,
    size: np.ndarray,
    out: Questions,
    cancel: threading.Event | None,
) -> None:
    """The C loop (_dns.c), one point's buffer at a time; what it leaves is read one by one."""
    points = distinct(point).tolist()
    for p in points:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        data = buffer(p)
        if len(points) == 1:  # read and written in place: no copies as long as the messages
            sel = None
            at, length = np.ascontiguousarray(start, np.int64), np.ascontiguousarray(size, np.int64)
            slow = np.zeros(len(at), np.uint8)
            _in_place(questions, data, at, length, out, slow)
        else:
            sel = np.flatnonzero(point == p)
            at = np.ascontiguousarray(start[sel], np.int64)
            length = np.ascontiguousarray(size[sel], np.int64)
            m = len(sel)
            slow = np.zeros(m, np.uint8)
            ident, flags = np.zeros(m, np.uint16), np.zeros(m, np.uint16)
            qtype = np.zeros(m, np.int32)
            name, body = np.zeros((m, 2), np.uint64), np.zeros((m, 2), np.uint64)
            ok = np.zeros(m, np.uint8)
            questions(data, at, length, NAME_SPAN, ident, flags, qtype, name, body, ok, slow)
            out.ident[sel], out.flags[sel], out.qtype[sel] = ident, flags, qtype
            out.name[sel], out.body[sel], out.ok[sel] = name, body, ok.view(bool)
        for k in np.flatnonzero(slow).tolist():
            row = k if sel is None else int(sel[k])
            begin, end = int(at[k]), int(at[k] + length[k])
            message = bytes(data[begin:end])
            _parse_one(message, out, row)
            if end > len(data):  # cut by the end of the capture: the loop hashed nothing
                out.body[row] = _digest(message[2:])


def _in_place(
    questions: Callable[..., None],
    data: Buffer,
    at: np.ndarray,
    length: np.ndarray,
    out: Questions,
    slow: np.ndarray,
) -> None:
    """The C loop writing straight into `out`, its rows split across the cores."""
    fields = (out.ident, out.flags, out.qtype, out.name, out.body, out.ok.view(np.uint8))

    def read(lo: int, hi: int) -> None:
        parts = (f[lo:hi] for f in fields)
        questions(data, at[lo:hi], length[lo:hi], NAME_SPAN, *parts, slow[lo:hi])

    in_threads(len(at), read)


def _hash_bodies(window: np.ndarray, size: np.ndarray, out: np.ndarray) -> None:
    """A 128-bit hash of each message but its id (bytes 0-1), for spotting repeats."""
    window[:, :2] = 0
    words = window.view(np.uint64)
    used = int(-(-int(size.max(initial=0)) // 8))
    cols = [size, *(words[:, j] for j in range(min(used, words.shape[1])))]
    out[:, 0] = mix(cols, len(window), K1)
    out[:, 1] = mix(cols, len(window), K2)


def _digest(data: bytes) -> np.ndarray:
    import hashlib  # here: its OpenSSL binding costs 3 ms at every start, and few need it

    return np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), np.uint64)


def _parse_windows(window: np.ndarray, size: np.ndarray, out: Questions, lo: int) -> np.ndarray:
    """Fill `out` from lo for the messages whose question lies in their window; return the
    positions (in this chunk) of those that need the one-by-one parse."""
    n = len(window)
    rows = np.arange(n)
    size = size.astype(np.int64)
    w16 = window[:, :6].astype(np.uint16)
    qdcount = (w16[:, 4] << 8) | w16[:, 5]
    none = (size >= HEADER) & (qdcount == 0)
    bad = (size < 17) | (qdcount == 0)
    slow = np.zeros(n, bool)
    done = np.zeros(n, bool)
    off = np.full(n, HEADER, np.int64)
    while True:
        active = ~(done | slow | bad)
        if not active.any():
            break
        length = window[rows, np.minimum(off, WIDTH - 1)]
        ends = active & (length == 0)
        done |= ends
        slow |= active & (length & 0xC0 != 0)
        step = active & ~ends & (length & 0xC0 == 0)
        off[step] += length[step].astype(np.int64) + 1
        bad |= step & (off >= size)
        slow |= step & ~bad & (off >= HEADER + NAME_SPAN)
    bad |= done & (off + 5 > size)
    good = done & ~bad
    name = window[:, HEADER : HEADER + NAME_SPAN].copy()
    name[np.arange(NAME_SPAN) >= (off - HEADER)[:, None]] = 0
    name += ((name >= 65) & (name <= 90)).view(np.uint8) * np.uint8(32)  # ASCII lowercase
    words = name.view(np.uint64)
    used = int((off[good].max() - HEADER + 7) // 8) if good.any() else 0
    cols = [words[:, j] for j in range(used)]
    tail = window[rows, np.minimum(off + 1, WIDTH - 2)].astype(np.int32) << 8
    qtype = tail | window[rows, np.minimum(off + 2, WIDTH - 1)]
    at = slice(lo, lo + n)
    header = good | none
    out.ok[at] = header
    out.ident[at] = np.where(header, (w16[:, 0] << 8) | w16[:, 1], 0)
    out.flags[at] = np.where(header, (w16[:, 2] << 8) | w16[:, 3], 0)
    out.qtype[at] = np.where(good, qtype, np.where(none, NO_QUESTION, 0))
    out.name[at, 0] = np.where(good, mix([off, *cols], n, K1), 0)
    out.name[at, 1] = np.where(good, mix([off, *cols], n, K2), 0)
    return np.flatnonzero(slow & ~bad)


def _parse_one(data: bytes, out: Questions, k: int) -> None:
    try:
        ident, flags, qwire, qtype = question(data)
        if qtype == COMPRESSED:
            qwire = parse_dns(data).qname.lower().encode()
    except DnsError:
        return
    out.ok[k] = True
    out.ident[k], out.flags[k], out.qtype[k] = ident, flags, qtype
    out.name[k] = _digest(qwire.lower()) if qtype != NO_QUESTION else 0
