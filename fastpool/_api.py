"""The twelve public pooling functions: validate, pick a backend, run it.

Each function is a thin wrapper: :mod:`fastpool._validate` checks every argument and builds a
plan before any kernel runs, :mod:`fastpool._backends` picks the backend, and the backend
computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backends
from . import _validate as v

ArrayLike = Any
OutputSize = int | None | tuple[int | None, ...]


def _is_dask(x) -> bool:
    return type(x) is not np.ndarray and (type(x).__module__ or "").startswith("dask.")


def _resolve(backend, x, name):
    """``(backend object, x as an array, shape, dtype)`` for an input of a call."""
    if type(x) is np.ndarray:  # the common case, in fewer steps (small calls feel each one)
        return _backends.resolve(backend), x, x.shape, x.dtype
    device = v.is_device_array(x)
    be = _backends.resolve(backend, device=device)
    if device and not be.accepts_device:
        raise TypeError(
            f"{name} lives on a GPU but backend {be.name!r} works on host arrays; "
            f"use backend='cuda' or copy {name} to the host"
        )
    if not device:
        x = v.as_host_array(x, name)
    return (be, x, *v.array_meta(x, name))


def _split_out(kind, out, return_indices):
    if kind == "max" and return_indices and out is not None:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "out must be a (values, indices) pair when return_indices=True; "
                f"got {type(out).__name__}"
            )
        return out[0], out[1]
    if isinstance(out, (tuple, list)):
        raise TypeError("out must be an array (a pair only when return_indices=True)")
    return out, None


def _forward(kind, dims, x, output_size, return_indices, backend, out, data_format):
    channels_last = v.check_data_format(data_format)
    if _is_dask(x):
        from . import _dask

        return _dask.forward(
            kind, dims, x, output_size, return_indices, backend, out, data_format
        )
    be, x, shape, dtype = _resolve(backend, x, "x")
    plan = v.forward_plan(shape, dtype, output_size, dims, channels_last)
    out_values, out_indices = _split_out(kind, out, return_indices)
    values, indices = be.forward(kind, x, plan, out_values, out_indices)
    return (values, indices) if return_indices else values


def _backward(kind, dims, grad_output, indices, input_shape, backend, out, data_format):
    channels_last = v.check_data_format(data_format)
    if kind == "max" and indices is None:
        raise TypeError("indices must be the int64 array returned by the max forward")
    if _is_dask(grad_output):
        from . import _dask

        return _dask.backward(
            kind, dims, grad_output, indices, input_shape, backend, out, data_format
        )
    be, grad_output, shape, dtype = _resolve(backend, grad_output, "grad_output")
    plan = v.backward_plan(shape, dtype, input_shape, dims, channels_last)
    if kind == "max":
        if type(indices) is not np.ndarray and not v.is_device_array(indices):
            indices = v.as_host_array(indices, "indices")  # (an ndarray is one already)
        v.check_indices_meta(indices, shape)
    return be.backward(kind, grad_output, indices, plan, out)


# ------------------------------------------------------------------------ average forward


def adaptive_avg_pool1d(
    x: ArrayLike,
    output_size: OutputSize,
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Adaptive average pooling over the last axis of ``(N, C, L)`` or ``(C, L)``.

    Output cell ``i`` is the mean of ``x[..., floor(i*L/Lo):ceil((i+1)*L/Lo)]``, exactly as
    :func:`torch.nn.functional.adaptive_avg_pool1d`.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, L)`` or unbatched ``(C, L)``; any strides. With
        ``data_format="channels_last"``: ``(N, L, C)`` or ``(L, C)``.
    output_size : int or (int | None,)
        ``Lo``; ``None`` keeps the input length. May exceed ``L`` or be 0.
    backend : str, optional
        ``"numpy"``, ``"numba"``, ``"cython"`` or ``"cuda"``; default: see :func:`get_backend`.
    out : ndarray, optional
        Array of the result's exact shape and dtype to write into.
    data_format : {"channels_first", "channels_last"}
        Where the channel axis is, for input and output.

    Returns
    -------
    ndarray
        ``(N, C, Lo)`` (or ``(C, Lo)``), the input's dtype; C-contiguous unless ``out`` is given.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> fastpool.adaptive_avg_pool1d(np.arange(5.0).reshape(1, 5), 2)
    array([[1., 3.]])
    """
    return _forward("avg", 1, x, output_size, False, backend, out, data_format)


