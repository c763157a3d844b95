"""Row columns: the values and JSON of many rows written without an object per row."""

from __future__ import annotations

import datetime

import numpy as np
import orjson
import pytest

from ktrace.analysis.row_columns import (
    Coded,
    Integers,
    Listed,
    Millis,
    Times,
    Vocabulary,
    flags,
    json_pieces,
)
from ktrace.kernels import json_rows
from ktrace.kernels.json_rows import (
    CODED,
    INTEGERS,
    MILLIS,
    PER_ROW,
    TIMES,
    UNKNOWN,
    _per_row,
    iso,
    isos,
    json_rows_python,
    laid_out,
)

_json_rows_c = None if json_rows._C is None else json_rows._C.json_rows


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
            # in order across a midnight: the C layout reuses the date while the day holds
            np.arange(86_400 * 10**9 - 5_000, 86_400 * 10**9 + 5_000, 997),
            [0, -1, 499, 500, 999_999_499, 999_999_500, 86_400 * 10**9 - 1, -86_400 * 10**9],
        ]
    ).astype(np.int64)
    expected = [reference_iso(v) for v in ts.tolist()]
    assert isos(ts) == expected
    assert iso(int(ts[-2])) == expected[-2] == "1970-01-02T00:00:00.000000+00:00"
    assert _per_row(*Times(ts).json(b",")) == [b"," + orjson.dumps(t) for t in expected]
    assert Times(ts).listed() == expected
    assert isos(np.zeros(0, np.int64)) == []
    if _json_rows_c is not None:
        written = _json_rows_c([Times(ts).json(b'"t":')], len(ts))
        assert [r["t"] for r in orjson.loads(b"[" + written + b"]")] == expected


def test_milliseconds_written_as_the_float_they_are() -> None:
    """micros / 1000 as orjson writes it (shortest digits that read back: 2.22, 1.0, -0.005),
    null where unknown; from the C layout as from Python's."""
    rng = np.random.default_rng(5)
    micros = np.concatenate(
        [
            np.arange(-2100, 2100),
            rng.integers(-(10**12), 10**12, 20_000),
            rng.integers(0, 2**50, 2_000),
            [2**50 - 1, -(2**50) + 1, 10**15, 123_000, 5],
        ]
    ).astype(np.int64)
    known = rng.random(len(micros)) > 0.1
    column = Millis(micros, known)
    expected = [
        v / 1000 if k else None for v, k in zip(micros.tolist(), known.tolist(), strict=True)
    ]
    assert column.listed() == expected
    pieces = column.json(b"m")
    assert pieces[0] == MILLIS and pieces[2][~known].tolist() == [UNKNOWN] * int((~known).sum())
    assert _per_row(*pieces) == [b"m" + orjson.dumps(v) for v in expected]
    if _json_rows_c is not None:
        written = _json_rows_c([(MILLIS, b'"m":', pieces[2])], len(micros))
        assert written == json_rows_python([pieces[:1] + (b'"m":', pieces[2])], len(micros))
        assert [r["m"] for r in orjson.loads(b"[" + written + b"]")] == expected
    huge = Millis(np.array([2**50, 3], np.int64), np.array([True, True]))
    assert huge.json(b"m")[0] == PER_ROW  # past exact thousandths: orjson writes them
    assert _per_row(*huge.json(b"m")) == [b"m" + orjson.dumps(2**50 / 1000), b"m0.003"]


def test_listed_columns_cut_at_commas_only_when_no_value_holds_one() -> None:
    plain = Listed([1, None, 2.5, "a", True])
    assert plain.json(b'"k":') == (PER_ROW, [b'"k":' + orjson.dumps(v) for v in plain.values], None)
    commas = Listed(["a,b", ("x", "y"), (), "a,b", 3])
    assert commas.json(b"K") == (PER_ROW, [b"K" + orjson.dumps(v) for v in commas.values], None)
    assert Listed([]).json(b"K") == (PER_ROW, [], None)
    dicts = Listed([{"p:a": 1, "p:b": 2}, {}, {"p:a": 3}])  # packets per point: unhashable
    assert dicts.json(b"K") == (PER_ROW, [b"K" + orjson.dumps(v) for v in dicts.values], None)


def test_coded_columns_read_their_vocabulary_and_keep_tuples_whole() -> None:
    words = Vocabulary(["x", ("t", "u"), None, ""])
    column = Coded(np.array([1, 0, 2, 1, 3]), words)
    assert column.listed() == [("t", "u"), "x", None, ("t", "u"), ""]
    kind, pieces, codes = column.json(b"=")
    assert kind == CODED and pieces == [b'="x"', b'=["t","u"]', b"=null", b'=""']
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0, 2, 1, 3]
    numbers = Integers(np.array([0, -7, 2**63 - 1, -(2**63)], np.int64))
    assert numbers.listed() == [0, -7, 2**63 - 1, -(2**63)]
    assert _per_row(*numbers.json(b"n")) == [b"n" + orjson.dumps(v) for v in numbers.listed()]
    assert flags(np.array([True, False])).listed() == [True, False]


def test_laid_out_rows_are_the_rows_as_dicts() -> None:
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
    written = laid_out(json_pieces(columns), 3)
    assert written == b",".join(orjson.dumps(r) for r in rows)
    assert laid_out(json_pieces(columns[:1]), 0) == b""


