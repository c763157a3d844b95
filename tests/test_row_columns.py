"""Row columns: the values and JSON of many rows written without an object per row."""

from __future__ import annotations

import datetime

import numpy as np
import orjson

from ktrace.analysis.row_columns import (
    Coded,
    Listed,
    Times,
    Vocabulary,
    flags,
    iso,
    isos,
    json_objects,
)


def reference_iso(ts_ns: int) -> str:
    """datetime's own writing, with the six decimals it leaves out at a whole second."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    t = epoch + datetime.timedelta(microseconds=(ts_ns + 500) // 1000)
    return t.isoformat(timespec="microseconds")


def test_times_read_as_datetime_writes_them_across_days_roundings_and_before_1970() -> None:
    rng = np.random.default_rng(7)
    ts = np.concatenate(
        [
            rng.integers(-(2**62), 2**62, 20_000),
            rng.integers(1_700_000_000 * 10**9, 1_700_300_000 * 10**9, 20_000),
            [0, -1, 499, 500, 999_999_499, 999_999_500, 86_400 * 10**9 - 1, -86_400 * 10**9],
        ]
    ).astype(np.int64)
    expected = [reference_iso(v) for v in ts.tolist()]
    assert isos(ts) == expected
    assert iso(int(ts[-2])) == expected[-2] == "1970-01-02T00:00:00.000000+00:00"
    assert Times(ts).json(b",") == [b"," + orjson.dumps(t) for t in expected]
    assert Times(ts).listed() == expected
    assert isos(np.zeros(0, np.int64)) == []


def test_listed_columns_cut_at_commas_only_when_no_value_holds_one() -> None:
    plain = Listed([1, None, 2.5, "a", True])
    assert plain.json(b'"k":') == [b'"k":' + orjson.dumps(v) for v in plain.values]
    commas = Listed(["a,b", ("x", "y"), (), "a,b", 3])
    assert commas.json(b"K") == [b"K" + orjson.dumps(v) for v in commas.values]
    assert Listed([]).json(b"K") == []
    dicts = Listed([{"p:a": 1, "p:b": 2}, {}, {"p:a": 3}])  # packets per point: unhashable
    assert dicts.json(b"K") == [b"K" + orjson.dumps(v) for v in dicts.values]


def test_coded_columns_read_their_vocabulary_and_keep_tuples_whole() -> None:
    words = Vocabulary(["x", ("t", "u"), None, ""])
    column = Coded(np.array([1, 0, 2, 1, 3]), words)
    assert column.listed() == [("t", "u"), "x", None, ("t", "u"), ""]
    assert column.json(b"=") == [b'=["t","u"]', b'="x"', b"=null", b'=["t","u"]', b'=""']
    assert flags(np.array([True, False])).listed() == [True, False]


def test_json_objects_are_the_rows_as_dicts() -> None:
    rows = [
        {"name": 'a"b,c', "n": 1, "ok": True, "seen": "1970-01-01T00:00:00.000001+00:00"},
        {"name": "é", "n": None, "ok": False, "seen": "1970-01-01T00:00:01.000000+00:00"},
        {"name": 'a"b,c', "n": 2.25, "ok": True, "seen": "1970-01-01T00:00:02.000000+00:00"},
    ]
    names = Vocabulary(['a"b,c', "é"])
    columns = [
        ("name", Coded(np.array([0, 1, 0]), names)),
        ("n", Listed([1, None, 2.25])),
        ("ok", flags(np.array([True, False, True]))),
        ("seen", Times(np.array([1000, 10**9, 2 * 10**9], np.int64))),
    ]
    written = json_objects(columns, 3)
    assert written == b",".join(orjson.dumps(r) for r in rows)
    assert json_objects(columns[:1], 0) == b""
