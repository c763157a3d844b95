"""What a TCP payload's first four bytes say it starts: an HTTP/1.x message, the HTTP/2
preface or a frame, or a TLS record. Read by the index decoder while the header windows are in
hand, so that finding the connections worth reassembling costs no second pass over the capture."""

from __future__ import annotations

import numpy as np

from ktrace.decode.h2 import FRAME_LENGTH_HIGH, LAST_FRAME_TYPE
from ktrace.decode.http1 import STARTS
from ktrace.decode.tls import ALERT, HANDSHAKE

# TLS records start with their type and major version 3; the minor is 0-4
TLS_WORDS = np.array([(kind << 8 | 3) for kind in (HANDSHAKE, ALERT)], np.uint32)
KNOWN_WORDS = np.array(sorted(STARTS), np.uint32)


def starts_surely(words: np.ndarray) -> np.ndarray:
    """Per big-endian word: it starts an HTTP/1.x message of a common method, an answer,
    the HTTP/2 preface or a TLS record: shapes random bytes take about once in a million.
    The rest of looks_like_app (any method, an HTTP/2 frame) random bytes take about once
    in ten thousand: a bulk transfer's segments do."""
    at = np.searchsorted(KNOWN_WORDS, words).clip(max=len(KNOWN_WORDS) - 1)
    known = KNOWN_WORDS[at] == words
    return known | (np.isin(words >> 16, TLS_WORDS) & (((words >> 8) & 0xFF) <= 4))


def looks_like_app(words: np.ndarray) -> np.ndarray:
    """Per big-endian word: it starts an HTTP/1.x message, the HTTP/2 preface or a TLS
    record, or could start a request of another method (http1.method_like) or an HTTP/2
    frame (h2.frame_like: a connection that began before the capture)."""
    # a lookup in the sorted words: np.isin sorts the two together, and imports numpy.ma
    b = [((words >> shift) & 0xFF).astype(np.uint8) for shift in (24, 16, 8, 0)]
    upper = [(x >= 65) & (x <= 90) for x in b]
    token = [u | (x == 45) | (x == 95) for u, x in zip(upper, b, strict=True)]
    method = upper[0] & token[1] & token[2] & (token[3] | (b[3] == 32))
    frame = (b[0] == 0) & (b[1] <= FRAME_LENGTH_HIGH) & (b[3] <= LAST_FRAME_TYPE)
    return starts_surely(words) | method | frame
