"""One packet: the scapy layer tree (expandable) and the hex/ASCII dump. scapy is imported
and run in a worker, for this packet only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static, Tree

from ktrace.tui import keymap
from ktrace.tui.workbench import workbench

if TYPE_CHECKING:
    from ktrace.decode.deep import Layer


class PacketView(Screen[None]):
    BINDINGS = [*keymap.PACKET]

    def __init__(self, row: int) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        yield Static(id="title", markup=False)
        with Horizontal(id="packet"):
            yield Tree("decoding…", id="layers")
            yield Static(id="hex", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        app = workbench(self)
        index = app.index
        assert index is not None
        c = index.columns
        point = index.points[int(c.point[self.row])]
        ref = index.ref(self.row)
        self.query_one("#title", Static).update(
            f"{ref.point} packet {ref.number}: {int(c.caplen[self.row])} of "
            f"{int(c.wirelen[self.row])} bytes captured"
        )
        self.decode(index.packet_bytes(self.row), point.linktype)

    @work(thread=True, exclusive=True, group="decode", exit_on_error=False)
    def decode(self, raw: bytes, linktype: int) -> None:
        from ktrace.decode.deep import dissect, hexdump, layers

        tree = layers(dissect(raw, linktype))
        text = hexdump(raw)
        self.app.call_from_thread(self.show, tree, text)

    def show(self, tree: list[Layer], text: str) -> None:
        widget = self.query_one(Tree)
        widget.clear()
        widget.root.set_label("packet")
        for layer in tree:
            node = widget.root.add(Text(layer.name), expand=True)
            for name, value in layer.fields:
                node.add_leaf(Text(f"{name} = {value}"))
        widget.root.expand()
        self.query_one("#hex", Static).update(text)

    def action_back(self) -> None:
        self.app.pop_screen()
