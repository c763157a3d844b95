"""What the background workers tell the UI. Posting a message is thread-safe."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from ktrace.analysis.result import Result
from ktrace.decode.index import IndexProgress, PacketIndex


class IndexStepped(Message):
    def __init__(self, step: IndexProgress) -> None:
        super().__init__()
        self.step = step

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, IndexStepped)


class IndexBuilt(Message):
    def __init__(self, index: PacketIndex) -> None:
        super().__init__()
        self.index = index


class AnalysisDone(Message):
    def __init__(self, result: Result) -> None:
        super().__init__()
        self.result = result


class LoadError(Message):
    def __init__(self, file: Path, text: str) -> None:
        super().__init__()
        self.file, self.text = file, text
