"""The error family: every failure a user can cause ends as one of these, with an exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    BAD_INPUT = 3
    CLUSTER = 4
    INTERRUPTED = 130


class KtraceError(Exception):
    """A failure with a one-line message and, where we know one, what to do about it."""

    exit_status = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(KtraceError):
    exit_status = ExitStatus.USAGE


class CaptureFileError(KtraceError):
    """A capture file that cannot be read at all (a partial read is a warning, not this)."""

    exit_status = ExitStatus.BAD_INPUT


class Cancelled(KtraceError):
    exit_status = ExitStatus.INTERRUPTED

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class UiError(KtraceError):
    """The terminal UI crashed: reported in one line, the traceback only with --debug."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "run again with --debug for the traceback, and report it")


class ClusterError(KtraceError):
    """The cluster refused or could not do what was asked (RBAC, PodSecurity, not found...)."""

    exit_status = ExitStatus.CLUSTER
