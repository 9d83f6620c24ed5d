"""Every error case of SPEC.md: a clear Python exception, raised before any kernel runs."""

import numpy as np
import pytest
from oracles import BACKWARD, FORWARD, assert_identical, backward, forward

import fastpool

DIMS = (1, 2, 3)


def _x(dims, dtype=np.float32, n=2, c=3, size=6):
    return np.ones((n, c) + (size,) * dims, dtype=dtype)


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex128, object, ">f8"]
)
def test_unsupported_dtype_is_type_error(backend, kind, dims, dtype):
    x = _x(dims).astype(dtype)
    with pytest.raises(TypeError, match=r"x must have dtype float16, float32 or float64"):
        forward(kind, dims, x, 2, backend=backend)


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize("dims", DIMS)
def test_wrong_number_of_axes(backend, kind, dims):
    for shape in [(4,) * dims, (1,) * (dims + 3)]:
        with pytest.raises(ValueError, match=r"x must be \("):
            forward(kind, dims, np.ones(shape), 2, backend=backend)


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize("dims", DIMS)
def test_empty_channel_or_spatial_axis(backend, kind, dims):
    for shape in [(2, 0) + (4,) * dims, (2, 3) + (4,) * (dims - 1) + (0,), (0,) + (4,) * dims]:
        with pytest.raises(ValueError, match="non-empty channel and spatial axes"):
            forward(kind, dims, np.ones(shape), 2, backend=backend)


@pytest.mark.parametrize("dims", DIMS)
def test_bad_output_size(backend, dims):
    x = _x(dims)
    fn = FORWARD["avg", dims]
    with pytest.raises(ValueError, match="non-negative"):
        fn(x, -1, backend=backend)
    with pytest.raises(TypeError, match="output_size entries"):
        fn(x, 2.5, backend=backend)
    with pytest.raises(TypeError, match="output_size entries"):
        fn(x, True, backend=backend)
    with pytest.raises(TypeError, match="output_size entries"):
        fn(x, "3", backend=backend)
    with pytest.raises(ValueError, match=f"tuple of {dims} entries"):
        fn(x, (2,) * (dims + 1), backend=backend)
    # accepted forms: numpy ints, None entries, lists, 1-d integer arrays
    assert fn(x, np.int64(2), backend=backend).shape == (2, 3) + (2,) * dims
    assert fn(x, [None] * dims, backend=backend).shape == x.shape
    sizes = np.arange(1, dims + 1)
    assert fn(x, sizes, backend=backend).shape == (2, 3) + tuple(range(1, dims + 1))
    assert fn(x, sizes.astype(np.uint8), backend=backend).shape == (2, 3, *sizes.tolist())
    with pytest.raises(TypeError, match="output_size entries"):
        fn(x, sizes.astype(np.float64), backend=backend)
    with pytest.raises(ValueError, match=f"tuple of {dims} entries"):
        fn(x, np.arange(1, dims + 2), backend=backend)
    with pytest.raises(TypeError, match="output_size entries"):  # not read as None entries
        fn(x, np.ma.masked_array(sizes, mask=True), backend=backend)


def test_not_an_array(backend):
    with pytest.raises(TypeError, match="x must be an array"):
        fastpool.adaptive_avg_pool1d(None, 2, backend=backend)
    with pytest.raises(TypeError, match="x must be an array"):
        fastpool.adaptive_avg_pool1d("abc", 2, backend=backend)
    # nested lists of floats are arrays
    assert fastpool.adaptive_avg_pool1d([[1.0, 3.0]], 1, backend=backend).tolist() == [[2.0]]


