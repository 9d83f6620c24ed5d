"""GPU check of the ``cuda`` backend: its tests on a GPU, then every op timed against PyTorch.

Usage (from the repository root)::

    python benchmarks/gpu_check.py              # on a machine with an NVIDIA GPU, < 8 minutes
    python benchmarks/gpu_check.py --dry-run    # anywhere: tiny shapes, CUDA simulator if no GPU
    python benchmarks/gpu_check.py --ptx-only   # no GPU needed: compile every kernel for sm_90

Steps: (1) ``pytest tests -k cuda`` (test_cuda.py plus the generic suite's cuda cases) on the
GPU; (2) for each large case, each of avg/max forward/backward: our time (results written into
preallocated ``out=`` arrays, and with fresh allocation), PyTorch CUDA's time, GB/s (minimum
traffic: input + output, + int64 indices for max) and the ratio torch/ours (> 1: we are faster),
plus agreement with PyTorch; (3) determinism: our backward twice, bit for bit (PyTorch's atomic
backward for comparison). Inputs are PyTorch CUDA tensors handed over through
``__cuda_array_interface__`` (numba device arrays when PyTorch has no CUDA). Exit status 1 when a
test, an agreement or a determinism check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (dims, input shape, output size): large 2d and 3d classifier heads and pyramids, and a 1d case
CASES = [
    (2, (256, 2048, 7, 7), 1),
    (2, (32, 512, 64, 64), 6),
    (2, (32, 64, 224, 224), 7),
    (3, (8, 32, 32, 64, 64), (4, 7, 7)),
    (1, (64, 256, 4096), 100),
]
DRY_CASES = [
    (2, (2, 4, 7, 7), 1),
    (2, (2, 3, 12, 12), 5),
    (2, (1, 2, 14, 14), 7),
    (3, (1, 2, 4, 6, 6), (2, 3, 3)),
    (1, (2, 3, 40), 7),
]
OPS = ("avg_fwd", "max_fwd", "avg_bwd", "max_bwd")
BUDGET_S = 450  # stop starting new work after this (the whole run must stay under 8 minutes)


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def _header(text: str) -> None:
    print(f"\n== {text}", flush=True)


# --------------------------------------------------------------------------- step 1: tests


def run_tests(dry: bool, timeout: int) -> bool:
    _header("tests: pytest tests -k cuda" + (" (CUDA simulator)" if dry and not _has_gpu() else ""))
    cmd = [sys.executable, "-m", "pytest", "-W", "error", "-q", "-p", "no:cacheprovider"]
    cmd += ["tests/test_cuda.py"] if dry else ["tests", "-k", "cuda"]
    env = dict(os.environ)
    try:
        res = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        print(f"tests did not finish in {timeout} s")
        return False
    lines = (res.stdout + res.stderr).strip().splitlines()
    print("\n".join(lines[-15:]))
    return res.returncode == 0


# ------------------------------------------------------------------------ step 2: benchmarks


class Env:
    """Device arrays, PyTorch reference and synchronisation, on a GPU or in the simulator."""

    def __init__(self):
        import numpy as np
        from numba import cuda

        import fastpool
        from fastpool import _cuda

        self.np, self.cuda, self.fastpool, self.fcuda = np, cuda, fastpool, _cuda
        try:
            import torch
        except ImportError:
            torch = None
        self.torch = torch
        self.torch_cuda = bool(
            torch is not None and torch.cuda.is_available() and not _cuda.SIMULATOR
        )
        self.ref_name = (
            "PyTorch CUDA" if self.torch_cuda else "PyTorch CPU" if torch is not None else "none"
        )

    def dev(self, a):
        """A device copy of host array ``a`` (a PyTorch CUDA tensor when possible)."""
        if self.torch_cuda:
            return self.torch.from_numpy(a).cuda()
        return self.cuda.to_device(a)

    def empty(self, shape, dtype):
        if self.torch_cuda:  # PyTorch's caching allocator: no cudaMalloc per call
            return self.torch.empty(
                shape, dtype=getattr(self.torch, self.np.dtype(dtype).name), device="cuda"
            )
        return self.cuda.device_array(shape, dtype=dtype)

    def host(self, a):
        if self.torch is not None and isinstance(a, self.torch.Tensor):
            return a.detach().cpu().numpy()
        return a.copy_to_host()

    def ref(self, a):
        """The reference library's tensor for host array ``a`` (None without PyTorch)."""
        if self.torch is None:
            return None
        t = self.torch.from_numpy(a)
        return t.cuda() if self.torch_cuda else t

    def sync(self):
        self.cuda.synchronize()
        if self.torch_cuda:
            self.torch.cuda.synchronize()


