"""What a TLS handshake shows in clear (RFC 8446, 5246): the ClientHello's server name and
offered protocols, the ServerHello's version and chosen protocol, and alerts sent before
encryption starts. Nothing is decrypted."""

from __future__ import annotations

import struct
from dataclasses import dataclass

HANDSHAKE = 22
ALERT = 21
CHANGE_CIPHER_SPEC = 20
CLIENT_HELLO = 1
SERVER_HELLO = 2
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
            0x0304: "TLS 1.3"}  # fmt: skip
ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security",
    80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    113: "bad_certificate_status_response", 115: "unknown_psk_identity",
    116: "certificate_required", 120: "no_application_protocol",
}  # fmt: skip


class NotTls(ValueError):
    pass


@dataclass(frozen=True)
class Hello:
    """A ClientHello (offered ALPN) or ServerHello (chosen ALPN, negotiated version)."""

    server: bool
    version: str  # the highest offered (client) or the negotiated (server)
    sni: str = ""
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alert:
    """A TLS alert: its level and what it says."""

    level: str  # warning | fatal
    description: str


def looks_like_tls(first: bytes) -> bool:
    """A handshake or alert record of TLS 1.0-1.3 (SSL 3.0 too) starts these bytes."""
    return len(first) >= 3 and first[0] in (HANDSHAKE, ALERT) and first[1] == 3 and first[2] <= 4


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """The whole records at the start of a stream, (content type, offset, body), until
    encryption starts (a ChangeCipherSpec) or the bytes end."""
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos + 5 <= len(data):
        kind, major, length = data[pos], data[pos + 1], struct.unpack_from("!H", data, pos + 3)[0]
        if kind not in (HANDSHAKE, ALERT, CHANGE_CIPHER_SPEC) or major != 3:
            if not out:
                raise NotTls("not a TLS record")
            break
        if kind == CHANGE_CIPHER_SPEC or pos + 5 + length > len(data):
            break
        out.append((kind, pos, data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def alert(body: bytes) -> Alert | None:
    """A plaintext alert; None for one too short (an encrypted one is longer than two bytes)."""
    if len(body) != 2:
        return None
    return Alert("fatal" if body[0] == 2 else "warning", ALERTS.get(body[1], f"alert {body[1]}"))


def hello(body: bytes) -> Hello | None:
    """The hello at the start of a handshake record, or None when it is another message."""
    if len(body) < 38 or body[0] not in (CLIENT_HELLO, SERVER_HELLO):
        return None
    server = body[0] == SERVER_HELLO
    legacy = struct.unpack_from("!H", body, 4)[0]
    pos = 38
    try:
        pos += 1 + body[pos]  # session id
        if server:
            pos += 3  # cipher suite, compression
        else:
            pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
            pos += 1 + body[pos]  # compression methods
        extensions = _extensions(body, pos)
    except (IndexError, struct.error):
        extensions = {}
    versions = _versions(extensions.get(EXT_SUPPORTED_VERSIONS, b""), server)
    known = [v for v in versions if v in VERSIONS]
    # the highest known one; else what was selected or offered first (a draft, an experiment)
    version = max(known) if known else versions[0] if versions else legacy
    return Hello(
        server,
        version_name(version),
        _server_name(extensions.get(EXT_SERVER_NAME, b"")),
        _alpn(extensions.get(EXT_ALPN, b"")),
    )


def _extensions(body: bytes, pos: int) -> dict[int, bytes]:
    if pos + 2 > len(body):
        return {}
    end = min(len(body), pos + 2 + struct.unpack_from("!H", body, pos)[0])
    pos += 2
    out = {}
    while pos + 4 <= end:
        kind, length = struct.unpack_from("!HH", body, pos)
        out[kind] = body[pos + 4 : pos + 4 + length]
        pos += 4 + length
    return out


def version_name(code: int) -> str:
    """A version as tshark names it: the draft number of a TLS 1.3 draft, else its code."""
    if code in VERSIONS:
        return VERSIONS[code]
    if code >> 8 == 0x7F:
        return f"TLS 1.3 (draft {code & 0xFF})"
    return f"0x{code:04x}"


def _versions(ext: bytes, server: bool) -> list[int]:
    """The selected version (server) or the offered ones in order (client), GREASE left out."""
    if server:
        return [struct.unpack_from("!H", ext)[0]] if len(ext) == 2 else []
    if not ext:
        return []
    listed = ext[1 : 1 + ext[0]]
    found = [struct.unpack_from("!H", listed, k)[0] for k in range(0, len(listed) - 1, 2)]
    return [v for v in found if not _grease(v)]


def _grease(code: int) -> bool:
    """RFC 8701's reserved values, 0x0A0A, 0x1A1A ... 0xFAFA: sent to keep peers tolerant."""
    return code & 0x0F0F == 0x0A0A and code >> 8 == code & 0xFF


def _server_name(ext: bytes) -> str:
    pos = 2
    while pos + 3 <= len(ext):
        kind, length = ext[pos], struct.unpack_from("!H", ext, pos + 1)[0]
        if kind == 0:
            return ext[pos + 3 : pos + 3 + length].decode("ascii", "replace")
        pos += 3 + length
    return ""


def _alpn(ext: bytes) -> tuple[str, ...]:
    out = []
    pos = 2
    while pos < len(ext):
        length = ext[pos]
        out.append(ext[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    return tuple(out)
