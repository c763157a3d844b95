"""The speed wing: each C loop beside its numpy or Python twin, behind plain functions.

The C parts are built by pip where a compiler is available; each twin gives identical results
(the tests hold every pair equal on random data). This package alone decides which one runs:
the C part where it was built, unless `twins_only()` is in force (the benchmark's no-C run,
the tests of the twins). Domain modules call the plain functions and never ask.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

_use_c = True


def load(module: str) -> ModuleType | None:
    """The C extension `module`, or None where it was not built."""
    try:
        return importlib.import_module(module)
    except ImportError:  # no compiler where it was installed
        return None


def native(part: ModuleType | None) -> ModuleType | None:
    """`part` when it was built and C parts are in use, else None: run the twin."""
    return part if _use_c else None


@contextmanager
def twins_only() -> Iterator[None]:
    """Run every twin instead of its C part while in force (not thread-local: for the
    benchmark and the tests, never for a user's run)."""
    global _use_c
    before, _use_c = _use_c, False
    try:
        yield
    finally:
        _use_c = before
