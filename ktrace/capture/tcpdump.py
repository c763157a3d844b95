"""The tcpdump command ktrace runs remotely, and what it says on stderr.

The filter is passed as argv words after `"$@"`, never spliced into the shell text: the
shell only prints its own pid (so a second exec can stop tcpdump, as closing the stream
does not) and then becomes tcpdump.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from ktrace.errors import UsageError

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


def check_filter(bpf: str) -> None:
    """Compile the filter here before any container or pod is created for it: with the local
    tcpdump reading an empty capture (no privileges needed). Without a local tcpdump the first
    container's tcpdump is the judge."""
    exe = shutil.which("tcpdump")
    if not bpf or exe is None:
        return
    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
        empty.flush()
        done = subprocess.run(
            [exe, "-d", "-r", empty.name, bpf], capture_output=True, text=True, timeout=30
        )
    if done.returncode != 0:
        why = complaint(done.stderr).removeprefix("tcpdump: ")
        raise UsageError(f"the filter {bpf!r} does not compile: {why}", "see man pcap-filter")


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
        if ln.strip()
        and not ln.startswith(("ktrace-pid", "reading from file"))
        and "listening on" not in ln
    ]
    return lines[-1] if lines else "tcpdump wrote nothing"
