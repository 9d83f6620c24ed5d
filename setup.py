"""Build script: the Cython extensions of the ``cython`` backend, from src/.

``fastpool._cy`` is built for the target's baseline (SSE2 on x86-64); on x86 the same kernels
are built again as ``fastpool._cy_avx2`` with AVX2 (if the compiler accepts it), and
``fastpool/_cython.py`` picks that one at run time when the CPU has AVX2.

OpenMP: before building, the compiler is asked to compile *and link* a tiny OpenMP program
(as scikit-learn does). If it cannot, the extension is built serial with a warning, and the
``cython`` backend reports "OpenMP: no" in ``python -m fastpool info``. Set
``FASTPOOL_DISABLE_OPENMP=1`` to build serial on purpose, ``FASTPOOL_DISABLE_AVX2=1`` to skip
the AVX2 build.

Works with ``pip install .``, ``pip install --no-build-isolation -e .`` and
``python setup.py build_ext --inplace`` (which recompiles only when src/ changed).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DISABLE_ENV = "FASTPOOL_DISABLE_OPENMP"
DISABLE_AVX2_ENV = "FASTPOOL_DISABLE_AVX2"
AVX2_MODULE = "fastpool._cy_avx2"

_PROBE = textwrap.dedent(
    """\
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel for reduction(+:n) schedule(static)
        for (int i = 0; i < 64; i++) n += 1;
        printf("%d %d\\n", n, omp_get_max_threads());
        return n == 64 ? 0 : 1;
    }
    """
)

_AVX2_PROBE = textwrap.dedent(
    """\
    #include <immintrin.h>
    int main(void) {
        float a[8] = {0}, b[8];
        __m256 v = _mm256_max_ps(_mm256_loadu_ps(a), _mm256_set1_ps(1.0f));
        _mm256_storeu_ps(b, v);
        return b[0] == 1.0f ? 0 : 1;
    }
    """
)


def _openmp_flags(compiler_type: str) -> tuple[list[str], list[str]]:
    """Compile and link flags that turn OpenMP on for this compiler family."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang: OpenMP from Homebrew's libomp, if installed
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def _avx2_flags(compiler_type: str) -> list[str]:
    return ["/arch:AVX2"] if compiler_type == "msvc" else ["-mavx2"]


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _probe(compiler, source: str, compile_flags: list[str], link_flags: list[str]) -> str | None:
    """None if ``compiler`` builds and links ``source``, else the reason it did not."""
    tmp = tempfile.mkdtemp(prefix="fastpool_probe_")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)  # object files land next to the source
        with open("probe.c", "w") as f:
            f.write(source)
        objects = compiler.compile(["probe.c"], extra_postargs=compile_flags)
        compiler.link_executable(objects, "probe", extra_postargs=link_flags)
    except Exception as exc:  # CompileError, LinkError, missing compiler, ...
        return f"{type(exc).__name__}: {exc}".strip()
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)
    return None


class BuildExt(build_ext):
    """build_ext that adds OpenMP flags when (and only when) the compiler supports them, and
    builds the AVX2 variant only where the compiler can."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        compile_flags, link_flags = _openmp_flags(ctype)
        if _env_flag(DISABLE_ENV):
            reason = f"{DISABLE_ENV} is set"
        else:
            reason = _probe(self.compiler, _PROBE, compile_flags, link_flags)
        if reason is not None:
            warnings.warn(
                f"fastpool: building the Cython extension WITHOUT OpenMP ({reason}); "
                "its kernels will run on one thread.",
                stacklevel=1,
            )
            compile_flags, link_flags = [], []
        avx2 = _avx2_flags(ctype)
        if not _is_x86() or _env_flag(DISABLE_AVX2_ENV):
            avx2_reason = "not an x86 target" if not _is_x86() else f"{DISABLE_AVX2_ENV} is set"
        else:
            avx2_reason = _probe(self.compiler, _AVX2_PROBE, avx2, [])
        if avx2_reason is not None:
            # Optional: the baseline module serves every CPU, only slower on AVX2 ones.
            print(f"fastpool: not building {AVX2_MODULE} ({avx2_reason})")
            self.extensions = [e for e in self.extensions if e.name != AVX2_MODULE]
        if self.parallel is None and len(self.extensions) > 1:
            self.parallel = 2  # the two builds compile side by side
        # -O3 vectorises the channel loops; never -ffast-math (NaN must propagate in max).
        # No contraction of a*b + c into one fused multiply-add where a target has FMA
        # (GCC's default for GNU C): the kernels' bits must not depend on the instruction set.
        opt = ["/O2", "/fp:precise"] if ctype == "msvc" else ["-O3", "-ffp-contract=off"]
        for ext in self.extensions:
            isa = avx2 if ext.name == AVX2_MODULE else []
            ext.extra_compile_args = opt + isa + compile_flags + list(ext.extra_compile_args)
            ext.extra_link_args = link_flags + list(ext.extra_link_args)
        super().build_extensions()


_DEPENDS = ["src/_kernels.pxi", "src/_omp_compat.h", "src/_simd.h", "src/_cells.h"]
extensions = [
    Extension(
        name,
        sources=[f"src/{name.rsplit('.', 1)[1]}.pyx"],
        include_dirs=["src", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=_DEPENDS,
    )
    for name in ("fastpool._cy", AVX2_MODULE)
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}, quiet=True),
    cmdclass={"build_ext": BuildExt},
)
