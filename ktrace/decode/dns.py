"""DNS messages (RFC 1035) parsed defensively: compression loops, out-of-bounds pointers and
truncated records end the parse with what was read, never an exception to the caller."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    41: "OPT",
    65: "HTTPS",
    255: "ANY",
    64: "SVCB",
}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_POINTERS = 32  # more jumps than labels can legitimately need means a loop
DNS_PORT = 53
QR = 0x8000  # the header flag set in a response
# question types that are no type: a message without a question (inverse queries, FORMERR
# answers to junk), and a first name that is compressed (legal, rare: decoded to compare)
NO_QUESTION = -1
COMPRESSED = -2


class DnsError(ValueError):
    """A message that cannot be parsed (the caller keeps what it could read)."""


@dataclass(frozen=True)
class Answer:
    """One answer record: its name, type, TTL and data as text."""

    name: str
    type: str
    ttl: int
    data: str


@dataclass(frozen=True)
class DnsMessage:
    """A DNS message parsed whole: header, question and answers."""

    id: int
    response: bool
    opcode: int
    rcode: int
    truncated: bool
    qname: str
    qtype: str
    answers: tuple[Answer, ...]
    complete: bool  # False when the message ended early or was malformed past the question


def type_name(value: int) -> str:
    return TYPES.get(value, f"TYPE{value}")


def rcode_name(value: int) -> str:
    return RCODES.get(value, f"RCODE{value}")


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    """(name, offset after the name in the original position)."""
    labels: list[str] = []
    jumps = 0
    end = -1
    seen = 0
    while True:
        if off >= len(msg):
            raise DnsError("name runs past the end of the message")
        length = msg[off]
        if length & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("compression pointer cut short")
            target = ((length & 0x3F) << 8) | msg[off + 1]
            if end < 0:
                end = off + 2
            jumps += 1
            if jumps > MAX_POINTERS or target >= len(msg):
                raise DnsError("compression pointer loops or points outside the message")
            off = target
            continue
        if length & 0xC0:
            raise DnsError("unsupported label type")
        off += 1
        if length == 0:
            break
        label = msg[off : off + length]
        if len(label) < length:
            raise DnsError("label runs past the end of the message")
        seen += length + 1
        if seen > 255:
            raise DnsError("name longer than 255 bytes")
        labels.append(label.decode("ascii", "backslashreplace"))
        off += length
    # Presented without the trailing dot, as tshark and most DNS logs print query names.
    return ".".join(labels) if labels else "<root>", (end if end >= 0 else off)


def question(msg: bytes) -> tuple[int, int, bytes, int]:
    """(id, flags, query name in wire format, qtype) without decoding the name: the fast path
    for pairing queries with responses. The name of the first question is almost never
    compressed (then qtype is COMPRESSED); a message without one has NO_QUESTION."""
    if len(msg) < 12:
        raise DnsError(f"message of {len(msg)} bytes is shorter than a DNS header")
    ident, flags, qd = struct.unpack_from("!HHH", msg, 0)
    if qd == 0:
        return ident, flags, b"", NO_QUESTION
    if len(msg) < 17:
        raise DnsError(f"message of {len(msg)} bytes is too short for a DNS question")
    off = 12
    end = len(msg)
    while True:
        if off >= end:
            raise DnsError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            break
        if n & 0xC0:
            return ident, flags, b"", COMPRESSED  # unusual: let parse_dns decide
        off += n + 1
    if off + 5 > end:
        raise DnsError("question cut short")
    return ident, flags, msg[12 : off + 1], (msg[off + 1] << 8) | msg[off + 2]


def _rdata(msg: bytes, rtype: int, start: int, rdlen: int) -> str:
    data = msg[start : start + rdlen]
    if rtype == 1 and rdlen == 4:
        return str(ipaddress.IPv4Address(data))
    if rtype == 28 and rdlen == 16:
        return str(ipaddress.IPv6Address(data))
    if rtype in (2, 5, 12):
        return read_name(msg, start)[0]
    if rtype == 33 and rdlen >= 6:
        prio, weight, port = struct.unpack_from("!HHH", msg, start)
        return f"{prio} {weight} {port} {read_name(msg, start + 6)[0]}"
    return data.hex()


def parse_dns(msg: bytes) -> DnsMessage:
    """Parse one DNS message; raises DnsError only when even the header/question is unusable."""
    if len(msg) < 12:
        raise DnsError(f"message of {len(msg)} bytes is shorter than a DNS header")
    ident, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", msg, 0)
    qname, qtype = "", ""
    off = 12
    complete = True
    if qd:
        qname, off = read_name(msg, off)
        if off + 4 > len(msg):
            raise DnsError("question cut short")
        qtype = type_name(struct.unpack_from("!H", msg, off)[0])
        off += 4
        for _ in range(qd - 1):  # multi-question messages are legal but never seen in practice
            try:
                _, off = read_name(msg, off)
                off += 4
            except DnsError:
                complete = False
                break
    answers: list[Answer] = []
    for _ in range(an):
        try:
            name, off = read_name(msg, off)
            if off + 10 > len(msg):
                raise DnsError("record cut short")
            rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            if off + rdlen > len(msg):
                raise DnsError("record data cut short")
            answers.append(Answer(name, type_name(rtype), ttl, _rdata(msg, rtype, off, rdlen)))
            off += rdlen
        except (DnsError, ValueError):
            complete = False
            break
    return DnsMessage(
        id=ident,
        response=bool(flags & QR),
        opcode=(flags >> 11) & 15,
        rcode=flags & 15,
        truncated=bool(flags & 0x0200),
        qname=qname,
        qtype=qtype,
        answers=tuple(answers),
        complete=complete,
    )
