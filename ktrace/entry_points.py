"""Entry points of one group, read straight from the installed distributions' metadata.

`importlib.metadata` answers the same question, but importing it takes ~40 ms (it brings the
email, zip and socket modules) on every start of a command that loads its checks, a tenth of
ktrace's start-up. What is read here is the part of the format entry points use
(packaging.python.org, "Entry points specification"): each distribution's
`entry_points.txt` in a `*.dist-info` or `*.egg-info` directory on `sys.path`, an INI file
whose sections are groups and whose `name = module:attr` lines are the entries. As in
`importlib.metadata`, a distribution found twice counts once, the first on the path.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass

METADATA_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPoint:
    """One entry point a distribution declares: its name and what it loads."""

    name: str
    value: str  # "module:attr.attr", maybe followed by "[extras]"
    distribution: str

    def load(self) -> object:
        module, _, attrs = self.value.partition("[")[0].strip().partition(":")
        found: object = importlib.import_module(module.strip())
        for attr in filter(None, attrs.strip().split(".")):
            found = getattr(found, attr)
        return found


def entry_points(group: str, path: list[str] | None = None) -> list[EntryPoint]:
    """The entries of `group` of every distribution on `path` (default `sys.path`)."""
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for directory in sys.path if path is None else path:
        for name, metadata in _distributions(directory or "."):
            key = _normalized(name)
            if key in seen:
                continue
            seen.add(key)
            try:
                with open(os.path.join(metadata, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if f"[{group}]" in text:
                found += [EntryPoint(k, v, name) for k, v in _section(text, group)]
    return found


def _distributions(directory: str) -> list[tuple[str, str]]:
    """(distribution name, metadata directory) for the metadata directories in `directory`,
    in name order (the order `os.scandir` gives varies by file system)."""
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(METADATA_SUFFIXES))
    except OSError:  # not a directory: a zip on the path, or gone
        return []
    return [(n.rpartition(".")[0].partition("-")[0], os.path.join(directory, n)) for n in names]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _section(text: str, group: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
        elif inside and "=" in line:
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip()))
    return entries
