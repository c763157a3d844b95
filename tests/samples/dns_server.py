"""A tiny authoritative DNS server for the sample recordings: answers A/AAAA for the names it
knows, NXDOMAIN for the rest of its zone, and never answers names in its black hole.

Usage: python -m tests.samples.dns_server ADDR ZONE_JSON
ZONE_JSON: {"records": {"web.example": {"A": "10.77.0.2", "AAAA": "fd77::2"}},
            "blackhole": ["blackhole.example"]}
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys

TYPES = {"A": 1, "AAAA": 28}


def qname(msg: bytes) -> tuple[str, int]:
    labels, off = [], 12
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1 : off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels).lower(), off + 1


def reply(msg: bytes, zone: dict) -> bytes | None:  # type: ignore[type-arg]
    name, off = qname(msg)
    if name in zone["blackhole"]:
        return None
    qtype = struct.unpack_from("!H", msg, off)[0]
    question = msg[12 : off + 4]
    records = zone["records"].get(name)
    answers = b""
    count = 0
    if records is not None:
        for tname, value in records.items():
            if TYPES[tname] == qtype:
                data = ipaddress.ip_address(value).packed
                answers += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 30, len(data)) + data
                count += 1
    rcode = 0 if records is not None else 3
    flags = 0x8400 | (msg[2] & 1) << 8 | rcode  # response, authoritative, copy RD
    return (
        struct.pack("!HHHHHH", struct.unpack_from("!H", msg)[0], flags, 1, count, 0, 0)
        + question
        + answers
    )


def main() -> None:
    addr, zone_json = sys.argv[1], sys.argv[2]
    zone = json.loads(zone_json)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((addr, 53))
    print("ready", flush=True)
    while True:
        msg, peer = sock.recvfrom(4096)
        try:
            out = reply(msg, zone)
        except (IndexError, struct.error, UnicodeDecodeError, KeyError):
            continue
        if out is not None:
            sock.sendto(out, peer)


if __name__ == "__main__":
    main()
