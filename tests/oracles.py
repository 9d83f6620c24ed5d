"""Independent oracles: PyTorch (CPU, float64) and a brute-force loop straight from SPEC.md."""

from __future__ import annotations

import itertools
import math
import os
from fractions import Fraction

import numpy as np
import pytest

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - CI installs torch; see require_torch
    torch = None

import fastpool

FORWARD = {
    ("avg", d): getattr(fastpool, f"adaptive_avg_pool{d}d") for d in (1, 2, 3)
} | {("max", d): getattr(fastpool, f"adaptive_max_pool{d}d") for d in (1, 2, 3)}
BACKWARD = {
    ("avg", d): getattr(fastpool, f"adaptive_avg_pool{d}d_backward") for d in (1, 2, 3)
} | {("max", d): getattr(fastpool, f"adaptive_max_pool{d}d_backward") for d in (1, 2, 3)}


def require_torch():
    """Skip without torch, except under `make test` and in CI (torch is a test dependency)."""
    if torch is None:
        if os.environ.get("CI") or os.environ.get("FASTPOOL_REQUIRE_TORCH"):
            pytest.fail("torch must be installed for these tests (pip install torch==2.13.0)")
        pytest.skip("torch not installed")
    return torch


def forward(kind, dims, x, output_size, **kw):
    """Values and (for max) indices through the public API."""
    if kind == "max":
        return FORWARD[kind, dims](x, output_size, True, **kw)
    return FORWARD[kind, dims](x, output_size, **kw), None


def backward(kind, dims, grad, indices, input_shape, **kw):
    if kind == "max":
        return BACKWARD[kind, dims](grad, indices, input_shape, **kw)
    return BACKWARD[kind, dims](grad, input_shape, **kw)


# ------------------------------------------------------------------------------ PyTorch


def _torch_size(x, dims, output_size):
    """PyTorch's 1d functions take no ``None`` entries: resolve them to the input size."""
    pairs = zip(_tuple(output_size, dims), x.shape[-dims:], strict=True)
    return tuple(s if o is None else o for o, s in pairs)


def _fresh(a, dtype):
    """A C-ordered copy with standard strides (PyTorch rejects the negative strides that
    ``np.ascontiguousarray`` keeps on size-1 axes)."""
    return np.array(a, dtype=dtype, order="C", copy=True)


def torch_forward(kind, dims, x, output_size):
    """PyTorch's result for a C-contiguous copy of ``x`` (float16 computed in float32)."""
    t = require_torch()
    output_size = _torch_size(x, dims, output_size)
    dt = np.float64 if x.dtype == np.float64 else np.float32
    xt = t.from_numpy(_fresh(x, dt))
    if kind == "avg":
        y = getattr(F, f"adaptive_avg_pool{dims}d")(xt, output_size)
        return y.numpy().astype(x.dtype), None
    y, i = getattr(F, f"adaptive_max_pool{dims}d")(xt, output_size, return_indices=True)
    return y.numpy().astype(x.dtype), i.numpy()


def torch_backward(kind, dims, x, output_size, grad):
    """PyTorch's input gradient of the forward on ``x`` for ``grad`` (via autograd)."""
    t = require_torch()
    output_size = _torch_size(x, dims, output_size)
    dt = np.float64 if x.dtype == np.float64 else np.float32
    xt = t.from_numpy(_fresh(x, dt)).requires_grad_(True)
    fn = getattr(F, f"adaptive_{kind}_pool{dims}d")
    y = fn(xt, output_size)
    y.backward(t.from_numpy(_fresh(grad, dt)))
    return xt.grad.numpy().astype(x.dtype)


# ------------------------------------------------------------------------- brute force


def _bounds(i, size_in, size_out):
    """SPEC's window, with exact rationals instead of the integer-division trick."""
    return (
        math.floor(Fraction(i * size_in, size_out)),
        math.ceil(Fraction((i + 1) * size_in, size_out)),
    )


def brute_forward(kind, dims, x, output_size):
    """Element-by-element loops, written from SPEC.md alone (slow; tiny inputs only)."""
    batched = x.ndim == dims + 2
    xb = x if batched else x[None]
    n, c = xb.shape[:2]
    spatial = xb.shape[2:]
    pairs = zip(_tuple(output_size, dims), spatial, strict=True)
    osize = tuple(s if o is None else o for o, s in pairs)
    vals = np.empty((n, c) + osize, dtype=np.float64)
    idx = np.empty((n, c) + osize, dtype=np.int64)
    strides = [int(np.prod(spatial[k + 1 :])) for k in range(dims)]
    for b, ch in itertools.product(range(n), range(c)):
        for o in itertools.product(*(range(s) for s in osize)):
            ranges = [range(*_bounds(o[k], spatial[k], osize[k])) for k in range(dims)]
            cells = list(itertools.product(*ranges))
            if kind == "avg":
                vals[(b, ch) + o] = sum(float(xb[(b, ch) + p]) for p in cells) / len(cells)
                continue
            best, best_i = -math.inf, sum(p * s for p, s in zip(cells[0], strides, strict=True))
            for p in cells:
                v = float(xb[(b, ch) + p])
                if v > best or math.isnan(v):
                    best, best_i = v, sum(q * s for q, s in zip(p, strides, strict=True))
            vals[(b, ch) + o], idx[(b, ch) + o] = best, best_i
    if not batched:
        vals, idx = vals[0], idx[0]
    return vals, (idx if kind == "max" else None)


def brute_max_backward(grad, indices, input_shape, dims):
    """SPEC's max backward as written: every cell, in output order, adds its gradient at its
    index in its plane (float64, channels-first, any index in the plane)."""
    batched = len(input_shape) == dims + 2
    shape = tuple(input_shape) if batched else (1,) + tuple(input_shape)
    n, c = shape[:2]
    plane = int(np.prod(shape[2:]))
    g = np.asarray(grad, np.float64).reshape(n * c, -1)
    ix = np.asarray(indices).reshape(n * c, -1)
    out = np.zeros((n * c, plane))
    for p in range(n * c):
        for o in range(g.shape[1]):
            out[p, ix[p, o]] += g[p, o]
    return out.reshape(tuple(input_shape))


def _tuple(output_size, dims):
    return tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * dims


# ------------------------------------------------------------------------- comparisons


def tolerance(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return {"rtol": 1e-12, "atol": 1e-12}
    if dtype == np.float32:
        return {"rtol": 2e-5, "atol": 2e-6}
    return {"rtol": 2e-3, "atol": 2e-3}


def assert_close(actual, expected, dtype=None):
    dtype = np.dtype(dtype or expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), equal_nan=True, **tolerance(dtype)
    )


def assert_identical(actual, expected):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual, expected)
