"""The core runs headless: pcap, decode (but deep.py), analysis and report import neither
textual, kubernetes nor scapy, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import importlib, pkgutil, sys
import ktrace
core = []
for mod in pkgutil.walk_packages(ktrace.__path__, 'ktrace.'):
    name = mod.name
    layer = name.split('.')[1]
    if layer in ('pcap', 'decode', 'analysis', 'report') and name != 'ktrace.decode.deep':
        importlib.import_module(name)
        core.append(name)
print(len(core))
print(sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'kubernetes', 'scapy'}))
"""


def test_core_imports_no_ui_cluster_or_scapy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=True
    )
    count, heavy = out.stdout.splitlines()
    assert int(count) >= 20  # the walk really found the core modules
    assert heavy == "[]"


def test_only_kube_imports_kubernetes() -> None:
    """The cluster client stays behind ktrace/kube/; the rest calls its functions."""
    root = Path(__file__).resolve().parents[1] / "ktrace"
    importers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if any(
            line.strip().startswith(("import kubernetes", "from kubernetes"))
            for line in path.read_text().splitlines()
        )
    )
    assert importers and all(name.startswith("kube/") for name in importers), importers
