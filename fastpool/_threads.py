"""How many threads the compiled kernels use: one setting for every CPU backend.

The compiled backends parallelise inside each call (Numba's ``prange``, Cython's OpenMP
``prange``). When the caller is already parallel -- a thread pool, dask, several processes --
each call should use fewer threads, or the cores are oversubscribed. Numba and OpenMP each have
their own knob (``threadpoolctl`` limits OpenMP but not Numba), so fastpool offers one:
:func:`set_num_threads` forwards the count to every loaded backend module that defines
``set_num_threads(n)`` and remembers it for backends loaded later (``_backends._load`` calls
:func:`apply`).

The setting is process-wide: a backend applies it in every Python thread that calls it (both
Numba's and OpenMP's own setters act on the calling thread only, so the backends keep the value
and apply it on each call).
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
#: The count set by the user, or None for the backends' own defaults.
_requested: int | None = None


def _module(backend):
    """The module holding a backend's kernels (CPU backends), or the backend object itself."""
    return getattr(backend, "module", backend)


def _set(backend, n: int | None) -> None:
    """Pass ``n`` to a backend module's own setter (``None``: back to its default)."""
    setter = getattr(_module(backend), "set_num_threads", None)
    if setter is not None:
        setter(n)


def apply(backend) -> None:
    """Give a freshly loaded backend the thread count set so far (called by ``_backends._load``)."""
    with _lock:
        if _requested is not None:
            _set(backend, _requested)


def _check(n) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool):
        raise TypeError(f"n must be a positive int or None; got {n!r}")
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(
            f"n must be a positive int or None; got {n!r} ({type(n).__name__})"
        ) from None
    if value < 1:
        raise ValueError(f"n must be a positive int or None; got {value}")
    return value


def set_num_threads(n: int | None) -> None:
    """Set how many threads each compiled kernel call uses, for every CPU backend.

    Applies at once to the backends already loaded and, when they load, to the others. The
    setting is process-wide (every Python thread sees it). ``None`` gives the backends back
    their own defaults (``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, or the number of CPUs).
    The NumPy backend is single-threaded and ignores it; the CUDA backend runs on the GPU.

    Use ``set_num_threads(1)`` when many Python threads, dask workers or processes call fastpool
    at once: the parallelism is then theirs, and the cores are not oversubscribed.

    Parameters
    ----------
    n : int >= 1, or None
        Threads per call. A backend that cannot run that many uses as many as it can.

    Examples
    --------
    >>> import fastpool
    >>> fastpool.set_num_threads(1)
    >>> fastpool.get_num_threads()
    1
    >>> fastpool.set_num_threads(None)
    """
    global _requested
    from . import _backends

    value = _check(n)
    with _lock:
        _requested = value
        for backend in list(_backends._loaded.values()):
            _set(backend, value)


def get_num_threads() -> int:
    """The number of threads a compiled kernel call uses now.

    The value of :func:`set_num_threads` if one was set; otherwise the default of the compiled
    backend ``backend=None`` would pick if it is loaded, else the number of CPUs this process
    may run on.

    Examples
    --------
    >>> import fastpool
    >>> fastpool.get_num_threads() >= 1
    True
    """
    from . import _backends

    with _lock:
        if _requested is not None:
            return _requested
        loaded = dict(_backends._loaded)
    for name in _backends.AUTO_CPU_ORDER:
        getter = getattr(_module(loaded.get(name)), "get_num_threads", None)
        if getter is not None:
            return int(getter())
    return _cpu_count()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[int]:
    """Use ``n`` threads per kernel call inside a ``with`` block, then restore the setting.

    Like ``threadpoolctl.threadpool_limits``, it covers Numba and OpenMP alike, and like it, the
    limit is process-wide (it is not scoped to the calling thread): enter it around a parallel
    section, not from several threads at once.

    Examples
    --------
    >>> import fastpool
    >>> with fastpool.limit_threads(1):
    ...     fastpool.get_num_threads()
    1
    """
    previous = _requested
    set_num_threads(n)
    try:
        yield get_num_threads()
    finally:
        set_num_threads(previous)
