"""``python -m fastpool bench``: time fastpool's backends against PyTorch on the standard cases.

:data:`CASES` is the one table of benchmark cases. This CLI, the short benchmark in
``python -m fastpool demo`` and the asv suite in ``benchmarks/`` all read it, so a case is
added (or renamed) in one place and every benchmark follows.

The asv suite loads this file *by path* from the working tree, also while it benchmarks an
old commit whose installed fastpool has no ``bench`` module. That is why nothing at module
level imports fastpool, torch or numba: each is imported where it is used.

What one measurement is (:func:`prepare`): one call of the public function (or of PyTorch's
op) on arrays made beforehand, so conversions and data generation are never timed. Inputs
are the same bytes for every backend and for PyTorch; a channels-last case is one buffer in
(N, H, W, C) order that fastpool sees as the (N, C, H, W) view with channel stride 1 (what
``tensor.numpy()`` gives for a ``channels_last`` tensor) and PyTorch as a ``channels_last``
tensor. The max backward of every backend gets the same indices. The backends and PyTorch
of one (case, op) are sampled in turns (:func:`measure_together`), so a slow spell of a
shared machine falls on all of them, not on whichever ran then.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import glob
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

OPS = ("avg", "max", "avg_backward", "max_backward")
#: fastpool backends that run on host arrays, in the registry's listing order.
CPU_BACKENDS = ("cython", "numba", "numpy")
#: Peers timed next to fastpool: "torch" on host arrays, "torch-cuda" next to "cuda".
TORCH, TORCH_CUDA = "torch", "torch-cuda"
_LAYOUT_NAMES = {
    (1, False): "NCL",
    (2, False): "NCHW",
    (2, True): "NHWC",
    (3, False): "NCDHW",
    (3, True): "NDHWC",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark input: a logical shape ``(N, C, *spatial)``, an output size, a layout."""

    shape: tuple[int, ...]
    output_size: int | tuple[int, ...]
    channels_last: bool = False
    #: part of the ``--quick`` subset (asv's float64 grid takes the small ones of it too)
    quick: bool = False

    @property
    def dims(self) -> int:
        return len(self.shape) - 2

    @property
    def layout(self) -> str:
        return _LAYOUT_NAMES[self.dims, self.channels_last]

    @property
    def out_spatial(self) -> tuple[int, ...]:
        o = self.output_size
        return (o,) * self.dims if isinstance(o, int) else tuple(o)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape[:2] + self.out_spatial

    @property
    def name(self) -> str:
        o = self.output_size
        out = str(o) if isinstance(o, int) else "x".join(map(str, o))
        return f"{'x'.join(map(str, self.shape))}->{out} {self.layout}"

    @property
    def size(self) -> int:
        """Number of input elements."""
        return math.prod(self.shape)

    def traffic(self, op: str, itemsize: int) -> int:
        """Minimum bytes an op must move: every input read once, every output written once."""
        n_in, n_out = self.size, math.prod(self.out_shape)
        index_bytes = 8 * n_out if op.startswith("max") else 0  # int64 indices, read or written
        return (n_in + n_out) * itemsize + index_bytes


def _standard_cases() -> tuple[Case, ...]:
    # (shape, output_size, in the quick subset). The classic shapes of CNN heads (global pool
    # of a ResNet's last feature map, pyramid pooling 1/2/3/6, VGG's 7x7 head), an output
    # larger than the input, a 1d signal and a 3d video volume.
    table = [
        ((256, 2048, 7, 7), 1, True),
        ((8, 512, 64, 64), 1, False),
        ((8, 512, 64, 64), 2, False),
        ((8, 512, 64, 64), 3, False),
        ((8, 512, 64, 64), 6, True),
        ((16, 64, 224, 224), 7, False),
        ((16, 64, 100, 100), 13, True),
        ((32, 64, 5, 5), 7, True),
        ((64, 256, 4096), 100, True),
        ((4, 32, 32, 64, 64), (4, 7, 7), True),
    ]
    cases = []
    for shape, out, quick in table:
        cases.append(Case(shape, out, False, quick))
        if len(shape) > 3:  # PyTorch has channels_last (2d) and channels_last_3d, no 1d one
            # in --quick the channels-last twin only of the two cases where layouts differ most
            cl_quick = quick and shape in ((256, 2048, 7, 7), (8, 512, 64, 64))
            cases.append(Case(shape, out, True, cl_quick))
    return tuple(cases)


#: The standard cases, shared by the CLI, the demo and asv.
CASES: tuple[Case, ...] = _standard_cases()
CASES_BY_NAME = {c.name: c for c in CASES}


# ------------------------------------------------------------------------------------ data


class Unavailable(NotImplementedError):
    """A backend or peer that cannot run here (asv treats NotImplementedError as a skip)."""


