"""The lab's MetalLB L2 speaker: answers ARP requests for LoadBalancer addresses from the node
that announces them, and sends a gratuitous ARP for each at start, as a speaker does after an
election. The data path is then the node's own: kube-proxy's rules for the address.

Run inside a node's namespace:
    python -m tests.lab.announce IFACE ADDRESS...
It prints "ready" once listening.
"""

from __future__ import annotations

import socket
import struct
import sys

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _arp(op: int, mac: bytes, ip: bytes, to_mac: bytes, to_ip: bytes) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip, to_mac, to_ip)


def serve(iface: str, addresses: list[str]) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((iface, ETH_P_ARP))
    mac = s.getsockname()[4]
    mine = {socket.inet_aton(a) for a in addresses}
    kind = struct.pack("!H", ETH_P_ARP)
    for ip in mine:
        s.send(BROADCAST + mac + kind + _arp(2, mac, ip, BROADCAST, ip))
    print("ready", flush=True)
    while True:
        frame = s.recv(2048)
        if len(frame) < 42:
            continue
        _, _, _, _, op, sender_mac, sender_ip, _, target_ip = struct.unpack(
            "!HHBBH6s4s6s4s", frame[14:42]
        )
        if op == 1 and target_ip in mine:
            reply = _arp(2, mac, target_ip, sender_mac, sender_ip)
            s.send(sender_mac + mac + kind + reply)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
