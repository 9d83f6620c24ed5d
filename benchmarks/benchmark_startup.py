"""What a user waits for before the first result: ``import fastpool``, and the first call of
each compiled backend in a fresh interpreter (importing numba or the extension, loading or
compiling the kernels).

``timeraw_`` benchmarks: asv runs the returned code in a new Python process each sample and
times it there, so nothing imported here counts.
"""

from __future__ import annotations

from .cases import bench

#: Backends with something to load or compile on first use.
COMPILED = ("numba", "cython")

# A small input, so that the timing is the loading and compiling, not the pooling. The
# backward ops get their grad_output and indices from the numpy backend, untimed.
_SETUP = """
import numpy as np
import fastpool
case = {shape!r}, {out!r}
x = np.random.default_rng(0).random(case[0], dtype=np.float32)
y, ind = fastpool.adaptive_max_pool{d}d(x, case[1], True, backend="numpy")
"""
_CALLS = {
    "avg": "fastpool.adaptive_avg_pool{d}d(x, case[1], backend={b!r})",
    "max": "fastpool.adaptive_max_pool{d}d(x, case[1], True, backend={b!r})",
    "avg_backward": "fastpool.adaptive_avg_pool{d}d_backward(y, x.shape, backend={b!r})",
    "max_backward": "fastpool.adaptive_max_pool{d}d_backward(y, ind, x.shape, backend={b!r})",
}
_SMALL = (2, 8, 16, 16), 7


def timeraw_import_fastpool():
    """``import fastpool`` must not import numba or a GPU library, nor compile anything."""
    return "import fastpool"


class FirstCall:
    """One call of a compiled backend in a fresh process, per op (each may be its own kernel)."""

    params = (list(COMPILED), list(bench.OPS))
    param_names = ("backend", "op")
    repeat = (3, 5, 30.0)  # each sample is a new interpreter: seconds, not microseconds
    timeout = 300.0

    def setup(self, backend, op):
        import fastpool

        if backend not in fastpool.available_backends():
            raise NotImplementedError(f"backend {backend!r} is not usable here")
        # Compile once now, so that numba's on-disk cache is warm and every sample measures
        # the same thing: loading cached kernels, as a user's second session would.
        exec(_SETUP.format(shape=_SMALL[0], out=_SMALL[1], d=2) + _call(backend, op), {})

    def timeraw_first_call(self, backend, op):
        return _call(backend, op), _SETUP.format(shape=_SMALL[0], out=_SMALL[1], d=2)


def _call(backend: str, op: str) -> str:
    return _CALLS[op].format(d=2, b=backend)
