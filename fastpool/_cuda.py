"""The ``cuda`` backend for host and device arrays: the GPU twin of ``fastpool/_host.py``.

What :mod:`fastpool._host` does for the CPU backends (allocation, ``out=``, float16, empty
cases) this module does for the GPU, plus moving data: a NumPy input is copied to the GPU and
the result comes back as NumPy; an input that already lives on the GPU
(``__cuda_array_interface__``: numba device arrays, CuPy arrays, PyTorch CUDA tensors; the
simulator's device arrays) is read in place, whatever its strides, and the result is a numba
device array that CuPy
(``cupy.asarray``) and PyTorch (``torch.as_tensor(..., device="cuda")``) wrap without a copy.
The kernels are in :mod:`fastpool._cuda_kernels`.

Importing this module raises :class:`fastpool._backends.BackendUnavailable` (an ImportError)
when numba-cuda is not installed or there is no usable GPU and the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) is off; the registry turns that into "not usable: <reason>".
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import _validate as v
from ._backends import BackendUnavailable
from ._windows import window_arrays

if importlib.util.find_spec("numba_cuda") is None:
    # numba's own numba.cuda is deprecated and warns on import; only the maintained target counts
    raise BackendUnavailable(
        "numba-cuda is not installed (pip install numba-cuda, or fastpool's cuda extra: "
        "pip install '.[cuda]' in its source tree)"
    )

from numba import cuda  # noqa: E402

try:  # numba-cuda's config reads NUMBA_ENABLE_CUDASIM like numba's
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - older numba-cuda
    import numba as _numba

    _config = _numba.config

SIMULATOR = bool(getattr(_config, "ENABLE_CUDASIM", 0))

if not SIMULATOR and not cuda.is_available():
    try:
        from numba.cuda.cudadrv.driver import driver as _driver

        _why = str(getattr(_driver, "initialization_error", "") or "").strip()
    except Exception:  # pragma: no cover - reason is best effort
        _why = ""
    raise BackendUnavailable(
        "no CUDA GPU: "
        + (_why or "numba-cuda found no usable CUDA driver and device")
        + " (NUMBA_ENABLE_CUDASIM=1 runs the kernels in numba's CUDA simulator)"
    )

from . import _cuda_kernels as K  # noqa: E402

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)


# ------------------------------------------------------------------------ launch config


@dataclass
class LaunchConfig:
    """Every launch size in one place.

    ``block`` threads per block (a power of two up to 256; below 32 only for the simulator,
    where each thread is a Python thread); the grid is
    ``clamp(ceil(threads / block), min_blocks, max_blocks)`` blocks, grid-stride loops doing
    the rest. On a GPU ``min_blocks`` stays >= 128 so numba's low-occupancy warning (an error
    under ``-W error``) never fires; idle blocks exit at once. In the simulator each thread is
    a Python thread, so grids stay small.
    """

    block: int = 32 if SIMULATOR else 256
    max_blocks: int = 4 if SIMULATOR else 65535
    min_blocks: int = 1 if SIMULATOR else 128
    #: threads worth having in flight before teams grow beyond a warp (about a full GPU)
    target_threads: int = 1 << 18
    #: cap on the threads per output cell (tests lower it: each simulated barrier is slow)
    max_team: int = K.MAX_BLOCK

    def grid(self, threads: int) -> int:
        blocks = -(-threads // self.block)
        return max(self.min_blocks, min(self.max_blocks, blocks))


LAUNCH = LaunchConfig()


@contextlib.contextmanager
def launch_config(**changes):
    """Temporarily change :data:`LAUNCH` (tests force several blocks with tiny sizes)."""
    global LAUNCH
    old = LAUNCH
    new = LaunchConfig(**{**old.__dict__, **changes})
    if new.block & (new.block - 1) or not 1 <= new.block <= K.MAX_BLOCK:
        raise ValueError(f"block must be a power of two in [1, {K.MAX_BLOCK}]; got {new.block}")
    LAUNCH = new
    try:
        yield new
    finally:
        LAUNCH = old


def team_shift(area: int, n_out: int, cfg: LaunchConfig) -> int:
    """log2 of the threads sharing one output cell's window of (at most) ``area`` elements.

    About ``sqrt(2 * area)`` threads, up to a warp: each thread's loop and the team's serial
    merge (one thread adds the others' partial results) then cost about the same, and a team
    of 8+ threads reads whole 32-byte sectors of a window row. Windows under 8 elements get
    one thread (no barrier). Teams grow beyond a warp only while the grid would otherwise be
    too small to fill the GPU (few output cells with large windows: global pooling).
    """
    team = 1
    if area >= 8:
        while team < 32 and (2 * team) * (2 * team) <= 2 * area:
            team *= 2
    while team < cfg.block and n_out * team < cfg.target_threads and team * 8 <= area:
        team *= 2
    return min(team, cfg.block, max(cfg.max_team, 1)).bit_length() - 1


# --------------------------------------------------------------------- window tables

_TABLE_CACHE: OrderedDict = OrderedDict()
_TABLE_LOCK = threading.Lock()
_TABLE_CACHE_SIZE = 64


def _axis_tables(size_in: int, size_out: int):
    """Start/end of each output cell and first/stop covering cell of each input element."""
    starts, ends = (
        np.ascontiguousarray(a, dtype=np.int64) for a in window_arrays(size_in, size_out)
    )
    # Covering cells by inverting the windows themselves (starts and ends are sorted): the
    # gather backward then agrees with the forward windows by construction.
    x = np.arange(size_in, dtype=np.int64)
    first = np.searchsorted(ends, x, side="right").astype(np.int64)
    stop = np.searchsorted(starts, x, side="right").astype(np.int64)
    return starts, ends, first, stop


def host_tables(in_spatial, out_spatial) -> np.ndarray:
    """The kernels' window table (layout in :mod:`fastpool._cuda_kernels`)."""
    per_axis = [_axis_tables(i, o) for i, o in zip(in_spatial, out_spatial, strict=True)]
    return np.concatenate(
        [a for s, e, _, _ in per_axis for a in (s, e)]
        + [a for _, _, first, stop in per_axis for a in (first, stop)]
    )


def _device_tables(in_spatial, out_spatial):
    dev = cuda.get_current_device()
    key = (tuple(in_spatial), tuple(out_spatial), getattr(dev, "id", 0))
    with _TABLE_LOCK:
        hit = _TABLE_CACHE.get(key)
        if hit is not None:
            _TABLE_CACHE.move_to_end(key)
            return hit
    table = cuda.to_device(host_tables(in_spatial, out_spatial))
    with _TABLE_LOCK:
        _TABLE_CACHE[key] = table
        while len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
            _TABLE_CACHE.popitem(last=False)
    return table


def _max_window(size_in: int, size_out: int) -> int:
    starts, ends = window_arrays(size_in, size_out)
    return int((ends - starts).max()) if size_out else 0


# ------------------------------------------------------------------ arrays and views


@dataclass
class _Ref:
    """An array as the kernels see it: flat buffer, offset of element 0, element strides (5-D)."""

    flat: object
    offset: int
    strides: tuple

    @property
    def args(self) -> tuple:
        """The three kernel arguments that describe the array, in the kernels' order."""
        return self.flat, self.offset, self.strides


def _span(shape, strides, itemsize):
    """(lowest element offset, number of elements spanned) of a strided layout, in elements."""
    if any(st % itemsize for st in strides):
        return None
    el = [st // itemsize for st in strides]
    lo = sum((s - 1) * st for s, st in zip(shape, el, strict=True) if st < 0)
    hi = sum((s - 1) * st for s, st in zip(shape, el, strict=True) if st > 0)
    return lo, hi - lo + 1, tuple(el)


def _strided_flat(a: np.ndarray):
    """1-D view of the memory extent of ``a`` (numpy), offset of ``a[0, ...]``, element strides."""
    sp = _span(a.shape, a.strides, a.itemsize)
    if sp is None:
        return None
    lo, n, el = sp
    # Flip negative axes so the view starts at the lowest address, then read the extent.
    b = a[tuple(slice(None, None, -1) if st < 0 else slice(None) for st in a.strides)]
    flat = np.lib.stride_tricks.as_strided(b, shape=(n,), strides=(a.itemsize,), writeable=True)
    return flat, -lo, el


def _map5(strides, plan: v.Plan) -> tuple:
    """User-facing strides -> ``(N, C, D, H, W)`` strides, mirroring :meth:`Plan.view5`."""
    st = list(strides)
    if not plan.batched:
        st = [0] + st
    if plan.channels_last:
        st = [st[0], st[-1]] + st[1:-1]
    return tuple(int(s) for s in st[:2] + [0] * (3 - plan.dims) + st[2:])


def _host_to_device(a: np.ndarray, plan: v.Plan) -> _Ref:
    """Copy a host array to the GPU keeping its layout when that costs no extra bytes."""
    got = _strided_flat(a)
    if got is None or got[0].size > 2 * a.size:  # sparse view: compact on the host first
        a = np.ascontiguousarray(a)
        got = _strided_flat(a)
    flat, off, el = got
    return _Ref(cuda.to_device(np.ascontiguousarray(flat)), off, _map5(el, plan))


def _is_sim_array(a) -> bool:
    return SIMULATOR and hasattr(a, "_ary") and hasattr(a, "copy_to_host")


def _device_ref(a, plan: v.Plan, name: str, *, writeable: bool = False) -> _Ref:
    """A device array read (or written) in place through its strides."""
    if _is_sim_array(a):
        got = _strided_flat(a._ary)
        if got is None:
            raise TypeError(f"{name} has strides that are not a multiple of its item size")
        flat, off, el = got
        return _Ref(_sim_wrap(flat), off, _map5(el, plan))
    cai = a.__cuda_array_interface__
    if cai.get("mask") is not None:
        raise TypeError(f"{name} is a masked device array; masks are not supported")
    dtype = np.dtype(cai["typestr"])
    shape = tuple(int(s) for s in cai["shape"])
    strides = cai.get("strides")
    if strides is None:
        strides = _c_strides(shape, dtype.itemsize)
    ptr, readonly = cai["data"]
    if writeable and readonly:
        raise ValueError(f"{name} must be writeable")
    sp = _span(shape, strides, dtype.itemsize)
    if sp is None:
        raise TypeError(f"{name} has strides that are not a multiple of its item size")
    lo, n, el = sp
    desc = {
        "shape": (n,),
        "strides": None,
        "typestr": cai["typestr"],
        "data": (int(ptr) + lo * dtype.itemsize, False),
        "version": 3,
        "stream": cai.get("stream"),
    }
    # The owner keeps the producer's memory alive; its stream is synchronised per the CAI.
    flat = cuda.from_cuda_array_interface(desc, owner=a, sync=True)
    return _Ref(flat, -lo, _map5(el, plan))


def _sim_wrap(flat: np.ndarray):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray(flat)


def _c_strides(shape, itemsize):
    strides, acc = [], itemsize
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


def _fresh(shape, dtype, plan: v.Plan) -> tuple[object, _Ref]:
    """A new C-contiguous device array and its kernel view."""
    arr = cuda.device_array(shape, dtype=dtype)
    el = _c_strides(shape, 1)
    flat = arr.reshape(-1) if arr.size else cuda.device_array(1, dtype=dtype)
    return arr, _Ref(flat, 0, _map5(el, plan))


def _scratch(dtype) -> _Ref:
    """A one-element stand-in for an empty array (kernels never read it)."""
    return _Ref(cuda.device_array(1, dtype=dtype), 0, (0, 0, 0, 0, 0))


def _check_device_out(out, shape, dtype, name):
    if not v.is_device_array(out):
        raise TypeError(
            f"{name} must be a device array (the input lives on the GPU); got {type(out).__name__}"
        )
    got_shape, got_dtype = v.array_meta(out, name)
    if got_shape != tuple(shape) or got_dtype != np.dtype(dtype):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; "
            f"got shape {got_shape} and dtype {got_dtype}"
        )
    return out


def _extent(a):
    """(first byte, end byte) of a device array's memory, or None when empty/unknown."""
    if _is_sim_array(a):
        a = a._ary
        if a.size == 0:
            return None
        ptr, strides, shape, itemsize = a.ctypes.data, a.strides, a.shape, a.itemsize
    else:
        cai = a.__cuda_array_interface__
        shape = tuple(cai["shape"])
        itemsize = np.dtype(cai["typestr"]).itemsize
        strides = cai.get("strides") or _c_strides(shape, itemsize)
        ptr = cai["data"][0]
        if 0 in shape:
            return None
    lo = sum((s - 1) * st for s, st in zip(shape, strides, strict=True) if st < 0)
    hi = sum((s - 1) * st for s, st in zip(shape, strides, strict=True) if st > 0)
    return ptr + lo, ptr + hi + itemsize


def _check_device_overlap(outputs, inputs):
    outs = [(n, a, _extent(a)) for n, a in outputs if a is not None]
    ins = [(n, a, _extent(a)) for n, a in inputs if a is not None and v.is_device_array(a)]
    for i, (name, _, ea) in enumerate(outs):
        for other, _, eb in ins + outs[i + 1 :]:
            if ea and eb and ea[0] < eb[1] and eb[0] < ea[1]:
                raise ValueError(f"{name} must not share memory with {other}")


# ------------------------------------------------------------------------ kernels


_KERNELS: dict = {}
_KERNEL_LOCK = threading.Lock()


def kernels(dtype: np.dtype) -> dict:
    """The kernel set accumulating in float32 (float16/32 data) or float64."""
    acc = np.float64 if dtype == _F64 else np.float32
    with _KERNEL_LOCK:
        ks = _KERNELS.get(acc)
        if ks is None:
            ks = _KERNELS[acc] = K.make_kernels(acc)
    return ks


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    return _F64 if dtype == _F64 else _F32


# The simulator swaps the ``cuda`` global of the kernels' module while a grid runs, so two
# Python threads (dask workers, say) may not run simulated grids at once; a GPU has no such limit.
_SIM_LOCK = threading.Lock() if SIMULATOR else contextlib.nullcontext()


def _launch(kernel, threads, *args):
    cfg = LAUNCH
    with _SIM_LOCK:
        kernel[cfg.grid(threads), cfg.block](*args)


def _spatial(shape5):
    return tuple(int(s) for s in shape5[2:])


def _forward_kernel(kind, xr: _Ref, vr: _Ref, ir: _Ref | None, plan: v.Plan):
    in_sp, out_sp = _spatial(plan.in5), _spatial(plan.out5)
    tab = _device_tables(in_sp, out_sp)
    n_out = math.prod(plan.out5)
    area = math.prod(_max_window(i, o) for i, o in zip(in_sp, out_sp, strict=True))
    cfg = LAUNCH
    tshift = team_shift(area, n_out, cfg)
    ks = kernels(plan.dtype)
    oshape = tuple(int(s) for s in plan.out5)
    if kind == "avg":
        _launch(
            ks["avg_forward"],
            n_out << tshift,
            *xr.args,
            *vr.args,
            oshape,
            in_sp,
            tab,
            tshift,
        )
    else:
        _launch(
            ks["max_forward"],
            n_out << tshift,
            *xr.args,
            *vr.args,
            *ir.args,
            oshape,
            in_sp,
            tab,
            tshift,
        )


def _check_indices(ir: _Ref, plan: v.Plan, tab) -> bool:
    """Raise ValueError for an index outside the plane; True when all lie in their windows."""
    n_out = math.prod(plan.out5)
    if n_out == 0:
        return True
    flags = cuda.to_device(
        np.array([0, 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)
    )
    _launch(
        K.check_indices,
        n_out,
        *ir.args,
        tuple(int(s) for s in plan.out5),
        _spatial(plan.in5),
        tab,
        flags,
    )
    bad_range, bad_window, lo, hi = (int(f) for f in flags.copy_to_host())
    if bad_range:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"indices must lie in [0, {plan.plane}) (flat positions in the input plane); "
            f"found {bad}"
        )
    return not bad_window


def _backward_kernel(kind, gr: _Ref, ir: _Ref | None, gir: _Ref, gi_dtype, plan: v.Plan):
    in_sp, out_sp = _spatial(plan.in5), _spatial(plan.out5)
    tab = _device_tables(in_sp, out_sp)
    ks = kernels(plan.dtype)
    ishape = tuple(int(s) for s in plan.in5)
    n_in = math.prod(plan.in5)
    if kind == "avg":
        _launch(
            ks["avg_backward"],
            n_in,
            *gr.args,
            *gir.args,
            ishape,
            out_sp,
            tab,
        )
        return
    if _check_indices(ir, plan, tab):
        _launch(
            ks["max_backward"],
            n_in,
            *gr.args,
            *ir.args,
            *gir.args,
            ishape,
            out_sp,
            tab,
        )
        return
    # Some index points outside its own window (not from our forward): scatter per plane.
    acc = _acc_dtype(plan.dtype)
    if acc == gi_dtype:
        buf = gir
    else:
        tmp = cuda.device_array(n_in, dtype=acc)
        buf = _Ref(tmp, 0, _c_strides(plan.in5, 1))
    planes = plan.in5[0] * plan.in5[1]
    _launch(
        ks["max_backward_scatter"],
        planes,
        *gr.args,
        *ir.args,
        *buf.args,
        ishape,
        out_sp,
    )
    if buf is not gir:
        _launch(
            K.copy5,
            n_in,
            *buf.args,
            *gir.args,
            ishape,
        )


# ------------------------------------------------------------------------ the backend


class CudaBackend:
    """The object the public functions call (see :class:`fastpool._host.HostBackend`)."""

    name = "cuda"
    accepts_device = True

    def __repr__(self) -> str:
        return "<fastpool backend 'cuda'>"

    @staticmethod
    def describe() -> str:
        return describe()

    def forward(self, kind: str, x, plan: v.Plan, out_values=None, out_indices=None):
        if v.is_device_array(x):
            return self._forward_device(kind, x, plan, out_values, out_indices)
        x = v.as_host_array(x, "x")
        values = _host_output(out_values, plan.out_shape, plan.dtype, "out")
        indices = None
        if kind == "max":
            indices = _host_output(out_indices, plan.out_shape, _I64, "out[1] (indices)")
        v.check_no_overlap([("out", out_values), ("out[1] (indices)", out_indices)], [("x", x)])
        if plan.empty:
            return values, indices
        xr = _host_to_device(x, plan)
        dv, vr = _fresh(plan.out_shape, plan.dtype, plan)
        di, ir = _fresh(plan.out_shape, _I64, plan) if kind == "max" else (None, None)
        _forward_kernel(kind, xr, vr, ir, plan)
        _to_host(dv, values)
        if kind == "max":
            _to_host(di, indices)
        return values, indices

    def _forward_device(self, kind, x, plan, out_values, out_indices):
        if out_values is not None:
            _check_device_out(out_values, plan.out_shape, plan.dtype, "out")
        if kind == "max" and out_indices is not None:
            _check_device_out(out_indices, plan.out_shape, _I64, "out[1] (indices)")
        _check_device_overlap([("out", out_values), ("out[1] (indices)", out_indices)], [("x", x)])
        values, vr = _device_output(out_values, plan.out_shape, plan.dtype, plan, "out")
        indices = ir = None
        if kind == "max":
            indices, ir = _device_output(
                out_indices, plan.out_shape, _I64, plan, "out[1] (indices)"
            )
        if plan.empty:
            return values, indices
        xr = _device_ref(x, plan, "x")
        _forward_kernel(kind, xr, vr, ir, plan)
        return values, indices

    def backward(self, kind: str, grad_output, indices, plan: v.Plan, out=None):
        device = v.is_device_array(grad_output)
        if not device:
            grad_output = v.as_host_array(grad_output, "grad_output")
        inputs = [("grad_output", grad_output)]
        if kind == "max":
            if not v.is_device_array(indices):
                indices = v.as_host_array(indices, "indices").astype(np.int64, copy=False)
            inputs.append(("indices", indices))
        if device:
            if out is not None:
                _check_device_out(out, plan.in_shape, plan.dtype, "out")
            _check_device_overlap([("out", out)], inputs)
            grad_input, gir = _device_output(out, plan.in_shape, plan.dtype, plan, "out")
        else:
            grad_input = _host_output(out, plan.in_shape, plan.dtype, "out")
            v.check_no_overlap(
                [("out", out)], [(n, a) for n, a in inputs if isinstance(a, np.ndarray)]
            )
        if plan.in5[0] == 0:
            return grad_input
        gr = self._ref(grad_output, plan.out5, plan, "grad_output")
        ir = self._ref(indices, plan.out5, plan, "indices") if kind == "max" else None
        if device:
            _backward_kernel(kind, gr, ir, gir, plan.dtype, plan)
            return grad_input
        dgi, gir = _fresh(plan.in_shape, plan.dtype, plan)
        _backward_kernel(kind, gr, ir, gir, plan.dtype, plan)
        _to_host(dgi, grad_input)
        return grad_input

    @staticmethod
    def _ref(a, shape5, plan, name) -> _Ref:
        dtype = v.array_meta(a, name)[1]
        if math.prod(shape5) == 0:
            return _scratch(dtype)
        if v.is_device_array(a):
            return _device_ref(a, plan, name)
        return _host_to_device(a, plan)


def _host_output(out, shape, dtype, name):
    if out is None:
        return np.empty(shape, dtype=dtype)
    return v.check_out(out, shape, dtype, name)


def _device_output(out, shape, dtype, plan, name):
    if out is None:
        return _fresh(shape, dtype, plan)
    if math.prod(shape) == 0:
        return out, _scratch(dtype)
    return out, _device_ref(out, plan, name, writeable=True)


def _to_host(dev, host: np.ndarray) -> None:
    """Copy a fresh C-contiguous device result into ``host`` (any strides)."""
    if host.flags.c_contiguous:
        dev.copy_to_host(host)
    else:
        host[...] = dev.copy_to_host()


def describe() -> str:
    """What the ``cuda`` backend runs on (for ``python -m fastpool info``)."""
    try:
        import importlib.metadata as md

        version = md.version("numba-cuda")
    except Exception:  # pragma: no cover
        version = "?"
    if SIMULATOR:
        return f"CUDA simulator (NUMBA_ENABLE_CUDASIM=1), numba-cuda {version}"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    cc = ".".join(str(x) for x in dev.compute_capability)
    return f"{name} (compute capability {cc}), numba-cuda {version}"


BACKEND = CudaBackend()
