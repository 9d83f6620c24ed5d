"""The Cython extension is built twice on x86-64: for the baseline (SSE2, ``fastpool._cy``)
and with AVX2 (``fastpool._cy_avx2``), and the backend picks the build the CPU runs. Their
vector code keeps the order of every addition of the scalar code (src/_simd.h), so both
builds give the same bits, and a result does not depend on the machine's instruction set.
"""

import importlib

import numpy as np
import pytest

baseline = pytest.importorskip("fastpool._cy", reason="the Cython extension is not compiled")


@pytest.fixture(scope="module")
def avx2():
    if not baseline.cpu_has_avx2():
        pytest.skip("this CPU cannot run the AVX2 build")
    try:
        return importlib.import_module("fastpool._cy_avx2")
    except ImportError:
        pytest.skip("no AVX2 build here (not x86-64, or a compiler without AVX2)")


# (N, C, H, W), output (Ho, Wo): window sums of 1 to 4096 elements (the sums change their
# lane scheme at 9, 16 and 64 elements; float windows of over 1024 add float sums of pieces
# in double), planar and channels-last, channels in and out of register blocks.
CASES = [
    ((2, 3, 64, 64), (1, 1)),
    ((1, 2, 70, 70), (1, 2)),
    ((2, 3, 10, 10), (1, 1)),
    ((2, 5, 9, 70), (1, 1)),
    ((2, 5, 37, 23), (3, 2)),
    ((3, 4, 100, 100), (13, 7)),
    ((2, 300, 12, 12), (1, 2)),
    ((2, 70, 8, 9), (5, 3)),
    ((2, 64, 5, 5), (7, 7)),
]


def _five(a, channels_last):
    """The (N, C, 1, H, W) view the kernels take of a (N, C, H, W) or (N, H, W, C) array."""
    return (a.transpose(0, 3, 1, 2) if channels_last else a)[:, :, None]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("channels_last", (False, True), ids=("planar", "channels-last"))
@pytest.mark.parametrize(("shape", "out_hw"), CASES, ids=[f"{s}->{o}" for s, o in CASES])
def test_baseline_and_avx2_builds_give_the_same_bits(avx2, shape, out_hw, dtype, channels_last):
    n, c, h, w = shape
    in_shape = (n, h, w, c) if channels_last else shape
    out_shape = (n, *out_hw, c) if channels_last else (n, c, *out_hw)
    x = np.random.default_rng(5).standard_normal(in_shape).astype(dtype)
    grad = np.random.default_rng(6).standard_normal(out_shape).astype(dtype)
    results = []
    for build in (baseline, avx2):
        avg, top = np.empty(out_shape, dtype), np.empty(out_shape, dtype)
        where, gi = np.empty(out_shape, np.int64), np.empty(in_shape, dtype)
        five = [_five(a, channels_last) for a in (x, avg, top, where, grad, gi)]
        x5, avg5, top5, where5, grad5, gi5 = five
        build.avg_forward(x5, avg5, channels_last, 2)
        build.max_forward(x5, top5, where5, channels_last, 2)
        build.avg_backward(grad5, gi5, channels_last, 2)
        results.append((avg, top, where, gi))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
