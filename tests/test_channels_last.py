"""``data_format="channels_last"``: all twelve functions against the channels-first result.

A channels-last array is ``(N, *spatial, C)`` (or ``(*spatial, C)`` unbatched); its results are
shaped the same way, and indices keep their meaning: the flat spatial position within the
``(n, c)`` plane. So every channels-last result must be the channels-first result with the
channel axis moved to the end.
"""

import numpy as np
import pytest
from oracles import (
    BACKWARD,
    FORWARD,
    assert_close,
    assert_identical,
    backward,
    brute_max_backward,
    forward,
    torch_backward,
    torch_forward,
)

import fastpool
from fastpool import _threads, _validate

KINDS = ("avg", "max")
CL = {"data_format": "channels_last"}

# (dims, channels-first shape, output_size)
CASES = [
    (1, (2, 5, 11), 4),
    (1, (3, 7), 9),
    (2, (2, 5, 9, 7), (4, 3)),
    (2, (3, 6, 10), (None, 4)),
    (2, (2, 16, 5, 5), 7),
    (3, (2, 3, 4, 5, 6), (2, 3, 4)),
    (3, (4, 3, 5, 2), (1, None, 3)),
]
IDS = [f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in CASES]


def to_last(a, dims):
    """Channels-first -> channels-last (a view): the channel axis goes to the end."""
    channel = a.ndim - dims - 1
    return np.moveaxis(a, channel, -1)


def _data(rng, shape, kind, dtype=np.float64):
    x = rng.standard_normal(shape)
    if kind == "max":  # ties, NaN and infinities exercise the scan-order rules
        x = np.round(x * 2) / 2
        mask = rng.random(shape)
        x[mask < 0.05] = np.nan
        x[(mask >= 0.05) & (mask < 0.1)] = -np.inf
    return x.astype(dtype)


def _check(actual, expected, kind):
    if kind == "max":
        assert_identical(actual, expected)
    else:
        assert_close(actual, expected)


