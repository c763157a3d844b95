"""JSON objects laid out from columns' pieces in one pass (`_rows.c`, without the GIL), and
its Python twin; ISO 8601 times worked out in integers, a column at a time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import orjson

from ktrace.kernels import load, native

_C = load("ktrace.kernels._rows")
DAY_US = 86_400_000_000
ISO = 26  # 2024-01-02T03:04:05.678901
UTC = b"+00:00"

# A column's key and values as JSON, each row's piece '"key":value' written as `_rows.c`
# describes: (PER_ROW, pieces, None): pieces[i]; (CODED, pieces, codes): pieces[codes[i]];
# (INTEGERS, key, values): key + values[i] in decimal; (TIMES, key, ns): key + the time as an
# ISO string; (MILLIS, key, micros): key + micros[i] / 1000 as JSON writes that float, or null.
PER_ROW, CODED, INTEGERS, TIMES, MILLIS = range(5)
UNKNOWN = np.iinfo(np.int64).min  # a MILLIS value written null
MILLIS_EXACT = 1 << 50  # below, micros / 1000 reads back from its three decimals
Pieces = tuple[int, Any, Any]
TENS = (np.arange(100) // 10 + ord("0")).astype(np.uint8)  # of 0-99, as ASCII digits
ONES = (np.arange(100) % 10 + ord("0")).astype(np.uint8)


def isos(ts_ns: np.ndarray) -> list[str]:
    """ISO 8601 times to the nearest microsecond, UTC, always with six decimals."""
    if not len(ts_ns):
        return []
    lines = np.full((len(ts_ns), ISO + len(UTC) + 1), ord("\n"), np.uint8)
    lines[:, :-1] = _iso_bytes(ts_ns)
    return lines.tobytes().decode("ascii").split("\n")[:-1]


def iso(ts_ns: int) -> str:
    return isos(np.array([ts_ns], np.int64))[0]


def _iso_bytes(ts_ns: np.ndarray) -> np.ndarray:
    """(n, 32) ASCII: the times' digits worked out in integers, the dates looked up per day
    (a capture spans few): numpy's datetime_as_string took 0.5 µs a value."""
    micros = (np.asarray(ts_ns, np.int64) + 500) // 1000
    day = micros // DAY_US
    out = np.empty((len(micros), ISO + len(UTC)), np.uint8)
    if not len(day):
        return out
    low, high = int(day.min()), int(day.max())
    if high - low < len(day):  # every day of the span: no sorting
        days, which = np.arange(low, high + 1), day - low
    else:
        days, which = np.unique(day, return_inverse=True)
    dates = np.frombuffer(b"".join(map(_date, days.tolist())), np.uint8).reshape(-1, 10)
    out[:, :10] = dates[which]
    seconds, fraction = np.divmod(micros - day * DAY_US, 1_000_000)
    minutes, out_seconds = np.divmod(seconds, 60)
    hours, out_minutes = np.divmod(minutes, 60)
    high_digits, low_digits = np.divmod(fraction, 10_000)
    for at, value in (
        (11, hours),
        (14, out_minutes),
        (17, out_seconds),
        (20, high_digits),
        (22, low_digits // 100),
        (24, low_digits % 100),
    ):
        out[:, at] = TENS[value]
        out[:, at + 1] = ONES[value]
    out[:, 10] = ord("T")
    out[:, 13] = out[:, 16] = ord(":")
    out[:, 19] = ord(".")
    out[:, ISO:] = np.frombuffer(UTC, np.uint8)
    return out


@cache
def _date(day: int) -> bytes:
    return str(np.datetime64(day, "D")).encode("ascii")


def laid_out(pieces: Sequence[Pieces], rows: int) -> bytes:
    """The rows of these columns' pieces as JSON objects, in C where it was built (without
    the GIL: another thread can make the next rows' pieces meanwhile)."""
    if not rows:
        return b""
    c_part = native(_C)
    return c_part.json_rows(pieces, rows) if c_part is not None else json_rows_python(pieces, rows)


def json_rows_python(columns: Sequence[Pieces], rows: int) -> bytes:
    """The rows as `_rows.c` lays them out: one list holding each row's opening and its
    columns' pieces, each column's put into every k-th place, joined once."""
    if not rows:
        return b""
    k = len(columns) + 1
    parts: list[bytes] = [b"},{"] * (rows * k)
    parts[0] = b"{"
    for at, column in enumerate(columns, 1):
        parts[at::k] = _per_row(*column)
    return b"".join(parts) + b"}"


def _per_row(kind: int, a: Any, b: Any) -> list[bytes]:
    if kind == PER_ROW:
        return list(a)
    if kind == CODED:
        return [a[code] for code in b.tolist()]
    if kind == INTEGERS:
        return [a + str(v).encode() for v in b.tolist()]
    if kind == TIMES:
        return [a + b'"' + t.encode() + b'"' for t in isos(b)]
    return [a + (b"null" if v == UNKNOWN else orjson.dumps(v / 1000)) for v in b.tolist()]
