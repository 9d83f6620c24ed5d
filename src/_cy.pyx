# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, infer_types=False, embedsignature=True
"""Compiled kernels of the ``cython`` backend (mirrors fastpool/_numpy.py, twin of _numba.py).

The code is in src/_kernels.pxi, built twice: here for the target's baseline (SSE2 on x86-64)
and as ``fastpool._cy_avx2`` with AVX2, which ``fastpool/_cython.py`` picks when the CPU has
it (NumPy dispatches the same way; Numba compiles for the host CPU anyway). src/_simd.h holds
the few loops written with intrinsics, because the compiler either cannot vectorise them
without -ffast-math (a max reduction that must keep NaN), turns selects into branches, or
keeps a sum's partial sums in memory.

Every kernel works on 5-D arrays ``(N, C, D, H, W)`` (1d/2d arrive with size-1 spatial axes)
in one of two layouts, both read and written in place (fastpool/_cython.py picks the layout,
copies anything else once, and picks the thread count):

* planar -- rows contiguous (``W`` stride 1), as in C-order ``(N, C, ...)`` arrays. Tasks are
  (plane, block of output rows). Average: the window's rows are added into a row buffer,
  then each cell sums its columns (16 or 32 partial sums). Max: the column maxima over the
  window's rows, then the best column per cell; windows of one row (1d) or whole contiguous
  rows take a two-pass vector search. Global pooling (1x1x1 output) sums whole planes.
  Small planes (up to 1024 elements) go by blocks of channels: transposed into an L1
  buffer, pooled there by the channels-last cell kernels, transposed back.
* channels-last -- channel stride 1, as in ``(N, H, W, C)`` data or PyTorch's
  ``channels_last`` tensors. Tasks are (batch, block of output rows, channel block); inner
  loops run over channels, like PyTorch's NHWC kernels, with each cell's block of channels
  held in registers over its window (src/_cells.h) unless the window is too large for L1;
  results reach a planar output through 4x4 transposes.

Backward passes are deterministic without atomics: every element of ``grad_input`` is
written by one thread, in an order that does not depend on the thread count. Average is a
gather (each input element sums the output cells covering it), computed once per run of
rows or columns that the same cells cover, with no zero fill. Max zeroes and then adds in
output order, one (n, c) plane per task (channels-last: one run of rows per task).

Nothing here allocates per element, raises inside a loop, or holds the GIL while looping.
"""

include "_kernels.pxi"
