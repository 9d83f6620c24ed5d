"""Every backend against PyTorch, the brute-force oracle and the numpy backend."""

import numpy as np
import pytest
from oracles import (
    assert_close,
    assert_identical,
    backward,
    brute_forward,
    brute_max_backward,
    forward,
    require_torch,
    torch_backward,
    torch_forward,
)

import fastpool

KINDS = ("avg", "max")
DTYPES = (np.float32, np.float64)

# (dims, input shape, output_size): divisible, non-divisible, larger than input, None entries,
# size-1 axes, unbatched, the classic "to 1" and "keep" cases.
CASES = [
    (1, (2, 3, 10), 4),
    (1, (2, 3, 7), 7),
    (1, (1, 2, 5), 9),
    (1, (3, 11), 3),
    (1, (2, 1, 1), 3),
    (1, (2, 4, 64), (1,)),
    (2, (2, 3, 9, 7), (4, 3)),
    (2, (2, 3, 5, 5), 7),
    (2, (1, 2, 8, 8), (None, 3)),
    (2, (3, 6, 10), (2, 5)),
    (2, (2, 5, 1, 9), (3, 2)),
    (2, (2, 4, 7, 7), 1),
    (2, (1, 3, 13, 16), (13, 6)),
    (3, (2, 2, 4, 5, 6), (2, 3, 4)),
    (3, (1, 3, 3, 4, 5), (5, 2, 7)),
    (3, (2, 3, 4, 5), (None, 2, 1)),
    (3, (1, 2, 1, 1, 6), (2, 1, 4)),
    (3, (1, 2, 6, 6, 6), 1),
]
CASE_IDS = [f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in CASES]


def _data(rng, shape, dtype, hostile=False):
    x = rng.standard_normal(shape)
    if hostile:
        x = np.round(x * 2) / 2  # many ties
        mask = rng.random(shape)
        x[mask < 0.08] = np.nan
        x[(mask >= 0.08) & (mask < 0.14)] = np.inf
        x[(mask >= 0.14) & (mask < 0.22)] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=CASE_IDS)
def test_forward_matches_torch(backend, rng, dims, shape, osize, kind, dtype):
    x = _data(rng, shape, dtype, hostile=(kind == "max"))
    values, indices = forward(kind, dims, x, osize, backend=backend)
    ref_values, ref_indices = torch_forward(kind, dims, x, osize)
    assert values.dtype == dtype and values.flags.c_contiguous
    assert_close(values, ref_values)
    if kind == "max":
        assert indices.dtype == np.int64
        assert_identical(values, ref_values)  # max is exact, NaN included
        assert_identical(indices, ref_indices)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES[::3], ids=CASE_IDS[::3])
def test_forward_matches_brute_force(backend, rng, dims, shape, osize, kind):
    x = _data(rng, shape, np.float64, hostile=(kind == "max"))
    values, indices = forward(kind, dims, x, osize, backend=backend)
    ref_values, ref_indices = brute_forward(kind, dims, x, osize)
    assert_close(values, ref_values)
    if kind == "max":
        assert_identical(indices, ref_indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=CASE_IDS)
def test_backward_matches_torch(backend, rng, dims, shape, osize, kind, dtype):
    x = _data(rng, shape, dtype)
    values, indices = forward(kind, dims, x, osize, backend=backend)
    grad = rng.standard_normal(values.shape).astype(dtype)
    grad_input = backward(kind, dims, grad, indices, x.shape, backend=backend)
    assert grad_input.shape == x.shape and grad_input.dtype == dtype
    assert grad_input.flags.c_contiguous
    assert_close(grad_input, torch_backward(kind, dims, x, osize, grad))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=CASE_IDS)