def _time(fn, sync, repeat):
    fn()  # warm-up: JIT compilation, caches
    sync()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _torch_ops(env, dims):
    """PyTorch's forward and (ATen, no autograd) backward for ``dims``; 1d goes through 2d."""
    t = env.torch
    F = t.nn.functional
    aten = t.ops.aten
    nd = 3 if dims == 3 else 2
    avg_b = getattr(aten, f"_adaptive_avg_pool{nd}d_backward")
    max_b = getattr(aten, f"adaptive_max_pool{nd}d_backward")
    up = (lambda a: a.unsqueeze(-2)) if dims == 1 else (lambda a: a)
    down = (lambda a: a.squeeze(-2)) if dims == 1 else (lambda a: a)
    return {
        "avg_fwd": lambda x, o: getattr(F, f"adaptive_avg_pool{dims}d")(x, o),
        "max_fwd": lambda x, o: getattr(F, f"adaptive_max_pool{dims}d")(x, o, return_indices=True),
        "avg_bwd": lambda g, x: down(avg_b(up(g), up(x))),
        "max_bwd": lambda g, x, i: down(max_b(up(g), up(x), up(i))),
    }


def _gbs(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def bench_case(env, dims, shape, osize, repeat, deadline, results, problems):
    np, fp = env.np, env.fastpool
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    fwd = {k: getattr(fp, f"adaptive_{k}_pool{dims}d") for k in ("avg", "max")}
    bwd = {k: getattr(fp, f"adaptive_{k}_pool{dims}d_backward") for k in ("avg", "max")}
    dx = env.dev(x)
    # shapes from our own forward (also the warm-up compile)
    values, indices = fwd["max"](dx, osize, True)
    out_shape = tuple(values.shape)
    g = rng.standard_normal(out_shape, dtype=np.float32)
    dg = env.dev(g)
    di = env.dev(env.host(indices))
    o_v, o_i = env.empty(out_shape, np.float32), env.empty(out_shape, np.int64)
    o_g = env.empty(shape, np.float32)
    isz, osz = x.nbytes, g.nbytes
    ours = {
        "avg_fwd": (
            lambda: fwd["avg"](dx, osize, out=o_v),
            lambda: fwd["avg"](dx, osize),
            isz + osz,
        ),
        "max_fwd": (
            lambda: fwd["max"](dx, osize, True, out=(o_v, o_i)),
            lambda: fwd["max"](dx, osize, True),
            isz + osz + 2 * osz,
        ),
        "avg_bwd": (
            lambda: bwd["avg"](dg, shape, out=o_g),
            lambda: bwd["avg"](dg, shape),
            osz + isz,
        ),
        "max_bwd": (
            lambda: bwd["max"](dg, di, shape, out=o_g),
            lambda: bwd["max"](dg, di, shape),
            osz + 2 * osz + isz,
        ),
    }
    ref = None
    if env.torch is not None:
        tops = _torch_ops(env, dims)
        tx, tg = env.ref(x), env.ref(g)
        with env.torch.no_grad():
            _, ti = tops["max_fwd"](tx, osize)
        ref = {
            "avg_fwd": lambda: tops["avg_fwd"](tx, osize),
            "max_fwd": lambda: tops["max_fwd"](tx, osize),
            "avg_bwd": lambda: tops["avg_bwd"](tg, tx),
            "max_bwd": lambda: tops["max_bwd"](tg, tx, ti),
        }
    name = f"{dims}d {shape}->{osize}"
    for op in OPS:
        if time.monotonic() > deadline:
            print(f"{name:<34} {op:<8} skipped (time budget)")
            problems.append(f"{name} {op}: skipped (time budget)")
            continue
        with_out, fresh, nbytes = ours[op]
        t_ours = _time(with_out, env.sync, repeat)
        t_alloc = _time(fresh, env.sync, max(1, repeat // 2))
        got = fresh()
        t_ref = agree = None
        if ref is not None:
            with env.torch.no_grad():
                t_ref = _time(ref[op], env.sync, repeat)
                expect = ref[op]()
            agree = _agree(env, op, got, expect, problems, f"{name} {op}")
        results.append((name, op, t_ours, t_alloc, t_ref, nbytes))
        ratio = f"{t_ref / t_ours:6.2f}x" if t_ref else "     -"
        tref = f"{t_ref * 1e3:9.3f} {_gbs(nbytes, t_ref):7.1f}" if t_ref else f"{'-':>9} {'-':>7}"
        print(
            f"{name:<34} {op:<8} {t_ours * 1e3:9.3f} {_gbs(nbytes, t_ours):7.1f} "
            f"{t_alloc * 1e3:9.3f}   {tref}  {ratio}  {agree or '-'}",
            flush=True,
        )


def _agree(env, op, got, expect, problems, label):
    np = env.np
    if op == "max_fwd":
        (gv, gi), (ev, ei) = got, expect
        ok = np.array_equal(env.host(gv), env.host(ev), equal_nan=True) and np.array_equal(
            env.host(gi), env.host(ei)
        )
        diff = "exact" if ok else "MISMATCH"
    else:
        a, b = env.host(got), env.host(expect)
        err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 1.0
        ok = err <= 1e-4 * max(scale, 1.0)
        diff = f"{err:.1e}" if ok else f"MISMATCH {err:.1e}"
    if not ok:
        problems.append(f"{label}: results differ from the reference ({diff})")
    return diff


def determinism(env, cases, deadline, problems):
    _header("determinism: our backward twice, bit for bit (and PyTorch's, for comparison)")
    np, fp = env.np, env.fastpool
    for dims, shape, osize in cases:
        if time.monotonic() > deadline:
            print("skipped (time budget)")
            return
        rng = np.random.default_rng(1)
        x = rng.standard_normal(shape, dtype=np.float32)
        _, idx = getattr(fp, f"adaptive_max_pool{dims}d")(x, osize, True, backend="numpy")
        g = rng.standard_normal(idx.shape, dtype=np.float32)
        dg, di = env.dev(g), env.dev(idx)
        line = [f"{dims}d {shape}->{osize}:"]
        for kind in ("avg", "max"):
            fn = getattr(fp, f"adaptive_{kind}_pool{dims}d_backward")
            args = (dg, shape) if kind == "avg" else (dg, di, shape)
            a, b = env.host(fn(*args)), env.host(fn(*args))
            same = a.tobytes() == b.tobytes()
            if not same:
                problems.append(f"our {kind} backward differs between runs for {shape}")
            line.append(f"ours {kind} {'identical' if same else 'DIFFERENT'}")
            if env.torch is not None:
                tops = _torch_ops(env, dims)
                tx, tg = env.ref(x), env.ref(g)
                with env.torch.no_grad():
                    if kind == "avg":
                        r1, r2 = tops["avg_bwd"](tg, tx), tops["avg_bwd"](tg, tx)
                    else:
                        ti = env.ref(idx)
                        r1, r2 = tops["max_bwd"](tg, tx, ti), tops["max_bwd"](tg, tx, ti)
                same_t = env.host(r1).tobytes() == env.host(r2).tobytes()
                line.append(f"torch {kind} {'identical' if same_t else 'different'}")
        print("  ".join(line), flush=True)


# -------------------------------------------------------------------------- --ptx-only


def ptx_only() -> int:
    """Compile every kernel for sm_90 through NVVM with no GPU (simulator runs none of that).

    Best effort for machines without a GPU but with a CUDA toolkit's libnvvm and libdevice
    (``CUDA_HOME``): it stubs the device query and the NVRTC/path look-ups numba-cuda makes
    while compiling (numba internals: a development aid, not part of the test suite).
    """
    import glob

    import numba.cuda.cudadrv.libs as libs
    import numba.cuda.cudadrv.nvrtc as nvrtc
    import numba.cuda.cudadrv.nvvm as nvvm
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.cuda import types as T

    home = os.environ.get("CUDA_HOME") or (sorted(glob.glob("/usr/local/cuda*")) or [""])[-1]
    libdevice = sorted(glob.glob(os.path.join(home, "nvvm", "libdevice", "libdevice*.bc")))
    if not libdevice:
        print("no libdevice found: set CUDA_HOME to a CUDA toolkit")
        return 1
    os.environ.setdefault("CUDA_HOME", home)

    class _Device:
        compute_capability = (9, 0)

    if not _has_gpu():
        dispatcher.get_current_device = lambda: _Device()
        nvrtc.get_arch_option = lambda *a, **k: "compute_90"
        nvvm.get_libdevice = libs.get_libdevice = lambda: libdevice[-1]

    from fastpool import _cuda_kernels as K

    i64 = T.int64
    u5, u3 = T.UniTuple(i64, 5), T.UniTuple(i64, 3)

    def arr(dt):
        return T.Array(dt, 1, "C")

    tab = arr(i64)
    failures = 0
    for acc, dts in (("float32", (T.float16, T.float32)), ("float64", (T.float64,))):
        import numpy as np

        ks = K.make_kernels(getattr(np, acc))
        for dt in dts:
            buf = arr(getattr(T, acc))
            sigs = {
                "avg_forward": (arr(dt), i64, u5, arr(dt), i64, u5, u5, u3, tab, i64),
                "max_forward": (
                    arr(dt),
                    i64,
                    u5,
                    arr(dt),
                    i64,
                    u5,
                    arr(i64),
                    i64,
                    u5,
                    u5,
                    u3,
                    tab,
                    i64,
                ),
                "avg_backward": (arr(dt), i64, u5, arr(dt), i64, u5, u5, u3, tab),
                "max_backward": (
                    arr(dt),
                    i64,
                    u5,
                    arr(i64),
                    i64,
                    u5,
                    arr(dt),
                    i64,
                    u5,
                    u5,
                    u3,
                    tab,
                ),
                "max_backward_scatter": (arr(dt), i64, u5, arr(i64), i64, u5, buf, i64, u5, u5, u3),
            }
            for name, sig in sigs.items():
                try:
                    ptx, _ = cuda.compile_ptx(ks[name].py_func, sig, cc=(9, 0))
                    f64 = ptx.count(".f64")
                    print(
                        f"  {name:<22} {str(dt):<8} ok  ({len(ptx)} bytes of PTX, "
                        f"{f64} f64 instructions)"
                    )
                except Exception as exc:  # report and go on
                    failures += 1
                    print(f"  {name:<22} {str(dt):<8} FAILED: {type(exc).__name__}: {exc}")
    for name, sig in (
        ("copy5", (arr(T.float32), i64, u5, arr(T.float16), i64, u5, u5)),
        ("check_indices", (arr(i64), i64, u5, u5, u3, tab, arr(i64))),
    ):
        try:
            cuda.compile_ptx(getattr(K, name).py_func, sig, cc=(9, 0))
            print(f"  {name:<22} ok")
        except Exception as exc:
            failures += 1
            print(f"  {name:<22} FAILED: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes, one repeat; the CUDA simulator when there is no GPU",
    )
    parser.add_argument(
        "--ptx-only",
        action="store_true",
        help="only compile every kernel for sm_90 (no GPU needed)",
    )
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per op (median)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.ptx_only:
        return ptx_only()
    if args.dry_run and not _has_gpu():
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before numba is imported
    elif not _has_gpu():
        print("no GPU here (no nvidia-smi): use --dry-run or --ptx-only")
        return 2

    ok = True
    if not args.skip_tests:
        ok = run_tests(args.dry_run, timeout=240)

    env = Env()
    _header(f"benchmarks: fastpool cuda on {env.fcuda.describe()}; reference: {env.ref_name}")
    cases = DRY_CASES if args.dry_run else CASES
    repeat = args.repeat or (1 if args.dry_run else 10)
    deadline = start + BUDGET_S
    problems: list[str] = []
    results: list = []
    launch = (
        env.fcuda.launch_config(block=32, max_blocks=2)
        if env.fcuda.SIMULATOR
        else env.fcuda.launch_config()
    )
    with launch:
        print(
            f"{'case':<34} {'op':<8} {'ours ms':>9} {'GB/s':>7} {'+alloc':>9}   "
            f"{'ref ms':>9} {'GB/s':>7}  {'ref/ours':>7}  agreement"
        )
        for dims, shape, osize in cases:
            bench_case(env, dims, shape, osize, repeat, deadline, results, problems)
        determinism(env, cases[:4], deadline, problems)

    _header("summary")
    fwd = [(n, op, r / o) for n, op, o, _, r, _ in results if r and op.endswith("fwd")]
    bwd = [(n, op, r / o) for n, op, o, _, r, _ in results if r and op.endswith("bwd")]
    if fwd and env.torch_cuda:
        slow = [f"{n} {op} ({x:.2f}x)" for n, op, x in fwd if x < 1]
        print(
            "forward at least PyTorch CUDA's speed: "
            + ("yes, every case" if not slow else "no: " + ", ".join(slow))
        )
        slow = [f"{n} {op} ({x:.2f}x)" for n, op, x in bwd if x < 1]
        print(
            "backward no slower than PyTorch CUDA: "
            + ("yes, every case" if not slow else "no: " + ", ".join(slow))
        )
    elif results:
        print(f"timings against {env.ref_name} are not meaningful here (dry run)")
    print("tests: " + ("passed" if ok else "FAILED") if not args.skip_tests else "tests: skipped")
    for p in problems:
        print("problem: " + p)
    print(f"total {time.monotonic() - start:.0f} s")
    return 0 if ok and not [p for p in problems if "time budget" not in p] else 1


if __name__ == "__main__":
    sys.exit(main())
