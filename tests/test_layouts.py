"""Any strides, no input modification, ``out=`` honoured, deterministic backward."""

import numpy as np
import pytest
from oracles import assert_close, assert_identical, backward, forward

import fastpool

KINDS = ("avg", "max")


def _layouts(rng, dims, dtype=np.float64):
    """Name -> an (N, C, *spatial) array with that memory layout, all of the same shape."""
    spatial = (6, 7, 9)[-dims:]
    shape = (2, 5) + spatial
    base = rng.standard_normal(shape).astype(dtype)
    base = np.round(base * 4) / 4
    base[base > 1.9] = np.nan
    perm_last = (0,) + tuple(range(2, dims + 2)) + (1,)  # (N, *spatial, C)
    channels_last = np.ascontiguousarray(base.transpose(perm_last)).transpose(
        np.argsort(perm_last)
    )
    big = rng.standard_normal((3, 7) + tuple(2 * s for s in spatial)).astype(dtype)
    sliced = big[::-1, 1:6, ...][:2][(slice(None), slice(None)) + (slice(None, None, 2),) * dims]
    sliced[...] = base
    negative = base[..., ::-1].copy()[..., ::-1]
    return {
        "c_order": base,
        "f_order": np.asfortranarray(base),
        "channels_last": channels_last,
        "sliced": sliced,
        "negative_strides": negative,
        "zero_stride_batch": np.broadcast_to(base[:1], shape),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
@pytest.mark.parametrize(
    "layout",
    ["f_order", "channels_last", "sliced", "negative_strides", "zero_stride_batch"],
)
def test_any_strides_give_the_c_order_result(backend, rng, dims, kind, layout):
    arrays = _layouts(rng, dims)
    x = arrays[layout]
    ref_in = np.ascontiguousarray(x)
    osize = (4, 3, 5)[-dims:]
    values, indices = forward(kind, dims, x, osize, backend=backend)
    ref_values, ref_indices = forward(kind, dims, ref_in, osize, backend="numpy")
    assert values.flags.c_contiguous
    assert_close(values, ref_values)
    if kind == "max":
        assert_identical(indices, ref_indices)
    # backward from a strided grad_output (and strided indices)
    grad = np.asfortranarray(rng.standard_normal(values.shape))
    idx = np.asfortranarray(indices) if indices is not None else None
    gi = backward(kind, dims, grad, idx, x.shape, backend=backend)
    ref_gi = backward(kind, dims, np.ascontiguousarray(grad), ref_indices, x.shape, backend="numpy")
    assert gi.flags.c_contiguous
    assert_close(gi, ref_gi)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
def test_input_never_modified(backend, rng, dims, kind):
    for name, x in _layouts(rng, dims, np.float32).items():
        if name == "zero_stride_batch":
            continue
        x_before = x.copy()
        values, indices = forward(kind, dims, x, 3, backend=backend)
        grad = rng.standard_normal(values.shape).astype(np.float32)
        grad_before = grad.copy()
        idx_before = None if indices is None else indices.copy()
        backward(kind, dims, grad, indices, x.shape, backend=backend)
        np.testing.assert_array_equal(x, x_before, err_msg=name)
        np.testing.assert_array_equal(grad, grad_before)
        if indices is not None:
            np.testing.assert_array_equal(indices, idx_before)


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_out_is_filled_and_returned(backend, rng, dims):
    x = rng.standard_normal((2, 3) + (7,) * dims)
    avg = getattr(fastpool, f"adaptive_avg_pool{dims}d")
    out = np.empty((2, 3) + (3,) * dims)
    assert avg(x, 3, backend=backend, out=out) is out
    assert_close(out, avg(x, 3, backend="numpy"))

    mx = getattr(fastpool, f"adaptive_max_pool{dims}d")
    values, indices = np.empty_like(out), np.empty(out.shape, np.int64)
    res = mx(x, 3, True, backend=backend, out=(values, indices))
    assert res[0] is values and res[1] is indices
    ref_v, ref_i = mx(x, 3, True, backend="numpy")
    assert_identical(values, ref_v)
    assert_identical(indices, ref_i)
    values_only = np.empty_like(out)
    assert mx(x, 3, backend=backend, out=values_only) is values_only
    assert_identical(values_only, ref_v)

    # a non-contiguous out= is honoured too
    f_out = np.asfortranarray(np.empty_like(out))
    avg(x, 3, backend=backend, out=f_out)
    assert_close(f_out, avg(x, 3, backend="numpy"))
    f_values = np.asfortranarray(np.empty_like(out))
    f_indices = np.asfortranarray(np.empty(out.shape, np.int64))
    mx(x, 3, True, backend=backend, out=(f_values, f_indices))
    assert_identical(f_values, ref_v)
    assert_identical(f_indices, ref_i)
    f_gi = np.asfortranarray(np.empty_like(x))
    avg_bwd = getattr(fastpool, f"adaptive_avg_pool{dims}d_backward")
    avg_bwd(out, x.shape, backend=backend, out=f_gi)
    assert_close(f_gi, avg_bwd(out, x.shape, backend="numpy"))

    grad = rng.standard_normal(out.shape)
    gi_out = np.empty_like(x)
    bwd = getattr(fastpool, f"adaptive_max_pool{dims}d_backward")
    assert bwd(grad, ref_i, x.shape, backend=backend, out=gi_out) is gi_out
    assert_close(gi_out, bwd(grad, ref_i, x.shape, backend="numpy"))
    f_gi = np.asfortranarray(np.empty_like(x))
    bwd(grad, ref_i, x.shape, backend=backend, out=f_gi)
    assert_close(f_gi, gi_out)


def _set_threads(backend, n):
    """Thread count of a backend's kernels, if it has threads (returns the old value)."""
    module = getattr(fastpool._backends.get(backend), "module", None)
    if module is None or not hasattr(module, "set_num_threads"):
        return None
    old = module.get_num_threads()
    module.set_num_threads(n)
    return old


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
def test_backward_is_bit_identical_across_runs_and_threads(backend, rng, dims, kind):
    shape = (3, 8) + (11, 10, 13)[-dims:]
    x = rng.standard_normal(shape).astype(np.float32)
    osize = (4, 7, 3)[-dims:]
    values, indices = forward(kind, dims, x, osize, backend=backend)
    grad = rng.standard_normal(values.shape).astype(np.float32)
    first = backward(kind, dims, grad, indices, shape, backend=backend)
    assert_identical(backward(kind, dims, grad, indices, shape, backend=backend), first)
    old = _set_threads(backend, 1)
    if old is None:
        return
    try:
        single = backward(kind, dims, grad, indices, shape, backend=backend)
    finally:
        _set_threads(backend, old)
    assert_identical(single, first)
