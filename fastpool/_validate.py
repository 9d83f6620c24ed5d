"""The one validation layer every backend shares.

Public functions call :func:`forward_plan` / :func:`backward_plan` before any kernel runs. A
:class:`Plan` holds the normalised shapes; kernels then only see 5-D arrays ``(N, C, D, H, W)``
(1d and 2d get size-1 spatial axes), so each backend has one kernel per operation.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
DATA_FORMATS = ("channels_first", "channels_last")
_SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


@dataclass(frozen=True, slots=True)
class Plan:
    """Normalised description of one call.

    ``in_shape``/``out_shape`` are the user-facing shapes (batched or not, channels first or
    last); ``in5``/``out5`` are the canonical ``(N, C, D, H, W)`` shapes the kernels see.
    """

    dims: int
    batched: bool
    channels_last: bool
    dtype: np.dtype
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in5: tuple[int, int, int, int, int]
    out5: tuple[int, int, int, int, int]

    @property
    def empty(self) -> bool:
        """True when there is nothing to compute (N == 0 or an output size of 0)."""
        return 0 in self.out5

    @property
    def plane(self) -> int:
        """Number of elements in one input plane/volume: the bound for max indices."""
        return self.in5[2] * self.in5[3] * self.in5[4]

    def view5(self, a):
        """View a user-facing host array (input- or output-shaped) as ``(N, C, D, H, W)``."""
        if not self.batched:
            a = a[np.newaxis]
        if self.channels_last:
            a = a.transpose(_LAST_TO_FIRST[self.dims])
        return a[_PAD_SPATIAL[self.dims]]


#: axis orders taking (N, *spatial, C) to (N, C, *spatial), and the index adding size-1
#: spatial axes in front of the real ones, per number of spatial dims
_LAST_TO_FIRST = {d: (0, d + 1) + tuple(range(1, d + 1)) for d in (1, 2, 3)}
_PAD_SPATIAL = {d: (slice(None), slice(None)) + (np.newaxis,) * (3 - d) for d in (1, 2, 3)}


# ---------------------------------------------------------------------------- helpers


def is_device_array(x) -> bool:
    """True for arrays living on a GPU (CUDA array interface, or a numba device array)."""
    if type(x) is np.ndarray:  # the common case, answered without attribute lookups
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    mod = type(x).__module__ or ""
    return mod.startswith("numba") and hasattr(x, "copy_to_host")


def array_meta(x, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a host or device array, without copying it."""
    if isinstance(x, np.ndarray):
        return x.shape, x.dtype
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(int(s) for s in cai["shape"]), np.dtype(cai["typestr"])
    try:
        return tuple(int(s) for s in x.shape), np.dtype(x.dtype)
    except (AttributeError, TypeError) as exc:  # pragma: no cover - defensive
        raise TypeError(f"{name} must be an array; got {type(x).__name__}") from exc


def as_host_array(x, name: str) -> np.ndarray:
    """Turn ``x`` into an ndarray (no copy for ndarrays), rejecting what cannot be one."""
    reject_masked(x, name)
    if isinstance(x, np.ndarray):
        return x
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array; got {type(x).__name__}")
    try:
        return np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be an array; got {type(x).__name__}: {exc}") from exc


def reject_masked(a, name: str, *, output: bool = False) -> None:
    """A masked array's mask would be ignored (every element used), so it is refused; ``a``
    may also be a dask array of masked chunks (its ``_meta`` says so)."""
    if isinstance(a, np.ma.MaskedArray) or isinstance(
        getattr(a, "_meta", None), np.ma.MaskedArray
    ):
        if output:
            advice = "pass a plain ndarray (a masked array's .data is written in place)"
        else:
            advice = (
                "pass a plain ndarray: its .data, or .filled(value) to choose what the masked "
                "elements hold"
            )
        raise TypeError(f"{name} is a masked array, whose mask fastpool would ignore; {advice}")


def check_dtype(dtype: np.dtype, name: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must have dtype float16, float32 or float64 (native byte order); "
            f"got {dtype}"
        )
    return dtype


def check_data_format(data_format: str) -> bool:
    """Return True for channels-last."""
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be 'channels_first' or 'channels_last'; got {data_format!r}"
        )
    return data_format == "channels_last"


def _describe_layout(dims: int, batched: bool, channels_last: bool) -> str:
    axes = list(_SPATIAL_NAMES[dims])
    axes = axes + ["C"] if channels_last else ["C"] + axes
    if batched:
        axes = ["N"] + axes
    return "(" + ", ".join(axes) + ")"


def _expected_ndims(dims: int, channels_last: bool) -> str:
    return (
        f"{_describe_layout(dims, False, channels_last)} or "
        f"{_describe_layout(dims, True, channels_last)}"
    )


