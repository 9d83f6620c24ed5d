"""Backend registry and selection.

Backends are loaded lazily, on first use, so ``import fastpool`` imports neither numba nor a
GPU library and compiles nothing. ``backend=None`` resolves, in order: the innermost
:func:`use_backend`, then :func:`set_backend`, then ``$FASTPOOL_BACKEND``, then automatic
(``cuda`` for GPU arrays, else the first usable name of :data:`AUTO_CPU_ORDER`).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Iterator

from ._host import HostBackend

#: name -> module implementing it
BACKEND_MODULES = {
    "numpy": "fastpool._numpy",
    "numba": "fastpool._numba",
    "cython": "fastpool._cython",
    "cuda": "fastpool._cuda",
}
#: Automatic choice for host arrays, fastest first (see the benchmark table in the README).
AUTO_CPU_ORDER = ("cython", "numba", "numpy")
#: Order of :func:`available_backends`: compiled CPU backends, then the GPU, then the reference.
LISTING_ORDER = ("cython", "numba", "cuda", "numpy")
ENV_VAR = "FASTPOOL_BACKEND"


class BackendError(ValueError):
    """An unknown backend, or one that cannot be used on this machine."""


BackendError.__module__ = "fastpool"  # public as fastpool.BackendError; tracebacks say so


class BackendUnavailable(ImportError):
    """Raised by a backend module at import time when it cannot run here (with the reason)."""


_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}
_default: str | None = None
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastpool_backend", default=None
)


def _load(name: str):
    """Import a backend once; return its backend object or None (reason in ``_failed``)."""
    backend = _loaded.get(name)
    if backend is not None:  # loaded before: no lock needed to read it
        return backend
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            return None
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
            backend = getattr(module, "BACKEND", None) or HostBackend(name, module)
        except Exception as exc:  # any import failure makes the backend unusable, not fastpool
            _failed[name] = _reason(exc)
            return None
        _loaded[name] = backend
        from . import _threads  # give it the thread count set before it loaded

        _threads.apply(backend)
        return backend


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("fastpool"):
        return f"{exc.name} is not installed"
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.startswith("fastpool._cy"):
        return "the Cython extension is not compiled (reinstall with `pip install .`)"
    return f"{type(exc).__name__}: {exc}"


def backend_status() -> dict[str, tuple[bool, str]]:
    """``{name: (usable, reason)}`` for every known backend (imports each one)."""
    status = {}
    for name in LISTING_ORDER:
        ok = _load(name) is not None
        status[name] = (ok, "usable" if ok else _failed[name])
    return status


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable here, best first.

    Examples
    --------
    >>> import fastpool
    >>> "numpy" in fastpool.available_backends()
    True
    """
    return tuple(name for name in LISTING_ORDER if _load(name) is not None)


def check_known(name) -> None:
    """:class:`BackendError` unless ``name`` is one of fastpool's backends (loads none)."""
    if not isinstance(name, str) or name not in BACKEND_MODULES:
        raise BackendError(f"unknown backend {name!r}; fastpool has {', '.join(BACKEND_MODULES)}")


def get(name: str):
    """The backend object for ``name``; :class:`BackendError` if unknown or unusable."""
    backend = _loaded.get(name) if type(name) is str else None
    if backend is not None:  # (every call asks: the quick answer first)
        return backend
    try:
        check_known(name)
    except BackendError as err:
        raise BackendError(f"{err} (usable here: {', '.join(available_backends())})") from None
    backend = _load(name)
    if backend is None:
        raise BackendError(
            f"backend {name!r} is not usable here: {_failed[name]} "
            f"(usable here: {', '.join(available_backends())})"
        )
    return backend


#: What ``use_backend(None)`` puts in scope: no choice of its own, so the block resolves as if
#: no ``use_backend`` were active (``set_backend``, then the environment, then automatic).
_UNSCOPED = ""


def _requested() -> str | None:
    # ``or`` skips _UNSCOPED, and an empty FASTPOOL_BACKEND counts as unset
    return _context.get() or _default or os.environ.get(ENV_VAR) or None


def resolve(backend: str | None, *, device: bool = False):
    """The backend object a call with ``backend=...`` uses for a host or device input."""
    name = _requested() if backend is None else backend
    if name is not None:
        return get(name)
    if device:
        return get("cuda")
    return get(_auto_cpu())


_auto: str | None = None


def _auto_cpu() -> str:
    global _auto
    if _auto is None:  # a backend's usability never changes within a process
        _auto = next(name for name in AUTO_CPU_ORDER if _load(name) is not None)
    return _auto


def get_backend() -> str:
    """The name ``backend=None`` resolves to right now (for a host array).

    Examples
    --------
    >>> import fastpool
    >>> with fastpool.use_backend("numpy"):
    ...     fastpool.get_backend()
    'numpy'
    """
    name = _requested()
    if name is not None:
        get(name)
        return name
    return _auto_cpu()


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` restores automatic choice).

    Examples
    --------
    >>> import fastpool
    >>> fastpool.set_backend("numpy")
    >>> fastpool.get_backend()
    'numpy'
    >>> fastpool.set_backend(None)
    """
    global _default
    if name is not None:
        get(name)
    _default = name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[str]:
    """Use backend ``name`` inside a ``with`` block (scoped to the current thread/task).

    ``None`` lifts the choice of any enclosing ``use_backend`` for the block: calls then go
    by :func:`set_backend`, ``$FASTPOOL_BACKEND`` or the automatic choice. The ``as`` target
    is ``name``.

    Examples
    --------
    >>> import numpy as np, fastpool
    >>> with fastpool.use_backend("numpy"):
    ...     fastpool.adaptive_avg_pool1d(np.arange(4.0).reshape(1, 4), 2)
    array([[0.5, 2.5]])
    """
    if name is not None:
        get(name)
    token = _context.set(_UNSCOPED if name is None else name)
    try:
        yield name
    finally:
        _context.reset(token)
