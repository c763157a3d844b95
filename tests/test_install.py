"""What a user gets from the README's install: a wheel built from this tree, installed into a
fresh virtual environment (not an editable install, whose files are the source tree), run
from a directory where the source tree cannot stand in for it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PCAPS, REPO
from tests.tmux import Tmux

pytestmark = pytest.mark.slow
POLICY = PCAPS / "lab" / "policy-drop"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
    )
    return next(out.glob("ktrace-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("venv") / "ktrace"
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", str(root)], check=True)
    subprocess.run([root / "bin" / "pip", "install", "-q", str(wheel)], check=True)
    yield root / "bin"


def run(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_the_wheel_carries_the_stylesheet_and_the_c_parts(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "ktrace/tui/ktrace.tcss" in names
    if shutil.which("cc"):  # pip builds the C parts where it can (ktrace/native.py)
        for module in ("ktrace/pcap/_walk", "ktrace/kernels/_plain", "ktrace/kernels/_dns",
                       "ktrace/kernels/_mix", "ktrace/kernels/_group", "ktrace/kernels/_tally",
                       "ktrace/kernels/_sequence", "ktrace/kernels/_rows"):  # fmt: skip
            assert any(n.startswith(module) and n.endswith(".so") for n in names), module
    assert not any(n.startswith(("tests/", "pcaps/")) for n in names)


def test_installed_commands_run_outside_the_source_tree(venv: Path, tmp_path: Path) -> None:
    where = run(venv, str(venv / "python"), "-c", "import ktrace; print(ktrace.__file__)",
                cwd=tmp_path)  # fmt: skip
    assert str(venv.parent) in where.stdout, where  # the installed copy, not the checkout
    helped = run(venv, "kubectl", "ktrace", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "usage: kubectl ktrace" in helped.stdout and "capture" in helped.stdout
    analyzed = run(venv, "ktrace", "analyze", str(POLICY), cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "path.drop" in analyzed.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("size", [(80, 24), (160, 40)])
def test_the_installed_ui_opens_in_a_real_terminal(
    venv: Path, tmp_path: Path, size: tuple[int, int]
) -> None:
    status = tmp_path / "status"
    # the shell records the exit status where the test can read it once the UI is gone
    command = f"cd {tmp_path} && {venv / 'ktrace'} open {POLICY}; echo $? > {status}; sleep 5"
    term = Tmux(command, dict(os.environ), size)
    try:
        term.wait_for(r"\d+ findings?")
        term.keys("5")
        term.wait_for("path.drop")
        term.keys("q")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not status.exists():
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
    finally:
        term.close()


def test_a_crashing_ui_exits_non_zero_with_one_line(venv: Path, tmp_path: Path) -> None:
    """A broken installed stylesheet: the UI cannot start; one line on stderr, status 1."""
    site = next((venv.parent / "lib").glob("python3*/site-packages"))
    sheet = site / "ktrace" / "tui" / "ktrace.tcss"
    saved = sheet.read_bytes()
    sheet.write_text("#title { colour: nonsense; ")
    try:
        result = run(venv, "ktrace", "open", str(POLICY), cwd=tmp_path)
    finally:
        sheet.write_bytes(saved)
    assert result.returncode == 1, result
    # without a terminal Textual's driver writes its mode switches to stderr: not ours
    text = re.sub(r"\x1b\[[0-9;?<=>$]*[a-zA-Z~]", "", result.stderr)
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ktrace: error: the terminal UI stopped")
    assert "Traceback" not in result.stdout + result.stderr