def normalize_output_size(output_size, dims: int, in_spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve ``output_size`` to a tuple of ``dims`` non-negative ints (None -> input size)."""
    if type(output_size) is int and output_size >= 0:  # the common case, checked cheaply
        return (output_size,) * dims
    if type(output_size) is np.ndarray and output_size.ndim == 1:
        output_size = tuple(output_size.tolist())  # e.g. a shape computed with numpy
    if isinstance(output_size, (list, tuple)):
        entries = tuple(output_size)
        if len(entries) != dims:
            raise ValueError(
                f"output_size must be an int or a tuple of {dims} entries for "
                f"{dims}d pooling; got {output_size!r} ({len(entries)} entries)"
            )
    elif output_size is None:
        entries = (None,) * dims
    else:
        entries = (output_size,) * dims
    result = []
    for entry, size in zip(entries, in_spatial, strict=True):
        if entry is None:
            result.append(int(size))
            continue
        if isinstance(entry, (bool, np.bool_)) or not _is_integer(entry):
            raise TypeError(
                f"output_size entries must be non-negative ints or None; got {entry!r} "
                f"({type(entry).__name__}) in {output_size!r}"
            )
        value = operator.index(entry)
        if value < 0:
            raise ValueError(
                f"output_size entries must be non-negative; got {value} in {output_size!r}"
            )
        result.append(value)
    return tuple(result)


def _is_integer(v) -> bool:
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _split_shape(shape, dims, channels_last, name):
    ndim = len(shape)
    if ndim not in (dims + 1, dims + 2):
        expected = _expected_ndims(dims, channels_last)
        raise ValueError(f"{name} must be {expected} for {dims}d pooling; got shape {shape}")
    batched = ndim == dims + 2
    n = shape[0] if batched else 1
    rest = shape[1:] if batched else shape
    if channels_last:
        c, spatial = rest[-1], tuple(rest[:-1])
    else:
        c, spatial = rest[0], tuple(rest[1:])
    return batched, n, c, spatial


def _check_nonempty(shape, c, spatial, name, dims, batched, channels_last):
    if c == 0 or 0 in spatial:
        raise ValueError(
            f"{name} must have non-empty channel and spatial axes "
            f"{_describe_layout(dims, batched, channels_last)} (only N may be 0); got shape {shape}"
        )


def _pad3(spatial: tuple[int, ...]) -> tuple[int, int, int]:
    return (1,) * (3 - len(spatial)) + tuple(spatial)


def _user_shape(n, c, spatial, batched, channels_last):
    body = tuple(spatial) + (c,) if channels_last else (c,) + tuple(spatial)
    return ((n,) if batched else ()) + body


# ---------------------------------------------------------------------------- plans


def _plain_ints(t) -> bool:
    """An int, or a tuple of ints (not bools, not numpy integers): safe as a cache key."""
    return type(t) is int or (type(t) is tuple and set(map(type, t)) <= _INT_TYPE)


_INT_TYPE = {int}


def _check_size(shape, dtype, name: str, given) -> None:
    """A result of ``shape`` must be one an array can hold (NumPy's own error would not say
    which argument asked for it); whether memory allows it is the allocation's question."""
    elements = math.prod(shape)
    if elements * max(dtype.itemsize, 8) > np.iinfo(np.intp).max:  # (max indices: int64)
        raise ValueError(
            f"{name} {given!r} asks for a result of {elements} elements, more than an array "
            "can hold"
        )


def forward_plan(x_shape, x_dtype, output_size, dims: int, channels_last: bool) -> Plan:
    """Validate a forward call's input and output size; return its plan.

    Plans of plain int arguments are cached: building one costs a few microseconds, as much
    as pooling a small input. A bad call raises every time (exceptions are not cached)."""
    if _plain_ints(output_size) and type(x_shape) is tuple:
        return _cached_forward_plan(x_shape, x_dtype, output_size, dims, channels_last)
    return _forward_plan(x_shape, x_dtype, output_size, dims, channels_last)


def _forward_plan(x_shape, x_dtype, output_size, dims: int, channels_last: bool) -> Plan:
    dtype = check_dtype(x_dtype, "x")
    batched, n, c, spatial = _split_shape(tuple(x_shape), dims, channels_last, "x")
    _check_nonempty(tuple(x_shape), c, spatial, "x", dims, batched, channels_last)
    osize = normalize_output_size(output_size, dims, spatial)
    _check_size((n, c) + osize, dtype, "output_size", output_size)
    return Plan(
        dims=dims,
        batched=batched,
        channels_last=channels_last,
        dtype=dtype,
        in_shape=tuple(x_shape),
        out_shape=_user_shape(n, c, osize, batched, channels_last),
        in5=(n, c) + _pad3(spatial),
        out5=(n, c) + _pad3(osize),
    )


def normalize_input_shape(input_shape, dims: int) -> tuple[int, ...]:
    if type(input_shape) is tuple and all(type(e) is int and e >= 0 for e in input_shape):
        return input_shape  # the common case (``x.shape``), checked cheaply
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise TypeError(
            f"input_shape must be a tuple of ints (the forward input's shape); "
            f"got {input_shape!r}"
        )
    entries = tuple(input_shape)
    out = []
    for entry in entries:
        if isinstance(entry, (bool, np.bool_)) or not _is_integer(entry):
            raise TypeError(f"input_shape must contain ints; got {input_shape!r}")
        value = operator.index(entry)
        if value < 0:
            raise ValueError(f"input_shape must contain non-negative ints; got {input_shape!r}")
        out.append(value)
    return tuple(out)


def backward_plan(grad_shape, grad_dtype, input_shape, dims: int, channels_last: bool) -> Plan:
    """Validate a backward call's ``grad_output`` against ``input_shape``; return its plan
    (cached as :func:`forward_plan`'s)."""
    if _plain_ints(input_shape) and type(input_shape) is tuple and type(grad_shape) is tuple:
        return _cached_backward_plan(grad_shape, grad_dtype, input_shape, dims, channels_last)
    return _backward_plan(grad_shape, grad_dtype, input_shape, dims, channels_last)


def _backward_plan(grad_shape, grad_dtype, input_shape, dims: int, channels_last: bool) -> Plan:
    dtype = check_dtype(grad_dtype, "grad_output")
    input_shape = normalize_input_shape(input_shape, dims)
    grad_shape = tuple(grad_shape)
    batched, n, c, spatial = _split_shape(input_shape, dims, channels_last, "input_shape")
    _check_nonempty(input_shape, c, spatial, "input_shape", dims, batched, channels_last)
    _check_size(input_shape, dtype, "input_shape", input_shape)
    if len(grad_shape) != len(input_shape):
        raise ValueError(
            f"grad_output must have as many axes as input_shape {input_shape} "
            f"({len(input_shape)}); got shape {grad_shape}"
        )
    g_batched, gn, gc, gspatial = _split_shape(grad_shape, dims, channels_last, "grad_output")
    if (gn, gc) != (n, c):
        raise ValueError(
            f"grad_output must have the batch and channel sizes of input_shape {input_shape} "
            f"(N={n}, C={c}); got shape {grad_shape}"
        )
    return Plan(
        dims=dims,
        batched=batched,
        channels_last=channels_last,
        dtype=dtype,
        in_shape=input_shape,
        out_shape=grad_shape,
        in5=(n, c) + _pad3(spatial),
        out5=(n, c) + _pad3(gspatial),
    )


def check_indices_meta(indices, grad_shape, name: str = "indices") -> None:
    """Shape and dtype checks for max-backward indices (bounds are checked separately)."""
    shape, dtype = array_meta(indices, name)
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int64); got dtype {dtype}")
    if shape != tuple(grad_shape):
        raise ValueError(
            f"{name} must have the shape of grad_output {tuple(grad_shape)}; got shape {shape}"
        )


