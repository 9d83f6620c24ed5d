"""numba.cuda kernels of the ``cuda`` backend: the GPU twin of ``fastpool/_numpy.py``'s kernels.

Only loops live here; :mod:`fastpool._cuda` validates, allocates, builds the window tables and
picks the launch configuration. Conventions shared by every kernel:

* An array arrives as a flat 1-D buffer covering its memory extent, the element offset of its
  element ``[0, 0, 0, 0, 0]`` and five element strides of its ``(N, C, D, H, W)`` view. This
  reads any layout in place (C/F order, channels-last, sliced, negative strides, the size-1
  axes of 1d/2d) and sidesteps numba's handling of negative-stride device arrays.
* Window bounds come from a small int64 table built on the host with exact integer arithmetic
  (``_windows.py``), never recomputed with divisions in the hot loops. Its layout, for output
  sizes ``(Do, Ho, Wo)`` and input sizes ``(D, H, W)``::

      start_d[Do] end_d[Do] start_h[Ho] end_h[Ho] start_w[Wo] end_w[Wo]      (windows)
      first_d[D]  stop_d[D] first_h[H]  stop_h[H] first_w[W]  stop_w[W]      (covering cells)

* Loops are grid-stride; ``(n, c, d, h, w)`` positions advance by a carry-add instead of five
  divisions per element (64-bit division is slow on a GPU).
* Forward passes give each output cell a *team* of ``T = 2**tshift`` consecutive threads that
  split its window (coalesced reads of window rows, parallelism for global pooling); the team's
  first thread combines the partial results from shared memory in lane order after one
  barrier. Only ``syncthreads`` is used, no warp shuffles (the CUDA simulator has none), so the
  simulator runs the very code a GPU runs. Team loops run the same count in a whole block.
* Backward passes gather: each input element sums the output cells whose windows cover it, so
  every element is written exactly once, without atomics, in a fixed order (deterministic).
* Accumulation is in ``ACC``: float32 for float16/float32 data, float64 for float64. A thread
  whose share of an average window passes ``FOLD`` rounds (two values each) adds its partial
  sums into a float64 total every ``FOLD`` rounds, so no float32 chain grows past that (one
  over a million values was off by about 2e-4).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

#: Largest block the kernels accept (size of the static shared-memory scratch).
MAX_BLOCK = 256
#: Two halves of MAX_BLOCK partial results (a module constant: shared arrays need a literal size).
SCRATCH = 2 * MAX_BLOCK
#: Rounds of an average thread's window loop between folds into its float64 total.
FOLD = 512
#: "No element" marker for max partial results; loses every tie (largest index).
NO_INDEX = np.iinfo(np.int64).max


@cuda.jit(device=True)
def split5(i, s1, s2, s3, s4):
    """Position ``i`` of a C-ordered 5-D range with trailing sizes ``s1..s4`` (axis 0 unbounded)."""
    a4 = i % s4
    i = i // s4
    a3 = i % s3
    i = i // s3
    a2 = i % s2
    i = i // s2
    a1 = i % s1
    a0 = i // s1
    return a0, a1, a2, a3, a4


@cuda.jit(device=True)
def advance5(a0, a1, a2, a3, a4, t0, t1, t2, t3, t4, s1, s2, s3, s4):
    """``a + t`` for two positions from :func:`split5`: one compare per axis, no division."""
    a4 += t4
    carry = 0
    if a4 >= s4:
        a4 -= s4
        carry = 1
    a3 += t3 + carry
    carry = 0
    if a3 >= s3:
        a3 -= s3
        carry = 1
    a2 += t2 + carry
    carry = 0
    if a2 >= s2:
        a2 -= s2
        carry = 1
    a1 += t1 + carry
    carry = 0
    if a1 >= s1:
        a1 -= s1
        carry = 1
    a0 += t0 + carry
    return a0, a1, a2, a3, a4


@cuda.jit(device=True)
def wrap_window(kd, kh, kw, wh, ww):
    """Normalise a window position whose column ran past the row (row-major over d, h, w)."""
    if kw >= ww:
        if kw < 2 * ww:  # the usual case: one row further
            kw -= ww
            kh += 1
        else:  # team wider than the row: skip several rows at once
            q = kw // ww
            kh += q
            kw -= q * ww
        if kh >= wh:
            if kh < 2 * wh:
                kh -= wh
                kd += 1
            else:
                q = kh // wh
                kd += q
                kh -= q * wh
    return kd, kh, kw


@cuda.jit
def copy5(src, so, ss, dst, do, ds, shape):
    """``dst[...] = src[...]`` over a 5-D shape (casts to dst's dtype)."""
    n_, c_, d_, h_, w_ = shape
    i = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    n, c, d, h, w = split5(i, c_, d_, h_, w_)
    t0, t1, t2, t3, t4 = split5(step, c_, d_, h_, w_)
    while n < n_:
        dst[do + n * ds[0] + c * ds[1] + d * ds[2] + h * ds[3] + w * ds[4]] = src[
            so + n * ss[0] + c * ss[1] + d * ss[2] + h * ss[3] + w * ss[4]
        ]
        n, c, d, h, w = advance5(n, c, d, h, w, t0, t1, t2, t3, t4, c_, d_, h_, w_)


@cuda.jit
def check_indices(ind, io, istr, oshape, ispatial, tab, flags):
    """Max-backward index check, one thread per output cell.

    ``flags[0]``: some index is outside ``[0, plane)`` (``flags[2]``/``[3]`` get the smallest
    and largest offender, for the error message); ``flags[1]``: some in-range index lies outside
    its own cell's window, which the gather kernel would miss (the caller then scatters).
    """
    n_, c_, do_, ho_, wo_ = oshape
    d_, h_, w_ = ispatial
    hw = h_ * w_
    plane = d_ * hw
    i = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    n, c, od, oh, ow = split5(i, c_, do_, ho_, wo_)
    t0, t1, t2, t3, t4 = split5(step, c_, do_, ho_, wo_)
    e_d = do_
    s_h = 2 * do_
    e_h = s_h + ho_
    s_w = e_h + ho_
    e_w = s_w + wo_
    while n < n_:
        at = io + n * istr[0] + c * istr[1] + od * istr[2] + oh * istr[3] + ow * istr[4]
        p = np.int64(ind[at])
        if p < 0 or p >= plane:
            flags[0] = 1  # every writer stores the same value
            cuda.atomic.min(flags, 2, p)
            cuda.atomic.max(flags, 3, p)
        else:
            d = p // hw
            r = p - d * hw
            h = r // w_
            w = r - h * w_
            if (
                d < tab[od]
                or d >= tab[e_d + od]
                or h < tab[s_h + oh]
                or h >= tab[e_h + oh]
                or w < tab[s_w + ow]
                or w >= tab[e_w + ow]
            ):
                flags[1] = 1
        n, c, od, oh, ow = advance5(n, c, od, oh, ow, t0, t1, t2, t3, t4, c_, do_, ho_, wo_)


def make_kernels(acc):
    """The six accumulation-typed kernels for ``acc`` (``np.float32`` or ``np.float64``)."""
    ACC = acc  # noqa: N806 - a type, frozen into each kernel as a constant

    @cuda.jit
    def avg_forward(x, xo, xs, y, yo, ys, oshape, ispatial, tab, tshift):
        n_, c_, do_, ho_, wo_ = oshape
        tid = np.int64(cuda.threadIdx.x)
        team_size = np.int64(1) << tshift
        lane = tid & (team_size - 1)
        per_block = np.int64(cuda.blockDim.x) >> tshift
        n_out = n_ * c_ * do_ * ho_ * wo_
        first = np.int64(cuda.blockIdx.x) * per_block
        step = np.int64(cuda.gridDim.x) * per_block
        n_iter = (n_out - first + step - 1) // step if first < n_out else 0
        n, c, od, oh, ow = split5(first + (tid >> tshift), c_, do_, ho_, wo_)
        t0, t1, t2, t3, t4 = split5(step, c_, do_, ho_, wo_)
        e_d = do_
        s_h = 2 * do_
        e_h = s_h + ho_
        s_w = e_h + ho_
        e_w = s_w + wo_
        # Two halves used alternately: a half is rewritten only after the next barrier, which
        # its reader (lane 0) reaches only once done with it -- one barrier per cell, not two.
        scratch = cuda.shared.array(SCRATCH, ACC)
        for it in range(n_iter):  # the same count for the whole block: syncthreads is safe
            active = n < n_
            acc = ACC(0)
            count = 1
            if active:
                d0 = tab[od]
                wd = tab[e_d + od] - d0
                h0 = tab[s_h + oh]
                wh = tab[e_h + oh] - h0
                w0 = tab[s_w + ow]
                ww = tab[e_w + ow] - w0
                count = wd * wh * ww
                base = xo + n * xs[0] + c * xs[1]
                acc2 = ACC(0)
                total = np.float64(0)
                rounds = 0
                folded = False
                kd, kh, kw = wrap_window(0, 0, lane, wh, ww)
                while kd < wd:
                    # Two elements per round, both loads issued before either add: twice the
                    # memory requests in flight per thread.
                    a = base + (d0 + kd) * xs[2] + (h0 + kh) * xs[3] + (w0 + kw) * xs[4]
                    kd, kh, kw = wrap_window(kd, kh, kw + team_size, wh, ww)
                    if kd < wd:
                        b = base + (d0 + kd) * xs[2] + (h0 + kh) * xs[3] + (w0 + kw) * xs[4]
                        va = x[a]
                        vb = x[b]
                        acc += ACC(va)
                        acc2 += ACC(vb)
                        kd, kh, kw = wrap_window(kd, kh, kw + team_size, wh, ww)
                    else:
                        acc += ACC(x[a])
                    rounds += 1
                    if rounds == FOLD:
                        total += np.float64(acc) + np.float64(acc2)
                        acc = ACC(0)
                        acc2 = ACC(0)
                        rounds = 0
                        folded = True
                if folded:
                    acc = ACC(total + (np.float64(acc) + np.float64(acc2)))
                else:
                    acc += acc2
            if tshift > 0:
                half = (it & 1) * MAX_BLOCK
                scratch[half + tid] = acc
                cuda.syncthreads()
                if lane == 0:  # fixed order: the same bits on every run
                    for j in range(1, team_size):
                        acc += scratch[half + tid + j]
            if active and lane == 0:
                at = yo + n * ys[0] + c * ys[1] + od * ys[2] + oh * ys[3] + ow * ys[4]
                y[at] = acc / ACC(count)
            n, c, od, oh, ow = advance5(n, c, od, oh, ow, t0, t1, t2, t3, t4, c_, do_, ho_, wo_)

    @cuda.jit
    def max_forward(x, xo, xs, y, yo, ys, ix, io, istr, oshape, ispatial, tab, tshift):
        n_, c_, do_, ho_, wo_ = oshape
        h_, w_ = ispatial[1], ispatial[2]
        hw = h_ * w_
        tid = np.int64(cuda.threadIdx.x)
        team_size = np.int64(1) << tshift
        lane = tid & (team_size - 1)
        per_block = np.int64(cuda.blockDim.x) >> tshift
        n_out = n_ * c_ * do_ * ho_ * wo_
        first = np.int64(cuda.blockIdx.x) * per_block
        step = np.int64(cuda.gridDim.x) * per_block
        n_iter = (n_out - first + step - 1) // step if first < n_out else 0
        n, c, od, oh, ow = split5(first + (tid >> tshift), c_, do_, ho_, wo_)
        t0, t1, t2, t3, t4 = split5(step, c_, do_, ho_, wo_)
        e_d = do_
        s_h = 2 * do_
        e_h = s_h + ho_
        s_w = e_h + ho_
        e_w = s_w + wo_
        best_v = cuda.shared.array(SCRATCH, ACC)
        best_i = cuda.shared.array(SCRATCH, np.int64)
        for it in range(n_iter):
            active = n < n_
            mv = ACC(-np.inf)
            mi = NO_INDEX
            if active:
                d0 = tab[od]
                wd = tab[e_d + od] - d0
                h0 = tab[s_h + oh]
                wh = tab[e_h + oh] - h0
                w0 = tab[s_w + ow]
                ww = tab[e_w + ow] - w0
                base = xo + n * xs[0] + c * xs[1]
                kd, kh, kw = wrap_window(0, 0, lane, wh, ww)
                if kd < wd:  # the lane's first element stands in for an all -inf run
                    mi = (d0 + kd) * hw + (h0 + kh) * w_ + (w0 + kw)
                while kd < wd:
                    # SPEC scan rule, two elements per round (both loads in flight at once);
                    # a lane's elements come in scan order
                    pa = (d0 + kd) * hw + (h0 + kh) * w_ + (w0 + kw)
                    a = base + (d0 + kd) * xs[2] + (h0 + kh) * xs[3] + (w0 + kw) * xs[4]
                    kd, kh, kw = wrap_window(kd, kh, kw + team_size, wh, ww)
                    if kd < wd:
                        pb = (d0 + kd) * hw + (h0 + kh) * w_ + (w0 + kw)
                        b = base + (d0 + kd) * xs[2] + (h0 + kh) * xs[3] + (w0 + kw) * xs[4]
                        va = ACC(x[a])
                        vb = ACC(x[b])
                        if va > mv or va != va:
                            mv = va
                            mi = pa
                        if vb > mv or vb != vb:
                            mv = vb
                            mi = pb
                        kd, kh, kw = wrap_window(kd, kh, kw + team_size, wh, ww)
                    else:
                        va = ACC(x[a])
                        if va > mv or va != va:
                            mv = va
                            mi = pa
            if tshift > 0:
                half = (it & 1) * MAX_BLOCK
                best_v[half + tid] = mv
                best_i[half + tid] = mi
                cuda.syncthreads()
                if lane == 0:
                    for j in range(1, team_size):
                        # Merge partial scans as one sequential scan would: the last NaN
                        # wins, else the larger value, ties to the earlier element.
                        vb = best_v[half + tid + j]
                        ib = best_i[half + tid + j]
                        if vb != vb:
                            if mv == mv or ib > mi:
                                mv = vb
                                mi = ib
                        elif mv == mv and (vb > mv or (vb == mv and ib < mi)):
                            mv = vb
                            mi = ib
            if active and lane == 0:
                y[yo + n * ys[0] + c * ys[1] + od * ys[2] + oh * ys[3] + ow * ys[4]] = mv
                ix[io + n * istr[0] + c * istr[1] + od * istr[2] + oh * istr[3] + ow * istr[4]] = mi
            n, c, od, oh, ow = advance5(n, c, od, oh, ow, t0, t1, t2, t3, t4, c_, do_, ho_, wo_)

    @cuda.jit
    def avg_backward(g, go, gs, gi, gio, gis, ishape, ospatial, tab):
        n_, c_, d_, h_, w_ = ishape
        do_, ho_, wo_ = ospatial
        e_d = do_
        s_h = 2 * do_
        e_h = s_h + ho_
        s_w = e_h + ho_
        e_w = s_w + wo_
        f_d = e_w + wo_
        l_d = f_d + d_
        f_h = l_d + d_
        l_h = f_h + h_
        f_w = l_h + h_
        l_w = f_w + w_
        i = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
        n, c, d, h, w = split5(i, c_, d_, h_, w_)
        t0, t1, t2, t3, t4 = split5(step, c_, d_, h_, w_)
        while n < n_:
            base = go + n * gs[0] + c * gs[1]
            acc = ACC(0)
            for od in range(tab[f_d + d], tab[l_d + d]):
                kd = tab[e_d + od] - tab[od]
                for oh in range(tab[f_h + h], tab[l_h + h]):
                    kdh = kd * (tab[e_h + oh] - tab[s_h + oh])
                    for ow in range(tab[f_w + w], tab[l_w + w]):
                        k = kdh * (tab[e_w + ow] - tab[s_w + ow])
                        acc += ACC(g[base + od * gs[2] + oh * gs[3] + ow * gs[4]]) / ACC(k)
            gi[gio + n * gis[0] + c * gis[1] + d * gis[2] + h * gis[3] + w * gis[4]] = acc
            n, c, d, h, w = advance5(n, c, d, h, w, t0, t1, t2, t3, t4, c_, d_, h_, w_)

    @cuda.jit
    def max_backward(g, go, gs, ind, io, istr, gi, gio, gis, ishape, ospatial, tab):
        # Valid only when every index lies in its own cell's window (check_indices said so).
        n_, c_, d_, h_, w_ = ishape
        do_, ho_, wo_ = ospatial
        f_d = 2 * (do_ + ho_ + wo_)
        l_d = f_d + d_
        f_h = l_d + d_
        l_h = f_h + h_
        f_w = l_h + h_
        l_w = f_w + w_
        hw = h_ * w_
        i = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
        n, c, d, h, w = split5(i, c_, d_, h_, w_)
        t0, t1, t2, t3, t4 = split5(step, c_, d_, h_, w_)
        while n < n_:
            gbase = go + n * gs[0] + c * gs[1]
            ibase = io + n * istr[0] + c * istr[1]
            p = d * hw + h * w_ + w
            acc = ACC(0)
            for od in range(tab[f_d + d], tab[l_d + d]):
                for oh in range(tab[f_h + h], tab[l_h + h]):
                    for ow in range(tab[f_w + w], tab[l_w + w]):
                        if np.int64(ind[ibase + od * istr[2] + oh * istr[3] + ow * istr[4]]) == p:
                            acc += ACC(g[gbase + od * gs[2] + oh * gs[3] + ow * gs[4]])
            gi[gio + n * gis[0] + c * gis[1] + d * gis[2] + h * gis[3] + w * gis[4]] = acc
            n, c, d, h, w = advance5(n, c, d, h, w, t0, t1, t2, t3, t4, c_, d_, h_, w_)

    @cuda.jit
    def max_backward_scatter(g, go, gs, ind, io, istr, buf, bo, bs, ishape, ospatial):
        # Fallback for indices outside their window: one thread per plane adds the output
        # cells in order into an ACC-typed buffer. Slow but deterministic and atomic-free.
        n_, c_, d_, h_, w_ = ishape
        do_, ho_, wo_ = ospatial
        hw = h_ * w_
        planes = n_ * c_
        p = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
        while p < planes:
            n = p // c_
            c = p - n * c_
            bbase = bo + n * bs[0] + c * bs[1]
            for d in range(d_):
                for h in range(h_):
                    for w in range(w_):
                        buf[bbase + d * bs[2] + h * bs[3] + w * bs[4]] = 0
            gbase = go + n * gs[0] + c * gs[1]
            ibase = io + n * istr[0] + c * istr[1]
            for od in range(do_):
                for oh in range(ho_):
                    for ow in range(wo_):
                        q = np.int64(ind[ibase + od * istr[2] + oh * istr[3] + ow * istr[4]])
                        d = q // hw
                        r = q - d * hw
                        h = r // w_
                        w = r - h * w_
                        at = bbase + d * bs[2] + h * bs[3] + w * bs[4]
                        buf[at] = buf[at] + ACC(g[gbase + od * gs[2] + oh * gs[3] + ow * gs[4]])
            p += step

    return {
        "avg_forward": avg_forward,
        "max_forward": max_forward,
        "avg_backward": avg_backward,
        "max_backward": max_backward,
        "max_backward_scatter": max_backward_scatter,
    }