@pytest.mark.parametrize("contiguous", (True, False), ids=("copy", "view"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=IDS)
def test_forward_is_channels_first_transposed(backend, rng, dims, shape, osize, kind, contiguous):
    x = _data(rng, shape, kind)
    x_last = to_last(x, dims)
    if contiguous:  # the layout channels-last data really has in memory
        x_last = np.ascontiguousarray(x_last)
    before = x_last.copy()
    values, indices = forward(kind, dims, x, osize, backend=backend)
    values_last, indices_last = forward(kind, dims, x_last, osize, backend=backend, **CL)
    assert values_last.flags.c_contiguous
    _check(values_last, to_last(values, dims), kind)
    if kind == "max":
        assert_identical(indices_last, to_last(indices, dims))
    assert_identical(x_last, before)  # input not modified


WHOLE_ROWS = [
    (2, (2, 9, 7, 7), 1),  # 49 positions, summed as one run
    (2, (2, 9, 8, 5), (3, 1)),  # windows of 3-4 whole rows
    (2, (2, 9, 13, 5), 1),  # 65 positions: row by row
    (1, (2, 9, 40), 1),
    (1, (2, 9, 2049), 1),  # a row longer than 1024 positions: pieces of 1024, 1024 and 1
    (1, (1, 5, 2051), 2),  # windows of 1026 positions: pieces of 1024 and 2
    (2, (1, 130, 6, 6), (2, 1)),  # blocks of channels
]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(("dims", "shape", "osize"), WHOLE_ROWS,
                         ids=[f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in WHOLE_ROWS])
def test_average_of_whole_row_windows(backend, rng, dims, shape, osize, dtype):
    """Windows spanning whole rows: the channels-last average may sum their positions as
    one run; the values are still the reference's and the channels-first result's."""
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    expected = forward("avg", dims, x, osize, backend="numpy")[0]
    last = forward("avg", dims, np.ascontiguousarray(to_last(x, dims)), osize, backend=backend,
                   **CL)[0]
    assert_close(last, to_last(expected, dims))
    assert_close(forward("avg", dims, x, osize, backend=backend)[0], expected)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("shape", "osize"),
    [
        ((1, 24, 24, 48), 1),
        ((1, 8, 8, 1100), 1),
        ((2, 16, 16, 300), (3, 2)),
        ((1, 3, 20, 300), 1),
        ((1, 2, 32, 1100), (1, 3)),
        ((1, 3, 26, 300), (1, 3)),
        ((2, 12, 12, 64), (1, 2)),
        ((2, 20, 20, 16), (1, 2)),
    ],
    ids=(
        "192B-per-position",
        "4400B",
        "1200B",
        "rows-of-20",
        "3-cells-a-row",
        "mixed-row",
        "256B",
        "narrow-channels",
    ),
)
@pytest.mark.parametrize("kind", KINDS)
def test_windows_too_large_for_registers(backend, rng, shape, osize, dtype, kind):
    """Windows holding more than L1 of channels are pooled through sums or running maxima
    in memory, each input row updating every such cell of the output row, a run of
    positions at a time; the run length and the vector blocks depend on the bytes per
    position and on whether a task has all the channels (each branch is taken by one of
    these, float32 or float64: whole rows, runs of 12 and a rest, one position at a time,
    and a row whose middle cell is too large for registers while the others are not; max
    takes the memory path from 256 bytes per position, the average from 257, and for
    float32 windows of over 128 positions from any width but one block of 32). One
    thread takes every channel per task; three split them, as few cells leave too little
    work for three threads otherwise."""
    x = _data(rng, shape, kind, dtype)
    expected = forward(kind, 2, np.moveaxis(x, -1, 1), osize, backend="numpy")
    previous = _threads._requested
    try:
        for threads in (1, 3):
            fastpool.set_num_threads(threads)
            values, indices = forward(kind, 2, x, osize, backend=backend, **CL)
            _check(values, to_last(expected[0], 2), kind)
            if kind == "max":
                assert_identical(indices, to_last(expected[1], 2))
    finally:
        fastpool.set_num_threads(previous)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("shape", "osize"),
    [((2, 5, 6, 7, 12), (3, 4, 5)), ((1, 4, 5, 6, 1500), (2, 2, 3))],
    ids=("whole-rows", "channel-blocks"),
)
def test_volume_average_by_output_rows(backend, rng, shape, osize, dtype):
    """Volumes are averaged an output row at a time; with many channels a row holds a block
    of them (the second case: 9000 values per input row), and each block must still give
    every channel's mean. A window of -0.0 only averages to +0.0, as in the reference."""
    x = rng.standard_normal(shape).astype(dtype)
    x[..., ::7] = -0.0
    actual = fastpool.adaptive_avg_pool3d(x, osize, backend=backend, **CL)
    expected = fastpool.adaptive_avg_pool3d(np.moveaxis(x, -1, 1), osize, backend="numpy")
    assert_close(actual, np.moveaxis(expected, 1, -1))
    assert np.array_equal(np.signbit(actual), np.signbit(np.moveaxis(expected, 1, -1)))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("shape", "osize"),
    [((1, 6, 8, 8, 40), (1, 2, 3)), ((2, 8, 9, 8, 8), (1, 1, 2))],
    ids=("160B-per-position", "32B"),
)
def test_volume_max_of_windows_too_large_for_registers(backend, rng, shape, osize, dtype):
    """Volume windows of more than 8 KB keep their running maxima in memory from 32 bytes
    per position on (planes only from 256): each input row updates every cell of the
    output row. The scan order, and so ties and NaN, must be the reference's; with three
    threads the first case's channels are split in blocks, one of them small enough for
    registers."""
    x = _data(rng, shape, "max", dtype)
    ref_values, ref_indices = forward("max", 3, np.moveaxis(x, -1, 1), osize, backend="numpy")
    previous = _threads._requested
    try:
        for threads in (1, 3):
            fastpool.set_num_threads(threads)
            values, indices = forward("max", 3, x, osize, backend=backend, **CL)
            assert_identical(values, to_last(ref_values, 3))
            assert_identical(indices, to_last(ref_indices, 3))
    finally:
        fastpool.set_num_threads(previous)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=IDS)
def test_backward_is_channels_first_transposed(backend, rng, dims, shape, osize, kind):
    x = _data(rng, shape, kind)
    values, indices = forward(kind, dims, x, osize, backend=backend)
    grad = rng.standard_normal(values.shape)
    expected = backward(kind, dims, grad, indices, x.shape, backend=backend)
    idx_last = None if indices is None else np.ascontiguousarray(to_last(indices, dims))
    actual = backward(
        kind,
        dims,
        np.ascontiguousarray(to_last(grad, dims)),
        idx_last,
        to_last(x, dims).shape,
        backend=backend,
        **CL,
    )
    assert actual.shape == to_last(x, dims).shape
    assert_close(actual, to_last(expected, dims))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("channels", (32, 64))