def test_matches_numpy_backend(backend, rng, dims, shape, osize, kind):
    x = _data(rng, shape, np.float64, hostile=(kind == "max"))
    values, indices = forward(kind, dims, x, osize, backend=backend)
    ref_values, ref_indices = forward(kind, dims, x, osize, backend="numpy")
    assert_close(values, ref_values)
    if kind == "max":
        assert_identical(indices, ref_indices)
    grad = rng.standard_normal(values.shape)
    assert_close(
        backward(kind, dims, grad, indices, x.shape, backend=backend),
        backward(kind, dims, grad, ref_indices, x.shape, backend="numpy"),
    )


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_nan_tie_and_neg_inf_rules(backend, dims):
    """SPEC: ties -> first, NaN -> last NaN in scan order, all -inf -> window's first element."""
    spatial = (4,) * dims
    plane = 4**dims
    cases = {
        "ties": (np.ones(plane), 0),
        "nan_last": (np.where(np.arange(plane) % 3 == 1, np.nan, 1.0), None),
        "all_neg_inf": (np.full(plane, -np.inf), 0),
        "inf_first": (np.where(np.arange(plane) >= 2, np.inf, 0.0), 2),
    }
    for name, (flat, expected_index) in cases.items():
        x = flat.reshape((1, 1) + spatial)
        values, indices = forward("max", dims, x, 1, backend=backend)
        if expected_index is None:  # the last NaN in row-major order
            expected_index = int(np.flatnonzero(np.isnan(flat))[-1])
            assert np.isnan(values).all(), name
        else:
            assert values.ravel()[0] == flat[expected_index], name
        assert indices.ravel()[0] == expected_index, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", (9, 64, 65, 200, 1000))
