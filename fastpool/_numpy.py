"""The ``numpy`` backend: vectorised NumPy, the reference oracle and the fallback.

Every kernel works on 5-D views ``(N, C, D, H, W)`` of any strides and is *separable*: it
treats one spatial axis at a time. Along an axis, the (at most ``k``-long) windows are
gathered into a ``(..., O, k, ...)`` array with fancy indexing, padded entries masked out, and
reduced — no Python loop over elements or output cells. Accumulation is in float64.

Those gathers are copies, a few of them float64: a large array is pooled a block of planes
at a time (see :func:`_blocks`), so that they stay a few tens of MB however many planes it
has (a block holds one plane at least). The planes are independent: a block's results are
the whole array's.

Why separable max is exact: the scan order is row-major (d, h, w). Reducing W first keeps, per
row, the first maximum (or the last NaN); reducing H over those row results then picks the first
row holding the maximum (or the last row holding a NaN), whose kept column is its first maximum
(last NaN) -- which is exactly the first maximum (last NaN) of the 2-D window in scan order.
The same argument extends to D.
"""

from __future__ import annotations

import math

import numpy as np

from ._host import plane_parts
from ._windows import cover_arrays, window_arrays

NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ACC = np.float64
_SPATIAL_AXES = (4, 3, 2)  # reduce W, then H, then D
_BACKWARD_AXES = (2, 3, 4)  # gather along D, then H, then W

#: Most elements each gather of one block of planes holds (16 MiB as float64; a kernel keeps
#: a few such arrays at once).
_BLOCK_ELEMENTS = 1 << 21


def _gathered(src5, dst5, axes) -> int:
    """Most elements the gathers of one plane hold, going from the spatial sizes of shape
    ``src5`` to those of ``dst5`` one axis of ``axes`` at a time (windows of up to
    ceil(I/O) + 1 elements)."""
    sizes = list(src5)
    most = math.prod(sizes[2:])
    for a in axes:
        sizes[a] = dst5[a] * (-(-src5[a] // dst5[a]) + 1)
        most = max(most, math.prod(sizes[2:]))
        sizes[a] = dst5[a]
    return most


def _blocks(src5, dst5, axes):
    """Parts over the (N, C) planes of a kernel going from shape ``src5`` to ``dst5`` along
    ``axes``, each within ``_BLOCK_ELEMENTS`` of gathers."""
    per_plane = _gathered(src5, dst5, axes)
    return plane_parts(src5[0], src5[1], max(1, _BLOCK_ELEMENTS // per_plane))


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
    for part in _blocks(x.shape, out.shape, _SPATIAL_AXES):
        _avg_forward(x[part], out[part])


def _avg_forward(x: np.ndarray, out: np.ndarray) -> None:
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
    for part in _blocks(x.shape, out.shape, _SPATIAL_AXES):
        _max_forward(x[part], out[part], indices[part])


def _max_forward(x: np.ndarray, out: np.ndarray, indices: np.ndarray) -> None:
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
    for part in _blocks(grad_output.shape, grad_input.shape, _BACKWARD_AXES):
        _avg_backward(grad_output[part], grad_input[part])


def _avg_backward(grad_output: np.ndarray, grad_input: np.ndarray) -> None:
    g = grad_output
    for axis in _BACKWARD_AXES:
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
    # one plane's sums and weights, and its output's positions
    per_plane = math.prod(grad_input.shape[2:]) + 2 * math.prod(grad_output.shape[2:])
    for part in plane_parts(*grad_input.shape[:2], max(1, _BLOCK_ELEMENTS // per_plane)):
        _max_backward(grad_output[part], indices[part], grad_input[part])


def _max_backward(grad_output: np.ndarray, indices: np.ndarray, grad_input: np.ndarray) -> None:
    n, c, d, h, w = grad_input.shape
    plane = d * h * w
    planes = n * c
    idx = indices.reshape(planes, -1).astype(np.int64, copy=False)
    flat = (np.arange(planes, dtype=np.int64)[:, None] * plane + idx).ravel()
    weights = grad_output.reshape(planes, -1).astype(_ACC).ravel()
    acc = np.bincount(flat, weights=weights, minlength=planes * plane)
    grad_input[...] = acc.reshape(n, c, d, h, w)