def test_upsampling_average_backward_same_bits_in_both_layouts(backend, rng, channels, dtype):
    """Upsampling along W with whole vector blocks of channels: the Cython kernel computes a
    row's terms once and sums them per run; the bits must stay those of the planar layout
    (and close to the numpy reference)."""
    grad = rng.standard_normal((2, channels, 7, 7)).astype(dtype)
    expected = backward("avg", 2, grad, None, (2, channels, 5, 5), backend=backend)
    actual = backward(
        "avg", 2, np.ascontiguousarray(to_last(grad, 2)), None, (2, 5, 5, channels),
        backend=backend, **CL,
    )
    assert_identical(actual, to_last(expected, 2))
    assert_close(expected, backward("avg", 2, grad, None, (2, channels, 5, 5), backend="numpy"))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("dims", "shape", "osize"),
    [
        (2, (2, 70, 5, 5), 7),
        (2, (3, 40, 3, 3), 30),
        (2, (2, 24, 9, 6), (4, 13)),
        (1, (2, 150, 40), 100),
        (3, (2, 20, 3, 5, 4), (7, 2, 9)),
        (3, (1, 9, 4, 4, 4), 3),
        (2, (2, 3, 9, 7), (4, 3)),  # few channels: read in place all the same
        (1, (2, 5, 40), 13),
        (3, (1, 2, 4, 6, 5), (3, 2, 7)),
    ],
)
def test_average_backward_same_bits_from_either_gradient_layout(backend, rng, dims, shape, osize,
                                                                 dtype):
    """The average backward sums the same terms in the same order whatever the layouts of
    grad_output and grad_input (small maps take a block-of-channels path from channels-first
    and from channels-last gradients)."""
    x = np.zeros(shape, dtype)
    out_shape = forward("avg", dims, x, osize, backend="numpy")[0].shape
    grad = rng.standard_normal(out_shape).astype(dtype)
    grad_last = np.ascontiguousarray(to_last(grad, dims))
    planar = backward("avg", dims, grad, None, shape, backend=backend)
    from_last = backward("avg", dims, np.moveaxis(grad_last, -1, 1), None, shape, backend=backend)
    both_last = backward(
        "avg", dims, grad_last, None, to_last(x, dims).shape, backend=backend, **CL
    )
    assert_identical(from_last, planar)
    assert_identical(both_last, to_last(planar, dims))
    assert_close(planar, backward("avg", dims, grad, None, shape, backend="numpy"))


@pytest.mark.parametrize("channels", (2, 3, 7))
@pytest.mark.parametrize(("dims", "size", "osize"), [(1, 300, 7), (2, 40, 6), (2, 5, 7), (3, 9, 4)])
def test_max_backward_of_few_channels_last(backend, rng, channels, dims, size, osize):
    """Channels-last gradients of a few channels (numba: the SPEC's scatter, in place): the
    planar result's bits, for the forward's indices and for indices anywhere in the plane."""
    shape = (2, channels) + (size,) * dims
    x = rng.standard_normal(shape)
    values, indices = forward("max", dims, x, osize, backend="numpy")
    grad = rng.standard_normal(values.shape)
    for ix in (indices, rng.integers(0, size**dims, size=indices.shape)):
        planar = backward("max", dims, grad, ix, shape, backend=backend)
        last = backward("max", dims, np.ascontiguousarray(to_last(grad, dims)),
                        np.ascontiguousarray(to_last(ix, dims)), to_last(x, dims).shape,
                        backend=backend, **CL)
        assert_identical(last, to_last(planar, dims))
        assert_close(planar, brute_max_backward(grad, ix, shape, dims))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("shape", "osize"),
    [
        ((3, 200, 5, 5), 7),
        ((2, 45, 7, 7), (5, 3)),
        ((1, 130, 1, 40), (1, 100)),
        ((4, 9, 6, 9), (4, 13)),
    ],
)
def test_numba_small_map_average_same_bits_in_both_layouts(rng, shape, osize, dtype):
    """Numba: small 2-d maps (where channels-first planes are pooled a block of channels at
    a time) give the channels-last kernel's bits, for several blocks and a partial one."""
    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    backend = "numba"
    x = (rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3, shape)).astype(dtype)
    expected = forward("avg", 2, x, osize, backend=backend)[0]
    actual = forward("avg", 2, np.ascontiguousarray(to_last(x, 2)), osize, backend=backend, **CL)
    assert_identical(actual[0], to_last(expected, 2))
    assert_close(expected, forward("avg", 2, x, osize, backend="numpy")[0])


