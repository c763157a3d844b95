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


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_in_order_gives_results_in_order_with_items_made_here(
    cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uneven work finishing out of order still comes back in order; the items are pulled on
    the caller's thread, and only a few run ahead of what was taken."""
    import threading
    import time

    monkeypatch.setattr(chunking, "cores", lambda reserve=0: max(1, cores - reserve))
    here = threading.get_ident()
    made: list[int] = []

    def items() -> object:
        for k in range(20):
            assert threading.get_ident() == here
            made.append(k)
            yield k

    def work(k: int) -> int:
        time.sleep(0.002 * (k % 3))  # later items often finish first
        return k * k

    taken = []
    for k, got in enumerate(chunking.in_order(work, items())):
        assert len(made) - k <= max(1, cores - 1) + 1  # one a worker, and one made ahead
        taken.append(got)
    assert taken == [k * k for k in range(20)]


def test_in_order_raises_what_work_raised_and_ends_its_threads() -> None:
    import threading

    before = threading.active_count()

    def work(k: int) -> int:
        if k == 5:
            raise KeyError(k)
        return k

    with pytest.raises(KeyError):
        list(chunking.in_order(work, range(10)))
    assert threading.active_count() == before
