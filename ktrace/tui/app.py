"""`ktrace open`: captures, bundles or pcap files in a k9s-style terminal UI.

Indexing and analysis run in a background worker (the core's progress generator); the views
show what is known as soon as it is known and stay responsive meanwhile.
"""

from __future__ import annotations

import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Protocol, cast

from textual import on, work
from textual.app import App
from textual.command import Hit, Hits, Provider
from textual.message import Message
from textual.worker import get_current_worker

from ktrace.analysis.checks import plural
from ktrace.analysis.pipeline import Analysing, FileFailed, Indexed, run_pipeline
from ktrace.analysis.pipeline import Step as PipelineStep
from ktrace.analysis.result import Result
from ktrace.bundle.inputs import Inputs, capture_files, read_inputs
from ktrace.decode.index import IndexProgress, PacketIndex, default_workers
from ktrace.errors import Cancelled, KtraceError, UiError
from ktrace.model import PacketRef, Point
from ktrace.tui import keymap
from ktrace.tui.messages import AnalysisDone, IndexBuilt, IndexStepped, LoadError
from ktrace.tui.screens.help import HelpScreen, live_bindings
from ktrace.tui.screens.packets import PacketsView
from ktrace.tui.screens.views import DnsView, FindingsView, FlowsView, HttpView, PointsView

VIEWS = {
    "points": PointsView,
    "flows": FlowsView,
    "packets": PacketsView,
    "dns": DnsView,
    "findings": FindingsView,
    "http": HttpView,
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
                    lambda n=name: cast(KtraceApp, self.app).action_view(n),
                    help=f"show the {name} view",
                )


class Phase(StrEnum):
    INDEXING = "indexing"
    ANALYSING = "analysing"
    READY = "ready"


class KtraceApp(App[None]):
    CSS_PATH = "ktrace.tcss"
    TITLE = "ktrace"
    BINDINGS = [*keymap.APP]
    COMMANDS = {ViewCommands}
    MODES = VIEWS  # type: ignore[assignment]  # Textual types MODES as str | Callable

    def __init__(
        self,
        inputs: list[Path],
        found: Inputs | None = None,
        live: Live | None = None,
        tracebacks: bool = True,
    ) -> None:
        super().__init__()
        self.tracebacks = tracebacks
        self.crash: Exception | None = None
        self.live = live
        self._seen_sizes: tuple[int, ...] = ()
        self._load_started = 0.0
        self._load_took = 0.0
        self._live_ended = False
        self.input_notes: tuple[str, ...] = ()  # a bundle cut short says so in the status line
        self.inputs = inputs
        self.found = found  # already read by the caller: a .tar.gz is unpacked only once
        self.points: list[Point] = []
        self.index: PacketIndex | None = None
        self.result: Result | None = None
        self.errors: list[str] = []
        self.progress: IndexProgress | None = None
        self.cancel = threading.Event()
        self.phase = Phase.INDEXING

    def on_mount(self) -> None:
        self.switch_mode("points")
        self.load()
        if self.live is not None:
            self.set_interval(1.0, self.follow)

    def _handle_exception(self, error: Exception) -> None:
        # Textual prints a whole traceback and lets the process exit 0; the CLI turns the
        # crash into one line and a non-zero status, unless --debug asked for the traceback.
        self.crash = error
        super()._handle_exception(error)
        if not self.tracebacks:
            self._exit_renderables.clear()

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
        except (OSError, KtraceError):
            return
        if sizes != self._seen_sizes or ended:
            self._seen_sizes = sizes
            self._live_ended = ended
            self.found = None  # the manifest changes when the capture ends
            self.load()

    # loading ----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load(self) -> None:
        """The core's pipeline, its steps posted as messages."""
        worker = get_current_worker()
        self._load_started = time.monotonic()
        try:
            found = self.found or read_inputs(self.inputs)
            self.input_notes = () if self.live is not None else found.notes
            steps = run_pipeline(
                found,
                self.cancel,
                workers=default_workers(reserve=1),
                keep_going=True,
                live=self.live is not None,
            )
            for step in steps:
                if worker.is_cancelled:
                    return
                message = self._message(step)
                if message is not None:
                    self.post_message(message)
        except Cancelled:
            return
        except KtraceError as exc:
            self.post_message(LoadError(Path("."), str(exc)))
            return
        self._load_took = time.monotonic() - self._load_started

    @staticmethod
    def _message(step: PipelineStep) -> Message | None:
        if isinstance(step, Analysing):
            return None  # the status already says "analysing"
        if isinstance(step, IndexProgress):
            return IndexStepped(step)
        if isinstance(step, FileFailed):
            return LoadError(step.path, step.message)
        if isinstance(step, Indexed):
            return IndexBuilt(step.index)
        return AnalysisDone(step.result)

    @on(IndexStepped)
    def on_progress(self, message: IndexStepped) -> None:
        self.progress = message.step
        self.points = list(message.step.points)
        self._refresh_views()

    @on(IndexBuilt)
    def on_indexed(self, message: IndexBuilt) -> None:
        self.index = message.index
        self.points = message.index.points
        self.phase = Phase.ANALYSING
        self._refresh_views()

    @on(AnalysisDone)
    def on_analyzed(self, message: AnalysisDone) -> None:
        self.result = message.result
        self.phase = Phase.READY
        self._refresh_views()
        if message.result.findings and self.live is None:
            found = plural(len(message.result.findings), "finding")
            self.notify(f"{found}: press 5", title="analysis done", timeout=3)

    @on(LoadError)
    def on_load_error(self, message: LoadError) -> None:
        if message.text not in self.errors:  # live mode re-reads: one toast per error
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
        if self.phase == Phase.INDEXING:
            p = self.progress
            pct = 100 * p.done / max(p.total, 1) if p else 0
            parts.append(
                f"indexing {p.file.name if p else ''} {pct:.0f}% "
                f"({p.packets if p else 0:,} packets)"
            )
        elif self.phase == Phase.ANALYSING:
            parts.append(f"{len(self.index or []):,} packets indexed; analysing…")
        else:
            assert self.result is not None
            parts.append(
                f"{len(self.index or []):,} packets, {plural(len(self.points), 'point')}, "
                f"{plural(len(self.result.findings), 'finding')}"
            )
        if self.errors:
            parts.append(f"{len(self.errors)} unreadable: {self.errors[-1]}")
        parts += self.input_notes
        return " | ".join(parts)

    def point_counts(self) -> dict[int, tuple[int, int]]:
        """Packets and bytes per point: from the result once there, else as indexing goes."""
        if self.result is not None:
            return {k: (p.packets, p.bytes) for k, p in enumerate(self.result.points)}
        p = self.progress
        if p is None:
            return {}
        return dict(enumerate(zip(p.point_packets, p.point_bytes, strict=True)))

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


def run(
    inputs: list[Path],
    found: Inputs | None = None,
    live: Live | None = None,
    tracebacks: bool = False,
) -> None:
    app = KtraceApp(inputs, found, live, tracebacks)
    app.run()
    if app.crash is not None:
        raise UiError(f"the terminal UI stopped: {type(app.crash).__name__}: {app.crash}")
