"""The adaptive window formula, in exact integer arithmetic (the NumPy backend's source of truth).

Output cell ``i`` of an axis with input size ``I`` and output size ``O`` covers the half-open
input range ``[floor(i*I/O), ceil((i+1)*I/O))``; input element ``x`` is covered by the output
cells ``[floor(x*O/I), ceil((x+1)*O/I))``. Floating point gives wrong windows for large sizes,
so everything here is integer division.
"""

from __future__ import annotations

import numpy as np


def start_index(i: int, size_in: int, size_out: int) -> int:
    return (i * size_in) // size_out


def end_index(i: int, size_in: int, size_out: int) -> int:
    return -((-(i + 1) * size_in) // size_out)


def windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` for every output cell of one axis (Python ints: no overflow)."""
    return [
        (start_index(i, size_in, size_out), end_index(i, size_in, size_out))
        for i in range(size_out)
    ]


def window_arrays(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end arrays (int64) for one axis."""
    bounds = np.array(windows(size_in, size_out), dtype=np.int64).reshape(size_out, 2)
    return bounds[:, 0], bounds[:, 1]
