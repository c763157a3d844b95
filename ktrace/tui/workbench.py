"""What a screen may ask of the app: the captures as far as they are loaded, and a move to
another view. Screens hold this interface, never the App's own attributes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from textual.dom import DOMNode

    from ktrace.analysis.result import Result
    from ktrace.decode.index import PacketIndex
    from ktrace.model import PacketRef, Point


@runtime_checkable
class Workbench(Protocol):
    @property
    def points(self) -> Sequence[Point]:
        """The capture points, known before the index is built."""

    @property
    def index(self) -> PacketIndex | None:
        """The packet index, once built."""

    @property
    def result(self) -> Result | None:
        """The analysis, once done."""

    def point_counts(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) per point so far."""

    def row_of(self, ref: PacketRef) -> int:
        """The index row of a packet as findings cite it."""

    def status_text(self) -> str:
        """What the status line says: progress, then what is loaded, and errors."""

    def action_view(self, name: str) -> None:
        """Show one of the numbered views."""


def workbench(node: DOMNode) -> Workbench:
    """The app a screen or widget belongs to, as far as screens may know it."""
    return cast(Workbench, node.app)
