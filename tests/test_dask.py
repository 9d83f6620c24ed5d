"""Dask arrays: lazy results identical to the in-memory call, threaded and on a LocalCluster."""

import subprocess
import sys

import numpy as np
import pytest
from oracles import BACKWARD, FORWARD, assert_identical, backward, forward

import fastpool

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

KINDS = ("avg", "max")

# (dims, channels-first shape, chunks (batch/channel chunked, some spatial axes split), osize)
CASES = [
    (1, (5, 6, 23), (2, 4, 10), 7),
    (1, (6, 17), (4, 17), (5,)),
    (2, (5, 6, 11, 9), (2, 4, 11, 9), (4, 3)),
    (2, (5, 6, 11, 9), (3, 6, 4, 5), (4, None)),
    (2, (6, 10, 7), (4, 10, 3), 9),
    (3, (3, 4, 5, 6, 7), (2, 3, 5, 2, 7), (2, 3, 4)),
    (3, (4, 5, 6, 7), (2, 5, 6, 7), (None, 2, 1)),
]
IDS = [f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, _, o in CASES]


@pytest.fixture(autouse=True)
def _threaded_scheduler():
    with dask.config.set(scheduler="threads"):
        yield


def to_last(a, dims):
    return np.moveaxis(a, a.ndim - dims - 1, -1)


def _data(rng, shape, kind):
    x = rng.standard_normal(shape)
    if kind == "max":
        x = np.round(x * 2) / 2
        x[rng.random(shape) < 0.05] = np.nan
    return x.astype(np.float32)


def _layout(x, chunks, dims, data_format):
    if data_format == "channels_last":
        x = np.ascontiguousarray(to_last(x, dims))
        chunks = list(chunks)
        chunks.append(chunks.pop(len(chunks) - dims - 1))
    return x, chunks


def _spatial(ndim, dims, data_format):
    last = ndim - 1 if data_format == "channels_last" else ndim
    return tuple(range(last - dims, last))