def _pattern(n: int, dtype) -> np.ndarray:
    # A prime-length random block tiled over the array: irregular at every window, but filling
    # 268 MB costs a memcpy instead of seconds of random generation (asv makes the data again
    # in every process it starts).
    block = np.random.default_rng(12345).random(min(n, 1_000_003), dtype=np.float32)
    return np.resize(block, n).astype(dtype, copy=False)


def _in_layout(flat: np.ndarray, shape: tuple[int, ...], channels_last: bool) -> np.ndarray:
    """Fill an array of logical ``shape`` whose memory is C order or channels-last order."""
    if not channels_last:
        return flat.reshape(shape)
    perm = (0, *range(2, len(shape)), 1)  # N, spatial..., C
    physical = flat.reshape([shape[i] for i in perm])
    return physical.transpose(np.argsort(perm))  # back to (N, C, *spatial), channel stride 1


class CaseData:
    """Inputs for one case and dtype, made once and shared by every backend and peer."""

    def __init__(self, case: Case, dtype="float32") -> None:
        self.case = case
        self.dtype = np.dtype(dtype)
        self.x = _in_layout(_pattern(case.size, self.dtype), case.shape, case.channels_last)
        n_out = math.prod(case.out_shape)
        go = _pattern(n_out, self.dtype)[::-1].copy()  # other values than x's first cells
        self.grad_output = _in_layout(go, case.out_shape, case.channels_last)
        self._indices: np.ndarray | None = None

    @property
    def indices(self) -> np.ndarray:
        """Max-pool indices of ``x``, laid out like ``grad_output`` (as PyTorch's would be)."""
        if self._indices is None:
            self._indices = self._compute_indices()
        return self._indices

    def _compute_indices(self) -> np.ndarray:
        c = self.case
        torch = sys.modules.get("torch")
        if torch is not None:  # fast, and agrees with fastpool by contract
            t = torch.from_numpy(self.x.astype(np.float32, copy=False))
            pool = getattr(torch.nn.functional, f"adaptive_max_pool{c.dims}d")
            ind = pool(t, c.output_size, return_indices=True)[1].numpy()
        else:  # not imported just for this: asv's peakmem of a fastpool backend would count it
            import fastpool

            pool = getattr(fastpool, f"adaptive_max_pool{c.dims}d")
            ind = pool(self.x, c.output_size, True)[1]
        out = np.empty(ind.size, dtype=np.int64)
        view = _in_layout(out, c.out_shape, c.channels_last)
        view[...] = ind
        return view


# ------------------------------------------------------------------------------ runners


def _no_sync() -> None:
    pass


@dataclasses.dataclass
class Runner:
    """A zero-argument callable doing exactly one op, and how to wait for it to finish."""

    call: Callable[[], object]
    sync: Callable[[], None] = _no_sync
    device: str = "host"


def _fastpool_runner(data: CaseData, op: str, backend: str) -> Runner:
    import fastpool

    try:
        be = fastpool._backends.get(backend)
    except ValueError as exc:  # BackendError: unknown or not usable here (says why)
        raise Unavailable(str(exc)) from None
    c, d = data.case, data.case.dims
    x, go, ind, shape = data.x, data.grad_output, None, c.shape
    sync: Callable[[], None] = _no_sync
    device = "host"
    if getattr(be, "accepts_device", False):
        x, go, sync = _to_device(x), _to_device(go), _cuda_sync
        device = "cuda"
    if op == "max_backward":
        ind = _to_device(data.indices) if device == "cuda" else data.indices
    f = getattr(fastpool, _FASTPOOL_FUNCS[op].format(d=d))
    o = c.output_size
    kw = {"backend": backend}
    if c.channels_last and device == "host":
        # The same memory in and out as PyTorch's channels_last tensors: the arrays' physical
        # (N, *spatial, C) order with data_format="channels_last", so results are channels-last
        # too (a channels-first call would return, and pay for, a C-order NCHW result).
        x, go = np.moveaxis(x, 1, -1), np.moveaxis(go, 1, -1)
        ind = None if ind is None else np.moveaxis(ind, 1, -1)
        shape = (shape[0], *shape[2:], shape[1])
        kw["data_format"] = "channels_last"
    if op == "avg":
        call = lambda: f(x, o, **kw)  # noqa: E731
    elif op == "max":
        call = lambda: f(x, o, True, **kw)  # noqa: E731 (PyTorch makes indices too)
    elif op == "avg_backward":
        call = lambda: f(go, shape, **kw)  # noqa: E731
    else:
        call = lambda: f(go, ind, shape, **kw)  # noqa: E731
    return Runner(call, sync, device)


