"""The adaptive window formula, in exact integer arithmetic (the NumPy backend's source of truth).

Output cell ``i`` of an axis with input size ``I`` and output size ``O`` covers the half-open
input range ``[floor(i*I/O), ceil((i+1)*I/O))``; input element ``x`` is covered by the output
cells ``[floor(x*O/I), ceil((x+1)*O/I))``. Floating point gives wrong windows for large sizes,
so everything here is integer division.
"""

from __future__ import annotations

import numpy as np

# Products i*I stay below this in int64; beyond it Python integers take over.
_INT64_SAFE = 2**62


def _ranges(count: int, num: int, den: int) -> tuple[np.ndarray, np.ndarray]:
    """``floor(i*num/den)`` and ``ceil((i+1)*num/den)`` for ``i in range(count)``, int64."""
    if count * num < _INT64_SAFE:
        i = np.arange(count, dtype=np.int64)
    else:  # exact but slow: Python ints cannot overflow
        i = np.arange(count, dtype=object)
    lo = (i * num) // den
    hi = -((-(i + 1) * num) // den)
    return lo.astype(np.int64), hi.astype(np.int64)


def window_arrays(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every output cell's input window along one axis."""
    return _ranges(size_out, size_in, size_out)


def cover_arrays(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last+1 output cell whose window covers each input element along one axis."""
    return _ranges(size_in, size_out, size_in)
