"""Columns of rows that can number hundreds of thousands (DNS transactions, flows, HTTP
requests): each gives its values as a list, for row objects, and as each value's JSON, for
--json, without an object per row on the way. A column of few distinct values (names,
addresses, codes) is codes into a vocabulary whose values are encoded once, and the rows are
laid out from the columns' pieces by the speed wing (kernels/json_rows.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from ktrace.kernels.json_rows import (
    CODED,
    INTEGERS,
    MILLIS,
    MILLIS_EXACT,
    PER_ROW,
    TIMES,
    UNKNOWN,
    Pieces,
    isos,
)

# rows held in rows go through `default`, which writes them as plain() lays them out
ROW_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS

MERGED_MAX = 4096  # pieces in a vocabulary merged from adjacent coded columns


class Column(Protocol):
    def listed(self) -> list[Any]: ...

    def json(self, key: bytes) -> Pieces: ...


class Vocabulary:
    """A column's distinct values, each encoded as JSON once however many rows hold it."""

    def __init__(self, values: Sequence[object]) -> None:
        # fromiter keeps tuples whole where np.array would make them a second dimension
        self.values = np.fromiter(values, object, len(values))
        self._json: dict[bytes, list[bytes]] = {}

    def json(self, key: bytes) -> list[bytes]:
        if key not in self._json:
            self._json[key] = [key + orjson.dumps(v) for v in self.values]
        return self._json[key]


@dataclass(frozen=True, eq=False)
class Coded:
    """A column of repeated values: codes per row into a vocabulary."""

    codes: np.ndarray  # per row, into the vocabulary
    vocabulary: Vocabulary

    def listed(self) -> list[Any]:
        return self.vocabulary.values[self.codes].tolist()

    def json(self, key: bytes) -> Pieces:
        return CODED, self.vocabulary.json(key), self.codes.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Integers:
    """A column of integers, as JSON numbers."""

    values: np.ndarray

    def listed(self) -> list[Any]:
        return self.values.tolist()

    def json(self, key: bytes) -> Pieces:
        return INTEGERS, key, self.values.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Listed:
    """A column already made of JSON-ready values."""

    values: list[Any]  # JSON-ready values

    def listed(self) -> list[Any]:
        return self.values

    def json(self, key: bytes) -> Pieces:
        """The column encoded by orjson in one call and cut at its commas when no value holds
        one (numbers, most names), else each distinct value once (each value, when they are
        dicts). orjson escapes control characters, so a NUL marks the cuts."""
        values = self.values
        if not values:
            return PER_ROW, [], None
        encoded = orjson.dumps(values)[1:-1]
        if encoded.count(b",") == len(values) - 1:
            return PER_ROW, (key + encoded.replace(b",", b"\0" + key)).split(b"\0"), None
        if isinstance(values[0], dict):
            return PER_ROW, [key + orjson.dumps(v) for v in values], None
        known = {v: key + orjson.dumps(v) for v in set(values)}
        return PER_ROW, [known[v] for v in values], None


@dataclass(frozen=True)
class Objects:
    """Values orjson writes through `default` (rows a row holds), one at a time."""

    values: list[Any]
    default: Callable[[Any], Any]

    def listed(self) -> list[Any]:
        return self.values

    def json(self, key: bytes) -> Pieces:
        dumps, default = orjson.dumps, self.default
        return (
            PER_ROW,
            [key + dumps(v, default=default, option=ROW_OPTIONS) for v in self.values],
            None,
        )


@dataclass(frozen=True, eq=False)
class Times:
    """A column of timestamps (ns), written as ISO 8601 times."""

    ts_ns: np.ndarray

    def listed(self) -> list[Any]:
        return isos(self.ts_ns)

    def json(self, key: bytes) -> Pieces:
        return TIMES, key, np.ascontiguousarray(self.ts_ns, np.int64)


@dataclass(frozen=True, eq=False)
class Millis:
    """Durations in whole microseconds, as milliseconds: the float micros / 1000 (2.22, 1.0),
    or None where `known` is False."""

    micros: np.ndarray
    known: np.ndarray

    def listed(self) -> list[Any]:
        return or_none(self.micros / 1000, self.known)

    def json(self, key: bytes) -> Pieces:
        values = np.where(self.known, self.micros, UNKNOWN).astype(np.int64)
        if (np.abs(values[self.known]) >= MILLIS_EXACT).any():  # far past any latency
            return Listed(self.listed()).json(key)
        return MILLIS, key, values


def or_none(values: np.ndarray, ok: np.ndarray) -> list[Any]:
    """Each value where `ok`, else None (an unanswered query's latency), as Python values."""
    out = values.astype(object)
    out[~ok] = None
    return out.tolist()


BOOLEANS = Vocabulary([False, True])


def flags(values: np.ndarray) -> Coded:
    """A boolean column."""
    return Coded(values.astype(np.int8), BOOLEANS)


def json_pieces(columns: Sequence[tuple[str, Column]]) -> list[Pieces]:
    """Each column's pieces, its key first, for laid_out to make the rows' JSON objects."""
    return [
        column.json((b"," if at else b"") + orjson.dumps(name) + b":")
        for at, (name, column) in enumerate(columns)
    ]


Merges = dict[tuple[int, int], tuple[list[bytes], ...]]


def merged(pieces: list[Pieces], made: Merges) -> list[Pieces]:
    """Adjacent coded columns as one, whose vocabulary holds each pair of their pieces, while
    it stays within MERGED_MAX: rows of a few values repeated (a DNS storm's clients, names,
    answers) are laid out in fewer, longer pieces, to the same bytes. `made` keeps the
    merged vocabularies from one slice of rows to the next."""
    out: list[Pieces] = []
    for piece in pieces:
        kind, vocabulary, codes = piece
        if out and kind == CODED and out[-1][0] == CODED:
            _, before, before_codes = out[-1]
            if len(before) * len(vocabulary) <= MERGED_MAX:
                key = (id(before), id(vocabulary))
                if key not in made:  # the lists it is made of kept with it: ids stay theirs
                    both = [a + b for a in before for b in vocabulary]
                    made[key] = (both, before, vocabulary)
                out[-1] = (CODED, made[key][0], before_codes * len(vocabulary) + codes)
                continue
        out.append(piece)
    return out
