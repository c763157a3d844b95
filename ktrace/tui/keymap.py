"""Every key binding, once: the screens use these and the help screen is generated from the
live bindings of whatever screen is open (k9s conventions)."""

from __future__ import annotations

from textual.binding import Binding

APP = [
    Binding("q", "quit", "Quit", id="quit"),
    Binding("question_mark", "help", "Help", key_display="?", id="help"),
    Binding("colon", "command_palette", "Command", key_display=":", id="command"),
    Binding("1", "view('points')", "Points", id="view.points"),
    Binding("2", "view('flows')", "Flows", id="view.flows"),
    Binding("3", "view('packets')", "Packets", id="view.packets"),
    Binding("4", "view('dns')", "DNS", id="view.dns"),
    Binding("5", "view('findings')", "Findings", id="view.findings"),
    Binding("6", "view('http')", "HTTP", id="view.http"),
]
TABLE = [
    Binding("slash", "filter", "Filter", key_display="/", id="filter"),
    Binding("escape", "back", "Back", id="back"),
    Binding("enter", "open", "Open", id="open", show=False),
    Binding("s", "sort", "Sort by column", id="sort"),
    Binding("j", "cursor_down", "Down", show=False, id="down"),
    Binding("k", "cursor_up", "Up", show=False, id="up"),
    Binding("g", "top", "Top", show=False, id="top"),
    Binding("G", "bottom", "Bottom", show=False, id="bottom"),
]
DETAIL = [
    Binding("ctrl+d", "detail_down", "Detail down", id="detail.down"),
    Binding("ctrl+u", "detail_up", "Detail up", id="detail.up"),
]
PACKET = [Binding("escape", "back", "Back", id="back")]
