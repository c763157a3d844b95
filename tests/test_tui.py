"""The terminal UI: pilot tests of each view and of the way from a finding to its evidence,
snapshots at a fixed size, a real terminal under tmux, and responsiveness while indexing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import DataTable, Static, Tree

from ktrace.tui import keymap
from ktrace.tui.app import KtraceApp
from ktrace.tui.screens.base import StatusLine
from ktrace.tui.screens.packets import PacketList
from ktrace.tui.workbench import Workbench
from tests.helpers import PCAPS
from tests.tmux import Tmux

POLICY = PCAPS / "lab" / "policy-drop"
SIZE = (140, 40)


async def loaded(pilot) -> None:  # type: ignore[no-untyped-def]
    """Until no worker runs: the load, and the rows of the view shown (built off the UI's
    thread; a newer request replaces an older one, cancelled)."""
    while any(w.is_running for w in pilot.app.workers):
        await pilot.pause(0.02)
    await pilot.pause()


def keys(text: str) -> list[str]:
    return [{" ": "space", "-": "minus"}.get(ch, ch) for ch in text]


def table_rows(app: KtraceApp) -> list[list[str]]:
    table = app.screen.query_one(DataTable)
    return [
        [str(getattr(c, "plain", c)) for c in table.get_row_at(i)] for i in range(table.row_count)
    ]


async def test_from_the_finding_to_the_last_point_reached() -> None:
    app = KtraceApp([POLICY])
    assert isinstance(app, Workbench)  # all that the screens may ask of it
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("5")
        await loaded(pilot)
        assert type(app.screen).__name__ == "FindingsView"
        rows = table_rows(app)
        assert rows[0][1] == "path.drop"
        assert "never" not in rows[0][2] and "node-b-eth0 and web-2-veth" in rows[0][2]
        await pilot.press("enter")
        await loaded(pilot)
        assert type(app.screen).__name__ == "PathView"
        columns = [str(c.label) for c in app.screen.query_one(DataTable).columns.values()]
        # the points first, the packet's summary last: at 80 columns the loss still shows
        assert columns[2:] == [
            "client-eth0",
            "client-veth",
            "node-a-eth0",
            "node-b-eth0",
            "web-2-veth",
            "web-2-eth0",
            "PACKET",
        ]
        table = app.screen.query_one(DataTable)
        row = [str(getattr(c, "plain", c)) for c in table.get_row_at(table.cursor_row)]
        assert row[-1].startswith("S ") and row[5] != "·"  # seen at node-b-eth0
        assert row[6] == "✗ lost"  # never at web-2-veth: the last point reached is obvious
        await pilot.press("enter")
        await loaded(pilot)
        assert type(app.screen).__name__ == "PacketView"
        layers = [str(n.label) for n in app.screen.query_one(Tree).root.children]
        assert layers == ["Ethernet", "IP", "TCP"]  # the SYN as the client sent it
        await pilot.press("escape", "escape")
        await loaded(pilot)
        assert type(app.screen).__name__ == "FindingsView"


async def test_http_view_opens_the_request_path() -> None:
    app = KtraceApp([PCAPS / "lab" / "http-503"])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("6")
        await loaded(pilot)
        assert type(app.screen).__name__ == "HttpView"
        rows = table_rows(app)
        failed = [r for r in rows if r[2] in ("503", "UNAVAILABLE")]
        assert len(failed) == 9 and all("default/web-2" in r[4] for r in failed)
        via_service = next(
            k for k, r in enumerate(rows) if r[1].startswith("GET web/") and r[2] == "503"
        )
        app.screen.query_one(DataTable).move_cursor(row=via_service)
        await pilot.pause()
        detail = str(app.screen.query_one("#detail", Static).render())
        assert "client-eth0" in detail and "web-2-eth0" in detail
        await pilot.press("enter")
        await loaded(pilot)
        assert type(app.screen).__name__ == "PathView"
        table = app.screen.query_one(DataTable)
        row = [str(getattr(c, "plain", c)) for c in table.get_row_at(table.cursor_row)]
        # the request, client to server, at all six points on its way to web-2
        assert row[1] == "→" and row[-1].startswith(".P ") and len(row) == 3 + 6, row
        assert not any("lost" in cell for cell in row[3:]), row


async def test_points_flows_dns_and_packets_views() -> None:
    app = KtraceApp([PCAPS / "lab" / "dns-search"])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        points = table_rows(app)
        assert [r[0] for r in points][:3] == ["client-eth0", "client-veth", "node-a-eth0"]
        assert points[0][1:4] == ["pod", "node-a", "default/client"]
        await pilot.press("2")
        await loaded(pilot)
        flows = table_rows(app)
        dns = next(r for r in flows if "svc kube-system/kube-dns" in r[2])
        assert dns[10] == "10.96.0.10:53 => 10.244.1.3:53"  # the NAT mapping
        assert dns[9] == "●●●●··●"  # presence per point
        await pilot.press("slash")
        await pilot.press(*"172.18.0.100")
        await pilot.press("enter")
        await loaded(pilot)
        assert all("172.18.0.100" in " ".join(r) for r in table_rows(app))
        await pilot.press("4")
        await loaded(pilot)
        lookups = table_rows(app)
        chain = [r for r in lookups if r[0] == "example.com" and r[7].startswith("10.244.0.2")]
        assert [r[1] for r in chain][:6:2] == [
            "example.com.default.svc.cluster.local",
            "example.com.svc.cluster.local",
            "example.com.cluster.local",
        ]
        await pilot.press("3")
        await loaded(pilot)
        plist = app.screen.query_one(PacketList)
        assert plist.count == len(app.index)  # type: ignore[arg-type]
        assert str(app.screen.query_one("#header", Static).render()).startswith("POINT#PACKET")
        await pilot.press("G")
        await loaded(pilot)
        assert plist.cursor == plist.count - 1
        # evidence names packets as the list numbers them: point#number in its file
        assert app.result is not None
        ref = app.result.findings[0].evidence[0]
        await pilot.press("slash", *keys(f"{ref.point} udp"), "enter")
        await loaded(pilot)
        lines = [plist.line_text(k) for k in range(plist.count)]
        assert lines and all(line.startswith(f"{ref.point}#") for line in lines)
        assert all(" UDP " in line for line in lines)
        assert any(line.startswith(f"{ref.point}#{ref.number} ") for line in lines)
        status = str(app.screen.query_one(StatusLine).render())
        assert f"{plist.count:,} of {len(app.index):,} packets match" in status  # type: ignore[arg-type]
        await pilot.press("slash", *keys(" bogus"), "enter")
        await loaded(pilot)
        assert plist.count == 0
        assert "not an address, port, protocol or point: bogus" in str(
            app.screen.query_one(StatusLine).render()
        )
        await pilot.press("escape")
        await loaded(pilot)
        assert plist.count == len(app.index)  # type: ignore[arg-type]


async def test_help_is_generated_from_the_live_bindings() -> None:
    app = KtraceApp([POLICY])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("2", "question_mark")
        await loaded(pilot)
        assert type(app.screen).__name__ == "HelpScreen"
        listed = dict(app.screen.bindings)  # type: ignore[attr-defined]
        for b in keymap.APP + keymap.TABLE:
            if b.show:
                assert listed.get(b.key_display or app.get_key_display(b)) == b.description, b
        await pilot.press("escape")
        await loaded(pilot)
        assert type(app.screen).__name__ == "FlowsView"


async def test_a_corrupt_file_among_good_ones(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 5)
    app = KtraceApp([PCAPS / "http-dns.pcap", bad])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.phase == "ready" and len(app.index) > 0  # type: ignore[arg-type]
        assert any("broken.pcap" in e for e in app.errors)
        assert "1 unreadable" in app.status_text()


def big_capture(path: Path, packets: int) -> Path:
    """A capture large enough to take a while to index, written with numpy."""
    frame = bytes.fromhex(
        "020000000001020000000002"
        "0800"
        "450000280001400040060000"
        "0a000001"
        "0a000102"
        "9c400050"
        "00000001"
        "00000000"
        "50100000"
        "00000000"
    )
    rec = np.frombuffer(
        struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame, np.uint8
    )
    grid = np.tile(rec, (packets, 1))
    grid[:, 4:8] = np.arange(packets, dtype="<u4").view(np.uint8).reshape(-1, 4)
    sport = (20000 + np.arange(packets) % 5000).astype(">u2")
    grid[:, 16 + 34 : 16 + 36] = sport.view(np.uint8).reshape(-1, 2)
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        fh.write(grid.tobytes())
    return path


async def test_the_ui_answers_keys_while_a_large_capture_is_indexed(tmp_path: Path) -> None:
    path = big_capture(tmp_path / "big.pcap", 3_000_000)
    app = KtraceApp([path])
    switched_during_indexing = []
    async with app.run_test(size=SIZE) as pilot:
        while app.progress is None:
            await pilot.pause(0.01)
        for key, view in (("2", "FlowsView"), ("1", "PointsView"), ("3", "PacketsView")):
            # pilot.press waits for the app to go idle, which indexing never lets it do: post
            # the key and wait only for the view (as tests/bench/tui.py measures it)
            app.simulate_key(key)
            deadline = time.monotonic() + 10
            while type(app.screen).__name__ != view and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            switched_during_indexing.append(
                (type(app.screen).__name__ == view, app.phase == "indexing")
            )
        await loaded(pilot)
        assert len(app.index) == 3_000_000  # type: ignore[arg-type]
    assert all(ok for ok, _ in switched_during_indexing)
    assert any(during for _, during in switched_during_indexing)


@pytest.mark.parametrize("size", [(80, 24), (160, 40)], ids=["80", "160"])
def test_snapshots_of_the_main_views(snap_compare, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    for pressed in ((), ("2",), ("3",), ("5",), ("5", "enter"), ("4",), ("6",)):

        async def run_before(pilot, pressed=pressed) -> None:  # type: ignore[no-untyped-def]
            await loaded(pilot)
            await pilot.press(*pressed)
            await loaded(pilot)

        assert snap_compare(KtraceApp([POLICY]), terminal_size=size, run_before=run_before)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_real_terminal_under_tmux() -> None:
    ktrace = str(Path(sysconfig.get_path("scripts")) / "ktrace")
    command = (
        f"{ktrace} open {POLICY}"
        if Path(ktrace).exists()
        else f"{sys.executable} -m ktrace open {POLICY}"
    )
    term = Tmux(command, dict(os.environ), (130, 36))
    try:
        term.wait_for("1 finding")
        term.keys("5")
        assert "node-b-eth0 and web-2-veth" in term.wait_for("path.drop").string
        term.keys("Enter")
        term.wait_for("✗ lost")
        term.keys("q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and term.alive():
            time.sleep(0.2)
        assert not term.alive()  # q quits for real
    finally:
        term.close()


class FakeLive:
    """A capture that is still writing: the test appends to its files and ends it."""

    def __init__(self) -> None:
        self.on = True

    def running(self) -> bool:
        return self.on

    def summary(self) -> str:
        return "capturing" if self.on else "capture ended"


def records(data: bytes) -> list[int]:
    """Byte offsets where each pcap record ends (nanosecond or microsecond, little-endian)."""
    ends, pos = [], 24
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        ends.append(pos)
    return ends


async def test_live_mode_follows_growing_point_files(tmp_path: Path) -> None:
    bundle = tmp_path / "live"
    shutil.copytree(POLICY, bundle)
    full = {p: p.read_bytes() for p in (bundle / "points").glob("*.pcap")}
    total = sum(len(records(d)) for d in full.values())
    early = 0
    for path, data in full.items():  # what had arrived when the UI opened: a few packets
        ends = records(data)
        k = min(3, len(ends))
        early += k
        cut = ends[k - 1] if k else 24
        path.write_bytes(data[: cut + 7])  # and a record still arriving
    live = FakeLive()
    app = KtraceApp([bundle], live=live)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.index is not None and len(app.index) == early
        assert "LIVE capturing" in app.status_text()
        for path, data in full.items():
            path.write_bytes(data)
        live.on = False
        deadline = time.monotonic() + 30
        while not (app.result is not None and len(app.index or []) == total):
            assert time.monotonic() < deadline, app.status_text()
            await pilot.pause(0.1)
        await pilot.pause(1.5)  # and it stops following once the capture has ended
        assert app._live_ended and len(app.index or []) == total
        assert "LIVE capture ended" in app.status_text()
        assert [f.id for f in app.result.findings] == ["path.drop"]


async def test_a_bundle_cut_short_says_so(tmp_path: Path) -> None:
    bundle = tmp_path / "cut"
    shutil.copytree(POLICY, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(status="interrupted", reason="stopped by the user (Ctrl-C)")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    app = KtraceApp([bundle])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert "the capture was cut short: stopped by the user (Ctrl-C)" in app.status_text()


async def test_bracketed_addresses_are_text_not_markup() -> None:
    """IPv6 endpoints are written "[fd00::1]:80": drawn as they are, never read as markup
    (which swallowed them, leaving ":34104 (default/client)")."""
    app = KtraceApp([PCAPS / "lab" / "healthy-v6"])
    async with app.run_test(size=(160, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        await loaded(pilot)
        flows = [r[1] for r in table_rows(app) if r[1].startswith("[")]
        assert flows
        drawn = app.export_screenshot().replace("&#160;", " ")
        assert flows[0].split("]")[0].replace(":", "") in drawn.replace(":", "")
        assert "]:" in drawn


async def test_a_views_rows_are_built_off_the_uis_thread() -> None:
    """Building, filtering and sorting a view's rows grows with the capture: none of it on
    the UI's thread, which must answer keys (q among them) meanwhile."""
    import threading

    from ktrace.tui.screens.views import DnsView

    built_on: list[str] = []
    original = DnsView.build_rows

    def spy(self):  # type: ignore[no-untyped-def]
        built_on.append(threading.current_thread().name)
        return original(self)

    app = KtraceApp([PCAPS / "lab" / "dns-search"])
    DnsView.build_rows = spy  # type: ignore[method-assign]
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("4")
            await loaded(pilot)
            assert table_rows(app)
    finally:
        DnsView.build_rows = original  # type: ignore[method-assign]
    assert built_on and threading.main_thread().name not in built_on


async def test_at_80_by_24_a_findings_end_is_reachable() -> None:
    """On a small terminal the finding's detail scrolls: its rule and next step come into
    view; the table gives the detail the room it does not need."""
    app = KtraceApp([POLICY])
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("5")
        await loaded(pilot)
        first = app.export_screenshot().replace("&#160;", " ")
        assert "Evidence: node-b-eth0#" in first and "security groups" not in first
        await pilot.press("ctrl+d")
        await pilot.pause()
        later = app.export_screenshot().replace("&#160;", " ")
        assert "security groups" in later and "-j DROP" in later
