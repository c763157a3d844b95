"""Build the krew release archive and write the krew manifest that names its sha256.

    python plugins/krew.py [OUTDIR]     (default: dist/)

The archive holds the `kubectl-ktrace` launcher, which runs the ktrace Python package
(installed with pip); it is built byte for byte the same every time (fixed mtimes and
owners, gzip without a timestamp), so the manifest's sha256 can be checked in tests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOMEPAGE = "https://github.com/ktrace-dev/ktrace"


def version() -> str:
    for line in (ROOT / "ktrace" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise SystemExit("no __version__ in ktrace/__init__.py")


def archive() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("kubectl-ktrace", 0o755), ("k9s-ktrace.yaml", 0o644)):
            data = (HERE / name).read_bytes()
            info = tarfile.TarInfo(f"ktrace/{name}")
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def manifest(v: str, sha256: str) -> str:
    return f"""apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: ktrace
spec:
  version: v{v}
  homepage: {HOMEPAGE}
  shortDescription: Capture pod traffic in pods and on nodes, find where packets die
  description: |
    ktrace captures a pod's traffic inside its network namespace (an ephemeral
    container running tcpdump) and on its node (the pod's veth, the node NIC, the
    overlay device), into one bundle; it correlates the same packets across those
    points, before and after Service DNAT and inside VXLAN/Geneve/IPIP, and says
    where they were lost. `kubectl ktrace dns` checks DNS as the pod sees it;
    `kubectl ktrace trace` sends one probe and shows its path.
  caveats: |
    This plugin runs the ktrace Python package: install it with
      pip install ktrace        (Python 3.11 or newer)
    Node captures create short-lived pods with hostNetwork and NET_ADMIN/NET_RAW:
    they need a namespace whose PodSecurity level is privileged (--node-namespace).
    Ephemeral containers cannot be removed from a pod; ktrace ends them when done.
  platforms:
  - selector:
      matchExpressions:
      - key: os
        operator: In
        values: [linux, darwin]
    uri: {HOMEPAGE}/releases/download/v{v}/ktrace-krew-v{v}.tar.gz
    sha256: {sha256}
    files:
    - from: ktrace/kubectl-ktrace
      to: .
    - from: ktrace/k9s-ktrace.yaml
      to: .
    bin: kubectl-ktrace
"""


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"
    out.mkdir(parents=True, exist_ok=True)
    v = version()
    data = archive()
    (out / f"ktrace-krew-v{v}.tar.gz").write_bytes(data)
    (HERE / "ktrace.yaml").write_text(manifest(v, hashlib.sha256(data).hexdigest()))
    print(f"{out / f'ktrace-krew-v{v}.tar.gz'} and plugins/ktrace.yaml written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
