"""The ``cython`` backend: OpenMP kernels compiled from ``src/_cy.pyx`` (see ``fastpool._host``).

This module only picks, per call, the memory layout a kernel reads in place and the thread
count; the loops live in the extension ``fastpool._cy``, or in its AVX2 build
``fastpool._cy_avx2`` when the CPU has AVX2 (``FASTPOOL_DISABLE_AVX2=1`` keeps the baseline).
Importing this module without the compiled extension raises ``ModuleNotFoundError`` for
``fastpool._cy``, which the registry reports as "the Cython extension is not compiled".

Layouts read and written in place (no copy): arrays whose rows are contiguous (``W`` stride 1,
e.g. C order) and channels-last arrays (channel stride 1: ``(N, H, W, C)`` data or PyTorch's
``channels_last`` tensors through ``.numpy()``). Any other strides cost one copy.

Threads: :func:`set_num_threads` sets a fastpool-wide count; by default the kernels use
OpenMP's (``OMP_NUM_THREADS``, else the number of CPUs; ``threadpoolctl`` limits apply too).
Results do not depend on the thread count. As with any OpenMP program, do not ``fork()`` a
process that has run kernels and use OpenMP in the child: use the ``spawn`` or
``forkserver`` start methods.
"""

from __future__ import annotations

import importlib
import operator
import os

import numpy as np

# Raises ModuleNotFoundError naming fastpool._cy when the extension is not built (the
# registry turns that into "not compiled"; `from . import _cy` would raise a bare ImportError).
_baseline = importlib.import_module("fastpool._cy")


def _pick_build():
    """The AVX2 build when this CPU runs it (unless FASTPOOL_DISABLE_AVX2=1), else the baseline."""
    if os.environ.get("FASTPOOL_DISABLE_AVX2", "").strip().lower() in ("1", "true", "yes", "on"):
        return _baseline
    if not _baseline.cpu_has_avx2():
        return _baseline
    try:
        return importlib.import_module("fastpool._cy_avx2")
    except ImportError:  # not built (non-x86, or the compiler lacked AVX2 support)
        return _baseline


_cy = _pick_build()
_max_threads = _cy.max_threads
_avg_forward, _max_forward = _cy.avg_forward, _cy.max_forward
_avg_backward, _max_backward = _cy.avg_backward, _cy.max_backward
_forward_long, _avg_backward_long = _cy.forward_long, _cy.avg_backward_long
_F32 = np.dtype(np.float32)

NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: max_backward checks the indices itself, before writing unless the caller made grad_input
#: (see fastpool._host).
CHECKS_INDICES = True

#: True when the extension was built with OpenMP (else it runs on one thread).
OPENMP: bool = bool(_cy.OPENMP)

# Below this many elements touched, starting a thread team costs more than it saves.
_SERIAL_BELOW = 1 << 16

