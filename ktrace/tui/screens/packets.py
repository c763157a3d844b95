"""Every packet of every point in one list that renders only the lines on screen: a
million-packet capture scrolls as fast as a small one."""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Size
from textual.reactive import reactive
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Input, Static

from ktrace.analysis.packet_filter import filter_packets
from ktrace.analysis.views import flags_text
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP
from ktrace.tui import keymap
from ktrace.tui.screens.base import StatusLine
from ktrace.tui.workbench import Workbench, workbench

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
        self.rows: np.ndarray | None = None  # the filter's rows; None: every packet
        self._cache: dict[int, str] = {}

    @property
    def ktrace(self) -> Workbench:
        return workbench(self)

    def show(self, rows: np.ndarray | None) -> None:
        index = self.ktrace.index
        self.rows = rows
        self.count = len(rows) if rows is not None else len(index) if index is not None else 0
        self.cursor = min(self.cursor, max(self.count - 1, 0))
        self._cache.clear()
        self.virtual_size = Size(200, self.count)
        self.refresh()

    def row_at(self, line: int) -> int:
        return int(self.rows[line]) if self.rows is not None else line

    def line_text(self, line: int) -> str:
        text = self._cache.get(line)
        if text is not None:
            return text
        index = self.ktrace.index
        if index is None:
            return ""
        row = self.row_at(line)
        c = index.columns
        l3 = int(c.l3[row])
        ref = index.ref(row)
        since = (int(c.ts[row]) - int(c.ts[0])) / 1e9
        if l3:
            proto = int(c.proto[row])
            cells = (
                PROTO.get(proto, str(proto)),
                flags_text(int(c.tcp_flags[row])) if proto == TCP else "",
                f"{index.address(l3, int(c.src[row]))}:{int(c.sport[row])}",
                f"{index.address(l3, int(c.dst[row]))}:{int(c.dport[row])}",
            )
        else:
            cells = ("-", "", "(not IP)", "")
        text = packet_line(
            point_width(index),
            f"{ref.point}#{ref.number}",
            f"{since:.6f}",
            str(int(c.wirelen[row])),
            *cells,
        )
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[line] = text
        return text

    def render_line(self, y: int) -> Strip:
        line = self.scroll_offset.y + y
        if line >= self.count:
            return Strip.blank(self.size.width)
        text = self.line_text(line).ljust(self.size.width)[: max(self.size.width, 1)]
        return Strip([Segment(text, CURSOR if line == self.cursor else None)])

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


def point_width(index: PacketIndex) -> int:
    """Room for the longest 'point#number', as evidence names a packet (node-b-eth0#9)."""
    longest = max((len(p.id) for p in index.points), default=5)
    return longest + 1 + len(str(len(index)))


def packet_line(
    width: int, ref: str, time: str, size: str, proto: str, flags: str, src: str, dst: str
) -> str:
    """One row (or the header): who talked to whom first, so that 80 columns hold the ports;
    the time and size after them."""
    arrow = "→" if dst else " "
    return (
        f"{ref:<{width}} {proto:<5} {flags:<5} {src:>{ENDPOINT}} {arrow} {dst:<{ENDPOINT}} "
        f"{time:>10} {size:>5}"
    )


ENDPOINT = 21  # an IPv4 address and port at their longest; IPv6 ones take what they need


class PacketsView(Screen[None]):
    BINDINGS = [b for b in keymap.TABLE if b.id in ("back", "open", "filter")]

    def compose(self) -> ComposeResult:
        yield Static("All packets, every point, file order (enter: decode, /: filter)", id="title")
        yield Static(id="header", markup=False)
        yield PacketList()
        yield Input(placeholder="filter: address, port, tcp/udp/dns, point…", id="filter")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.refresh_data()
        self.query_one(PacketList).focus()

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def refresh_data(self) -> None:
        app = workbench(self)
        self.query_one(StatusLine).update(app.status_text())
        self.apply_filter(self.query_one("#filter", Input).value)

    def apply_filter(self, text: str) -> None:
        app = workbench(self)
        plist = self.query_one(PacketList)
        if app.index is None:
            return
        header = packet_line(
            point_width(app.index),
            "POINT#PACKET",
            "TIME s",
            "BYTES",
            "PROTO",
            "FLAGS",
            "SOURCE",
            "DESTINATION",
        )
        self.query_one("#header", Static).update(header)
        if not text.strip():
            plist.show(None)
            self.query_one(StatusLine).update(app.status_text())
            return
        found = filter_packets(app.index, text)
        plist.show(found.rows)
        note = f"{len(found.rows):,} of {len(app.index):,} packets match {text!r}"
        if found.unknown:
            note += f"; not an address, port, protocol or point: {', '.join(found.unknown)}"
        self.query_one(StatusLine).update(note)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = bool(event.value)
        self.apply_filter(event.value)
        self.query_one(PacketList).focus()

    def action_open(self) -> None:
        from ktrace.tui.screens.packet import PacketView

        plist = self.query_one(PacketList)
        if plist.count:
            self.app.push_screen(PacketView(plist.row_at(plist.cursor)))

    def action_back(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.apply_filter("")
            self.query_one(PacketList).focus()
        elif len(self.app.screen_stack) > 1:
            self.app.pop_screen()
