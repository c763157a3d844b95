"""A view: a table of rows with a title, a `/` filter, sorting, and a status line."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from ktrace.tui import keymap
from ktrace.tui.workbench import Workbench, workbench

MAX_ROWS = 2000


class StatusLine(Static):
    """Indexing progress, then what is loaded; errors stay visible. Never markup: it quotes
    file names and captures."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False)


class TableView(Screen[None]):
    BINDINGS = [*keymap.TABLE]
    TITLE = ""
    COLUMNS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""
        self.sort_column = -1
        self.rows: list[tuple[Any, tuple[Any, ...]]] = []  # (key, cells)

    @property
    def ktrace(self) -> Workbench:
        return workbench(self)

    def compose(self) -> ComposeResult:
        yield Static(self.TITLE, id="title", markup=False)
        with Vertical(id="body"):
            yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter: IP, name, port, protocol, namespace…", id="filter")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*self.columns())
        self.query_one("#filter", Input).display = False
        self.refresh_data()

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def columns(self) -> tuple[str, ...]:
        return self.COLUMNS

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        return []

    def refresh_data(self) -> None:
        """The rows built again, off the UI's thread: a view of a large capture has hundreds
        of thousands, worked out in time that grows with it."""
        self._prepare(rebuild=True)

    def fill(self) -> None:
        """The rows filtered and sorted again (off the UI's thread too) and shown."""
        self._prepare(rebuild=False)

    @work(thread=True, exclusive=True, group="rows")
    def _prepare(self, rebuild: bool) -> None:
        rows = self.build_rows() if rebuild else self.rows
        needle = self.filter_text.lower()
        shown = [
            r
            for r in rows
            if not needle
            or needle in " ".join(str(c.plain if isinstance(c, Text) else c) for c in r[1]).lower()
        ]
        if self.sort_column >= 0:
            column = self.sort_column
            shown.sort(key=lambda r: _sortable(r[1][column]))
        total = len(shown)
        # A table measures every cell it holds: past a few thousand rows, filter instead.
        shown = shown[:MAX_ROWS]
        plain = [
            # text from captures is never markup: "[fd00::1]:80" is an address, not a tag
            (str(key), tuple(Text(c) if isinstance(c, str) else c for c in cells))
            for key, cells in shown
        ]
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show, rows, plain, total)

    def _show(self, rows: list[tuple[Any, tuple[Any, ...]]], shown: list[Any], total: int) -> None:
        self.rows = rows
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        status = self.ktrace.status_text()
        if total > len(shown):
            status += f" | showing {len(shown):,} of {total:,} rows: / to filter"
        self.query_one(StatusLine).update(status)
        for key, cells in shown:
            table.add_row(*cells, key=key)
        if shown:
            table.move_cursor(row=min(keep, len(shown) - 1))
        self.shown()

    def shown(self) -> None:
        """Called once the table holds the rows: views that decorate them override this."""

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    # actions ------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value
        event.input.display = bool(event.value)
        self.fill()
        self.query_one(DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.fill()

    def action_back(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.filter_text = ""
            self.fill()
            self.query_one(DataTable).focus()
        elif len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_sort(self) -> None:
        table = self.query_one(DataTable)
        self.sort_column = table.cursor_column if self.sort_column != table.cursor_column else -1
        self.fill()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.sort_column = event.column_index
        self.fill()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        """Drill into the selected row; views that have somewhere to go override this."""

    def open_packet(self) -> None:
        """For views whose rows are keyed by a packet: decode it."""
        key = self.selected_key()
        if key is not None:
            from ktrace.tui.screens.packet import PacketView

            self.app.push_screen(PacketView(int(key)))

    def action_cursor_down(self) -> None:
        self.query_one(DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(DataTable).action_cursor_up()

    def action_top(self) -> None:
        self.query_one(DataTable).move_cursor(row=0)

    def action_bottom(self) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=max(table.row_count - 1, 0))


def _sortable(value: Any) -> tuple[int, Any]:
    text = value.plain if isinstance(value, Text) else value
    if isinstance(text, int | float):
        return (0, text)
    try:
        return (0, float(str(text).split()[0].lstrip("+")))
    except (ValueError, IndexError):
        return (1, str(text))
