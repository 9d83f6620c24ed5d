"""The ``numpy`` backend: vectorised NumPy, the reference oracle and the fallback.

Every kernel works on 5-D views ``(N, C, D, H, W)`` of any strides and is *separable*: it
reduces (or expands) one spatial axis at a time, looping over the output cells of that axis
only (never over elements). Accumulation is in float64, so results are at least as accurate
as any compiled backend's.

Why separable max is exact: the scan order is row-major (d, h, w). Reducing W first keeps, per
row, the first maximum (or the last NaN); reducing H over those row results then picks the first
row holding the maximum (or the last row holding a NaN), whose kept column is its first maximum
(last NaN) -- which is exactly the first maximum (last NaN) of the 2-D window in scan order.
The same argument extends to D.
"""

from __future__ import annotations

import numpy as np

from ._windows import windows

NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ACC = np.float64
_SPATIAL_AXES = (4, 3, 2)  # reduce W, then H, then D


def _along(axis: int, sl) -> tuple:
    return (slice(None),) * axis + (sl,)


def avg_forward(x: np.ndarray, out: np.ndarray) -> None:
    """``out[n, c, od, oh, ow]`` = mean of the window of ``x``."""
    acc = x
    count = np.ones((1, 1, 1, 1, 1), dtype=_ACC)
    for axis in _SPATIAL_AXES:
        wins = windows(x.shape[axis], out.shape[axis])
        parts = [acc[_along(axis, slice(a, b))].sum(axis, dtype=_ACC, keepdims=True) for a, b in wins]
        acc = np.concatenate(parts, axis=axis)
        sizes = np.array([b - a for a, b in wins], dtype=_ACC)
        count = count * sizes.reshape((1,) * axis + (-1,) + (1,) * (4 - axis))
    out[...] = acc / count


def _pick(seg: np.ndarray, axis: int) -> np.ndarray:
    """Local index, along ``axis``, of the last NaN if any, else of the first maximum."""
    nan = np.isnan(seg)
    first_max = np.argmax(np.where(nan, -np.inf, seg), axis=axis)
    last_nan = seg.shape[axis] - 1 - np.argmax(np.flip(nan, axis=axis), axis=axis)
    return np.expand_dims(np.where(nan.any(axis=axis), last_nan, first_max), axis)


def max_forward(x: np.ndarray, out: np.ndarray, indices: np.ndarray) -> None:
    """Window maximum (SPEC rules for ties, NaN, -inf) and its flat position in the plane."""
    _, _, d, h, w = x.shape
    vals = x
    flat = np.arange(d * h * w, dtype=np.int64).reshape(1, 1, d, h, w)
    for axis in _SPATIAL_AXES:
        v_parts, f_parts = [], []
        for a, b in windows(x.shape[axis], out.shape[axis]):
            seg = vals[_along(axis, slice(a, b))]
            fseg = np.broadcast_to(flat[_along(axis, slice(a, b))], seg.shape)
            loc = _pick(seg, axis)
            v_parts.append(np.take_along_axis(seg, loc, axis=axis))
            f_parts.append(np.take_along_axis(fseg, loc, axis=axis))
        vals = np.concatenate(v_parts, axis=axis)
        flat = np.concatenate(f_parts, axis=axis)
    out[...] = vals
    indices[...] = flat


def avg_backward(grad_output: np.ndarray, grad_input: np.ndarray) -> None:
    """``grad_input[x]`` = sum over windows containing x of ``grad_output[w] / size(w)``."""
    g = grad_output.astype(_ACC)
    for axis in (2, 3, 4):
        size_in = grad_input.shape[axis]
        expanded = np.zeros(g.shape[:axis] + (size_in,) + g.shape[axis + 1 :], dtype=_ACC)
        for o, (a, b) in enumerate(windows(size_in, g.shape[axis])):
            expanded[_along(axis, slice(a, b))] += g[_along(axis, slice(o, o + 1))] / (b - a)
        g = expanded
    grad_input[...] = g


def max_backward(grad_output: np.ndarray, indices: np.ndarray, grad_input: np.ndarray) -> None:
    """``grad_input.plane[indices[o]] += grad_output[o]``, summed in output order (deterministic)."""
    n, c, d, h, w = grad_input.shape
    plane = d * h * w
    planes = n * c
    idx = indices.reshape(planes, -1).astype(np.int64, copy=False)
    flat = (np.arange(planes, dtype=np.int64)[:, None] * plane + idx).ravel()
    weights = grad_output.reshape(planes, -1).astype(_ACC).ravel()
    acc = np.bincount(flat, weights=weights, minlength=planes * plane)
    grad_input[...] = acc.reshape(n, c, d, h, w)
