"""The common packets of a batch decoded in one C loop (`_plain.c`, built by pip where a
compiler is available): Ethernet, Linux cooked or raw IP, IPv4 or IPv6 without extension
headers, TCP or UDP that is not a tunnel, with length fields that fit the frame. The numpy
layers decode whatever it leaves, and all of a batch where it was not built;
tests/test_plain.py requires identical columns both ways."""

from __future__ import annotations

import numpy as np

from ktrace.decode.lead import KNOWN_WORDS
from ktrace.kernels import load, native
from ktrace.pcap.linktype import LinkType, normalise

# what the C loop calls each link type it takes
LINKS: dict[int, int] = {
    LinkType.EN10MB: 0,
    LinkType.LINUX_SLL: 1,
    LinkType.LINUX_SLL2: 2,
    LinkType.RAW: 3,
    LinkType.IPV4: 3,
    LinkType.IPV6: 3,
}
# the columns the C loop writes, in its argument order
COLUMNS = (
    "l3", "proto", "src", "dst", "sport", "dport", "tcp_flags", "seq", "ack", "win", "ipid",
    "ipflags", "paylen", "payoff", "phash",
)  # fmt: skip


_C = load("ktrace.kernels._plain")
_KNOWN = KNOWN_WORDS.astype(np.uint32).tobytes()


def decode_plain(
    window: np.ndarray,
    skip: int,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    linktype: int,
    out: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """Fill `out` (the batch's columns) for the rows the C loop takes: (taken, src6, dst6),
    the IPv6 rows' addresses as (n, 16) bytes (None when it took none); None when it cannot
    help (not built, or a link type it does not read)."""
    link = LINKS.get(normalise(linktype))
    c_part = native(_C)
    if c_part is None or link is None:
        return None
    n = len(caplen)
    taken = np.zeros(n, np.uint8)
    src6, dst6 = np.zeros((n, 16), np.uint8), np.zeros((n, 16), np.uint8)
    width = window.shape[1] - skip
    six = c_part.decode(
        np.ascontiguousarray(window),
        skip,
        width,
        np.ascontiguousarray(caplen, np.uint32),
        np.ascontiguousarray(wirelen, np.uint32),
        link,
        _KNOWN,
        *(out[name] for name in COLUMNS),
        src6,
        dst6,
        taken,
    )
    if not six:
        return taken.view(bool), None, None
    return taken.view(bool), src6, dst6
