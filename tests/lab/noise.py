"""The traffic every real cluster carries besides the incident, for the lab: kubelet-style
HTTP probes, background requests between pods, and IPv6 link-local chatter (router
solicitations, and multicast pings whose answers set off neighbour discovery).

Run inside a namespace:
    python -m tests.lab.noise http URL... [--every S]
    python -m tests.lab.noise linklocal IFACE [--every S]
It prints "ready" once running and never stops on errors: noise must not fail a scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import time
import urllib.error
import urllib.request

RS = struct.pack("!BBHI", 133, 0, 0, 0)  # router solicitation; the kernel fills the checksum


def http(urls: list[str], every: float) -> None:
    print("ready", flush=True)
    while True:
        for url in urls:
            try:
                urllib.request.urlopen(url, timeout=1).read()
            except urllib.error.HTTPError as exc:
                exc.read()  # as kubelet does: the body is read, the connection closed cleanly
            except OSError:
                pass
        time.sleep(every)


def linklocal(iface: str, every: float) -> None:
    index = socket.if_nametoindex(iface)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # as ND requires
    print("ready", flush=True)
    seq = 0
    while True:
        seq = (seq + 1) & 0xFFFF
        echo = struct.pack("!BBHHH", 128, 0, 0, 0x6C61, seq) + b"lab noise"
        for message, group in ((RS, "ff02::2"), (echo, "ff02::1")):
            # the link-local address is still tentative (DAD) for a second or two
            with contextlib.suppress(OSError):
                s.sendto(message, (group, 0, 0, index))
        time.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.noise")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("http")
    p.add_argument("urls", nargs="+")
    p.add_argument("--every", type=float, default=1.0)
    p = sub.add_parser("linklocal")
    p.add_argument("iface")
    p.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    if args.kind == "http":
        http(args.urls, args.every)
    else:
        linklocal(args.iface, args.every)


if __name__ == "__main__":
    main()