def adaptive_avg_pool2d(
    x: ArrayLike,
    output_size: OutputSize,
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Adaptive average pooling over the last two axes of ``(N, C, H, W)`` or ``(C, H, W)``.

    The window of output cell ``(i, j)`` is the product of the per-axis adaptive windows, as
    in :func:`torch.nn.functional.adaptive_avg_pool2d`.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, H, W)`` or ``(C, H, W)``; any strides (channels-last views included).
        With ``data_format="channels_last"``: ``(N, H, W, C)`` or ``(H, W, C)``.
    output_size : int or (int | None, int | None)
        ``(Ho, Wo)``; an int applies to both axes, ``None`` keeps that axis's size.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d`.

    Returns
    -------
    ndarray
        ``(N, C, Ho, Wo)`` (or ``(C, Ho, Wo)``), the input's dtype.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.arange(16.0).reshape(1, 4, 4)
    >>> fastpool.adaptive_avg_pool2d(x, 2)
    array([[[ 2.5,  4.5],
            [10.5, 12.5]]])
    """
    return _forward("avg", 2, x, output_size, False, backend, out, data_format)


def adaptive_avg_pool3d(
    x: ArrayLike,
    output_size: OutputSize,
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Adaptive average pooling over the last three axes of ``(N, C, D, H, W)`` or ``(C, D, H, W)``.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``; any strides. With
        ``data_format="channels_last"``: ``(N, D, H, W, C)`` or ``(D, H, W, C)``.
    output_size : int or (int | None, int | None, int | None)
        ``(Do, Ho, Wo)``.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d`.

    Returns
    -------
    ndarray
        ``(N, C, Do, Ho, Wo)`` (or ``(C, Do, Ho, Wo)``), the input's dtype.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> fastpool.adaptive_avg_pool3d(x, 1)
    array([[[[3.5]]]])
    """
    return _forward("avg", 3, x, output_size, False, backend, out, data_format)


# ---------------------------------------------------------------------------- max forward


def adaptive_max_pool1d(
    x: ArrayLike,
    output_size: OutputSize,
    return_indices: bool = False,
    *,
    backend: str | None = None,
    out=None,
    data_format: str = "channels_first",
):
    """Adaptive max pooling over the last axis of ``(N, C, L)`` or ``(C, L)``.

    Ties go to the first element of the window; a NaN makes the result NaN (index: the last
    NaN); an all ``-inf`` window gives ``-inf`` at its first element.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, L)`` or ``(C, L)``; any strides.
    output_size : int or (int | None,)
        ``Lo``.
    return_indices : bool
        Also return the int64 argmax, as positions along ``L``.
    backend, data_format
        As in :func:`adaptive_avg_pool1d`.
    out : ndarray or (ndarray, ndarray), optional
        The values array, or a ``(values, indices)`` pair when ``return_indices`` is true.

    Returns
    -------
    values : ndarray
    indices : ndarray of int64, only when ``return_indices`` is true

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> fastpool.adaptive_max_pool1d(np.array([[3.0, 1.0, 4.0, 1.0, 5.0]]), 2, True)
    (array([[4., 5.]]), array([[2, 4]]))
    """
    return _forward("max", 1, x, output_size, return_indices, backend, out, data_format)


def adaptive_max_pool2d(
    x: ArrayLike,
    output_size: OutputSize,
    return_indices: bool = False,
    *,
    backend: str | None = None,
    out=None,
    data_format: str = "channels_first",
):
    """Adaptive max pooling over the last two axes of ``(N, C, H, W)`` or ``(C, H, W)``.

    Indices are flat positions ``h*W + w`` within each ``(n, c)`` plane, whatever the memory
    layout. Other rules as in :func:`adaptive_max_pool1d`.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, H, W)`` or ``(C, H, W)``; any strides.
    output_size : int or (int | None, int | None)
        ``(Ho, Wo)``.
    return_indices, backend, out, data_format
        As in :func:`adaptive_max_pool1d`.

    Returns
    -------
    values : ndarray
    indices : ndarray of int64, only when ``return_indices`` is true

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.array([[[1.0, 2.0], [4.0, 3.0]]])
    >>> fastpool.adaptive_max_pool2d(x, 1, return_indices=True)
    (array([[[4.]]]), array([[[2]]]))
    """
    return _forward("max", 2, x, output_size, return_indices, backend, out, data_format)


def adaptive_max_pool3d(
    x: ArrayLike,
    output_size: OutputSize,
    return_indices: bool = False,
    *,
    backend: str | None = None,
    out=None,
    data_format: str = "channels_first",
):
    """Adaptive max pooling over the last three axes of ``(N, C, D, H, W)`` or ``(C, D, H, W)``.

    Indices are flat positions ``d*H*W + h*W + w`` within each ``(n, c)`` volume. Other rules
    as in :func:`adaptive_max_pool1d`.

    Parameters
    ----------
    x : array, float16/float32/float64
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``; any strides.
    output_size : int or (int | None, int | None, int | None)
        ``(Do, Ho, Wo)``.
    return_indices, backend, out, data_format
        As in :func:`adaptive_max_pool1d`.

    Returns
    -------
    values : ndarray
    indices : ndarray of int64, only when ``return_indices`` is true

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> fastpool.adaptive_max_pool3d(x, 1, return_indices=True)
    (array([[[[7.]]]]), array([[[[7]]]]))
    """
    return _forward("max", 3, x, output_size, return_indices, backend, out, data_format)