def test_rows_laid_out_in_c_as_in_python() -> None:
    if _json_rows_c is None:
        pytest.skip("the C parts were not built (no compiler at install time)")
    rng = np.random.default_rng(11)
    for rows in (0, 1, 2, 7, 1000):
        vocabulary = [b',"v":' + orjson.dumps(w) for w in ("", "a", "é", "x" * 300)]
        edges = np.array([0, -1, 9, 10, -(2**63), 2**63 - 1], np.int64)
        numbers = np.concatenate([edges, rng.integers(-(2**63), 2**63 - 1, rows, np.int64)])
        times = rng.integers(-(2**62), 2**62, rows).astype(np.int64)
        micros = np.where(rng.random(rows) < 0.2, UNKNOWN, rng.integers(-(10**9), 10**9, rows))
        columns = [
            (
                PER_ROW,
                [b'"n":' + orjson.dumps(int(v)) for v in rng.integers(-9, 10**12, rows)],
                None,
            ),
            (CODED, vocabulary, rng.integers(0, len(vocabulary), rows).astype(np.int64)),
            (INTEGERS, b',"i":', numbers[:rows]),
            (TIMES, b',"t":', times),
            (MILLIS, b',"m":', micros.astype(np.int64)),
            (PER_ROW, [b',"e":[]'] * rows, None),
            # pieces of 7 to 47 bytes: each size the copy treats apart (numbers: 1 to 20)
            (PER_ROW, [b',"s":"' + b"x" * (k % 41) + b'"' for k in range(rows)], None),
        ]
        for k in range(1, len(columns) + 1):
            written = _json_rows_c(columns[:k], rows)
            assert written == json_rows_python(columns[:k], rows), (rows, k)
        if rows:
            first = orjson.loads(b"[" + _json_rows_c(columns, rows) + b"]")[0]
            assert first.keys() == {"n", "v", "i", "t", "m", "e", "s"}
    assert _json_rows_c([(INTEGERS, b"", edges)], len(edges)) == b",".join(
        b"{%d}" % v for v in edges.tolist()
    )
    with pytest.raises(ValueError, match="outside"):
        _json_rows_c([(CODED, [b"a"], np.array([0, 1], np.int64))], 2)
    with pytest.raises(ValueError, match="one a row"):
        _json_rows_c([(PER_ROW, [b"a"], None)], 2)
    with pytest.raises(ValueError, match="int64"):
        _json_rows_c([(CODED, [b"a"], np.array([0, 0], np.int32))], 2)
    with pytest.raises(ValueError, match="int64"):
        _json_rows_c([(INTEGERS, b"k", np.array([0, 0, 0], np.int64))], 2)
    with pytest.raises(ValueError, match="int64"):
        _json_rows_c([(TIMES, b"k", np.array([0], np.int64))], 2)
    with pytest.raises(TypeError, match="not bytes"):
        _json_rows_c([(MILLIS, "k", np.array([0, 0], np.int64))], 2)
    with pytest.raises(TypeError, match="not bytes"):
        _json_rows_c([(PER_ROW, ["a", "b"], None)], 2)
    with pytest.raises(TypeError, match="not bytes"):  # found by the pass without the GIL
        _json_rows_c([(INTEGERS, b"k", edges[:2]), (CODED, [b"a", "b"], np.array([0, 1]))], 2)
    # a vocabulary's piece no row takes is never read
    assert _json_rows_c([(CODED, [b"a", "b"], np.array([0, 0]))], 2) == b"{a},{a}"
    with pytest.raises(ValueError, match="kind"):
        _json_rows_c([(9, [b"a"], None)], 1)


def test_adjacent_coded_columns_merged_lay_out_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Coded columns side by side become one whose vocabulary holds their pairs, while that
    stays within the cap: the same rows, in fewer pieces; a merged vocabulary is made once
    for all the slices."""
    from ktrace.analysis import row_columns

    rng = np.random.default_rng(5)
    small, wide = Vocabulary(["a", "b", "c"]), Vocabulary([f"n{k}" for k in range(40)])
    made: row_columns.Merges = {}
    monkeypatch.setattr(row_columns, "MERGED_MAX", 3 * 40 * 2)
    for rows in (1, 50):
        columns = [
            ("x", Coded(rng.integers(0, 3, rows), small)),
            ("y", Coded(rng.integers(0, 40, rows), wide)),
            ("z", flags(rng.random(rows) < 0.5)),
            ("w", Coded(rng.integers(0, 3, rows), small)),  # past the cap: a piece of its own
            ("i", Integers(rng.integers(0, 9, rows))),
            ("v", Coded(rng.integers(0, 40, rows), wide)),
        ]
        pieces = row_columns.json_pieces(columns)
        together = row_columns.merged(pieces, made)
        assert [kind for kind, _, _ in together] == [CODED, CODED, INTEGERS, CODED]
        assert len(together[0][1]) == 3 * 40 * 2
        assert json_rows_python(together, rows) == laid_out(json_pieces(columns), rows)
        if _json_rows_c is not None:
            assert _json_rows_c(together, rows) == laid_out(json_pieces(columns), rows)
    assert len(made) == 2  # x with y, then that with z: kept from the first slice to the next
