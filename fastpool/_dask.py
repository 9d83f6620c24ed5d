"""Dask arrays in, lazy dask arrays out: the public functions, one task per chunk.

Adaptive pooling is independent per (n, c) plane, so a chunk that holds whole planes is pooled
on its own: the graph is one ``blockwise`` task per chunk that calls the in-memory function
on it. The batch and channel axes keep the caller's chunks; the spatial axes must each be one
chunk (a window can straddle any boundary), so they are merged when they are not. Everything
that can be checked without data (shapes, dtypes, output sizes, the backend, the shape of the
indices) is checked here, when the graph is built; what needs the data (index bounds of a
lazy ``indices``) is checked when each chunk is computed.

Imported only when a dask array reaches a public function: ``import fastpool`` does not import
dask. Install dask and distributed (fastpool's ``dask`` extra: ``pip install '.[dask]'`` in its
source tree).
"""

from __future__ import annotations

import functools
import math
import operator

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.utils import parse_bytes

from . import _api, _backends
from . import _validate as v


def _fn(kind: str, dims: int, backward: bool = False):
    return getattr(_api, f"adaptive_{kind}_pool{dims}d" + ("_backward" if backward else ""))


def _like(result, block):
    """Chunks of CuPy arrays give CuPy chunks back (the cuda backend returns numba device
    arrays, which CuPy wraps without a copy), so the dask array's meta stays true."""
    if not (type(block).__module__ or "").startswith("cupy"):
        return result
    import cupy

    if isinstance(result, tuple):
        return tuple(cupy.asarray(r) for r in result)
    return cupy.asarray(result)


def _forward_block(block, *, kind, dims, output_size, with_indices, backend, data_format):
    fn = _fn(kind, dims)
    if kind == "max":
        result = fn(block, output_size, with_indices, backend=backend, data_format=data_format)
    else:
        result = fn(block, output_size, backend=backend, data_format=data_format)
    return _like(result, block)


def _backward_block(grad, indices=None, *, kind, dims, spatial, in_spatial, backend, data_format):
    # This chunk's input shape: the gradient chunk's batch/channel sizes, the whole input plane.
    shape = list(grad.shape)
    for axis, size in zip(spatial, in_spatial, strict=True):
        shape[axis] = size
    fn = _fn(kind, dims, backward=True)
    if kind == "max":
        result = fn(grad, indices, tuple(shape), backend=backend, data_format=data_format)
    else:
        result = fn(grad, tuple(shape), backend=backend, data_format=data_format)
    return _like(result, grad)


# ---------------------------------------------------------------------------- helpers


def _reject_out(out) -> None:
    if out is not None:
        raise TypeError(
            "out= is not supported with dask arrays: the result is a lazy dask array with no "
            "memory of its own; compute it into your array instead, e.g. "
            "`dask.array.store(result, target)`"
        )


def _check_known_shape(a, name: str) -> None:
    if any(isinstance(s, float) and math.isnan(s) for s in a.shape):
        raise ValueError(
            f"{name} must have known chunk sizes; got shape {a.shape} "
            f"(call {name}.compute_chunk_sizes() first)"
        )


def _spatial_axes(ndim: int, dims: int, channels_last: bool) -> tuple[int, ...]:
    """Positions of the spatial axes in a user-facing array of ``ndim`` axes."""
    last = ndim - 1 if channels_last else ndim
    return tuple(range(last - dims, last))


def _whole_spatial(a, spatial: tuple[int, ...]):
    """``a`` with every spatial axis in one chunk, keeping the batch/channel chunks if it can.

    If merging the spatial axes would make chunks larger than dask's ``array.chunk-size``, the
    batch/channel axes are rechunked with ``"auto"`` so the chunks stay near that size.
    """
    if all(a.numblocks[axis] == 1 for axis in spatial):
        return a
    target: dict[int, int | str] = {axis: -1 for axis in spatial}
    plane_bytes = math.prod(a.shape[axis] for axis in spatial) * a.dtype.itemsize
    others = [axis for axis in range(a.ndim) if axis not in spatial]
    chunk_bytes = plane_bytes * math.prod(max(a.chunks[axis], default=0) for axis in others)
    if chunk_bytes > parse_bytes(dask.config.get("array.chunk-size")):
        target.update({axis: "auto" for axis in others})
    return a.rechunk(target)