# ------------------------------------------------------------------------------ backward


def adaptive_avg_pool1d_backward(
    grad_output: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_avg_pool1d` with respect to its input.

    ``grad_input[x]`` is the sum, over the windows ``w`` containing ``x``, of
    ``grad_output[w] / size(w)``. Deterministic: bit-identical on every run and thread count.

    Parameters
    ----------
    grad_output : array, float16/float32/float64
        Gradient of the forward's output, shaped like it.
    input_shape : tuple of int
        The forward input's full shape.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d`; ``out`` is shaped like the input.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``, dtype of ``grad_output``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> fastpool.adaptive_avg_pool1d_backward(np.ones((1, 2)), (1, 4))
    array([[0.5, 0.5, 0.5, 0.5]])
    """
    return _backward("avg", 1, grad_output, None, input_shape, backend, out, data_format)


def adaptive_avg_pool2d_backward(
    grad_output: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array
        ``(N, C, Ho, Wo)`` or ``(C, Ho, Wo)``.
    input_shape : tuple of int
        The forward input's full shape.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d_backward`.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> fastpool.adaptive_avg_pool2d_backward(np.ones((1, 1, 1)), (1, 2, 2))
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    """
    return _backward("avg", 2, grad_output, None, input_shape, backend, out, data_format)


def adaptive_avg_pool3d_backward(
    grad_output: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_avg_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output : array
        ``(N, C, Do, Ho, Wo)`` or ``(C, Do, Ho, Wo)``.
    input_shape : tuple of int
        The forward input's full shape.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d_backward`.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> g = fastpool.adaptive_avg_pool3d_backward(np.full((1, 1, 1, 1), 8.0), (1, 2, 2, 2))
    >>> g.ravel()
    array([1., 1., 1., 1., 1., 1., 1., 1.])
    """
    return _backward("avg", 3, grad_output, None, input_shape, backend, out, data_format)


def adaptive_max_pool1d_backward(
    grad_output: ArrayLike,
    indices: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_max_pool1d` with respect to its input.

    ``grad_input.plane[indices[o]] += grad_output[o]`` for every output cell ``o`` (indices
    may repeat, and may lie anywhere in the plane, as in PyTorch). Indices outside
    ``[0, L)`` or shaped unlike ``grad_output`` raise ``ValueError``; nothing is written
    out of bounds, and ``out=`` is left as it was.

    Parameters
    ----------
    grad_output : array
        Gradient of the forward's values.
    indices : array of int64
        The forward's indices.
    input_shape : tuple of int
        The forward input's full shape.
    backend, out, data_format
        As in :func:`adaptive_avg_pool1d_backward`.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.array([[3.0, 1.0, 4.0, 1.0, 5.0]])
    >>> y, idx = fastpool.adaptive_max_pool1d(x, 2, return_indices=True)
    >>> fastpool.adaptive_max_pool1d_backward(np.ones_like(y), idx, x.shape)
    array([[0., 0., 1., 0., 1.]])
    """
    return _backward("max", 1, grad_output, indices, input_shape, backend, out, data_format)


def adaptive_max_pool2d_backward(
    grad_output: ArrayLike,
    indices: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output, indices, input_shape, backend, out, data_format
        As in :func:`adaptive_max_pool1d_backward`; indices are ``h*W + w``.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.array([[[1.0, 2.0], [4.0, 3.0]]])
    >>> y, idx = fastpool.adaptive_max_pool2d(x, 1, return_indices=True)
    >>> fastpool.adaptive_max_pool2d_backward(np.ones_like(y), idx, x.shape)
    array([[[0., 0.],
            [1., 0.]]])
    """
    return _backward("max", 2, grad_output, indices, input_shape, backend, out, data_format)


def adaptive_max_pool3d_backward(
    grad_output: ArrayLike,
    indices: ArrayLike,
    input_shape: tuple[int, ...],
    *,
    backend: str | None = None,
    out: np.ndarray | None = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gradient of :func:`adaptive_max_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output, indices, input_shape, backend, out, data_format
        As in :func:`adaptive_max_pool1d_backward`; indices are ``d*H*W + h*W + w``.

    Returns
    -------
    ndarray
        ``grad_input``, shaped ``input_shape``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> y, idx = fastpool.adaptive_max_pool3d(x, 1, return_indices=True)
    >>> fastpool.adaptive_max_pool3d_backward(np.ones_like(y), idx, x.shape).ravel()
    array([0., 0., 0., 0., 0., 0., 0., 1.])
    """
    return _backward("max", 3, grad_output, indices, input_shape, backend, out, data_format)
