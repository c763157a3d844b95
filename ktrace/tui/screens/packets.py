"""Every packet of every point in one list that renders only the lines on screen: a
million-packet capture scrolls as fast as a small one."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Size
from textual.reactive import reactive
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Static

from ktrace.analysis.views import flags_text
from ktrace.decode.transport import TCP
from ktrace.tui import keymap
from ktrace.tui.screens.base import StatusLine

if TYPE_CHECKING:
    from ktrace.tui.app import KtraceApp

PROTO = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP"}
CURSOR = Style(reverse=True)


class PacketList(ScrollView, can_focus=True):
    # Own keys, without ScrollView's animated paging: one key, one frame.
    BINDINGS = [
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("home,g", "move(-1_000_000_000)", "Top", show=False),
        Binding("end,G", "move(1_000_000_000)", "Bottom", show=False),
    ]
    cursor = reactive(0)

    def __init__(self) -> None:
        super().__init__(id="packets")
        self.count = 0
        self._cache: dict[int, str] = {}

    @property
    def ktrace(self) -> KtraceApp:
        return cast("KtraceApp", self.app)

    def set_count(self, count: int) -> None:
        self.count = count
        self.virtual_size = Size(200, count)
        self.refresh()

    def line_text(self, row: int) -> str:
        text = self._cache.get(row)
        if text is not None:
            return text
        index = self.ktrace.index
        if index is None:
            return ""
        c = index.columns
        l3 = int(c.l3[row])
        t0 = int(c.ts[0])
        point = index.points[int(c.point[row])].id
        if l3:
            src = f"{index.address(l3, int(c.src[row]))}:{int(c.sport[row])}"
            dst = f"{index.address(l3, int(c.dst[row]))}:{int(c.dport[row])}"
            proto = int(c.proto[row])
            info = (
                flags_text(int(c.tcp_flags[row])) if proto == TCP else ""
            ) + f" len={int(c.paylen[row])}"
            what = f"{src:>22} → {dst:<22} {PROTO.get(proto, str(proto)):<6} {info}"
        else:
            what = "(not IP)"
        text = (
            f"{row + 1:>8} {(int(c.ts[row]) - t0) / 1e9:>12.6f} {point:<14} "
            f"{int(c.wirelen[row]):>6} {what}"
        )
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[row] = text
        return text

    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y
        if row >= self.count:
            return Strip.blank(self.size.width)
        text = self.line_text(row).ljust(self.size.width)[: max(self.size.width, 1)]
        return Strip([Segment(text, CURSOR if row == self.cursor else None)])

    def watch_cursor(self, old: int, new: int) -> None:
        self.scroll_to_region_y(new)
        self.refresh()

    def scroll_to_region_y(self, row: int) -> None:
        top = self.scroll_offset.y
        height = max(self.size.height, 1)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + height:
            self.scroll_to(y=row - height + 1, animate=False)

    def action_move(self, delta: int) -> None:
        if self.count:
            self.cursor = max(0, min(self.count - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(self.size.height - 1, 1))


class PacketsView(Screen[None]):
    BINDINGS = [b for b in keymap.TABLE if b.id in ("back", "open")]

    def compose(self) -> ComposeResult:
        yield Static("All packets, every point, file order (enter: decode)", id="title")
        yield PacketList()
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_data()
        self.query_one(PacketList).focus()

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def refresh_data(self) -> None:
        app = cast("KtraceApp", self.app)
        self.query_one(StatusLine).update(app.status_text())
        if app.index is not None:
            self.query_one(PacketList).set_count(len(app.index))

    def action_open(self) -> None:
        from ktrace.tui.screens.packet import PacketView

        plist = self.query_one(PacketList)
        if plist.count:
            self.app.push_screen(PacketView(plist.cursor))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
