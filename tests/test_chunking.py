"""The chunk-at-a-time helpers equal the whole-array numpy calls they stand for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktrace import chunking

values = st.lists(st.integers(0, 40), max_size=300).map(lambda v: np.array(v, np.int64))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunking, "CHUNK", 7)  # many chunks, a key in several of them


@settings(max_examples=200, deadline=None)
@given(values)
def test_counted_and_distinct_keys(v: np.ndarray) -> None:
    distinct, counts = chunking.counted_keys(len(v), lambda lo, hi: v[lo:hi] * 3)
    want, want_counts = np.unique(v * 3, return_counts=True)
    assert np.array_equal(distinct, want) and np.array_equal(counts, want_counts)
    assert np.array_equal(chunking.distinct_keys(len(v), lambda lo, hi: v[lo:hi]), np.unique(v))


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 60))
def test_bincount(v: np.ndarray, minlength: int) -> None:
    small = v.astype(np.uint16)
    weights = (v * 1500).astype(np.uint32)
    counts = chunking.bincount(small, minlength)
    assert counts.dtype == np.int64
    assert np.array_equal(counts, np.bincount(small, minlength=minlength))
    sums = chunking.bincount(small, minlength, weights)
    assert np.array_equal(sums, np.bincount(small, weights=weights, minlength=minlength))


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 100])
def test_in_threads_works_every_row_once(
    n: int, parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunking, "THREADED_MIN", 0)
    monkeypatch.setattr(chunking, "cores", lambda reserve=0: parts)
    seen = np.zeros(n, np.int64)
    chunking.in_threads(n, lambda lo, hi: np.add.at(seen, np.arange(lo, hi), 1))
    assert (seen == 1).all()


def test_in_threads_raises_what_a_part_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunking, "THREADED_MIN", 0)
    monkeypatch.setattr(chunking, "cores", lambda reserve=0: 3)

    def work(lo: int, hi: int) -> None:
        if lo > 0:
            raise IndexError(lo)

    with pytest.raises(IndexError):
        chunking.in_threads(30, work)