def test_scan_rules_on_long_windows(backend, length, dtype):
    """The scan rules where a window is long enough for a kernel to search it in blocks:
    the first of tied maxima (also a -0.0/0.0 tie, and a maximum past the first block), the
    last NaN, all -inf. Global pooling and windows of a 1d row, against the brute force."""
    n = np.arange(length)
    rows = {
        "ties": np.where(n % 7 == 3, 2.0, 1.0),
        "signed_zero": np.where(n % 2 == 0, -0.0, 0.0) - (n < length // 2),
        "neg_zero_max": np.where(n % 4 == 2, -0.0, -1.0),
        "late_max": np.where(n == length - 1, 5.0, np.where(n % 5 == 1, 4.0, 0.0)),
        "late_first": np.where(n >= length - 3, 9.0, 1.0),
        "nan": np.where(n % 11 == 4, np.nan, n % 3),
        "all_neg_inf": np.full(length, -np.inf),
    }
    x = np.stack(list(rows.values()))[np.newaxis].astype(dtype)  # (1, C, L)
    for osize in (1, 3):
        values, indices = forward("max", 1, x, osize, backend=backend)
        ref_values, ref_indices = brute_forward("max", 1, x, osize)
        assert_identical(indices, ref_indices)
        assert values.tobytes() == ref_values.astype(dtype).tobytes()  # -0.0 is not 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
def test_empty_batch_and_zero_output(backend, dims, kind, dtype):
    spatial = (5,) * dims
    x = np.zeros((0, 3) + spatial, dtype=dtype)
    values, indices = forward(kind, dims, x, 2, backend=backend)
    assert values.shape == (0, 3) + (2,) * dims and values.dtype == dtype
    grad = backward(kind, dims, values, indices, x.shape, backend=backend)
    assert grad.shape == x.shape and grad.dtype == dtype

    x = np.ones((2, 3) + spatial, dtype=dtype)
    values, indices = forward(kind, dims, x, 0, backend=backend)
    assert values.shape == (2, 3) + (0,) * dims
    if kind == "max":
        assert indices.shape == values.shape and indices.dtype == np.int64
    grad = backward(kind, dims, values, indices, x.shape, backend=backend)
    assert grad.shape == x.shape
    assert (grad == 0).all()  # no output cell: nothing flows back


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", (1, 2, 3))
def test_float16_accumulates_in_float32(backend, rng, dims, kind):
    shape = (2, 3) + (9, 7, 5)[:dims]
    x = rng.standard_normal(shape).astype(np.float16)
    values, indices = forward(kind, dims, x, 4, backend=backend)
    assert values.dtype == np.float16
    ref_values, ref_indices = forward(kind, dims, x.astype(np.float32), 4, backend="numpy")
    if kind == "max":
        assert_identical(values, ref_values.astype(np.float16))
        assert_identical(indices, ref_indices)
    else:  # one rounding to float16 at the end: within half an ulp of the float32 result
        assert_close(values, ref_values.astype(np.float16))
        tv, _ = torch_forward(kind, dims, x, 4)
        assert_close(values, tv)
    grad = rng.standard_normal(values.shape).astype(np.float16)
    gi = backward(kind, dims, grad, indices, x.shape, backend=backend)
    assert gi.dtype == np.float16
    ref = backward(kind, dims, grad.astype(np.float32), ref_indices, x.shape, backend="numpy")
    assert_close(gi, ref.astype(np.float16))


@pytest.mark.parametrize("layout", ("first", "last"))
@pytest.mark.parametrize("part_bytes", (1, 3000), ids=("plane", "planes"))
def test_float16_in_parts_is_float32_rounded_once(compiled_backend, monkeypatch, rng, part_bytes,
                                                  layout):
    """float16 goes through float32 copies of a few planes at a time (one here, or a few
    samples' worth): bit for bit the float32 result of the whole array, rounded once, into
    a strided out= too; a bad index is reported before any part is written."""
    import fastpool._host

    monkeypatch.setattr(fastpool._host, "_FLOAT16_PART", part_bytes)
    x = rng.standard_normal((3, 10, 9, 7)).astype(np.float16)
    if layout == "last":
        x = np.moveaxis(np.moveaxis(x, 1, -1).copy(), -1, 1)
    x32 = x.astype(np.float32)
    for kind in KINDS:
        values, indices = forward(kind, 2, x, (4, 3), backend=compiled_backend)
        ref, ref_indices = forward(kind, 2, x32, (4, 3), backend=compiled_backend)
        assert_identical(values, ref.astype(np.float16))
        if kind == "max":
            assert_identical(indices, ref_indices)
        grad = rng.standard_normal(values.shape).astype(np.float16)
        out = np.zeros(x.shape + (2,), np.float16)[..., 0]
        got = backward(kind, 2, grad, indices, x.shape, backend=compiled_backend, out=out)
        expected = backward(kind, 2, grad.astype(np.float32), indices, x.shape,
                            backend=compiled_backend)
        assert got is out
        assert_identical(got, expected.astype(np.float16))
    indices = indices.copy()
    indices[-1, -1, -1, -1] = 63  # outside the 9x7 plane, in the last part
    out[...] = 7
    with pytest.raises(ValueError, match="indices"):
        backward("max", 2, grad, indices, x.shape, backend=compiled_backend, out=out)
    assert (out == 7).all()


@pytest.mark.parametrize("where", ("forward", "anywhere"))
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (2, (2, 5, 40, 2100), (13, 400)),  # rows wider than a slab
    (2, (3, 4, 64, 64), (3, 3)),  # slabs of 32 rows, windows of 22
    (2, (2, 5, 300, 60), (7, 7)),  # slabs thinner than a window
    (2, (2, 5, 3, 3000), (5, 3001)),  # upsampling
    (3, (1, 9, 6, 40, 60), (2, 5, 3)),
])
def test_numba_planar_max_backward_slabs_and_whole_planes_agree(monkeypatch, rng, dims, shape,
                                                                 osize, where):
    """Numba's planar max backward, in slabs of rows or a whole plane at a time (chosen by
    sizes and plane count; forced both ways here): the same bits, each element adding its
    cells in output order, also for indices outside their cells' windows (the slabs'
    fallback)."""
    import fastpool

    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    import fastpool._numba as nb

    x = _data(rng, shape, np.float32)
    values, indices = forward("max", dims, x, osize, backend="numpy")
    if where == "anywhere":
        indices = rng.integers(0, int(np.prod(shape[2:])), size=indices.shape)
    grad = rng.standard_normal(values.shape).astype(np.float32)
    results = []
    for whole in (True, False):
        monkeypatch.setattr(nb, "_whole_planes", lambda *args, whole=whole: whole)
        results.append(backward("max", dims, grad, indices, shape, backend="numba"))
    assert_identical(results[0], results[1])
    assert_close(results[0], brute_max_backward(grad, indices, shape, dims), np.float32)


