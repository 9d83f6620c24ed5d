"""``python -m fastpool info``: what is installed and usable here."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from . import __version__, _backends


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_details() -> dict[str, str]:
    """Extra facts each loaded backend reports about itself (threads, OpenMP, device)."""
    details = {}
    for name in _backends.LISTING_ORDER:
        backend = _backends._loaded.get(name)
        describe = getattr(getattr(backend, "module", backend), "describe", None)
        if describe is not None:
            details[name] = describe()
    return details


def default_backend() -> str:
    """What ``backend=None`` picks for host arrays, or why nothing (a bad setting)."""
    try:
        return _backends.get_backend()
    except _backends.BackendError as err:
        return f"none: {err}"


def info_text() -> str:
    status = _backends.backend_status()
    lines = [
        f"fastpool {__version__}",
        f"python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs)",
        "",
        "backends (best first):",
    ]
    details = backend_details()
    for name, (ok, reason) in status.items():
        extra = f" [{details[name]}]" if name in details else ""
        reason = " ".join(reason.split())  # some reasons come with line breaks
        lines.append(f"  {name:<7} {'usable' if ok else 'not usable: ' + reason}{extra}")
    lines.append(f"default for host arrays: {default_backend()}")
    lines.append("")
    lines.append("versions:")
    for dist in ("numpy", "numba", "numba-cuda", "Cython", "torch", "dask"):
        lines.append(f"  {dist:<11} {_version(dist)}")
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "FASTPOOL_BACKEND")
           if k in os.environ}
    if env:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    return "\n".join(lines)