def test_unknown_and_unusable_backends():
    x = _x(2)
    with pytest.raises(fastpool.BackendError, match="unknown backend 'nope'.*numpy"):
        fastpool.adaptive_avg_pool2d(x, 2, backend="nope")
    with pytest.raises(fastpool.BackendError, match="unknown backend ''"):
        fastpool.adaptive_avg_pool2d(x, 2, backend="")  # not the same as None
    assert issubclass(fastpool.BackendError, ValueError)
    with pytest.raises(fastpool.BackendError):
        fastpool.set_backend("nope")
    with pytest.raises(fastpool.BackendError):
        with fastpool.use_backend("nope"):
            pass
    status = fastpool._backends.backend_status()
    for name, (ok, reason) in status.items():
        if not ok:
            with pytest.raises(fastpool.BackendError, match=f"'{name}' is not usable here"):
                fastpool.adaptive_avg_pool2d(x, 2, backend=name)
            assert reason


@pytest.mark.parametrize("dims", DIMS)
def test_out_wrong_shape_dtype_or_readonly(backend, dims):
    x = _x(dims)
    good = np.full((2, 3) + (2,) * dims, 7.0, dtype=np.float32)
    for bad in [
        np.zeros((2, 3) + (3,) * dims, np.float32),
        np.zeros((2, 3) + (2,) * dims, np.float64),
    ]:
        before = bad.copy()
        with pytest.raises(ValueError, match="out must have shape"):
            FORWARD["avg", dims](x, 2, backend=backend, out=bad)
        np.testing.assert_array_equal(bad, before)
    ro = good.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        FORWARD["avg", dims](x, 2, backend=backend, out=ro)
    with pytest.raises(TypeError, match="out must be"):
        FORWARD["avg", dims](x, 2, backend=backend, out=[1, 2])
    with pytest.raises(TypeError, match="pair"):
        FORWARD["max", dims](x, 2, True, backend=backend, out=good)
    # a bad indices array in the pair leaves the values array untouched
    bad_idx = np.zeros(good.shape, np.int32)
    with pytest.raises(ValueError, match=r"out\[1\]"):
        FORWARD["max", dims](x, 2, True, backend=backend, out=(good, bad_idx))
    assert (good == 7.0).all()


def test_out_may_not_alias_input(backend):
    x = np.ones((2, 3, 8), np.float64)
    with pytest.raises(ValueError, match="share memory"):
        fastpool.adaptive_avg_pool1d(x, 8, backend=backend, out=x)
    g = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="share memory"):
        fastpool.adaptive_avg_pool1d_backward(g, (2, 3, 4), backend=backend, out=g)


def test_out_interleaved_with_input_is_fine(backend):
    """Views that interleave (``buf[..., ::2]``, ``buf[..., 1::2]``) share a buffer, not an
    element: allowed. One that does share an element is still rejected."""
    buf = np.random.default_rng(3).standard_normal((2, 3, 16))
    x, out = buf[..., ::2], buf[..., 1::2]
    expected = fastpool.adaptive_avg_pool1d(x.copy(), 8, backend="numpy")
    before = x.copy()
    assert fastpool.adaptive_avg_pool1d(x, 8, backend=backend, out=out) is out
    assert_identical(x, before)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="share memory"):
        fastpool.adaptive_avg_pool1d(buf[..., 1:9], 8, backend=backend, out=buf[..., 8:])


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize("dims", DIMS)
def test_backward_shape_checks(backend, kind, dims):
    x = _x(dims)
    values, indices = forward(kind, dims, x, 3, backend=backend)
    with pytest.raises(ValueError, match="grad_output must have the batch and channel sizes"):
        backward(kind, dims, values, indices, (2, 4) + x.shape[2:], backend=backend)
    with pytest.raises(ValueError, match="grad_output must have as many axes"):
        backward(kind, dims, values, indices, x.shape[1:], backend=backend)
    with pytest.raises(TypeError, match="input_shape"):
        backward(kind, dims, values, indices, 5, backend=backend)
    with pytest.raises(ValueError, match="non-negative"):
        backward(kind, dims, values, indices, (2, 3) + (-6,) * dims, backend=backend)
    with pytest.raises(ValueError, match="non-empty"):
        backward(kind, dims, values, indices, (2, 3) + (0,) * dims, backend=backend)
    with pytest.raises(TypeError, match="grad_output must have dtype"):
        backward(kind, dims, values.astype(np.int64), indices, x.shape, backend=backend)


