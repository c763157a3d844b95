"""`ktrace open`: captures, bundles or pcap files in a k9s-style terminal UI.

Indexing and analysis run in a background worker (the core's progress generator); the views
show what is known as soon as it is known and stay responsive meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from textual import on, work
from textual.app import App
from textual.command import Hit, Hits, Provider
from textual.worker import get_current_worker

from ktrace.analysis.report import Inputs, Report, analyze_index, capture_files, read_inputs
from ktrace.decode.index import CaptureFile, IndexBuilder, PacketIndex, scan
from ktrace.errors import Cancelled, KtraceError
from ktrace.model import PacketRef, Point
from ktrace.tui import keymap
from ktrace.tui.messages import Analyzed, Indexed, LoadError, Progress
from ktrace.tui.screens.help import HelpScreen, live_bindings
from ktrace.tui.screens.packets import PacketsView
from ktrace.tui.screens.views import DnsView, FindingsView, FlowsView, PointsView

VIEWS = {
    "points": PointsView,
    "flows": FlowsView,
    "packets": PacketsView,
    "dns": DnsView,
    "findings": FindingsView,
}


class Live(Protocol):
    """A capture still writing the inputs (`kubectl ktrace capture --open`)."""

    def running(self) -> bool: ...

    def summary(self) -> str: ...


class ViewCommands(Provider):
    """`:` — the views by name, as k9s's `:pods`."""

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name in VIEWS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(name),
                    lambda n=name: self.app.action_view(n),  # type: ignore[attr-defined]
                    help=f"show the {name} view",
                )


class KtraceApp(App[None]):
    CSS_PATH = "ktrace.tcss"
    TITLE = "ktrace"
    BINDINGS = keymap.APP
    COMMANDS = {ViewCommands}
    MODES = VIEWS  # type: ignore[assignment]

    def __init__(
        self, inputs: list[Path], found: Inputs | None = None, live: Live | None = None
    ) -> None:
        super().__init__()
        self.live = live
        self._seen_sizes: tuple[int, ...] = ()
        self._load_started = 0.0
        self._load_took = 0.0
        self._live_ended = False
        self.input_notes: list[str] = []  # a bundle cut short says so in the status line
        self.inputs = inputs
        self.found = found  # already read by the caller: a .tar.gz is unpacked only once
        self.points: list[Point] = []
        self.index: PacketIndex | None = None
        self.report: Report | None = None
        self.errors: list[str] = []
        self.progress: Progress | None = None
        self.cancel = threading.Event()
        self.phase = "indexing"
        self._builder: IndexBuilder | None = None

    def on_mount(self) -> None:
        self.switch_mode("points")
        self.load()
        if self.live is not None:
            self.set_interval(1.0, self.follow)

    def follow(self) -> None:
        """Live mode: index again when the point files have grown, no more often than
        indexing allows (three times its last duration), and once more when it ends."""
        assert self.live is not None
        if self._live_ended or any(w.group == "load" and w.is_running for w in self.workers):
            self._refresh_views()
            return
        if time.monotonic() - self._load_started < 3 * self._load_took:
            return
        ended = not self.live.running()
        try:
            sizes = tuple(path.stat().st_size for path in capture_files(self.inputs))
        except OSError:
            return
        if sizes != self._seen_sizes or ended:
            self._seen_sizes = sizes
            self._live_ended = ended
            self.found = None  # the manifest changes when the capture ends
            self.load()

    # loading ----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load(self) -> None:
        worker = get_current_worker()
        self._load_started = time.monotonic()
        try:
            found = self.found or read_inputs(self.inputs)
        except KtraceError as exc:
            self.post_message(LoadError(Path("."), str(exc)))
            return
        self.input_notes = [] if self.live is not None else found.notes
        builder = IndexBuilder()
        self._builder = builder
        points: list[Point] = []
        files: list[CaptureFile] = []
        self.points = points
        for path in found.files:
            if self.live is not None and path.stat().st_size < 24:
                continue  # a live point whose tcpdump has not written its header yet
            try:
                for step in scan([path], builder, points, files, self.cancel, None, found.declared):
                    if worker.is_cancelled:
                        return
                    self.post_message(Progress(step.file, step.done, step.total, step.packets))
            except Cancelled:
                return
            except KtraceError as exc:  # one bad file must not hide the good ones
                self.post_message(LoadError(path, str(exc)))
        index = builder.result(points, files)
        self.post_message(Indexed(index))
        try:
            report = analyze_index(index, found.inventory, self.cancel)
        except Cancelled:
            return
        self._load_took = time.monotonic() - self._load_started
        self.post_message(Analyzed(report))

    @on(Progress)
    def on_progress(self, message: Progress) -> None:
        self.progress = message
        self._refresh_views()

    @on(Indexed)
    def on_indexed(self, message: Indexed) -> None:
        self.index = message.index
        self.phase = "analysing"
        self._refresh_views()

    @on(Analyzed)
    def on_analyzed(self, message: Analyzed) -> None:
        self.report = message.report
        self.phase = "ready"
        self._refresh_views()
        if message.report.findings:
            self.notify(f"{len(message.report.findings)} findings: press 5", title="analysis done")

    @on(LoadError)
    def on_load_error(self, message: LoadError) -> None:
        self.errors.append(message.text)
        self.notify(message.text, title="cannot read", severity="error", timeout=10)
        self._refresh_views()

    def _refresh_views(self) -> None:
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_data", None)
            if refresh is not None and screen.is_mounted:
                refresh()

    # what views ask -----------------------------------------------------------------------
    def status_text(self) -> str:
        parts = [f"LIVE {self.live.summary()}"] if self.live is not None else []
        if self.phase == "indexing":
            p = self.progress
            pct = 100 * p.done / max(p.total, 1) if p else 0
            parts.append(
                f"indexing {p.file.name if p else ''} {pct:.0f}% "
                f"({p.packets if p else 0:,} packets)"
            )
        elif self.phase == "analysing":
            parts.append(f"{len(self.index or []):,} packets indexed; analysing…")
        else:
            assert self.report is not None
            parts.append(
                f"{len(self.index or []):,} packets, {len(self.points)} points, "
                f"{len(self.report.findings)} findings"
            )
        if self.errors:
            parts.append(f"{len(self.errors)} unreadable: {self.errors[-1]}")
        parts += self.input_notes
        return " | ".join(parts)

    def point_counts(self) -> dict[int, tuple[int, int]]:
        """Packets and bytes per point: from the index once built, else from what the
        indexer has gathered so far."""
        parts = (
            [self.index.columns]
            if self.index is not None
            else list(self._builder.parts)
            if self._builder is not None
            else []
        )
        out: dict[int, tuple[int, int]] = {}
        for cols in parts:
            n = np.bincount(cols.point)
            b = np.bincount(cols.point, weights=cols.wirelen)
            for k in range(len(n)):
                old = out.get(k, (0, 0))
                out[k] = (old[0] + int(n[k]), old[1] + int(b[k]))
        return out

    def row_of(self, ref: PacketRef) -> int:
        assert self.index is not None
        point = next(k for k, p in enumerate(self.index.points) if p.id == ref.point)
        return self.index.file_of(point).first_row + ref.number - 1

    # actions ------------------------------------------------------------------------------
    def action_view(self, name: str) -> None:
        if name in VIEWS:
            self.switch_mode(name)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(live_bindings(self.screen)))

    async def action_quit(self) -> None:
        self.cancel.set()
        self.workers.cancel_group(self, "load")
        self.exit()


def run(inputs: list[Path], found: Inputs | None = None, live: Live | None = None) -> None:
    KtraceApp(inputs, found, live).run()
