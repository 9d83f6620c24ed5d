"""Very long spatial axes (a signal of 140000 samples pooled to or from a few planes), in
every layout, against PyTorch and a scatter; and what such calls allocate."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from oracles import (
    assert_close,
    assert_identical,
    backward,
    forward,
    torch_backward,
    torch_forward,
)

import fastpool

# One axis, of the input or the result, past 2**17 (numba's tables would pass 1 MiB), in
# 1d, 2d and 3d: upsampling, nearly equal sizes, windows of several rows; and one that
# stays below for contrast.
LONG = [
    (1, (2, 3, 5), 140001),
    (1, (1, 2, 140001), 140003),
    (1, (2, 3, 70001), 5),
    (2, (1, 2, 3, 140001), (2, 7)),
    (2, (1, 2, 2, 3), (3, 140000)),
    (3, (1, 1, 3, 1, 2), (140000, 1, 3)),
    (1, (1, 8, 140001), 5),  # channels-last kernels (8 channels) along an untabled axis
]
LONG_IDS = [f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in LONG]
LAYOUTS = ("first", "last", "strided")


def _scatter(grad, indices, shape):
    """SPEC's max backward: each cell, in output order, adds its gradient at its index in its
    plane (``np.add.at``: unbuffered, in index order)."""
    n, c = shape[:2]
    out = np.zeros((n * c, int(np.prod(shape[2:]))))
    rows = np.repeat(np.arange(n * c), grad.size // (n * c))
    np.add.at(out, (rows, indices.reshape(-1)), grad.reshape(-1))
    return out.reshape(shape)


def _layout(a, layout):
    """The same values in channels-first, channels-last or strided (every other element of
    the last axis) memory."""
    if layout == "last":
        return np.moveaxis(np.moveaxis(a, 1, -1).copy(), -1, 1)
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    return a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize(("dims", "shape", "osize"), LONG, ids=LONG_IDS)
def test_long_axes_match_torch(backend, rng, dims, shape, osize, kind, layout):
    """In float64: a gradient of 22000 cells summed in float32 differs from PyTorch's (summed
    in another order) by more than float32 tolerances; float32 is compared below."""
    x = rng.standard_normal(shape)
    if kind == "max":
        x = np.round(x * 2) / 2  # ties
    values, indices = forward(kind, dims, _layout(x, layout), osize, backend=backend)
    ref_values, ref_indices = torch_forward(kind, dims, x, osize)
    assert_close(values, ref_values)
    if kind == "max":
        assert_identical(values, ref_values)
        assert_identical(indices, ref_indices)
    grad = rng.standard_normal(values.shape)
    got = backward(kind, dims, _layout(grad, layout),
                   None if indices is None else _layout(indices, layout), shape, backend=backend)
    assert_close(got, torch_backward(kind, dims, x, osize, grad))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("dims", "shape", "osize"), LONG[:3], ids=LONG_IDS[:3])
def test_long_axes_max_backward_takes_any_index(backend, rng, dims, shape, osize, layout):
    values, indices = forward("max", dims, rng.standard_normal(shape), osize, backend="numpy")
    plane = int(np.prod(shape[2:]))
    indices = rng.integers(0, plane, size=indices.shape)
    grad = rng.standard_normal(values.shape)
    got = backward("max", dims, _layout(grad, layout), _layout(indices, layout), shape,
                   backend=backend)
    assert_close(got, _scatter(grad, indices, shape))
    indices.flat[-1] = plane  # one outside the plane: an error, out= untouched
    out = np.full(shape, 7.0)
    with pytest.raises(ValueError, match="indices"):
        backward("max", dims, grad, _layout(indices, layout), shape, backend=backend, out=out)
    assert (out == 7.0).all()


def test_long_channels_last_average_backward(backend, rng):
    """A gradient row of 60000 cells by 16 channels into a 2-long input: the channels-last
    kernel's row of cells would be 30000 times the result."""
    grad = rng.standard_normal((1, 60000, 16))
    got = fastpool.adaptive_avg_pool1d_backward(grad, (1, 2, 16), backend=backend,
                                                data_format="channels_last")
    x = np.zeros((1, 16, 2))
    expected = torch_backward("avg", 1, x, 60000, np.moveaxis(grad, -1, 1))
    assert_close(np.moveaxis(got, -1, 1), expected)


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize(("dims", "shape", "osize"), LONG, ids=LONG_IDS)
def test_long_axes_are_deterministic(compiled_backend, rng, dims, shape, osize, kind):
    """Bit-identical on one and two threads, and for one sample alone (a dask chunk)."""
    x = rng.standard_normal(shape).astype(np.float32)
    previous = fastpool.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            fastpool.set_num_threads(threads)
            values, indices = forward(kind, dims, x, osize, backend=compiled_backend)
            grad = np.linspace(-1, 1, values.size, dtype=np.float32).reshape(values.shape)
            runs.append((values, backward(kind, dims, grad, indices, shape,
                                          backend=compiled_backend)))
    finally:
        fastpool.set_num_threads(previous)
    for a, b in zip(runs[0], runs[1], strict=True):
        assert_identical(a, b)
    first, _ = forward(kind, dims, x[:1, :1], osize, backend=compiled_backend)
    assert_identical(first, runs[0][0][:1, :1])