@pytest.mark.parametrize("dims", DIMS)
def test_max_backward_index_checks(backend, dims):
    x = np.random.default_rng(0).standard_normal((2, 3) + (5,) * dims)
    values, indices = forward("max", dims, x, 3, backend=backend)
    fn = BACKWARD["max", dims]
    plane = 5**dims
    out = np.full(x.shape, 3.0)
    for bad_value in (-1, plane, 2**40):
        bad = indices.copy()
        bad.flat[4] = bad_value
        before = bad.copy()
        with pytest.raises(ValueError, match=rf"indices must lie in \[0, {plane}\)"):
            fn(values, bad, x.shape, backend=backend, out=out)
        np.testing.assert_array_equal(bad, before)
        assert (out == 3.0).all()
    with pytest.raises(ValueError, match="indices must have the shape of grad_output"):
        fn(values, indices[:1], x.shape, backend=backend)
    with pytest.raises(TypeError, match="integer array"):
        fn(values, indices.astype(np.float64), x.shape, backend=backend)
    with pytest.raises(TypeError, match="indices must be"):
        fn(values, None, x.shape, backend=backend)
    # other integer dtypes are fine
    ref = fn(values, indices, x.shape, backend=backend)
    as_int32 = fn(values, indices.astype(np.int32), x.shape, backend=backend)
    np.testing.assert_array_equal(as_int32, ref)


@pytest.mark.parametrize(
    ("dtype", "length", "bad_value"),
    [
        ("i1", 300, -1),  # as unsigned, -1 is 255: inside a plane of 300
        ("i2", 70000, -3),
        ("i4", 5, -1),
        (">i8", 4, 2**56),  # the wrong byte order: as native, 2**56 reads 1
        (">i4", 9, -1),
        ("<i2", 300, 299),  # fine
    ],
)
def test_max_backward_index_check_in_any_integer_dtype(backend, dtype, length, bad_value):
    """Every integer dtype and byte order: a negative or too large index is a ValueError,
    never a wrong gradient (a plane wider than the dtype's positive range included)."""
    values = np.ones((1, 2, 2))
    indices = np.array([[[0, 1], [bad_value, 0]]], dtype=dtype)
    fn = BACKWARD["max", 1]
    if 0 <= bad_value < length:
        expected = fn(values, indices.astype(np.int64), (1, 2, length), backend="numpy")
        assert_identical(fn(values, indices, (1, 2, length), backend=backend), expected)
        return
    with pytest.raises(ValueError, match=rf"indices must lie in \[0, {length}\)"):
        fn(values, indices, (1, 2, length), backend=backend)


@pytest.mark.parametrize("osize", [4, 1])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("n", [1, 16])
def test_max_backward_bad_index_without_out(backend, data_format, n, osize):
    # Without out= as well, whichever path the kernel takes (planes, eight planes at a time,
    # channels-last samples, runs of rows, gathers): without out=, kernels may test the
    # indices as they read them instead of before.
    x = np.random.default_rng(1).standard_normal((n, 6, 6, 6))
    values, indices = fastpool.adaptive_max_pool2d(
        x, osize, True, backend=backend, data_format=data_format
    )
    for where in (0, indices.size - 1):
        for bad_value in (-1, 36, 2**62):
            bad = indices.copy()
            bad.flat[where] = bad_value
            with pytest.raises(ValueError, match=r"indices must lie in \[0, 36\)"):
                fastpool.adaptive_max_pool2d_backward(
                    values, bad, x.shape, backend=backend, data_format=data_format
                )


