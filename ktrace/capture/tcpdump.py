"""The tcpdump command ktrace runs remotely, and what it says on stderr.

The filter is passed as argv words after `"$@"`, never spliced into the shell text: the
shell only prints its own pid (so a second exec can stop tcpdump, as closing the stream
does not) and then becomes tcpdump.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PID_LINE = re.compile(rb"ktrace-pid (\d+)\n")
STATS = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")
WRAPPER = 'echo "ktrace-pid $$" >&2; exec tcpdump "$@"'
# The kubelet's port: on a node NIC the capture's own stream would be captured otherwise
KUBELET_PORT = 10250
ENCAPSULATION = "udp port 4789 or udp port 8472 or udp port 6081 or ip proto 4"
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",
}


def node_filter(user: str, encapsulated: bool) -> str:
    """On a node NIC the pod's packets travel inside the overlay, where the user's filter
    cannot see them: keep the tunnel too. And never the kubelet's own streams."""
    keep = f"not tcp port {KUBELET_PORT}"
    if not user:
        return keep
    wanted = f"({user}) or ({ENCAPSULATION})" if encapsulated else f"({user})"
    return f"({wanted}) and {keep}"


def command(interface: str, bpf: str, count: int | None = None) -> list[str]:
    argv = ["sh", "-c", WRAPPER, "ktrace", "-i", interface, "-n", "-U", "-s", "0"]
    argv += ["--immediate-mode", "--time-stamp-precision=nano", "-w", "-"]
    if count:
        argv += ["-c", str(count)]
    if bpf:
        argv.append(bpf)
    return argv


@dataclass(frozen=True)
class Stats:
    captured: int | None = None
    received: int | None = None
    dropped: int | None = None


def parse_stats(stderr: str) -> Stats:
    found = {kind.split()[0]: int(n) for n, kind in STATS.findall(stderr)}
    return Stats(found.get("captured"), found.get("received"), found.get("dropped"))


def complaint(stderr: str) -> str:
    """tcpdump's own error line, for a capture that never started."""
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith("ktrace-pid") and "listening on" not in ln
    ]
    return lines[-1] if lines else "tcpdump wrote nothing"