SMALL = [
    (1, (2, 3, 10), 4),
    (1, (2, 9, 7), 13),
    (2, (2, 16, 9, 7), (4, 3)),
    (2, (2, 3, 5, 5), 7),
    (3, (1, 8, 3, 4, 5), (5, 2, 7)),
]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (1, (2, 3, 40), 13),  # short windows, scanned in place
    (1, (2, 3, 40), 90),  # upsampling
    (1, (2, 3, 100), 3),  # windows of more than 16: the vector scan
    (2, (1, 2, 6, 50), (4, 2)),
    (3, (1, 2, 3, 4, 40), (2, 3, 2)),
])
def test_long_axis_max_keeps_the_scan_rules(compiled_backend, monkeypatch, rng, dims, shape,
                                            osize, dtype):
    """The long-axis max forward, forced: ties to the first, the last NaN, all -inf to the
    first element, in short and long windows, as the reference has them."""
    module = importlib.import_module(f"fastpool._{compiled_backend}")
    x = np.round(rng.standard_normal(shape) * 2) / 2  # many ties
    mask = rng.random(shape)
    x[mask < 0.08] = np.nan
    x[(mask >= 0.08) & (mask < 0.3)] = -np.inf
    x = x.astype(dtype)
    values, indices = forward("max", dims, x, osize, backend="numpy")
    monkeypatch.setattr(module, "_long_forward", lambda x, out: True)
    long_values, long_indices = forward("max", dims, x, osize, backend=compiled_backend)
    assert_identical(long_values, values)
    assert_identical(long_indices, indices)


@pytest.mark.parametrize("layout", ("first", "last"))
@pytest.mark.parametrize(("dims", "shape", "osize"), SMALL,
                         ids=[f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in SMALL])
def test_long_axis_kernels_agree_with_the_others(compiled_backend, monkeypatch, rng, dims, shape,
                                                 osize, layout):
    """The long-axis kernels, forced on ordinary shapes: the same maxima and indices, the
    same gradient bits as the other kernels (whose bits agree across layouts), and averages
    equal up to rounding."""
    module = importlib.import_module(f"fastpool._{compiled_backend}")
    x = _layout(rng.standard_normal(shape).astype(np.float32), layout)
    avg, _ = forward("avg", dims, x, osize, backend=compiled_backend)
    values, indices = forward("max", dims, x, osize, backend=compiled_backend)
    grad = _layout(rng.standard_normal(avg.shape).astype(np.float32), layout)
    grads = [backward(kind, dims, grad, _layout(indices, layout), shape, backend=compiled_backend)
             for kind in ("avg", "max")]
    monkeypatch.setattr(module, "_long_forward", lambda x, out: True)
    monkeypatch.setattr(module, "_long_backward", lambda kind, go, gi, *layout: True)
    assert_close(forward("avg", dims, x, osize, backend=compiled_backend)[0], avg)
    long_values, long_indices = forward("max", dims, x, osize, backend=compiled_backend)
    assert_identical(long_values, values)
    assert_identical(long_indices, indices)
    for kind, expected in zip(("avg", "max"), grads, strict=True):
        got = backward(kind, dims, grad, _layout(indices, layout), shape, backend=compiled_backend)
        assert_identical(got, expected)


_PEAK = """
import json, sys
import numpy as np, fastpool
def peak():  # the resident set's high-water mark, which writing 5 to clear_refs resets
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
def call(length, kind):
    if kind == "avg_up":
        return fastpool.adaptive_avg_pool1d(np.ones((1, 1, 3), np.float32), length,
                                            backend=backend)
    if kind == "max_up":
        return fastpool.adaptive_max_pool1d(np.ones((1, 1, 3), np.float32), length, True,
                                            backend=backend)
    if kind == "avg_bwd_same":
        g = np.ones((1, 1, length), np.float32)
        return fastpool.adaptive_avg_pool1d_backward(g, (1, 1, length), backend=backend)
    if kind == "avg_bwd_cl":  # channels-last gradient, 8 channels, into a C-order result
        g = np.ones((1, length // 8, 8), np.float32).transpose(0, 2, 1)
        return fastpool.adaptive_avg_pool1d_backward(g, (1, 8, length // 16), backend=backend)
    if kind == "float16":
        x = np.ones((64, length // 64), np.float16)
        return fastpool.adaptive_avg_pool1d(x, 3, backend=backend)
    x = np.ones((1, 1, 2, length), np.float32)
    return fastpool.adaptive_max_pool2d(x, (1, 3), True, backend=backend)
kind, backend = sys.argv[1:]
call(1 << 18, kind)  # compiled (the same kernels), and its imports done
length = 1 << 24
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak()
result = call(length, kind)
result = result if isinstance(result, tuple) else (result,)
print(json.dumps([peak() - before, sum(a.nbytes for a in result)]))
"""


@pytest.mark.parametrize(
    "kind", ("avg_up", "max_up", "avg_bwd_same", "avg_bwd_cl", "max_rows", "float16")
)
def test_long_axes_allocate_no_more_than_the_result(compiled_backend, kind):
    """Peak memory of one call beyond its input and result, in a fresh process (the peak
    reset after imports and compiling): 16 Mi-element axes once took tables and row
    buffers many times the result (numba 1.6-6.8 GB at 64 Mi, cython 0.5-3.3 GB), and
    float16 a float32 copy of the whole input (here 64 MiB; now 16 MiB at a time)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("measures the resident set through /proc (Linux)")
    run = subprocess.run([sys.executable, "-c", _PEAK, kind, compiled_backend],
                         capture_output=True, text=True, check=True)
    grown, result = json.loads(run.stdout)
    inputs = {"avg_bwd_same": 1 << 26, "avg_bwd_cl": 1 << 26, "max_rows": 1 << 27,
              "float16": 1 << 25}.get(kind, 0)
    allowed = (8 << 20) + (16 << 20 if kind == "float16" else 0)
    assert grown - result - inputs < allowed, (grown, result)