# The numpy backend pools a large array a block of planes at a time: one plane per block
# (runs of one sample's channels), or a few samples per block.
@pytest.mark.parametrize("block", (1, 600), ids=("planes", "samples"))
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (1, (3, 4, 50), 7),
    (2, (3, 5, 9, 7), (4, 11)),  # down one axis, up the other
    (3, (2, 3, 4, 5, 6), (2, 3, 4)),
])
def test_numpy_backend_in_blocks_gives_the_whole_arrays_bits(monkeypatch, rng, dims, shape,
                                                             osize, block):
    import fastpool._numpy

    data = {kind: _data(rng, shape, np.float64, hostile=kind == "max") for kind in KINDS}
    whole = {kind: forward(kind, dims, data[kind], osize, backend="numpy") for kind in KINDS}
    grad = rng.standard_normal(whole["avg"][0].shape)
    whole_grads = {kind: backward(kind, dims, grad, whole[kind][1], shape, backend="numpy")
                   for kind in KINDS}
    monkeypatch.setattr(fastpool._numpy, "_BLOCK_ELEMENTS", block)
    assert len(fastpool._numpy._blocks((3, 5, 1, 9, 7), (3, 5, 1, 4, 11), (4, 3, 2))) > 1
    for kind in KINDS:
        x = data[kind]
        strided = np.moveaxis(np.moveaxis(x, 1, -1).copy(), -1, 1)  # channels-last memory
        for a in (x, strided):
            values, indices = forward(kind, dims, a, osize, backend="numpy")
            assert_identical(values, whole[kind][0])
            if kind == "max":
                assert_identical(indices, whole[kind][1])
        out = np.zeros(shape + (2,))[..., 0]  # a strided out=
        got = backward(kind, dims, grad, whole[kind][1], shape, backend="numpy", out=out)
        assert got is out
        assert_identical(got, whole_grads[kind])


@pytest.mark.parametrize("op", ("avg", "max", "avg_backward", "max_backward", "upsample"))
def test_numpy_backend_temporaries_stay_within_a_block(monkeypatch, op):
    """The numpy backend's temporaries (copies of gathered windows) are a block's, not the
    whole array's: 8 MiB of input pooled with blocks of 2**15 elements peaks well under
    the input's size (unblocked, twice or more of it)."""
    import tracemalloc

    import fastpool._numpy

    monkeypatch.setattr(fastpool._numpy, "_BLOCK_ELEMENTS", 1 << 15)
    x = np.random.default_rng(0).random((8, 16, 128, 128), dtype=np.float32)  # 8 MiB
    osize = 7
    if op == "upsample":  # 32 planes of 32x32 to 100x100: 1.2 MiB of results
        x, osize = x[:2, :, :32, :32], 100
    values, indices = forward("max", 2, x, osize, backend="numpy")
    grad = np.ones_like(values)
    run = {
        "avg": lambda: forward("avg", 2, x, osize, backend="numpy"),
        "max": lambda: forward("max", 2, x, osize, backend="numpy"),
        "avg_backward": lambda: backward("avg", 2, grad, None, x.shape, backend="numpy"),
        "max_backward": lambda: backward("max", 2, grad, indices, x.shape, backend="numpy"),
        "upsample": lambda: forward("avg", 2, x, osize, backend="numpy"),
    }[op]
    started = not tracemalloc.is_tracing()  # (a run under -X tracemalloc keeps its tracing)
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    result = result[0] if isinstance(result, tuple) else result
    assert peak - result.nbytes < 2 << 20, peak  # results, plus under 2 MiB


