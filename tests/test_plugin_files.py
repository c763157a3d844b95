"""plugins/: the krew manifest names the sha256 of the archive its script builds, the
launcher runs ktrace, and the k9s plugins hold only keys k9s knows and commands ktrace parses."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import subprocess
import sysconfig
import tarfile
from pathlib import Path

import yaml

from ktrace import __version__
from ktrace.cli import build_parser

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
# k9s's plugins.json schema: the keys a plugin may have, and those it must
K9S_KEYS = {
    "shortCut", "override", "description", "confirm", "dangerous", "scopes", "command",
    "background", "overwriteOutput", "args", "inputs",
}  # fmt: skip
K9S_REQUIRED = {"shortCut", "description", "scopes", "command"}


def krew_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("krew", PLUGINS / "krew.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_krew_manifest_names_the_archive_it_describes() -> None:
    krew = krew_module()
    data = krew.archive()
    assert krew.archive() == data  # reproducible, so the sha256 can be checked
    manifest = yaml.safe_load((PLUGINS / "ktrace.yaml").read_text())
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "ktrace"
    assert manifest["spec"]["version"] == f"v{__version__}"
    platform = manifest["spec"]["platforms"][0]
    assert platform["sha256"] == hashlib.sha256(data).hexdigest(), "run python plugins/krew.py"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        launcher = tar.getmember("ktrace/kubectl-ktrace")
    assert {f["from"] for f in platform["files"]} <= names
    assert platform["bin"] == "kubectl-ktrace" and launcher.mode & 0o111


def test_launcher_runs_ktrace() -> None:
    env = dict(os.environ, PATH=f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        [str(PLUGINS / "kubectl-ktrace"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ktrace {__version__}"


def test_k9s_plugins_are_valid_and_call_real_commands() -> None:
    plugins = yaml.safe_load((PLUGINS / "k9s-ktrace.yaml").read_text())["plugins"]
    assert plugins
    keys = [p["shortCut"] for p in plugins.values()]
    assert len(keys) == len(set(keys))
    for name, plugin in plugins.items():
        assert set(plugin) <= K9S_KEYS, name
        assert set(plugin) >= K9S_REQUIRED, name
        assert plugin["command"] == "kubectl" and plugin["args"][0] == "ktrace"
        values = {"$NAME": "web-1", "$NAMESPACE": "default", "$CONTEXT": "lab"}
        args = [values.get(a, a) for a in plugin["args"][1:]]
        parsed = build_parser().parse_args(args)  # exits on an unknown flag
        assert parsed.namespace == "default" and parsed.context == "lab"
