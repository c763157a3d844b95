"""The C parts (built by pip where a compiler is available): each has a numpy or Python
twin giving identical results, used where the extension was not built."""

from __future__ import annotations

import importlib
from typing import Any


def compiled(module: str, name: str) -> Any | None:
    """`name` from the C extension `module`, or None where it was not built."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # no compiler where it was installed
        return None
