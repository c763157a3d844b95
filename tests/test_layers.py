"""The core runs headless: pcap, decode (but deep.py), kernels, analysis, report and bundle import
neither textual, kubernetes nor scapy, checked in a fresh interpreter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

WALKER = {"ktrace/pcap/hot.py", "ktrace/pcap/source.py"}

CODE = """
import importlib, pkgutil, sys
import ktrace
core = []
for mod in pkgutil.walk_packages(ktrace.__path__, 'ktrace.'):
    name = mod.name
    layer = name.split('.')[1]
    core_layer = layer in ('pcap', 'decode', 'kernels', 'analysis', 'report', 'bundle')
    if core_layer and name != 'ktrace.decode.deep':
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


def test_no_function_in_ktrace_is_over_80_lines() -> None:
    """Long functions do several jobs: split them (issue 11's rule, checked, not hoped for)."""
    import ast

    long = []
    for path in sorted((REPO / "ktrace").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long


def test_every_class_in_ktrace_has_a_name_of_its_own() -> None:
    """A name says what it holds: two `Progress` classes (indexing, a capture's stderr line)
    make a reader open both files to learn which one an import means."""
    import ast
    from collections import defaultdict

    where = defaultdict(list)
    for path in sorted((REPO / "ktrace").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_c_or_numpy_is_chosen_only_in_the_speed_wing() -> None:
    """Domain modules call the wing's plain functions; only ktrace/kernels/ (and the record
    walker, which stays with pcap/) loads a C part or asks whether it is in use."""
    import ast

    choosing = []
    for path in sorted((REPO / "ktrace").rglob("*.py")):
        where = path.relative_to(REPO).as_posix()
        if where.startswith("ktrace/kernels/") or where in WALKER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ktrace.kernels":
                names = {a.name for a in node.names}
                if names & {"load", "native", "twins_only"}:
                    choosing.append(f"{where}:{node.lineno}")
            named_c = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if named_c and re.fullmatch(r"ktrace\.[a-z.]+\._[a-z]+", node.value):  # a C module
                choosing.append(f"{where}:{node.lineno}")
    assert choosing == []


def test_every_c_part_is_built_where_a_compiler_exists() -> None:
    from ktrace.kernels import dns_questions, json_rows, mix, plain, sequence, sorting, tally

    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the twins are the ones in use")
    parts = (dns_questions, json_rows, mix, plain, sequence, sorting, tally)
    assert [m.__name__ for m in parts if m._C is None] == []


def test_screens_know_the_app_only_as_a_workbench() -> None:
    """Screens ask the app through tui/workbench.py, never by importing the App."""
    import ast

    reaching = []
    for path in sorted((REPO / "ktrace" / "tui" / "screens").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ktrace.tui.app":
                reaching.append(f"{path.name}:{node.lineno}")
    assert reaching == []


def test_the_c_walker_is_built_where_a_compiler_exists() -> None:
    from ktrace.pcap import hot

    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the Python walker is the one in use")
    assert hot.walk_c is not None
