"""The ``numpy`` backend: vectorised NumPy, the reference oracle and the fallback.

Every kernel works on 5-D views ``(N, C, D, H, W)`` of any strides and is *separable*: it
treats one spatial axis at a time. Along an axis, the (at most ``k``-long) windows are
gathered into a ``(..., O, k, ...)`` array with fancy indexing, padded entries masked out, and
reduced — no Python loop over elements or output cells. Accumulation is in float64.

Why separable max is exact: the scan order is row-major (d, h, w). Reducing W first keeps, per
row, the first maximum (or the last NaN); reducing H over those row results then picks the first
row holding the maximum (or the last row holding a NaN), whose kept column is its first maximum
(last NaN) -- which is exactly the first maximum (last NaN) of the 2-D window in scan order.
The same argument extends to D.
"""

from __future__ import annotations

import numpy as np

from ._windows import cover_arrays, window_arrays

NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ACC = np.float64
_SPATIAL_AXES = (4, 3, 2)  # reduce W, then H, then D


def _gather(a: np.ndarray, axis: int, lo: np.ndarray, hi: np.ndarray):
    """``a`` gathered along ``axis`` into ``(..., O, k, ...)`` windows ``[lo, hi)``, plus the
    mask of real (not padding) entries, broadcastable against it, and the gathered positions."""
    k = int((hi - lo).max())
    pos = lo[:, None] + np.arange(k, dtype=np.int64)
    valid = pos < hi[:, None]
    pos = np.minimum(pos, a.shape[axis] - 1)
    shape = (1,) * axis + valid.shape + (1,) * (a.ndim - axis - 1)
    return np.take(a, pos, axis=axis), valid.reshape(shape), pos


def avg_forward(x: np.ndarray, out: np.ndarray) -> None:
    """``out[n, c, od, oh, ow]`` = mean of the window of ``x``."""
    acc = x
    count = np.ones((1, 1, 1, 1, 1), dtype=_ACC)
    for axis in _SPATIAL_AXES:
        lo, hi = window_arrays(x.shape[axis], out.shape[axis])
        windows, valid, _ = _gather(acc, axis, lo, hi)
        acc = np.where(valid, windows, 0).sum(axis=axis + 1, dtype=_ACC)
        count = count * (hi - lo).reshape((1,) * axis + (-1,) + (1,) * (4 - axis))
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
        lo, hi = window_arrays(x.shape[axis], out.shape[axis])
        windows, valid, pos = _gather(vals, axis, lo, hi)
        # Padding is -inf placed after the real entries: it never wins a comparison.
        windows = np.where(valid, windows, -np.inf)
        loc = _pick(windows, axis + 1)
        flat_windows = np.broadcast_to(np.take(flat, pos, axis=axis), windows.shape)
        vals = np.take_along_axis(windows, loc, axis=axis + 1).squeeze(axis + 1)
        flat = np.take_along_axis(flat_windows, loc, axis=axis + 1).squeeze(axis + 1)
    out[...] = vals
    indices[...] = flat


def avg_backward(grad_output: np.ndarray, grad_input: np.ndarray) -> None:
    """``grad_input[x]`` = sum over windows containing x of ``grad_output[w] / size(w)``.

    A gather: each input element sums the output cells covering it, one axis at a time."""
    g = grad_output
    for axis in (2, 3, 4):
        size_in, size_out = grad_input.shape[axis], g.shape[axis]
        lo, hi = window_arrays(size_in, size_out)
        sizes = (hi - lo).astype(_ACC).reshape((1,) * axis + (-1,) + (1,) * (4 - axis))
        scaled = g / sizes
        cells, valid, _ = _gather(scaled, axis, *cover_arrays(size_in, size_out))
        g = np.where(valid, cells, 0).sum(axis=axis + 1, dtype=_ACC)
    grad_input[...] = g


def max_backward(grad_output: np.ndarray, indices: np.ndarray, grad_input: np.ndarray) -> None:
    """``grad_input.plane[indices[o]] += grad_output[o]``, summed in output order
    (deterministic)."""
    n, c, d, h, w = grad_input.shape
    plane = d * h * w
    planes = n * c
    idx = indices.reshape(planes, -1).astype(np.int64, copy=False)
    flat = (np.arange(planes, dtype=np.int64)[:, None] * plane + idx).ravel()
    weights = grad_output.reshape(planes, -1).astype(_ACC).ravel()
    acc = np.bincount(flat, weights=weights, minlength=planes * plane)
    grad_input[...] = acc.reshape(n, c, d, h, w)