_FASTPOOL_FUNCS = {
    "avg": "adaptive_avg_pool{d}d",
    "max": "adaptive_max_pool{d}d",
    "avg_backward": "adaptive_avg_pool{d}d_backward",
    "max_backward": "adaptive_max_pool{d}d_backward",
}


def _torch_runner(data: CaseData, op: str, device: str = "cpu") -> Runner:
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("torch has no usable CUDA device")
    c = data.case
    F, aten = torch.nn.functional, torch.ops.aten
    # from_numpy keeps the strides, so a channels-last case is a channels_last tensor; .to()
    # keeps them too (preserve_format)
    x = torch.from_numpy(data.x).to(device)
    go = torch.from_numpy(data.grad_output).to(device)
    o = c.output_size
    sync = torch.cuda.synchronize if device == "cuda" else _no_sync
    where = "cuda" if device == "cuda" else "host"
    if op == "avg":
        f = getattr(F, f"adaptive_avg_pool{c.dims}d")
        return Runner(lambda: f(x, o), sync, where)
    if op == "max":
        f = getattr(F, f"adaptive_max_pool{c.dims}d")
        return Runner(lambda: f(x, o, return_indices=True), sync, where)
    # Backward: the ATen kernels autograd calls, without a graph or a loss around them. PyTorch
    # has no 1d pooling kernels: its 1d ops run the 2d ones on (N, C, 1, L), and so do we.
    if c.dims == 1:
        x, go = x.unsqueeze(2), go.unsqueeze(2)
    d2 = max(c.dims, 2)
    if op == "avg_backward":
        f = getattr(aten, f"_adaptive_avg_pool{d2}d_backward")
        return Runner(lambda: f(go, x), sync, where)
    ind = torch.from_numpy(data.indices).to(device)
    if c.dims == 1:
        ind = ind.unsqueeze(2)
    f = getattr(aten, f"adaptive_max_pool{d2}d_backward")
    return Runner(lambda: f(go, x, ind), sync, where)


