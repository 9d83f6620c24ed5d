"""The window formula on its own: exact integers, coverage, and the reverse map."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpool._windows import cover_arrays, window_arrays


@given(st.integers(1, 5000), st.integers(1, 5000))
def test_windows_match_exact_rationals(size_in, size_out):
    lo, hi = window_arrays(size_in, size_out)
    for i in {0, size_out // 2, size_out - 1}:
        assert lo[i] == math.floor(Fraction(i * size_in, size_out))
        assert hi[i] == math.ceil(Fraction((i + 1) * size_in, size_out))
    assert lo[0] == 0 and hi[-1] == size_in
    assert (hi > lo).all()
    assert (lo[1:] >= lo[:-1]).all() and (lo[1:] <= hi[:-1]).all()  # no gaps


@given(st.integers(1, 120), st.integers(1, 120))
def test_reverse_map_is_the_inverse(size_in, size_out):
    lo, hi = window_arrays(size_in, size_out)
    first, last = cover_arrays(size_in, size_out)
    for x in range(size_in):
        covering = [i for i in range(size_out) if lo[i] <= x < hi[i]]
        assert covering == list(range(first[x], last[x]))


@pytest.mark.parametrize(("size_in", "size_out"), [(2**40 + 7, 3), (2**62 + 1, 5), (3, 7)])
def test_huge_sizes_do_not_overflow(size_in, size_out):
    lo, hi = window_arrays(size_in, size_out)
    assert lo.tolist() == [(i * size_in) // size_out for i in range(size_out)]
    assert hi.tolist() == [-(-(i + 1) * size_in // size_out) for i in range(size_out)]
    # the reverse map with a huge output axis: 3 input elements covered by 2**62 + 1 cells
    first, last = cover_arrays(size_out, size_in)
    assert first.tolist() == [(x * size_in) // size_out for x in range(size_out)]
    assert last[-1] == size_in


@settings(deadline=None)  # the first example loads numba
@given(st.integers(1, 400), st.integers(1, 400))
def test_numba_runs_of_equal_covering_cells(size_in, size_out):
    """The numba backend's runs along an axis (built from the windows' ends, not from a
    table as long as the axis): consecutive positions with the same covering cells."""
    _numba = pytest.importorskip("fastpool._numba")
    starts, first, end = _numba._runs(size_in, size_out)
    cover_first, cover_last = cover_arrays(size_in, size_out)
    expected = [x for x in range(size_in) if x == 0
                or (cover_first[x], cover_last[x]) != (cover_first[x - 1], cover_last[x - 1])]
    assert list(starts) == expected + [size_in]
    assert list(first) == [cover_first[x] for x in expected]
    assert list(end) == [cover_last[x] for x in expected]