def check_index_bounds(indices: np.ndarray, plane: int, name: str = "indices") -> None:
    """Every index must address the input plane: ``0 <= index < plane``."""
    if indices.size == 0:
        return
    dtype = indices.dtype
    if dtype.kind == "i" and dtype.isnative and plane <= 2 ** (8 * dtype.itemsize - 1):
        # One pass instead of min() and max(): as unsigned, a negative index is at least
        # 2**(bits - 1), so at least the plane size (which is why the plane may be no
        # larger; and the view keeps the bytes' order, so the order must be native).
        unsigned = indices.view(np.dtype(f"u{dtype.itemsize}"))
        if int(unsigned.max()) < plane:
            return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= plane:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} must lie in [0, {plane}) (flat positions in the input plane); "
            f"found {bad}"
        )


def check_out(out, shape, dtype, name: str = "out") -> np.ndarray:
    """``out=`` must be a writeable ndarray of exactly ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(out).__name__}")
    reject_masked(out, name, output=True)
    if out.shape != tuple(shape) or out.dtype != np.dtype(dtype):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def check_no_overlap(outputs, inputs) -> None:
    """Outputs may not share memory with inputs or with each other."""
    outs = [(n, a) for n, a in outputs if a is not None]
    for i, (name, a) in enumerate(outs):
        for other, b in list(inputs) + outs[i + 1 :]:
            if isinstance(b, np.ndarray) and _overlap(a, b):
                raise ValueError(f"{name} must not share memory with {other}")


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` have an element in common: the quick bounds test, then the
    exact one (interleaved views such as ``buf[::2]`` and ``buf[1::2]`` do not overlap),
    counted as overlapping when the exact one would take too long."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except np.exceptions.TooHardError:
        return True


_cached_forward_plan = functools.lru_cache(maxsize=256)(_forward_plan)
_cached_backward_plan = functools.lru_cache(maxsize=256)(_backward_plan)
