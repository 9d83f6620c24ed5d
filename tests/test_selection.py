"""Backend selection order, import hygiene and the command line."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastpool
from fastpool import _backends


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "FASTPOOL_BACKEND"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=True
    ).stdout.strip()


def test_import_is_light():
    out = _run(
        "import sys, fastpool; "
        "print(sorted(m for m in ('numba', 'torch', 'dask', 'cupy', 'llvmlite')"
        " if m in sys.modules))"
    )
    assert out == "[]"


def test_numpy_backend_is_always_available():
    assert "numpy" in fastpool.available_backends()
    assert fastpool.available_backends()[-1] == "numpy"


def test_resolution_order(monkeypatch):
    auto = fastpool.get_backend()
    assert auto == next(b for b in _backends.AUTO_CPU_ORDER if b in fastpool.available_backends())
    monkeypatch.setenv("FASTPOOL_BACKEND", "numpy")
    assert fastpool.get_backend() == "numpy"
    monkeypatch.setenv("FASTPOOL_BACKEND", "nope")
    with pytest.raises(fastpool.BackendError, match="unknown backend 'nope'"):
        fastpool.adaptive_avg_pool1d(np.ones((1, 4)), 2)
    fastpool.set_backend("numpy")  # set_backend beats the environment
    assert fastpool.get_backend() == "numpy"
    other = auto if auto != "numpy" else "numpy"
    with fastpool.use_backend(other):  # the context beats set_backend
        assert fastpool.get_backend() == other
        with fastpool.use_backend("numpy"):  # innermost wins
            assert fastpool.get_backend() == "numpy"
        assert fastpool.get_backend() == other
    fastpool.set_backend(None)
    monkeypatch.delenv("FASTPOOL_BACKEND")
    assert fastpool.get_backend() == auto


def test_explicit_argument_beats_everything(monkeypatch):
    calls = []
    real = _backends.get

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(_backends, "get", spy)
    with fastpool.use_backend("numpy"):
        fastpool.adaptive_avg_pool1d(np.ones((1, 4)), 2, backend="numpy")
    assert calls[-1] == "numpy"


def test_use_backend_is_scoped_to_the_thread():
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def inner():
        with fastpool.use_backend("numpy"):
            seen["inside"] = fastpool.get_backend()
            entered.set()
            release.wait(10)

    t = threading.Thread(target=inner)
    t.start()
    entered.wait(10)
    seen["other_thread"] = fastpool.get_backend()
    release.set()
    t.join()
    assert seen["inside"] == "numpy"
    assert seen["other_thread"] == fastpool.get_backend()  # not affected by the other thread


def test_env_var_in_a_fresh_process():
    got = _run("import fastpool; print(fastpool.get_backend())", FASTPOOL_BACKEND="numpy")
    assert got == "numpy"


def test_info_command_lists_every_backend():
    out = subprocess.run(
        [sys.executable, "-m", "fastpool", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert f"fastpool {fastpool.__version__}" in out
    for name in _backends.BACKEND_MODULES:
        assert f"  {name} " in out
    assert "numpy" in out and "versions:" in out


def test_info_command_reports_a_bad_backend_setting():
    """``info`` is where a user looks when the setting is wrong: it says so, it does not fail."""
    out = subprocess.run(
        [sys.executable, "-m", "fastpool", "info"], capture_output=True, text=True, check=True,
        env={**os.environ, "FASTPOOL_BACKEND": "bogus"},
    ).stdout
    assert "default for host arrays: none: unknown backend 'bogus'" in out
    assert "FASTPOOL_BACKEND=bogus" in out


def test_use_backend_none_lifts_the_enclosing_choice(monkeypatch):
    """``use_backend(None)``: the block goes by set_backend, the environment, then automatic."""
    monkeypatch.delenv("FASTPOOL_BACKEND", raising=False)
    auto = fastpool.get_backend()
    if auto == "numpy":
        pytest.skip("no compiled backend: the enclosing choice would equal the automatic one")
    with fastpool.use_backend("numpy"):
        with fastpool.use_backend(None) as name:
            assert name is None
            assert fastpool.get_backend() == auto
            monkeypatch.setenv("FASTPOOL_BACKEND", "numpy")
            assert fastpool.get_backend() == "numpy"
            monkeypatch.setenv("FASTPOOL_BACKEND", "nope")  # raises when used, not on entry
            with fastpool.use_backend(None):
                with pytest.raises(fastpool.BackendError, match="'nope'"):
                    fastpool.get_backend()
            monkeypatch.delenv("FASTPOOL_BACKEND")
        assert fastpool.get_backend() == "numpy"
    fastpool.set_backend("numpy")
    try:
        with fastpool.use_backend(None):
            assert fastpool.get_backend() == "numpy"
    finally:
        fastpool.set_backend(None)


def test_empty_environment_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("FASTPOOL_BACKEND", "")
    fastpool.set_backend(None)
    monkeypatch.delenv("FASTPOOL_BACKEND")
    auto = fastpool.get_backend()
    monkeypatch.setenv("FASTPOOL_BACKEND", "")
    assert fastpool.get_backend() == auto
    assert fastpool.adaptive_avg_pool1d(np.ones((1, 4)), 2).tolist() == [[1.0, 1.0]]