@pytest.mark.parametrize("data_format", ("channels_first", "channels_last"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dims", "shape", "chunks", "osize"), CASES, ids=IDS)
def test_forward_and_backward_identical_to_in_memory(
    backend, rng, dims, shape, chunks, osize, kind, data_format
):
    x, chunks = _layout(_data(rng, shape, kind), chunks, dims, data_format)
    kw = {"backend": backend, "data_format": data_format}
    dx = da.from_array(x, chunks=chunks)
    values, indices = forward(kind, dims, dx, osize, **kw)
    assert isinstance(values, da.Array)
    ref_values, ref_indices = forward(kind, dims, x, osize, **kw)

    # batch/channel chunks kept, spatial axes whole
    spatial = _spatial(x.ndim, dims, data_format)
    for axis in range(x.ndim):
        if axis in spatial:
            assert values.chunks[axis] == (ref_values.shape[axis],)
        else:
            assert values.chunks[axis] == dx.chunks[axis]

    if kind == "max":
        got_values, got_indices = dask.compute(values, indices)
        assert_identical(got_indices, ref_indices)
    else:
        got_values = values.compute()
    assert_identical(got_values, ref_values)

    grad = rng.standard_normal(ref_values.shape).astype(np.float32)
    ref_grad = backward(kind, dims, grad, ref_indices, x.shape, **kw)
    # a gradient chunked differently from the indices (rechunked to match)
    dgrad = da.from_array(grad, chunks=tuple(max(1, c // 2) for c in grad.shape))
    grad_x = backward(kind, dims, dgrad, indices, x.shape, **kw)
    assert isinstance(grad_x, da.Array)
    assert grad_x.shape == x.shape
    assert_identical(grad_x.compute(), ref_grad)
    if kind == "max":  # in-memory indices with a dask gradient
        assert_identical(
            backward(kind, dims, dgrad, ref_indices, x.shape, **kw).compute(), ref_grad
        )


def test_max_with_indices_runs_the_kernel_once_per_chunk(rng, monkeypatch):
    calls = []
    original = fastpool._api.adaptive_max_pool2d

    def counting(block, *args, **kwargs):
        calls.append(block.shape)
        return original(block, *args, **kwargs)

    monkeypatch.setattr(fastpool._api, "adaptive_max_pool2d", counting)
    x = rng.standard_normal((6, 4, 9, 9))
    values, indices = fastpool.adaptive_max_pool2d(da.from_array(x, chunks=(2, 2, 9, 9)), 3, True)
    assert calls == []  # lazy
    got_values, got_indices = dask.compute(values, indices)
    assert len(calls) == 6  # 3 x 2 chunks, each computed once for both outputs
    ref_values, ref_indices = original(x, 3, True)
    assert_identical(got_values, ref_values)
    assert_identical(got_indices, ref_indices)


def test_large_chunks_are_split_when_merging_spatial_axes(rng):
    x = rng.standard_normal((8, 8, 16, 16))
    dx = da.from_array(x, chunks=(8, 8, 4, 4))
    with dask.config.set({"array.chunk-size": "16KiB"}):
        values = fastpool.adaptive_avg_pool2d(dx, 5)
    assert values.numblocks[0] * values.numblocks[1] > 1
    assert values.chunks[2:] == ((5,), (5,))
    assert_identical(values.compute(), fastpool.adaptive_avg_pool2d(x, 5))


def test_empty_batch_and_zero_output(rng):
    x = da.zeros((0, 3, 5, 5), chunks=(1, 2, 5, 5))
    values, indices = fastpool.adaptive_max_pool2d(x, 2, True)
    assert values.compute().shape == indices.compute().shape == (0, 3, 2, 2)
    y = fastpool.adaptive_avg_pool2d(da.ones((2, 3, 5, 5), chunks=(1, 2, 5, 5)), (0, 2))
    assert y.compute().shape == (2, 3, 0, 2)
    grad = fastpool.adaptive_avg_pool2d_backward(y, (2, 3, 5, 5))
    assert_identical(grad.compute(), np.zeros((2, 3, 5, 5)))


def test_layers_take_dask_arrays(rng):
    x = rng.standard_normal((4, 3, 10, 8))
    pool = fastpool.AdaptiveMaxPool2d(3)
    y = pool(da.from_array(x, chunks=(2, 3, 10, 8)))
    assert isinstance(y, da.Array)
    grad_x = pool.backward(da.ones_like(y))
    ref_pool = fastpool.AdaptiveMaxPool2d(3)
    ref_y = ref_pool(x)
    assert_identical(y.compute(), ref_y)
    assert_identical(grad_x.compute(), ref_pool.backward(np.ones_like(ref_y)))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("kind", "dims"), [(k, d) for k in KINDS for d in (1, 2, 3)])
def test_out_is_not_supported(kind, dims):
    x = da.ones((2, 3) + (4,) * dims, chunks=2)
    with pytest.raises(TypeError, match="out= is not supported with dask"):
        FORWARD[kind, dims](x, 2, out=np.empty((2, 3) + (2,) * dims))
    grad = da.ones((2, 3) + (2,) * dims)
    args = (grad, np.zeros(grad.shape, np.int64)) if kind == "max" else (grad,)
    with pytest.raises(TypeError, match="out= is not supported with dask"):
        BACKWARD[kind, dims](*args, x.shape, out=np.empty(x.shape))


def test_arguments_are_checked_when_the_graph_is_built():
    x = da.ones((2, 3, 8, 8), chunks=(1, 3, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        fastpool.adaptive_avg_pool2d(x.astype(np.int32), 2)
    with pytest.raises(ValueError, match="output_size"):
        fastpool.adaptive_avg_pool2d(x, (2, 2, 2))
    with pytest.raises(fastpool.BackendError, match="unknown backend"):
        fastpool.adaptive_avg_pool2d(x, 2, backend="nope")
    grad = da.ones((2, 3, 2, 2))
    with pytest.raises(ValueError, match="indices must have the shape"):
        fastpool.adaptive_max_pool2d_backward(grad, np.zeros((2, 3, 2, 3), np.int64), x.shape)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
        fastpool.adaptive_max_pool2d_backward(grad, np.full((2, 3, 2, 2), 64), x.shape)
    with pytest.raises(TypeError, match="indices must be"):
        fastpool.adaptive_max_pool2d_backward(grad, None, x.shape)
    with pytest.raises(ValueError, match="batch and channel sizes"):
        fastpool.adaptive_avg_pool2d_backward(grad, (2, 4, 8, 8))
    masked = da.ma.masked_array(x, mask=x < 0)  # chunks of masked arrays: their mask refused
    with pytest.raises(TypeError, match="x is a masked array"):
        fastpool.adaptive_max_pool2d(masked, 2)
    with pytest.raises(TypeError, match="grad_output is a masked array"):
        fastpool.adaptive_avg_pool2d_backward(da.ma.masked_array(grad, mask=grad < 0), x.shape)


def test_lazy_out_of_bounds_indices_fail_at_compute():
    grad = da.ones((2, 3, 2, 2), chunks=1)
    bad = da.full((2, 3, 2, 2), 64, dtype=np.int64, chunks=1)
    lazy = fastpool.adaptive_max_pool2d_backward(grad, bad, (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
        lazy.compute()


def test_unknown_chunk_sizes_are_rejected():
    x = da.ones((4, 3, 5, 5), chunks=(2, 3, 5, 5))
    filtered = x[da.from_array(np.array([True, False, True, True]), chunks=2)]
    assert np.isnan(filtered.shape[0])
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fastpool.adaptive_avg_pool2d(filtered, 2)


def test_backend_is_resolved_when_the_graph_is_built(monkeypatch):
    """``use_backend`` applies to the graph even though chunks are computed in other threads."""
    seen = []
    original = fastpool._api.adaptive_avg_pool2d

    def spy(block, *args, **kwargs):
        seen.append(kwargs["backend"])
        return original(block, *args, **kwargs)

    monkeypatch.setattr(fastpool._api, "adaptive_avg_pool2d", spy)
    with fastpool.use_backend("numpy"):
        y = fastpool.adaptive_avg_pool2d(da.ones((4, 2, 6, 6), chunks=(1, 2, 6, 6)), 3)
    y.compute()
    assert seen == ["numpy"] * 4


def test_import_fastpool_does_not_import_dask():
    code = (
        "import sys, fastpool\n"
        "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root())


def _repo_root():
    import pathlib

    return pathlib.Path(fastpool.__file__).resolve().parent.parent


# ------------------------------------------------------------------------- LocalCluster


@pytest.fixture(scope="module")
def client():
    """A real cluster on 127.0.0.1: two worker processes, started with spawn (never fork after
    OpenMP has run: the child hangs), shut down when the module's tests are done."""
    distributed = pytest.importorskip("distributed")
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                protocol="tcp",
                dashboard_address=None,
                worker_dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client


def test_local_cluster(client, rng):
    # one kernel thread per worker task: the workers already run in parallel
    assert set(client.run(fastpool.set_num_threads, 1).values()) == {None}
    assert set(client.run(fastpool.get_num_threads).values()) == {1}
    x = rng.standard_normal((8, 6, 13, 11)).astype(np.float32)
    dx = da.from_array(x, chunks=(2, 3, 13, 6))
    values, indices = fastpool.adaptive_max_pool2d(dx, (4, 3), True)
    avg = fastpool.adaptive_avg_pool2d(dx, (4, 3))
    grad = da.ones_like(values)
    grad_max = fastpool.adaptive_max_pool2d_backward(grad, indices, x.shape)
    grad_avg = fastpool.adaptive_avg_pool2d_backward(grad, x.shape)
    results = client.compute([values, indices, avg, grad_max, grad_avg], sync=True)

    ref_values, ref_indices = fastpool.adaptive_max_pool2d(x, (4, 3), True)
    ones = np.ones_like(ref_values)
    assert_identical(results[0], ref_values)
    assert_identical(results[1], ref_indices)
    assert_identical(results[2], fastpool.adaptive_avg_pool2d(x, (4, 3)))
    assert_identical(results[3], fastpool.adaptive_max_pool2d_backward(ones, ref_indices, x.shape))
    assert_identical(results[4], fastpool.adaptive_avg_pool2d_backward(ones, x.shape))
    assert len(client.scheduler_info()["workers"]) == 2


def test_local_cluster_channels_last_3d(client, rng):
    x = rng.standard_normal((4, 5, 6, 7, 3))
    dx = da.from_array(x, chunks=(1, 5, 6, 7, 2))
    y = fastpool.adaptive_avg_pool3d(dx, 2, data_format="channels_last")
    assert_identical(
        client.compute(y, sync=True),
        fastpool.adaptive_avg_pool3d(x, 2, data_format="channels_last"),
    )
