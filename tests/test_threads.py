"""Concurrency: many Python threads calling fastpool at once, and the thread-count setting."""

import sys
import threading
import types

import numpy as np
import pytest
from conftest import BACKENDS
from oracles import assert_identical, backward, forward

import fastpool
from fastpool import _backends, _threads

N_THREADS = 8
ROUNDS = 2
# (kind, dims, input shape, output_size): big enough that compiled kernels go parallel inside
CALLS = [
    ("avg", 2, (4, 16, 33, 31), (5, 7)),
    ("max", 2, (4, 16, 33, 31), (5, 7)),
    ("avg", 1, (8, 32, 257), 13),
    ("max", 1, (8, 32, 257), 13),
    ("avg", 3, (2, 8, 9, 10, 11), (3, 4, 2)),
    ("max", 3, (2, 8, 9, 10, 11), (3, 4, 2)),
]


@pytest.fixture(autouse=True)
def _restore_thread_setting():
    previous = _threads._requested
    yield
    fastpool.set_num_threads(previous)


def _work(rng, backend):
    """Inputs for every call, and the results of running them serially, in this thread."""
    jobs = []
    for kind, dims, shape, osize in CALLS:
        x = rng.standard_normal(shape).astype(np.float32)
        values, indices = forward(kind, dims, x, osize, backend=backend)
        grad = rng.standard_normal(values.shape).astype(np.float32)
        grad_x = backward(kind, dims, grad, indices, x.shape, backend=backend)
        jobs.append((kind, dims, x, osize, grad, backend, (values, indices, grad_x)))
    return jobs


def _run_concurrently(per_thread_jobs):
    """Start all threads at once (a barrier) and return each thread's exceptions."""
    barrier = threading.Barrier(len(per_thread_jobs))
    errors = []

    def worker(jobs):
        try:
            barrier.wait(timeout=30)
            for _ in range(ROUNDS):
                for kind, dims, x, osize, grad, backend, (values, indices, grad_x) in jobs:
                    got_values, got_indices = forward(kind, dims, x, osize, backend=backend)
                    got_grad = backward(kind, dims, grad, got_indices, x.shape, backend=backend)
                    assert_identical(got_values, values)
                    if kind == "max":
                        assert_identical(got_indices, indices)
                    assert_identical(got_grad, grad_x)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(jobs,)) for jobs in per_thread_jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("num_threads", (None, 1), ids=("default-threads", "1-thread"))
def test_eight_threads_one_backend(backend, rng, num_threads):
    """8 Python threads, each with its own arrays, get exactly the serial results."""
    fastpool.set_num_threads(num_threads)
    per_thread = [_work(np.random.default_rng(i), backend) for i in range(N_THREADS)]
    _run_concurrently(per_thread)


def test_eight_threads_all_backends_at_once():
    """Every backend running in parallel Python threads at the same time (numba + OpenMP)."""
    per_thread = [
        _work(np.random.default_rng(100 + i), BACKENDS[i % len(BACKENDS)]) for i in range(N_THREADS)
    ]
    _run_concurrently(per_thread)


def test_eight_threads_same_input(backend, rng):
    """Threads sharing one input array (read-only for all of them) and default backends."""
    x = rng.standard_normal((4, 16, 40, 40))
    expected = fastpool.adaptive_max_pool2d(x, 6, True, backend=backend)
    results = [None] * N_THREADS
    barrier = threading.Barrier(N_THREADS)

    def worker(i):
        barrier.wait(timeout=30)
        results[i] = fastpool.adaptive_max_pool2d(x, 6, True, backend=backend)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for values, indices in results:
        assert_identical(values, expected[0])
        assert_identical(indices, expected[1])


# --------------------------------------------------------------------------- the setting


def _modules_with_threads():
    fastpool.available_backends()  # load every backend
    return {
        name: b.module
        for name, b in _backends._loaded.items()
        if hasattr(getattr(b, "module", None), "get_num_threads")
    }


def test_set_num_threads_reaches_every_compiled_backend_in_every_thread():
    modules = _modules_with_threads()
    fastpool.set_num_threads(1)
    assert fastpool.get_num_threads() == 1
    seen = {}

    def look():  # the setting is process-wide, not per calling thread
        seen.update({name: m.get_num_threads() for name, m in modules.items()})

    t = threading.Thread(target=look)
    t.start()
    t.join()
    assert seen == {name: 1 for name in modules}
    assert {name: m.get_num_threads() for name, m in modules.items()} == seen


def test_none_restores_each_backends_default():
    modules = _modules_with_threads()
    fastpool.set_num_threads(None)
    defaults = {name: m.get_num_threads() for name, m in modules.items()}
    fastpool.set_num_threads(1)
    fastpool.set_num_threads(None)
    assert {name: m.get_num_threads() for name, m in modules.items()} == defaults
    assert fastpool.get_num_threads() >= 1
    # the defaults themselves, not their values at the time: each backend follows its own
    # setting again
    if "cython" in modules and modules["cython"].OPENMP:
        assert "set_num_threads" not in modules["cython"].describe()
    if "numba" in modules:
        import numba

        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            assert modules["numba"].get_num_threads() == 1
        finally:
            numba.set_num_threads(before)


def test_limit_threads_restores_the_previous_setting():
    fastpool.set_num_threads(2)
    with fastpool.limit_threads(1) as n:
        assert n == 1
        assert fastpool.get_num_threads() == 1
    assert fastpool.get_num_threads() == 2
    with pytest.raises(KeyError), fastpool.limit_threads(1):
        raise KeyError
    assert fastpool.get_num_threads() == 2


def test_backend_loaded_later_gets_the_setting(monkeypatch):
    """``_backends._load`` hands a newly loaded backend the count set before it loaded."""
    calls = []
    fake = types.ModuleType("fastpool_fake_backend")
    fake.NATIVE_DTYPES = (np.float64,)
    fake.set_num_threads = calls.append
    fake.get_num_threads = lambda: 4
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(_backends.BACKEND_MODULES, "fake", fake.__name__)
    monkeypatch.setattr(_backends, "_loaded", dict(_backends._loaded))
    fastpool.set_num_threads(3)
    assert calls == []
    assert _backends._load("fake").module is fake
    assert calls == [3]
    fastpool.set_num_threads(None)  # hands it back its own default
    assert calls == [3, None]


@pytest.mark.parametrize(
    ("n", "error"),
    [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_bad_counts(n, error):
    with pytest.raises(error, match="positive int"):
        fastpool.set_num_threads(n)


def test_numpy_backend_only_needs_no_setting(monkeypatch):
    monkeypatch.setattr(_backends, "_loaded", {"numpy": _backends.get("numpy")})
    fastpool.set_num_threads(2)
    assert fastpool.get_num_threads() == 2
    fastpool.set_num_threads(None)
    assert fastpool.get_num_threads() == _threads._cpu_count()