@pytest.mark.parametrize(("shape", "osize"), [
    ((2, 3, 1, 128, 128), (1, 7, 7)),
    ((2, 3, 1, 9, 7), (1, 20, 3)),  # up one axis, down the other
    ((1, 2, 5, 6, 7), (3, 9, 2)),
    ((1, 2, 1, 1, 100), (1, 1, 1)),
])
def test_numpy_backend_block_estimate_bounds_its_gathers(monkeypatch, shape, osize):
    """``_gathered`` is at least the largest gather of one plane, forward and backward (the
    block sizes rest on it)."""
    import fastpool._numpy as fnp

    sizes = []
    real_gather = fnp._gather

    def gather(a, *args):
        result = real_gather(a, *args)
        sizes.append(result[0].size // (a.shape[0] * a.shape[1]))
        return result

    monkeypatch.setattr(fnp, "_gather", gather)
    out5 = shape[:2] + osize
    x = np.random.default_rng(0).random(shape)
    for run, src, dst, axes in (
        (lambda: fnp.avg_forward(x, np.empty(out5)), shape, out5, fnp._SPATIAL_AXES),
        (lambda: fnp.max_forward(x, np.empty(out5), np.empty(out5, np.int64)), shape, out5,
         fnp._SPATIAL_AXES),
        (lambda: fnp.avg_backward(np.ones(out5), np.empty(shape)), out5, shape,
         fnp._BACKWARD_AXES),
    ):
        sizes.clear()
        run()
        assert 0 < max(sizes) <= fnp._gathered(src, dst, axes), (sizes, src, dst)


# Long float32 windows, data in [1, 1.001): one float32 accumulator per window (or per lane)
# drifts by ~2e-4 over a million values, where float64 sums of float32 blocks stay near 1e-7.
LONG_WINDOWS = [
    (1, (1, 2, 1 << 20), 1, "channels_first"),
    (1, (1, 1 << 18, 16), 1, "channels_last"),
    (2, (1, 2, 1024, 1024), 1, "channels_first"),
    (2, (1, 2, 1024, 1024), (2, 1), "channels_first"),
    (2, (1, 512, 512, 16), 1, "channels_last"),
    (2, (1, 512, 512, 16), 2, "channels_last"),
    (2, (1, 256, 256, 512), 1, "channels_last"),
    (3, (1, 64, 64, 64, 16), 1, "channels_last"),
    (3, (1, 256, 64, 4, 16), (1, 2, 2), "channels_last"),
    (3, (1, 16, 16, 1024, 4), 1, "channels_last"),
    (3, (1, 2, 8192, 4, 4), (1, 2, 2), "channels_first"),
    (3, (1, 2, 8192, 4, 4), (1, 2, 1), "channels_first"),
]


@pytest.mark.parametrize(
    ("dims", "shape", "osize", "data_format"),
    LONG_WINDOWS,
    ids=[f"{d}d-{'x'.join(map(str, s))}-{o}-{f}" for d, s, o, f in LONG_WINDOWS],
)
def test_float32_means_of_long_windows_stay_accurate(backend, rng, dims, shape, osize,
                                                     data_format):
    x = (1 + 1e-3 * rng.random(shape)).astype(np.float32)
    values, _ = forward("avg", dims, x, osize, backend=backend, data_format=data_format)
    ref, _ = forward("avg", dims, x.astype(np.float64), osize, backend="numpy",
                     data_format=data_format)
    np.testing.assert_allclose(values, ref, rtol=1e-6, atol=0)


def test_large_sizes_use_exact_window_arithmetic(backend):
    """Windows for sizes where float arithmetic would pick the wrong start/end."""
    size_in, size_out = 1_000_003, 999_983
    x = np.arange(size_in, dtype=np.float64).reshape(1, 1, size_in)
    values, indices = forward("max", 1, x, size_out, backend=backend)
    i = np.arange(size_out, dtype=np.int64)
    ends = -((-(i + 1) * size_in) // size_out)
    assert_identical(indices[0, 0], ends - 1)  # increasing data: the max is the last element
    avg, _ = forward("avg", 1, x, size_out, backend=backend)
    starts = (i * size_in) // size_out
    np.testing.assert_allclose(avg[0, 0], (starts + ends - 1) / 2, rtol=1e-12)


# Planes large enough for the kernels that look for an index only where its cell's window
# could put it (row slabs, channels-last row runs and gathers), and small ones.
ANY_INDEX_CASES = [
    (1, (2, 8, 3000), 7),
    (2, (2, 16, 5, 5), 7),
    (2, (2, 8, 9, 11), (4, 5)),
    (2, (2, 8, 64, 64), 5),
    (2, (24, 16, 30, 30), 7),
    (3, (2, 8, 6, 20, 20), (3, 4, 5)),
]


@pytest.mark.parametrize("channels_last", (False, True), ids=("first", "last"))
@pytest.mark.parametrize("where", ("anywhere", "one_moved"))
@pytest.mark.parametrize(
    ("dims", "shape", "osize"),
    ANY_INDEX_CASES,
    ids=[f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in ANY_INDEX_CASES],
)
def test_max_backward_takes_any_index_in_the_plane(
    backend, rng, dims, shape, osize, where, channels_last
):
    """SPEC: ``grad_input.flat_plane[indices[o]] += grad_output[o]`` for any index in the
    plane, not only those a forward pass gives (PyTorch's backward accepts them too)."""
    x = rng.standard_normal(shape)
    values, indices = forward("max", dims, x, osize, backend="numpy")
    plane = int(np.prod(shape[2:]))
    if where == "anywhere":  # with repeats, mostly outside their own windows
        indices = rng.integers(0, plane, size=indices.shape)
    else:  # one index per sample moved far from its window
        flat = indices.reshape(shape[0], -1)
        flat[:, flat.shape[1] // 2] = (flat[:, flat.shape[1] // 2] + plane // 2) % plane
    grad = rng.standard_normal(values.shape)
    expected = brute_max_backward(grad, indices, shape, dims)
    if channels_last:
        last = (shape[0],) + shape[2:] + (shape[1],)
        got = backward(
            "max",
            dims,
            np.moveaxis(grad, 1, -1).copy(),
            np.moveaxis(indices, 1, -1).copy(),
            last,
            backend=backend,
            data_format="channels_last",
        )
        got = np.moveaxis(got, -1, 1)
    else:
        got = backward("max", dims, grad, indices, shape, backend=backend)
    assert_close(got, expected)
    torch = require_torch()
    g, ix = torch.from_numpy(grad), torch.from_numpy(indices)
    if dims == 1:  # PyTorch runs its 1d pooling through the 2d kernels
        g, ix, x = g.unsqueeze(2), ix.unsqueeze(2), x[:, :, None]
    op = getattr(torch.ops.aten, f"adaptive_max_pool{max(dims, 2)}d_backward")
    ref = op(g, torch.from_numpy(x), ix).numpy().reshape(shape)
    assert_close(expected, ref)


@pytest.mark.parametrize("dtype", (np.float16, np.float32))
@pytest.mark.parametrize("channels_last", (False, True), ids=("first", "last"))
def test_any_index_into_out_and_low_precision(backend, rng, dtype, channels_last):
    """The any-index fallback writes a strided ``out=`` completely, in every dtype."""
    shape, osize = (6, 16, 9, 11), (4, 5)
    values, indices = forward("max", 2, rng.standard_normal(shape), osize, backend="numpy")
    indices = rng.integers(0, 99, size=indices.shape)
    grad = rng.standard_normal(values.shape).astype(dtype)
    expected = brute_max_backward(grad.astype(np.float32), indices, shape, 2)
    out = np.asfortranarray(np.full(shape, 5.0, dtype))  # neither layout: a stand-in array
    kw = {"backend": backend, "out": out}
    if channels_last:
        out = np.full((6, 9, 12, 16), 5.0, dtype)[:, :, :11]  # channels-last, rows padded
        kw = {"backend": backend, "out": out, "data_format": "channels_last"}
        got = backward(
            "max", 2, np.moveaxis(grad, 1, -1), np.moveaxis(indices, 1, -1), out.shape, **kw
        )
        got = np.moveaxis(got, -1, 1)
    else:
        got = backward("max", 2, grad, indices, shape, **kw)
    assert got.dtype == dtype
    assert_close(got, expected.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", [(1, 1, 1), (1, 1, 3), (1, 1, 8), (1, 3, 5), (1, 7, 7),
                                   (2, 3, 5), (1, 1, 63), (1, 8, 8), (1, 9, 9)])
def test_global_average_of_short_planes(backend, rng, dtype, plane):
    """Global pooling of planes on both sides of the numba backend's vector-sum length
    (64), through the serial and the threaded kernel (over 2**15 elements), against
    PyTorch."""
    for planes in (2, 2 * (20000 // np.prod(plane) + 1)):
        x = rng.standard_normal((planes // 2, 2) + plane).astype(dtype)
        dims = 3 if plane[0] > 1 else 2
        x = x if dims == 3 else x[:, :, 0]
        values, _ = forward("avg", dims, x, 1, backend=backend)
        assert_close(values, torch_forward("avg", dims, x, 1)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("dims", "shape", "osize"), [
    (1, (1, 3, 600), 40),  # windows of 15 positions (the numba backend's loop)
    (1, (1, 3, 640), 40),  # 16 (its vector sum)
    (1, (1, 3, 630), 10),  # 63 (its vector sum)
    (1, (1, 3, 640), 10),  # 64 (the loop)
    (2, (1, 2, 4, 200), (4, 5)),  # one row of 40 per window
    (3, (1, 1, 4, 4, 357), (5, 8, 15)),  # one row of 23-24, from every depth slice
])
def test_average_of_one_row_windows(backend, rng, dtype, dims, shape, osize):
    """Windows of one row, on both sides of the numba backend's vector-sum lengths (16 and
    64), in a few planes (one thread) and in many (several), against PyTorch."""
    for n in (1, 14 if dims == 3 else 40):
        x = rng.standard_normal((n,) + shape[1:]).astype(dtype)
        values, _ = forward("avg", dims, x, osize, backend=backend)
        assert_close(values, torch_forward("avg", dims, x, osize)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_lane_sum_adds_in_its_documented_order(rng, dtype):
    """The vector sum of the numba global average, bit for bit against its documented
    order (lanes of 32 bytes, then halves, then the remainder in order), at every length to
    70 and unaligned offsets; its prefetch hint never faults, even far past the end."""
    if "numba" not in fastpool.available_backends():
        pytest.skip("numba is not usable here")
    from numba import njit

    from fastpool._numba import _lane_sum, _prefetch

    @njit
    def run(a, start, n):
        _prefetch(a, start + 10**9)
        return _lane_sum(a, start, n)

    assert run(np.ones(4, dtype), 0, -3) == 0  # a negative length sums nothing

    a = rng.standard_normal(200).astype(dtype)
    lanes = 32 // a.itemsize
    for start in (0, 1, 5):
        for n in range(71):
            acc = np.zeros(lanes, dtype)
            whole = n // lanes * lanes
            for i in range(0, whole, lanes):
                acc = acc + a[start + i : start + i + lanes]
            while len(acc) > 1:
                acc = acc[: len(acc) // 2] + acc[len(acc) // 2 :]
            expected = acc[0]
            for i in range(whole, n):
                expected = dtype(expected + a[start + i])
            assert_identical(np.array(run(a, start, n), dtype), np.array(expected, dtype))
