"""The command line as a user meets it: real subprocesses, exit codes, exact error lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from ktrace.pcap.writer import PcapWriter
from ktrace.report.table import human_size
from tests.helpers import LAB, PCAPS, T0, answer, query, tcp_session, udp

Make = Callable[..., Path]
SCRIPTS = sysconfig.get_path("scripts")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ktrace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_analyze_json_schema(make_pcap: Make) -> None:
    path = make_pcap(tcp_session() + [query("web.example.com"), answer("web.example.com")])
    out = run("analyze", str(path), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"points", "flows", "dns", "findings", "warnings"} <= set(data)
    flow = next(f for f in data["flows"] if f["proto"] == "tcp")
    for key in ("proto", "a", "b", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba"):
        assert key in flow
    dns = data["dns"][0]
    for key in ("qname", "qtype", "rcode", "latency_ms", "answered"):
        assert key in dns
    assert json.loads(run("analyze", str(path), "-o", "json").stdout) == data


def test_analyze_text_is_aligned_tables(make_pcap: Make) -> None:
    path = make_pcap(tcp_session())
    out = run("analyze", str(path))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("PROTO"))
    row = lines[lines.index(header) + 1]
    assert row.startswith("tcp") and row.index("10.0.1.5:80") == header.index("B")
    assert "Findings" in out.stdout and "Capture points (1)" in out.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file or directory"),
        (b"GIF89a not a capture", "not a pcap or pcapng file (starts with 47 49 46 38)"),
        (b"", "file is empty"),
    ],
)
@pytest.mark.parametrize("command", ["analyze", "open"])
def test_bad_input_is_one_line_with_exit_code(
    tmp_path: Path, content: bytes | None, message: str, command: str
) -> None:
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    out = run(command, str(path))
    assert out.returncode == 3
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr
    assert out.stderr.startswith("ktrace: error: ")
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run("--debug", "analyze", str(tmp_path / "missing.pcap"))
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_partial_file_warns_on_stderr_and_still_reports(make_pcap: Make, tmp_path: Path) -> None:
    path = make_pcap(tcp_session())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:-30])
    out = run("analyze", str(cut), "--json")
    assert out.returncode == 0
    assert "ktrace: warning:" in out.stderr and "cut short" in out.stderr
    assert json.loads(out.stdout)["points"][0]["packets"] == 8


def test_a_link_type_ktrace_cannot_read_is_said_not_judged(tmp_path: Path) -> None:
    """Packets of an unknown link type are counted; the verdict says nothing could be read
    instead of 'nothing looks wrong', and the warning stands once in the report."""
    path = tmp_path / "user0.pcap"
    with PcapWriter(path, 147) as w:
        for k in range(3):
            w.write(T0 + k, bytes(40))
    out = run("analyze", str(path))
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first == (
        "Verdict: none of the 3 packets at 1 point could be read as IP (see Warnings): "
        "nothing to diagnose."
    )
    assert "nothing looks wrong" not in out.stdout
    warning = "interface 0 has link type LINKTYPE_147, which ktrace cannot read"
    assert out.stdout.count(warning) == 1
    assert out.stderr.count(warning) == 1  # stdout is no terminal: said there too


def test_decode_prints_layers_and_hex(make_pcap: Make) -> None:
    path = make_pcap(tcp_session(data=b"GET / HTTP/1.1\r\n\r\n"))
    out = run("decode", str(path), "4")
    assert out.returncode == 0, out.stderr
    assert "packet 4 of 8" in out.stdout
    for layer in ("###[ Ethernet ]###", "###[ IP ]###", "###[ TCP ]###", "dport     = http"):
        assert layer in out.stdout
    assert "GET / HTTP/1.1" in out.stdout  # the ASCII column of the hex dump
    bad = run("decode", str(path), "9")
    assert bad.returncode == 2 and "has packets 1 to 8, not 9" in bad.stderr


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from ktrace.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('scapy', 'kubernetes', 'textual', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout


def test_analyze_leaves_numpy_ma_and_dpkt_unimported() -> None:
    """numpy.ma (10 ms at every start) comes with np.unique's check for a masked array, dpkt
    (45 ms) with a head the plain parser cannot read: neither on a capture without them."""
    code = (
        "import contextlib, os, sys\n"
        "from ktrace.cli import main\n"
        "with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):\n"
        f"    main(['analyze', {str(PCAPS / 'http-dns.pcap')!r}, '-o', 'json'])\n"
        "print('LOADED', [m for m in ('numpy.ma', 'dpkt') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in out.stdout, out.stderr


def test_kubectl_plugin_dispatch(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the plugin dispatch cannot be tested")
    env = dict(
        os.environ,
        PATH=f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}",
        KUBECONFIG=str(tmp_path / "none"),
    )
    out = subprocess.run(
        [kubectl, "ktrace", "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: kubectl ktrace")
    assert "analyze" in out.stdout


def test_an_empty_bundle_cut_short_says_so_first(tmp_path: Path) -> None:
    """No packets at any point and a capture cut short: the first lines say both, and the
    report does not claim that nothing looks wrong."""
    bundle = tmp_path / "empty"
    shutil.copytree(PCAPS / "lab" / "healthy", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(status="interrupted", reason="every capture stream ended")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for point in (bundle / "points").glob("*.pcap"):
        point.write_bytes(point.read_bytes()[:24])  # the file header, no packet
    result = run("analyze", str(bundle))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    n = len(manifest["points"])
    assert (
        first == f"Verdict: no packets were captured at any of the {n} points: nothing to diagnose."
    )
    assert second.startswith("Note: ") and "cut short: every capture stream ended" in second
    assert "nothing looks wrong" not in result.stdout


def test_decode_names_the_argument_not_an_internal(make_pcap: Make) -> None:
    result = run("decode", str(make_pcap(tcp_session())), "node-b-eth0:9")
    assert result.returncode == 2
    assert "_packet" not in result.stderr
    assert "PACKET: 'node-b-eth0:9' is not a packet: give N or POINT#N" in result.stderr


def test_decode_takes_a_packet_as_findings_cite_it() -> None:
    """A finding's evidence (point#number) is what `decode` takes, with the bundle; the
    packet it shows is the one the finding meant (a SYN to the dropped backend)."""
    bundle = LAB / "policy-drop"
    cited = json.loads(run("analyze", str(bundle), "--json").stdout)["findings"][0]["evidence"][0]
    shown = run("decode", str(bundle), f"{cited['point']}#{cited['packet']}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"packet {cited['packet']} of ")
    assert f"point {cited['point']}," in shown.stdout.splitlines()[0]
    assert "flags     = S" in shown.stdout
    several = run("decode", str(bundle), "3")
    assert several.returncode == 2 and "name one as findings cite packets" in several.stderr
    unknown = run("decode", str(bundle), "nowhere#3")
    assert unknown.returncode == 2 and "no capture point 'nowhere'" in unknown.stderr


def test_a_partial_bundle_is_analysed_with_notes(tmp_path: Path) -> None:
    """An empty point file, a missing one and an unreadable inventory leave the rest of the
    bundle to analyse, each named in a note; a bundle with nothing readable is refused."""
    bundle = tmp_path / "partial"
    shutil.copytree(LAB / "policy-drop", bundle)
    (bundle / "points" / "client-eth0.pcap").write_bytes(b"")
    (bundle / "points" / "client-veth.pcap").unlink()
    (bundle / "inventory.json").write_text("{not json")
    result = run("analyze", str(bundle))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("Note: ")]
    assert any("client-eth0.pcap: file is empty: left out" in n for n in notes)
    assert any("point client-veth's file points/client-veth.pcap is missing" in n for n in notes)
    assert any("inventory.json: not readable JSON" in n for n in notes)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "SYN to 10.244.1.2:80" in result.stdout.splitlines()[0]
    for point in (bundle / "points").glob("*.pcap"):
        point.write_bytes(b"")
    empty = run("analyze", str(bundle))
    assert empty.returncode == 3 and empty.stderr.count("\n") == 1


def test_a_truncated_bundle_archive_is_analysed_as_far_as_it_goes(tmp_path: Path) -> None:
    import tarfile

    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(LAB / "policy-drop", arcname="policy-drop")
    whole = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) * 9 // 10])
    result = run("analyze", str(cut))
    assert result.returncode == 0, result.stderr
    assert "the archive ends early" in result.stdout and "analysed what it holds" in result.stdout
    assert "internal error" not in result.stderr
    cut.write_bytes(whole[:200])
    early = run("analyze", str(cut))
    assert early.returncode == 3 and early.stderr.count("\n") == 1
    assert "before any capture file" in early.stderr


def test_debug_goes_after_the_command_too(tmp_path: Path) -> None:
    out = run("analyze", str(tmp_path / "missing.pcap"), "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_text_tables_count_each_packet_once_across_points(make_pcap: Make) -> None:
    session = tcp_session() + [query("web.example.com"), answer("web.example.com")]
    make_pcap(session, name="pod.pcap")
    folder = make_pcap(session, name="node.pcap").parent
    extra = [udp("10.0.0.7", "10.0.3.3", 5000 + k, 9000, b"x%d" % k) for k in range(3)]
    make_pcap(extra, name="other.pcap")
    out = run("analyze", str(folder), "--limit", "2")
    assert out.returncode == 0, out.stderr
    convs = out.stdout.split("Conversations (5)\n")[1].split("\n\n")[0].splitlines()
    assert convs[1].split()[-1] == "POINTS"
    first = convs[2].split()
    # 8 packets and 1 DNS exchange seen at two points: 8, not 16, and "2" points
    assert (first[3], first[-1]) == ("8", "2")
    assert convs[-1] == "... 3 more conversations not shown (--limit 2; -o json has them all)"
    dns = out.stdout.split("DNS exchanges (1)\n")[1].splitlines()
    assert dns[2].split()[-1] == "2"


def test_a_bad_filter_is_refused_before_the_cluster_is_touched(tmp_path: Path) -> None:
    # the kubeconfig does not even exist: the filter is judged before anything is read or made
    out = run("capture", "pod/web", "-f", "tcp port", "--kubeconfig", str(tmp_path / "missing"))
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        "ktrace: error: the filter 'tcp port' does not compile: can't parse filter expression: "
        "syntax error (see man pcap-filter)\n"
    )


def test_from_outside_needs_the_node_side(tmp_path: Path) -> None:
    out = run("capture", "svc/web", "--from-outside", "--no-node", "--kubeconfig", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("ktrace: error: --from-outside captures the nodes' NICs")
    assert len(out.stderr.splitlines()) == 1


def test_an_unreachable_api_server_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    # kubectl's flags may come before the command, as kubectl allows
    out = run("--kubeconfig", str(config), "capture", "pod/web")
    assert out.returncode == 4
    assert out.stderr == (
        "ktrace: error: cannot reach the API server at https://127.0.0.1:1: connection refused "
        "(check --context and --kubeconfig)\n"
    )


def test_progress_line_on_a_terminal(make_pcap: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from ktrace.analysis.pipeline import run_pipeline
    from ktrace.bundle.inputs import read_inputs
    from ktrace.report import progress

    monkeypatch.setattr(progress, "QUIET_FOR_S", 0.0)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    path = make_pcap(tcp_session() * 50)
    found = read_inputs([path])
    out = io.StringIO()
    line = progress.ProgressLine(out, found.files)
    for step in run_pipeline(found):
        line.step(step)
        if line.timer is not None:
            line.timer.join(5)  # the analysing line is written from a timer
    line.close()
    text = out.getvalue()
    size = human_size(path.stat().st_size)
    assert f"\rreading {path.name}: {size} of {size}, 400 packets" in text
    for stage in ("flows", "DNS", "checks"):
        assert f"\ranalysing 400 packets: {stage}…" in text
    assert text.endswith("\r")  # the line is wiped at the end


def test_no_progress_when_stderr_is_not_a_terminal(make_pcap: Make) -> None:
    out = run("analyze", str(make_pcap(tcp_session())))
    assert out.returncode == 0 and out.stderr == ""


def test_a_full_disk_is_one_line_not_an_internal_error() -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    with full.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "ktrace", "analyze", str(PCAPS / "http-dns.pcap")],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["ktrace: error: No space left on device"]


def test_the_command_starts_no_openblas_threads() -> None:
    """ktrace never multiplies matrices; OpenBLAS's threads, idle, spin on the cores that
    indexing and the DNS stage need. A user's own setting is kept."""
    code = "import os, ktrace.cli, numpy; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout == "1\n", out.stderr
    env["OPENBLAS_NUM_THREADS"] = "2"
    code = "import os, ktrace.cli; print(os.environ['OPENBLAS_NUM_THREADS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout == "2\n", out.stderr


def test_the_captures_are_unmapped_beside_the_output_unless_still_viewed(
    make_pcap: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing reads a packet once the analysis is done: the mappings are closed on another
    thread while the report is written; one that something still views is left open, quietly
    (its pages go with the process)."""
    import numpy as np

    from ktrace import cli
    from ktrace.analysis.pipeline import analyze

    path = make_pcap(tcp_session())
    result = analyze([path])
    with cli._captures_closing(result):
        pass
    with pytest.raises(ValueError, match="closed"):
        result.analysis.index.mapped(0)
    result = analyze([path])
    held = np.frombuffer(result.analysis.index.mapped(0), np.uint8)
    with cli._captures_closing(result):
        pass
    assert held[:4].tobytes() == path.read_bytes()[:4]  # still mapped, still readable
    assert capsys.readouterr().err == ""
