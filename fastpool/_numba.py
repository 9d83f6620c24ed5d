"""The ``numba`` backend: parallel JIT kernels computing what ``fastpool/_numpy.py`` computes.

One kernel set serves 1d, 2d and 3d: kernels see 5-D arrays ``(N, C, D, H, W)`` (size-1
axes for 1d/2d) and run in one of two layouts, each read in place:

* *planar*, C-contiguous ``(N*C, D*H*W)``: the rows of a window are added (or maxed) into a
  row buffer, a loop that vectorises across ``W``, before the columns of each output cell;
* *channels-last*, C-contiguous ``(N*D*H*W, C)`` (a ``(N, C, ...)`` view with channel stride
  1, as ``channels_last`` tensors give): every inner loop runs over contiguous channels.

Other strides go through one copy, and so do channels-last forward inputs with fewer than 8
channels (nothing to vectorise across; backwards read those in place). Small planes (a few
hundred elements, e.g. upsampling a 5x5 map) have kernels of their own that take blocks of
channels per work item and read either layout in place, so a forward from channels-first
memory or a backward between different layouts costs no copy. Forward outputs may have any
strides. Backward kernels gather: each element of ``grad_input`` is written once, by one
thread, as a sum over the output cells covering it taken in output order -- no zero-fill
pass, no atomics, the same bits for every thread count and both layouts. Max backwards
whose windows hold many elements scatter instead, into whole planes or samples (or ranges
of a sample's positions) that one thread owns: zeroed, then every cell adds its gradient,
cells in output order -- still one thread per element and the same bits. Average forward
sums are float64, of input values or of float sums of at most 1024 of them (a plane's or
row's pieces, a column of a planar window's rows, a channels-last window row); backward sums
are in the data type, in output order (the cython backend's bits, and for max PyTorch's too;
an average term is the float64 product of gradient and 1/size, rounded once: PyTorch's
average backward rounds differently, within an ulp or two).

Each kernel is a ``prange`` over threads around a serial ``*_part`` function that does one
thread's contiguous share of the work: numba optimises a plain function better than a
``prange`` body. Work too small to share runs the ``*_part`` function alone, compiled without
``parallel`` (starting a parallel region and changing numba's thread count cost more than
such a call).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.ufunc import parallel as _numba_parallel

NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: ``max_backward`` checks the indices itself (in parallel, before any write unless the caller
#: made grad_input) and returns False when one lies outside the plane; the caller raises.
CHECKS_INDICES = True

# ----------------------------------------------------------------------------- threads
# Numba's ``workqueue`` layer aborts the process when two Python threads enter parallel code
# at once. Ask for a thread-safe layer (TBB, else OpenMP) before the first kernel launches,
# unless the user chose one. If workqueue is what we get anyway (another library launched
# numba first, or neither TBB nor OpenMP loads), ``_launch`` serialises calls.


def _thread_safe_layer() -> str | None:
    for name in ("tbb", "omp"):
        try:
            __import__(f"numba.np.ufunc.{name}pool")
        except ImportError:
            continue
        return name
    return None


if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = _thread_safe_layer() or "default"

_launch_lock = threading.Lock()
_layer_is_safe = False  # known only after the first launch
_num_threads: int | None = None  # fastpool's setting; None: numba's own, per Python thread
#: Elements (read + written) each thread gets at least; smaller calls use fewer threads:
#: waking a thread costs microseconds, and on a busy machine it may wait a time slice.
GRAIN = 1 << 14


def _numba_threads() -> int:
    """``numba.get_num_threads()``: this Python thread's count. Once numba's threads run, the
    threading layer's own getter answers it without the two locks the public function
    takes on every call (0.4 of its 0.5 us, per kernel launch); the public function
    whenever that getter is missing or unusable (it is numba's internal)."""
    global _layer_threads
    if _layer_threads is not None:
        n = _layer_threads()
        if n > 0:
            return n
    n = numba.get_num_threads()  # starts numba's threads if need be
    getter = getattr(_numba_parallel, "_get_num_threads", None)
    if _layer_threads is None and callable(getter):
        try:
            _layer_threads = getter if getter() == n else None
        except Exception:  # pragma: no cover - another numba's internals
            _layer_threads = None
    return n


_layer_threads = None


def set_num_threads(n: int | None) -> None:
    """Threads per kernel call, in every Python thread (numba's own setter is per thread);
    ``None``: numba's own count again."""
    global _num_threads
    _num_threads = None if n is None else max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


def get_num_threads() -> int:
    return _num_threads if _num_threads is not None else _numba_threads()


def describe() -> str:
    try:
        layer = numba.threading_layer()
    except ValueError:  # no kernel has run yet
        layer = f"{numba.config.THREADING_LAYER} (starts with the first call)"
    return f"numba {numba.__version__}, threading layer {layer}, {get_num_threads()} threads"


def _launch(kernel, args, nt, current):
    """Run the parallel ``kernel(nt, *args)`` on ``nt`` threads (numba's count is
    ``current``); return what it returns."""
    global _layer_is_safe
    if nt != current:
        numba.set_num_threads(nt)
    try:
        if _layer_is_safe:
            return kernel(nt, *args)
        with _launch_lock:
            result = kernel(nt, *args)
            _layer_is_safe = numba.threading_layer() != "workqueue"
        return result
    finally:
        if nt != current:
            numba.set_num_threads(current)


# --------------------------------------------------------------------------- compiling
# A kernel is compiled for one explicit signature per combination of dtypes, when first
# called with it: inputs as read-only C-contiguous arrays (writeable ones convert to them),
# outputs C-contiguous or strided as declared. So a process loads few specialisations from
# numba's cache, and never compiles a surprise one.

_OPTIONS = dict(parallel=True, nogil=True, cache=True, error_model="numpy")
_ARG_TYPES = {
    "in": lambda a: types.Array(numba.from_dtype(a.dtype), a.ndim, "C", readonly=True),
    "out": lambda a: types.Array(numba.from_dtype(a.dtype), a.ndim, "C"),
    "any": lambda a: types.Array(numba.from_dtype(a.dtype), a.ndim, "A"),
    "in_any": lambda a: types.Array(numba.from_dtype(a.dtype), a.ndim, "A", readonly=True),
    "int": lambda a: types.int64,
}
_compile_lock = threading.Lock()


def _jit(py_func, signature, parallel=True):
    options = {**_OPTIONS, "parallel": parallel}
    try:
        return njit([signature], **options)(py_func)
    except RuntimeError:  # no writable cache directory
        return njit([signature], **{**options, "cache": False})(py_func)


class _Kernel:
    """A parallel kernel ``f(nt, *args)``; ``kinds`` says what each of ``args`` is. A
    counting kernel returns an int64, the sum of its parts' counts (a ``prange``
    reduction: an integer sum, the same for any thread count); the others return nothing.

    Work that one thread does runs ``f``'s serial part ``<f>_part(0, 1, *args)``, compiled
    on its own: no parallel region to start, no thread count to change.
    """

    def __init__(self, py_func, kinds, counts=False):
        self.py_func = py_func
        self.kinds = kinds
        self.result = types.int64 if counts else types.void
        arrays = [i for i, k in enumerate(kinds) if k != "int"]
        # (serial, dtype of each array argument): a generated function, not a loop per call
        self.key = eval(f"lambda s, a: (s, {', '.join(f'a[{i}].dtype' for i in arrays)})")
        self.compiled = {}

    def _compiled(self, args, serial):
        key = self.key(serial, args)
        kernel = self.compiled.get(key)
        if kernel is None:
            with _compile_lock:
                kernel = self.compiled.get(key)
                if kernel is None:
                    argtypes = [_ARG_TYPES[k](a) for k, a in zip(self.kinds, args, strict=True)]
                    if serial:
                        part = globals()[self.py_func.__name__ + "_part"].py_func
                        signature = self.result(types.int64, types.int64, *argtypes)
                        kernel = _jit(part, signature, parallel=False)
                    else:
                        signature = self.result(types.int64, *argtypes)
                        kernel = _jit(self.py_func, signature)
                    self.compiled[key] = kernel
        return kernel

    def __call__(self, work, *args):
        """Run on the thread count setting, or fewer for small work. Numba's count is not
        even asked for work one thread does anyway: the query costs microseconds."""
        if work >= 2 * GRAIN:
            current = _numba_threads()
            nt = min(_num_threads or current, work // GRAIN)
            if nt > 1:
                kernel = self.compiled.get(self.key(False, args)) or self._compiled(args, False)
                if nt == current and _layer_is_safe:
                    return kernel(nt, *args)
                return _launch(kernel, args, nt, current)
        kernel = self.compiled.get(self.key(True, args)) or self._compiled(args, True)
        return kernel(0, 1, *args)


def _kernel(*kinds, counts=False):
    return lambda py_func: _Kernel(py_func, kinds, counts)


# ----------------------------------------------------------------------------- windows
# The one window formula of this backend (exact int64 arithmetic). Output cell i of an axis
# covers input [start(i, I, O), end(i, I, O)); input element x is covered by output cells
# [start(x, O, I), end(x, O, I)).


@njit(inline="always")
def _start(i, size_in, size_out):
    return (i * size_in) // size_out


@njit(inline="always")
def _end(i, size_in, size_out):
    return ((i + 1) * size_in + size_out - 1) // size_out


@njit
def _bounds(size_in, size_out):
    """``(starts, ends)`` of every output cell: no integer division in the inner loops."""
    starts = np.empty(size_out, np.int64)
    ends = np.empty(size_out, np.int64)
    for i in range(size_out):
        starts[i] = _start(i, size_in, size_out)
        ends[i] = _end(i, size_in, size_out)
    return starts, ends


@njit
def _runs(size_in, size_out):
    """Input positions of one axis grouped into runs covered by the same output cells:
    ``(run starts + [size_in], first covering cell, end of covering cells)`` per run.

    The covering cells change where a window starts (one more cell) or ends (one fewer),
    so the runs start at 0 and at the distinct window starts and ends inside the axis:
    tables of at most 2 * size_out + 2 entries, however long the axis (a 2**28-long input
    would otherwise cost gigabytes of them)."""
    ws, we = _bounds(size_in, size_out)
    most = min(size_in, 2 * size_out + 1)
    starts = np.empty(most + 1, np.int64)
    first = np.empty(most, np.int64)
    end = np.empty(most, np.int64)
    r, i, j, x = 0, 0, 0, 0
    while x < size_in:
        starts[r] = x
        first[r] = _start(x, size_out, size_in)
        end[r] = _end(x, size_out, size_in)
        r += 1
        # the next window start or end after x (both lists are nondecreasing)
        while i < size_out and ws[i] <= x:
            i += 1
        while j < size_out and we[j] <= x:
            j += 1
        x = min(ws[i] if i < size_out else size_in, we[j] if j < size_out else size_in)
    starts[r] = size_in
    return starts[: r + 1], first[:r], end[:r]


# ------------------------------------------------------------------------ vector helpers
# What LLVM does not derive from a loop, written as LLVM IR (vectors of a fixed width and
# ``shufflevector``, lowered to whatever vector unit the host has; a prefetch hint). In this
# file, not a module of its own: numba's cache is stamped by the file that defines a cached
# function, so an edit here invalidates the kernels that inline these.

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _mask(*lanes):
    return ir.Constant(ir.VectorType(_I32, len(lanes)), [_I32(k) for k in lanes])


def _c_vector(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"


@intrinsic
def _transpose4(typingctx, src, s, sstride, dst, d, dstride):
    """``dst[d + c * dstride + r] = src[s + r * sstride + c]`` for ``r, c`` in ``0..3``:
    four rows of four elements of the 1-D array ``src`` read as vectors, stored as the
    four columns into the 1-D array ``dst`` (both C-contiguous: the data pointer is
    addressed directly). No bounds checks: the caller keeps all sixteen positions of each
    array in range."""
    if not (_c_vector(src) and _c_vector(dst) and src.dtype == dst.dtype):
        return None
    sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_src, a_s, a_ss, a_dst, a_d, a_ds = args
        data_src = context.make_array(signature.args[0])(context, builder, a_src).data
        data_dst = context.make_array(signature.args[3])(context, builder, a_dst).data
        elem = context.get_data_type(signature.args[0].dtype)
        vec = ir.VectorType(elem, 4).as_pointer()
        align = context.get_abi_sizeof(elem)

        def at(base, start, stride, r):
            offset = builder.add(start, builder.mul(stride, _I64(r)))
            return builder.bitcast(builder.gep(base, [offset]), vec)

        a, b, c, e = (builder.load(at(data_src, a_s, a_ss, r), align=align) for r in range(4))
        # (a0 b0 a1 b1), (a2 b2 a3 b3), then the same for the lower two rows
        ab0, ab1 = (builder.shuffle_vector(a, b, _mask(0, 4, 1, 5)),
                    builder.shuffle_vector(a, b, _mask(2, 6, 3, 7)))
        ce0, ce1 = (builder.shuffle_vector(c, e, _mask(0, 4, 1, 5)),
                    builder.shuffle_vector(c, e, _mask(2, 6, 3, 7)))
        columns = (builder.shuffle_vector(ab0, ce0, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(ab0, ce0, _mask(2, 3, 6, 7)),
                   builder.shuffle_vector(ab1, ce1, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(ab1, ce1, _mask(2, 3, 6, 7)))
        for r, column in enumerate(columns):
            builder.store(column, at(data_dst, a_d, a_ds, r), align=align)
        return context.get_dummy_value()

    return sig, codegen



@intrinsic
def _lane_sum(typingctx, src, start, n):
    """Sum of ``src[start : start + n]`` in its own precision, in one fixed order: vectors of
    32 bytes added lane by lane, the lanes then added in halves, then the last ``n % lanes``
    elements one by one. For short spans (whole planes of global pooling), where LLVM's
    own vector loop runs mostly in its scalar epilogue."""
    if not (_c_vector(src) and isinstance(src.dtype, types.Float)):
        return None
    sig = src.dtype(src, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_src, a_start, a_n = args
        data = context.make_array(signature.args[0])(context, builder, a_src).data
        elem = context.get_data_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(elem)
        lanes = 32 // size
        vec = ir.VectorType(elem, lanes)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, None))
        whole = builder.sdiv(a_n, _I64(lanes))  # (n < 0: neither loop runs; the sum is 0)
        with cgutils.for_range(builder, whole) as loop:
            at = builder.add(a_start, builder.mul(loop.index, _I64(lanes)))
            ptr = builder.bitcast(builder.gep(data, [at]), vec.as_pointer())
            builder.store(builder.fadd(builder.load(acc), builder.load(ptr, align=size)), acc)
        v = builder.load(acc)
        half = lanes
        while half > 1:
            half //= 2
            v = builder.fadd(builder.shuffle_vector(v, v, _mask(*range(half))),
                             builder.shuffle_vector(v, v, _mask(*range(half, 2 * half))))
        total = cgutils.alloca_once_value(builder, builder.extract_element(v, _I32(0)))
        done = builder.add(a_start, builder.mul(whole, _I64(lanes)))
        with cgutils.for_range(builder, builder.sub(builder.add(a_start, a_n), done)) as loop:
            value = builder.load(builder.gep(data, [builder.add(done, loop.index)]))
            builder.store(builder.fadd(builder.load(total), value), total)
        return builder.load(total)

    return sig, codegen


class _Blocks:
    """The LLVM IR pieces the block intrinsics share: the data pointers of a source and a
    destination array of one float type, vectors of 32 bytes of it and as float64, a
    vector pointer ``at(base, offset, v)`` to the ``v``-th vector from ``offset``, and the
    float64 ``scale`` broadcast to a vector."""

    def __init__(self, context, builder, signature, args, src, dst, scale):
        self.builder = builder
        self.data = context.make_array(signature.args[src])(context, builder, args[src]).data
        self.out = context.make_array(signature.args[dst])(context, builder, args[dst]).data
        elem = context.get_data_type(signature.args[src].dtype)
        self.size = context.get_abi_sizeof(elem)
        self.lanes = 32 // self.size
        self.vec = ir.VectorType(elem, self.lanes)
        self.wide = ir.VectorType(ir.DoubleType(), self.lanes)
        one = builder.insert_element(ir.Constant(self.wide, None), args[scale], _I32(0))
        self.scale = builder.shuffle_vector(
            one, one, ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes))

    def at(self, base, offset, v):
        ptr = self.builder.gep(base, [self.builder.add(offset, _I64(v * self.lanes))])
        return self.builder.bitcast(ptr, self.vec.as_pointer())

    def mean(self, total):
        """``total`` (a vector of the arrays' type, or float64 when it is wider) times the
        scale, rounded to the arrays' type."""
        if self.size < 8:
            if total.type != self.wide:
                total = self.builder.fpext(total, self.wide)
            return self.builder.fptrunc(self.builder.fmul(total, self.scale), self.vec)
        return self.builder.fmul(total, self.scale)


def _float_blocks(src, dst):
    return (_c_vector(src) and _c_vector(dst) and src.dtype == dst.dtype
            and isinstance(src.dtype, types.Float))


@intrinsic
def _window_means(typingctx, src, start, kd, sd, kh, sh, kw, sw, scale, dst, at):
    """``dst[at + j]`` = ``scale`` x the sum of ``src[start + d * sd + h * sh + w * sw + j]``
    over ``d < kd``, ``h < kh``, ``w < kw``, for the ``j`` of four vectors of 32 bytes (32
    float32 or 16 float64 channels), as :func:`_avg_cl_window` computes it: each row
    ``(d, h)`` summed in order in the arrays' precision from +0.0, the rows added in
    float64 from +0.0, the total times the float64 ``scale``, rounded to the arrays' type.
    In registers: a channel loop over memory loads and stores the partial sums at every
    step. No bounds checks: the caller keeps every position in range."""
    if not _float_blocks(src, dst):
        return None
    i64 = types.int64
    sig = types.void(src, i64, i64, i64, i64, i64, i64, i64, types.float64, dst, i64)

    def codegen(context, builder, signature, args):
        _, a_start, a_kd, a_sd, a_kh, a_sh, a_kw, a_sw, _, _, a_at = args
        k = _Blocks(context, builder, signature, args, 0, 9, 8)
        rows = [cgutils.alloca_once_value(builder, ir.Constant(k.vec, None)) for _ in range(4)]
        sums = [cgutils.alloca_once_value(builder, ir.Constant(k.wide, None)) for _ in range(4)]
        with cgutils.for_range(builder, a_kd) as dloop:
            plane = builder.add(a_start, builder.mul(dloop.index, a_sd))
            with cgutils.for_range(builder, a_kh) as hloop:
                first = builder.add(plane, builder.mul(hloop.index, a_sh))
                for row in rows:
                    builder.store(ir.Constant(k.vec, None), row)
                with cgutils.for_range(builder, a_kw) as wloop:
                    pos = builder.add(first, builder.mul(wloop.index, a_sw))
                    for v, row in enumerate(rows):
                        value = builder.load(k.at(k.data, pos, v), align=k.size)
                        builder.store(builder.fadd(builder.load(row), value), row)
                for row, acc in zip(rows, sums, strict=True):
                    total = builder.load(row)
                    if k.size < 8:
                        total = builder.fpext(total, k.wide)
                    builder.store(builder.fadd(builder.load(acc), total), acc)
        for v, acc in enumerate(sums):
            builder.store(k.mean(builder.load(acc)), k.at(k.out, a_at, v), align=k.size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _run_sums(typingctx, src, start, count, stride, dst, at, first, last, scale):
    """One pass of a run of window positions in x's precision, as :func:`_window_means`
    sums a row: ``dst[at + j]`` (``first``: +0.0) plus ``src[start + k * stride + j]`` for
    ``k < count``, in order, for the ``j`` of four vectors of 32 bytes, in registers; stored
    as it is, or when ``last`` times the float64 ``scale`` and rounded to the arrays' type.
    Passes over a few positions at a time read a few streams, each in order across the
    blocks of channels. No bounds checks: the caller keeps every position in range."""
    if not _float_blocks(src, dst):
        return None
    i64 = types.int64
    sig = types.void(src, i64, i64, i64, dst, i64, types.boolean, types.boolean, types.float64)

    def codegen(context, builder, signature, args):
        _, a_start, a_count, a_stride, _, a_at, a_first, a_last, _ = args
        k = _Blocks(context, builder, signature, args, 0, 4, 8)
        sums = []
        for v in range(4):
            start = builder.select(a_first, ir.Constant(k.vec, None),
                                   builder.load(k.at(k.out, a_at, v), align=k.size))
            sums.append(cgutils.alloca_once_value(builder, start))
        with cgutils.for_range(builder, a_count) as loop:
            pos = builder.add(a_start, builder.mul(loop.index, a_stride))
            for v, acc in enumerate(sums):
                value = builder.load(k.at(k.data, pos, v), align=k.size)
                builder.store(builder.fadd(builder.load(acc), value), acc)
        for v, acc in enumerate(sums):
            total = builder.load(acc)
            value = builder.select(a_last, k.mean(total), total)
            builder.store(value, k.at(k.out, a_at, v), align=k.size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch(typingctx, src, at):
    """A hint to fetch the cache line of ``src[at]`` for reading (``llvm.prefetch``; never
    faults, whatever ``at`` is)."""
    if not _c_vector(src):
        return None
    sig = types.void(src, types.int64)

    def codegen(context, builder, signature, args):
        a_src, a_at = args
        data = context.make_array(signature.args[0])(context, builder, a_src).data
        ptr = builder.bitcast(builder.gep(data, [a_at]), ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, _I32(0), _I32(3), _I32(1)])  # read, keep in all caches, data
        return context.get_dummy_value()

    return sig, codegen

# ------------------------------------------------------------------------ work items
# Thread t of nt takes a contiguous, balanced share of the work items, numbered row-major
# over up to four axes; it decodes its first item and then counts (no division per item).


@njit(inline="always")
def _chunk(t, items, nt):
    return t * items // nt, (t + 1) * items // nt


#: Groups of work items each thread takes, in turns with the others (see :func:`_group`).
_ROUNDS = 8


@njit(inline="always")
def _group(items, nt):
    """Items per group when threads take groups of ``items`` in turns, ``_ROUNDS`` each
    rather than one contiguous share: the threads then stream neighbouring parts of the
    input, not far halves (global averages of 256x2048x7x7 ran 1.04x faster channels-last,
    1.02x planar; groups of 1 to 16 samples did alike)."""
    return max(1, -(-items // (nt * _ROUNDS)))


@njit(inline="always")
def _unravel(k, e2, e1, e0):
    i0 = k % e0
    k //= e0
    i1 = k % e1
    k //= e1
    return k // e2, k % e2, i1, i0


@njit(inline="always")
def _next(i3, i2, i1, i0, e2, e1, e0):
    i0 += 1
    if i0 == e0:
        i0 = 0
        i1 += 1
        if i1 == e1:
            i1 = 0
            i2 += 1
            if i2 == e2:
                i2 = 0
                i3 += 1
    return i3, i2, i1, i0


# ----------------------------------------------------------------------------- helpers
# Inner loops index 1-D slices from 0 with range() variables: numba then knows the index is
# never negative, drops its wraparound check, and LLVM vectorises the loop.


@njit(fastmath={"reassoc"}, error_model="numpy")
def _sum(a, lo, hi):
    """Float64 sum of ``a[lo:hi]``, in whatever order LLVM's vectoriser likes (only this
    function may reorder its additions; callers keep numba's strict floating point). Indexed
    by range rather than sliced: a slice per window cost as much as summing 40 values."""
    s = 0.0
    for i in range(lo, hi):
        s += a[np.uint64(i)]
    return s


#: Elements of one partial sum of :func:`_sum_in`.
_PARTIAL = 1024
#: Global pooling of planes shorter than ``_LANE_SUM_MAX``, and windows of one row of
#: ``_LANE_SUM_MIN`` to ``_LANE_SUM_MAX`` positions, are summed by :func:`_lane_sum`, with a
#: prefetch ``_PREFETCH_AHEAD`` elements beyond (float32, 2 threads: 256x2048x7x7 -> 1
#: 5.3-5.6 -> 3.6-3.9 ms, 7x7 planes in cache 1.15x, 3x3 1.3x; 64x256x4096 -> 100 15.8 ->
#: 10.9 ms, windows of 16-51 in cache 1.05-1.1x). Windows of 8-13 positions ran 1.04-1.3x
#: slower that way, and 64 or more alike.
_LANE_SUM_MAX = 64
_LANE_SUM_MIN = 16
_PREFETCH_AHEAD = 1024


@njit(fastmath={"reassoc"}, error_model="numpy")
def _partial(a, lo, hi):
    """Sum of ``a[lo:hi]`` in its own precision, in the vectoriser's order."""
    s = a.dtype.type(0)
    for i in range(lo, hi):
        s += a[np.uint64(i)]
    return s


@njit(error_model="numpy")
def _sum_in(a, lo, hi):
    """Float64 sum of input values ``a[lo:hi]``: partial sums of up to 1024 elements in the
    input's precision (float32: half the vector work of float64, each vector lane adding a
    few dozen values), added in float64. For whole planes and rows of planar inputs, where
    the plain float64 sum was bound by its conversions rather than by memory (in cache: 64x64
    planes 1.3x, 7x7 planes 1.8x)."""
    s = 0.0
    for i in range(lo, hi, _PARTIAL):
        s += _partial(a, i, min(i + _PARTIAL, hi))
    return s


@njit(fastmath={"nnan", "nsz"}, error_model="numpy")
def _max_no_nan(a):
    """Maximum of ``a``, which holds no NaN (the flags let LLVM use max instructions, and
    either zero for a tie of -0.0 and 0.0: callers take the value from ``a`` itself)."""
    n = len(a)
    m0 = m1 = m2 = m3 = a[0]  # four chains: a max waits for the one before it
    i = 1
    while i + 4 <= n:
        v0, v1, v2, v3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        i += 4
    for j in range(i, n):
        v = a[j]
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@njit(error_model="numpy")
def _has_nan(a):
    bad = False
    for i in range(len(a)):  # no early exit: vectorises
        bad |= a[i] != a[i]
    return bad


@njit(inline="always")
def _max_span(a):
    """Maximum of ``a`` by the SPEC's scan rule, and its position: the first occurrence of
    the maximum, or with NaNs the last NaN. Without NaNs: the maximum, then the first block
    of 64 holding it, then its place there -- no data-dependent branch per element, which
    on random data mispredicts about ln(len(a)) times per scan."""
    if _has_nan(a):
        bv, bi = a[0], 0
        for i in range(1, len(a)):
            v = a[i]
            if v > bv or v != v:
                bv, bi = v, i
        return bv, bi
    if len(a) >= _LONG_SPAN:
        return _first_max(a)
    m = _max_no_nan(a)
    lo = 0
    while lo + 64 < len(a) and _max_no_nan(a[lo : lo + 64]) != m:
        lo += 64
    for i in range(lo, len(a)):
        if a[i] == m:
            return a[i], i
    return a[0], 0  # not reached


#: Spans from this long find their maximum through integer keys (:func:`_first_max`);
#: below it, the key pass costs more than it saves (measured: 49 values 0.7x, 200 1.4x).
_LONG_SPAN = 128


def _bits(a):
    """``a`` (float32 or float64, contiguous) viewed as signed integers of its width."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(_bits)
def _bits_impl(a):
    if a.dtype == types.float32:
        return lambda a: a.view(np.int32)
    return lambda a: a.view(np.int64)


@njit(inline="always")
def _key(v, mask):
    """An integer whose order is the order of the float whose bits are ``v`` (no NaN;
    -0.0 just below 0.0): negative floats have their magnitude bits flipped."""
    return v ^ mask if v < 0 else v


@njit(error_model="numpy")
def _first_max(a):
    """:func:`_max_span` of a span without NaN: the largest key in one pass (an integer
    maximum vectorises; the float comparison and select does not), the first block of 64
    holding it, its place there. -0.0 and 0.0 tie (compared as floats, neither is larger):
    the first zero of either sign is the first maximum."""
    b = _bits(a)
    mask = np.iinfo(b.dtype).max
    k = _key(b[0], mask)
    for i in range(1, len(b)):
        k = max(k, _key(b[i], mask))
    lo = 0
    while lo + 64 < len(b):
        hit = False
        for i in range(lo, lo + 64):
            hit |= _key(b[i], mask) == k
        if hit:
            break
        lo += 64
    i = lo
    while _key(b[i], mask) != k:
        i += 1
    if a[i] == 0:
        for j in range(i):
            if a[j] == 0:
                return a[j], j
    return a[i], i


@njit(inline="always")
def _better(v, i, bv, bi):
    """Whether candidate ``(v, i)`` beats the best ``(bv, bi)`` so far, for flat positions in
    any order: NaN beats numbers and the later NaN wins; else the larger value, then the
    earlier position. With ``i > bi`` this is the SPEC's scan rule ``v > bv or isnan(v)``."""
    if v != v:
        return bv == bv or i > bi
    if bv != bv:
        return False
    return v > bv or (v == bv and i < bi)


# ------------------------------------------------------------------ forward, planar layout


#: Most elements of the float64 row of :func:`_avg_fwd_cl_rows` (64 KiB).
_ROW_ELEMENTS = 1 << 13
#: Largest plane (elements) whose depth-window sums the planar average keeps (256 KiB).
_DEPTH_SUM_MAX = 1 << 15


@_kernel("in", "any", "int", "int", "int")
def _avg_fwd_planar(nt, x, out, D, H, W):
    for t in prange(nt):
        _avg_fwd_planar_part(np.int64(t), nt, x, out, D, H, W)


@njit(error_model="numpy")
def _avg_fwd_planar_part(t, nt, x, out, D, H, W):
    """``x``: (N*C, D*H*W); one work item per output row ``(n, c, od, oh)``. The rows of a
    window are added into one row (in the data type when one depth slice of at most 1024
    rows, else in float64), whose column windows are then summed in float64."""
    N, C, Do, Ho, Wo = out.shape
    HW = H * W
    if Do * Ho * Wo == 1:  # global pooling: nothing but a sum per plane
        g = _group(N * C, nt)
        size = D * HW
        xf = x.reshape(-1)
        for first in range(t * g, N * C, nt * g):
            _, _, n, c = _unravel(first, 1, N, C)
            for p in range(first, min(first + g, N * C)):
                # (the tests here, not in _sum_in: there LLVM made 7x7 planes 1.25x slower)
                if size < _LANE_SUM_MAX:
                    _prefetch(xf, (p + 1) * size + _PREFETCH_AHEAD)
                    s = np.float64(_lane_sum(xf, p * size, size))
                elif size <= _PARTIAL:
                    s = np.float64(_partial(x[p], 0, size))
                else:
                    s = _sum_in(x[p], 0, size)
                out[n, c, 0, 0, 0] = s / size
                _, _, n, c = _next(0, 0, n, c, 1, N, C)
        return
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    buf = np.empty(W, np.float64)
    cbuf = np.empty(W, x.dtype)
    dsum = np.empty(HW if D > 1 and HW <= _DEPTH_SUM_MAX else 0, np.float64)
    key = -1  # the (n, c, od) whose depth sums dsum holds
    xf = x.reshape(-1)
    items = N * C * Do * Ho
    g = _group(items, nt)
    for first in range(t * g, items, nt * g):
        n, c, od, oh = _unravel(first, C, Do, Ho)
        for _ in range(first, min(first + g, items)):
            xp, orow = x[n * C + c], out[n, c, od, oh]
            d0, d1, h0, h1 = ds[od], de[od], hs[oh], he[oh]
            nrows = (d1 - d0) * (h1 - h0)
            if Wo == 1:  # whole rows: each d slab of the window is one contiguous span
                s = 0.0
                for d in range(d0, d1):
                    s += _sum_in(xp, d * HW + h0 * W, d * HW + h1 * W)
                orow[0] = s / (nrows * W)
            elif nrows == 1:
                r0 = d0 * HW + h0 * W
                row = xp[r0 : r0 + W]
                at = (n * C + c) * (D * HW) + r0  # the row's start in xf
                for ow in range(Wo):
                    # short windows (1d: 40 values) call _partial here, where LLVM inlines it:
                    # through _sum_in they ran 1.4x slower on two threads, 2.1x on one
                    lo, hi = ws[ow], we[ow]
                    if _LANE_SUM_MIN <= hi - lo < _LANE_SUM_MAX:
                        _prefetch(xf, at + hi + _PREFETCH_AHEAD)
                        s = np.float64(_lane_sum(xf, at + lo, hi - lo))
                    elif hi - lo <= _PARTIAL:
                        s = np.float64(_partial(row, lo, hi))
                    else:
                        s = _sum_in(row, lo, hi)
                    orow[ow] = s / (hi - lo)
            elif nrows <= _PARTIAL and d1 - d0 == 1:
                # column sums of the window's rows in the data type (float32: no conversions
                # in the long loop; at most 1024 values each), each cell's added in float64
                lo = d0 * HW + h0 * W
                for w in range(W):
                    cbuf[w] = xp[np.uint64(lo + w)]
                for _ in range(1, h1 - h0):
                    lo += W
                    for w in range(W):
                        cbuf[w] += xp[np.uint64(lo + w)]
                for ow in range(Wo):
                    s = _sum(cbuf, ws[ow], we[ow])
                    orow[ow] = s / (nrows * (we[ow] - ws[ow]))
            else:  # add the window's rows into one row, then sum its column windows
                if d1 - d0 > 1 and HW <= _DEPTH_SUM_MAX:
                    # several depth slices: add them once per (n, c, od) into a plane of float64
                    # sums (long vector loops); the window's rows are that plane's rows
                    if key != (n * C + c) * Do + od:
                        key = (n * C + c) * Do + od
                        for i in range(HW):
                            dsum[i] = xp[np.uint64(d0 * HW + i)]
                        for d in range(d0 + 1, d1):
                            for i in range(HW):
                                dsum[i] += xp[np.uint64(d * HW + i)]
                    for w in range(W):
                        buf[w] = dsum[np.uint64(h0 * W + w)]
                    for h in range(h0 + 1, h1):
                        for w in range(W):
                            buf[w] += dsum[np.uint64(h * W + w)]
                else:
                    row = xp[d0 * HW + h0 * W : d0 * HW + h0 * W + W]
                    for w in range(W):
                        buf[w] = row[w]
                    for d in range(d0, d1):
                        for h in range(h0, h1):
                            if d != d0 or h != h0:
                                row = xp[d * HW + h * W : d * HW + h * W + W]
                                for w in range(W):
                                    buf[w] += row[w]
                for ow in range(Wo):
                    s = _sum(buf, ws[ow], we[ow])
                    orow[ow] = s / (nrows * (we[ow] - ws[ow]))
            n, c, od, oh = _next(n, c, od, oh, C, Do, Ho)


@_kernel("in", "any", "any", "in", "int", "int", "int")
def _max_fwd_planar(nt, x, out, indices, itype, D, H, W):
    for t in prange(nt):
        _max_fwd_planar_part(np.int64(t), nt, x, out, indices, itype, D, H, W)


@njit(error_model="numpy")
def _max_fwd_planar_part(t, nt, x, out, indices, itype, D, H, W):
    """``x``: (N*C, D*H*W); one work item per output row ``(n, c, od, oh)``. Positions are
    held as ``itype`` (see :func:`_position_type`)."""
    N, C, Do, Ho, Wo = out.shape
    HW = H * W
    if Do * Ho * Wo == 1:  # global pooling: one scan per plane
        first, last = _chunk(t, N * C, nt)
        _, _, n, c = _unravel(first, 1, N, C)
        for p in range(first, last):
            bv, bi = _max_span(x[p])
            out[n, c, 0, 0, 0], indices[n, c, 0, 0, 0] = bv, bi
            _, _, n, c = _next(0, 0, n, c, 1, N, C)
        return
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    bv_ = np.empty(W, x.dtype)  # column maxima of the window's rows, and their positions
    bi_ = np.empty(W, itype.dtype)
    first, last = _chunk(t, N * C * Do * Ho, nt)
    n, c, od, oh = _unravel(first, C, Do, Ho)
    for _ in range(first, last):
        xp, orow, irow = x[n * C + c], out[n, c, od, oh], indices[n, c, od, oh]
        d0, d1, h0, h1 = ds[od], de[od], hs[oh], he[oh]
        if Wo == 1:  # whole rows: one contiguous span per d slab, merged in scan order
            lo = d0 * HW + h0 * W
            bv, bi = _max_span(xp[lo : lo + (h1 - h0) * W])
            bi += lo
            for d in range(d0 + 1, d1):
                lo = d * HW + h0 * W
                v, i = _max_span(xp[lo : lo + (h1 - h0) * W])
                if v > bv or v != v:
                    bv, bi = v, lo + i
            orow[0], irow[0] = bv, bi
        elif (d1 - d0) * (h1 - h0) == 1:
            lo = d0 * HW + h0 * W
            row = xp[lo : lo + W]
            for ow in range(Wo):
                bv, bi = _max_span(row[ws[ow] : we[ow]])
                orow[ow], irow[ow] = bv, lo + ws[ow] + bi
        else:
            # Column maxima over the window's rows (scan order within each column), then
            # per output cell the best column; _better breaks ties by flat position, which
            # is exactly the row-major scan order of the whole window.
            # Updated in place by a select that is always stored (as in _max_cl_cells).
            lo = d0 * HW + h0 * W
            row = xp[lo : lo + W]
            for w in range(W):
                bv_[w] = row[w]
                bi_[w] = lo + w
            for d in range(d0, d1):
                for h in range(h0, h1):
                    if d != d0 or h != h0:
                        lo = d * HW + h * W
                        row = xp[lo : lo + W]
                        for w in range(W):
                            v, old_v = row[w], bv_[w]
                            take = (v > old_v) | (v != v)
                            bv_[w] = v if take else old_v
                            bi_[w] = lo + w if take else bi_[w]
            for ow in range(Wo):
                bv, bi = bv_[ws[ow]], bi_[ws[ow]]
                for w in range(ws[ow] + 1, we[ow]):
                    if _better(bv_[w], bi_[w], bv, bi):
                        bv, bi = bv_[w], bi_[w]
                orow[ow], irow[ow] = bv, bi
        n, c, od, oh = _next(n, c, od, oh, C, Do, Ho)


# ------------------------------------------------------------ forward, channels-last layout
# One work item per output cell and block of ``cb`` channels: blocks outermost, so that a
# thread's items share a block and the counters stay four deep. Every loop over channels is
# a pass through memory, and small windows (upsampling) have few elements to amortise a
# pass over: the first window row starts the sums (no zero-fill pass) and the last one goes
# straight to the output (no store pass). ``oflat`` is the output as a flat C-contiguous
# channels-last array when it is one (else empty: results go through a buffer, stored
# through ``out``'s strides).


@njit(inline="always")
def _pair(x, i, C, j):
    """Channel ``j`` of a window row of two positions at ``x[i]``, summed in x's precision."""
    return x[np.uint64(i + j)] + x[np.uint64(i + C + j)]


@njit(inline="always")
def _avg_cl_row(x, part, i, nw, C, m):
    """``part[:m]``: the sum of the ``nw`` >= 2 positions of the row at ``x[i]``, in x's
    precision and in order: four positions (two if fewer), then passes over ``part`` of
    eight, four, two and one. A pass streams from up to eight places at once and costs a
    load and a store of ``part``: fewer passes ran 7x7 global windows (one merged row of
    49) 1.05x faster, rows of 8-9 positions (100x100 -> 13) 1.08x faster. (Choosing one
    or two first positions for fewest passes made rows of 8 1.1x slower.)"""
    if nw >= 4:
        for j in range(m):
            part[j] = (x[np.uint64(i + j)] + x[np.uint64(i + C + j)]
                       + x[np.uint64(i + 2 * C + j)] + x[np.uint64(i + 3 * C + j)])
        w0 = 4
    else:
        for j in range(m):
            part[j] = _pair(x, i, C, j)
        w0 = 2
    w = w0 + (nw - w0) // 8 * 8
    for v in range(w0, w, 8):
        q = i + v * C
        for j in range(m):
            part[j] = (part[j] + x[np.uint64(q + j)] + x[np.uint64(q + C + j)]
                       + x[np.uint64(q + 2 * C + j)] + x[np.uint64(q + 3 * C + j)]
                       + x[np.uint64(q + 4 * C + j)] + x[np.uint64(q + 5 * C + j)]
                       + x[np.uint64(q + 6 * C + j)] + x[np.uint64(q + 7 * C + j)])
    if w + 4 <= nw:
        q = i + w * C
        for j in range(m):
            part[j] = (part[j] + x[np.uint64(q + j)] + x[np.uint64(q + C + j)]
                       + x[np.uint64(q + 2 * C + j)] + x[np.uint64(q + 3 * C + j)])
        w += 4
    if w + 2 <= nw:
        q = i + w * C
        for j in range(m):
            part[j] = part[j] + x[np.uint64(q + j)] + x[np.uint64(q + C + j)]
        w += 2
    if w < nw:
        q = i + w * C
        for j in range(m):
            part[j] += x[np.uint64(q + j)]


@njit(error_model="numpy")
def _avg_cl_window(x, dst, at, acc, part, n, d0, d1, h0, h1, w0, nw, c0, m, scale, D, H, W, C):
    """One cell of :func:`_avg_fwd_cl_part`, any window: each window row summed in x's
    precision (``part``), the rows in float64 (``acc``), the mean stored at ``dst[at:]``;
    one loop per (first/middle/last row) x (row of 1, 2, more positions) case. Rows of up
    to ``_PARTIAL`` positions: longer ones take :func:`_avg_cl_long_rows`."""
    rows = (d1 - d0) * (h1 - h0)
    r = 0
    for d in range(d0, d1):
        for h in range(h0, h1):
            # Unsigned indices: no wraparound check, and no slice to build per row.
            i = (((n * D + d) * H + h) * W + w0) * C + c0
            if nw > 2:
                _avg_cl_row(x, part, i, nw, C, m)
            r += 1
            # the row's sum is x[i + j] (+ x[i + C + j]) or part[j], in x's precision
            if r == 1 and r == rows:
                if nw == 1:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (0.0 + x[np.uint64(i + j)]) * scale
                elif nw == 2:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (0.0 + _pair(x, i, C, j)) * scale
                else:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (0.0 + part[j]) * scale
            elif r == 1:
                if nw == 1:
                    for j in range(m):
                        acc[j] = 0.0 + x[np.uint64(i + j)]
                elif nw == 2:
                    for j in range(m):
                        acc[j] = 0.0 + _pair(x, i, C, j)
                else:
                    for j in range(m):
                        acc[j] = 0.0 + part[j]
            elif r < rows:
                if nw == 1:
                    for j in range(m):
                        acc[j] += x[np.uint64(i + j)]
                elif nw == 2:
                    for j in range(m):
                        acc[j] += _pair(x, i, C, j)
                else:
                    for j in range(m):
                        acc[j] += part[j]
            else:
                if nw == 1:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (acc[j] + x[np.uint64(i + j)]) * scale
                elif nw == 2:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (acc[j] + _pair(x, i, C, j)) * scale
                else:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (acc[j] + part[j]) * scale


@njit(error_model="numpy")
def _avg_cl_long_rows(x, dst, at, acc, part, n, d0, d1, h0, h1, w0, nw, c0, m, scale, D, H, W, C):
    """:func:`_avg_cl_window` for rows of more than ``_PARTIAL`` positions: each piece of
    ``_PARTIAL`` positions summed in x's precision by :func:`_avg_cl_row` (1.34x faster than
    one position per pass for 4x256x65536 -> 1, the same bits), the pieces in float64 (one
    float32 accumulator over a row of 2**18 positions was off by 5e-4)."""
    for j in range(m):
        acc[j] = 0.0
    for d in range(d0, d1):
        for h in range(h0, h1):
            row = (((n * D + d) * H + h) * W + w0) * C + c0
            for p0 in range(0, nw, _PARTIAL):
                k = min(_PARTIAL, nw - p0)  # positions of this piece
                if k >= 2:
                    _avg_cl_row(x, part, row + p0 * C, k, C, m)
                    for j in range(m):
                        acc[j] += part[j]
                else:
                    for j in range(m):
                        acc[j] += x[np.uint64(row + p0 * C + j)]
    for j in range(m):
        dst[np.uint64(at + j)] = acc[j] * scale


#: Most positions of a window of whole rows that the channels-last average sums as one row
#: (in the input's precision), and the positions per pass of :func:`_run_sums` over them
#: (a stream each: passes of 8 to 25 ran alike, 49 at once 1.07x slower from memory).
_CL_MERGED = 64
_RUN_PASS = 16


@njit(error_model="numpy")
def _avg_cl_blocks(x, dst, at, acc, part, n, d0, d1, h0, h1, w0, nw, c0, m, scale, D, H, W, C,
                   run):
    """:func:`_avg_cl_window`, with the same bits, its channels in blocks of four vectors
    summed in registers where the blocks' scans of the window read memory well: windows of
    whole rows merged into one ``run`` of at most ``_CL_MERGED`` positions (global windows;
    :func:`_run_sums`, passes of ``_RUN_PASS`` positions), or windows of channels of up to
    256 bytes (two blocks of float32; :func:`_window_means`). The channels left over go to
    it, and so do other windows, whose rows it reads in order once (measured, float32, 2
    threads: 7x7 global windows of 2048 channels 1.05-1.1x faster from the cache and from
    memory, caches emptied first, where one pass of all 49 positions ran 1.03x and 0.97x;
    224x224 -> 7 of 64 channels 1.06-1.08x, 100x100 -> 13 1.01-1.05x; in registers,
    windows of 8x8 positions of 256 and 512 channels ran 0.8-0.97x, 64x64 -> 2, 3, 6 of 512
    channels 0.6-0.85x, one-row windows of 41 positions of 256 channels 0.83-0.86x)."""
    block = 128 // x.itemsize
    full = m // block * block
    if not run and m * x.itemsize > 256:
        full = 0
    i = (((n * D + d0) * H + h0) * W + w0) * C + c0
    if run:  # passes of _RUN_PASS positions across the blocks
        for p0 in range(0, nw, _RUN_PASS):
            k = min(_RUN_PASS, nw - p0)
            for j0 in range(0, full, block):
                _run_sums(x, i + p0 * C + j0, k, C, dst, at + j0, p0 == 0, p0 + k == nw, scale)
    else:
        for j0 in range(0, full, block):
            _window_means(x, i + j0, d1 - d0, H * W * C, h1 - h0, W * C, nw, C, scale, dst,
                          at + j0)
    if full < m:
        _avg_cl_window(x, dst, at + full, acc, part, n, d0, d1, h0, h1, w0, nw, c0 + full,
                       m - full, scale, D, H, W, C)


@_kernel("in", "any", "out", "int", "int", "int", "int", "int")
def _avg_fwd_cl(nt, x, out, oflat, planar, D, H, W, cb):
    for t in prange(nt):
        _avg_fwd_cl_part(np.int64(t), nt, x, out, oflat, planar, D, H, W, cb)


@njit(error_model="numpy")
def _avg_fwd_cl_part(t, nt, x, out, oflat, planar, D, H, W, cb):
    """``x``: (N*D*H*W*C,), channels innermost. A window row is first summed in the input's
    precision (half the vector work of float64), then added to the float64 sums.

    Windows of up to two rows of up to two positions take one channel loop here, in x's
    precision; larger ones go to :func:`_avg_cl_window`. The small windows' bits are those
    of the float64 arithmetic of the larger ones, ``((0.0 + row) + row) * (1.0 / size)``,
    with the same leading zero (-0.0 + 0 is +0.0; a signalling NaN comes out quiet):

    - one float64 addition of two float32 values, rounded to float32, is their float32 sum
      (a double rounding from 53 to 24 bits is harmless for one operation: 53 >= 2 * 24 + 2);
    - the size is 1, 2 or 4, so the scaling is exact, unless the mean is subnormal. There
      the sum is below 2**-124, a multiple of 2**-149: exact in float32, except a quarter of
      a sum in [2**-125, 2**-124), which float32 rounds to even on the 2**-148 grid first;
      rounding an integer m to even at m/2 and then at m/4 gives m/4 rounded to even, for
      each m mod 4.

    Except where the float32 sum overflows: then the mean is inf, as PyTorch's float32 sums
    give it. Half the vector work (32x64x5x5 -> 7: 1.2-1.3x faster).

    The channel loop is written out for each case: with the case tested inside one loop,
    LLVM neither splits the loop nor vectorises it (10-30% slower, measured). Results go
    straight to ``oflat`` when the output is contiguous channels-last, else into ``buf``,
    stored a run of cells at a time (:func:`_store_run`; into a C-order output,
    ``planar``, ``oflat`` is its flat view, and threads take whole planes where there are
    enough (:func:`_planar_group`), so that few cache lines are written by two threads)."""
    N, C, Do, Ho, Wo = out.shape
    blocks = (C + cb - 1) // cb
    cells = N * Do * Ho * Wo
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    acc = np.empty(cb, np.float64)
    part = np.empty(cb, x.dtype)
    zero, half, quarter = x.dtype.type(0), x.dtype.type(0.5), x.dtype.type(0.25)
    direct = len(oflat) > 0 and not planar
    held = min(Do * Ho * Wo if planar else Wo, _HELD_CELLS)
    buf = np.empty(0 if direct else held * cb, out.dtype)
    dst = oflat if direct else buf
    total = blocks * cells
    g = _planar_group(total, nt, blocks * N, Do * Ho * Wo) if planar else _group(total, nt)
    for first in range(t * g, total, nt * g):
        last = min(first + g, total)
        b = first // cells
        k = first - b * cells
        n, od, oh, ow = _unravel(k, Do, Ho, Wo)
        pend = 0  # cells in ``buf``, not yet stored
        for item in range(first, last):
            c0 = b * cb
            m = min(cb, C - c0)
            w0, w1 = ws[ow], we[ow]
            nw = w1 - w0
            rows = (de[od] - ds[od]) * (he[oh] - hs[oh])
            scale = 1.0 / (rows * nw)
            at = k * C + c0 if direct else pend * m
            if rows <= 2 and nw <= 2:
                # up to two rows of one or two positions (upsampling, small maps): one loop, the
                # same sums in the same order as the general case (whose per-cell set-up of
                # several loops costs more than the additions here), in x's precision
                i = (((n * D + ds[od]) * H + hs[oh]) * W + w0) * C + c0
                i2 = i + (H * W * C if de[od] - ds[od] == 2 else W * C)  # the second row
                if rows == 1 and nw == 1:
                    for j in range(m):
                        dst[np.uint64(at + j)] = zero + x[np.uint64(i + j)]
                elif rows == 1:
                    for j in range(m):
                        dst[np.uint64(at + j)] = (zero + _pair(x, i, C, j)) * half
                elif nw == 1:
                    for j in range(m):
                        dst[np.uint64(at + j)] = ((zero + x[np.uint64(i + j)])
                                                  + x[np.uint64(i2 + j)]) * half
                else:
                    for j in range(m):
                        dst[np.uint64(at + j)] = ((zero + _pair(x, i, C, j))
                                                  + _pair(x, i2, C, j)) * quarter
            elif nw == W and de[od] - ds[od] == 1 and rows * W <= _CL_MERGED:
                # whole rows: one run of positions, summed as one row (7x7 global windows: 1.1x)
                _avg_cl_blocks(x, dst, at, acc, part, n, ds[od], ds[od] + 1, hs[oh], hs[oh] + 1,
                               0, rows * W, c0, m, scale, D, H, W, C, True)
            elif nw <= _PARTIAL:
                _avg_cl_blocks(x, dst, at, acc, part, n, ds[od], de[od], hs[oh], he[oh], w0, nw,
                               c0, m, scale, D, H, W, C, False)
            else:
                _avg_cl_long_rows(x, dst, at, acc, part, n, ds[od], de[od], hs[oh], he[oh], w0, nw,
                                  c0, m, scale, D, H, W, C)
            if not direct:
                pend += 1
                if pend == held or item == last - 1 or _run_ends(planar, od, oh, ow + 1, out):
                    _store_run(out, oflat, planar, buf, n, c0, m, od, oh, ow + 1, pend)
                    pend = 0
            k += 1
            n, od, oh, ow = _next(n, od, oh, ow, Do, Ho, Wo)
            if n == N:
                n, b, k = 0, b + 1, 0


@_kernel("in", "any", "out", "int", "int", "int", "int")
def _avg_fwd_cl_rows(nt, x, out, oflat, D, H, W, cb):
    for t in prange(nt):
        _avg_fwd_cl_rows_part(np.int64(t), nt, x, out, oflat, D, H, W, cb)


@njit(error_model="numpy")
def _avg_fwd_cl_rows_part(t, nt, x, out, oflat, D, H, W, cb):
    """Volumes (3d), channels-last: one work item per output row ``(n, od, oh)`` and block of
    ``cb`` channels. The window's (d, h) rows -- W positions x cb channels each, contiguous
    when cb == C -- are added in float64 into one row (long vector loops, each input row
    read once per output row, where :func:`_avg_fwd_cl_part` runs eight channel loops per
    cell and row), then each cell sums its positions of that row."""
    N, C, Do, Ho, Wo = out.shape
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    blocks = (C + cb - 1) // cb
    row = np.empty(W * cb, np.float64)
    acc = np.empty(cb, np.float64)
    direct = len(oflat) > 0
    first, last = _chunk(t, blocks * N * Do * Ho, nt)
    b, n, od, oh = _unravel(first, N, Do, Ho)
    for _ in range(first, last):
        c0 = b * cb
        m = min(cb, C - c0)
        nrows = (de[od] - ds[od]) * (he[oh] - hs[oh])
        start = True  # the first row is copied: no zero fill
        for d in range(ds[od], de[od]):
            for h in range(hs[oh], he[oh]):
                i = ((n * D + d) * H + h) * W * C + c0
                if m == C:  # the whole row is one contiguous run
                    if start:
                        for k in range(W * C):
                            row[k] = x[np.uint64(i + k)]
                    else:
                        for k in range(W * C):
                            row[k] += x[np.uint64(i + k)]
                else:
                    for w in range(W):
                        r = row[w * m : w * m + m]
                        if start:
                            for j in range(m):
                                r[j] = x[np.uint64(i + w * C + j)]
                        else:
                            for j in range(m):
                                r[j] += x[np.uint64(i + w * C + j)]
                start = False
        for ow in range(Wo):
            w0, w1 = ws[ow], we[ow]
            for j in range(m):
                acc[j] = 0.0 + row[np.uint64(w0 * m + j)]  # +0.0 for an all -0.0 window
            for w in range(w0 + 1, w1):
                for j in range(m):
                    acc[j] += row[np.uint64(w * m + j)]
            scale = 1.0 / (nrows * (w1 - w0))
            if direct:
                at = (((n * Do + od) * Ho + oh) * Wo + ow) * C + c0
                for j in range(m):
                    oflat[np.uint64(at + j)] = acc[j] * scale
            else:  # (stored by cells as below ran as fast as by runs, for a row of a volume)
                o = out[n, c0 : c0 + m, od, oh, ow]
                for j in range(m):
                    o[j] = acc[j] * scale
        b, n, od, oh = _next(b, n, od, oh, N, Do, Ho)


# One work item per output cell and block of channels, as above.


@_kernel("in", "any", "any", "out", "out", "int", "in", "int", "int", "int", "int")
def _max_fwd_cl(nt, x, out, indices, oflat, iflat, planar, itype, D, H, W, cb):
    for t in prange(nt):
        _max_fwd_cl_part(np.int64(t), nt, x, out, indices, oflat, iflat, planar, itype, D, H, W,
                         cb)


@njit(error_model="numpy")
def _max_fwd_cl_part(t, nt, x, out, indices, oflat, iflat, planar, itype, D, H, W, cb):
    """``x``: (N*D*H*W*C,), channels innermost. Windows of up to two rows of up to two
    positions (upsampling, small maps) are scanned in one loop across the channels, the
    maximum and position held in registers; larger ones by :func:`_max_cl_cells`, the
    neighbouring cells of an output row together. Results go straight to ``oflat`` and
    ``iflat`` when the outputs are contiguous channels-last, else into ``vbuf`` and ``ibuf``,
    stored as :func:`_avg_fwd_cl_part` stores its ``buf``."""
    N, C, Do, Ho, Wo = out.shape
    blocks = (C + cb - 1) // cb
    cells = N * Do * Ho * Wo
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    best = np.empty(Wo * cb, x.dtype)  # running maxima and positions of a row of cells
    where = np.empty(Wo * cb, itype.dtype)
    direct = len(oflat) > 0 and not planar
    held = Wo if direct else min(Do * Ho * Wo if planar else Wo, _HELD_CELLS)
    vbuf = np.empty(0 if direct else held * cb, out.dtype)
    ibuf = np.empty(0 if direct else held * cb, np.int64)
    vout = oflat if direct else vbuf
    iout = iflat if direct else ibuf
    total = blocks * cells
    g = _planar_group(total, nt, blocks * N, Do * Ho * Wo) if planar else _group(total, nt)
    for first in range(t * g, total, nt * g):
        last = min(first + g, total)
        b = first // cells
        k = first - b * cells
        n, od, oh, ow = _unravel(k, Do, Ho, Wo)
        item = first
        pend = 0  # cells in the buffers, not yet stored
        while item < last:
            c0 = b * cb
            m = min(cb, C - c0)
            nw = we[ow] - ws[ow]
            rows = (de[od] - ds[od]) * (he[oh] - hs[oh])
            if rows * nw > 2 and not (rows == 2 and nw == 2):
                # the cells of this output row from here on that scan a window too (all of them
                # for windows of three rows or more), up to the end of this group of items
                ow1 = ow + 1
                while (ow1 < Wo and item + ow1 - ow < last and pend + ow1 - ow < held
                       and (rows > 2 or we[ow1] - ws[ow1] > 2)):
                    ow1 += 1
                _max_cl_cells(x, best, where, n * D * H * W, ds[od], de[od], hs[oh], he[oh], ws,
                              we, ow, ow1, c0, m, H, W, C)
                for q in range(ow1 - ow):
                    at = (k + q) * C + c0 if direct else (pend + q) * m
                    for j in range(m):
                        vout[np.uint64(at + j)] = best[np.uint64(q * m + j)]
                        iout[np.uint64(at + j)] = where[np.uint64(q * m + j)]
                done = ow1 - ow
            else:
                at = k * C + c0 if direct else pend * m
                f0 = (ds[od] * H + hs[oh]) * W + ws[ow]  # the window's first position
                f2 = f0 + (H * W if de[od] - ds[od] == 2 else W)  # its second row's, if it has one
                i = (n * D * H * W + f0) * C + c0
                if rows * nw == 1:
                    for j in range(m):
                        vout[np.uint64(at + j)] = x[np.uint64(i + j)]
                        iout[np.uint64(at + j)] = f0
                elif rows * nw == 2:  # positions f0 and f1, in scan order
                    f1 = f0 + 1 if nw == 2 else f2
                    i1 = i + (f1 - f0) * C
                    for j in range(m):
                        v, a = x[np.uint64(i + j)], x[np.uint64(i1 + j)]
                        take = (a > v) | (a != a)
                        vout[np.uint64(at + j)] = a if take else v
                        iout[np.uint64(at + j)] = f1 if take else f0
                else:  # two rows of two positions: f0, f0 + 1, f2, f2 + 1
                    i2 = i + (f2 - f0) * C
                    for j in range(m):
                        v, p = x[np.uint64(i + j)], f0
                        a = x[np.uint64(i + C + j)]
                        take = (a > v) | (a != a)
                        v, p = (a, f0 + 1) if take else (v, p)
                        a = x[np.uint64(i2 + j)]
                        take = (a > v) | (a != a)
                        v, p = (a, f2) if take else (v, p)
                        a = x[np.uint64(i2 + C + j)]
                        take = (a > v) | (a != a)
                        vout[np.uint64(at + j)] = a if take else v
                        iout[np.uint64(at + j)] = f2 + 1 if take else p
                done = 1
            if not direct:
                pend += done
                if pend == held or item + done == last or _run_ends(planar, od, oh, ow + done,
                                                                     out):
                    _store_run(out, oflat, planar, vbuf, n, c0, m, od, oh, ow + done, pend)
                    _store_run(indices, iflat, planar, ibuf, n, c0, m, od, oh, ow + done, pend)
                    pend = 0
            for _ in range(done):
                item += 1
                k += 1
                n, od, oh, ow = _next(n, od, oh, ow, Do, Ho, Wo)
                if n == N:
                    n, b, k = 0, b + 1, 0


#: Most output cells the channels-last forwards hold before storing them into an output
#: that is not contiguous channels-last: a run along a row, or along a plane of a C-order
#: output.
_HELD_CELLS = 64


@njit(inline="always")
def _planar_group(items, nt, planes, plane):
    """:func:`_group` for the channels-last forwards into a C-order result, whose groups'
    first and last cells share cache lines of every channel with the neighbouring groups,
    which other threads write: whole planes when there are two or more per thread, else
    one contiguous share per thread (4x128x28x28 -> 14 ran 1.2x faster on 2 threads than on
    1 by groups of cells, 2.2x by whole planes; 1x2048x7x7 -> 2 2x faster in shares)."""
    if planes >= 2 * nt:
        return -(-_group(items, nt) // plane) * plane
    return -(-items // nt)


@njit(inline="always")
def _run_ends(planar, od, oh, ow_end, out):
    """Whether a run of held cells that ends before cell ``(od, oh, ow_end)`` must be stored
    now: at the end of a plane for a C-order output (where a channel's cells of a plane are
    one run), else at the end of an output row."""
    _, _, Do, Ho, Wo = out.shape
    return ow_end == Wo and (not planar or (oh == Ho - 1 and od == Do - 1))


@njit(inline="always")
def _transpose(dst, at, stride, buf, m, cells):
    """``dst[at + j * stride + q] = buf[q * m + j]`` for ``j < m``, ``q < cells``: cells of
    ``m`` channels side by side, stored as a run of cells per channel, in blocks of 4 cells
    by 4 channels moved as vectors."""
    q = 0
    while q + 4 <= cells:
        for j in range(0, m - 3, 4):
            _transpose4(buf, q * m + j, m, dst, at + j * stride + q, stride)
        for j in range(m - m % 4, m):
            for k in range(q, q + 4):
                dst[np.uint64(at + j * stride + k)] = buf[np.uint64(k * m + j)]
        q += 4
    for j in range(m):
        for k in range(q, cells):
            dst[np.uint64(at + j * stride + k)] = buf[np.uint64(k * m + j)]


@njit(inline="always")
def _store_run(out, oflat, planar, buf, n, c0, m, od, oh, ow_end, cells):
    """``out[n, c0:c0 + m]`` at the ``cells`` cells that end before ``(od, oh, ow_end)`` (in
    the same plane; in the same row unless ``planar``) = ``buf``, ``m`` channels a cell side
    by side. Stored channel by channel: each channel's cells are a run along the output's
    rows, where storing cell by cell writes a cache line per channel and cell (4x128x28x28
    -> 14 into a C-order result: 4x the kernel's own time)."""
    if planar:  # ``oflat`` is ``out``'s flat C-order view
        _, C, Do, Ho, Wo = out.shape
        plane = Do * Ho * Wo
        at = (n * C + c0) * plane + (od * Ho + oh) * Wo + ow_end - cells
        _transpose(oflat, at, plane, buf, m, cells)
    else:
        ow0 = ow_end - cells
        for j in range(m):
            for q in range(cells):
                out[n, c0 + j, od, oh, ow0 + q] = buf[np.uint64(q * m + j)]


@njit(error_model="numpy")
def _max_cl_cells(x, best, where, plane, d0, d1, h0, h1, ws, we, ow0, ow1, c0, m, H, W, C):
    """Cells ``ow0:ow1`` of an output row, any windows, their results left in ``best`` and
    ``where`` (``m`` channels a cell, side by side). Each input row of the windows is read
    once, in order, every cell taking on its positions of that row: so each cell still
    scans its window in order. Positions are held as ``where``'s type while scanning, as
    in :func:`_max_fwd_planar`. The running maxima are updated in place by a select that
    is always stored (a conditional store would be a masked one, which is slow)."""
    for q in range(ow1 - ow0):
        first = (d0 * H + h0) * W + ws[ow0 + q]
        i = (plane + first) * C + c0
        for j in range(m):
            best[np.uint64(q * m + j)] = x[np.uint64(i + j)]
            where[np.uint64(q * m + j)] = first
    for d in range(d0, d1):
        for h in range(h0, h1):
            for q in range(ow1 - ow0):
                bq, wq = best[q * m : q * m + m], where[q * m : q * m + m]
                w0 = ws[ow0 + q]
                for w in range(w0 + 1 if d == d0 and h == h0 else w0, we[ow0 + q]):
                    flat = (d * H + h) * W + w
                    i = (plane + flat) * C + c0
                    for j in range(m):
                        v, bv = x[np.uint64(i + j)], bq[j]
                        take = (v > bv) | (v != v)
                        bq[j] = v if take else bv
                        wq[j] = flat if take else wq[j]


# ----------------------------------------------------------------- backward, planar layout


@_kernel("in", "out", "int", "int", "int", "int", "int", "int")
def _avg_bwd_planar(nt, go, gi, Do, Ho, Wo, D, H, W):
    for t in prange(nt):
        _avg_bwd_planar_part(np.int64(t), nt, go, gi, Do, Ho, Wo, D, H, W)


@njit(error_model="numpy")
def _avg_bwd_planar_part(t, nt, go, gi, Do, Ho, Wo, D, H, W):
    """``go``: (N*C, Do*Ho*Wo), ``gi``: (N*C, D*H*W); one work item per input row.

    Along W the row is piecewise constant (runs of positions covered by the same cells): the
    run values are computed when the covering cells change, and the row is a run fill; the
    next rows that the same cells cover copy it (one long vector loop, where a fill is a
    loop per run).
    """
    P = gi.shape[0]
    if Do * Ho * Wo == 1:  # global pooling: one value per plane, the planes split evenly
        zero = gi.dtype.type(0)
        first, last = _chunk(t, P, nt)
        for p in range(first, last):  # (the general case's terms: 0 + (0 + g / size))
            gi[p, :] = zero + (zero + gi.dtype.type(go[p, 0] * (1.0 / (D * H * W))))
        return
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    cds, cde = _bounds(Do, D)  # output cells covering each input position
    chs, che = _bounds(Ho, H)
    starts, cfirst, cend = _runs(W, Wo)
    acc = np.empty(Wo, gi.dtype)
    values = np.empty(len(cfirst), gi.dtype)
    key = (-1, -1, -1, -1, -1)
    filled = 0  # the row (d * H + h) of plane key[0] last filled from ``values``
    first, last = _chunk(t, P * D * H, nt)
    _, p, d, h = _unravel(first, P, D, H)
    for _ in range(first, last):
        dst = gi[p, (d * H + h) * W : (d * H + h + 1) * W]
        here = (p, cds[d], cde[d], chs[h], che[h])
        if here == key:  # the cells of the row filled last: a copy of it
            src = gi[p, filled * W : (filled + 1) * W]
            for w in range(W):
                dst[w] = src[w]
        else:
            key = here
            acc[:] = 0.0
            for od in range(cds[d], cde[d]):
                for oh in range(chs[h], che[h]):
                    size = (de[od] - ds[od]) * (he[oh] - hs[oh])
                    g = go[p, (od * Ho + oh) * Wo : (od * Ho + oh + 1) * Wo]
                    for ow in range(Wo):
                        acc[ow] += acc.dtype.type(g[ow] * (1.0 / (size * (we[ow] - ws[ow]))))
            for r in range(len(values)):  # in order, as _avg_bwd_cl adds them
                v = acc.dtype.type(0)
                for ow in range(cfirst[r], cend[r]):
                    v += acc[ow]
                values[r] = v
            for r in range(len(values)):
                dst[starts[r] : starts[r + 1]] = values[r]  # (a fill loop: 10x slower)
            filled = d * H + h
        _, p, d, h = _next(0, p, d, h, P, D, H)


@njit(error_model="numpy")
def _max_bwd_planes(t, nt, go, indices, gi, C, sc):
    """Whole planes, four at a time: the additions of one plane into the same element wait on
    each other's stores, four planes' additions do not. ``gi``: (N*C, D*H*W); ``go`` and
    ``indices`` flat, element (n, c, cell) at ``(n * C * cells + c * sc) + cell * sp``.
    An index outside the plane is skipped and counted: returns the count (the host raises)."""
    P, size = gi.shape
    cells = len(go) // P
    sp = C if sc == 1 else 1
    buf = np.empty((size, 4), gi.dtype)
    base = np.empty(4, np.int64)
    missed = 0
    first, last = _chunk(t, P, nt)
    p = first
    while p < last:
        k_end = min(4, last - p)
        for k in range(4):
            q = min(p + k, last - 1)  # a short group repeats its last plane, unstored
            base[k] = (q - q % C) * cells + (q % C) * sc
        for i in range(size):
            for k in range(4):
                buf[i, k] = 0.0
        for o in range(cells):
            for k in range(4):
                at = base[k] + o * sp
                ix = indices[at]
                if np.uint64(ix) < np.uint64(size):  # (as unsigned, a negative index is huge)
                    buf[ix, k] += go[at]
                else:
                    missed += 1
        for k in range(k_end):
            for i in range(size):
                gi[p + k, i] = buf[i, k]
        p += 4
    return missed


@_kernel("in", "in", "out", "int", "int", counts=True)
def _max_bwd_whole(nt, go, indices, gi, C, sc):
    missed = 0
    for t in prange(nt):
        missed += _max_bwd_whole_part(np.int64(t), nt, go, indices, gi, C, sc)
    return missed


@njit(error_model="numpy")
def _max_bwd_whole_part(t, nt, go, indices, gi, C, sc):
    return _max_bwd_planes(t, nt, go, indices, gi, C, sc)


@_kernel("in", "in", "out", "int", "int", "int", "int", "int", "int", "int", counts=True)
def _max_bwd_planar(nt, go, indices, gi, Do, Ho, Wo, D, H, W, R):
    found = 0
    for t in prange(nt):
        found += _max_bwd_planar_part(np.int64(t), nt, go, indices, gi, Do, Ho, Wo, D, H, W, R)
    return found


@njit(error_model="numpy")
def _max_bwd_planar_part(t, nt, go, indices, gi, Do, Ho, Wo, D, H, W, R):
    """One work item per slab of ``R`` input rows of a plane (L1-sized), zeroed in place:
    every output cell that may cover the slab adds its gradient at its index when that falls
    in the slab, in output order (the order of the SPEC's loop), in the data type. Flat
    indices. Planes that are one slab go to :func:`_max_bwd_plane_part`, unless pooled to a
    single cell (the one-pass write below).

    Returns the count of cells added: one whose index lies outside the rows its window
    covers is in no slab that looks for it, and the host then falls back to a scatter."""
    P = gi.shape[0]
    size, cells = D * H * W, Do * Ho * Wo
    gof, ixf, gif = go.reshape(go.size), indices.reshape(indices.size), gi.reshape(gi.size)
    slabs = (D * H + R - 1) // R
    cds, cde = _bounds(Do, D)
    chs, che = _bounds(Ho, H)
    zero = gi.dtype.type(0)
    found = 0
    first, last = _chunk(t, P * slabs, nt)
    _, _, p, s = _unravel(first, 1, P, slabs)
    for _ in range(first, last):
        r0 = s * R
        r1 = min(r0 + R, D * H)
        lo, m = r0 * W, (r1 - r0) * W
        at = np.uint64(p * size + lo)
        if cells == 1:  # global pooling: one pass writes the slab (0 + g: no -0.0)
            g, ix = zero + gof[np.uint64(p)], ixf[np.uint64(p)] - lo
            for j in range(m):
                gif[at + np.uint64(j)] = g if j == ix else zero
            found += 0 <= ix < m
            _, _, p, s = _next(0, 0, p, s, 1, P, slabs)
            continue
        for j in range(m):
            gif[at + np.uint64(j)] = zero
        da, db = r0 // H, (r1 - 1) // H
        oh0, oh1 = 0, Ho
        if da == db:
            oh0, oh1 = chs[r0 - da * H], che[r1 - 1 - da * H]
        for od in range(cds[da], cde[db]):
            for oh in range(oh0, oh1):
                row = p * cells + (od * Ho + oh) * Wo
                for o in range(row, row + Wo):
                    j = ixf[np.uint64(o)] - lo
                    if 0 <= j < m:
                        gif[at + np.uint64(j)] += gof[np.uint64(o)]
                        found += 1
        _, _, p, s = _next(0, 0, p, s, 1, P, slabs)
    return found


@_kernel("in", "in", "out", "int", counts=True)
def _max_bwd_plane(nt, go, indices, gi, cells):
    found = 0
    for t in prange(nt):
        found += _max_bwd_plane_part(np.int64(t), nt, go, indices, gi, cells)
    return found


@njit(error_model="numpy")
def _max_bwd_plane_part(t, nt, go, indices, gi, cells):
    """:func:`_max_bwd_planar_part` when every slab is a whole plane: without the slab
    bookkeeping (most of the time of small planes). Two planes at a time, their additions
    interleaved: one plane's additions into the same element (neighbouring cells sharing a
    maximum) wait on each other's stores, two planes' do not (1.1x; four measured 1.6x
    slower). Each element still adds its cells in output order."""
    P, size = gi.shape
    gof, ixf, gif = go.reshape(go.size), indices.reshape(indices.size), gi.reshape(gi.size)
    zero = gi.dtype.type(0)
    usize, ucells = np.uint64(size), np.uint64(cells)
    missed = 0  # counting the rare misses, not every hit: 1.05x (5x5 -> 7x7)
    first, last = _chunk(t, P, nt)
    p = first
    while p + 2 <= last:
        at = np.uint64(p * size)
        for j in range(2 * size):
            gif[at + np.uint64(j)] = zero
        k = np.uint64(p * cells)
        for o in range(cells):
            i0, i1 = k + np.uint64(o), k + ucells + np.uint64(o)
            j0, j1 = np.uint64(ixf[i0]), np.uint64(ixf[i1])  # negative ones are huge
            if j0 < usize:
                gif[at + j0] += gof[i0]
            else:
                missed += 1
            if j1 < usize:
                gif[at + usize + j1] += gof[i1]
            else:
                missed += 1
        p += 2
    if p < last:
        at = np.uint64(p * size)
        for j in range(size):
            gif[at + np.uint64(j)] = zero
        for o in range(p * cells, (p + 1) * cells):
            j = np.uint64(ixf[np.uint64(o)])
            if j < usize:
                gif[at + j] += gof[np.uint64(o)]
            else:
                missed += 1
    return (last - first) * cells - missed


# ---------------------------------------------------------- backward, channels-last layout


@njit(inline="always")
def _weight(wts, table, od, oh, ow, Ho, Wo, ds, de, hs, he, ws, we):
    """1 / size of the window of output cell (od, oh, ow), from ``wts`` when ``table``."""
    if table:
        return wts[(od * Ho + oh) * Wo + ow]
    return 1.0 / ((de[od] - ds[od]) * (he[oh] - hs[oh]) * (we[ow] - ws[ow]))


@_kernel("in", "out", "int", "int", "int", "int", "int", "int", "int", "int")
def _avg_bwd_cl(nt, go, gi, planar, N, Do, Ho, Wo, D, H, W):
    for t in prange(nt):
        _avg_bwd_cl_part(np.int64(t), nt, go, gi, planar, N, Do, Ho, Wo, D, H, W)


@njit(error_model="numpy")
def _avg_bwd_cl_part(t, nt, go, gi, planar, N, Do, Ho, Wo, D, H, W):
    """``go``: (N*Do*Ho*Wo, C), ``gi``: (N*D*H*W, C), or (N*C, D*H*W) when ``planar``; one
    work item per input row ``(n, d, h)``.

    ``acc`` holds the row of output cells covering the current input row, pre-divided by
    their window sizes; it is rebuilt only when those cells change. Along W, a run of
    positions covered by the same cells gets one vector of values. Flat indices throughout:
    a row slice per cell costs more than its work on small maps. A planar ``gi`` gets each
    row through ``row``, transposed (a channels_last tensor's gradient into a C-order
    result: see :func:`_into_planar`).
    """
    C = go.shape[1]
    gof, gif = go.reshape(go.size), gi.reshape(gi.size)
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    cds, cde = _bounds(Do, D)
    chs, che = _bounds(Ho, H)
    starts, cfirst, cend = _runs(W, Wo)
    first, last = _chunk(t, N * D * H, nt)
    # 1 / window size per output cell, computed once where the rows of this share use each
    # cell's at least about once (divisions cost more than the small rows they scale)
    table = Do * Ho <= last - first and Do * Ho * Wo <= _WEIGHTS_MAX
    wts = np.empty(Do * Ho * Wo if table else 0, np.float64)
    if table:
        k = 0
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    wts[k] = _weight(wts, False, od, oh, ow, Ho, Wo, ds, de, hs, he, ws, we)
                    k += 1
    acc = np.empty(Wo * C, gi.dtype)
    col = np.empty(C, gi.dtype)
    row = np.empty(W * C if planar else 0, gi.dtype)
    dst = row if planar else gif
    zero = gi.dtype.type(0)
    key = (-1, -1, -1, -1, -1)
    _, n, d, h = _unravel(first, N, D, H)
    for _ in range(first, last):
        if (n, cds[d], cde[d], chs[h], che[h]) != key:
            key = (n, cds[d], cde[d], chs[h], che[h])
            _avg_bwd_cl_acc(gof, acc, wts, table, n, cds[d], cde[d], chs[h], che[h], Do, Ho,
                            Wo, C, ds, de, hs, he, ws, we)
        base = 0 if planar else ((n * D + d) * H + h) * W  # the row's first position in dst
        for r in range(len(cfirst)):
            # the run's first element gets the sum, the others a copy of it
            o0, o1 = cfirst[r], cend[r]
            at, a = (base + starts[r]) * C, o0 * C
            if o1 - o0 == 1:
                for c in range(C):
                    dst[np.uint64(at + c)] = zero + acc[np.uint64(a + c)]
            elif o1 - o0 == 2:
                for c in range(C):
                    u, v = acc[np.uint64(a + c)], acc[np.uint64(a + C + c)]
                    dst[np.uint64(at + c)] = (zero + u) + v
            elif o1 - o0 == 3:
                for c in range(C):
                    u, v = acc[np.uint64(a + c)], acc[np.uint64(a + C + c)]
                    dst[np.uint64(at + c)] = ((zero + u) + v) + acc[np.uint64(a + 2 * C + c)]
            else:
                for c in range(C):
                    col[c] = zero + acc[np.uint64(a + c)]
                for ow in range(o0 + 1, o1):
                    for c in range(C):
                        col[c] += acc[np.uint64(ow * C + c)]
                for c in range(C):
                    dst[np.uint64(at + c)] = col[c]
            for w in range(starts[r] + 1, starts[r + 1]):
                o = (base + w) * C
                for c in range(C):
                    dst[np.uint64(o + c)] = dst[np.uint64(at + c)]
        if planar:
            _transpose(gif, n * C * D * H * W + (d * H + h) * W, D * H * W, row, C, W)
        _, n, d, h = _next(0, n, d, h, N, D, H)


@njit(error_model="numpy", inline="always")
def _avg_bwd_cl_acc(gof, acc, wts, table, n, od0, od1, oh0, oh1, Do, Ho, Wo, C, ds, de, hs, he,
                    ws, we):
    """``acc[ow * C + c]``: the weighted gradients of the cells (od0:od1, oh0:oh1, ow) summed
    in output order, for :func:`_avg_bwd_cl_part` (written apart, inlined there: as a call
    per input row it cost small maps 5-10%). A term is the float64 product of gradient and
    1/size rounded once to the data type (the quotient itself, correctly rounded, for
    float32 and windows below 2**24 elements); the sums are in the data type."""
    T = acc.dtype.type
    zero = T(0)
    # The first two covering rows of cells in one pass (the first starts the sums: no
    # zero-fill), any further rows added after it, in order.
    nh = oh1 - oh0
    rows = (od1 - od0) * nh
    od, oh = od0, oh0
    od2, oh2 = (od, oh + 1) if nh > 1 else (od + 1, oh)
    b1 = ((n * Do + od) * Ho + oh) * Wo * C
    b2 = ((n * Do + od2) * Ho + oh2) * Wo * C
    for ow in range(Wo):
        a = ow * C
        w1 = _weight(wts, table, od, oh, ow, Ho, Wo, ds, de, hs, he, ws, we)
        if rows == 1:
            for c in range(C):
                acc[np.uint64(a + c)] = zero + T(gof[np.uint64(b1 + a + c)] * w1)
        else:
            w2 = _weight(wts, table, od2, oh2, ow, Ho, Wo, ds, de, hs, he, ws, we)
            for c in range(C):
                v = zero + T(gof[np.uint64(b1 + a + c)] * w1)
                acc[np.uint64(a + c)] = v + T(gof[np.uint64(b2 + a + c)] * w2)
    for k in range(2, rows):
        od, oh = od0 + k // nh, oh0 + k % nh
        b1 = ((n * Do + od) * Ho + oh) * Wo * C
        for ow in range(Wo):
            a = ow * C
            w1 = _weight(wts, table, od, oh, ow, Ho, Wo, ds, de, hs, he, ws, we)
            for c in range(C):
                acc[np.uint64(a + c)] += T(gof[np.uint64(b1 + a + c)] * w1)


@_kernel("in", "in", "out", "int", "int", "int", "int", "int", "int", "int", "int", counts=True)
def _max_bwd_cl(nt, go, indices, gi, planar, N, Do, Ho, Wo, D, H, W):
    found = 0
    for t in prange(nt):
        found += _max_bwd_cl_part(np.int64(t), nt, go, indices, gi, planar, N, Do, Ho, Wo, D, H,
                                  W)
    return found


@njit(inline="always")
def _hit(g, ix, q, flat):
    """The gradient ``g[q]`` if its cell's index ``ix[q]`` is ``flat``, else 0 (of g's
    type: the max backward adds in the data type, as the planar scatter does)."""
    return g[np.uint64(q)] if ix[np.uint64(q)] == flat else g.dtype.type(0)


@njit(inline="always")
def _match(ix, q, flat):
    """1 if the cell's index ``ix[q]`` is ``flat``, else 0 (the hits :func:`_hit` takes)."""
    return np.int64(ix[np.uint64(q)] == flat)


@njit(error_model="numpy")
def _max_bwd_cl_part(t, nt, go, indices, gi, planar, N, Do, Ho, Wo, D, H, W):
    """One work item per input row ``(n, d, h)``; each element sums, in output order, the
    gradients of the covering cells whose index is its own position (a select: vectorises
    across channels). Up to two rows of up to three covering cells (small maps, upsampling)
    take one loop per element; more go to :func:`_max_bwd_cl_cells`. Flat indices, as in
    :func:`_avg_bwd_cl_part`.

    A gather finds only the indices that lie in their own cell's window: it returns the
    count of (cell, channel) pairs found, and the host falls back to a scatter when the total
    falls short of every pair (indices not from a forward pass). Each loop counts before
    it stores: numba cannot tell LLVM that ``gif`` does not alias ``ixf``, so after the
    store the indices would be loaded and compared again (1.1x). A planar ``gi`` gets its
    rows as :func:`_avg_bwd_cl_part` stores them."""
    C = go.shape[1]
    gof, ixf, gif = go.reshape(go.size), indices.reshape(indices.size), gi.reshape(gi.size)
    cds, cde = _bounds(Do, D)
    chs, che = _bounds(Ho, H)
    tabled = W <= _LONG_AXIS
    cws, cwe = _bounds(Wo, W if tabled else 0)
    col = np.empty(C, gi.dtype)
    row = np.empty(W * C if planar else 0, gi.dtype)
    dst = row if planar else gif
    zero = gi.dtype.type(0)
    found = 0
    first, last = _chunk(t, N * D * H, nt)
    _, n, d, h = _unravel(first, N, D, H)
    for _ in range(first, last):
        base = 0 if planar else ((n * D + d) * H + h) * W  # the row's first position in dst
        for w in range(W):
            flat = (d * H + h) * W + w
            # the covering cells along W, from a table unless the axis is long
            if tabled:
                cw0, nw = cws[w], cwe[w] - cws[w]
            else:
                cw0 = _start(w, Wo, W)
                nw = _end(w, Wo, W) - cw0
            rows = (cde[d] - cds[d]) * (che[h] - chs[h])
            at = (base + w) * C
            q = (((n * Do + cds[d]) * Ho + chs[h]) * Wo + cw0) * C  # first covering cell
            if rows == 1 and nw <= 3:
                if nw == 1:
                    k = 0  # this loop's hits
                    for c in range(C):
                        k += _match(ixf, q + c, flat)
                        dst[np.uint64(at + c)] = zero + _hit(gof, ixf, q + c, flat)
                    found += k
                elif nw == 2:
                    k = 0  # this loop's hits
                    for c in range(C):
                        s = zero + _hit(gof, ixf, q + c, flat)
                        k += _match(ixf, q + c, flat) + _match(ixf, q + C + c, flat)
                        dst[np.uint64(at + c)] = s + _hit(gof, ixf, q + C + c, flat)
                    found += k
                else:
                    k = 0  # this loop's hits
                    for c in range(C):
                        s = zero + _hit(gof, ixf, q + c, flat)
                        s += _hit(gof, ixf, q + C + c, flat)
                        k += (
                            _match(ixf, q + c, flat)
                            + _match(ixf, q + C + c, flat)
                            + _match(ixf, q + 2 * C + c, flat)
                        )
                        dst[np.uint64(at + c)] = s + _hit(gof, ixf, q + 2 * C + c, flat)
                    found += k
            elif rows == 2 and nw <= 3:
                # the second covering row of cells: next along H, else along D
                q2 = q + (Wo * C if che[h] - chs[h] == 2 else Ho * Wo * C)
                if nw == 1:
                    k = 0  # this loop's hits
                    for c in range(C):
                        s = zero + _hit(gof, ixf, q + c, flat)
                        k += _match(ixf, q + c, flat) + _match(ixf, q2 + c, flat)
                        dst[np.uint64(at + c)] = s + _hit(gof, ixf, q2 + c, flat)
                    found += k
                elif nw == 2:
                    k = 0  # this loop's hits
                    for c in range(C):
                        s = zero + _hit(gof, ixf, q + c, flat)
                        s += _hit(gof, ixf, q + C + c, flat)
                        s += _hit(gof, ixf, q2 + c, flat)
                        k += (
                            _match(ixf, q + c, flat)
                            + _match(ixf, q + C + c, flat)
                            + _match(ixf, q2 + c, flat)
                            + _match(ixf, q2 + C + c, flat)
                        )
                        dst[np.uint64(at + c)] = s + _hit(gof, ixf, q2 + C + c, flat)
                    found += k
                else:
                    k = 0  # this loop's hits
                    for c in range(C):
                        s = zero + _hit(gof, ixf, q + c, flat)
                        s += _hit(gof, ixf, q + C + c, flat)
                        s += _hit(gof, ixf, q + 2 * C + c, flat)
                        s += _hit(gof, ixf, q2 + c, flat)
                        s += _hit(gof, ixf, q2 + C + c, flat)
                        k += (
                            _match(ixf, q + c, flat)
                            + _match(ixf, q + C + c, flat)
                            + _match(ixf, q + 2 * C + c, flat)
                            + _match(ixf, q2 + c, flat)
                            + _match(ixf, q2 + C + c, flat)
                            + _match(ixf, q2 + 2 * C + c, flat)
                        )
                        dst[np.uint64(at + c)] = s + _hit(gof, ixf, q2 + 2 * C + c, flat)
                    found += k
            else:
                found += _max_bwd_cl_cells(gof, ixf, dst, col, at, n, cds[d], cde[d], chs[h],
                                           che[h], cw0, nw, flat, Do, Ho, Wo, C)
        if planar:
            _transpose(gif, n * C * D * H * W + (d * H + h) * W, D * H * W, row, C, W)
        _, n, d, h = _next(0, n, d, h, N, D, H)
    return found


@njit(error_model="numpy")
def _max_bwd_cl_cells(gof, ixf, gif, col, at, n, od0, od1, oh0, oh1, ow0, nw, flat, Do, Ho, Wo, C):
    """One element of :func:`_max_bwd_cl_part`, any covering cells: ``col`` sums them, one
    loop per covering row adding up to three cells (the same additions in the same order).
    Returns the hits."""
    found = 0
    for c in range(C):
        col[c] = 0.0  # 0.0 + the first term, as the SPEC's loop starts
    for od in range(od0, od1):
        for oh in range(oh0, oh1):
            q = (((n * Do + od) * Ho + oh) * Wo + ow0) * C
            if nw == 1:
                k = 0  # this loop's hits
                for c in range(C):
                    k += _match(ixf, q + c, flat)
                    col[c] += _hit(gof, ixf, q + c, flat)
                found += k
            elif nw == 2:
                k = 0  # this loop's hits
                for c in range(C):
                    s = col[c] + _hit(gof, ixf, q + c, flat)
                    k += _match(ixf, q + c, flat) + _match(ixf, q + C + c, flat)
                    col[c] = s + _hit(gof, ixf, q + C + c, flat)
                found += k
            else:
                k = 0  # this loop's hits
                for c in range(C):
                    s = col[c] + _hit(gof, ixf, q + c, flat)
                    s += _hit(gof, ixf, q + C + c, flat)
                    k += (
                        _match(ixf, q + c, flat)
                        + _match(ixf, q + C + c, flat)
                        + _match(ixf, q + 2 * C + c, flat)
                    )
                    col[c] = s + _hit(gof, ixf, q + 2 * C + c, flat)
                found += k
                for ow in range(3, nw):
                    k = 0  # this loop's hits
                    for c in range(C):
                        k += _match(ixf, q + ow * C + c, flat)
                        col[c] += _hit(gof, ixf, q + ow * C + c, flat)
                    found += k
    for c in range(C):
        gif[np.uint64(at + c)] = col[c]
    return found


@_kernel("in", "in", "out", "int", "int", counts=True)
def _max_bwd_cl_scatter(nt, go, indices, gi, N, slabs):
    missed = 0
    for t in prange(nt):
        missed += _max_bwd_cl_scatter_part(np.int64(t), nt, go, indices, gi, N, slabs)
    return missed


@njit(error_model="numpy")
def _max_bwd_cl_scatter_part(t, nt, go, indices, gi, N, slabs):
    """The SPEC's scatter between channels-last arrays (``go``, ``indices``: (N*cells, C),
    ``gi``: (N*plane, C)), for windows of many elements, where the gather of
    :func:`_max_bwd_cl_part` compares every covering cell's index at every input element.
    A work item is one of ``slabs`` ranges of plane positions of a sample, all channels,
    whose elements no other item writes: zeroed, then every cell of the sample adds its
    gradients whose index lies in the range, cells in output order (the gather's
    additions in its order: the same bits). An index outside the plane is skipped and
    counted: returns the count (the host raises; callers check first when ``gi`` is not
    their own)."""
    C = gi.shape[1]
    plane, cells = gi.shape[0] // N, go.shape[0] // N
    gof, ixf, gif = go.reshape(go.size), indices.reshape(indices.size), gi.reshape(gi.size)
    zero = gi.dtype.type(0)
    uplane, uc = np.uint64(plane), np.uint64(C)
    missed = 0
    first, last = _chunk(t, N * slabs, nt)
    for item in range(first, last):
        n, s = item // slabs, item % slabs
        p0, p1 = s * plane // slabs, (s + 1) * plane // slabs
        base = np.uint64(n * plane * C)
        for k in range(p0 * C, p1 * C):
            gif[base + np.uint64(k)] = zero
        lo, span = np.uint64(p0), np.uint64(p1 - p0)
        for o in range(cells):
            q = (n * cells + o) * C
            for c in range(C):
                j = np.uint64(ixf[np.uint64(q + c)])  # (a negative one is huge)
                if j - lo < span:  # (unsigned: below lo wraps round to huge)
                    gif[base + j * uc + np.uint64(c)] += gof[np.uint64(q + c)]
                elif s == 0 and j >= uplane:
                    missed += 1
    return missed


@_kernel("in", "int", counts=True)
def _positions_bad(nt, ix, plane):
    bad = 0
    for t in prange(nt):
        bad += _positions_bad_part(np.int64(t), nt, ix, plane)
    return bad


@njit(error_model="numpy")
def _positions_bad_part(t, nt, ix, plane):
    """1 if thread ``t``'s share of ``ix`` holds a position outside ``[0, plane)``, else 0
    (as unsigned, a negative one is huge; no early exit)."""
    first, last = _chunk(t, len(ix), nt)
    a = ix[first:last]
    top = np.uint64(0)
    for i in range(len(a)):  # the largest as unsigned: vectorises
        v = np.uint64(a[i])
        top = v if v > top else top
    return np.int64(top >= np.uint64(plane))


# ------------------------------------------------------------------ small planes, any layout
# Planes of a few hundred elements (upsampling, small feature maps): per-row and per-window
# overheads of the kernels above dominate there, and a layout copy costs more than the
# pooling. A work item is one (n, block of ``cb`` channels); the inner loops run across the
# block, and results go through an L1 buffer ``res[position, channel]`` that is stored plane
# by plane into an output of any strides. Inputs are flat, C-contiguous in either layout:
# element (n, c, p) of a plane position p is at ``n * sn + c * sc + p * sp`` (channels-last:
# ``sc == 1``, and the loops across channels are unit-stride loads that LLVM vectorises).
# They run forwards from channels-first memory (a channels-last input goes to the
# channels-last kernels, which store each cell's channels directly) and backwards between
# layouts that are not both channels-last, except a max backward from planar gradients
# (the planar kernel); from channels-last gradients into a planar ``grad_input`` it scatters
# whole planes instead (:func:`_max_bwd_planes`).


@njit(inline="always")
def _load(dst, src, at, sc, m):
    """``dst[j] = src[at + j * sc]`` for ``j < m``."""
    if sc == 1:
        s = src[at : at + m]
        for j in range(m):
            dst[j] = s[j]
    else:
        for j in range(m):
            dst[j] = src[at + j * sc]


@njit(inline="always")
def _store_planes(res, out, oflat, n, c0, m):
    """``out[n, c0 + j] = res[:, j]`` for the block's ``m`` channels, plane by plane:
    through ``oflat``, ``out``'s flat C-contiguous view, unless that is empty (any other
    strides)."""
    _, C, Do, Ho, Wo = out.shape
    if len(oflat) > 0:
        cells = Do * Ho * Wo
        for j in range(m):
            at = (n * C + c0 + j) * cells
            for k in range(cells):
                oflat[np.uint64(at + k)] = res[k, j]
        return
    for j in range(m):
        dst = out[n, c0 + j]
        k = 0
        for od in range(Do):
            for oh in range(Ho):
                row = dst[od, oh]
                for ow in range(Wo):
                    row[ow] = res[k, j]
                    k += 1


@_kernel("in", "any", "out", "int", "int", "int", "int", "int")
def _avg_fwd_small(nt, x, out, oflat, D, H, W, sc, cb):
    for t in prange(nt):
        _avg_fwd_small_part(np.int64(t), nt, x, out, oflat, D, H, W, sc, cb)


@njit(error_model="numpy")
def _avg_fwd_small_part(t, nt, x, out, oflat, D, H, W, sc, cb):
    """A block of channels of one sample is transposed into ``xb`` (channels innermost);
    each cell then adds its window as :func:`_avg_fwd_cl_part` does (each row summed in x's
    precision, the rows in float64), so the bits are those of the channels-last kernel."""
    N, C, Do, Ho, Wo = out.shape
    sp = C if sc == 1 else 1
    sn = C * D * H * W
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    xb = np.empty((D * H * W, cb), x.dtype)
    rs = np.empty(cb, x.dtype)
    acc = np.empty(cb, np.float64)
    # the small windows' arithmetic of _avg_fwd_cl_part, and its bits
    zero, half, quarter = x.dtype.type(0), x.dtype.type(0.5), x.dtype.type(0.25)
    res = np.empty((Do * Ho * Wo, cb), out.dtype)
    blocks = (C + cb - 1) // cb
    first, last = _chunk(t, N * blocks, nt)
    for item in range(first, last):
        n, b = item // blocks, item % blocks
        c0 = b * cb
        m = min(cb, C - c0)
        _gather_block(xb, x, n * sn + c0 * sc, sc, sp, m)
        k = 0
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    w0, nw = ws[ow], we[ow] - ws[ow]
                    nd, nh = de[od] - ds[od], he[oh] - hs[oh]
                    rows = nd * nh
                    scale = 1.0 / (rows * nw)
                    p = (ds[od] * H + hs[oh]) * W + w0
                    dst = res[k]
                    k += 1
                    if rows <= 2 and nw <= 2:  # one loop (upsampling, small maps)
                        p2 = p + (H * W if nd == 2 else W)
                        if rows == 1 and nw == 1:
                            for j in range(m):
                                dst[j] = zero + xb[p, j]
                        elif rows == 1:
                            for j in range(m):
                                dst[j] = (zero + (xb[p, j] + xb[p + 1, j])) * half
                        elif nw == 1:
                            for j in range(m):
                                dst[j] = ((zero + xb[p, j]) + xb[p2, j]) * half
                        else:
                            for j in range(m):
                                dst[j] = ((zero + (xb[p, j] + xb[p + 1, j]))
                                          + (xb[p2, j] + xb[p2 + 1, j])) * quarter
                        continue
                    for j in range(m):
                        acc[j] = 0.0
                    for d in range(ds[od], de[od]):
                        for h in range(hs[oh], he[oh]):
                            p = (d * H + h) * W + w0
                            if nw == 1:
                                for j in range(m):
                                    acc[j] += xb[p, j]
                            elif nw == 2:
                                for j in range(m):
                                    acc[j] += xb[p, j] + xb[p + 1, j]
                            else:
                                for j in range(m):
                                    rs[j] = xb[p, j] + xb[p + 1, j]
                                for w in range(2, nw):
                                    for j in range(m):
                                        rs[j] += xb[p + w, j]
                                for j in range(m):
                                    acc[j] += rs[j]
                    for j in range(m):
                        dst[j] = acc[j] * scale
        _store_planes(res, out, oflat, n, c0, m)


@njit(inline="always")
def _gather_block(xb, x, base, sc, sp, m):
    """``xb[p, j] = x[base + p * sp + j * sc]``: a block of ``m`` channels, channels
    innermost."""
    P = xb.shape[0]
    if sc == 1:
        for p in range(P):
            _load(xb[p], x, base + p * sp, 1, m)
    else:
        for j in range(m):
            s = x[base + j * sc : base + j * sc + P]
            for p in range(P):
                xb[p, j] = s[p]


@_kernel("in", "any", "any", "out", "out", "in", "int", "int", "int", "int", "int")
def _max_fwd_small(nt, x, out, indices, oflat, iflat, itype, D, H, W, sc, cb):
    for t in prange(nt):
        _max_fwd_small_part(np.int64(t), nt, x, out, indices, oflat, iflat, itype, D, H, W, sc,
                            cb)


@njit(error_model="numpy")
def _max_fwd_small_part(t, nt, x, out, indices, oflat, iflat, itype, D, H, W, sc, cb):
    """Maxima along W first (value and position, scan rule), then merged over the window's
    rows in scan order with the same rule: that is the scan of the whole window. Updates
    are selects into a second buffer, copied back: with these short channel loops that is
    faster than the in-place select of :func:`_max_cl_cells` (measured)."""
    N, C, Do, Ho, Wo = out.shape
    sp = C if sc == 1 else 1
    sn = C * D * H * W
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    rv = np.empty((D, H, Wo, cb), x.dtype)
    ri = np.empty((D, H, Wo, cb), itype.dtype)
    resv = np.empty((Do * Ho * Wo, cb), x.dtype)
    resi = np.empty((Do * Ho * Wo, cb), itype.dtype)
    v = np.empty(cb, x.dtype)
    tv = np.empty(cb, x.dtype)
    ti = np.empty(cb, itype.dtype)
    blocks = (C + cb - 1) // cb
    first, last = _chunk(t, N * blocks, nt)
    for item in range(first, last):
        n, b = item // blocks, item % blocks
        c0 = b * cb
        m = min(cb, C - c0)
        base = n * sn + c0 * sc
        for d in range(D):
            for h in range(H):
                for ow in range(Wo):
                    bv, bi = rv[d, h, ow], ri[d, h, ow]
                    flat = (d * H + h) * W + ws[ow]
                    _load(bv, x, base + flat * sp, sc, m)
                    for j in range(m):
                        bi[j] = flat
                    for _w in range(ws[ow] + 1, we[ow]):
                        flat += 1
                        _load(v, x, base + flat * sp, sc, m)
                        for j in range(m):
                            a, old = v[j], bv[j]
                            take = (a > old) | (a != a)
                            tv[j] = a if take else old
                            ti[j] = flat if take else bi[j]
                        for j in range(m):
                            bv[j] = tv[j]
                            bi[j] = ti[j]
        k = 0
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    dv, di = resv[k], resi[k]
                    sv, si = rv[ds[od], hs[oh], ow], ri[ds[od], hs[oh], ow]
                    for j in range(m):
                        dv[j] = sv[j]
                        di[j] = si[j]
                    for d in range(ds[od], de[od]):
                        for h in range(hs[oh], he[oh]):
                            if d != ds[od] or h != hs[oh]:
                                sv, si = rv[d, h, ow], ri[d, h, ow]
                                for j in range(m):
                                    a, old = sv[j], dv[j]
                                    take = (a > old) | (a != a)
                                    tv[j] = a if take else old
                                    ti[j] = si[j] if take else di[j]
                                for j in range(m):
                                    dv[j] = tv[j]
                                    di[j] = ti[j]
                    k += 1
        _store_planes(resv, out, oflat, n, c0, m)
        _store_planes(resi, indices, iflat, n, c0, m)


@_kernel("in", "any", "out", "int", "int", "int", "int", "int")
def _avg_bwd_small(nt, go, gi, gflat, Do, Ho, Wo, sc, cb):
    for t in prange(nt):
        _avg_bwd_small_part(np.int64(t), nt, go, gi, gflat, Do, Ho, Wo, sc, cb)


@njit(error_model="numpy")
def _avg_bwd_small_part(t, nt, go, gi, gflat, Do, Ho, Wo, sc, cb):
    """The terms and their order are those of :func:`_avg_bwd_planar_part`, so the bits are
    the same: per input row, ``acc[ow]`` sums the covering cells' weighted gradients over
    (od, oh); each element then sums ``acc`` over its covering ``ow``."""
    N, C, D, H, W = gi.shape
    sp = C if sc == 1 else 1
    sn = C * Do * Ho * Wo
    ds, de = _bounds(D, Do)
    hs, he = _bounds(H, Ho)
    ws, we = _bounds(W, Wo)
    cds, cde = _bounds(Do, D)
    chs, che = _bounds(Ho, H)
    cws, cwe = _bounds(Wo, W)
    wflat = np.empty(Do * Ho * Wo, np.float64)  # 1 / window size, per output cell
    k = 0
    for od in range(Do):
        for oh in range(Ho):
            size = (de[od] - ds[od]) * (he[oh] - hs[oh])
            for ow in range(Wo):
                wflat[k] = 1.0 / (size * (we[ow] - ws[ow]))
                k += 1
    gb = np.empty(Do * Ho * Wo * (cb if sc != 1 else 0), go.dtype)  # a transposed block
    acc = np.empty((Wo, cb), gi.dtype)
    res = np.empty((D * H * W, cb), gi.dtype)
    blocks = (C + cb - 1) // cb
    first, last = _chunk(t, N * blocks, nt)
    for item in range(first, last):
        n, b = item // blocks, item % blocks
        c0 = b * cb
        m = min(cb, C - c0)
        if sc == 1:  # channels-last gradients: the block's channels are contiguous already
            _avg_bwd_small_block(go, n * sn + c0, C, acc, res, wflat, cds, cde, chs, che, cws,
                                 cwe, Ho, Wo, D, H, W, m)
        else:
            _gather_block(gb.reshape(Do * Ho * Wo, cb), go, n * sn + c0 * sc, sc, sp, m)
            _avg_bwd_small_block(gb, 0, cb, acc, res, wflat, cds, cde, chs, che, cws, cwe, Ho,
                                 Wo, D, H, W, m)
        _store_planes(res, gi, gflat, n, c0, m)


@njit(error_model="numpy")
def _avg_bwd_small_block(src, at, cs, acc, res, wflat, cds, cde, chs, che, cws, cwe, Ho, Wo, D,
                         H, W, m):
    """One block of :func:`_avg_bwd_small_part`: channel ``j`` of output cell ``k``'s
    gradient at ``src[at + k * cs + j]``, the block's ``res`` computed for ``m`` channels.
    One or two covering cells (of a row, then of an element) take one loop, with the
    additions of the general case: ``(0 + t0) + t1``."""
    T = res.dtype.type
    zero = T(0)
    k = 0
    for d in range(D):
        for h in range(H):
            nd, nh = cde[d] - cds[d], che[h] - chs[h]
            c1 = cds[d] * Ho + chs[h]  # the first covering (od, oh), as a row of cells
            c2 = c1 + (Ho if nd == 2 else 1)  # the second, when there are two
            for ow in range(Wo):
                a = acc[ow]
                i1 = c1 * Wo + ow
                g1, w1 = src[at + i1 * cs : at + i1 * cs + m], wflat[i1]
                if nd * nh == 1:
                    for j in range(m):
                        a[j] = zero + T(g1[j] * w1)
                elif nd * nh == 2:
                    i2 = c2 * Wo + ow
                    g2, w2 = src[at + i2 * cs : at + i2 * cs + m], wflat[i2]
                    for j in range(m):
                        a[j] = (zero + T(g1[j] * w1)) + T(g2[j] * w2)
                else:
                    for j in range(m):
                        a[j] = zero
                    for od in range(cds[d], cde[d]):
                        for oh in range(chs[h], che[h]):
                            cell = (od * Ho + oh) * Wo + ow
                            g, wt = src[at + cell * cs : at + cell * cs + m], wflat[cell]
                            for j in range(m):
                                a[j] += T(g[j] * wt)
            for w in range(W):
                dst = res[k]
                k += 1
                o0 = cws[w]
                if cwe[w] - o0 == 1:
                    for j in range(m):
                        dst[j] = zero + acc[o0, j]
                elif cwe[w] - o0 == 2:
                    for j in range(m):
                        dst[j] = (zero + acc[o0, j]) + acc[o0 + 1, j]
                else:
                    for j in range(m):
                        dst[j] = zero
                    for ow in range(o0, cwe[w]):
                        for j in range(m):
                            dst[j] += acc[ow, j]


@_kernel("in", "in", "any", "out", "int", "int", "int", "int", "int")
def _max_bwd_small(nt, go, indices, gi, gflat, Do, Ho, Wo, sc, cb):
    for t in prange(nt):
        _max_bwd_small_part(np.int64(t), nt, go, indices, gi, gflat, Do, Ho, Wo, sc, cb)


@njit(error_model="numpy")
def _max_bwd_small_part(t, nt, go, indices, gi, gflat, Do, Ho, Wo, sc, cb):
    """The SPEC's loop: every output cell, in output order, adds its gradient at its index
    (in ``cb`` planes at once: independent additions, no chain through memory)."""
    N, C, D, H, W = gi.shape
    sp = C if sc == 1 else 1
    sn = C * Do * Ho * Wo
    res = np.empty((D * H * W, cb), gi.dtype)
    flat = res.reshape(-1)
    g = np.empty(cb, go.dtype)
    ix = np.empty(cb, np.int64)
    blocks = (C + cb - 1) // cb
    first, last = _chunk(t, N * blocks, nt)
    for item in range(first, last):
        n, b = item // blocks, item % blocks
        c0 = b * cb
        m = min(cb, C - c0)
        base = n * sn + c0 * sc
        for i in range(len(flat)):
            flat[i] = 0.0
        for cell in range(Do * Ho * Wo):
            _load(g, go, base + cell * sp, sc, m)
            _load(ix, indices, base + cell * sp, sc, m)
            for j in range(m):
                flat[np.uint64(ix[j] * cb + j)] += g[j]
        _store_planes(res, gi, gflat, n, c0, m)


# ---------------------------------------------------------------- long axes, any layout
# The kernels above keep, per thread, tables of window bounds as long as the axes and
# buffers as long as a row: small beside the result, unless an axis is very long (a 1-d
# signal of millions of samples pooled to or from a few planes, where they outgrow it).
# Calls with such an axis (:func:`_long_forward`, :func:`_long_backward`) run these
# instead: each window is computed from the formula where it is used, nothing is
# allocated, and any strides are read in place. One work item per result element, split
# evenly among threads.


@njit(inline="always")
def _advance(lo, rem, q, r, size_out):
    """``(start(i + 1), (i + 1) * size_in % size_out)`` from the same pair for cell ``i``,
    with ``q, r = divmod(size_in, size_out)``: the next window without a division (its
    end is ``start(i + 1)``, plus one when that remainder is not 0)."""
    lo, rem = lo + q, rem + r
    if rem >= size_out:
        lo, rem = lo + 1, rem - size_out
    return lo, rem


@njit(inline="always")
def _long_row(k, last, C, A, B, E):
    """The row of flat element ``k`` of an (N, C, A, B, E) array, for a thread's share
    ending at ``last``: ``(n, c, a, b, e0, e1)``, its elements ``e0:e1`` in that share."""
    row, e0 = k // E, k % E
    p = row // (A * B)
    return p // C, p % C, row // B % A, row % B, e0, min(E, e0 + last - k)


#: Windows longer than this are summed by :func:`_sum_in`, shorter ones in a plain loop.
_LONG_SPAN_SUM = 16


def _fwd_long(nt, x, out, indices, is_max):
    for t in prange(nt):
        _fwd_long_part(np.int64(t), nt, x, out, indices, is_max)


# compiled for C-contiguous inputs (whose rows LLVM vectorises) and for any strides
_fwd_long_c = _Kernel(_fwd_long, ("in", "any", "any", "int"))
_fwd_long = _Kernel(_fwd_long, ("in_any", "any", "any", "int"))
_NO_INDICES = np.empty((0,) * 5, np.int64)  # the average's ``indices``


@njit(error_model="numpy")
def _fwd_long_part(t, nt, x, out, indices, is_max):
    """Each cell: the SPEC's scan of its window in row-major order, or its rows summed in
    float64 (long ones as :func:`_sum_in` does)."""
    _, C, D, H, W = x.shape
    _, _, Do, Ho, Wo = out.shape
    q, r = W // Wo, W % Wo
    first, last = _chunk(t, out.size, nt)
    k = first
    while k < last:
        n, c, od, oh, ow0, ow1 = _long_row(k, last, C, Do, Ho, Wo)
        k += ow1 - ow0
        d0, d1 = _start(od, D, Do), _end(od, D, Do)
        h0, h1 = _start(oh, H, Ho), _end(oh, H, Ho)
        lo, rem = _start(ow0, W, Wo), ow0 * W % Wo
        for ow in range(ow0, ow1):
            nlo, nrem = _advance(lo, rem, q, r, Wo)
            hi = nlo + (nrem != 0)
            if is_max:
                bv, bi = x[n, c, d0, h0, lo], (d0 * H + h0) * W + lo
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        bv, bi = _row_max(x, n, c, d, h, lo, hi, (d * H + h) * W, bv, bi)
                out[n, c, od, oh, ow], indices[n, c, od, oh, ow] = bv, bi
            else:
                s = 0.0
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        row = x[n, c, d, h]
                        if hi - lo > _LONG_SPAN_SUM:
                            s += _sum_in(row, lo, hi)
                        else:
                            for w in range(lo, hi):
                                s += row[w]
                out[n, c, od, oh, ow] = s / ((d1 - d0) * (h1 - h0) * (hi - lo))
            lo, rem = nlo, nrem


def _row_max(x, n, c, d, h, lo, hi, at, bv, bi):
    """The best of ``(bv, bi)`` and ``x[n, c, d, h, lo:hi]`` (at positions ``at + w``), by the
    SPEC's scan, the row scanned after ``bv``."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@njit(inline="always")
def _scan_row(x, n, c, d, h, lo, hi, at, bv, bi):
    """:func:`_row_max` element by element, indexing ``x`` in place: a row view built per
    window took 2x the time of short windows (1d 2**17 -> 2**18)."""
    for w in range(lo, hi):
        v = x[n, c, d, h, w]
        if v > bv or v != v:
            bv, bi = v, at + w
    return bv, bi


@overload(_row_max, inline="always")
def _row_max_impl(x, n, c, d, h, lo, hi, at, bv, bi):
    if x.layout != "C":
        return lambda x, n, c, d, h, lo, hi, at, bv, bi: _scan_row(x, n, c, d, h, lo, hi, at, bv,
                                                                   bi)

    def contiguous(x, n, c, d, h, lo, hi, at, bv, bi):  # long spans: a vector scan
        if hi - lo <= _LONG_SPAN_SUM:
            return _scan_row(x, n, c, d, h, lo, hi, at, bv, bi)
        v, i = _max_span(x[n, c, d, h, lo:hi])
        if v > bv or v != v:
            return v, at + lo + i
        return bv, bi

    return contiguous


@_kernel("in_any", "any")
def _avg_bwd_long(nt, go, gi):
    for t in prange(nt):
        _avg_bwd_long_part(np.int64(t), nt, go, gi)


@njit(error_model="numpy")
def _avg_bwd_long_part(t, nt, go, gi):
    """Each input element: the terms of its covering cells, added as :func:`_avg_bwd_planar`
    adds them (per output column over the cells' rows, then across the columns), so the
    same bits."""
    T = gi.dtype.type
    _, C, D, H, W = gi.shape
    _, _, Do, Ho, Wo = go.shape
    q, r = W // Wo, W % Wo  # windows of output cells along W
    qc, rc = Wo // W, Wo % W  # output cells covering input positions along W
    first, last = _chunk(t, gi.size, nt)
    k = first
    while k < last:
        n, c, d, h, w0, w1 = _long_row(k, last, C, D, H, W)
        k += w1 - w0
        od0, od1 = _start(d, Do, D), _end(d, Do, D)
        oh0, oh1 = _start(h, Ho, H), _end(h, Ho, H)
        # one covering cell in D and H (pooling, not upsampling there): its size, once
        one = od1 - od0 == 1 and oh1 - oh0 == 1
        rows = (_end(od0, D, Do) - _start(od0, D, Do)) * (_end(oh0, H, Ho) - _start(oh0, H, Ho))
        f, frem = _start(w0, Wo, W), w0 * Wo % W
        for w in range(w0, w1):
            nf, nfrem = _advance(f, frem, qc, rc, W)
            lo, rem = _start(f, W, Wo), f * W % Wo
            v = T(0)
            for ow in range(f, nf + (nfrem != 0)):
                nlo, nrem = _advance(lo, rem, q, r, Wo)
                width = nlo + (nrem != 0) - lo
                a = T(0)
                if one:
                    a += T(go[n, c, od0, oh0, ow] * (1.0 / (rows * width)))
                else:
                    for od in range(od0, od1):
                        depth = _end(od, D, Do) - _start(od, D, Do)
                        for oh in range(oh0, oh1):
                            size = depth * (_end(oh, H, Ho) - _start(oh, H, Ho))
                            a += T(go[n, c, od, oh, ow] * (1.0 / (size * width)))
                v += a
                lo, rem = nlo, nrem
            gi[n, c, d, h, w] = v
            f, frem = nf, nfrem


# ------------------------------------------------------------------------------ layouts


def _planar(a):
    """``a`` (N, C, D, H, W) as a C-contiguous (N*C, D*H*W) view, or None."""
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        n, c, d, h, w = a.shape
        return a.reshape(n * c, d * h * w)
    return None


def _channels_last(a):
    """``a`` (N, C, D, H, W) as a C-contiguous (N*D*H*W, C) view, or None."""
    t = a.transpose(0, 2, 3, 4, 1)  # np.moveaxis, without its microseconds of argument checks
    flags = t.flags
    if flags.c_contiguous and flags.aligned:
        n, d, h, w, c = t.shape
        return t.reshape(n * d * h * w, c)
    return None


def _planar_copy(a):
    """A fresh copy: aligned too (np.ascontiguousarray keeps an unaligned contiguous array,
    as unpickled buffers can be)."""
    n, c, d, h, w = a.shape
    return np.array(a, order="C").reshape(n * c, d * h * w)


def _channels_last_copy(a):
    n, c, d, h, w = a.shape
    return np.array(a.transpose(0, 2, 3, 4, 1), order="C").reshape(n * d * h * w, c)


#: Fewer channels than this leave the channels-last kernels' loops across channels nearly
#: nothing to vectorise. Forwards run the planar kernels then, through a copy (the
#: channels-last max forward was 2-3x slower in place for 3-4 channels); backwards read
#: channels-last memory of 2 or more channels in place all the same (the average 1.4-4x
#: faster than through copies), the max backward as the SPEC's scatter (1.2-3x faster).
_MIN_CL_CHANNELS = 8


def _is_channels_last(a, least=_MIN_CL_CHANNELS):
    """Whether ``a`` runs the channels-last kernels: channel stride 1, ``least`` channels or
    more (one channel is channels-first memory too)."""
    return a.shape[1] >= least and a.strides[1] == a.itemsize


def _pick_layout(a):
    """``(channels_last, 2-D view)`` of an input, in the layout its strides suggest; a copy
    only when it is not contiguous in that layout.

    The choice depends on the channel stride, not on which layouts happen to be contiguous
    (both are, with one channel): average sums are added in a different order in each layout,
    and a chunk of an array (dask) must get the same bits as the whole array.
    """
    if _is_channels_last(a):
        view = _channels_last(a)
        return True, view if view is not None else _channels_last_copy(a)
    view = _planar(a)
    return False, view if view is not None else _planar_copy(a)


def _as_layout(a, channels_last):
    """An input-side array (grad_output, indices) in the given layout (a copy if needed)."""
    if channels_last:
        view = _channels_last(a)
        return view if view is not None else _channels_last_copy(a)
    view = _planar(a)
    return view if view is not None else _planar_copy(a)


#: An empty output: "not contiguous channels-last, store through the 5-D array's strides".
_EMPTY = {dt: np.empty(0, dt) for dt in NATIVE_DTYPES}
_EMPTY_POSITIONS = np.empty(0, np.int64)


def _writable(out):
    """``out`` itself, or an aligned temporary to copy back (numba needs aligned arrays)."""
    return out if out.flags.aligned else np.empty(out.shape, out.dtype)


def _whole_planes(planes, rows_in, w, h, ho, rows):
    """Whether the planar max backward takes whole planes (:func:`_max_bwd_plane`) rather
    than slabs of ``rows`` of its ``rows_in`` rows of ``w`` (:func:`_max_bwd_planar`): where
    a plane is one slab, and where there are planes enough to share among the threads and
    the slabs are thinner than a window or a row is wider than a slab. A slab scans every
    cell of the output rows that cover it, so a window of k rows is scanned about k / rows
    times (64x2048 planes pooled to 8x256 2.7-3.4x, 40x2048 to 13x400 3.8x, 3x131072 to
    5x131079 3.2x, 224x224 to 7x7 1.1x faster whole; 64x64 to 3x3, slabs of 32 rows for
    windows of 22, 1.2x slower whole). Both give the same bits."""
    if rows == rows_in:
        return True
    return (planes >= _PLANES_PER_THREAD * _thread_cap()
            and (w > _SLAB or rows < -(-h // ho)))


def _thread_cap():
    """The most threads a call may get, to shape work with (asking numba for its current
    count costs 1.5 us). Work shaped by it never changes the results."""
    return _num_threads or numba.config.NUMBA_NUM_THREADS


def _channel_block(x, out, planar=0):
    """Channels per work item of the channels-last forward kernels: all, unless that leaves
    too few items to share among threads. Into a C-order result (``planar``) at least a
    quarter of the input's size, threads take whole planes of a block of channels (see
    :func:`_planar_group`): blocks of at least 16 channels then, two per thread where the
    samples are fewer."""
    n, c = x.shape[:2]
    threads = _thread_cap()
    if planar and 4 * out.size >= x.size:
        blocks = min(-(-2 * threads // n), c // 16)
        if blocks > 1:
            return -(-c // blocks)
    cells = n * out.shape[2] * out.shape[3] * out.shape[4]
    if cells >= 4 * threads or c <= 64:
        return c
    blocks = min(-(-4 * threads // cells), -(-c // 64))
    return -(-c // blocks)


def _cl_results(*results):
    """Where the channels-last forward kernels store their results (5-D, aligned):
    ``(flat views, 0)`` when all are contiguous channels-last, ``(flat views, 1)`` when
    all are C-contiguous (the default result of a channels-last input), else ``(empty
    arrays, 0)``: store through the 5-D arrays' strides."""
    views = [_channels_last(a) for a in results]
    if all(v is not None for v in views):
        return [v.reshape(-1) for v in views], 0
    if all(a.flags.c_contiguous for a in results):  # (aligned: the callers' targets)
        return [a.reshape(-1) for a in results], 1
    return [_EMPTY_POSITIONS if a.dtype == _EMPTY_POSITIONS.dtype else _EMPTY[a.dtype]
            for a in results], 0


def _position_type(x):
    """Positions are scanned in the narrowest integer that holds them: a running position
    is loaded, selected and stored for every window element, and with AVX-512's mask
    registers a narrow select costs no more than a wide one (int16 measured up to 1.3x
    faster than int32 for float32 and float64, int32 up to 1.4x faster than int64)."""
    _, _, d, h, w = x.shape
    plane = d * h * w
    return np.empty(0, np.int16 if plane < 2**15 else np.int32 if plane < 2**31 else np.int64)


# ---------------------------------------------------------------------------- interface


#: Largest plane (input, output, and input rows times output width) of the small-plane
#: kernels, and their channels per work item.
_SMALL_PLANE = 1024
_SMALL_POOLED = 256
_SMALL_WINDOW = 8
_SMALL_BLOCK = 32
_SMALL_BYTES = 48 * 1024


def _small_planes(inp, outp, backward=False):
    """Whether the small-plane kernels can run ``inp -> outp`` (forward: x -> out,
    backward: grad_output -> grad_input) in place, by the spatial shapes: planes of up to
    ``_SMALL_PLANE`` elements, not a single output cell per plane (global pooling: the
    planar and channels-last kernels stream it), and small windows unless the pooled
    planes are small too: windows of more than ``_SMALL_WINDOW`` elements in planes of more
    than ``_SMALL_POOLED`` run faster through the planar kernels' long rows (measured,
    float32, one thread: 32x32 -> 4x4 2-3x, 16x64 -> 3x5 2-3.5x, 1x500 -> 7 2-5x; where
    the small-plane kernels win, 1.2-11x: upsampling, small maps, 1x300 -> 60).
    Callers also keep the small-plane kernels from channels-last to channels-last (the
    channels-last kernels vectorise there without a store pass), deciding by the layouts
    as :func:`_pick_layout` does, so a chunk of an array takes the same path as the whole."""
    _, _, d, h, w = (outp if backward else inp).shape  # the pooled input's plane
    _, _, do, ho, wo = (inp if backward else outp).shape
    if max(d * h * w, do * ho * wo, d * h * wo, do * ho * w) > _SMALL_PLANE:
        return False
    if min(d * h * w, do * ho * wo) == 1:
        return False
    window = -(-d // do) * -(-h // ho) * -(-w // wo)
    if d * h * w > _SMALL_POOLED and window > _SMALL_WINDOW:
        return False
    return outp.flags.aligned


def _small_input(a):
    """An input of the small-plane kernels: ``(flat C-contiguous data, channel stride)``, in
    place for channels-last or planar memory, else through a planar copy."""
    n, c, d, h, w = a.shape
    if a.strides[1] == a.itemsize or c == 1:
        view = _channels_last(a)
        if view is not None:
            return view.reshape(-1), 1
    view = _planar(a)
    if view is None:
        view = _planar_copy(a)
    return view.reshape(-1), (d * h * w if c > 1 else 1)


def _flat(a):
    """``a``'s flat view if it is C-contiguous, else an empty array of its type: where the
    small-plane kernels store their results directly."""
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a.reshape(-1)
    return _EMPTY_POSITIONS if a.dtype == _EMPTY_POSITIONS.dtype else _EMPTY[a.dtype]


def _block(a, elems=0):
    """Channels per work item of the small-plane kernels on ``a`` (their input or output):
    128 (the inner loops run across the block: their set-up costs less per channel in
    longer blocks), a multiple of 8 down to 32 when buffers of ``elems`` elements per
    channel would not fit ``_SMALL_BYTES``, and fewer where that leaves a thread without
    an item. The block shapes the work, never the results (measured: the max
    forward's row buffers are read as they are written, and want 128 even beyond L1)."""
    n, c = a.shape[:2]
    cb = 128
    if elems:
        cb = max(32, min(cb, _SMALL_BYTES // (elems * a.itemsize)) // 8 * 8)
    threads = _thread_cap()
    per_sample = -(-threads // max(n, 1))  # blocks per sample for an item per thread
    cb = min(cb, max(8, (-(-c // per_sample) + 7) // 8 * 8))
    return min(c, cb)


#: Entries (of 8 bytes) past which a table or row buffer of the kernels above would be a
#: temporary larger than 1 MiB: calls that need one run the long-axis kernels instead.
_LONG_AXIS = 1 << 17


def _long_forward(x, out):
    """Whether a forward runs the long-axis kernels: tables as long as the result's axes,
    rows of the input when windows span several of them. By the spatial shapes alone: a
    chunk of an array (dask) takes the same path as the whole."""
    if x.size <= _LONG_AXIS and out.size <= _LONG_AXIS:  # (no axis is longer than its array)
        return False
    _, _, d, h, w = x.shape
    _, _, do, ho, wo = out.shape
    return max(do, ho, wo, w if d * h > 1 else 0) > _LONG_AXIS


def _long_backward(kind, go, gi, channels_last, rows=False):
    """Whether a backward runs the long-axis kernels: when the tables (of the input's D and
    H axes; for the average also of the output's axes, runs along W, and a row of output
    cells, by the channels when the channels-last kernels run; with ``rows``, the row of
    ``gi`` those kernels build for a C-order ``gi``) outgrow both 1 MiB and the result. The
    kernels give the same bits either way."""
    if go.size <= _LONG_AXIS and gi.size <= _LONG_AXIS:  # (no table outgrows its array)
        return False
    _, c, d, h, w = gi.shape
    _, _, do, ho, wo = go.shape
    if kind == "avg":
        longest = max(d, h, do, ho, wo * c if channels_last else wo, min(w, 2 * wo + 1))
    else:
        longest = max(d, h)
    if rows:
        longest = max(longest, w * c)
    return longest > _LONG_AXIS and longest > gi.size * gi.itemsize // 8


def _aligned(a):
    """``a``, or an aligned copy of it (numba reads aligned arrays only)."""
    return a if a.flags.aligned else np.array(a)


def avg_forward(x, out):
    """``out[n, c, od, oh, ow]`` = mean of the window of ``x`` (float64 sums, of input
    values or of float sums of at most 1024 of them)."""
    if _long_forward(x, out):
        target = _writable(out)
        kernel = _fwd_long_c if x.flags.c_contiguous else _fwd_long
        kernel(x.size + out.size, _aligned(x), target, _NO_INDICES, 0)
        if target is not out:
            out[...] = target
        return
    if not _is_channels_last(x) and _small_planes(x, out):
        flat, sc = _small_input(x)
        planes = x.shape[0] * x.shape[1]
        cb = _block(x, (x.size + out.size) // planes)  # buffers: an input and an output plane
        _avg_fwd_small(x.size + out.size, flat, out, _flat(out), *x.shape[2:], sc, cb)
        return
    target = _writable(out)
    channels_last, xv = _pick_layout(x)
    n, c, d, h, w = x.shape
    work = x.size + out.size
    if channels_last:
        if d > 1:  # volumes: by output rows (the choice depends on the spatial shape only)
            oflat = _channels_last(target)
            oflat = _EMPTY[x.dtype] if oflat is None else oflat.reshape(-1)
            cb = c if w * c <= _ROW_ELEMENTS else max(1, _ROW_ELEMENTS // w)
            _avg_fwd_cl_rows(work, xv.reshape(-1), target, oflat, d, h, w, cb)
        else:
            (oflat,), planar = _cl_results(target)
            _avg_fwd_cl(work, xv.reshape(-1), target, oflat, planar, d, h, w,
                        _channel_block(x, out, planar))
    else:
        _avg_fwd_planar(work, xv, target, d, h, w)
    if target is not out:
        out[...] = target


def max_forward(x, out, indices):
    """Window maximum (SPEC rules for ties, NaN, -inf) and its flat position in the plane."""
    if _long_forward(x, out):
        target, itarget = _writable(out), _writable(indices)
        kernel = _fwd_long_c if x.flags.c_contiguous else _fwd_long
        kernel(x.size + 2 * out.size, _aligned(x), target, itarget, 1)
        if target is not out:
            out[...] = target
        if itarget is not indices:
            indices[...] = itarget
        return
    if not _is_channels_last(x) and _small_planes(x, out) and indices.flags.aligned:
        work = x.size + 2 * out.size
        flat, sc = _small_input(x)
        itype = _position_type(x)
        _max_fwd_small(work, flat, out, indices, _flat(out), _flat(indices), itype, *x.shape[2:],
                       sc, _block(x))
        return
    target, itarget = _writable(out), _writable(indices)
    channels_last, xv = _pick_layout(x)
    n, c, d, h, w = x.shape
    work = x.size + 2 * out.size
    if channels_last:
        (oflat, iflat), planar = _cl_results(target, itarget)
        _max_fwd_cl(work, xv.reshape(-1), target, itarget, oflat, iflat, planar,
                    _position_type(x), d, h, w, _channel_block(x, out, planar))
    else:
        _max_fwd_planar(work, xv, target, itarget, _position_type(x), d, h, w)
    if target is not out:
        out[...] = target
    if itarget is not indices:
        indices[...] = itarget


def _backward(kind, inputs, grad_input, fresh=False):
    """Run the kernel of ``grad_input``'s layout (through a temporary for other strides), or
    of the inputs' channels-last layout into a C-order ``grad_input`` (see
    :func:`_into_planar`). All give the same bits: sums run over the same terms in the same
    order. False, with nothing written (unless ``fresh``: see :func:`max_backward`), when a
    max index lies outside the plane."""
    n, c, d, h, w = grad_input.shape
    _, _, do, ho, wo = inputs[0].shape
    work = grad_input.size + len(inputs) * inputs[0].size
    channels_last, cl_in = _is_channels_last(grad_input, 2), _is_channels_last(inputs[0], 2)
    into_planar = not channels_last and cl_in and _into_planar(inputs, grad_input)
    if _long_backward(kind, inputs[0], grad_input, channels_last or into_planar, into_planar) or (
        kind == "max" and channels_last and c < _MIN_CL_CHANNELS
    ):
        return _backward_long(kind, inputs, grad_input, work)
    cl_kernels = channels_last or into_planar  # the layout of the inputs the kernels read
    # A max gradient between planar arrays stays with the planar kernel, whose slab is the
    # whole plane there.
    planar_max = kind == "max" and not cl_in
    if (not planar_max and not (channels_last and cl_in) and not into_planar
            and _small_planes(inputs[0], grad_input, backward=True)):
        flats = [_small_input(a) for a in inputs]
        sc = flats[0][1]
        gi_planar = None if channels_last else _planar(grad_input)
        if kind == "max" and gi_planar is not None and flats[1][1] == sc == 1:
            # a scatter into whole planes, four at a time, beats the channel blocks here; it
            # skips and counts indices outside the plane, so only out= needs the check first
            if not fresh and not _positions_ok(flats[1][0], d * h * w):
                return False
            return not _max_bwd_whole(work, flats[0][0], flats[1][0], gi_planar, c, sc)
        if len({sc for _, sc in flats}) == 1:
            kernel = _avg_bwd_small if kind == "avg" else _max_bwd_small
            args = [f for f, _ in flats]
            if kind == "max" and not _positions_ok(args[1], d * h * w):
                return False
            cb = _block(grad_input, d * h * w + wo)  # buffers: a grad_input plane, a row
            kernel(work, *args, grad_input, _flat(grad_input), do, ho, wo, sc, cb)
            return True
    view = _channels_last(grad_input) if channels_last else _planar(grad_input)
    target = view
    if view is None:
        target = np.empty((n, d, h, w, c) if channels_last else (n, c, d, h, w), grad_input.dtype)
        target = target.reshape(-1, c) if channels_last else target.reshape(n * c, -1)
    args = [_as_layout(a, cl_kernels) for a in inputs]
    # The kernels below find an index only where it lies in the plane (a gather, or a
    # scatter into the rows it falls in), so a bad one writes nothing out of bounds: with a
    # fresh grad_input, the check waits until their count says an index was not found.
    if kind == "max" and not fresh and not _positions_ok(args[1].reshape(-1), d * h * w):
        return False
    if kind == "avg":
        if cl_kernels:
            _avg_bwd_cl(work, *args, target, int(into_planar), n, do, ho, wo, d, h, w)
        else:
            _avg_bwd_planar(work, *args, target, do, ho, wo, d, h, w)
    else:
        if channels_last and grad_input.size >= _CL_SCATTER * args[0].size:
            threads = _thread_cap()
            slabs = 1 if n >= 2 * threads else -(-2 * threads // n)  # items for every thread
            if _max_bwd_cl_scatter(work, *args, target, n, slabs):
                return False  # an index outside the plane (checked first unless fresh)
            hits = args[0].size
        elif cl_kernels:
            hits = _max_bwd_cl(work, *args, target, int(into_planar), n, do, ho, wo, d, h, w)
        else:
            rows = max(1, min(_SLAB // w, d * h))
            if do * ho * wo > 1 and _whole_planes(n * c, d * h, w, h, ho, rows):
                hits = _max_bwd_plane(work, *args, target, do * ho * wo)
            else:
                hits = _max_bwd_planar(work, *args, target, do, ho, wo, d, h, w, rows)
        if hits != args[0].size:
            if fresh and not _positions_ok(args[1].reshape(-1), d * h * w):
                return False
            # Some index lies outside its own cell's window (in the plane, so valid, but not
            # from a forward pass): those kernels look for each index only where its window
            # could put it. The SPEC's scatter, which takes any position, rewrites it all.
            _max_bwd_scatter(work, args, cl_kernels, target, channels_last, grad_input.shape)
    if view is None:
        if channels_last:
            grad_input[...] = target.reshape(n, d, h, w, c).transpose(0, 4, 1, 2, 3)
        else:
            grad_input[...] = target.reshape(n, c, d, h, w)
    return True


#: Most input elements per output cell for which a channels-last gradient goes into a C-order
#: result through the channels-last backward kernels (:func:`_into_planar`).
_CL_INTO_PLANAR = 4


def _into_planar(inputs, grad_input):
    """Whether :func:`_backward` runs the channels-last kernels for contiguous channels-last
    inputs into a C-order ``grad_input`` (a ``channels_last`` tensor's gradient into a new
    result), each row of ``grad_input`` transposed as it is stored: for 8 channels or more,
    where ``grad_input`` is at most ``_CL_INTO_PLANAR`` times ``grad_output``'s size
    (measured against the planar kernels on a planar copy or the small-plane kernels:
    4x128x28x28 -> 14 average 3.6x, max 1.2x, 2x256x14x14 -> 20 1.3x and 2.5x, 2x64x64x64
    -> 32 1.9x and 1.6x faster; at 5 input elements per cell 0.7-0.9x, at 34 or more
    0.1-0.5x: the transposed rows cost as much as the gradient is large, the copy as much
    as ``grad_output``)."""
    return (grad_input.shape[1] >= _MIN_CL_CHANNELS
            and grad_input.size <= _CL_INTO_PLANAR * inputs[0].size
            and _planar(grad_input) is not None
            and all(_channels_last(a) is not None for a in inputs))


def _backward_long(kind, inputs, grad_input, work):
    """:func:`_backward` without tables, for long axes (and for the max of channels-last
    memory with few channels): the average's long-axis gather, or for the maximum
    :func:`_scatter`, its indices checked first. Either reads both layouts in place."""
    target = _writable(grad_input)
    if kind == "avg":
        _avg_bwd_long(work, _aligned(inputs[0]), target)
    else:
        n, c, d, h, w = grad_input.shape
        _, _, do, ho, wo = inputs[0].shape
        flats = [_small_input(a) for a in inputs]
        if flats[0][1] != flats[1][1]:  # one of each layout: both planar
            sc = do * ho * wo if c > 1 else 1
            flats = [(_as_layout(a, False).reshape(-1), sc) for a in inputs]
        (go, sc), (ix, _) = flats
        if not _positions_ok(ix, d * h * w):
            return False
        _scatter(work, go, ix, target, sc, do * ho * wo)
    if target is not grad_input:
        grad_input[...] = target
    return True


def _max_bwd_scatter(work, args, args_last, target, channels_last, shape):
    """``target`` (the 2-D layout view of :func:`_backward`, channels-last or planar) = the
    scatter of ``args`` (grad_output and indices in the same layout, channels-last or
    planar), through :func:`_scatter`."""
    n, c, d, h, w = shape
    cells = args[0].size // (n * c)
    if channels_last:
        gi = target.reshape(n, d, h, w, c).transpose(0, 4, 1, 2, 3)
    else:
        gi = target.reshape(n, c, d, h, w)
    _scatter(work, args[0].reshape(-1), args[1].reshape(-1), gi, 1 if args_last else cells,
             cells)


def _scatter(work, go, ix, gi, sc, cells):
    """``gi`` (5-D, any strides) = the SPEC's scatter, in output order, of any indices in
    the plane, through the small-plane kernel: ``go`` and ``ix`` flat, element (n, c, cell)
    at ``n * C * cells + c * sc + cell * sp``. Its buffer, a plane by a block of channels
    per thread, is kept below the size of the result where the block allows."""
    n, c = gi.shape[:2]
    cb = max(1, min(c, _SMALL_BLOCK, n * c // (2 * _thread_cap())))
    # (the kernel only uses the product of the output's axes)
    _max_bwd_small(work, go, ix, gi, _flat(gi), cells, 1, 1, sc, cb)


def _positions_ok(ix, plane):
    """Whether every position of the flat C-contiguous ``ix`` lies in ``[0, plane)``: one
    parallel read (the same split as the kernels' for contiguous indices, so mostly by the
    thread that then reads them again), before anything is written."""
    return not _positions_bad(ix.size, ix, plane)


#: Most output cells whose reciprocal window sizes the average backward keeps in a table.
_WEIGHTS_MAX = 1 << 16

#: Input elements per output cell from which the channels-last max backward scatters
#: (:func:`_max_bwd_cl_scatter`) rather than gathers (measured, 2 threads, gather / scatter:
#: 4 elements a cell 76 / 94 us, 5 83 / 62, 34 197 / 99, 49 (256x2048x7x7 -> 1) 7.4 / 3.3
#: ms, 668 (4x32x32x64x64 -> 4x7x7) 3.5 / 1.3 ms; upsampling 32 / 50 us).
_CL_SCATTER = 5

#: Elements per slab of the planar max backward: it stays in L1 while cells add into it.
_SLAB = 2048
#: Planes per thread from which the planar max backward takes whole planes even where they
#: are larger than a slab (fewer share unevenly: 3 planes on 2 threads ran 1.2x slower).
_PLANES_PER_THREAD = 4


def avg_backward(grad_output, grad_input):
    """``grad_input[x]`` = sum over windows containing x of ``grad_output[w] / size(w)``."""
    _backward("avg", [grad_output], grad_input)


def max_backward(grad_output, indices, grad_input, fresh=False):
    """``grad_input.plane[indices[o]] += grad_output[o]``, summed in output order; False
    when an index lies outside the plane, with nothing written unless ``fresh`` (the caller
    made ``grad_input`` and discards it then: the check runs only when needed)."""
    if fresh:
        done = _max_backward_planes(grad_output, indices, grad_input)
        if done is not None:
            return done
    return _backward("max", [grad_output, indices], grad_input, fresh)


def _max_backward_planes(go, ix, gi):
    """:func:`_backward`'s route for C-contiguous planes into a fresh ``grad_input`` (the
    common call, and a small one in microseconds: this route costs a third of the general
    one), taken by the same tests; None where they send the call elsewhere, or where an
    index lies outside the plane (the general route then decides what to do)."""
    if (_is_channels_last(gi, 2) or _is_channels_last(go, 2)
            or _long_backward("max", go, gi, False)):
        return None
    _, _, d, h, w = gi.shape
    _, _, do, ho, wo = go.shape
    if do * ho * wo == 1:
        return None
    g2, i2, gi2 = _planar(go), _planar(ix), _planar(gi)
    if g2 is None or i2 is None or gi2 is None:
        return None
    rows = max(1, min(_SLAB // w, d * h))
    if not _whole_planes(gi2.shape[0], d * h, w, h, ho, rows):
        return None
    hits = _max_bwd_plane(gi.size + 2 * go.size, g2, i2, gi2, do * ho * wo)
    return True if hits == g2.size else None
