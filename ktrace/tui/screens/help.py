"""`?`: the keys of the screen underneath, generated from its live bindings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="help.close")]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static("Keys (esc to close)", id="help-title")
            yield DataTable(id="help-keys", cursor_type="none", show_header=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("key", "action")
        for key, description in self.bindings:
            table.add_row(key, description)

    def action_dismiss(self) -> None:  # type: ignore[override]  # closes with no result
        self.dismiss()


def live_bindings(screen: Screen[object]) -> list[tuple[str, str]]:
    """(key, description) for every binding active on `screen`, app-wide ones included."""
    seen = set()
    out = []
    # ktrace's own keys (they carry ids) first, the focused widget's after
    ordered = sorted(screen.active_bindings.values(), key=lambda a: a.binding.id is None)
    for active in ordered:
        b = active.binding
        label = b.description or b.action
        display = b.key_display or screen.app.get_key_display(b)
        if (display, label) in seen:
            continue
        seen.add((display, label))
        out.append((display, label))
    return out