def prepare(data: CaseData, op: str, backend: str) -> Runner:
    """A :class:`Runner` for ``op`` on ``data`` by a fastpool backend, ``"torch"`` or
    ``"torch-cuda"``; :class:`Unavailable` when it cannot run here."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if backend == TORCH:
        return _torch_runner(data, op, "cpu")
    if backend == TORCH_CUDA:
        return _torch_runner(data, op, "cuda")
    return _fastpool_runner(data, op, backend)


def _to_device(a: np.ndarray):
    """Copy a host array to the GPU keeping its strides (a channels-last view stays one)."""
    from numba import cuda

    order = np.argsort(a.strides, kind="stable")[::-1]  # axes from largest stride to smallest
    if tuple(order) == tuple(range(a.ndim)):
        return cuda.to_device(np.ascontiguousarray(a))
    dev = cuda.to_device(np.ascontiguousarray(a.transpose(order)))
    try:  # numba's real device arrays transpose 2-D only (the simulator's do any)
        return dev.transpose(tuple(np.argsort(order)))
    except (NotImplementedError, ValueError):
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        return DeviceNDArray(a.shape, a.strides, a.dtype, gpu_data=dev.gpu_data)


def _cuda_sync() -> None:
    from numba import cuda

    cuda.synchronize()


def set_threads(n: int, backends: Iterable[str]) -> list[str]:
    """Give PyTorch and every threaded fastpool backend ``n`` threads; return who took them."""
    took = []
    if TORCH in backends or TORCH_CUDA in backends:
        try:
            import torch

            torch.set_num_threads(n)
            took.append("torch")
        except ImportError:
            pass
    import fastpool

    if hasattr(fastpool, "set_num_threads"):  # also reaches backends that load later
        fastpool.set_num_threads(n)
    for name in backends:
        if name in (TORCH, TORCH_CUDA):
            continue
        try:
            be = fastpool._backends.get(name)
        except ValueError:
            continue
        setter = getattr(getattr(be, "module", be), "set_num_threads", None)
        if setter is not None:
            setter(n)
            took.append(name)
    return took


# ------------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    seconds: float  # median of the samples, per call
    calls: int  # calls timed in all


def measure(
    runner: Runner,
    *,
    warmup: bool = True,
    budget: float = 1.0,
    min_repeats: int = 5,
    max_repeats: int = 100,
    cold: bool = False,
) -> Timing:
    """Median time of one call of ``runner`` (see :func:`measure_together`)."""
    return measure_together(
        [runner],
        warmup=[warmup],
        budget=budget,
        min_repeats=min_repeats,
        max_repeats=max_repeats,
        cold=cold,
    )[0]


def measure_together(
    runners: Sequence[Runner],
    *,
    warmup: Sequence[bool] | None = None,
    budget: float = 1.0,
    min_repeats: int = 5,
    max_repeats: int = 100,
    cold: bool = False,
) -> list[Timing]:
    """Median time of one call of each runner, their samples taken in turns.

    Round-robin sampling: on a shared machine the speed drifts over seconds, and timing one
    runner after the other would hand that drift to the comparison between them; taken in
    turns, every runner sees the same conditions. Each sample lasts at least 2 ms (tiny
    cases run several calls per sample) so that timer resolution and call overhead do not
    decide the result; each runner gets ``budget`` seconds of samples, within the repeats.

    ``cold``: the CPU caches are emptied of the data before every sample of a host runner
    (see :func:`evict_caches`), and each such sample is one call, so a sample reads its
    input from memory. Otherwise a cache large enough to hold the input keeps much of it
    between calls, and what a runner finds there depends on the order in which the runner
    before it read the data.
    """
    warmup = [True] * len(runners) if warmup is None else list(warmup)
    evict = [cold and runner.device == "host" for runner in runners]
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection in the middle of a sample is noise, not the kernel's time
    try:
        inner, wanted, samples = [], [], []
        for runner, warm, cold_runner in zip(runners, warmup, evict, strict=True):
            if warm:  # JIT compilation, first-touch of caches and allocator pools
                runner.call()
                runner.sync()
            first = _sample(runner, 1)
            n = max(1, min(10_000, int(2e-3 / max(first, 1e-9))))
            if cold_runner:
                n = 1  # one call per eviction: a second call would find the data cached
            inner.append(n)
            samples.append([first] if n == 1 and not cold_runner else [])  # (that one ran warm)
            wanted.append(min(max_repeats, max(min_repeats, int(budget / (first * n)))))
        for _ in range(max(wanted)):
            for i, runner in enumerate(runners):
                if len(samples[i]) < wanted[i]:
                    if evict[i]:
                        evict_caches()
                    samples[i].append(_sample(runner, inner[i]))
    finally:
        if gc_was_on:
            gc.enable()
    return [  # the calls timed: the samples kept, and the sizing call if it is not one of them
        Timing(statistics.median(s), len(s) * n + (0 if n == 1 and not e else 1))
        for s, n, e in zip(samples, inner, evict, strict=True)
    ]


_evict_buffer: np.ndarray | None = None
_evict_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, the pool)
#: Bounds of the eviction buffer (twice the caches' total size within them).
EVICT_MIN_BYTES, EVICT_MAX_BYTES = 64 * 2**20, 2**31


def evict_caches() -> None:
    """Read a buffer of twice the CPU caches' total size (64 MiB to 2 GiB), a part in each of
    as many threads as this process has CPUs, so that the shared cache and every core's own
    ones hold the buffer, and whatever is timed next reads its data from memory. The buffer
    is made on the first call and kept."""
    global _evict_buffer, _evict_pool
    if _evict_buffer is None:
        size = min(EVICT_MAX_BYTES, max(EVICT_MIN_BYTES, 2 * _cache_bytes()))
        _evict_buffer = np.ones(size // 8, dtype=np.float64)
    parts = np.array_split(_evict_buffer, _cpu_count())
    if len(parts) == 1:
        np.sum(parts[0])
        return
    if _evict_pool is None or _evict_pool[0] != len(parts):
        pool = ThreadPoolExecutor(len(parts), thread_name_prefix="fastpool-evict")
        _evict_pool = len(parts), pool
    list(_evict_pool[1].map(np.sum, parts))  # numpy's sum lets go of the GIL


def _cache_bytes() -> int:
    """The total size of the CPU data caches, each shared cache counted once (Linux sysfs),
    or 256 MiB where the system does not say."""
    seen: dict[tuple[str, str, str], int] = {}
    for index in glob.glob("/sys/devices/system/cpu/cpu*/cache/index*"):
        try:
            fields = {}
            for key in ("type", "level", "shared_cpu_list", "size"):
                with open(os.path.join(index, key)) as f:
                    fields[key] = f.read().strip()
        except OSError:
            continue
        if fields["type"] == "Instruction":
            continue
        text = fields["size"]
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale != 1 else text
        if digits.isdigit():
            seen[fields["level"], fields["type"], fields["shared_cpu_list"]] = int(digits) * scale
    return sum(seen.values()) or 256 * 2**20


def _sample(runner: Runner, inner: int) -> float:
    """Seconds per call over ``inner`` calls (and the wait for the last one)."""
    call = runner.call
    t0 = time.perf_counter()
    for _ in range(inner):
        call()
    runner.sync()
    return (time.perf_counter() - t0) / inner


def copy_bandwidth(repeats: int = 5, nbytes: int = 256 * 2**20) -> float:
    """GB/s of ``np.copyto`` between two 256 MiB arrays, counting bytes read plus written."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)  # touched now so page faults are not timed
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times[1:]) / 1e9