@pytest.mark.parametrize("out", ("new", "c_order", "strided"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (1, (2, 9, 40), 13),
    (2, (4, 128, 28, 28), 14),
    (2, (2, 130, 6, 6), 20),  # upsampling, a block of channels past 128
    (3, (2, 16, 4, 9, 7), (2, 3, 5)),
])
def test_channels_last_memory_into_channels_first_results(backend, rng, dims, shape, osize, kind,
                                                          out):
    """Channels-last memory with the default data_format (a ``channels_last`` tensor's
    ``.numpy()``): the channels-last kernels' results, stored channels-first, into a new
    array, a C-order ``out=`` or a strided one."""
    x = _data(rng, shape, kind, np.float32)
    x_last = np.ascontiguousarray(to_last(x, dims))
    x_mem = np.moveaxis(x_last, -1, 1)  # logical (N, C, ...), channels-last memory
    expected, expected_indices = forward(kind, dims, x_last, osize, backend=backend, **CL)
    kw = {}
    if out != "new":
        out_shape = np.moveaxis(expected, -1, 1).shape
        pad = (slice(None),) * (len(out_shape) - 1) + (slice(None, None, 2),)
        make = ((lambda dt: np.zeros(out_shape, dt)) if out == "c_order"
                else (lambda dt: np.zeros(out_shape[:-1] + (2 * out_shape[-1],), dt)[pad]))
        kw["out"] = (make(np.float32), make(np.int64)) if kind == "max" else make(np.float32)
    values, indices = forward(kind, dims, x_mem, osize, backend=backend, **kw)
    if out == "new":
        assert values.flags.c_contiguous
    assert_identical(values, np.moveaxis(expected, -1, 1))
    if kind == "max":
        assert_identical(indices, np.moveaxis(expected_indices, -1, 1))
    if out != "new":
        assert values is (kw["out"][0] if kind == "max" else kw["out"])


def _result_in(layout, shape, dtype):
    """A zeroed ``out=`` array of logical ``shape`` (N, C, ...): C order, channels-last
    memory, or every other element of a wider array."""
    if layout == "c_order":
        return np.zeros(shape, dtype)
    if layout == "last":
        return np.moveaxis(np.zeros(shape[:1] + shape[2:] + shape[1:2], dtype), -1, 1)
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
    return wide[..., ::2]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(("values_in", "indices_in"), [
    ("c_order", "strided"), ("strided", "c_order"), ("last", "c_order"), ("c_order", "last"),
])
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (2, (4, 64, 9, 9), 7),  # more cells per plane than a kernel holds before storing
    (2, (2, 19, 5, 6), (3, 2)),  # a block of channels that is not a multiple of 4
    (3, (2, 16, 4, 9, 7), (2, 3, 5)),
])
def test_channels_last_max_into_results_of_two_layouts(backend, rng, dims, shape, osize,
                                                       values_in, indices_in, dtype):
    """Channels-last memory pooled into an ``out=`` pair whose values and indices have
    different layouts (float16 runs through a C-order float32 temporary for the values):
    the channels-last data_format's bits in both."""
    x = _data(rng, shape, "max", dtype)
    x_last = np.ascontiguousarray(to_last(x, dims))
    expected, expected_indices = forward("max", dims, x_last, osize, backend=backend, **CL)
    out_shape = np.moveaxis(expected, -1, 1).shape
    out = (_result_in(values_in, out_shape, dtype), _result_in(indices_in, out_shape, np.int64))
    values, indices = forward("max", dims, np.moveaxis(x_last, -1, 1), osize, backend=backend,
                              out=out)
    assert values is out[0] and indices is out[1]
    assert_identical(values, np.moveaxis(expected, -1, 1))
    assert_identical(indices, np.moveaxis(expected_indices, -1, 1))


