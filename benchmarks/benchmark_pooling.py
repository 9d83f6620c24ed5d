"""Time and peak memory of every op, backend and case, generated from fastpool's case table.

Nothing below names a case or an op: the classes are made in a loop over ``bench.OPS`` and
parameterised over :data:`cases.BACKENDS` x ``bench.CASES``, so adding a case to the table
in ``fastpool/bench.py`` adds it here and to ``python -m fastpool bench`` alike. Generated
names read like ``benchmark_pooling.MaxPoolBackward.time_pool('numba', '8x512x64x64->6 NHWC')``.

PyTorch runs as one more "backend", so every asv run stores fastpool and PyTorch side by
side. A backend that cannot run (not built at an old commit, not installed) raises
NotImplementedError in ``setup``, which asv records as skipped.
"""

from __future__ import annotations

from .cases import BACKENDS, bench, cpu_count

#: The numpy backend is the reference oracle, not a product goal, and takes up to seconds
#: per call: track it on the small cases only, where it still catches a regression.
NUMPY_MAX_BYTES = 48 * 2**20
#: float64 on the quick subset's cases of at most this size (float32 is the main grid).
FLOAT64_MAX_BYTES = 64 * 2**20
#: peakmem on the largest inputs, where a temporary copy would show.
LARGE_BYTES = 128 * 2**20

# asv_runner re-runs ``setup`` before every sample, and a case's arrays take up to a second to
# make. Each parameter combination runs in a process of its own, so one entry per process
# is all this cache ever holds; the calls never modify their inputs, so reusing them is safe.
_prepared: dict[tuple, bench.Runner] = {}


def _runner(op: str, backend: str, case_name: str, dtype: str) -> bench.Runner:
    key = (op, backend, case_name, dtype)
    if key not in _prepared:
        case = bench.CASES_BY_NAME[case_name]
        _prepared.clear()
        data = bench.CaseData(case, dtype)
        runner = bench.prepare(data, op, backend)  # Unavailable is a NotImplementedError
        bench.set_threads(cpu_count(), [backend])  # PyTorch gets as many threads as fastpool
        runner.call()  # JIT compilation and first-touch happen here, not in a sample
        runner.sync()
        _prepared[key] = runner
    return _prepared[key]


class _Pool:
    op = "avg"
    dtype = "float32"
    param_names = ("backend", "case")
    timeout = 600.0
    # Samples of one call each (asv_runner's choice when setup exists); JIT warm-up is done in
    # setup, so no warm-up time; at least 3 samples, then stop after about a second.
    warmup_time = 0.0
    repeat = (3, 25, 1.0)

    def setup(self, backend, case):
        self.runner = _runner(self.op, backend, case, self.dtype)

    def time_pool(self, backend, case):
        self.runner.call()
        self.runner.sync()


class _PoolPeakmem:
    op = "avg"
    dtype = "float32"
    param_names = ("backend", "case")
    timeout = 600.0

    def setup(self, backend, case):
        self.runner = _runner(self.op, backend, case, self.dtype)

    def peakmem_pool(self, backend, case):
        self.runner.call()


def _class_name(op: str) -> str:
    kind, _, backward = op.partition("_")
    return f"{kind.title()}Pool{'Backward' if backward else ''}"


def _names(cases) -> list[str]:
    return [c.name for c in cases]


_f64_cases = [c for c in bench.CASES if c.quick and c.size * 4 <= FLOAT64_MAX_BYTES]
_large_cases = [c for c in bench.CASES if c.size * 4 >= LARGE_BYTES]
_small_cases = [c for c in bench.CASES if c.size * 4 <= NUMPY_MAX_BYTES]
_COMPILED_AND_PEER = [b for b in BACKENDS if b != "numpy"]

# (class name suffix, base class, dtype, backends, cases). asv runs each parameter combination
# in a process of its own, a second or two even when it is skipped, so the grid is kept to
# what is worth tracking rather than the full product.
_SUITES = [
    ("", _Pool, "float32", _COMPILED_AND_PEER, bench.CASES),
    ("Numpy", _Pool, "float32", ["numpy"], _small_cases),
    ("Float64", _Pool, "float64", _COMPILED_AND_PEER, _f64_cases),
    ("Peakmem", _PoolPeakmem, "float32", _COMPILED_AND_PEER, _large_cases),
]

for _op in bench.OPS:
    for _suffix, _base, _dtype, _backends, _cases in _SUITES:
        _name = _class_name(_op) + _suffix
        globals()[_name] = type(
            _name,
            (_base,),
            {
                "op": _op,
                "dtype": _dtype,
                "params": (list(_backends), _names(_cases)),
                "__doc__": f"{_op} ({_dtype}) by {', '.join(_backends)} on {len(_cases)} cases.",
                "__module__": __name__,
            },
        )

del _op, _suffix, _base, _dtype, _backends, _cases, _name