@pytest.mark.parametrize("n", [1, 16])
def test_max_backward_bad_index_channel_stride_one_gradient(backend, n):
    # Gradients and indices with channel stride 1 (PyTorch's channels_last tensors) into a
    # channels-first result: the kernels that scatter into whole planes test the indices
    # as they read them too.
    x = np.random.default_rng(2).standard_normal((n, 16, 6, 6))
    values, indices = fastpool.adaptive_max_pool2d(x, 4, True, backend=backend)
    values = np.ascontiguousarray(values.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for where in (0, indices.size - 1):
        for bad_value in (-1, 36, 2**62):
            bad = np.ascontiguousarray(indices.transpose(0, 2, 3, 1))
            bad.flat[where] = bad_value
            with pytest.raises(ValueError, match=r"indices must lie in \[0, 36\)"):
                fastpool.adaptive_max_pool2d_backward(
                    values, bad.transpose(0, 3, 1, 2), x.shape, backend=backend
                )


def test_bad_data_format(backend):
    with pytest.raises(ValueError, match="data_format"):
        fastpool.adaptive_avg_pool2d(_x(2), 2, backend=backend, data_format="NHWC")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize(("n", "size", "osize"), [(64, 5, 7), (2, 40, 9)])
def test_bad_index_leaves_out_untouched_on_many_threads(
    backend, dtype, data_format, n, size, osize
):
    # Calls large enough to run on every thread, in each kernel family (small planes or
    # samples, single planes or runs of rows): a bad index anywhere is found before any
    # element of out is written, and out keeps its values.
    shape = (n, size, size, 16) if data_format == "channels_last" else (n, 16, size, size)
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    values, indices = fastpool.adaptive_max_pool2d(
        x, osize, True, backend=backend, data_format=data_format
    )
    plane = size * size
    out = np.full(x.shape, 7.0, dtype=dtype)
    for where in (0, indices.size // 2, indices.size - 1):
        for bad_value in (-1, plane):
            bad = indices.copy()
            bad.flat[where] = bad_value
            with pytest.raises(ValueError, match=rf"indices must lie in \[0, {plane}\)"):
                fastpool.adaptive_max_pool2d_backward(
                    values, bad, x.shape, backend=backend, data_format=data_format, out=out
                )
            assert (out == 7.0).all()
    good = fastpool.adaptive_max_pool2d_backward(
        values, indices, x.shape, backend=backend, data_format=data_format, out=out
    )
    assert good is out


def test_result_too_large_for_an_array_names_the_argument():
    """NumPy's own "array is too big" would not say which argument asked for it."""
    with pytest.raises(ValueError, match="output_size 4611686018427387904 asks for a result"):
        fastpool.adaptive_avg_pool1d(np.ones((1, 1, 3)), 2**62)
    with pytest.raises(ValueError, match=r"output_size \(2147483648, 2147483648\) asks"):
        fastpool.adaptive_max_pool2d(np.ones((2, 1, 3, 3)), (2**31, 2**31), True)
    with pytest.raises(ValueError, match=r"input_shape \(1, 1, 4611686018427387904\) asks"):
        fastpool.adaptive_avg_pool1d_backward(np.ones((1, 1, 3)), (1, 1, 2**62))


@pytest.mark.parametrize("kind", ("avg", "max"))
def test_masked_arrays_are_refused(backend, kind):
    """A mask would be ignored (every element pooled): refused, with what to do instead."""
    x = np.ma.masked_array(_x(2), mask=False)
    x.mask[0, 0, 0, 0] = True
    with pytest.raises(TypeError, match=r"x is a masked array.*\.filled\(value\)"):
        forward(kind, 2, x, 2, backend=backend)
    y, idx = forward(kind, 2, x.data, 2, backend=backend)
    out = np.ma.masked_array(np.zeros_like(y), mask=False)
    with pytest.raises(TypeError, match=r"out is a masked array.*\.data is written in place"):
        FORWARD["avg", 2](x.data, 2, backend=backend, out=out)
    assert not out.data.any()
    grad = np.ma.masked_array(np.ones_like(y), mask=False)
    with pytest.raises(TypeError, match="grad_output is a masked array"):
        backward(kind, 2, grad, idx, x.shape, backend=backend)
    if kind == "max":
        with pytest.raises(TypeError, match="indices is a masked array"):
            backward(kind, 2, grad.data, np.ma.masked_array(idx), x.shape, backend=backend)