@pytest.mark.parametrize("out", ("new", "c_order"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (1, (2, 9, 40), 13),
    (2, (2, 16, 8, 8), 4),
    (2, (2, 130, 6, 6), 20),  # upsampling, a channel count that is not a multiple of 4
    (2, (3, 12, 9, 11), (5, 6)),
    (3, (2, 16, 4, 6, 6), (3, 4, 5)),
])
def test_channels_last_gradient_into_channels_first_result(backend, rng, dims, shape, osize,
                                                           kind, out):
    """A channels-last grad_output (and indices) with the default data_format, the gradient
    of a ``channels_last`` tensor: the channels_last data_format's bits, stored
    channels-first into a new array or a C-order ``out=``."""
    x_last = np.ascontiguousarray(to_last(_data(rng, shape, kind, np.float32), dims))
    values, indices = forward(kind, dims, x_last, osize, backend=backend, **CL)
    grad = rng.standard_normal(values.shape).astype(np.float32)
    expected = backward(kind, dims, grad, indices, x_last.shape, backend=backend, **CL)
    kw = {"out": np.zeros(shape, np.float32)} if out == "c_order" else {}

    def mem(a):  # logical (N, C, ...), channels-last memory
        return np.moveaxis(a, -1, 1)

    ix = mem(indices) if kind == "max" else None
    actual = backward(kind, dims, mem(grad), ix, shape, backend=backend, **kw)
    assert actual.flags.c_contiguous
    assert_identical(actual, np.moveaxis(expected, -1, 1))
    if kind == "avg":
        return
    # indices from no forward pass (anywhere in the plane, repeated): the SPEC's scatter
    plane = int(np.prod(shape[2:]))
    scattered = rng.integers(0, plane, indices.shape)
    actual = backward(kind, dims, mem(grad), mem(scattered), shape, backend=backend, **kw)
    expected = brute_max_backward(np.moveaxis(grad, -1, 1), np.moveaxis(scattered, -1, 1),
                                  shape, dims)
    assert_close(actual, expected.astype(np.float32), np.float32)
    if out == "c_order":  # a bad index: a ValueError, and out= as it was
        before = kw["out"].copy()
        scattered.flat[scattered.size // 2] = plane
        with pytest.raises(ValueError, match="indices must lie in"):
            backward(kind, dims, mem(grad), mem(scattered), shape, backend=backend, **kw)
        assert_identical(kw["out"], before)


@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (2, (1, 16, 64, 64), 6),  # one sample: ranges of positions per thread
    (2, (3, 16, 40, 36), (3, 2)),  # (large enough to run on every thread)
    (2, (3, 9, 17, 13), (3, 2)),
    (2, (5, 24, 12, 12), 5),
    (1, (2, 8, 300), 7),
    (3, (2, 8, 6, 9, 7), (2, 2, 3)),
])
def test_channels_last_max_backward_of_large_windows(backend, rng, dims, shape, osize):
    """Channels-last max gradients of windows of many elements (numba scatters them): the
    channels-first result's bits, on 1 and 2 threads; indices from no forward pass (anywhere
    in the plane, repeated) as the SPEC's loop adds them; a bad index raises, out= kept."""
    x = _data(rng, shape, "max", np.float32)
    values, indices = forward("max", dims, x, osize, backend=backend)
    grad = rng.standard_normal(values.shape).astype(np.float32)
    expected = backward("max", dims, grad, indices, shape, backend=backend)
    last_shape = to_last(x, dims).shape
    grad_last = np.ascontiguousarray(to_last(grad, dims))
    for threads in (1, 2):
        with fastpool.limit_threads(threads):
            actual = backward("max", dims, grad_last, np.ascontiguousarray(to_last(indices, dims)),
                              last_shape, backend=backend, **CL)
        assert_identical(actual, to_last(expected, dims))
    plane = int(np.prod(shape[2:]))
    anywhere = np.ascontiguousarray(to_last(rng.integers(0, plane, indices.shape), dims))
    actual = backward("max", dims, grad_last, anywhere, last_shape, backend=backend, **CL)
    reference = brute_max_backward(grad, np.moveaxis(anywhere, -1, 1), shape, dims)
    assert_close(actual, to_last(reference, dims).astype(np.float32), np.float32)
    for bad_value in (-1, plane):
        bad = anywhere.copy()
        bad.flat[bad.size // 2] = bad_value
        out = np.full(last_shape, 7.0, np.float32)
        with pytest.raises(ValueError, match="indices must lie in"):
            backward("max", dims, grad_last, bad, last_shape, backend=backend, out=out, **CL)
        assert (out == 7.0).all()
        with pytest.raises(ValueError, match="indices must lie in"):
            backward("max", dims, grad_last, bad, last_shape, backend=backend, **CL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_numba_transpose4_moves_a_block_of_four_by_four(rng, dtype):
    """The vector transpose of the numba channels-last stores, at offsets and strides that
    are not multiples of four, into the middle of a larger array (nothing else written)."""
    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    from numba import njit

    from fastpool._numba import _transpose4

    @njit
    def run(src, s, sstride, dst, d, dstride):
        _transpose4(src, s, sstride, dst, d, dstride)

    src = (rng.standard_normal(200) * 1000).astype(dtype)
    for s, sstride, d, dstride in [(0, 4, 0, 4), (3, 7, 5, 9), (1, 41, 2, 13), (10, 5, 0, 30)]:
        dst = np.full(150, -7, dtype)
        run(src, s, sstride, dst, d, dstride)
        expected = np.full(150, -7, dtype)
        for r in range(4):
            for c in range(4):
                expected[d + c * dstride + r] = src[s + r * sstride + c]
        assert_identical(dst, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=IDS)
def test_matches_torch(backend, rng, dims, shape, osize, kind):
    dtype = np.float32  # float64 is covered by the channels-first equivalence + test_ops
    x = rng.standard_normal(shape).astype(dtype)
    ref_values, ref_indices = torch_forward(kind, dims, x, osize)
    values, indices = forward(kind, dims, to_last(x, dims), osize, backend=backend, **CL)
    assert_close(values, to_last(ref_values, dims), dtype)
    if kind == "max":
        assert_identical(indices, to_last(ref_indices, dims))
    grad = rng.standard_normal(ref_values.shape).astype(dtype)
    ref_grad = torch_backward(kind, dims, x, osize, grad)
    actual = backward(
        kind, dims, to_last(grad, dims), indices, to_last(x, dims).shape, backend=backend, **CL
    )
    assert_close(actual, to_last(ref_grad, dims), dtype)


def test_torch_channels_last_tensor_goes_in_as_is(backend, rng):
    """A ``torch.channels_last`` tensor, permuted to NHWC, is a C-contiguous channels-last array."""
    import torch

    xt = torch.from_numpy(rng.standard_normal((2, 8, 9, 7))).contiguous(
        memory_format=torch.channels_last
    )
    nhwc = xt.permute(0, 2, 3, 1).numpy()
    assert nhwc.flags.c_contiguous
    values, indices = forward("max", 2, nhwc, (4, 3), backend=backend, **CL)
    ref_values, ref_indices = torch.nn.functional.adaptive_max_pool2d(xt, (4, 3), True)
    assert_close(values, ref_values.permute(0, 2, 3, 1).numpy())
    assert_identical(indices, ref_indices.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_indices_are_flat_spatial_positions(backend, dims):
    """Channel c's maximum sits at a known spatial position; its index is that flat position."""
    spatial = (3, 4, 5)[-dims:]
    plane = int(np.prod(spatial))
    channels = 6
    x = np.zeros((1,) + spatial + (channels,))
    positions = [(7 * c + 2) % plane for c in range(channels)]
    for c, p in enumerate(positions):
        x[(0,) + np.unravel_index(p, spatial) + (c,)] = 1.0 + c
    values, indices = forward("max", dims, x, 1, backend=backend, **CL)
    assert indices.shape == (1,) + (1,) * dims + (channels,)
    assert indices.ravel().tolist() == positions
    assert values.ravel().tolist() == [1.0 + c for c in range(channels)]
    grad = backward("max", dims, values, indices, x.shape, backend=backend, **CL)
    assert_identical(grad, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
def test_out_arrays(backend, rng, dims, kind):
    shape = (2, 3) + (5, 6, 7)[:dims]
    x = to_last(rng.standard_normal(shape), dims)
    expected_values, expected_indices = forward(kind, dims, x, 3, backend=backend, **CL)
    out_values = np.empty_like(expected_values)
    if kind == "max":
        out_indices = np.empty_like(expected_indices)
        result = FORWARD[kind, dims](
            x, 3, True, backend=backend, out=(out_values, out_indices), **CL
        )
        assert result[0] is out_values and result[1] is out_indices
        assert_identical(out_indices, expected_indices)
    else:
        assert FORWARD[kind, dims](x, 3, backend=backend, out=out_values, **CL) is out_values
    assert_identical(out_values, expected_values)

    grad = rng.standard_normal(expected_values.shape)
    expected = backward(kind, dims, grad, expected_indices, x.shape, backend=backend, **CL)
    out = np.empty(x.shape)
    args = (grad, expected_indices, x.shape) if kind == "max" else (grad, x.shape)
    assert BACKWARD[kind, dims](*args, backend=backend, out=out, **CL) is out
    assert_identical(out, expected)


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_out_with_channels_first_shape_is_rejected(dims):
    x = np.ones((2,) + (5, 6, 7)[:dims] + (3,))
    wrong = np.empty((2, 3) + (2,) * dims)  # channels-first shape of the result
    with pytest.raises(ValueError, match="out must have shape"):
        FORWARD["avg", dims](x, 2, out=wrong, **CL)


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_zero_batch_and_zero_output(backend, dims):
    x = np.ones((0,) + (4, 5, 6)[:dims] + (3,))
    values, indices = forward("max", dims, x, 2, backend=backend, **CL)
    assert values.shape == indices.shape == (0,) + (2,) * dims + (3,)
    values = FORWARD["avg", dims](np.ones((4, 5, 6)[:dims] + (3,)), 0, backend=backend, **CL)
    assert values.shape == (0,) * dims + (3,)
    grad = BACKWARD["avg", dims](values, (4, 5, 6)[:dims] + (3,), backend=backend, **CL)
    assert_identical(grad, np.zeros((4, 5, 6)[:dims] + (3,)))


def test_float16(backend, rng):
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float16)
    values = FORWARD["avg", 2](to_last(x, 2), 3, backend=backend, **CL)
    assert values.dtype == np.float16
    assert_close(values, to_last(FORWARD["avg", 2](x, 3, backend=backend), 2))


def test_kernels_get_a_view_not_a_copy():
    """The plan turns a channels-last array into the kernels' 5-D view without copying it."""
    x = np.zeros((2, 9, 7, 16), dtype=np.float32)
    plan = _validate.forward_plan(x.shape, x.dtype, 3, 2, channels_last=True)
    x5 = plan.view5(x)
    assert x5.shape == (2, 16, 1, 9, 7)
    assert np.shares_memory(x5, x) and x5.strides[1] == x.itemsize


@pytest.mark.parametrize(
    ("dims", "shape", "layout"),
    [
        (1, (4,), r"\(L, C\) or \(N, L, C\)"),
        (2, (2, 3, 4, 5, 6), r"\(H, W, C\) or \(N, H, W, C\)"),
        (3, (4, 5, 6), r"\(D, H, W, C\) or \(N, D, H, W, C\)"),
    ],
)
def test_wrong_rank_names_the_channels_last_layout(dims, shape, layout):
    with pytest.raises(ValueError, match=layout):
        FORWARD["avg", dims](np.ones(shape), 2, **CL)


def test_empty_channel_axis_is_rejected():
    with pytest.raises(ValueError, match="non-empty channel"):
        FORWARD["max", 2](np.ones((1, 4, 4, 0)), 2, **CL)


def test_bad_data_format():
    with pytest.raises(ValueError, match="data_format must be"):
        FORWARD["avg", 2](np.ones((1, 4, 4, 2)), 2, data_format="NHWC")


def _cl_means(x, osize, merged):
    """The numba channels-last average's arithmetic for 2-d windows of ``x`` (N, H, W, C):
    each window row summed in order in x's precision from +0.0 (with ``merged``, the whole
    window as one row), the rows added in float64 from +0.0, times the float64 reciprocal of
    the window's size, rounded to x's type."""
    n, h, w, c = x.shape
    out = np.empty((n, osize, osize, c), x.dtype)
    for oh in range(osize):
        h0, h1 = oh * h // osize, -(-(oh + 1) * h // osize)
        for ow in range(osize):
            w0, w1 = ow * w // osize, -(-(ow + 1) * w // osize)
            rows = [[(r, col) for col in range(w0, w1)] for r in range(h0, h1)]
            if merged:
                rows = [sum(rows, [])]
            total = np.zeros((n, c))
            for row in rows:
                part = np.zeros((n, c), x.dtype)
                for r, col in row:
                    part = part + x[:, r, col]  # one rounding per addition, in x's precision
                total = total + part
            out[:, oh, ow] = total * (1.0 / ((h1 - h0) * (w1 - w0)))
    return out


def _float64_means(x, size):
    """The numba average's arithmetic for windows of up to 2x2 (2-d, channels first): each
    window row summed in float32, the rows added in float64, times the float64 reciprocal
    of the window's size, rounded to float32 (:func:`_cl_means`, whose leading +0.0 of a
    row changes no mean)."""
    return np.moveaxis(_cl_means(np.moveaxis(x, 1, -1), size, merged=False), -1, 1)


def test_numba_small_windows_keep_the_float64_bits(rng):
    """Windows of up to two rows of two positions (5x5 -> 7x7) are averaged in float32 by the
    numba kernels of both layouts, with the bits of the float64 arithmetic of larger
    windows, subnormal results included; a float32 sum that overflows gives inf, as in
    PyTorch."""
    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    x = rng.standard_normal((3, 16, 5, 5)).astype(np.float32)
    x[0] *= np.float32(3e-38)  # halves and quarters of these sums are subnormal
    x[1, :4] = np.float32(2.5e38)  # sums beyond float32
    expected = _float64_means(x[[0, 2]], 7)
    first = forward("avg", 2, x, 7, backend="numba")[0]
    last = forward("avg", 2, np.ascontiguousarray(to_last(x, 2)), 7, backend="numba", **CL)[0]
    assert_identical(first[[0, 2]], expected)
    assert_identical(last, to_last(first, 2))
    ref = torch_forward("avg", 2, x[1:2], 7)[0][0]
    assert np.isinf(ref[:4]).any()
    assert_identical(first[1, :4], ref[:4])  # inf, or 2.5e38 from one position
    assert_close(first[1, 4:], ref[4:])


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("layout", ("first", "last"))
def test_small_windows_give_positive_zero_and_quiet_nan(backend, dtype, layout):
    """Windows of one, two or four positions of -0.0 average to +0.0, and a signalling NaN
    comes out quiet, as sums of the larger windows (and PyTorch's) give them."""
    x = np.full((2, 16, 5, 5), -0.0, dtype)
    bits = np.uint32(0x7F800001) if dtype == np.float32 else np.uint64(0x7FF0000000000001)
    x[1] = bits.view(dtype)  # a signalling NaN
    with np.errstate(invalid="ignore"):  # (numpy's own sums flag the signalling NaN)
        if layout == "last":
            got = np.moveaxis(forward("avg", 2, np.ascontiguousarray(to_last(x, 2)), 7,
                                      backend=backend, **CL)[0], -1, 1)
        else:
            got = forward("avg", 2, x, 7, backend=backend)[0]
    assert not np.signbit(got[0]).any()
    assert np.isnan(got[1]).all()
    quiet = np.uint32(1 << 22) if dtype == np.float32 else np.uint64(1 << 51)
    assert (got[1].view(quiet.dtype) & quiet == quiet).all()


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize(
    ("spatial", "osize", "channels"),
    # global windows (whole rows, summed as one run) of 32-channel register blocks (16 in
    # float64) with and without leftover channels, and leftover channels alone (8 or more:
    # fewer take the planar kernels); windows of several rows of up to 64 channels
    [
        ((7, 7), 1, 70),
        ((7, 7), 1, 64),
        ((8, 8), 1, 33),
        ((3, 3), 1, 12),
        ((1, 9), 1, 48),
        ((5, 1), 1, 17),
        ((10, 10), 3, 48),
        ((12, 9), 4, 64),
        ((9, 9), 2, 24),
    ],
)
def test_numba_channels_last_average_sums_in_order(rng, spatial, osize, channels, dtype):
    """Channels-last averages (numba): each window row's positions added in order in the
    input's precision, the rows in float64, then ``* (1.0 / size)`` in float64 and rounded
    (a global window of up to 64 positions is one row), the same bits for any block of
    channels."""
    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    x = (rng.standard_normal((3, *spatial, channels)) * 10 ** rng.uniform(-3, 3)).astype(dtype)
    x[0, ..., ::3] = -0.0
    x[1, 0, 0, 1] = np.inf
    expected = _cl_means(x, osize, merged=osize == 1)
    got = forward("avg", 2, x, osize, backend="numba", **CL)[0]
    assert_identical(got, expected)
    assert not np.signbit(got[0, ..., ::3]).any()
    # a chunk of the channels, of at least the 8 that channels-last kernels take: the same bits
    for lo, hi in ((0, 8), (8, channels)) if channels >= 16 else ():
        part = forward("avg", 2, np.ascontiguousarray(x[..., lo:hi]), osize, backend="numba",
                       **CL)[0]
        assert_identical(part, expected[..., lo:hi])
