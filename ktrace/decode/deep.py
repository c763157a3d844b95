"""Full dissection of one packet with scapy: the only core module that imports it (~0.7 s),
and only when a user asks to look inside a packet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ktrace.pcap.linktype import normalise


@dataclass(frozen=True)
class Layer:
    name: str
    fields: tuple[tuple[str, str], ...]


def _scapy() -> Any:
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    import scapy.all as scapy
    from scapy.main import load_contrib

    load_contrib("geneve")  # binds UDP 6081; VXLAN 4789 and flannel's 8472 are bound already
    return scapy


def dissect(raw: bytes, linktype: int) -> Any:
    scapy = _scapy()
    cls = scapy.conf.l2types.get(normalise(linktype), scapy.conf.raw_layer)
    return cls(raw)


def layers(packet: Any) -> list[Layer]:
    out = []
    layer = packet
    while layer is not None and layer.name != "NoPayload":
        shown = []
        for f in layer.fields_desc:
            value = layer.getfieldval(f.name)
            shown.append((f.name, f.i2repr(layer, value)))
        out.append(Layer(layer.name, tuple(shown)))
        layer = layer.payload if layer.payload and layer.payload.name != "NoPayload" else None
    return out


def hexdump(raw: bytes) -> str:
    return str(_scapy().hexdump(raw, dump=True))


def show(raw: bytes, linktype: int) -> str:
    """The layer tree and a hex/ASCII dump, as text."""
    scapy = _scapy()
    packet = dissect(raw, linktype)
    tree = packet.show(dump=True)
    return f"{tree}\n{scapy.hexdump(raw, dump=True)}"
