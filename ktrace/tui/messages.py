"""What the background workers tell the UI. Posting a message is thread-safe."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from ktrace.analysis.report import Report
from ktrace.decode.index import PacketIndex


class Progress(Message):
    def __init__(self, file: Path, done: int, total: int, packets: int) -> None:
        super().__init__()
        self.file, self.done, self.total, self.packets = file, done, total, packets

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Progress)


class Indexed(Message):
    def __init__(self, index: PacketIndex) -> None:
        super().__init__()
        self.index = index


class Analyzed(Message):
    def __init__(self, report: Report) -> None:
        super().__init__()
        self.report = report


class LoadError(Message):
    def __init__(self, file: Path, text: str) -> None:
        super().__init__()
        self.file, self.text = file, text
