"""The grouping primitives: the C hash table and numpy's sorting must number values
identically, and the fast paths must equal argsort/unique exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ktrace import chunking
from ktrace.decode.h2 import frame_like
from ktrace.decode.http1 import method_like
from ktrace.decode.lead import KNOWN_WORDS, looks_like_app
from ktrace.distinct import distinct
from ktrace.kernels import sorting

RNG = np.random.default_rng(11)
CASES = {
    "few distinct": RNG.integers(0, 300, 200_000).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15),
    "table grows": RNG.integers(0, 20_000, 200_000).astype(np.uint64),  # C table doubles 6 times
    "all distinct": RNG.integers(0, 2**63, 100_000, dtype=np.int64).astype(np.uint64),
    "one value": np.full(1000, 7, np.uint64),
    "empty": np.zeros(0, np.uint64),
    "extremes": np.array([0, 2**64 - 1, 0, 2**63, 2**64 - 1], np.uint64),
}


def _reference(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


@pytest.mark.parametrize("case", CASES)
def test_numberings_agree_with_numpy_unique(case: str) -> None:
    values = CASES[case]
    first, inverse = _reference(values)
    for number in (sorting.number_sorting, sorting.number):
        got_first, got_inverse = number(values)
        assert np.array_equal(got_first, first) and np.array_equal(got_inverse, inverse)
        assert got_inverse.dtype == np.int32


@pytest.mark.parametrize("case", CASES)
def test_first_seen_numberings_agree(case: str) -> None:
    """Numbered in order of first appearance: by the C table, and by sorting."""
    values = CASES[case]
    first, inverse = _reference(values)
    rank = np.argsort(np.argsort(first))  # each distinct value's place by first appearance
    expected = rank[inverse] if len(values) else np.zeros(0, np.int64)
    for got in (sorting.first_seen(values), sorting.first_seen_sorting(values)):
        assert np.array_equal(got, expected) and got.dtype == np.int32


@pytest.mark.parametrize(
    "dtype", [bool, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int32, np.int64]
)
def test_distinct_is_numpys_unique(dtype: type) -> None:
    """Counted for booleans and small unsigned values, sorted for the rest: either way what
    np.unique gives, dtype and all."""
    top = {bool: 2, np.uint8: 256, np.uint16: 65536}.get(dtype, 2**31)
    for n in (0, 1, 7, 5000):
        values = RNG.integers(0, top, n)
        if np.dtype(dtype).kind == "i":
            values = values - top // 2
        values = values.astype(dtype)
        got, want = distinct(values), np.unique(values)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(distinct(np.array([[3, 1], [3, 2]])), [1, 2, 3])  # flattened


def test_app_words_are_found_by_lookup_as_by_isin() -> None:
    words = np.concatenate([KNOWN_WORDS, KNOWN_WORDS - 1, KNOWN_WORDS + 1, [0, 2**32 - 1]]).astype(
        np.uint32
    )
    words = np.concatenate([words, RNG.integers(0, 2**32, 10_000).astype(np.uint32)])
    tls = (np.array([0x1603, 0x1503], np.uint32) << 16) | (1 << 8)
    words = np.concatenate([words, tls, tls | (9 << 8)])
    methods = np.frombuffer(b"PROPFIND M-SEARCH X_Y ACL @BC", np.uint8)
    words = np.concatenate([words, np.lib.stride_tricks.sliding_window_view(methods, 4)
                            .copy().view(">u4").ravel().astype(np.uint32)])  # fmt: skip
    want = np.isin(words, KNOWN_WORDS) | (
        np.isin(words >> 16, [0x1603, 0x1503]) & (((words >> 8) & 0xFF) <= 4)
    )
    want |= np.array([method_like(int(w)) for w in words], bool)  # any method (RFC 9110 9.1)
    want |= np.array([frame_like(int(w)) for w in words], bool)  # HTTP/2 caught midway
    assert np.array_equal(looks_like_app(words), want) and want.sum() >= len(KNOWN_WORDS) + 2


@pytest.mark.parametrize("case", CASES)
def test_repeated_marks_exactly_the_values_seen_twice(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = CASES[case]
    _, inverse = _reference(values)
    expected = np.bincount(inverse)[inverse] > 1 if len(values) else np.zeros(0, bool)
    assert np.array_equal(sorting.repeated(values), expected)
    # every hash equal: all values in one run, grouped by the exact path
    monkeypatch.setattr(sorting, "_MIX", np.uint64(0))
    assert np.array_equal(sorting.repeated(values), expected)


def test_repeated_values_read_through_a_function_are_read_as_integers() -> None:
    """Signed values, and values that exist only as what a function returns for positions
    (read a chunk at a time, then again where hashes match)."""
    signed = np.array([3, -1, 3, 0, -1, 2**62], np.int64)
    assert sorting.repeated(signed).tolist() == [True, True, True, False, True, False]
    n = 3 * chunking.CHUNK + 5
    got = sorting.repeated_at(n, lambda at: at % (n - 2))  # the last two wrap around
    assert np.flatnonzero(got).tolist() == [0, 1, n - 2, n - 1]


@pytest.mark.parametrize(
    "key",
    [
        RNG.integers(0, 5000, 300_000),
        RNG.integers(0, 2**62, 1000, dtype=np.int64),  # no room beside the position: argsort
        np.array([3, -1, 3, 0]),
        np.zeros(0, np.int64),
    ],
)
def test_sorted_runs_are_a_stable_argsort_and_its_runs(key: np.ndarray) -> None:
    order, start = sorting.sorted_runs(key)
    want = np.argsort(key, kind="stable")
    assert np.array_equal(order, want)
    ordered = key[want]
    assert np.array_equal(start, np.r_[True, ordered[1:] != ordered[:-1]][: len(key)])


@pytest.mark.parametrize("threads", [1, 3])
def test_columns_mixed_in_c_at_rows_equal_numpys_mix(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktrace import chunking
    from ktrace.kernels import mix

    monkeypatch.setattr(chunking, "cores", lambda reserve=0: threads)
    monkeypatch.setattr(chunking, "THREADED_MIN", 1000)
    if mix._C is None:
        pytest.skip("no compiler where ktrace was installed: numpy is the one in use")
    n = 50_000
    columns = tuple(
        RNG.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)
        for dtype in (np.uint8, np.uint16, np.uint32, np.uint64, np.uint32)
    )
    for rows in (RNG.integers(0, n, 70_000).astype(np.int32), np.arange(n, dtype=np.int64)):
        for k in (mix.K1, mix.K2):
            got = mix.mix_rows(columns, rows, k)
            assert np.array_equal(got, mix.mix_rows_numpy(columns, rows, k))
            assert np.array_equal(got[:5], mix.mix([c[rows[:5]] for c in columns], 5, k))
    assert len(mix.mix_rows(columns, np.zeros(0, np.int64))) == 0
    for bad in (np.array([n], np.int64), np.r_[np.arange(300), -1]):  # in a later block too
        with pytest.raises(IndexError):
            mix.mix_rows(columns, bad)