def _backend_name(backend, a) -> str:
    """Resolve the backend now, in the caller's context (``use_backend`` does not reach the
    threads or processes that compute the chunks); tasks then name it explicitly."""
    device = v.is_device_array(getattr(a, "_meta", None))
    return _backends.resolve(backend, device=device).name


def _token(kind: str, dims: int, backward: bool = False) -> str:
    return f"adaptive_{kind}_pool{dims}d" + ("_backward" if backward else "")


# ---------------------------------------------------------------------------- entry points


def forward(kind, dims, x, output_size, return_indices, backend, out, data_format):
    """The dask version of a forward public function (called by ``_api._forward``)."""
    _reject_out(out)
    channels_last = v.check_data_format(data_format)
    _check_known_shape(x, "x")
    v.reject_masked(x, "x")
    plan = v.forward_plan(x.shape, x.dtype, output_size, dims, channels_last)
    name = _backend_name(backend, x)
    spatial = _spatial_axes(x.ndim, dims, channels_last)
    osize = tuple(plan.out_shape[axis] for axis in spatial)
    x = _whole_spatial(x, spatial)

    ind = tuple(range(x.ndim))
    with_indices = kind == "max" and return_indices
    block = functools.partial(
        _forward_block,
        kind=kind,
        dims=dims,
        output_size=osize,
        with_indices=with_indices,
        backend=name,
        data_format=data_format,
    )
    meta_values = meta_from_array(x, ndim=x.ndim, dtype=plan.dtype)
    common = {"adjust_chunks": dict(zip(spatial, osize, strict=True)), "token": _token(kind, dims)}
    if not with_indices:
        return da.blockwise(block, ind, x, ind, meta=meta_values, **common)

    # One task computes both outputs of a chunk and two cheap getitem layers split the pair:
    # values and indices computed in one dask.compute() (or a lazy backward fed with both) run
    # the kernel once per chunk. Separate compute() calls run it again: persist() them first.
    meta_indices = meta_from_array(x, ndim=x.ndim, dtype=np.int64)
    pairs = da.blockwise(block, ind, x, ind, meta=(meta_values, meta_indices), **common)
    values = da.blockwise(
        operator.getitem,
        ind,
        pairs,
        ind,
        0,
        None,
        meta=meta_values,
        token=common["token"] + "-values",
    )
    indices = da.blockwise(
        operator.getitem,
        ind,
        pairs,
        ind,
        1,
        None,
        meta=meta_indices,
        token=common["token"] + "-indices",
    )
    return values, indices


def backward(kind, dims, grad_output, indices, input_shape, backend, out, data_format):
    """The dask version of a backward public function (called by ``_api._backward``)."""
    _reject_out(out)
    channels_last = v.check_data_format(data_format)
    _check_known_shape(grad_output, "grad_output")
    v.reject_masked(grad_output, "grad_output")
    v.reject_masked(indices, "indices")
    plan = v.backward_plan(grad_output.shape, grad_output.dtype, input_shape, dims, channels_last)
    name = _backend_name(backend, grad_output)
    spatial = _spatial_axes(grad_output.ndim, dims, channels_last)
    in_spatial = tuple(plan.in_shape[axis] for axis in spatial)
    grad_output = _whole_spatial(grad_output, spatial)

    ind = tuple(range(grad_output.ndim))
    args = [grad_output, ind]
    if kind == "max":
        args += [_aligned_indices(indices, grad_output, plan), ind]
    block = functools.partial(
        _backward_block,
        kind=kind,
        dims=dims,
        spatial=spatial,
        in_spatial=in_spatial,
        backend=name,
        data_format=data_format,
    )
    return da.blockwise(
        block,
        ind,
        *args,
        adjust_chunks=dict(zip(spatial, in_spatial, strict=True)),
        meta=meta_from_array(grad_output, ndim=grad_output.ndim, dtype=plan.dtype),
        token=_token(kind, dims, backward=True),
    )


def _aligned_indices(indices, grad_output, plan):
    """``indices`` as a dask array chunked like ``grad_output`` (checked as far as possible now)."""
    if not isinstance(indices, da.Array):
        if not v.is_device_array(indices):
            indices = v.as_host_array(indices, "indices")
        v.check_indices_meta(indices, grad_output.shape)
        if isinstance(indices, np.ndarray):  # in memory: check the bounds before any task runs
            v.check_index_bounds(indices, plan.plane)
        return da.from_array(indices, chunks=grad_output.chunks)
    _check_known_shape(indices, "indices")
    v.check_indices_meta(indices, grad_output.shape)
    return indices.rechunk(grad_output.chunks)
