"""The case table of ``fastpool/bench.py``, loaded from this working tree by file path.

asv builds and installs each commit it benchmarks, but always runs *these* benchmark files.
Commits older than ``fastpool/bench.py`` have no ``fastpool.bench`` to import, and a table
imported from the installed package would change with the commit, giving benchmarks that
appear and vanish along the history. Loading the working tree's file gives every commit the
same cases and names; the file imports fastpool itself only inside functions, so the timed
code is always the installed commit's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "fastpool" / "bench.py"
_NAME = "_fastpool_bench_table"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    if not _PATH.is_file():  # benchmarks copied away from the source tree: use the installed one
        from fastpool import bench as module

        return module
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses looks the module up while the file executes
    spec.loader.exec_module(module)
    return module


bench = _load()

#: fastpool's CPU backends plus PyTorch as a peer: every run stores them side by side. A name
#: that is not usable in the environment (not built yet at an old commit, torch missing) is
#: skipped by asv, not failed.
BACKENDS = (*bench.CPU_BACKENDS, bench.TORCH)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
