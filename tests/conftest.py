"""Shared fixtures: one ``backend`` fixture over every usable backend, and the oracles.

The CUDA simulator must be switched on before numba is first imported, so it happens here,
at the very top, on machines without a GPU.
"""

import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastpool  # noqa: E402

CUDA_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

#: Backends that must be usable here (set by `make test`), so a broken build fails loudly
#: instead of silently testing fewer backends.
REQUIRED = [b for b in os.environ.get("FASTPOOL_REQUIRE_BACKENDS", "").split(",") if b]


def _generic_backends():
    names = fastpool.available_backends()
    missing = [b for b in REQUIRED if b not in names]
    if missing:
        status = fastpool._backends.backend_status()
        raise RuntimeError(
            "required backends not usable: "
            + "; ".join(f"{b}: {status[b][1]}" for b in missing)
        )
    # Under the simulator the CUDA backend is far too slow for the generic suite; it has its
    # own tiny-shape tests in test_cuda.py.
    return [b for b in names if not (b == "cuda" and CUDA_SIMULATED)]


BACKENDS = _generic_backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(
    params=COMPILED or [pytest.param(None, marks=pytest.mark.skip("no compiled backend"))]
)
def compiled_backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _reset_backend_default():
    yield
    fastpool.set_backend(None)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_report_header(config):
    return f"fastpool backends under test: {', '.join(BACKENDS)} (cuda simulated: {CUDA_SIMULATED})"
