"""Server side of the exec/attach WebSocket, as the apiserver speaks it (RFC 6455 framing,
channel byte first, binary frames only, v5 adds the [255, channel] close signal)."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def choose_protocol(offered: str) -> str | None:
    """The first protocol of the client's list that we speak, as wsstream's handshake does."""
    for name in (p.strip() for p in offered.split(",")):
        if name in PROTOCOLS:
            return name
    return None


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


@dataclass
class Frame:
    opcode: int
    payload: bytes


class FrameReader:
    """Client frames (masked) from a socket; partial input stays buffered between calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def feed(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def frames(self) -> list[Frame]:
        out = []
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
            masked = b1 & 0x80
            end = pos + (4 if masked else 0) + n
            if len(self.buf) < end:
                break
            payload = bytes(self.buf[end - n : end])
            if masked:
                mask = self.buf[pos : pos + 4]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            del self.buf[:end]
            out.append(Frame(b0 & 0x0F, payload))
        return out
