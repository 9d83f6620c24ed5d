"""Layer objects for NumPy-only models: ``torch.nn.AdaptiveAvgPool2d`` and friends, by hand.

A layer is the functional API plus memory: calling it runs the forward and keeps what the
backward needs (the input's shape; for max pooling, the argmax indices), and
:meth:`backward` turns the gradient of the output into the gradient of the input::

    pool = fastpool.AdaptiveAvgPool2d((4, 4))
    y = pool(x)                    # forward
    grad_x = pool.backward(grad_y) # after computing grad_y = dLoss/dy

A layer keeps the state of its latest forward only: give each place in a model its own layer
object, and do not share one object between threads that run at the same time.
"""

from __future__ import annotations

from typing import Any

from . import _api, _backends
from . import _validate as v

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
]


class _AdaptivePool:
    """Shared machinery; subclasses set ``_kind`` ("avg"/"max") and ``_dims`` (1/2/3)."""

    _kind: str
    _dims: int

    def __init__(
        self, output_size, *, backend: str | None = None, data_format: str = "channels_first"
    ) -> None:
        # Reject a malformed output_size, data_format or backend name now rather than at the
        # first call (whether a named backend is usable is the first call's question: that
        # loads it).
        v.normalize_output_size(output_size, self._dims, (1,) * self._dims)
        v.check_data_format(data_format)
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name or None; got {backend!r}")
        if backend is not None:
            _backends.check_known(backend)
        self.output_size = output_size
        self.backend = backend
        self.data_format = data_format
        self._input_shape: tuple[int, ...] | None = None
        self._output_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ helpers

    def _forward_fn(self):
        return getattr(_api, f"adaptive_{self._kind}_pool{self._dims}d")

    def _backward_fn(self):
        return getattr(_api, f"adaptive_{self._kind}_pool{self._dims}d_backward")

    def _check_grad(self, grad_output) -> None:
        name = type(self).__name__
        if self._input_shape is None:
            raise RuntimeError(
                f"{name}.backward() was called before a forward: call the layer on an input "
                "first, then backward() with the gradient of its output"
            )
        shape = getattr(grad_output, "shape", None)
        if shape is not None and tuple(shape) != self._output_shape:
            raise ValueError(
                f"grad_output must have the shape of {name}'s latest output "
                f"{self._output_shape}; got shape {tuple(shape)}"
            )

    def _remember(self, x, y) -> None:
        self._input_shape = tuple(int(s) for s in x.shape)
        self._output_shape = tuple(int(s) for s in y.shape)

    # ------------------------------------------------------------------ repr

    def extra_repr(self) -> str:
        """The constructor arguments, as ``torch.nn.Module.extra_repr`` shows them."""
        parts = [f"output_size={self.output_size!r}"]
        if self.backend is not None:
            parts.append(f"backend={self.backend!r}")
        if self.data_format != "channels_first":
            parts.append(f"data_format={self.data_format!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class _AdaptiveAvgPool(_AdaptivePool):
    _kind = "avg"

    def __call__(self, x):
        """Forward: the adaptive average pool of ``x`` (remembers ``x.shape`` for backward)."""
        if not hasattr(x, "shape"):
            x = v.as_host_array(x, "x")
        y = self._forward_fn()(
            x, self.output_size, backend=self.backend, data_format=self.data_format
        )
        self._remember(x, y)
        return y

    forward = __call__

    def backward(self, grad_output):
        """Gradient of the latest forward's input, given ``grad_output`` shaped like its output."""
        self._check_grad(grad_output)
        return self._backward_fn()(
            grad_output, self._input_shape, backend=self.backend, data_format=self.data_format
        )


class _AdaptiveMaxPool(_AdaptivePool):
    _kind = "max"

    def __init__(
        self,
        output_size,
        return_indices: bool = False,
        *,
        backend: str | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__(output_size, backend=backend, data_format=data_format)
        self.return_indices = bool(return_indices)
        self._indices: Any = None

    def __call__(self, x):
        """Forward: the adaptive max pool of ``x``; ``(values, indices)`` if ``return_indices``.

        The indices are kept for :meth:`backward` either way.
        """
        if not hasattr(x, "shape"):
            x = v.as_host_array(x, "x")
        y, indices = self._forward_fn()(
            x, self.output_size, True, backend=self.backend, data_format=self.data_format
        )
        self._remember(x, y)
        self._indices = indices
        return (y, indices) if self.return_indices else y

    forward = __call__

    def backward(self, grad_output):
        """Gradient of the latest forward's input: ``grad_output`` routed to the argmax cells."""
        self._check_grad(grad_output)
        return self._backward_fn()(
            grad_output,
            self._indices,
            self._input_shape,
            backend=self.backend,
            data_format=self.data_format,
        )


# --------------------------------------------------------------------------- the layers


class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Adaptive average pooling over L, as ``torch.nn.AdaptiveAvgPool1d``.

    Takes ``(N, C, L)`` or unbatched ``(C, L)`` arrays (channels first).

    Parameters
    ----------
    output_size : int or (int | None,)
        ``Lo``, as in :func:`fastpool.adaptive_avg_pool1d`.
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, L, C)`` / ``(L, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveAvgPool1d(2)
    >>> pool
    AdaptiveAvgPool1d(output_size=2)
    >>> pool(np.array([[1.0, 2.0, 3.0, 4.0]]))
    array([[1.5, 3.5]])
    >>> pool.backward(np.array([[1.0, 2.0]]))
    array([[0.5, 0.5, 1. , 1. ]])
    """

    _dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Adaptive average pooling over H and W, as ``torch.nn.AdaptiveAvgPool2d``.

    Takes ``(N, C, H, W)`` or unbatched ``(C, H, W)`` arrays (channels first).

    Parameters
    ----------
    output_size : int or (int | None, int | None)
        ``(Ho, Wo)``, as in :func:`fastpool.adaptive_avg_pool2d`.
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, H, W, C)`` / ``(H, W, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveAvgPool2d((2, 3))
    >>> pool
    AdaptiveAvgPool2d(output_size=(2, 3))
    >>> x = np.ones((4, 3, 8, 9))
    >>> y = pool(x)
    >>> y.shape
    (4, 3, 2, 3)
    >>> pool.backward(np.ones_like(y)).shape
    (4, 3, 8, 9)
    """

    _dims = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPool):
    """Adaptive average pooling over D, H and W, as ``torch.nn.AdaptiveAvgPool3d``.

    Takes ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` arrays (channels first).

    Parameters
    ----------
    output_size : int or (int | None, int | None, int | None)
        ``(Do, Ho, Wo)``, as in :func:`fastpool.adaptive_avg_pool3d`.
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, D, H, W, C)`` / ``(D, H, W, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveAvgPool3d((1, None, 2), data_format="channels_last")
    >>> pool
    AdaptiveAvgPool3d(output_size=(1, None, 2), data_format='channels_last')
    >>> pool(np.ones((2, 4, 5, 6, 3))).shape
    (2, 1, 5, 2, 3)
    """

    _dims = 3


class AdaptiveMaxPool1d(_AdaptiveMaxPool):
    """Adaptive max pooling over L, as ``torch.nn.AdaptiveMaxPool1d``.

    Takes ``(N, C, L)`` or unbatched ``(C, L)`` arrays (channels first).

    Calling the layer returns the values, or ``(values, indices)`` when ``return_indices`` is
    true; the indices are kept for :meth:`backward` either way.

    Parameters
    ----------
    output_size : int or (int | None,)
        ``Lo``, as in :func:`fastpool.adaptive_max_pool1d`.
    return_indices : bool
        Also return the int64 argmax (positions along ``L``).
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, L, C)`` / ``(L, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveMaxPool1d(2)
    >>> pool
    AdaptiveMaxPool1d(output_size=2)
    >>> pool(np.array([[3.0, 1.0, 4.0, 1.0, 5.0]]))
    array([[4., 5.]])
    >>> pool.backward(np.array([[10.0, 20.0]]))
    array([[ 0.,  0., 10.,  0., 20.]])
    """

    _dims = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPool):
    """Adaptive max pooling over H and W, as ``torch.nn.AdaptiveMaxPool2d``.

    Takes ``(N, C, H, W)`` or unbatched ``(C, H, W)`` arrays (channels first).

    Calling the layer returns the values, or ``(values, indices)`` when ``return_indices`` is
    true; the indices (flat ``h*W + w`` per (n, c) plane) are kept for :meth:`backward` either
    way.

    Parameters
    ----------
    output_size : int or (int | None, int | None)
        ``(Ho, Wo)``, as in :func:`fastpool.adaptive_max_pool2d`.
    return_indices : bool
        Also return the int64 argmax.
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, H, W, C)`` / ``(H, W, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveMaxPool2d(1, return_indices=True)
    >>> pool
    AdaptiveMaxPool2d(output_size=1)
    >>> x = np.array([[[1.0, 2.0], [4.0, 3.0]]])
    >>> pool(x)
    (array([[[4.]]]), array([[[2]]]))
    >>> pool.backward(np.ones((1, 1, 1)))
    array([[[0., 0.],
            [1., 0.]]])
    """

    _dims = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPool):
    """Adaptive max pooling over D, H and W, as ``torch.nn.AdaptiveMaxPool3d``.

    Takes ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` arrays (channels first).

    Calling the layer returns the values, or ``(values, indices)`` when ``return_indices`` is
    true; the indices (flat ``d*H*W + h*W + w`` per (n, c) volume) are kept for
    :meth:`backward` either way.

    Parameters
    ----------
    output_size : int or (int | None, int | None, int | None)
        ``(Do, Ho, Wo)``, as in :func:`fastpool.adaptive_max_pool3d`.
    return_indices : bool
        Also return the int64 argmax.
    backend : str, optional
        Backend for both passes (default: automatic, see :func:`fastpool.get_backend`).
    data_format : {"channels_first", "channels_last"}
        ``"channels_last"`` takes and returns ``(N, D, H, W, C)`` / ``(D, H, W, C)``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> pool = fastpool.AdaptiveMaxPool3d(1)
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> pool(x)
    array([[[[7.]]]])
    >>> pool.backward(np.ones((1, 1, 1, 1))).ravel()
    array([0., 0., 0., 0., 0., 0., 0., 1.])
    """

    _dims = 3
