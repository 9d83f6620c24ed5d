"""The ``cuda`` backend: every op against the numpy backend and PyTorch CPU, device arrays in/out.

Without a GPU this whole file runs in numba's CUDA simulator (``tests/conftest.py`` sets
``NUMBA_ENABLE_CUDASIM=1`` before numba is imported): tiny shapes, and launch sizes small enough
that every kernel runs over several blocks and several grid-stride rounds. The simulator runs
each GPU thread as a Python thread and each ``syncthreads`` costs milliseconds, so most tests
cap the threads per output cell at 1 and ``test_forward_teams`` covers the shared-memory team
reductions on purpose. On a machine with a GPU the same tests run on the GPU (with at least
128 blocks per launch, see ``LaunchConfig``), plus the CuPy / PyTorch CUDA tests at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from oracles import (
    BACKWARD,
    FORWARD,
    assert_close,
    assert_identical,
    backward,
    brute_forward,
    forward,
    torch_backward,
    torch_forward,
)

import fastpool
from fastpool import _backends

if "cuda" not in fastpool.available_backends():
    pytest.skip(
        f"cuda backend not usable: {_backends.backend_status()['cuda'][1]}",
        allow_module_level=True,
    )

from numba import cuda  # noqa: E402

from fastpool import _cuda  # noqa: E402
from fastpool._windows import cover_arrays, window_arrays  # noqa: E402

SIMULATED = _cuda.SIMULATOR
real_gpu_only = pytest.mark.skipif(SIMULATED, reason="needs a real GPU (CUDA simulator here)")
KINDS = ("avg", "max")
DIMS = (1, 2, 3)
DTYPES = (np.float16, np.float32, np.float64)
CU = {"backend": "cuda"}
NP = {"backend": "numpy"}


@pytest.fixture(autouse=True)
def small_launches():
    """Several blocks and grid-stride rounds on tiny inputs; no team reductions by default."""
    if SIMULATED:
        with _cuda.launch_config(block=16, max_blocks=3, max_team=1) as cfg:
            yield cfg
    else:
        with _cuda.launch_config(block=64, max_blocks=256) as cfg:
            yield cfg


def _shape(dims, n=2, c=3):
    return (n, c) + ((11,), (5, 7), (3, 4, 5))[dims - 1]


SIZES = {  # smaller than, equal to / global, and larger than the input; None keeps an axis
    1: (4, 1, 13),
    2: ((2, 3), (1, 1), (None, 9)),
    3: ((2, 3, 2), 1, (4, None, 6)),
}


def _sizes(dims):
    return list(SIZES[dims])


def _data(rng, shape, dtype, hostile=True):
    """Quarter steps make ties; NaN, +inf and an all -inf region when ``hostile``."""
    x = np.round(rng.standard_normal(shape) * 4) / 4
    if hostile:
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, max(1, flat.size // 25), replace=False)] = np.nan
        flat[rng.choice(flat.size, 2, replace=False)] = np.inf
        x[0, 0, ...] = -np.inf  # a whole plane: every window all -inf
    return x.astype(dtype)


# ------------------------------------------------------------------------ correctness


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy_and_torch(rng, kind, dims, dtype):
    x = _data(rng, _shape(dims), dtype)
    for size in _sizes(dims):
        values, indices = forward(kind, dims, x, size, **CU)
        ref_v, ref_i = forward(kind, dims, x, size, **NP)
        assert isinstance(values, np.ndarray) and values.flags.c_contiguous
        assert_close(values, ref_v, dtype)
        if kind == "max":
            assert_identical(values, ref_v)
            assert_identical(indices, ref_i)
    plain = _data(rng, _shape(dims), dtype, hostile=False)
    size = _sizes(dims)[0]
    values, indices = forward(kind, dims, plain, size, **CU)
    t_v, t_i = torch_forward(kind, dims, plain, size)
    assert_close(values, t_v, dtype)
    if kind == "max":
        assert_identical(indices, t_i)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_numpy_and_torch(rng, kind, dims, dtype):
    x = _data(rng, _shape(dims), dtype, hostile=False)
    for size in _sizes(dims):
        _, indices = forward(kind, dims, x, size, **NP)
        out_shape = FORWARD[kind, dims](x, size, backend="numpy").shape
        grad = (np.round(rng.standard_normal(out_shape) * 8) / 8).astype(dtype)
        got = backward(kind, dims, grad, indices, x.shape, **CU)
        assert got.dtype == dtype and got.shape == x.shape and got.flags.c_contiguous
        assert_close(got, backward(kind, dims, grad, indices, x.shape, **NP), dtype)
        if size == _sizes(dims)[0]:
            assert_close(got, torch_backward(kind, dims, x, size, grad), dtype)


@pytest.mark.parametrize("dims", DIMS)
def test_nan_ties_and_neg_inf_follow_spec(dims):
    spatial = (6, (4, 6), (2, 3, 4))[dims - 1]
    x = np.zeros((1, 4) + tuple(np.atleast_1d(spatial)), dtype=np.float32)
    x[0, 0] = 1.0  # all ties: first element of each window
    x[0, 1] = -np.inf  # all -inf: -inf at the window's first element
    x[0, 2] = np.nan  # all NaN: the last NaN
    x[0, 3].reshape(-1)[::2] = np.nan  # mixed
    size = (3, (2, 4), (2, 2, 3))[dims - 1]
    values, indices = forward("max", dims, x, size, **CU)
    ref_v, ref_i = brute_forward("max", dims, x, size)
    np.testing.assert_array_equal(values, ref_v.astype(np.float32))
    np.testing.assert_array_equal(indices, ref_i)


@pytest.mark.parametrize("dims", DIMS)
def test_unbatched_and_channels_last_format(rng, dims):
    x = _data(rng, _shape(dims), np.float32)
    size = _sizes(dims)[0]
    for kind in KINDS:
        ref_v, ref_i = forward(kind, dims, x[0], size, **NP)
        v, i = forward(kind, dims, x[0], size, **CU)
        assert_close(v, ref_v)
        if kind == "max":
            assert_identical(i, ref_i)
        x_last = np.moveaxis(x, 1, -1)  # (N, *spatial, C), a strided view
        v, i = forward(kind, dims, x_last, size, data_format="channels_last", **CU)
        ref_v, ref_i = forward(kind, dims, x_last, size, data_format="channels_last", **NP)
        assert_close(v, ref_v)
        g = np.ones_like(ref_v)
        assert_close(
            backward(kind, dims, g, ref_i, x_last.shape, data_format="channels_last", **CU),
            backward(kind, dims, g, ref_i, x_last.shape, data_format="channels_last", **NP),
        )


@pytest.mark.parametrize("kind", KINDS)
def test_forward_teams(rng, kind):
    """Several threads per output cell: shared-memory merge of partial sums / partial scans."""
    # window areas 2..60 -> teams of 2..32 threads; NaN, ties and -inf inside team windows
    x = _data(rng, (1, 2, 6, 10), np.float32)
    x[0, 1, :3, :5] = 1.0
    x[0, 1, 3:, 5:] = -np.inf
    x[0, 1, 4, 7] = np.nan
    x[0, 1, 5, 9] = np.nan
    cases = [
        (x, (1, 1), dict(block=32, max_team=32)),  # 6x10 windows: 8 threads
        (x, (2, 2), dict(block=8, max_team=8)),  # 3x5 windows: 4 threads
        (x, (1, 3), dict(block=16, max_team=2)),  # capped at 2 threads
        (x.reshape(1, 2, 30, 2)[:, :, :16], (1, 2), dict(block=8, max_team=8)),  # rows of 1
        (x.reshape(1, 2, 60, 1)[:, :, :16], (1, 1), dict(block=4, max_team=4)),
    ]
    for data, size, cfg in cases:
        with _cuda.launch_config(max_blocks=2, **cfg):
            sp = data.shape[2:]
            area = _cuda._max_window(sp[0], size[0]) * _cuda._max_window(sp[1], size[1])
            assert _cuda.team_shift(area, 1, _cuda.LAUNCH) > 0
            v, i = forward(kind, 2, data, size, **CU)
        ref_v, ref_i = forward(kind, 2, data, size, **NP)
        assert_close(v, ref_v)
        if kind == "max":
            assert_identical(v, ref_v)
            assert_identical(i, ref_i)
    x3 = _data(rng, (1, 1, 16, 1, 2), np.float32)  # 3d: whole planes of a team skipped at once
    with _cuda.launch_config(block=8, max_blocks=1, max_team=8):
        v, i = forward(kind, 3, x3, 1, **CU)
    ref_v, ref_i = forward(kind, 3, x3, 1, **NP)
    assert_close(v, ref_v)
    if kind == "max":
        assert_identical(i, ref_i)


def test_long_float32_windows_fold_into_float64():
    """A thread's float32 partial sums go into a float64 total every FOLD rounds. Values
    1 + k/4096 (k = 0..3): float32 adds them exactly while a sum stays below 1024, so a
    folded window of 16384 is exact up to the final division, where one float32 chain
    past 4096 rounds off part of the fraction (errors near 1e-6). A lone thread and
    a team."""
    k = np.random.default_rng(3).integers(0, 4, (1, 2, 16384))
    x = (1 + k / 4096).astype(np.float32)
    ref = x.astype(np.float64).mean(axis=-1, keepdims=True)
    for team in (1, 4):
        with _cuda.launch_config(block=8, max_blocks=1, max_team=team):
            y = fastpool.adaptive_avg_pool1d(x, 1, **CU)
        np.testing.assert_allclose(y, ref, rtol=1e-7, atol=0)


def test_team_shift_rule():
    cfg = _cuda.LaunchConfig(block=256, max_team=256)
    assert _cuda.team_shift(1, 10**6, cfg) == 0
    assert _cuda.team_shift(7, 10**6, cfg) == 0  # small windows: one thread, no barrier
    assert _cuda.team_shift(8, 10**6, cfg) == 2
    assert _cuda.team_shift(49, 10**6, cfg) == 3  # 7x7 -> 1: 8 threads of ~6 elements
    assert _cuda.team_shift(144, 10**6, cfg) == 4
    assert _cuda.team_shift(1024, 10**6, cfg) == 5  # 32x32: a warp, a row per load
    assert _cuda.team_shift(4096, 64, cfg) == 8  # global pooling of big planes: a block
    assert _cuda.team_shift(4096, 64, _cuda.LaunchConfig(block=64, max_team=256)) == 6
    assert _cuda.team_shift(4096, 64, _cuda.LaunchConfig(block=256, max_team=1)) == 0


@pytest.mark.parametrize("size_in", [1, 2, 3, 5, 7, 12, 13, 31])
def test_window_tables_invert_exactly(size_in):
    for size_out in range(0, 3 * size_in + 3):
        table = _cuda.host_tables((size_in,) * 3, (size_out,) * 3)
        k = 2 * size_out
        starts, ends = table[:size_out], table[size_out:k]
        ref_s, ref_e = window_arrays(size_in, size_out)
        np.testing.assert_array_equal(starts, ref_s)
        np.testing.assert_array_equal(ends, ref_e)
        first, stop = table[3 * k : 3 * k + size_in], table[3 * k + size_in : 3 * k + 2 * size_in]
        if size_out:
            ref_f, ref_l = cover_arrays(size_in, size_out)
            np.testing.assert_array_equal(first, ref_f)  # inversion == SPEC's reverse formula
            np.testing.assert_array_equal(stop, ref_l)
        else:
            assert (first == stop).all()


# ------------------------------------------------------------------------ layouts, out=


def _host_layouts(rng, dims):
    base = _data(rng, _shape(dims), np.float64)
    big = np.zeros((3, 5) + tuple(2 * s for s in base.shape[2:]))
    sliced = big[::-1, 1:4][:2][(slice(None), slice(None)) + (slice(None, None, 2),) * dims]
    sliced[...] = base
    perm = (0,) + tuple(range(2, dims + 2)) + (1,)
    return base, {
        "f_order": np.asfortranarray(base),
        "channels_last": np.ascontiguousarray(base.transpose(perm)).transpose(np.argsort(perm)),
        "sliced_negative": sliced,
        "reversed": base[..., ::-1].copy()[..., ::-1],
    }


@pytest.mark.parametrize("dims", DIMS)
def test_host_strides_give_the_c_order_result(rng, dims):
    base, layouts = _host_layouts(rng, dims)
    size = _sizes(dims)[0]
    for kind in KINDS:
        ref_v, ref_i = forward(kind, dims, base, size, **NP)
        g = np.ones_like(ref_v)
        ref_g = backward(kind, dims, g, ref_i, base.shape, **NP)
        for name, x in layouts.items():
            before = x.copy()
            v, i = forward(kind, dims, x, size, **CU)
            assert_close(v, ref_v)
            if kind == "max":
                assert (i == ref_i).all(), name
            g_strided = np.asfortranarray(g)
            assert_close(backward(kind, dims, g_strided, ref_i, base.shape, **CU), ref_g)
            np.testing.assert_array_equal(x, before)


def test_host_out_is_filled_and_returned(rng):
    x = _data(rng, _shape(2), np.float32)
    ref_v, ref_i = forward("max", 2, x, (2, 3), **NP)
    out_v = np.empty(ref_v.shape[::-1], np.float32).T  # F-order out
    out_i = np.empty_like(ref_i)
    got = fastpool.adaptive_max_pool2d(x, (2, 3), True, out=(out_v, out_i), **CU)
    assert got[0] is out_v and got[1] is out_i
    assert_identical(out_v, ref_v)
    assert_identical(out_i, ref_i)
    out = np.empty_like(x)
    g = np.ones_like(ref_v)
    assert fastpool.adaptive_max_pool2d_backward(g, ref_i, x.shape, out=out, **CU) is out
    assert_close(out, backward("max", 2, g, ref_i, x.shape, **NP))
    out_a = np.empty_like(ref_v)
    assert fastpool.adaptive_avg_pool2d(x, (2, 3), out=out_a, **CU) is out_a
    with pytest.raises(ValueError, match="out must have shape"):
        fastpool.adaptive_avg_pool2d(x, (2, 3), out=np.empty((1,), np.float32), **CU)
    same = np.ones((2, 3))
    with pytest.raises(ValueError, match="share memory"):
        fastpool.adaptive_avg_pool1d(same, 3, out=same, **CU)


# ------------------------------------------------------------------------ device arrays


def _dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def _host(d):
    assert fastpool._validate.is_device_array(d), type(d)
    return d.copy_to_host()


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_device_in_device_out(rng, kind, dims):
    x = _data(rng, _shape(dims), np.float32)
    size = _sizes(dims)[0]
    ref_v, ref_i = forward(kind, dims, x, size, **NP)
    dx = _dev(x)
    v, i = forward(kind, dims, dx, size)  # backend=None picks cuda for device arrays
    assert_close(_host(v), ref_v)
    if kind == "max":
        assert_identical(_host(i), ref_i)
    g = rng.standard_normal(ref_v.shape).astype(np.float32)
    ref_g = backward(kind, dims, g, ref_i, x.shape, **NP)
    assert_close(_host(backward(kind, dims, _dev(g), i, x.shape)), ref_g)
    if kind == "max":  # host indices with device grad, device indices with host grad
        assert_close(_host(backward(kind, dims, _dev(g), ref_i, x.shape, **CU)), ref_g)
        assert_close(backward(kind, dims, g, i, x.shape, **CU), ref_g)
    np.testing.assert_array_equal(dx.copy_to_host(), x)


def test_strided_device_inputs(rng):
    x = _data(rng, (2, 3, 5, 7), np.float64)
    ref_v, ref_i = forward("max", 2, x, (2, 3), **NP)
    big = np.zeros((2, 5, 5, 14))
    big[:, 1:4, :, ::2] = x
    views = {
        "f_order": cuda.to_device(np.asfortranarray(x)),
        "sliced": cuda.to_device(big)[:, 1:4, :, ::2],
    }
    if SIMULATED:  # numba's own negative-step device views are broken on a real GPU
        views["negative"] = cuda.to_device(x[:, ::-1].copy())[:, ::-1]
        views["channels_last"] = cuda.to_device(
            np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        ).transpose((0, 3, 1, 2))
    for name, dx in views.items():
        v, i = forward("max", 2, dx, (2, 3))
        assert np.array_equal(_host(v), ref_v, equal_nan=True), name
        assert_identical(_host(i), ref_i)
        a = fastpool.adaptive_avg_pool2d(dx, (2, 3))
        assert_close(_host(a), forward("avg", 2, x, (2, 3), **NP)[0])
        g = _dev(np.ones_like(ref_v))
        gi = fastpool.adaptive_avg_pool2d_backward(g, x.shape)
        assert_close(_host(gi), backward("avg", 2, np.ones_like(ref_v), None, x.shape, **NP))


def test_device_channels_last_format(rng):
    x = _data(rng, (2, 4, 5, 3), np.float32)  # (N, H, W, C)
    ref = fastpool.adaptive_avg_pool2d(x, (3, 2), data_format="channels_last", **NP)
    got = fastpool.adaptive_avg_pool2d(_dev(x), (3, 2), data_format="channels_last")
    assert_close(_host(got), ref)


def test_device_out(rng):
    x = _data(rng, (2, 3, 9), np.float32)
    ref_v, ref_i = forward("max", 1, x, 4, **NP)
    out_v = cuda.device_array(ref_v.shape, np.float32)
    out_i = cuda.device_array(ref_i.shape, np.int64)
    got = fastpool.adaptive_max_pool1d(_dev(x), 4, True, out=(out_v, out_i))
    assert got[0] is out_v and got[1] is out_i
    assert_identical(out_v.copy_to_host(), ref_v)
    assert_identical(out_i.copy_to_host(), ref_i)
    wide = cuda.to_device(np.full((2, 3, 8), 7.0, np.float32))
    strided_out = wide[:, :, ::2]  # write through strides, leave the gaps alone
    fastpool.adaptive_avg_pool1d(_dev(x), 4, out=strided_out)
    host = wide.copy_to_host()
    assert_close(host[:, :, ::2], forward("avg", 1, x, 4, **NP)[0])
    assert (host[:, :, 1::2] == 7.0).all()
    gout = cuda.device_array(x.shape, np.float32)
    g = np.ones_like(ref_v)
    assert fastpool.adaptive_max_pool1d_backward(_dev(g), out_i, x.shape, out=gout) is gout
    assert_close(gout.copy_to_host(), backward("max", 1, g, ref_i, x.shape, **NP))
    with pytest.raises(TypeError, match="out must be a device array"):
        fastpool.adaptive_avg_pool1d(_dev(x), 4, out=np.empty(ref_v.shape, np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        fastpool.adaptive_avg_pool1d(_dev(x), 4, out=cuda.device_array((2, 3, 5), np.float32))
    dx = _dev(x)
    with pytest.raises(ValueError, match="share memory"):
        fastpool.adaptive_avg_pool1d(dx, 9, out=dx)


def test_float16_on_device(rng):
    x = _data(rng, (1, 2, 6, 6), np.float16)
    ref = fastpool.adaptive_avg_pool2d(x, 4, **NP)
    got = fastpool.adaptive_avg_pool2d(_dev(x), 4)
    assert got.dtype == np.float16
    assert_close(_host(got), ref, np.float16)


# ------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("dims", DIMS)
def test_empty_batch_and_zero_output_size(dims):
    x = np.ones((0, 3) + (4,) * dims, np.float32)
    for kind in KINDS:
        for inp in (x, _dev(x)):
            v, i = forward(kind, dims, inp, 2, **CU)
            assert tuple(v.shape) == (0, 3) + (2,) * dims
            g = backward(kind, dims, v, i, x.shape, **CU)
            assert tuple(g.shape) == x.shape
    x = np.ones((2, 3) + (4,) * dims, np.float32)
    for kind in KINDS:
        for inp, get in ((x, np.asarray), (_dev(x), _host)):
            v, i = forward(kind, dims, inp, 0, **CU)
            assert tuple(v.shape) == (2, 3) + (0,) * dims
            g = backward(kind, dims, v, i, x.shape, **CU)
            np.testing.assert_array_equal(get(g), np.zeros_like(x))  # no cell covers anything


@pytest.mark.parametrize("on_device", [False, True])
def test_index_bounds_error_raised_before_writing(on_device):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    values, indices = forward("max", 2, x, 3, **NP)
    out = np.full(x.shape, 3.0)
    for bad_value in (-1, 25, 2**40):
        bad = indices.copy()
        bad.flat[7] = bad_value
        bad.flat[9] = -5 if bad_value < 0 else bad_value + 1
        ind = _dev(bad) if on_device else bad
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 25\)") as err:
            if on_device:
                fastpool.adaptive_max_pool2d_backward(_dev(values), ind, x.shape)
            else:
                fastpool.adaptive_max_pool2d_backward(values, ind, x.shape, out=out, **CU)
        expected = -5 if bad_value < 0 else bad_value + 1  # smallest / largest offender
        assert f"found {expected}" in str(err.value)
        assert (out == 3.0).all()


@pytest.mark.parametrize("dtype", (np.float16, np.float32))
def test_indices_outside_their_window_are_honoured(rng, dtype):
    """Any in-range index is honoured (PyTorch's scatter), through the per-plane fallback."""
    x_shape = (2, 3, 4, 6)
    g = rng.standard_normal((2, 3, 2, 3)).astype(dtype)
    indices = rng.integers(0, 24, size=g.shape)
    indices[0, 0] = 0  # repeats
    ref = fastpool.adaptive_max_pool2d_backward(g, indices, x_shape, **NP)
    got = fastpool.adaptive_max_pool2d_backward(g, indices, x_shape, **CU)
    assert_close(got, ref, dtype)
    got_dev = fastpool.adaptive_max_pool2d_backward(_dev(g), _dev(indices), x_shape)
    assert_close(_host(got_dev), ref, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_is_bit_identical_across_runs(rng, kind):
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    size = (5, 3)  # overlapping windows: several cells per input element
    _, indices = forward(kind, 2, x, size, **NP)
    g = rng.standard_normal((2, 3) + size).astype(np.float32)
    runs = [_host(backward(kind, 2, _dev(g), indices, x.shape)) for _ in range(2)]
    with _cuda.launch_config(max_blocks=1):  # a different grid gives the same bits too
        runs.append(_host(backward(kind, 2, _dev(g), indices, x.shape)))
    for r in runs[1:]:
        assert r.tobytes() == runs[0].tobytes()


def test_cpu_backend_refuses_device_arrays():
    with pytest.raises(TypeError, match="lives on a GPU"):
        fastpool.adaptive_avg_pool1d(_dev(np.ones((2, 3))), 2, backend="numpy")


def test_describe_and_info():
    text = _cuda.describe()
    assert ("simulator" in text) == SIMULATED
    from fastpool import _info

    assert "cuda" in _info.backend_details()


@pytest.mark.skipif(not SIMULATED, reason="this machine has a GPU")
def test_unusable_without_gpu_says_why():
    code = (
        "import fastpool, fastpool._backends as b\n"
        "assert 'cuda' not in fastpool.available_backends()\n"
        "print(b.backend_status()['cuda'][1])\n"
    )
    env = {k: w for k, w in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "no CUDA GPU" in res.stdout or "not installed" in res.stdout


# ------------------------------------------------------------------------ real GPU only


@real_gpu_only
def test_cupy_arrays_in_and_out(rng):
    cp = pytest.importorskip("cupy")
    x = _data(rng, (2, 3, 8, 8), np.float32)
    cx = cp.asarray(x)
    v, i = fastpool.adaptive_max_pool2d(cx[:, :, ::-1, :], 3, True)  # negative strides via CAI
    ref_v, ref_i = forward("max", 2, x[:, :, ::-1, :], 3, **NP)
    assert_identical(cp.asnumpy(cp.asarray(v)), ref_v)
    assert_identical(cp.asnumpy(cp.asarray(i)), ref_i)
    g = fastpool.adaptive_avg_pool2d_backward(cp.ones((2, 3, 3, 3), cp.float32), x.shape)
    assert_close(
        cp.asnumpy(cp.asarray(g)),
        backward("avg", 2, np.ones((2, 3, 3, 3), np.float32), None, x.shape, **NP),
    )


@real_gpu_only
def test_torch_cuda_tensors_in_and_out(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    x = _data(rng, (2, 3, 8, 8), np.float32, hostile=False)
    tx = torch.from_numpy(x).cuda().to(memory_format=torch.channels_last)
    v, i = fastpool.adaptive_max_pool2d(tx, 3, True)
    tv = torch.as_tensor(v, device="cuda")  # zero-copy through __cuda_array_interface__
    ref_v, ref_i = torch.nn.functional.adaptive_max_pool2d(tx, 3, return_indices=True)
    assert torch.equal(tv, ref_v)
    assert torch.equal(torch.as_tensor(i, device="cuda"), ref_i)
    g = torch.randn_like(ref_v)
    ours = torch.as_tensor(
        fastpool.adaptive_max_pool2d_backward(g, ref_i, tuple(x.shape)), device="cuda"
    )
    xr = tx.detach().requires_grad_(True)
    torch.nn.functional.adaptive_max_pool2d(xr, 3).backward(g)
    torch.testing.assert_close(ours, xr.grad)


def test_all_twelve_ops_are_covered():
    assert len(FORWARD) + len(BACKWARD) == 12
