"""What the background workers tell the UI. Posting a message is thread-safe."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from ktrace.analysis.result import Result
from ktrace.decode.index import PacketIndex
from ktrace.decode.index import Progress as Step


class Progress(Message):
    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Progress)


class Indexed(Message):
    def __init__(self, index: PacketIndex) -> None:
        super().__init__()
        self.index = index


class Analyzed(Message):
    def __init__(self, result: Result) -> None:
        super().__init__()
        self.result = result


class LoadError(Message):
    def __init__(self, file: Path, text: str) -> None:
        super().__init__()
        self.file, self.text = file, text