_num_threads: int | None = None


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads in the Cython kernels (``None``: back to OpenMP's default)."""
    global _num_threads
    if n is None:
        _num_threads = None
        return
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1; got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """Threads a large call uses now: :func:`set_num_threads`'s value, else OpenMP's default."""
    if not OPENMP:
        return 1
    return _num_threads if _num_threads is not None else max(1, _max_threads())


def describe() -> str:
    """One line for ``python -m fastpool info``."""
    simd = f"{_cy.SIMD} kernels"
    if not OPENMP:
        return f"OpenMP: no (serial build), 1 thread, {simd}"
    source = (
        "set_num_threads"
        if _num_threads is not None
        else ("OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else "CPU count")
    )
    return f"OpenMP: yes, {get_num_threads()} threads ({source}), {simd}"


def _threads(work: int) -> int:
    if work < _SERIAL_BELOW:
        return 1
    return _num_threads if _num_threads is not None else max(1, _max_threads())


def _channels_last(a: np.ndarray) -> bool | None:
    """True (channel stride 1), False (rows contiguous) or None (other strides, or
    unaligned): the layout a kernel reads ``a`` in, None when it needs a copy first.

    Channel stride 1 wins whatever C is: a one-channel slice of (N, ..., C) data must take
    the kernel its whole array takes (dask chunks are compared bit for bit with the in-memory
    result, and the two kernels add in different orders).
    """
    strides, isz = a.strides, a.itemsize
    if strides[1] == isz:
        layout = True
    elif strides[4] == isz or a.shape[4] == 1:
        layout = False
    else:
        return None
    # Kernels address whole elements: NumPy's "aligned" flag says the data pointer and the
    # strides are multiples of the item size (dask's distributed workers hand out unaligned
    # chunks).
    return layout if a.flags.aligned else None


def _empty(shape, dtype, channels_last: bool) -> np.ndarray:
    """A new 5-D array, C order or channels-last (its memory ordered N, D, H, W, C)."""
    if not channels_last:
        return np.empty(shape, dtype)
    n, c, d, h, w = shape
    return np.moveaxis(np.empty((n, d, h, w, c), dtype), -1, 1)


def _stand_in(a: np.ndarray, copy_in: bool) -> tuple[np.ndarray, bool]:
    """One array a kernel works on for ``a`` (which _channels_last refused), and its layout.

    An unaligned array is copied in its own layout, which keeps the kernel, and so the bits,
    of the in-memory call; strides no kernel reads in place get a C-order copy.
    """
    channels_last = a.strides[1] == a.itemsize
    b = _empty(a.shape, a.dtype, channels_last)
    if copy_in:
        b[...] = a
    return b, channels_last


def _aligned(a: np.ndarray) -> np.ndarray:
    """``a`` itself if aligned (any strides: only read through them), else a C-order copy."""
    return a if a.flags.aligned else np.array(a, order="C")  # a new array is aligned


# The kernels keep tables of window bounds (16 bytes per position of the result's axes;
# backwards also of the input's, per run of input positions, and channels-last a weight per
# output cell and a row of cells) and forwards rows of the input. A call whose tables would
# pass 1 MiB, and backwards also the result, runs the long-axis kernels instead, which keep
# none (a signal of millions of samples pooled to or from a few planes).
_LONG_AXIS = 1 << 16


def _long_forward(x: np.ndarray, out: np.ndarray) -> bool:
    """By the spatial shapes alone: a chunk of an array (dask) takes the path of the whole."""
    if x.size <= _LONG_AXIS and out.size <= _LONG_AXIS:  # (no axis is longer than its array)
        return False
    _, _, d, h, w = x.shape
    _, _, do, ho, wo = out.shape
    return max(do, ho, wo, w if d * h > 1 else 0) > _LONG_AXIS


def _long_backward(kind: str, go: np.ndarray, gi: np.ndarray, channels_last: bool) -> bool:
    """Entries of 8 bytes. Both paths give the same bits (sums in the same order)."""
    _, c, d, h, w = gi.shape
    _, _, do, ho, wo = go.shape
    if kind == "max":
        entries = 2 * d + 4 * h + 2 * w if channels_last else 0
    else:
        entries = 2 * (do + ho + wo + d) + 4 * (h + w)
        entries += 2 * do * ho * wo + (wo + 1) * c if channels_last else wo
    return entries > 2 * _LONG_AXIS and 8 * entries > gi.size * gi.itemsize


def _writable(a: np.ndarray | None) -> np.ndarray | None:
    """``a`` itself when aligned (outputs are written through their strides), else a
    stand-in that the caller copies back."""
    return a if a is None or a.flags.aligned else np.empty(a.shape, a.dtype)


def avg_forward(x: np.ndarray, out: np.ndarray) -> None:
    o = _writable(out)
    if _long_forward(x, out):
        _forward_long(_aligned(x), o, None, _threads(x.size + out.size))
    else:
        channels_last = _channels_last(x)
        if channels_last is None:
            x, channels_last = _stand_in(x, True)
        _avg_forward(x, o, channels_last, _threads(x.size + out.size))
    if o is not out:
        out[...] = o


def max_forward(x: np.ndarray, out: np.ndarray, indices: np.ndarray) -> None:
    o, i = _writable(out), _writable(indices)
    if _long_forward(x, out):
        _forward_long(_aligned(x), o, i, _threads(x.size + out.size))
    else:
        channels_last = _channels_last(x)
        if channels_last is None:
            x, channels_last = _stand_in(x, True)
        if channels_last and x.dtype == _F32 and x.size // (x.shape[0] * x.shape[1]) >= 2**31:
            # that kernel keeps float32 positions in int32; a plane this large goes planar
            x, channels_last = np.array(x, order="C"), False
        _max_forward(x, o, i, channels_last, _threads(x.size + out.size))
    if o is not out:
        out[...] = o
    if i is not indices:
        indices[...] = i


def avg_backward(grad_output: np.ndarray, grad_input: np.ndarray) -> None:
    gi, channels_last = grad_input, _channels_last(grad_input)
    if channels_last is None:
        gi, channels_last = _stand_in(grad_input, False)
    g = _aligned(grad_output)
    if _long_backward("avg", g, gi, channels_last):
        _avg_backward_long(g, gi, _threads(gi.size + g.size))
    else:
        _avg_backward(g, gi, channels_last, _threads(gi.size + g.size))
    if gi is not grad_input:
        grad_input[...] = gi


def max_backward(
    grad_output: np.ndarray, indices: np.ndarray, grad_input: np.ndarray, fresh: bool = False
) -> bool:
    """Scatter the gradients into ``grad_input``; False when an index lies outside the
    plane, with nothing written unless ``fresh`` (the caller made ``grad_input`` and drops
    it then: the kernels test each index as they read it instead of in a pass of their
    own, a fifth of a small call)."""
    gi, channels_last = grad_input, _channels_last(grad_input)
    if channels_last is None:
        gi, channels_last = _stand_in(grad_input, False)
    g, i = _aligned(grad_output), _aligned(indices)
    tables = not _long_backward("max", g, gi, channels_last)
    if not _max_backward(g, i, gi, channels_last, _threads(gi.size + g.size), fresh, tables):
        return False  # an index outside the plane (grad_input untouched unless fresh)
    if gi is not grad_input:
        grad_input[...] = gi
    return True