def device_copy_bandwidth(repeats: int = 5, nbytes: int = 256 * 2**20) -> float:
    """The same on the GPU: device-to-device copy of 256 MiB (numba.cuda)."""
    from numba import cuda

    src = cuda.to_device(np.ones(nbytes // 4, dtype=np.float32))
    dst = cuda.device_array_like(src)
    times = []
    for _ in range(repeats + 1):
        cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_to_device(src)
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times[1:]) / 1e9


class Progress:
    """One line on stderr, shown only once a run has lasted a couple of seconds.

    On a terminal it redraws in place; in a log (CI) it prints a line every 10 s at most.
    """

    def __init__(self, total: int, stream=None, delay: float = 2.0) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.delay = delay
        self.shown = False

    def step(self, label: str) -> None:
        now = time.monotonic()
        if now - self.start >= self.delay and (self.tty or now - self.last >= 10.0):
            line = f"[{self.done + 1}/{self.total} {now - self.start:4.0f}s] {label}"
            if self.tty:
                self.stream.write("\r\033[K" + line[:100])
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
            self.last, self.shown = now, True
        self.done += 1

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


# ------------------------------------------------------------------------------ the run


@dataclasses.dataclass
class Settings:
    """How hard to try. ``--quick`` and the demo use smaller numbers."""

    budget: float = 1.0  # seconds of samples per measurement
    min_repeats: int = 5
    max_repeats: int = 100
    numpy_repeats: int = 3  # the reference backend takes up to seconds per call
    numpy_max_bytes: int | None = None  # time it only on cases up to this many input bytes
    note: str = ""


FULL = Settings()
#: Most samples per measurement with ``--cold``, and the least bytes a case moves to be timed
#: cold (more than the cores' own caches hold).
COLD_REPEATS, COLD_MIN_BYTES = 15, 16 * 2**20
QUICK = Settings(
    budget=0.1,
    min_repeats=2,
    max_repeats=15,
    numpy_repeats=1,
    numpy_max_bytes=64 * 2**20,
    note=f"quick: {sum(c.quick for c in CASES)} of the {len(CASES)} cases, 2-15 samples (full: "
    "5-100); the numpy backend timed with one call, only on inputs up to 64 MiB",
)


def run(
    cases: Sequence[Case],
    ops: Sequence[str],
    backends: Sequence[str],
    *,
    dtype="float32",
    settings: Settings = FULL,
    threads: int | None = None,
    progress: bool = True,
    cold: bool = False,
) -> dict:
    """Time every (case, op, backend) and return the results (the ``--json`` document).

    ``cold``: every sample of a case that moves :data:`COLD_MIN_BYTES` or more reads its data
    from memory (see :func:`measure_together`), with at most :data:`COLD_REPEATS` samples
    per measurement, as each costs a pass over a buffer twice the size of the CPU caches.
    Smaller cases run warm: their data fit the cores' own caches, and a sample of many short
    calls after the pause of an eviction would time waking the threads."""
    dtype = np.dtype(dtype)
    threads = threads or _cpu_count()
    took = set_threads(threads, backends)
    meta = _meta(dtype, threads, took, settings)
    meta["cold"] = cold
    meta["copy_gbps"] = {"host": copy_bandwidth(3 if settings is not FULL else 7)}
    if "cuda" in backends:
        meta["copy_gbps"]["cuda"] = device_copy_bandwidth()
    results, skipped = [], {}
    bar = Progress(len(cases) * len(ops) * len(backends)) if progress else None
    for case in cases:
        data = CaseData(case, dtype)
        for op in ops:
            cold_op = cold and case.traffic(op, dtype.itemsize) >= COLD_MIN_BYTES
            max_repeats = settings.max_repeats
            if cold_op:
                max_repeats = min(max_repeats, COLD_REPEATS)
            together: list[tuple[str, Runner]] = []
            for backend in backends:
                if bar:
                    bar.step(f"{case.name} {op} {backend}")
                if backend == "numpy":
                    limit = settings.numpy_max_bytes
                    if limit and case.size * dtype.itemsize > limit:
                        continue
                try:
                    runner = prepare(data, op, backend)
                    if backend == "numpy":  # alone: a few calls of up to seconds each
                        t = measure(
                            runner,
                            warmup=False,
                            min_repeats=1,
                            max_repeats=settings.numpy_repeats,
                            budget=settings.budget,
                            cold=cold_op,
                        )
                        results.append(_row(case, op, backend, runner, t, dtype, meta))
                        continue
                    # untimed: compiles a JIT's kernel, warms caches and thread pools, and a
                    # call that fails says so here
                    runner.call()
                    runner.sync()
                except Unavailable as exc:
                    skipped.setdefault(backend, str(exc))
                    continue
                except Exception as exc:  # e.g. a dtype PyTorch does not pool: note it, go on
                    why = f"{type(exc).__name__}: {exc}"
                    skipped.setdefault(f"{backend} ({case.name}, {op})", why)
                    continue
                together.append((backend, runner))
            if together:  # the backends and PyTorch sampled in turns
                timings = measure_together(
                    [r for _, r in together],
                    warmup=[False] * len(together),
                    budget=settings.budget,
                    min_repeats=settings.min_repeats,
                    max_repeats=max_repeats,
                    cold=cold_op,
                )
                for (backend, runner), t in zip(together, timings, strict=True):
                    results.append(_row(case, op, backend, runner, t, dtype, meta))
        del data
    if bar:
        bar.close()
    _add_speedups(results)
    return {"meta": meta, "skipped": skipped, "results": results, "geomean": geomeans(results)}


def _row(case: Case, op: str, backend: str, runner: Runner, t: Timing, dtype, meta) -> dict:
    """One result of the ``--json`` document."""
    traffic = case.traffic(op, dtype.itemsize)
    gbps = traffic / t.seconds / 1e9
    copy = meta["copy_gbps"]["cuda" if runner.device == "cuda" else "host"]
    return {
        "case": case.name,
        "shape": list(case.shape),
        "output_size": list(case.out_spatial),
        "layout": case.layout,
        "channels_last": case.channels_last,
        "dims": case.dims,
        "op": op,
        "backend": backend,
        "device": runner.device,
        "ms": t.seconds * 1e3,
        "calls": t.calls,
        "bytes": traffic,
        "gbps": gbps,
        "pct_copy": 100 * gbps / copy,
    }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _peer(row) -> str:
    return TORCH_CUDA if row["device"] == "cuda" else TORCH


def _add_speedups(results: list[dict]) -> None:
    ms = {(r["case"], r["op"], r["backend"]): r["ms"] for r in results}
    for r in results:
        key = (r["case"], r["op"])
        torch_ms = ms.get((*key, _peer(r)))
        numpy_ms = ms.get((*key, "numpy"))
        r["vs_torch"] = torch_ms / r["ms"] if torch_ms else None
        r["vs_numpy"] = numpy_ms / r["ms"] if numpy_ms else None


def geomeans(results: list[dict]) -> dict[str, dict[str, float | int]]:
    """Per backend: geometric mean of the speedup over PyTorch (and over numpy), and over how
    many (case, op) pairs it was taken."""
    out = {}
    for backend in dict.fromkeys(r["backend"] for r in results):
        if backend in (TORCH, TORCH_CUDA):
            continue
        rows = [r for r in results if r["backend"] == backend]
        entry = {}
        for key in ("vs_torch", "vs_numpy"):
            vals = [r[key] for r in rows if r[key]]
            if vals and not (key == "vs_numpy" and backend == "numpy"):
                entry[key] = math.exp(sum(map(math.log, vals)) / len(vals))
                entry[key + "_n"] = len(vals)
        out[backend] = entry
    return out


def _meta(dtype, threads, took, settings) -> dict:
    versions = {"numpy": np.__version__}
    for mod in ("fastpool", "torch", "numba", "Cython"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_model()}, {_cpu_count()} CPUs, {platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "versions": versions,
        "dtype": dtype.name,
        "threads": threads,
        "threads_set_for": took,
        "mode": settings.note or "full",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- printing


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_x(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def format_table(doc: dict) -> str:
    """The human table: one block per case, one row per op and backend."""
    meta, results = doc["meta"], doc["results"]
    v = meta["versions"]
    lines = [
        f"fastpool bench  {meta['date']}  {meta['machine']}",
        "  "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; dtype {meta['dtype']}; threads {meta['threads']}"
        + (f" (set for {', '.join(meta['threads_set_for'])})" if meta["threads_set_for"] else ""),
        "  copy bandwidth (np.copyto 256 MiB, read+write): "
        + ", ".join(f"{k} {val:.1f} GB/s" for k, val in meta["copy_gbps"].items()),
    ]
    if meta["mode"] != "full":
        lines.append(f"  {meta['mode']}")
    if meta.get("cold"):
        lines.append(
            f"  cold: the CPU caches emptied before every sample of the cases that move "
            f"{COLD_MIN_BYTES // 2**20} MiB or more"
        )
    lines.append("  GB/s = minimum traffic (input + output [+ int64 indices]) / median time")
    head = (
        f"{'case':<26} {'op':<13} {'backend':<10} {'ms':>9} {'GB/s':>6} {'%copy':>6}"
        f" {'vs torch':>8} {'vs numpy':>8}"
    )
    lines += ["", head, "-" * len(head)]
    prev_case = prev_op = None
    for r in results:
        if r["case"] != prev_case and prev_case is not None:
            lines.append("")
        case = r["case"] if r["case"] != prev_case else ""
        op = r["op"] if (r["op"], r["case"]) != (prev_op, prev_case) else ""
        prev_case, prev_op = r["case"], r["op"]
        lines.append(
            f"{case:<26} {op:<13} {r['backend']:<10} {_fmt_ms(r['ms']):>9} {r['gbps']:6.1f}"
            f" {r['pct_copy']:5.0f}% {_fmt_x(r['vs_torch']):>8} {_fmt_x(r['vs_numpy']):>8}"
        )
    lines.append("")
    lines.append("geometric mean speedup (over the (case, op) pairs both ran):")
    for backend, g in doc["geomean"].items():
        if not g:  # the numpy reference with no PyTorch to compare with
            continue
        parts = []
        if "vs_torch" in g:
            parts.append(f"{_fmt_x(g['vs_torch'])} over torch ({g['vs_torch_n']})")
        if "vs_numpy" in g:
            parts.append(f"{_fmt_x(g['vs_numpy'])} over numpy ({g['vs_numpy_n']})")
        lines.append(f"  {backend:<10} " + ("; ".join(parts) or "-"))
    for who, why in doc["skipped"].items():
        lines.append(f"skipped {who}: {why}")
    return "\n".join(lines)


def format_markdown(doc: dict) -> str:
    """A compact table for the README: one row per (case, op), one column per backend."""
    results = doc["results"]
    backends = list(dict.fromkeys(r["backend"] for r in results))
    # the peer first, the fastpool backends, the slow reference last
    backends.sort(key=lambda b: (b not in (TORCH, TORCH_CUDA), b == "numpy"))
    cells = {(r["case"], r["op"], r["backend"]): r for r in results}
    head = ["case", "op"] + [
        f"{b} ms" + ("" if b in (TORCH, TORCH_CUDA, "numpy") else " (GB/s, vs torch)")
        for b in backends
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case, op in dict.fromkeys((r["case"], r["op"]) for r in results):
        row = [case, op]
        for b in backends:
            r = cells.get((case, op, b))
            if r is None:
                row.append("")
            elif b in (TORCH, TORCH_CUDA, "numpy"):
                row.append(_fmt_ms(r["ms"]))
            else:
                gbps = f"{r['gbps']:.1f}" if r["gbps"] < 10 else f"{r['gbps']:.0f}"
                row.append(f"{_fmt_ms(r['ms'])} ({gbps}, {_fmt_x(r['vs_torch'])})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(doc: dict, path: str) -> None:
    """GB/s of every backend per case, one panel per op, against the copy bandwidth; each
    fastpool bar is labelled with its speedup over PyTorch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    results, meta = doc["results"], doc["meta"]
    ops = list(dict.fromkeys(r["op"] for r in results))
    cases = list(dict.fromkeys(r["case"] for r in results))
    backends = list(dict.fromkeys(r["backend"] for r in results))
    colors = {
        "torch": "0.3",
        "torch-cuda": "0.3",
        "numpy": "0.78",
        "numba": "#1f77b4",
        "cython": "#ff7f0e",
        "cuda": "#2ca02c",
    }
    cells = {(r["case"], r["op"], r["backend"]): r for r in results}
    ncols = 2 if len(ops) > 1 else 1
    nrows = math.ceil(len(ops) / ncols)
    height = 1.2 + 0.12 * len(cases) * (len(backends) + 1)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(8 * ncols, height * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",  # leaves room for the suptitle, unlike tight_layout
    )
    bar_h = 0.8 / len(backends)
    ys = np.arange(len(cases))
    copy = meta["copy_gbps"]["host"]
    top = max([copy] + [r["gbps"] for r in results])
    for ax, op in zip(axes.flat, ops, strict=False):
        for k, b in enumerate(backends):
            rows = [cells.get((c, op, b)) for c in cases]
            y = ys + (k - (len(backends) - 1) / 2) * bar_h
            ax.barh(
                y,
                [r["gbps"] if r else 0.0 for r in rows],
                height=bar_h,
                color=colors.get(b),
                label=b,
            )
            if b in (TORCH, TORCH_CUDA, "numpy"):
                continue
            for yy, r in zip(y, rows, strict=True):
                if r and r["vs_torch"]:
                    ax.text(
                        r["gbps"] + top * 0.01,
                        yy,
                        _fmt_x(r["vs_torch"]),
                        va="center",
                        fontsize=6.5,
                        color=colors.get(b),
                    )
        ax.axvline(copy, color="k", ls="--", lw=1)
        ax.text(copy, -0.45, f"copy {copy:.0f} GB/s ", fontsize=8, ha="right", va="top")
        ax.set_title(op.replace("_", " "))
        ax.set_xlabel("GB/s (minimum traffic / median time); labels: speedup over torch")
        ax.set_xlim(0, top * 1.15)
        ax.set_yticks(ys, cases, fontsize=8)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"fastpool vs PyTorch, adaptive pooling ({meta['dtype']}, {meta['threads']} threads)"
        f" -- {meta['machine']}, {meta['date']}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- CLI


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def select_cases(dims=None, cases_regex=None, quick=False, layout=None) -> list[Case]:
    chosen = [c for c in CASES if not quick or c.quick]
    if dims:
        chosen = [c for c in chosen if c.dims in dims]
    if cases_regex:
        chosen = [c for c in chosen if re.search(cases_regex, c.name)]
    if layout == "first":
        chosen = [c for c in chosen if not c.channels_last]
    elif layout == "last":
        chosen = [c for c in chosen if c.channels_last]
    return chosen


def default_backends() -> list[str]:
    import fastpool

    return [b for b in fastpool.available_backends() if b in CPU_BACKENDS]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}")
    return value


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc}): {text!r}") from None
    return text


def _dims(text: str) -> str:
    if not all(d.strip() in ("1", "2", "3") for d in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected 1, 2 and/or 3; got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastpool bench",
        description="Time fastpool's backends, PyTorch and the numpy reference on the standard "
        "cases; print time, GB/s, % of copy bandwidth and speedups.",
    )
    p.add_argument(
        "--backend",
        action="append",
        metavar="NAME[,NAME]",
        help="fastpool backends (repeatable or comma list; default: every usable "
        "CPU backend). 'cuda' times on the GPU against torch-cuda when available.",
    )
    p.add_argument(
        "--op",
        action="append",
        metavar="OP[,OP]",
        help=f"operations, default all: {', '.join(OPS)}",
    )
    p.add_argument("--dims", action="append", type=_dims, metavar="D[,D]", help="1, 2 and/or 3")
    p.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="threads for PyTorch and every threaded "
        "backend (default: the CPUs this process may use)",
    )
    p.add_argument(
        "--cases", type=_regex, metavar="REGEX", help="only cases whose name matches, e.g. NHWC"
    )
    p.add_argument("--layout", choices=("first", "last"), help="only channels-first/-last cases")
    p.add_argument("--quick", action="store_true", help="a subset of cases, fewer repeats")
    p.add_argument(
        "--cold",
        action="store_true",
        help="empty the CPU caches before every sample (of one call) of cases that move "
        f"{COLD_MIN_BYTES // 2**20} MiB or more, by reading a buffer of twice the caches' size "
        f"on every CPU, so their data come from memory; at most {COLD_REPEATS} samples each",
    )
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--no-numpy", action="store_true", help="do not time the numpy reference")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a README table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw GB/s per case (matplotlib)")
    p.add_argument("--load", metavar="FILE", help="print/plot a saved --json file, time nothing")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:<28} {'quick' if c.quick else ''}")
        return 0
    if args.load:
        try:
            with open(args.load) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            parser.error(f"--load {args.load}: {exc}")
    else:
        doc = _run_from_args(args)
        if doc is None:
            return 2
    print(format_table(doc))
    if args.markdown:
        print()
        print(format_markdown(doc))
    if args.json and not args.load:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _run_from_args(args) -> dict | None:
    import fastpool

    ops = _split(args.op) or list(OPS)
    bad = [o for o in ops if o not in OPS]
    if bad:
        print(
            f"fastpool bench: unknown op {', '.join(bad)}; expected {', '.join(OPS)}",
            file=sys.stderr,
        )
        return None
    dims = [int(d) for d in _split(args.dims)] or None
    cases = select_cases(dims, args.cases, args.quick, args.layout)
    if not cases:
        print("no case matches the selection (see --list)", file=sys.stderr)
        return None
    backends = _split(args.backend) or default_backends()
    if args.no_numpy and not args.backend:  # --backend numpy --no-numpy still times it
        backends = [b for b in backends if b != "numpy"]
    for b in backends:
        if b in (TORCH, TORCH_CUDA):
            continue
        try:
            fastpool._backends.get(b)
        except ValueError as exc:
            print(f"fastpool bench: {exc}", file=sys.stderr)
            return None
    # the references that the speedup columns divide by, unless switched off
    if not args.no_numpy and "numpy" not in backends:
        backends.append("numpy")
    if not args.no_torch:
        if any(b in CPU_BACKENDS for b in backends) and TORCH not in backends:
            backends.append(TORCH)
        if "cuda" in backends and TORCH_CUDA not in backends:
            backends.append(TORCH_CUDA)
    settings = QUICK if args.quick else FULL
    return run(
        cases,
        ops,
        backends,
        dtype=args.dtype,
        settings=settings,
        threads=args.threads,
        cold=args.cold,
    )


if __name__ == "__main__":
    sys.exit(main())
