# Kernels of the ``cython`` backend, included by src/_cy.pyx and src/_cy_avx2.pyx
# (mirrors fastpool/_numpy.py; twin of fastpool/_numba.py). See src/_cy.pyx for the design.

cimport cython
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset


cdef extern from "_simd.h" nogil:
    const char* FP_SIMD_NAME
    int fp_cpu_has_avx2()
    float fp_sum_float(const float* p, Py_ssize_t n)
    double fp_sum_double(const double* p, Py_ssize_t n)
    void fp_prefetch(const void* p, Py_ssize_t ahead)
    void fp_add_float(float* dst, const float* src, Py_ssize_t n)
    void fp_add_double(double* dst, const double* src, Py_ssize_t n)
    void fp_transpose_float(float* dst, Py_ssize_t dstride, const float* src, Py_ssize_t sstride,
                            Py_ssize_t rows, Py_ssize_t cols)
    void fp_transpose_double(double* dst, Py_ssize_t dstride, const double* src,
                             Py_ssize_t sstride, Py_ssize_t rows, Py_ssize_t cols)
    void fp_transpose_i64(int64_t* dst, Py_ssize_t dstride, const int64_t* src,
                          Py_ssize_t sstride, Py_ssize_t rows, Py_ssize_t cols)
    Py_ssize_t fp_scatter_rows_float(float* base, const float* gp, Py_ssize_t sc,
                                     const int64_t* ip, Py_ssize_t ic, Py_ssize_t nc, int64_t lo,
                                     int64_t hi, Py_ssize_t bw)
    Py_ssize_t fp_scatter_rows_double(double* base, const double* gp, Py_ssize_t sc,
                                      const int64_t* ip, Py_ssize_t ic, Py_ssize_t nc,
                                      int64_t lo, int64_t hi, Py_ssize_t bw)
    void fp_argmax_float(const float* p, Py_ssize_t kd, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t* run, Py_ssize_t* col)
    void fp_argmax_double(const double* p, Py_ssize_t kd, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t* run, Py_ssize_t* col)

cdef extern from "_cells.h" nogil:
    ctypedef struct fp_weight:
        double rcp
        int64_t count
    void fp_avg_cell_float(float* dst, const float* base, Py_ssize_t kd, Py_ssize_t kh,
                           Py_ssize_t kw, Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t nc)
    void fp_sum_cell_float(float* dst, const float* base, Py_ssize_t kd, Py_ssize_t kh,
                           Py_ssize_t kw, Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t nc)
    void fp_avg_cell_double(double* dst, const double* base, Py_ssize_t kd, Py_ssize_t kh,
                            Py_ssize_t kw, Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t nc)
    void fp_max_cell_float(float* dst, int64_t* kdst, const float* base, Py_ssize_t kd,
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sd, Py_ssize_t sh,
                           Py_ssize_t sw, Py_ssize_t nc, int64_t pos0, int64_t hw, int64_t wd)
    void fp_max_cell_double(double* dst, int64_t* kdst, const double* base, Py_ssize_t kd,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sd, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t nc, int64_t pos0, int64_t hw, int64_t wd)
    void fp_colsum_float(float* dst, const float* base, Py_ssize_t kd, Py_ssize_t kh,
                         Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t n)
    void fp_colsum_double(double* dst, const double* base, Py_ssize_t kd, Py_ssize_t kh,
                          Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t n)
    void fp_add_run_float(float* dst, const float* base, Py_ssize_t nk, Py_ssize_t sk,
                          Py_ssize_t n, Py_ssize_t chunk)
    void fp_add_run_double(double* dst, const double* base, Py_ssize_t nk, Py_ssize_t sk,
                           Py_ssize_t n, Py_ssize_t chunk)
    void fp_avg_bwd_run_float(float* dst, Py_ssize_t rows, Py_ssize_t rs, Py_ssize_t cols,
                              Py_ssize_t qs, const float* g, Py_ssize_t sd, Py_ssize_t sh,
                              Py_ssize_t sw, Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t oh0,
                              Py_ssize_t oh1, Py_ssize_t ow0, Py_ssize_t ow1, const fp_weight* wt,
                              Py_ssize_t wsd, Py_ssize_t wsh, Py_ssize_t nc)
    void fp_avg_bwd_run_double(double* dst, Py_ssize_t rows, Py_ssize_t rs, Py_ssize_t cols,
                               Py_ssize_t qs, const double* g, Py_ssize_t sd, Py_ssize_t sh,
                               Py_ssize_t sw, Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t oh0,
                               Py_ssize_t oh1, Py_ssize_t ow0, Py_ssize_t ow1,
                               const fp_weight* wt, Py_ssize_t wsd, Py_ssize_t wsh, Py_ssize_t nc)
    void fp_scale_float(float* dst, const float* x, Py_ssize_t n, const fp_weight* cw)
    void fp_scale_double(double* dst, const double* x, Py_ssize_t n, const fp_weight* cw)
    void fp_sum_bwd_run_float(float* dst, Py_ssize_t rows, Py_ssize_t rs, Py_ssize_t cols,
                              Py_ssize_t qs, const float* s, Py_ssize_t nk, Py_ssize_t sk,
                              Py_ssize_t sw, Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t nc)
    void fp_sum_bwd_run_double(double* dst, Py_ssize_t rows, Py_ssize_t rs, Py_ssize_t cols,
                               Py_ssize_t qs, const double* s, Py_ssize_t nk, Py_ssize_t sk,
                               Py_ssize_t sw, Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t nc)
    Py_ssize_t fp_max_bwd_gather_float(float* dst, const float* g, const int64_t* ix,
                                       Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                                       Py_ssize_t id, Py_ssize_t ih, Py_ssize_t iw,
                                       Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t oh0,
                                       Py_ssize_t oh1, Py_ssize_t ow0, Py_ssize_t ow1,
                                       int64_t pos, Py_ssize_t nc)
    Py_ssize_t fp_max_bwd_gather_double(double* dst, const double* g, const int64_t* ix,
                                        Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                                        Py_ssize_t id, Py_ssize_t ih, Py_ssize_t iw,
                                        Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t oh0,
                                        Py_ssize_t oh1, Py_ssize_t ow0, Py_ssize_t ow1,
                                        int64_t pos, Py_ssize_t nc)

cdef extern from "_omp_compat.h":
    const int FASTPOOL_OPENMP
    int omp_get_max_threads() noexcept nogil

#: True when the extension was compiled with OpenMP (setup.py probes the compiler).
OPENMP = bool(FASTPOOL_OPENMP)
#: The vector instructions this build targets: "avx2", "sse2" or "scalar".
SIMD = FP_SIMD_NAME.decode()


def cpu_has_avx2():
    """True when this CPU (and OS) can run the AVX2 build, ``fastpool._cy_avx2``."""
    return bool(fp_cpu_has_avx2())


def max_threads():
    """OpenMP's default team size here (``OMP_NUM_THREADS`` or the CPU count; 1 if serial)."""
    return omp_get_max_threads()


# Shapes and strides (in elements) of one call. "big" is the input-sized array (x or
# grad_input), "small" the output-sized one (out or grad_output), "idx" the max indices.
ctypedef struct Geom:
    Py_ssize_t n, c, d, h, w
    Py_ssize_t od, oh, ow
    Py_ssize_t bn, bc, bd, bh, bw
    Py_ssize_t sn, sc, sd, sh, sw
    Py_ssize_t in_, ic, id, ih, iw
    Py_ssize_t ncb, cbs   # channel blocks (channels-last tasks): count and size
    Py_ssize_t ohb, nohb  # output rows per channels-last forward task, and their count
    Py_ssize_t ipt, nib   # planar tasks: items (rows) per task, and tasks per plane


# ------------------------------------------------------------------------- the window formula

cdef inline void _window(Py_ssize_t i, Py_ssize_t size_in, Py_ssize_t size_out,
                         Py_ssize_t* start, Py_ssize_t* end) noexcept nogil:
    # SPEC "Windows": cell i covers [floor(i*I/O), ceil((i+1)*I/O)), in exact int64 arithmetic.
    # Called with I and O swapped it is the reverse map: the output cells covering element i.
    start[0] = (i * size_in) // size_out
    end[0] = ((i + 1) * size_in + size_out - 1) // size_out


cdef void _fill_windows(Py_ssize_t* t, Py_ssize_t size_in, Py_ssize_t size_out) noexcept nogil:
    """``t[2*i], t[2*i+1]`` = (start, end) of every output cell i of one axis."""
    cdef Py_ssize_t i
    for i in range(size_out):
        _window(i, size_in, size_out, &t[2 * i], &t[2 * i + 1])


cdef Py_ssize_t _fill_cover_runs(Py_ssize_t* t, Py_ssize_t size_in,
                                 Py_ssize_t size_out) noexcept nogil:
    """Rows ``t[4*r:4*r+4]`` = (begin, end, lo, hi): input elements [begin, end) are covered by
    the output cells [lo, hi). Returns the number of rows (at most size_in).

    The reverse map is monotonic, so elements with the same covering cells form runs; the
    gather backward computes one value (or one row) per run and repeats it.
    """
    cdef Py_ssize_t x, lo, hi, r = 0
    for x in range(size_in):
        _window(x, size_out, size_in, &lo, &hi)
        if r > 0 and lo == t[4 * r - 2] and hi == t[4 * r - 1]:
            t[4 * r - 3] = x + 1
        else:
            t[4 * r] = x
            t[4 * r + 1] = x + 1
            t[4 * r + 2] = lo
            t[4 * r + 3] = hi
            r = r + 1
    return r


cdef inline Py_ssize_t _per_thread(Py_ssize_t n) noexcept nogil:
    # Each thread's share of a scratch block, in elements of 8 bytes or less, rounded up to
    # 128 bytes: threads writing neighbouring scratch in one cache line (or an adjacent-line
    # prefetch pair) would slow each other down many times over.
    return (n + 31) // 32 * 32


cdef void* _alloc(size_t nbytes) except NULL:
    # Tables and per-thread scratch of one call: plain malloc, cheaper than NumPy arrays for
    # the small calls where the fixed cost shows. Freed by the caller (try/finally).
    cdef void* p = malloc(nbytes if nbytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"fastpool: cannot allocate {nbytes} bytes of scratch")
    return p


cdef inline const Py_ssize_t* _shape(cnp.ndarray a) noexcept:
    return <const Py_ssize_t*>cnp.PyArray_DIMS(a)


cdef inline const Py_ssize_t* _strides(cnp.ndarray a) noexcept:
    return <const Py_ssize_t*>cnp.PyArray_STRIDES(a)


cdef int _float_kind(cnp.ndarray big, cnp.ndarray small, bint big_written) except -1:
    """The NumPy type number (float or double) shared by a call's two float arrays.

    The entry points read arrays through the NumPy C API, not typed memoryviews: acquiring
    five 5-D buffers and dispatching a fused ``def`` on them cost microseconds per call, which
    is most of a small call's time. These checks keep the kernels from ever seeing anything
    but aligned, native-order, 5-D arrays of one float type (fastpool/_cython.py only passes
    such arrays; the caller guarantees the shapes and strides agree).
    """
    cdef int t = cnp.PyArray_TYPE(big)
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise TypeError("fastpool kernels take float32 or float64 arrays")
    _check_array(big, t, big_written)
    _check_array(small, t, not big_written)
    return t


cdef int _check_array(cnp.ndarray a, int typenum, bint written) except -1:
    # int64 indices may come as long or long long (same bits, two type numbers)
    if (cnp.PyArray_NDIM(a) != 5
            or (cnp.PyArray_TYPE(a) != typenum if typenum != cnp.NPY_INT64 else
                not (cnp.PyArray_ISSIGNED(a) and cnp.PyArray_ITEMSIZE(a) == 8))
            or not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_ISALIGNED(a)
            or (written and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError("fastpool kernels take aligned, native-order 5-D arrays of one dtype "
                         "(the written ones writeable)")
    return 0


# ------------------------------------------------------------------------- small helpers

cdef enum:
    # Float sums longer than this add up float sums of blocks this long in double: one
    # float accumulator per lane over a 1024x1024 plane was off by 2e-4 (relative, values
    # in [1, 1.001)), a block's 32 lanes add 32 values each (1e-7); the folds cost nothing
    # measurable.
    _SUM_BLOCK = 1024


cdef inline floating _sum(const floating* p, Py_ssize_t n) noexcept nogil:
    # Partial sums in vector registers (fp_sum_* in _simd.h: 16 lanes, 32 for float sums
    # of 64 or more): without -ffast-math the compiler keeps a float sum in order, and one
    # accumulator is bound by the add latency, not by memory. Float sums over _SUM_BLOCK
    # add those of blocks in double. Deterministic: the order depends on n only.
    cdef double total = 0.0
    cdef Py_ssize_t i = 0
    if floating is float:
        if n <= _SUM_BLOCK:
            return fp_sum_float(p, n)
        while i < n:
            total += fp_sum_float(p + i, min(n - i, <Py_ssize_t>_SUM_BLOCK))
            i += _SUM_BLOCK
        return <float>total
    else:
        return fp_sum_double(p, n)


cdef inline void _copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i]


cdef inline void _copy_i64(int64_t* dst, const int64_t* src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i]


cdef inline void _add(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    # dst never overlaps src here (a scratch buffer and the input)
    if floating is float:
        fp_add_float(dst, src, n)
    else:
        fp_add_double(dst, src, n)


cdef inline void _add_rows(floating* dst, const floating* src, Py_ssize_t stride,
                           Py_ssize_t count, Py_ssize_t n) noexcept nogil:
    """``dst += src[k * stride : k * stride + n]`` for k = 0 .. count-1, in order. (Adding
    four rows per pass, with one load and store of ``dst``, measured 1.6x slower on
    224x224 planes: the plain loop keeps the hardware prefetcher ahead.)"""
    cdef Py_ssize_t k
    for k in range(count):
        _add(dst, src + k * stride, n)


# For float32 x and 0 < n < 2**24 (n exact in float32), <float>(<double>x * (1.0 / n)) is
# x / n correctly rounded, unless the quotient is subnormal (then it may differ in the last
# place): a quotient not exactly halfway between two floats lies at least 2**-25 / n
# (relative) away from that halfway point, and the double product is within 2**-52 of the
# quotient; one exactly halfway needs n a power of two, when the product is exact. A vector
# divide costs as much as 5-10 multiplies, and small channels-last windows do little else.
cdef enum:
    _EXACT_RCP = 1 << 24


cdef inline void _scale(floating* acc, Py_ssize_t count, Py_ssize_t n) noexcept nogil:
    """``acc[:n] /= count`` (see _EXACT_RCP)."""
    cdef Py_ssize_t i
    cdef floating cnt = <floating>count
    cdef double rcp = 1.0 / <double>count
    if floating is float and count < _EXACT_RCP:
        for i in range(n):
            acc[i] = <float>(<double>acc[i] * rcp)
    else:
        for i in range(n):
            acc[i] = acc[i] / cnt


cdef inline void _fill(floating* dst, floating v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = v


cdef inline void _copy_strided(floating* dst, Py_ssize_t dstride, const floating* src,
                               Py_ssize_t sstride, Py_ssize_t nvec,
                               Py_ssize_t veclen) noexcept nogil:
    """Copy ``nvec`` vectors of ``veclen`` contiguous elements (one channels-last row)."""
    cdef Py_ssize_t i
    if dstride == veclen and sstride == veclen:
        _copy(dst, src, nvec * veclen)
        return
    for i in range(nvec):
        _copy(dst + i * dstride, src + i * sstride, veclen)


cdef inline void _task_threads(Py_ssize_t ntasks, int num_threads, int* nt) noexcept:
    nt[0] = num_threads if ntasks >= num_threads else <int>max(ntasks, 1)


cdef Geom _geom(const Py_ssize_t* big_shape, const Py_ssize_t* big_strides,
                const Py_ssize_t* small_shape, const Py_ssize_t* small_strides,
                Py_ssize_t itemsize) noexcept:
    # Strides arrive in bytes; fastpool/_cython.py only passes itemsize multiples.
    cdef Geom g
    g.n, g.c, g.d, g.h, g.w = big_shape[0], big_shape[1], big_shape[2], big_shape[3], big_shape[4]
    g.od, g.oh, g.ow = small_shape[2], small_shape[3], small_shape[4]
    g.bn, g.bc = big_strides[0] // itemsize, big_strides[1] // itemsize
    g.bd, g.bh = big_strides[2] // itemsize, big_strides[3] // itemsize
    g.bw = big_strides[4] // itemsize
    g.sn, g.sc = small_strides[0] // itemsize, small_strides[1] // itemsize
    g.sd, g.sh = small_strides[2] // itemsize, small_strides[3] // itemsize
    g.sw = small_strides[4] // itemsize
    g.in_ = g.ic = g.id = g.ih = g.iw = 0
    g.ncb, g.cbs = 1, g.c
    g.ohb, g.nohb = 1, g.oh
    g.ipt, g.nib = 1, 1
    return g


cdef void _set_index_strides(Geom* g, const Py_ssize_t* s) noexcept:
    g.in_, g.ic, g.id, g.ih, g.iw = s[0] // 8, s[1] // 8, s[2] // 8, s[3] // 8, s[4] // 8


cdef void _channel_blocks(Geom* g, Py_ssize_t outer, int num_threads):
    # Channels-last tasks are (outer position, channel block). Split the channels only when
    # the outer positions alone cannot keep every thread busy; blocks of >= 16 channels keep
    # the inner loops vectorised and the blocks on separate cache lines.
    cdef Py_ssize_t want = 4 * num_threads, ncb = 1, cbs = g.c
    if num_threads > 1 and outer < want and g.c >= 32:
        ncb = min((want + outer - 1) // outer, g.c // 16)
        cbs = (g.c + ncb - 1) // ncb
        cbs = (cbs + 15) // 16 * 16
        ncb = (g.c + cbs - 1) // cbs
    g.ncb, g.cbs = ncb, cbs


cdef void _plane_blocks(Geom* g, Py_ssize_t items, int num_threads):
    # Planar tasks are (plane, block of `items` per plane: output rows or input row runs).
    # Whole planes when there are enough of them (no index arithmetic per row), else split
    # each plane so that every thread gets work.
    cdef Py_ssize_t planes = g.n * g.c, want = 8 * num_threads, nib = 1
    if num_threads > 1 and planes < want:
        nib = min(items, (want + planes - 1) // planes)
    g.ipt = (items + nib - 1) // nib
    g.nib = (items + g.ipt - 1) // g.ipt


# Small planes (a few hundred elements: upsampling, small feature maps) in planar memory.
# Per-row and per-cell bookkeeping outweighs the arithmetic there, so a task takes a block
# of channels of one sample, transposes its planes into an L1 buffer (channel stride 1),
# runs the channels-last cell kernels of _cells.h on it, and transposes the results back.
# The choice depends on the spatial shapes and strides only (never on N, C or the thread
# count), so a chunk of an array gets the bits of the whole.
cdef enum:
    _SMALL_PLANE = 1024  # most elements of an input or output plane
    _SMALL_BLOCK = 32    # channels per task (float32; float64 takes 16)


cdef bint _small_planes(Geom* g, bint with_idx, bint small_cl=False):
    """True when the planes of all arrays are small and dense (elements in C order) and the
    output is not one cell per plane (_small_tasks then sets the channel block). With
    ``small_cl``, the small array may be dense channels-last instead (_avg_bwd_small)."""
    cdef Py_ssize_t plane = g.d * g.h * g.w, cells = g.od * g.oh * g.ow
    if plane > _SMALL_PLANE or cells > _SMALL_PLANE or cells == 1 or plane == 1:
        return False
    if not (g.bw == 1 and (g.h == 1 or g.bh == g.w) and (g.d == 1 or g.bd == g.h * g.w)):
        return False
    if not (g.sw == 1 and (g.oh == 1 or g.sh == g.ow) and (g.od == 1 or g.sd == g.oh * g.ow)):
        if not (small_cl and _small_channels_last(g)):
            return False
    if with_idx and not (g.iw == 1 and (g.oh == 1 or g.ih == g.ow)
                         and (g.od == 1 or g.id == g.oh * g.ow)):
        return False
    return True


cdef inline bint _small_channels_last(Geom* g) noexcept nogil:
    """Whether the small array is dense channels-last: channel stride 1, cells C apart."""
    return (g.sc == 1 and g.sw == g.c and (g.oh == 1 or g.sh == g.ow * g.c)
            and (g.od == 1 or g.sd == g.oh * g.ow * g.c))


cdef inline void _transpose(floating* dst, Py_ssize_t dstride, const floating* src,
                            Py_ssize_t sstride, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """``dst[c * dstride + r] = src[r * sstride + c]``."""
    if floating is float:
        fp_transpose_float(dst, dstride, src, sstride, rows, cols)
    else:
        fp_transpose_double(dst, dstride, src, sstride, rows, cols)


cdef void _fwd_small(const floating* x, floating* out, int64_t* idx, floating* buf, Geom g,
                     const Py_ssize_t* wd, const Py_ssize_t* wh, const Py_ssize_t* ww,
                     bint is_max, Py_ssize_t task) noexcept nogil:
    """Channels [c0, c0 + m) of sample n (see _small_planes): ``buf`` holds the input block
    (plane x m), the results (cells x m) and, for max, their positions (cells x m int64)."""
    cdef Py_ssize_t cb = g.cbs, nblk = (g.c + cb - 1) // cb
    cdef Py_ssize_t n = task // nblk, c0 = (task % nblk) * cb, m = min(cb, g.c - c0)
    cdef Py_ssize_t hw = g.h * g.w, plane = g.d * hw, ncell = g.od * g.oh * g.ow
    cdef Py_ssize_t od, oh, ow, d0, h0, w0, cell = 0
    cdef floating* xb = buf
    cdef floating* ob = buf + plane * cb
    cdef int64_t* kb = <int64_t*>(ob + ncell * cb)
    cdef const floating* base
    _transpose(xb, m, x + n * g.bn + c0 * g.bc, g.bc, m, plane)
    for od in range(g.od):
        d0 = wd[2 * od]
        for oh in range(g.oh):
            h0 = wh[2 * oh]
            for ow in range(g.ow):
                w0 = ww[2 * ow]
                base = xb + (d0 * hw + h0 * g.w + w0) * m
                if is_max:
                    if floating is float:
                        fp_max_cell_float(ob + cell * m, kb + cell * m, base,
                                          wd[2 * od + 1] - d0, wh[2 * oh + 1] - h0,
                                          ww[2 * ow + 1] - w0, hw * m, g.w * m, m, m,
                                          d0 * hw + h0 * g.w + w0, hw, g.w)
                    else:
                        fp_max_cell_double(ob + cell * m, kb + cell * m, base,
                                           wd[2 * od + 1] - d0, wh[2 * oh + 1] - h0,
                                           ww[2 * ow + 1] - w0, hw * m, g.w * m, m, m,
                                           d0 * hw + h0 * g.w + w0, hw, g.w)
                elif floating is float:
                    fp_avg_cell_float(ob + cell * m, base, wd[2 * od + 1] - d0,
                                      wh[2 * oh + 1] - h0, ww[2 * ow + 1] - w0, hw * m,
                                      g.w * m, m, m)
                else:
                    fp_avg_cell_double(ob + cell * m, base, wd[2 * od + 1] - d0,
                                       wh[2 * oh + 1] - h0, ww[2 * ow + 1] - w0, hw * m,
                                       g.w * m, m, m)
                cell = cell + 1
    _transpose(out + n * g.sn + c0 * g.sc, g.sc, ob, m, ncell, m)
    if is_max:
        fp_transpose_i64(idx + n * g.in_ + c0 * g.ic, g.ic, kb, m, ncell, m)


cdef Py_ssize_t _small_tasks(Geom* g, Py_ssize_t itemsize) noexcept nogil:
    g.cbs = _SMALL_BLOCK * 4 // itemsize
    return g.n * ((g.c + g.cbs - 1) // g.cbs)


# ========================================================================= average forward

cdef enum:
    _COLSUM_MAX_ROW = 256  # bytes

cdef inline void _colsum(floating* buf, const floating* base, Py_ssize_t kd, Py_ssize_t kh,
                         Geom g) noexcept nogil:
    """``buf[:W]`` = the sums of the window's kd x kh rows of one plane (from ``base``)."""
    cdef Py_ssize_t d
    if g.w * sizeof(floating) > _COLSUM_MAX_ROW:
        _copy(buf, base, g.w)
        for d in range(kd):
            if d == 0:
                _add_rows(buf, base + g.bh, g.bh, kh - 1, g.w)
            else:
                _add_rows(buf, base + d * g.bd, g.bh, kh, g.w)
    elif floating is float:
        fp_colsum_float(buf, base, kd, kh, g.bd, g.bh, g.w)
    else:
        fp_colsum_double(buf, base, kd, kh, g.bd, g.bh, g.w)


cdef inline void _avg_fwd_row(const floating* xp, floating* op, floating* buf, Geom g,
                              const Py_ssize_t* ww, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t h0,
                              Py_ssize_t h1) noexcept nogil:
    """One output row ``op[:]`` of one plane ``xp``. Rows of the window are first added into
    a width-W buffer (contiguous, vectorised adds), then each output cell sums its columns.
    Float windows of more than _SUM_BLOCK rows: see _avg_fwd_row_long."""
    cdef Py_ssize_t nrows = (d1 - d0) * (h1 - h0), d, ow, w0, w1
    cdef const floating* row
    cdef floating s
    cdef double total = 0.0
    if g.ow == 1 and (h1 - h0 == 1 or g.bh == g.w):
        # The window spans whole rows that follow each other: one contiguous run per d.
        if floating is float and d1 - d0 > 1 and nrows * g.w > _SUM_BLOCK:
            # more than _SUM_BLOCK values: float sums of the runs, added in double
            for d in range(d0, d1):
                total += _sum(xp + d * g.bd + h0 * g.bh, (h1 - h0) * g.w)
            op[0] = <float>(total / <double>(nrows * g.w))
            return
        s = 0
        for d in range(d0, d1):
            s = s + _sum(xp + d * g.bd + h0 * g.bh, (h1 - h0) * g.w)
        op[0] = s / <floating>(nrows * g.w)
        return
    if floating is float and nrows > _SUM_BLOCK:
        _avg_fwd_row_long(xp, op, buf, <double*>(buf + 2 * g.w), g, ww, d0, d1, h0, h1)
        return
    if nrows == 1:
        row = xp + d0 * g.bd + h0 * g.bh
    else:
        _colsum(buf, xp + d0 * g.bd + h0 * g.bh, d1 - d0, h1 - h0, g)
        row = buf
    for ow in range(g.ow):
        w0 = ww[2 * ow]
        w1 = ww[2 * ow + 1]
        op[ow * g.sw] = _sum(row + w0, w1 - w0) / <floating>(nrows * (w1 - w0))


cdef void _avg_fwd_row_long(const float* xp, float* op, float* buf, double* acc, Geom g,
                            const Py_ssize_t* ww, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t h0,
                            Py_ssize_t h1) noexcept nogil:
    """_avg_fwd_row for float windows of more than _SUM_BLOCK rows: float column sums of
    bands of at most _SUM_BLOCK rows (whole depth slices where they fit), added in double
    into ``acc[:W]``; each cell then sums its columns in double."""
    cdef Py_ssize_t kh = h1 - h0, band, d, dn, h, hn, w, ow, w0, w1
    cdef double s
    for w in range(g.w):
        acc[w] = 0.0
    d = d0
    while d < d1:
        if kh <= _SUM_BLOCK:
            dn = min(_SUM_BLOCK // kh, d1 - d)
            _colsum(buf, xp + d * g.bd + h0 * g.bh, dn, kh, g)
            for w in range(g.w):
                acc[w] = acc[w] + buf[w]
            d = d + dn
            continue
        h = h0
        while h < h1:
            hn = min(<Py_ssize_t>_SUM_BLOCK, h1 - h)
            _colsum(buf, xp + d * g.bd + h * g.bh, 1, hn, g)
            for w in range(g.w):
                acc[w] = acc[w] + buf[w]
            h = h + hn
        d = d + 1
    for ow in range(g.ow):
        w0 = ww[2 * ow]
        w1 = ww[2 * ow + 1]
        s = 0.0
        for w in range(w0, w1):
            s = s + acc[w]
        op[ow * g.sw] = <float>(s / <double>((d1 - d0) * kh * (w1 - w0)))


cdef void _fwd_planar(const floating* x, floating* out, int64_t* idx, floating* buf, Geom g,
                      const Py_ssize_t* wd, const Py_ssize_t* wh, const Py_ssize_t* ww,
                      bint is_max, Py_ssize_t task) noexcept nogil:
    """Output rows [r0, r1) (flattened (od, oh)) of plane (n, c): avg or max."""
    cdef Py_ssize_t b = task % g.nib, plane = task // g.nib
    cdef Py_ssize_t c = plane % g.c, n = plane // g.c
    cdef Py_ssize_t r = b * g.ipt, r1 = min(r + g.ipt, g.od * g.oh)
    cdef Py_ssize_t od = r // g.oh, oh = r - (r // g.oh) * g.oh
    cdef const floating* xp = x + n * g.bn + c * g.bc
    cdef double* iota = NULL
    cdef Py_ssize_t w
    if is_max and floating is double and buf != NULL:
        iota = <double*>(buf + 2 * g.w)
        for w in range(g.w):
            iota[w] = <double>w
    while r < r1:
        if is_max:
            _max_fwd_row(xp, out + n * g.sn + c * g.sc + od * g.sd + oh * g.sh,
                         idx + n * g.in_ + c * g.ic + od * g.id + oh * g.ih, g, ww,
                         wd[2 * od], wd[2 * od + 1], wh[2 * oh], wh[2 * oh + 1],
                         buf, <void*>(buf + g.w) if buf != NULL else NULL, iota)
        else:
            _avg_fwd_row(xp, out + n * g.sn + c * g.sc + od * g.sd + oh * g.sh, buf, g, ww,
                         wd[2 * od], wd[2 * od + 1], wh[2 * oh], wh[2 * oh + 1])
        r = r + 1
        oh = oh + 1
        if oh == g.oh:
            oh = 0
            od = od + 1


cdef void _fwd_global(const floating* x, floating* out, int64_t* idx, Geom g, bint is_max,
                      Py_ssize_t task) noexcept nogil:
    """Planes [p0, p1) pooled to one value each, planes contiguous (global pooling, e.g. a
    ResNet head): many planes per task and no per-row bookkeeping."""
    cdef Py_ssize_t size = g.d * g.h * g.w, p = task * g.ipt, p1 = min(p + g.ipt, g.n * g.c)
    cdef Py_ssize_t c = p % g.c, n = p // g.c, run, col
    cdef const floating* xp
    while p < p1:
        xp = x + n * g.bn + c * g.bc
        if is_max:
            _argmax(xp, 1, 1, size, 0, 0, &run, &col)
            out[n * g.sn + c * g.sc] = xp[col]
            idx[n * g.in_ + c * g.ic] = col
        else:
            if size < 64:  # short planes: a prefetch 4 KiB ahead (256x2048x7x7 fp32: 1.2x)
                fp_prefetch(xp, 4096)
            out[n * g.sn + c * g.sc] = _sum(xp, size) / <floating>size
        p = p + 1
        c = c + 1
        if c == g.c:
            c = 0
            n = n + 1


cdef bint _global_planes(Geom* g, int num_threads):
    """True (and the task split) when every plane is contiguous and pools to one value."""
    if not (g.od == 1 and g.oh == 1 and g.ow == 1 and (g.h == 1 or g.bh == g.w)
            and (g.d == 1 or g.bd == g.h * g.w)):
        return False
    cdef Py_ssize_t planes = g.n * g.c, ntasks = min(planes, 16 * num_threads)
    g.ipt = (planes + ntasks - 1) // ntasks
    g.nib = (planes + g.ipt - 1) // g.ipt
    return True


cdef inline void _store_cl(floating* op, Geom g, const floating* buf, Py_ssize_t nh,
                           Py_ssize_t nc) noexcept nogil:
    """``op[c * sc + oh * sh + ow * sw] = buf[oh, ow, c]`` for a block of output rows. Walks
    the output along its unit stride: a planar output (the default for a channels-last
    input) gets runs along (oh, ow), not one cache line per channel and cell."""
    cdef Py_ssize_t c, oh, ow, nw = g.ow
    if g.sc == 1:
        for oh in range(nh):
            for ow in range(nw):
                _copy(op + oh * g.sh + ow * g.sw, buf + (oh * nw + ow) * nc, nc)
    elif g.sw == 1 and (nh == 1 or g.sh == nw):  # the block of cells is contiguous per channel
        if floating is float:
            fp_transpose_float(op, g.sc, buf, nc, nh * nw, nc)
        else:
            fp_transpose_double(op, g.sc, buf, nc, nh * nw, nc)
    else:
        for c in range(nc):
            for oh in range(nh):
                for ow in range(nw):
                    op[c * g.sc + oh * g.sh + ow * g.sw] = buf[(oh * nw + ow) * nc + c]


cdef inline bint _in_registers(Py_ssize_t npos, Py_ssize_t nc, Py_ssize_t itemsize,
                               bint dense) noexcept nogil:
    """Does a channels-last average window go through _cells.h (blocks of 32 floats or 16
    doubles, each scanning the whole window), or the memory path (an accumulator per cell
    that each input row adds its positions to, the row read in order once: _avg_fwd_cl)?

    Wider than 256 bytes of channels: registers while the window's data stays in L1 between
    the blocks' scans (7x7 windows of 2048 channels, 64x64 windows of 512, 2x faster in
    memory). Up to 64 floats: registers for exactly one full block (32), where one scan
    does it all, and for windows of up to 128 positions; otherwise memory, when the block
    holds every channel (``dense``: whole rows in order), since a second scan or a partial
    block (scalar code) costs more than the accumulator's loads and stores (windows of 169
    to 1024 positions of 8-64 channels 1.15-2x faster in memory; 64 positions even; with a
    partial block of the channels, memory was 1.5x slower). Doubles keep the first rule."""
    if itemsize == 4 and dense and nc != 32 and nc <= 64 and npos > 128:
        return False
    return nc * itemsize <= 256 or npos * nc * itemsize <= 32768


cdef inline bint _max_in_registers(Py_ssize_t npos, Py_ssize_t depth, Py_ssize_t nc,
                                   Py_ssize_t itemsize) noexcept nogil:
    """Does a channels-last max window (``depth`` planes deep) go through _cells.h (see
    _in_registers)? A running maximum carries a position too, and the memory path reads
    each input row in order once (_max_fwd_cl), so it takes over earlier than for the
    average: windows over 8 KB, from 256 bytes of channels per position (100x100 planes of
    64 floats pooled to 13x13 1.6x faster, of 128 floats 1.5x; 16x16 planes to 3x3 and
    40x40 to 5x5, which stay in cache, 1.3x slower, still ahead of the Numba backend), and
    in volumes from 32 bytes (a register scan of a 3d window reads short runs from many
    rows of many planes: 32x64x64 volumes of 8-32 floats pooled to 4x7x7 1.2-1.6x faster;
    16x16x16 to 3x3x3, in cache, 1.8x slower, still 1.8x ahead of Numba). Narrower plane
    positions keep their registers (64x64 planes of 16 or 32 floats pooled to 5x5: 1.6-2x
    slower in memory)."""
    if npos * nc * itemsize <= 8192:
        return True
    if nc * itemsize >= 256:
        return False
    return depth == 1 or nc * itemsize < 32


cdef inline Py_ssize_t _run_chunk(Py_ssize_t nbytes, bint dense) noexcept nogil:
    """Window positions per pass of fp_add_run, for ``nbytes`` of channels per position.
    Up to 256 bytes (one pass of registers) every pass reads memory in order, so a window
    row is one pass. Wider positions are read in register-wide pieces, one stream per
    position of the pass. Where the positions hold nothing but the block's channels
    (``dense``: an input row is one run) and are 2 KB or more, four positions per pass:
    how many streams the memory serves best differs between hosts (on an AMD Zen 5 VM one
    position per pass ran 7x7 windows of 2048 floats and 32x32 of 512-2048 floats 1.1-1.25x
    faster than 12; on an Intel Xeon VM one per pass ran the 7x7 windows 1.2x slower than
    4, 8 or 16, which tied, and 64x64 windows of 512 floats 1.04x slower); else up to 12
    positions per pass, 12 streams (narrower positions, or slices of them: 1.1-1.3x faster
    than one by one for 11x11 to 22x22 windows of 256-512 floats, 0.5x of the time for
    100x100 planes pooled to 3x3 in slices of 128 of 512 channels)."""
    if nbytes <= 256:
        return 1 << 30
    if dense and nbytes >= 2048:
        return 4
    return 12


cdef void _cl_forward_blocks(Geom* g, int num_threads):
    # A channels-last forward task computes a block of output rows into a buffer
    # (rows x Wo x channels, <= 16K values) and stores it along the output's unit stride.
    g.ohb = max(1, min(g.oh, 16384 // max(1, g.ow * g.c)))
    g.nohb = (g.oh + g.ohb - 1) // g.ohb
    _channel_blocks(g, g.n * g.od * g.nohb, num_threads)


cdef inline void _fold(double* acc, floating* part, Py_ssize_t n) noexcept nogil:
    """``acc += part``, then ``part = 0`` (float partial sums into double ones)."""
    cdef Py_ssize_t c
    for c in range(n):
        acc[c] = acc[c] + part[c]
        part[c] = 0


cdef void _avg_fwd_cl(const floating* x, floating* out, floating* buf, double* acc, Geom g,
                      const Py_ssize_t* wd, const Py_ssize_t* wh, const Py_ssize_t* ww,
                      Py_ssize_t task) noexcept nogil:
    """Output rows ``out[n, c0:c1, od, oh0:oh1, :]`` of a channels-last input (channel stride
    1): each cell's channels are summed over its window in registers (_cells.h), or for
    large windows in an accumulator in memory that each input row adds its positions to
    (see _run_chunk); straight into a channels-last output, else into ``buf`` and then
    stored along the output's unit stride. Float windows of more than _SUM_BLOCK positions
    add float sums of at most _SUM_BLOCK positions (whole rows, or pieces of longer ones)
    into double sums in ``acc`` (``g.ow`` cells of channels)."""
    cdef Py_ssize_t cb = task % g.ncb, t = task // g.ncb
    cdef Py_ssize_t hb = t % g.nohb
    t = t // g.nohb
    cdef Py_ssize_t od = t % g.od, n = t // g.od
    cdef Py_ssize_t c0 = cb * g.cbs, nc = min(g.cbs, g.c - c0)
    cdef Py_ssize_t oh0 = hb * g.ohb, oh1 = min(g.oh, oh0 + g.ohb), oh
    cdef Py_ssize_t d0 = wd[2 * od], d1 = wd[2 * od + 1], h0, h1
    cdef Py_ssize_t ow, w0, w1, npos, c, d, h, k0, kn, r, per
    cdef const floating* xp = x + n * g.bn + c0
    cdef floating* op = out + n * g.sn + c0 * g.sc + od * g.sd + oh0 * g.sh
    cdef bint direct = g.sc == 1, mem
    cdef floating* dst
    cdef floating* row
    cdef Py_ssize_t chunk = _run_chunk(nc * sizeof(floating), g.bw == nc)
    for oh in range(oh0, oh1):
        h0 = wh[2 * oh]
        h1 = wh[2 * oh + 1]
        row = op + (oh - oh0) * g.sh if direct else buf + (oh - oh0) * g.ow * nc
        # Windows too large for registers: accumulators in memory, zeroed here and filled
        # one input row at a time across all the cells of this output row (each row read
        # in order once; a cell still adds its positions row by row, in scan order).
        mem = False
        for ow in range(g.ow):
            npos = (d1 - d0) * (h1 - h0) * (ww[2 * ow + 1] - ww[2 * ow])
            if not _in_registers(npos, nc, sizeof(floating), g.bw == nc):
                mem = True
                dst = row + (ow * g.sw if direct else ow * nc)
                for c in range(nc):
                    dst[c] = 0
                if floating is float and npos > _SUM_BLOCK:
                    for c in range(nc):
                        acc[ow * nc + c] = 0.0
        if mem:
            r = 0  # input rows of this band so far
            for d in range(d0, d1):
                for h in range(h0, h1):
                    r = r + 1
                    for ow in range(g.ow):
                        w0 = ww[2 * ow]
                        w1 = ww[2 * ow + 1]
                        npos = (d1 - d0) * (h1 - h0) * (w1 - w0)
                        if _in_registers(npos, nc, sizeof(floating), g.bw == nc):
                            continue
                        dst = row + (ow * g.sw if direct else ow * nc)
                        if floating is float:
                            if npos <= _SUM_BLOCK:
                                fp_add_run_float(dst, xp + d * g.bd + h * g.bh + w0 * g.bw,
                                                 w1 - w0, g.bw, nc, chunk)
                                continue
                            # a fold after each _SUM_BLOCK positions of a row, or after the
                            # most whole rows that hold at most that many, and at the end
                            per = max(1, _SUM_BLOCK // (w1 - w0))
                            k0 = 0
                            while k0 < w1 - w0:
                                kn = min(<Py_ssize_t>_SUM_BLOCK, w1 - w0 - k0)
                                fp_add_run_float(dst, xp + d * g.bd + h * g.bh
                                                 + (w0 + k0) * g.bw, kn, g.bw, nc, chunk)
                                k0 = k0 + kn
                                if per == 1 or r % per == 0 or r == (d1 - d0) * (h1 - h0):
                                    _fold(acc + ow * nc, dst, nc)
                        else:
                            fp_add_run_double(dst, xp + d * g.bd + h * g.bh + w0 * g.bw,
                                              w1 - w0, g.bw, nc, chunk)
        for ow in range(g.ow):
            w0 = ww[2 * ow]
            w1 = ww[2 * ow + 1]
            dst = row + (ow * g.sw if direct else ow * nc)
            npos = (d1 - d0) * (h1 - h0) * (w1 - w0)
            if not _in_registers(npos, nc, sizeof(floating), g.bw == nc):
                if floating is float and npos > _SUM_BLOCK:
                    for c in range(nc):
                        dst[c] = <float>(acc[ow * nc + c] / <double>npos)
                else:
                    _scale(dst, npos, nc)
            elif floating is float and npos > _SUM_BLOCK:
                _avg_cell_long(dst, acc + ow * nc, xp + d0 * g.bd + h0 * g.bh + w0 * g.bw, h1 - h0,
                               w1 - w0, g.bh, g.bw, nc)
            elif floating is float:
                fp_avg_cell_float(dst, xp + d0 * g.bd + h0 * g.bh + w0 * g.bw, d1 - d0,
                                  h1 - h0, w1 - w0, g.bd, g.bh, g.bw, nc)
            else:
                fp_avg_cell_double(dst, xp + d0 * g.bd + h0 * g.bh + w0 * g.bw, d1 - d0,
                                   h1 - h0, w1 - w0, g.bd, g.bh, g.bw, nc)
    if not direct:
        _store_cl(op, g, buf, oh1 - oh0, nc)


cdef void _avg_cell_long(float* dst, double* acc, const float* base, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t nc) noexcept nogil:
    """A register-path cell of _avg_fwd_cl (a plane window, kh x kw positions) of more than
    _SUM_BLOCK positions: float sums of pieces of at most _SUM_BLOCK positions (bands of
    whole rows, or pieces of rows longer than that), added in double."""
    cdef Py_ssize_t band = max(1, _SUM_BLOCK // kw), h, w, hn, wn, c
    for c in range(nc):
        acc[c] = 0.0
    h = 0
    while h < kh:
        hn = min(band, kh - h)
        w = 0
        while w < kw:
            wn = min(<Py_ssize_t>_SUM_BLOCK, kw - w)
            fp_sum_cell_float(dst, base + h * sh + w * sw, 1, hn, wn, 0, sh, sw, nc)
            for c in range(nc):
                acc[c] = acc[c] + dst[c]
            w = w + wn
        h = h + hn
    for c in range(nc):
        dst[c] = <float>(acc[c] / <double>(kh * kw))


cdef enum:
    _ROW_ELEMENTS = 8192  # most values in the row buffer of _avg_fwd_cl_rows (32-64 KB)


cdef void _cl_row_blocks(Geom* g):
    # A task of _avg_fwd_cl_rows sums the window rows of one output row, W positions x a
    # block of channels: all C when such a row fits the buffer, else fewer.
    g.cbs = g.c if g.w * g.c <= _ROW_ELEMENTS else max(1, _ROW_ELEMENTS // g.w)
    g.ncb = (g.c + g.cbs - 1) // g.cbs


cdef void _avg_fwd_cl_rows(const floating* x, floating* out, floating* buf, double* drow,
                           Geom g, const Py_ssize_t* wd, const Py_ssize_t* wh,
                           const Py_ssize_t* ww, Py_ssize_t task) noexcept nogil:
    """Volumes, channels-last: output row ``out[n, c0:c1, od, oh, :]``. The window's (d, h)
    input rows (W positions x the block's channels, one contiguous run when the block holds
    every channel) are added into one row in ``buf`` (long vector loops, each input row read
    once per output row, where _avg_fwd_cl reads short runs per cell), then each cell adds
    its positions of that row. Every channel adds the same values in the same order
    whatever the block size. Float windows of more than _SUM_BLOCK rows add the row sums of
    each _SUM_BLOCK rows into double sums (``drow``, W x the block's channels), and cells of
    more than _SUM_BLOCK values add their positions' sums in double (after ``drow``)."""
    cdef Py_ssize_t cb = task % g.ncb, t = task // g.ncb
    cdef Py_ssize_t oh = t % g.oh
    t = t // g.oh
    cdef Py_ssize_t od = t % g.od, n = t // g.od
    cdef Py_ssize_t c0 = cb * g.cbs, nc = min(g.cbs, g.c - c0)
    cdef Py_ssize_t d0 = wd[2 * od], d1 = wd[2 * od + 1], h0 = wh[2 * oh], h1 = wh[2 * oh + 1]
    cdef Py_ssize_t d, h, w, ow, w0, w1, j, r = 0, nrows = (d1 - d0) * (h1 - h0)
    cdef const floating* xp = x + n * g.bn + c0
    cdef const floating* src
    cdef floating* op = out + n * g.sn + c0 * g.sc + od * g.sd + oh * g.sh
    cdef floating* row = buf
    cdef floating* cells = buf + g.w * nc
    cdef floating* dst
    cdef bint direct = g.sc == 1, first = True
    cdef bint fold = floating is float and nrows > _SUM_BLOCK
    cdef double* cell = drow + g.w * nc  # (float) one cell's double sums
    if fold:
        for j in range(g.w * nc):
            drow[j] = 0.0
    for d in range(d0, d1):
        for h in range(h0, h1):
            src = xp + d * g.bd + h * g.bh
            if g.bw == nc:  # the block is every channel of dense positions: one run
                if first:
                    _copy(row, src, g.w * nc)
                else:
                    _add(row, src, g.w * nc)
            else:
                for w in range(g.w):
                    if first:
                        _copy(row + w * nc, src + w * g.bw, nc)
                    else:
                        _add(row + w * nc, src + w * g.bw, nc)
            first = False
            r = r + 1
            if fold and (r % _SUM_BLOCK == 0 or r == nrows):
                for j in range(g.w * nc):
                    drow[j] = drow[j] + row[j]
                first = True
    for ow in range(g.ow):
        w0 = ww[2 * ow]
        w1 = ww[2 * ow + 1]
        dst = op + ow * g.sw if direct else cells + ow * nc
        if floating is float and (fold or nrows * (w1 - w0) > _SUM_BLOCK):
            # more than _SUM_BLOCK values: the row's float sums (each of at most _SUM_BLOCK
            # rows) or double sums (fold), added in double
            for j in range(nc):
                cell[j] = 0.0
            for w in range(w0, w1):
                if fold:
                    for j in range(nc):
                        cell[j] = cell[j] + drow[w * nc + j]
                else:
                    for j in range(nc):
                        cell[j] = cell[j] + row[w * nc + j]
            for j in range(nc):
                dst[j] = <float>(cell[j] / <double>(nrows * (w1 - w0)))
            continue
        for j in range(nc):
            dst[j] = 0 + row[w0 * nc + j]  # 0 + : a window of -0.0 averages to +0.0
        for w in range(w0 + 1, w1):
            _add(dst, row + w * nc, nc)
        _scale(dst, (d1 - d0) * (h1 - h0) * (w1 - w0), nc)
    if not direct:
        _store_cl(op, g, cells, 1, nc)


cdef int _avg_forward(const floating* xp, floating* op, cnp.ndarray x, cnp.ndarray out,
                      bint channels_last, int num_threads) except -1:
    """``out`` = window means of ``x`` (rows contiguous, or channel stride 1 if channels_last)."""
    cdef Geom g = _geom(_shape(x), _strides(x), _shape(out), _strides(out), sizeof(floating))
    cdef Py_ssize_t task, ntasks, bufsize, accoff = 0
    cdef int nt
    cdef floating* scratch = NULL
    cdef Py_ssize_t* wd = <Py_ssize_t*>_alloc(2 * (g.od + g.oh + g.ow) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* wh = wd + 2 * g.od
    cdef Py_ssize_t* ww = wh + 2 * g.oh
    try:
        _fill_windows(wd, g.d, g.od)
        _fill_windows(wh, g.h, g.oh)
        _fill_windows(ww, g.w, g.ow)
        if channels_last and g.d > 1:
            # volumes: by output rows (chosen by the spatial shape only: dask chunks of any
            # channel count take the kernel, and so the bits, of the whole array)
            _cl_row_blocks(&g)
            ntasks = g.n * g.od * g.oh * g.ncb
            # the row and the cells; float: then a row of double sums (from an even offset)
            accoff = _per_thread(g.cbs * (g.w + g.ow))
            bufsize = accoff + (_per_thread(2 * g.cbs * (g.w + 1)) if floating is float else 0)
            _task_threads(ntasks, num_threads, &nt)
            scratch = <floating*>_alloc(nt * bufsize * sizeof(floating))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _avg_fwd_cl_rows(xp, op, scratch, <double*>(scratch + accoff), g, wd,
                                         wh, ww, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _avg_fwd_cl_rows(xp, op, scratch + threadid() * bufsize,
                                     <double*>(scratch + threadid() * bufsize + accoff), g,
                                     wd, wh, ww, task)
            return 0
        elif channels_last:
            _cl_forward_blocks(&g, num_threads)
            ntasks = g.n * g.od * g.nohb * g.ncb
            # the output rows, then (float) the double sums of one row of cells
            accoff = _per_thread(g.cbs * g.ow * g.ohb)
            bufsize = accoff + (_per_thread(2 * g.cbs * g.ow) if floating is float else 0)
        elif _global_planes(&g, num_threads):
            _task_threads(g.nib, num_threads, &nt)
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(g.nib):
                        _fwd_global(xp, op, NULL, g, False, task)
            else:
                for task in prange(g.nib, nogil=True, schedule='static', num_threads=nt):
                    _fwd_global(xp, op, NULL, g, False, task)
            return 0
        elif _small_planes(&g, False):
            ntasks = _small_tasks(&g, sizeof(floating))
            bufsize = _per_thread(g.cbs * (g.d * g.h * g.w + g.od * g.oh * g.ow))
            _task_threads(ntasks, num_threads, &nt)
            scratch = <floating*>_alloc(nt * bufsize * sizeof(floating))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _fwd_small(xp, op, NULL, scratch, g, wd, wh, ww, False, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _fwd_small(xp, op, NULL, scratch + threadid() * bufsize, g, wd, wh, ww,
                               False, task)
            return 0
        else:
            _plane_blocks(&g, g.od * g.oh, num_threads)
            ntasks = g.n * g.c * g.nib
            # a row of sums; float: then (from 2W, aligned) a row of double sums
            bufsize = _per_thread(4 * g.w if floating is float else g.w)
        _task_threads(ntasks, num_threads, &nt)
        scratch = <floating*>_alloc(nt * bufsize * sizeof(floating))
        if channels_last:
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _avg_fwd_cl(xp, op, scratch, <double*>(scratch + accoff), g, wd, wh,
                                    ww, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _avg_fwd_cl(xp, op, scratch + threadid() * bufsize,
                                <double*>(scratch + threadid() * bufsize + accoff), g, wd, wh,
                                ww, task)
        else:
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _fwd_planar(xp, op, NULL, scratch, g, wd, wh, ww,
                                    False, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _fwd_planar(xp, op, NULL, scratch + threadid() * bufsize, g, wd, wh, ww,
                                False, task)
    finally:
        free(wd)
        free(scratch)
    return 0


# ========================================================================= max forward

cdef inline void _argmax(const floating* p, Py_ssize_t kd, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t* run,
                         Py_ssize_t* col) noexcept nogil:
    if floating is float:
        fp_argmax_float(p, kd, kh, kw, sd, sh, run, col)
    else:
        fp_argmax_double(p, kd, kh, kw, sd, sh, run, col)


ctypedef fused position:
    # Plane positions kept in a type as wide as the data, so that the select below
    # vectorises (SSE2 has no float32 -> int64 blend): int32 for float32 (the Python side
    # only sends planes under 2**31 elements here), float64 (exact below 2**53) for float64.
    int32_t
    double


cdef inline void _max_update(floating* m, position* k, const floating* v, position pos,
                             Py_ssize_t nc) noexcept nogil:
    # Loads before the select, so that the compiler can if-convert and vectorise.
    cdef Py_ssize_t c
    cdef floating vc, mc
    cdef position kc
    cdef bint take
    for c in range(nc):
        vc = v[c]
        mc = m[c]
        kc = k[c]
        take = (vc > mc) | (vc != vc)
        m[c] = vc if take else mc
        k[c] = pos if take else kc


cdef inline void _max_update_row(floating* m, position* k, const floating* v, position pos0,
                                 const double* iota, Py_ssize_t n) noexcept nogil:
    """Like _max_update for one row of a plane: element w sits at plane position pos0 + w.
    ``iota[w] = w`` for double positions (no vector int64 -> double conversion in AVX2)."""
    cdef Py_ssize_t w
    cdef floating vw, mw
    cdef position kw, here
    cdef bint take
    for w in range(n):
        vw = v[w]
        mw = m[w]
        kw = k[w]
        if position is double:
            here = pos0 + iota[w]
        else:
            here = pos0 + <position>w
        take = (vw > mw) | (vw != vw)
        m[w] = vw if take else mw
        k[w] = here if take else kw


cdef inline bint _better(floating v, position i, floating bv, position bi) noexcept nogil:
    """Does candidate (v, i) win against the best (bv, bi) so far, whatever order the
    candidates come in? A NaN beats numbers and the later NaN wins; else the larger value,
    then the earlier position. For i > bi this is SPEC's "v > maxval or isnan(v)"."""
    if v != v:
        return bv == bv or i > bi
    if bv != bv:
        return False
    return v > bv or (v == bv and i < bi)


cdef inline void _max_fwd_row(const floating* xp, floating* op, int64_t* ip, Geom g,
                              const Py_ssize_t* ww, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t h0,
                              Py_ssize_t h1, floating* colv, void* colk,
                              const double* iota) noexcept nogil:
    """One output row ``op[:]``/``ip[:]`` of one plane ``xp``: SPEC's max rule per window.

    Windows of several rows: first the running maximum of every column over the window's
    rows (in scan order, vectorised along the row), then per output cell the best of its
    columns by (value, position) -- see _better. Else the two-pass search of _simd.h."""
    cdef Py_ssize_t hw = g.h * g.w, kd = d1 - d0, kh = h1 - h0, ow, w0, w1, w, run, col, dd, hh
    cdef Py_ssize_t d, h, pos
    cdef const floating* wp = xp + d0 * g.bd + h0 * g.bh
    cdef int32_t* k32 = <int32_t*>colk
    cdef double* k64 = <double*>colk
    cdef floating bv
    cdef int32_t bi32
    cdef double bi64
    if g.ow == 1 and (kh == 1 or g.bh == g.w):
        # Whole rows that follow each other: one run per d, and within it the plane
        # position advances with the memory offset.
        _argmax(wp, kd, 1, kh * g.w, g.bd, 0, &run, &col)
        op[0] = wp[run * g.bd + col]
        ip[0] = (d0 + run) * hw + h0 * g.w + col
        return
    if kd * kh > 1 and g.ow > 1 and colv != NULL:
        pos = d0 * hw + h0 * g.w
        _copy(colv, wp, g.w)
        for w in range(g.w):
            if floating is float:
                k32[w] = <int32_t>(pos + w)
            else:
                k64[w] = <double>(pos + w)
        for d in range(d0, d1):
            for h in range(h0, h1):
                if d == d0 and h == h0:
                    continue
                pos = d * hw + h * g.w
                if floating is float:
                    _max_update_row(colv, k32, xp + d * g.bd + h * g.bh, <int32_t>pos, NULL, g.w)
                else:
                    _max_update_row(colv, k64, xp + d * g.bd + h * g.bh, <double>pos, iota,
                                    g.w)
        for ow in range(g.ow):
            w0 = ww[2 * ow]
            w1 = ww[2 * ow + 1]
            bv = colv[w0]
            if floating is float:
                bi32 = k32[w0]
                for w in range(w0 + 1, w1):
                    if _better(colv[w], k32[w], bv, bi32):
                        bv = colv[w]
                        bi32 = k32[w]
                ip[ow * g.iw] = bi32
            else:
                bi64 = k64[w0]
                for w in range(w0 + 1, w1):
                    if _better(colv[w], k64[w], bv, bi64):
                        bv = colv[w]
                        bi64 = k64[w]
                ip[ow * g.iw] = <int64_t>bi64
            op[ow * g.sw] = bv
        return
    for ow in range(g.ow):
        w0 = ww[2 * ow]
        _argmax(wp + w0, kd, kh, ww[2 * ow + 1] - w0, g.bd, g.bh, &run, &col)
        if kh == 1:
            dd, hh = run, 0
        elif kd == 1:
            dd, hh = 0, run
        else:
            dd = run // kh
            hh = run - dd * kh
        op[ow * g.sw] = wp[dd * g.bd + hh * g.bh + w0 + col]
        ip[ow * g.iw] = (d0 + dd) * hw + (h0 + hh) * g.w + w0 + col


cdef inline void _max_mem_start(floating* m, position* k, const floating* v, position first,
                                Py_ssize_t nc) noexcept nogil:
    """Running maxima of a window too large for registers, kept in memory (positions as wide
    as the data: int32 for float, double for double), started at its first position."""
    cdef Py_ssize_t c
    _copy(m, v, nc)
    for c in range(nc):
        k[c] = first


cdef void _max_fwd_cl(const floating* x, floating* out, int64_t* idx, floating* mbuf,
                      int64_t* kbuf, Geom g, const Py_ssize_t* wd,
                      const Py_ssize_t* wh, const Py_ssize_t* ww, Py_ssize_t task) noexcept nogil:
    """Output rows ``out[n, c0:c1, od, oh0:oh1, :]`` of a channels-last input: each cell's
    running maxima (and positions) over the channels stay in registers for its window
    (_cells.h), or for large windows in memory that each input row updates (as the average's
    accumulators, see _avg_fwd_cl); written straight into channels-last outputs, else into
    ``mbuf``/``kbuf`` and then stored along the outputs' unit strides."""
    cdef Py_ssize_t cb = task % g.ncb, t = task // g.ncb
    cdef Py_ssize_t hb = t % g.nohb
    t = t // g.nohb
    cdef Py_ssize_t od = t % g.od, n = t // g.od
    cdef Py_ssize_t c0 = cb * g.cbs, nc = min(g.cbs, g.c - c0), c
    cdef Py_ssize_t oh0 = hb * g.ohb, oh1 = min(g.oh, oh0 + g.ohb), oh
    cdef Py_ssize_t d0 = wd[2 * od], d1 = wd[2 * od + 1], h0, h1
    cdef Py_ssize_t hw = g.h * g.w, ow, w0, w1, cell, ncell, npos, d, h, w, first
    # running positions of the memory path, per cell of an output row
    cdef void* kpos = <void*>(kbuf + g.cbs * g.ow * g.ohb)
    cdef const floating* xp = x + n * g.bn + c0
    cdef floating* op = out + n * g.sn + c0 * g.sc + od * g.sd + oh0 * g.sh
    cdef int64_t* ip = idx + n * g.in_ + c0 * g.ic + od * g.id + oh0 * g.ih
    cdef bint direct = g.sc == 1 and g.ic == 1
    cdef floating* m
    cdef int64_t* k
    cdef bint mem
    for oh in range(oh0, oh1):
        h0 = wh[2 * oh]
        h1 = wh[2 * oh + 1]
        cell = (oh - oh0) * g.ow
        # Windows too large for registers: running maxima in memory for every such cell of
        # the output row, taken on one input row at a time across the cells (each row read
        # in order once; every cell still scans its window in order).
        mem = False
        for ow in range(g.ow):
            w0 = ww[2 * ow]
            w1 = ww[2 * ow + 1]
            if not _max_in_registers((d1 - d0) * (h1 - h0) * (w1 - w0), d1 - d0, nc,
                                     sizeof(floating)):
                mem = True
                m = op + (oh - oh0) * g.sh + ow * g.sw if direct else mbuf + (cell + ow) * nc
                if floating is float:
                    _max_mem_start(m, <int32_t*>kpos + ow * nc, xp + d0 * g.bd + h0 * g.bh
                                   + w0 * g.bw, <int32_t>(d0 * hw + h0 * g.w + w0), nc)
                else:
                    _max_mem_start(m, <double*>kpos + ow * nc, xp + d0 * g.bd + h0 * g.bh
                                   + w0 * g.bw, <double>(d0 * hw + h0 * g.w + w0), nc)
        if mem:
            for d in range(d0, d1):
                for h in range(h0, h1):
                    for ow in range(g.ow):
                        w0 = ww[2 * ow]
                        w1 = ww[2 * ow + 1]
                        if _max_in_registers((d1 - d0) * (h1 - h0) * (w1 - w0), d1 - d0,
                                             nc, sizeof(floating)):
                            continue
                        m = (op + (oh - oh0) * g.sh + ow * g.sw if direct
                             else mbuf + (cell + ow) * nc)
                        first = w0 + 1 if d == d0 and h == h0 else w0  # (w0 started it)
                        for w in range(first, w1):
                            if floating is float:
                                _max_update(m, <int32_t*>kpos + ow * nc,
                                            xp + d * g.bd + h * g.bh + w * g.bw,
                                            <int32_t>(d * hw + h * g.w + w), nc)
                            else:
                                _max_update(m, <double*>kpos + ow * nc,
                                            xp + d * g.bd + h * g.bh + w * g.bw,
                                            <double>(d * hw + h * g.w + w), nc)
        for ow in range(g.ow):
            w0 = ww[2 * ow]
            w1 = ww[2 * ow + 1]
            if direct:
                m = op + (oh - oh0) * g.sh + ow * g.sw
                k = ip + (oh - oh0) * g.ih + ow * g.iw
            else:
                m = mbuf + (cell + ow) * nc
                k = kbuf + (cell + ow) * nc
            npos = (d1 - d0) * (h1 - h0) * (w1 - w0)
            if not _max_in_registers(npos, d1 - d0, nc, sizeof(floating)):
                for c in range(nc):  # the positions, widened
                    if floating is float:
                        k[c] = (<int32_t*>kpos)[ow * nc + c]
                    else:
                        k[c] = <int64_t>(<double*>kpos)[ow * nc + c]
            elif floating is float:
                fp_max_cell_float(m, k, xp + d0 * g.bd + h0 * g.bh + w0 * g.bw, d1 - d0,
                                  h1 - h0, w1 - w0, g.bd, g.bh, g.bw, nc,
                                  d0 * hw + h0 * g.w + w0, hw, g.w)
            else:
                fp_max_cell_double(m, k, xp + d0 * g.bd + h0 * g.bh + w0 * g.bw, d1 - d0,
                                   h1 - h0, w1 - w0, g.bd, g.bh, g.bw, nc,
                                   d0 * hw + h0 * g.w + w0, hw, g.w)
    if direct:
        return
    _store_cl(op, g, mbuf, oh1 - oh0, nc)
    ncell = (oh1 - oh0) * g.ow
    if g.ic == 1:
        for cell in range(ncell):
            oh = cell // g.ow
            _copy_i64(ip + oh * g.ih + (cell - oh * g.ow) * g.iw, kbuf + cell * nc, nc)
    elif g.iw == 1 and (oh1 - oh0 == 1 or g.ih == g.ow):
        fp_transpose_i64(ip, g.ic, kbuf, nc, ncell, nc)
    else:
        for c in range(nc):
            for oh in range(oh1 - oh0):
                for ow in range(g.ow):
                    ip[c * g.ic + oh * g.ih + ow * g.iw] = kbuf[(oh * g.ow + ow) * nc + c]


cdef int _max_forward(const floating* xp, floating* op, cnp.ndarray x, cnp.ndarray out,
                      cnp.ndarray indices, bint channels_last, int num_threads) except -1:
    """``out``/``indices`` = window maxima of ``x`` and their flat positions in the plane."""
    cdef Geom g = _geom(_shape(x), _strides(x), _shape(out), _strides(out), sizeof(floating))
    _set_index_strides(&g, _strides(indices))
    cdef Py_ssize_t task, ntasks, bufsize
    cdef int nt
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(indices)
    cdef floating* mbuf = NULL
    cdef int64_t* kbuf = NULL
    cdef Py_ssize_t* wd = <Py_ssize_t*>_alloc(2 * (g.od + g.oh + g.ow) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* wh = wd + 2 * g.od
    cdef Py_ssize_t* ww = wh + 2 * g.oh
    try:
        _fill_windows(wd, g.d, g.od)
        _fill_windows(wh, g.h, g.oh)
        _fill_windows(ww, g.w, g.ow)
        if channels_last:
            _cl_forward_blocks(&g, num_threads)
            ntasks = g.n * g.od * g.nohb * g.ncb
            _task_threads(ntasks, num_threads, &nt)
            bufsize = _per_thread(g.cbs * g.ow * g.ohb)
            mbuf = <floating*>_alloc(nt * bufsize * sizeof(floating))
            # per thread: int64 positions of the cells, then the running positions (int32
            # or double) of the large windows of one output row
            kbuf = <int64_t*>_alloc(2 * nt * bufsize * sizeof(int64_t))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _max_fwd_cl(xp, op, ip, mbuf, kbuf, g, wd, wh, ww, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _max_fwd_cl(xp, op, ip, mbuf + threadid() * bufsize,
                                kbuf + 2 * threadid() * bufsize, g, wd, wh, ww, task)
        elif _global_planes(&g, num_threads):
            _task_threads(g.nib, num_threads, &nt)
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(g.nib):
                        _fwd_global(xp, op, ip, g, True, task)
            else:
                for task in prange(g.nib, nogil=True, schedule='static', num_threads=nt):
                    _fwd_global(xp, op, ip, g, True, task)
        elif ((floating is double or g.d * g.h * g.w < 2**31) and _small_planes(&g, True)):
            ntasks = _small_tasks(&g, sizeof(floating))
            # per thread: input block, result block, then int64 positions (2 floats each)
            bufsize = _per_thread(g.cbs * (g.d * g.h * g.w + g.od * g.oh * g.ow
                                           + g.od * g.oh * g.ow * 8 // sizeof(floating)))
            _task_threads(ntasks, num_threads, &nt)
            mbuf = <floating*>_alloc(nt * bufsize * sizeof(floating))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _fwd_small(xp, op, ip, mbuf, g, wd, wh, ww, True, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _fwd_small(xp, op, ip, mbuf + threadid() * bufsize, g, wd, wh, ww,
                               True, task)
        else:
            _plane_blocks(&g, g.od * g.oh, num_threads)
            ntasks = g.n * g.c * g.nib
            _task_threads(ntasks, num_threads, &nt)
            bufsize = 0
            if floating is double or g.d * g.h * g.w < 2**31:  # positions fit the column scan
                # per thread: W column maxima, W positions (8 bytes each at most), W doubles
                bufsize = _per_thread(g.w + (16 * g.w) // sizeof(floating))
                mbuf = <floating*>_alloc(nt * bufsize * sizeof(floating))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _fwd_planar(xp, op, ip, mbuf,
                                    g, wd, wh, ww, True, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _fwd_planar(xp, op, ip, mbuf + threadid() * bufsize if mbuf != NULL else NULL,
                                g, wd, wh, ww, True, task)
    finally:
        free(wd)
        free(mbuf)
        free(kbuf)
    return 0


# ========================================================================= average backward

cdef inline void _avg_bwd_rowvals(const floating* gp, floating* rv, Geom g,
                                  Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t oh0, Py_ssize_t oh1,
                                  const Py_ssize_t* wd, const Py_ssize_t* wh,
                                  const Py_ssize_t* ww, Py_ssize_t nc,
                                  Py_ssize_t cstride) noexcept nogil:
    """``rv[ow, c]`` = sum over the covering (od, oh) of ``grad_output / window size``."""
    cdef Py_ssize_t od, oh, ow, c, kdh
    cdef const floating* src
    cdef floating* dst
    cdef floating cnt
    cdef double rcp
    for ow in range(g.ow):
        dst = rv + ow * nc
        for c in range(nc):
            dst[c] = 0
    for od in range(od0, od1):
        for oh in range(oh0, oh1):
            kdh = (wd[2 * od + 1] - wd[2 * od]) * (wh[2 * oh + 1] - wh[2 * oh])
            for ow in range(g.ow):
                cnt = <floating>(kdh * (ww[2 * ow + 1] - ww[2 * ow]))
                src = gp + od * g.sd + oh * g.sh + ow * g.sw
                dst = rv + ow * nc
                if cstride == 1:  # channels-last grad_output: a vector loop
                    if floating is float and kdh * (ww[2 * ow + 1] - ww[2 * ow]) < _EXACT_RCP:
                        rcp = 1.0 / <double>(kdh * (ww[2 * ow + 1] - ww[2 * ow]))
                        for c in range(nc):
                            dst[c] = dst[c] + <float>(<double>src[c] * rcp)
                    else:
                        for c in range(nc):
                            dst[c] = dst[c] + src[c] / cnt
                else:
                    for c in range(nc):
                        dst[c] = dst[c] + src[c * cstride] / cnt


cdef void _avg_bwd_global(const floating* go, floating* gi, Geom g,
                          Py_ssize_t task) noexcept nogil:
    """Planes [p0, p1) of a global average's gradient, planes contiguous: one value per
    plane, the planar path's ``0 + g / size``, filled in one pass (no rows to walk)."""
    cdef Py_ssize_t size = g.d * g.h * g.w, p = task * g.ipt, p1 = min(p + g.ipt, g.n * g.c)
    cdef Py_ssize_t c = p % g.c, n = p // g.c
    cdef floating cnt = <floating>size, zero = 0
    while p < p1:
        _fill(gi + n * g.bn + c * g.bc, zero + go[n * g.sn + c * g.sc] / cnt, size)
        p = p + 1
        c = c + 1
        if c == g.c:
            c = 0
            n = n + 1


cdef void _avg_bwd_planar(const floating* go, floating* gi, floating* rv, Geom g,
                          const Py_ssize_t* wd, const Py_ssize_t* wh, const Py_ssize_t* ww,
                          const Py_ssize_t* cover_d, const Py_ssize_t* hruns, Py_ssize_t nhr,
                          const Py_ssize_t* wruns, Py_ssize_t nwr, Py_ssize_t task) noexcept nogil:
    """Items [i0, i1) of plane (n, c), an item being rows ``grad_input[n, c, d, h0:h1, :]``
    that the same output cells cover: the first row is a gather from grad_output, the
    others copy it."""
    cdef Py_ssize_t b = task % g.nib, plane = task // g.nib
    cdef Py_ssize_t c = plane % g.c, n = plane // g.c
    cdef Py_ssize_t i = b * g.ipt, i1 = min(i + g.ipt, g.d * nhr)
    cdef Py_ssize_t d = i // nhr, hr = i - (i // nhr) * nhr
    cdef const Py_ssize_t* run
    cdef Py_ssize_t h, r, ow
    cdef const floating* gp = go + n * g.sn + c * g.sc
    cdef floating* row
    cdef floating v
    while i < i1:
        run = hruns + 4 * hr
        row = gi + n * g.bn + c * g.bc + d * g.bd + run[0] * g.bh
        _avg_bwd_rowvals(gp, rv, g, cover_d[2 * d], cover_d[2 * d + 1], run[2], run[3],
                         wd, wh, ww, 1, 0)
        for r in range(nwr):
            v = rv[wruns[4 * r + 2]]
            for ow in range(wruns[4 * r + 2] + 1, wruns[4 * r + 3]):
                v = v + rv[ow]
            _fill(row + wruns[4 * r], v, wruns[4 * r + 1] - wruns[4 * r])
        for h in range(run[0] + 1, run[1]):
            _copy(row + (h - run[0]) * g.bh, row, g.w)
        i = i + 1
        hr = hr + 1
        if hr == nhr:
            hr = 0
            d = d + 1


cdef void _avg_bwd_cl(const floating* go, floating* gi, floating* buf, Geom g,
                      const Py_ssize_t* wd, const Py_ssize_t* wh, const Py_ssize_t* ww,
                      const Py_ssize_t* cover_d, const Py_ssize_t* hruns, Py_ssize_t nhr,
                      const Py_ssize_t* wruns, Py_ssize_t nwr, const fp_weight* wt,
                      bint shared, bint scaled, Py_ssize_t task) noexcept nogil:
    """Channels-last ``grad_input[n, c0:c1, d, h_begin:h_end, :]``, vectorised over channels.
    ``wt``: the weight of every output cell (Do x Ho x Wo, C order). ``shared``: through
    the row values (_avg_bwd_rowvals); ``scaled``: the terms of the covering rows of cells
    computed once into ``buf``, then summed per run (runs that share cells, upsampling)."""
    cdef Py_ssize_t cb = task % g.ncb, t = task // g.ncb
    cdef Py_ssize_t hr = t % nhr
    t = t // nhr
    cdef Py_ssize_t d = t % g.d, n = t // g.d
    cdef Py_ssize_t c0 = cb * g.cbs, nc = min(g.cbs, g.c - c0), c
    cdef const Py_ssize_t* run = hruns + 4 * hr
    cdef Py_ssize_t h, r, ow, w
    cdef floating* row = gi + n * g.bn + c0 + d * g.bd + run[0] * g.bh
    cdef floating* vec = buf                  # nc: the value of one run of columns
    cdef floating* rv = buf + g.cbs           # g.ow * nc: per output column
    cdef const floating* gp = go + n * g.sn + c0
    cdef Py_ssize_t rows = run[1] - run[0], cols
    cdef floating* terms = buf + g.cbs        # scaled: nk rows x g.ow cells x nc terms
    cdef Py_ssize_t nk = 0, od, oh
    cdef bint direct
    if g.sc == 1 and not shared:  # channels-last grad_output: one register pass per run
        if scaled:
            for od in range(cover_d[2 * d], cover_d[2 * d + 1]):
                for oh in range(run[2], run[3]):
                    for ow in range(g.ow):
                        if floating is float:
                            fp_scale_float(terms + (nk * g.ow + ow) * nc,
                                           gp + od * g.sd + oh * g.sh + ow * g.sw, nc,
                                           wt + (od * g.oh + oh) * g.ow + ow)
                        else:
                            fp_scale_double(terms + (nk * g.ow + ow) * nc,
                                            gp + od * g.sd + oh * g.sh + ow * g.sw, nc,
                                            wt + (od * g.oh + oh) * g.ow + ow)
                    nk = nk + 1
        for r in range(nwr):
            cols = wruns[4 * r + 1] - wruns[4 * r]
            # Straight from registers into every element of the run, block by block, unless
            # that would revisit a large run once per block of channels (a 64x64 plane of
            # 512 channels from one cell): then one vector, copied whole to each element.
            direct = rows * cols == 1 or nc * sizeof(floating) <= 128
            if scaled:
                if floating is float:
                    fp_sum_bwd_run_float(row + wruns[4 * r] * g.bw if direct else vec,
                                         rows if direct else 1, g.bh, cols if direct else 1,
                                         g.bw, terms, nk, g.ow * nc, nc, wruns[4 * r + 2],
                                         wruns[4 * r + 3], nc)
                else:
                    fp_sum_bwd_run_double(row + wruns[4 * r] * g.bw if direct else vec,
                                          rows if direct else 1, g.bh, cols if direct else 1,
                                          g.bw, terms, nk, g.ow * nc, nc, wruns[4 * r + 2],
                                          wruns[4 * r + 3], nc)
            elif floating is float:
                fp_avg_bwd_run_float(row + wruns[4 * r] * g.bw if direct else vec,
                                     rows if direct else 1, g.bh, cols if direct else 1, g.bw,
                                     gp, g.sd, g.sh, g.sw, cover_d[2 * d], cover_d[2 * d + 1],
                                     run[2], run[3], wruns[4 * r + 2], wruns[4 * r + 3], wt,
                                     g.oh * g.ow, g.ow, nc)
            else:
                fp_avg_bwd_run_double(row + wruns[4 * r] * g.bw if direct else vec,
                                      rows if direct else 1, g.bh, cols if direct else 1, g.bw,
                                      gp, g.sd, g.sh, g.sw, cover_d[2 * d], cover_d[2 * d + 1],
                                      run[2], run[3], wruns[4 * r + 2], wruns[4 * r + 3], wt,
                                      g.oh * g.ow, g.ow, nc)
            if not direct:
                for h in range(rows):
                    for w in range(wruns[4 * r], wruns[4 * r + 1]):
                        _copy(row + h * g.bh + w * g.bw, vec, nc)
        return
    _avg_bwd_rowvals(go + n * g.sn + c0 * g.sc, rv, g, cover_d[2 * d], cover_d[2 * d + 1],
                     run[2], run[3], wd, wh, ww, nc, g.sc)
    for r in range(nwr):
        _copy(vec, rv + wruns[4 * r + 2] * nc, nc)
        for ow in range(wruns[4 * r + 2] + 1, wruns[4 * r + 3]):
            _add(vec, rv + ow * nc, nc)
        for w in range(wruns[4 * r], wruns[4 * r + 1]):
            _copy(row + w * g.bw, vec, nc)
    for h in range(run[0] + 1, run[1]):
        _copy_strided(row + (h - run[0]) * g.bh, g.bw, row, g.bw, g.w, nc)


cdef void _avg_bwd_small(const floating* go, floating* gi, floating* buf, Geom g,
                         const Py_ssize_t* cover_d, const Py_ssize_t* hruns, Py_ssize_t nhr,
                         const Py_ssize_t* wruns, Py_ssize_t nwr, const fp_weight* wt,
                         Py_ssize_t task) noexcept nogil:
    """Channels [c0, c0 + m) of sample n of small planar planes (see _small_planes): the
    gradient block (cells x m) transposed into ``buf``, each run of input elements gathered
    from it as in _avg_bwd_cl into the input block (plane x m), transposed back."""
    cdef Py_ssize_t cb = g.cbs, nblk = (g.c + cb - 1) // cb
    cdef Py_ssize_t n = task // nblk, c0 = (task % nblk) * cb, m = min(cb, g.c - c0)
    cdef Py_ssize_t hw = g.h * g.w, plane = g.d * hw, ncell = g.od * g.oh * g.ow
    cdef Py_ssize_t d, hr, r
    cdef const Py_ssize_t* run
    cdef floating* gb = buf
    cdef floating* ib = buf + ncell * cb
    cdef floating* dst
    if g.sc == 1 and ncell > 1 and g.c > 1:  # channels-last gradients: rows of the block
        _copy_strided(gb, m, go + n * g.sn + c0, g.c, ncell, m)
    else:
        _transpose(gb, m, go + n * g.sn + c0 * g.sc, g.sc, m, ncell)
    for d in range(g.d):
        for hr in range(nhr):
            run = hruns + 4 * hr
            for r in range(nwr):
                dst = ib + (d * hw + run[0] * g.w + wruns[4 * r]) * m
                if floating is float:
                    fp_avg_bwd_run_float(dst, run[1] - run[0], g.w * m,
                                         wruns[4 * r + 1] - wruns[4 * r], m, gb,
                                         g.oh * g.ow * m, g.ow * m, m, cover_d[2 * d],
                                         cover_d[2 * d + 1], run[2], run[3], wruns[4 * r + 2],
                                         wruns[4 * r + 3], wt, g.oh * g.ow, g.ow, m)
                else:
                    fp_avg_bwd_run_double(dst, run[1] - run[0], g.w * m,
                                          wruns[4 * r + 1] - wruns[4 * r], m, gb,
                                          g.oh * g.ow * m, g.ow * m, m, cover_d[2 * d],
                                          cover_d[2 * d + 1], run[2], run[3], wruns[4 * r + 2],
                                          wruns[4 * r + 3], wt, g.oh * g.ow, g.ow, m)
    _transpose(gi + n * g.bn + c0 * g.bc, g.bc, ib, m, plane, m)


cdef int _avg_backward(const floating* gop, floating* gip, cnp.ndarray grad_output,
                       cnp.ndarray grad_input, bint channels_last, int num_threads) except -1:
    """Gather: ``grad_input`` (rows contiguous, or channel stride 1) written once, no zero fill."""
    cdef Geom g = _geom(_shape(grad_input), _strides(grad_input), _shape(grad_output),
                        _strides(grad_output), sizeof(floating))
    cdef Py_ssize_t nhr, nwr, task, ntasks, bufsize
    cdef int nt
    cdef floating* scratch = NULL
    cdef Py_ssize_t* wd = <Py_ssize_t*>_alloc(
        (2 * (g.od + g.oh + g.ow + g.d) + 4 * (g.h + g.w)) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* wh = wd + 2 * g.od
    cdef Py_ssize_t* ww = wh + 2 * g.oh
    cdef Py_ssize_t* cover_d = ww + 2 * g.ow
    cdef Py_ssize_t* hruns = cover_d + 2 * g.d
    cdef Py_ssize_t* wruns = hruns + 4 * g.h
    cdef fp_weight* wt = NULL
    cdef Py_ssize_t od, oh, ow, i, reads = 0, kd_max = 0, kh_max = 0
    cdef bint small, shared = False, scaled = False
    try:
        _fill_windows(wd, g.d, g.od)
        _fill_windows(wh, g.h, g.oh)
        _fill_windows(ww, g.w, g.ow)
        _fill_windows(cover_d, g.od, g.d)
        nhr = _fill_cover_runs(hruns, g.h, g.oh)
        nwr = _fill_cover_runs(wruns, g.w, g.ow)
        if not channels_last and _global_planes(&g, num_threads):
            _task_threads(g.nib, num_threads, &nt)
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(g.nib):
                        _avg_bwd_global(gop, gip, g, task)
            else:
                for task in prange(g.nib, nogil=True, schedule='static', num_threads=nt):
                    _avg_bwd_global(gop, gip, g, task)
            return 0
        small = not channels_last and _small_planes(&g, False, True)
        if (channels_last and g.sc == 1) or small:
            wt = <fp_weight*>_alloc(g.od * g.oh * g.ow * sizeof(fp_weight))
            i = 0
            for od in range(g.od):
                for oh in range(g.oh):
                    for ow in range(g.ow):
                        wt[i].count = ((wd[2 * od + 1] - wd[2 * od]) * (wh[2 * oh + 1] - wh[2 * oh])
                                       * (ww[2 * ow + 1] - ww[2 * ow]))
                        wt[i].rcp = 1.0 / <double>wt[i].count
                        i = i + 1
        if small:
            ntasks = _small_tasks(&g, sizeof(floating))
            bufsize = _per_thread(g.cbs * (g.d * g.h * g.w + g.od * g.oh * g.ow))
            _task_threads(ntasks, num_threads, &nt)
            scratch = <floating*>_alloc(nt * bufsize * sizeof(floating))
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _avg_bwd_small(gop, gip, scratch, g, cover_d, hruns, nhr, wruns, nwr,
                                       wt, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _avg_bwd_small(gop, gip, scratch + threadid() * bufsize, g, cover_d, hruns,
                                   nhr, wruns, nwr, wt, task)
            return 0
        if channels_last:
            _channel_blocks(&g, g.n * g.d * nhr, num_threads)
            ntasks = g.n * g.d * nhr * g.ncb
            bufsize = _per_thread(g.cbs * (g.ow + 1))
            # Downsampling, where neighbouring windows overlap (the runs of a row read more
            # output columns than the row has) or the channel block ends in a partial vector
            # block: the products of a row of cells computed once and shared by the runs
            # (_avg_bwd_rowvals) beat a register pass per run, which computes each run's
            # products again, and in scalar code for a partial block (16x64x100x100->13
            # 1.15x, 8-48 channels 1.6-3.7x, 16x16x224x224->7 2.2x; exact 2x2 windows of
            # 64 channels and upsampling 1.2-1.7x slower that way, so they keep the pass).
            for i in range(nwr):
                reads = reads + wruns[4 * i + 3] - wruns[4 * i + 2]
            shared = g.w > g.ow and (reads > g.ow or g.cbs % (128 // sizeof(floating)) != 0)
            # Upsampling along W (several runs of a row read a cell), blocks of one or two
            # whole vector blocks: each task's terms once, then plain sums per run (5x5->7,
            # 10x10->15, 16x16->20 of 32-64 channels 1.08-1.12x; with a partial block or
            # hundreds of channels it was slower), up to 16384 terms of scratch.
            for i in range(g.d):
                kd_max = max(kd_max, cover_d[2 * i + 1] - cover_d[2 * i])
            for i in range(nhr):
                kh_max = max(kh_max, hruns[4 * i + 3] - hruns[4 * i + 2])
            scaled = (not shared and g.sc == 1 and reads > g.ow
                      and g.cbs % (128 // sizeof(floating)) == 0
                      and g.cbs * sizeof(floating) <= 256
                      and kd_max * kh_max * g.ow * g.cbs <= 16384)
            if scaled:
                bufsize = _per_thread(g.cbs * (1 + kd_max * kh_max * g.ow))
        else:
            _plane_blocks(&g, g.d * nhr, num_threads)
            ntasks = g.n * g.c * g.nib
            bufsize = _per_thread(g.ow)
        _task_threads(ntasks, num_threads, &nt)
        scratch = <floating*>_alloc(nt * bufsize * sizeof(floating))
        if channels_last:
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _avg_bwd_cl(gop, gip, scratch, g, wd, wh, ww,
                                    cover_d, hruns, nhr, wruns, nwr, wt, shared, scaled,
                                    task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _avg_bwd_cl(gop, gip, scratch + threadid() * bufsize, g, wd, wh, ww,
                                cover_d, hruns, nhr, wruns, nwr, wt, shared, scaled, task)
        else:
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        _avg_bwd_planar(gop, gip, scratch, g, wd, wh, ww,
                                        cover_d, hruns, nhr, wruns, nwr, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    _avg_bwd_planar(gop, gip, scratch + threadid() * bufsize, g, wd, wh, ww,
                                    cover_d, hruns, nhr, wruns, nwr, task)
    finally:
        free(wd)
        free(wt)
        free(scratch)
    return 0


# ========================================================================= max backward

cdef inline Py_ssize_t _offset(Geom g, int64_t p, bint dense) noexcept nogil:
    # Flat plane position -> element offset in grad_input (a multiply when the spatial axes
    # are dense, else two divisions).
    if dense:
        return p * g.bw
    return (p // (g.h * g.w)) * g.bd + ((p // g.w) % g.h) * g.bh + (p % g.w) * g.bw


cdef bint _max_bwd_scatter(const floating* go, const int64_t* idx, floating* gi, Geom g,
                           bint dense, Py_ssize_t plane) noexcept nogil:
    """``grad_input[n, c].flat[indices[o]] += grad_output[o]`` in output order (one plane).
    An index outside the plane is skipped, and makes it return True."""
    cdef Py_ssize_t c = plane % g.c, n = plane // g.c, od, oh, ow
    cdef const floating* gp = go + n * g.sn + c * g.sc
    cdef const int64_t* ip = idx + n * g.in_ + c * g.ic
    cdef floating* base = gi + n * g.bn + c * g.bc
    cdef uint64_t size = <uint64_t>(g.d * g.h * g.w)
    cdef Py_ssize_t off
    cdef int64_t p
    cdef bint bad = False
    for od in range(g.od):
        for oh in range(g.oh):
            for ow in range(g.ow):
                p = ip[od * g.id + oh * g.ih + ow * g.iw]
                if <uint64_t>p >= size:  # (as unsigned, a negative index is huge)
                    bad = True
                    continue
                off = _offset(g, p, dense)
                base[off] = base[off] + gp[od * g.sd + oh * g.sh + ow * g.sw]
    return bad


cdef bint _max_bwd_planar(const floating* go, const int64_t* idx, floating* gi, Geom g,
                          bint dense, Py_ssize_t plane) noexcept nogil:
    """Zero one plane, then scatter into it while it is still in cache (True: an index was
    outside the plane)."""
    cdef Py_ssize_t c = plane % g.c, n = plane // g.c, d, h
    cdef floating* base = gi + n * g.bn + c * g.bc
    if dense:
        memset(base, 0, g.d * g.h * g.w * sizeof(floating))
    else:
        for d in range(g.d):
            for h in range(g.h):
                memset(base + d * g.bd + h * g.bh, 0, g.w * sizeof(floating))
    return _max_bwd_scatter(go, idx, gi, g, dense, plane)


cdef enum:
    _GROUP = 8  # planes per task of _max_bwd_group, for planes small enough
    _PAIR = 2  # planes per task of _max_bwd_group, for larger ones


cdef bint _max_bwd_group(const floating* go, const int64_t* idx, floating* gi, Geom g,
                         Py_ssize_t group, Py_ssize_t task) noexcept nogil:
    """Planes [group * task, group * task + group) of dense planes that follow each other at
    fixed strides (C order): zero them, then add every cell in output order, the planes'
    additions interleaved. One plane alone is a chain of dependent read-add-writes whenever
    neighbouring cells share their maximum (upsampling: most of them), each waiting on the
    store before it; independent chains overlap (eight small planes, or two larger ones).
    The order of the additions into each element is unchanged (output order). An index
    outside the plane is skipped and makes it return True (a test in the loop costs nothing
    measurable there, a pass of its own over the indices a fifth of the time)."""
    cdef Py_ssize_t p0 = task * group, m = min(group, g.n * g.c - p0)
    cdef Py_ssize_t ncell = g.od * g.oh * g.ow
    cdef Py_ssize_t size = g.d * g.h * g.w
    cdef floating* base = gi + p0 * g.bc
    cdef const floating* gp = go + p0 * g.sc
    cdef const int64_t* ip = idx + p0 * g.ic
    memset(base, 0, m * size * sizeof(floating))
    if m == _GROUP:  # a constant count: the plane loop unrolls without a test per plane
        return _group_cells(gp, ip, base, _GROUP, ncell, size, g.sc)
    if m == _PAIR:
        return _group_cells(gp, ip, base, _PAIR, ncell, size, g.sc)
    return _group_cells(gp, ip, base, m, ncell, size, g.sc)


cdef inline bint _group_cells(const floating* gp, const int64_t* ip, floating* base,
                              Py_ssize_t m, Py_ssize_t ncell, Py_ssize_t size,
                              Py_ssize_t sc) noexcept nogil:
    """The additions of _max_bwd_group. Plane j's cell o is at j * sc + o in both gradients
    and indices: offsets kept incrementally, so eight planes need three pointers, not
    twenty-four registers."""
    cdef Py_ssize_t o, j, k, jb
    cdef int64_t p
    cdef bint bad = False
    for o in range(ncell):
        k = o
        jb = 0
        for j in range(m):
            p = ip[k]
            if <uint64_t>p < <uint64_t>size:
                base[jb + p] = base[jb + p] + gp[k]
            else:
                bad = True
            k = k + sc
            jb = jb + size
    return bad


cdef Py_ssize_t _max_bwd_cl(const floating* go, const int64_t* idx, floating* gi, Geom g,
                            const Py_ssize_t* cover_d, const Py_ssize_t* hruns, Py_ssize_t nhr,
                            Py_ssize_t task) noexcept nogil:
    """Channels-last ``grad_input[n, :, d, h_begin:h_end, :]``, rows that the same output
    cells cover: zero them, then add each covering cell whose index falls in them.

    Every element still receives its cells in output order (the order of the planar
    scatter), while the rows are in cache and the channel loop runs in memory order.
    Returns the (cell, channel) pairs added: a cell whose index lies outside the rows its
    window covers is added by no task, and the caller then scatters instead."""
    cdef Py_ssize_t hr = task % nhr, t = task // nhr
    cdef Py_ssize_t d = t % g.d, n = t // g.d
    cdef const Py_ssize_t* run = hruns + 4 * hr
    cdef Py_ssize_t hb = run[0], he = run[1], h, w, od, oh, ow, c, off, q, ph
    cdef floating* base = gi + n * g.bn + d * g.bd + hb * g.bh
    cdef floating* row
    # plane positions of these rows: one contiguous range, [lo, hi)
    cdef int64_t lo = d * g.h * g.w + hb * g.w, hi = d * g.h * g.w + he * g.w, p
    cdef bint dense = g.bh == g.w * g.bw
    cdef const floating* gp
    cdef const int64_t* ip
    cdef Py_ssize_t found = 0
    for h in range(he - hb):
        row = base + h * g.bh
        if g.bw == g.c:
            memset(row, 0, g.w * g.c * sizeof(floating))
        else:
            for w in range(g.w):
                memset(row + w * g.bw, 0, g.c * sizeof(floating))
    for od in range(cover_d[2 * d], cover_d[2 * d + 1]):
        for oh in range(run[2], run[3]):
            for ow in range(g.ow):
                gp = go + n * g.sn + od * g.sd + oh * g.sh + ow * g.sw
                ip = idx + n * g.in_ + od * g.id + oh * g.ih + ow * g.iw
                if dense:
                    if floating is float:
                        found += fp_scatter_rows_float(base, gp, g.sc, ip, g.ic, g.c, lo, hi,
                                                       g.bw)
                    else:
                        found += fp_scatter_rows_double(base, gp, g.sc, ip, g.ic, g.c, lo, hi,
                                                        g.bw)
                    continue
                for c in range(g.c):
                    p = ip[c * g.ic]
                    if p >= lo and p < hi:
                        q = p - lo
                        ph = q // g.w
                        off = ph * g.bh + (q - ph * g.w) * g.bw
                        base[off + c] = base[off + c] + gp[c * g.sc]
                        found += 1
    return found


cdef Py_ssize_t _max_bwd_cl_gather(const floating* go, const int64_t* idx, floating* gi, Geom g,
                                   const Py_ssize_t* cover_d, const Py_ssize_t* hruns,
                                   Py_ssize_t nhr, const Py_ssize_t* cover_w,
                                   Py_ssize_t task) noexcept nogil:
    """Channels-last ``grad_input[n, :, d, h_begin:h_end, :]`` by gather (channels-last
    gradients and indices): each element sums, in output order, the covering cells that
    point at it, its channels in registers; written once, no zero fill. For small windows,
    where each cell is read by few elements (compare _max_bwd_cl). Returns the (cell,
    channel) pairs found, as _max_bwd_cl."""
    cdef Py_ssize_t hr = task % nhr, t = task // nhr
    cdef Py_ssize_t d = t % g.d, n = t // g.d, h, w
    cdef const Py_ssize_t* run = hruns + 4 * hr
    cdef const floating* gp = go + n * g.sn
    cdef const int64_t* ip = idx + n * g.in_
    cdef floating* dst
    cdef int64_t pos
    cdef Py_ssize_t found = 0
    for h in range(run[0], run[1]):
        for w in range(g.w):
            dst = gi + n * g.bn + d * g.bd + h * g.bh + w * g.bw
            pos = (d * g.h + h) * g.w + w
            if floating is float:
                found += fp_max_bwd_gather_float(
                    dst, gp, ip, g.sd, g.sh, g.sw, g.id, g.ih, g.iw, cover_d[2 * d],
                    cover_d[2 * d + 1], run[2], run[3], cover_w[2 * w], cover_w[2 * w + 1],
                    pos, g.c)
            else:
                found += fp_max_bwd_gather_double(
                    dst, gp, ip, g.sd, g.sh, g.sw, g.id, g.ih, g.iw, cover_d[2 * d],
                    cover_d[2 * d + 1], run[2], run[3], cover_w[2 * w], cover_w[2 * w + 1],
                    pos, g.c)
    return found


cdef Py_ssize_t _window_sum(Py_ssize_t size_in, Py_ssize_t size_out) noexcept nogil:
    """The sum of the window lengths of one axis (the reads of a gather along it)."""
    cdef Py_ssize_t i, start, end, total = 0
    for i in range(size_out):
        _window(i, size_in, size_out, &start, &end)
        total += end - start
    return total


cdef enum:
    # Average window size (in elements) up to which the channels-last max backward gathers:
    # the gather reads each cell once per element of its window, vectorised; the scatter
    # reads it once but adds one channel at a time.
    _GATHER_WINDOW = 4


cdef bint _max_bwd_cl_slab(const floating* go, const int64_t* idx, floating* gi, Geom g,
                           bint dense, Py_ssize_t n) noexcept nogil:
    """Channels-last ``grad_input[n]``: zero it, then add every cell at its index in output
    order; no row-range tests (compare _max_bwd_cl), so any index in the plane. The fast
    path when the sample fits in cache, and the fallback of the others. An index outside
    the plane is skipped and makes it return True."""
    cdef Py_ssize_t od, oh, ow, c, d, h, w, off
    cdef floating* base = gi + n * g.bn
    cdef const floating* gp
    cdef const int64_t* ip
    cdef uint64_t size = <uint64_t>(g.d * g.h * g.w)
    cdef int64_t p
    cdef bint bad = False
    if dense and g.bw == g.c:
        memset(base, 0, g.d * g.h * g.w * g.c * sizeof(floating))
    else:
        for d in range(g.d):
            for h in range(g.h):
                for w in range(g.w):
                    memset(base + d * g.bd + h * g.bh + w * g.bw, 0, g.c * sizeof(floating))
    for od in range(g.od):
        for oh in range(g.oh):
            for ow in range(g.ow):
                gp = go + n * g.sn + od * g.sd + oh * g.sh + ow * g.sw
                ip = idx + n * g.in_ + od * g.id + oh * g.ih + ow * g.iw
                if dense and g.bw == g.c and g.ic == 1 and g.sc == 1:
                    # unit strides: fewer registers, no multiplies
                    for c in range(g.c):
                        p = ip[c]
                        if <uint64_t>p < size:
                            base[p * g.c + c] = base[p * g.c + c] + gp[c]
                        else:
                            bad = True
                else:
                    for c in range(g.c):
                        p = ip[c * g.ic]
                        if <uint64_t>p < size:
                            off = _offset(g, p, dense) + c
                            base[off] = base[off] + gp[c * g.sc]
                        else:
                            bad = True
    return bad


cdef inline bint _any_out_of_plane(const int64_t* ip, Py_ssize_t n, uint64_t plane) noexcept nogil:
    # As unsigned, a negative index is huge: one comparison per index, no early exit (the
    # loop vectorises; bad indices are the exception).
    cdef Py_ssize_t i
    cdef bint bad = False
    for i in range(n):
        bad = bad | (<uint64_t>ip[i] >= plane)
    return bad


cdef bint _bad_indices(const int64_t* idx, Geom g, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1,
                       uint64_t plane) noexcept nogil:
    """Does any of ``indices[n, c0:c1]`` lie outside ``[0, plane)``? (Only reads them.)"""
    cdef Py_ssize_t c, od, oh, ow
    cdef const int64_t* ip
    cdef bint bad = False
    if g.ic == 1:  # channels-last indices: channel runs
        for od in range(g.od):
            for oh in range(g.oh):
                for ow in range(g.ow):
                    ip = idx + n * g.in_ + od * g.id + oh * g.ih + ow * g.iw + c0
                    bad = bad | _any_out_of_plane(ip, c1 - c0, plane)
        return bad
    for c in range(c0, c1):
        for od in range(g.od):
            for oh in range(g.oh):
                ip = idx + n * g.in_ + c * g.ic + od * g.id + oh * g.ih
                if g.iw == 1:
                    bad = bad | _any_out_of_plane(ip, g.ow, plane)
                else:
                    for ow in range(g.ow):
                        bad = bad | (<uint64_t>ip[ow * g.iw] >= plane)
    return bad


cdef bint _check_task(const int64_t* idx, Geom g, bint channels_last, Py_ssize_t group,
                      Py_ssize_t task) noexcept nogil:
    """The indices that scatter task ``task`` (see _max_backward) reads: any out of the plane?
    Channels-last tasks are checked a sample at a time."""
    cdef uint64_t plane = <uint64_t>(g.d * g.h * g.w)
    cdef Py_ssize_t p0, m
    if channels_last:
        return _bad_indices(idx, g, task, 0, g.c, plane)
    if group:  # planes [group task, group task + group), dense and adjacent
        p0 = task * group
        m = min(group, g.n * g.c - p0)
        return _any_out_of_plane(idx + p0 * g.ic, m * g.od * g.oh * g.ow, plane)
    return _bad_indices(idx, g, task // g.c, task % g.c, task % g.c + 1, plane)


cdef bint _indices_bad(const int64_t* ip, Geom g, bint channels_last, Py_ssize_t group,
                       Py_ssize_t ntasks, int nt) noexcept:
    """Check every index, in the tasks (and so, static schedule, on the threads) that will
    scatter them: each thread then finds its indices in its own cache."""
    cdef Py_ssize_t task
    cdef int bad = 0
    if nt == 1:  # no thread team for one thread
        with nogil:
            for task in range(ntasks):
                bad += _check_task(ip, g, channels_last, group, task)
    else:
        for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
            bad += _check_task(ip, g, channels_last, group, task)
    return bad != 0


cdef int _max_backward(const floating* gop, floating* gip, cnp.ndarray grad_output,
                       cnp.ndarray indices, cnp.ndarray grad_input, bint channels_last,
                       int num_threads, bint fresh, bint tables) except -1:
    """Zero, then scatter-add in output order, each element by one thread: deterministic
    without atomics (planar: one plane, or eight small ones, per task; channels-last: one
    sample or one run of rows per task, or a gather).

    Returns 1 when an index lies outside the plane. No kernel writes out of bounds for one:
    the scatters test each index as they read it, the row and gather kernels only find
    indices in their rows. Unless ``fresh`` (grad_input is the caller's own, dropped on an
    error), every index is checked first, in a loop that only reads them, so that nothing
    is written then."""
    cdef Geom g = _geom(_shape(grad_input), _strides(grad_input), _shape(grad_output),
                        _strides(grad_output), sizeof(floating))
    _set_index_strides(&g, _strides(indices))
    cdef bint dense = ((g.h == 1 or g.bh == g.w * g.bw)
                       and (g.d == 1 or g.bd == g.h * g.w * g.bw))
    cdef Py_ssize_t task, ntasks, nhr, hits = 0
    cdef int nt, bad = 0
    cdef Py_ssize_t group = 0
    cdef bint c_order, gather
    cdef Py_ssize_t* cover_w
    cdef const int64_t* ip = <const int64_t*>cnp.PyArray_DATA(indices)
    cdef Py_ssize_t* cover_d
    cdef Py_ssize_t* hruns
    if not channels_last:
        ntasks = g.n * g.c
        # C-order planes: eight per task where eight stay in L1, else two (upsampling 1d
        # 2**17 -> 2**18 1.5x faster than one)
        c_order = (g.bc == g.d * g.h * g.w and g.bn == g.c * g.bc
                   and g.bw == 1 and (g.h == 1 or g.bh == g.w) and (g.d == 1 or g.bd == g.h * g.w)
                   and g.sc == g.od * g.oh * g.ow and g.sn == g.c * g.sc and g.sw == 1
                   and (g.oh == 1 or g.sh == g.ow) and (g.od == 1 or g.sd == g.oh * g.ow)
                   and g.ic == g.sc and g.in_ == g.c * g.ic and g.iw == 1
                   and (g.oh == 1 or g.ih == g.ow) and (g.od == 1 or g.id == g.oh * g.ow))
        if (c_order and g.d * g.h * g.w * sizeof(floating) * _GROUP <= 16384
                and ntasks >= 2 * _GROUP):
            group = _GROUP
        elif c_order and ntasks >= 2 * _PAIR:
            group = _PAIR
        if group:
            ntasks = (ntasks + group - 1) // group
        _task_threads(ntasks, num_threads, &nt)
        if not fresh and _indices_bad(ip, g, False, group, ntasks, nt):
            return 1
        if group:
            if nt == 1:  # no thread team for one thread
                with nogil:
                    for task in range(ntasks):
                        bad += _max_bwd_group(gop, ip, gip, g, group, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    bad += _max_bwd_group(gop, ip, gip, g, group, task)
        elif nt == 1:  # no thread team for one thread
            with nogil:
                for task in range(ntasks):
                    bad += _max_bwd_planar(gop, ip, gip, g, dense, task)
        else:
            for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                bad += _max_bwd_planar(gop, ip, gip, g, dense, task)
        return 1 if bad else 0
    _task_threads(g.n, num_threads, &nt)
    if not fresh and _indices_bad(ip, g, True, False, g.n, nt):
        return 1
    gather = (g.sc == 1 and g.ic == 1
              and _window_sum(g.d, g.od) * _window_sum(g.h, g.oh) * _window_sum(g.w, g.ow)
              <= _GATHER_WINDOW * g.od * g.oh * g.ow)
    # (without ``tables``, for very long axes: straight to the slabs, which keep none)
    if tables and (gather or not (dense and g.bw == g.c and g.n >= 4 * num_threads
                                  and g.d * g.h * g.w * g.c * sizeof(floating) <= 65536)):
        # rows that the same cells cover, one run per task
        cover_d = <Py_ssize_t*>_alloc((2 * g.d + 4 * g.h + 2 * g.w) * sizeof(Py_ssize_t))
        hruns = cover_d + 2 * g.d
        cover_w = hruns + 4 * g.h
        try:
            _fill_windows(cover_d, g.od, g.d)
            _fill_windows(cover_w, g.ow, g.w)
            nhr = _fill_cover_runs(hruns, g.h, g.oh)
            ntasks = g.n * g.d * nhr
            _task_threads(ntasks, num_threads, &nt)
            if gather:
                if nt == 1:  # no thread team for one thread
                    with nogil:
                        for task in range(ntasks):
                            hits += _max_bwd_cl_gather(gop, ip, gip, g, cover_d, hruns, nhr,
                                                       cover_w, task)
                else:
                    for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                        hits += _max_bwd_cl_gather(gop, ip, gip, g, cover_d, hruns, nhr,
                                                   cover_w, task)
            elif nt == 1:
                with nogil:
                    for task in range(ntasks):
                        hits += _max_bwd_cl(gop, ip, gip, g, cover_d, hruns, nhr, task)
            else:
                for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
                    hits += _max_bwd_cl(gop, ip, gip, g, cover_d, hruns, nhr, task)
        finally:
            free(cover_d)
        if hits == g.n * g.c * g.od * g.oh * g.ow:
            return 0
        # Some index was not found in the rows its cell's window covers: outside the plane
        # (an error), or elsewhere in it (valid, but not from a forward pass: no task added
        # it, so the slabs below scatter it all again).
        _task_threads(g.n, num_threads, &nt)
        if fresh and _indices_bad(ip, g, True, False, g.n, nt):
            return 1
    # one (n) slab per task: small dense ones, enough of them, like the planar planes; or
    # the fallback above
    if nt == 1:  # no thread team for one thread
        with nogil:
            for task in range(g.n):
                bad += _max_bwd_cl_slab(gop, ip, gip, g, dense, task)
    else:
        for task in prange(g.n, nogil=True, schedule='static', num_threads=nt):
            bad += _max_bwd_cl_slab(gop, ip, gip, g, dense, task)
    return 1 if bad else 0


# ========================================================================= long axes
# The kernels above keep tables of window bounds as long as the axes (and, forwards,
# buffers as long as an input row): small beside the result, unless an axis is very long
# (a signal of millions of samples pooled to or from a few planes). fastpool/_cython.py
# sends such calls here instead: each window is computed from the formula where it is
# used, any strides are read in place, and nothing is allocated.


cdef inline void _advance(Py_ssize_t* lo, Py_ssize_t* rem, Py_ssize_t q, Py_ssize_t r,
                          Py_ssize_t size_out) noexcept nogil:
    """``(start(i + 1), (i + 1) * size_in % size_out)`` from the same pair for cell i of
    :func:`_window`, with ``q, r = divmod(size_in, size_out)``: the next window without a
    division (its end is ``start(i + 1)``, plus one when that remainder is not 0)."""
    lo[0] = lo[0] + q
    rem[0] = rem[0] + r
    if rem[0] >= size_out:
        lo[0] = lo[0] + 1
        rem[0] = rem[0] - size_out


cdef void _fwd_long(const floating* x, floating* out, int64_t* idx, Geom g, bint is_max,
                    Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Output elements [first, last) in (n, c, od, oh, ow) order, a row at a time: the
    SPEC's scan of each window in row-major order, or its sum in double."""
    cdef Py_ssize_t k = first, r, n, c, od, oh, ow, ow0, ow1, d0, d1, h0, h1, d, h, w, bi
    cdef Py_ssize_t lo, rem, hi, nlo, nrem, q = g.w // g.ow, rq = g.w % g.ow
    cdef const floating* row
    cdef floating v, bv
    cdef double s
    while k < last:
        r = k // g.ow
        ow0 = k - r * g.ow
        ow1 = min(g.ow, ow0 + last - k)
        k = k + ow1 - ow0
        oh = r % g.oh
        r = r // g.oh
        od = r % g.od
        r = r // g.od
        c = r % g.c
        n = r // g.c
        _window(od, g.d, g.od, &d0, &d1)
        _window(oh, g.h, g.oh, &h0, &h1)
        lo = (ow0 * g.w) // g.ow
        rem = (ow0 * g.w) % g.ow
        for ow in range(ow0, ow1):
            nlo = lo
            nrem = rem
            _advance(&nlo, &nrem, q, rq, g.ow)
            hi = nlo + (nrem != 0)
            if is_max:
                bv = x[n * g.bn + c * g.bc + d0 * g.bd + h0 * g.bh + lo * g.bw]
                bi = (d0 * g.h + h0) * g.w + lo
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        row = x + n * g.bn + c * g.bc + d * g.bd + h * g.bh
                        for w in range(lo, hi):
                            v = row[w * g.bw]
                            if v > bv or v != v:
                                bv = v
                                bi = (d * g.h + h) * g.w + w
                out[n * g.sn + c * g.sc + od * g.sd + oh * g.sh + ow * g.sw] = bv
                idx[n * g.in_ + c * g.ic + od * g.id + oh * g.ih + ow * g.iw] = bi
            else:
                s = 0
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        row = x + n * g.bn + c * g.bc + d * g.bd + h * g.bh
                        if g.bw == 1 and hi - lo > 16:
                            s = s + <double>_sum(row + lo, hi - lo)
                        else:
                            for w in range(lo, hi):
                                s = s + <double>row[w * g.bw]
                out[n * g.sn + c * g.sc + od * g.sd + oh * g.sh + ow * g.sw] = <floating>(
                    s / <double>((d1 - d0) * (h1 - h0) * (hi - lo)))
            lo = nlo
            rem = nrem


cdef void _avg_bwd_long(const floating* go, floating* gi, Geom g, Py_ssize_t first,
                        Py_ssize_t last) noexcept nogil:
    """Elements [first, last) of grad_input in (n, c, d, h, w) order, a row at a time: the
    terms of the covering cells added as _avg_bwd_rowvals and _avg_bwd_planar add them (per
    output column over the cells' rows, then across the columns), so the same bits."""
    cdef Py_ssize_t k = first, r, n, c, d, h, w, w0, w1, od0, od1, oh0, oh1, od, oh, ow
    cdef Py_ssize_t f, frem, nf, nfrem, lo, rem, nlo, nrem, b0, b1, e0, e1, kdh
    cdef bint one
    cdef Py_ssize_t q = g.w // g.ow, rq = g.w % g.ow, qc = g.ow // g.w, rc = g.ow % g.w
    cdef const floating* src
    cdef floating acc, v = 0
    while k < last:
        r = k // g.w
        w0 = k - r * g.w
        w1 = min(g.w, w0 + last - k)
        k = k + w1 - w0
        h = r % g.h
        r = r // g.h
        d = r % g.d
        r = r // g.d
        c = r % g.c
        n = r // g.c
        _window(d, g.od, g.d, &od0, &od1)
        _window(h, g.oh, g.h, &oh0, &oh1)
        src = go + n * g.sn + c * g.sc
        # one covering cell in D and H (pooling, not upsampling there): its size, once
        one = od1 - od0 == 1 and oh1 - oh0 == 1
        _window(od0, g.d, g.od, &b0, &b1)
        _window(oh0, g.h, g.oh, &e0, &e1)
        kdh = (b1 - b0) * (e1 - e0)
        f = (w0 * g.ow) // g.w  # the first output cell covering w, and its remainder
        frem = (w0 * g.ow) % g.w
        for w in range(w0, w1):
            nf = f
            nfrem = frem
            _advance(&nf, &nfrem, qc, rc, g.w)
            lo = (f * g.w) // g.ow
            rem = (f * g.w) % g.ow
            for ow in range(f, nf + (nfrem != 0)):
                nlo = lo
                nrem = rem
                _advance(&nlo, &nrem, q, rq, g.ow)
                acc = 0
                if one:
                    acc = acc + src[od0 * g.sd + oh0 * g.sh + ow * g.sw] / <floating>(
                        kdh * (nlo + (nrem != 0) - lo))
                else:
                    for od in range(od0, od1):
                        _window(od, g.d, g.od, &b0, &b1)
                        for oh in range(oh0, oh1):
                            _window(oh, g.h, g.oh, &e0, &e1)
                            acc = acc + src[od * g.sd + oh * g.sh + ow * g.sw] / <floating>(
                                (b1 - b0) * (e1 - e0) * (nlo + (nrem != 0) - lo))
                v = acc if ow == f else v + acc
                lo = nlo
                rem = nrem
            gi[n * g.bn + c * g.bc + d * g.bd + h * g.bh + w * g.bw] = v
            f = nf
            frem = nfrem


cdef int _long(floating* big, floating* small, int64_t* idx, cnp.ndarray big_a,
               cnp.ndarray small_a, cnp.ndarray indices, int kind, int num_threads) except -1:
    """A forward (kind 0: average, 1: maximum; ``big`` the input, only read) or the average
    backward (kind 2; ``big`` grad_input, written) through the long-axis kernels, their
    elements split evenly among the tasks."""
    cdef Geom g = _geom(_shape(big_a), _strides(big_a), _shape(small_a), _strides(small_a),
                        sizeof(floating))
    cdef Py_ssize_t total = cnp.PyArray_SIZE(big_a if kind == 2 else small_a)
    cdef Py_ssize_t task, ntasks = min(total, 4 * <Py_ssize_t>num_threads)
    cdef int nt
    if indices is not None:
        _set_index_strides(&g, _strides(indices))
    _task_threads(ntasks, num_threads, &nt)
    if nt == 1:
        with nogil:
            for task in range(ntasks):
                if kind == 2:
                    _avg_bwd_long(small, big, g, task * total // ntasks,
                                  (task + 1) * total // ntasks)
                else:
                    _fwd_long(big, small, idx, g, kind == 1, task * total // ntasks,
                              (task + 1) * total // ntasks)
    else:
        for task in prange(ntasks, nogil=True, schedule='static', num_threads=nt):
            if kind == 2:
                _avg_bwd_long(small, big, g, task * total // ntasks,
                              (task + 1) * total // ntasks)
            else:
                _fwd_long(big, small, idx, g, kind == 1, task * total // ntasks,
                          (task + 1) * total // ntasks)
    return 0


# ========================================================================= entry points

def avg_forward(cnp.ndarray x not None, cnp.ndarray out not None, bint channels_last,
                int num_threads):
    """``out`` = window means of ``x`` (rows contiguous, or channel stride 1 if channels_last)."""
    if _float_kind(x, out, False) == cnp.NPY_FLOAT:
        _avg_forward(<const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), x, out,
                     channels_last, num_threads)
    else:
        _avg_forward(<const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), x,
                     out, channels_last, num_threads)


def max_forward(cnp.ndarray x not None, cnp.ndarray out not None, cnp.ndarray indices not None,
                bint channels_last, int num_threads):
    """``out``/``indices`` = window maxima of ``x`` and their flat positions in the plane."""
    cdef int t = _float_kind(x, out, False)
    _check_array(indices, cnp.NPY_INT64, True)
    if t == cnp.NPY_FLOAT:
        _max_forward(<const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), x, out,
                     indices, channels_last, num_threads)
    else:
        _max_forward(<const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), x,
                     out, indices, channels_last, num_threads)


def avg_backward(cnp.ndarray grad_output not None, cnp.ndarray grad_input not None,
                 bint channels_last, int num_threads):
    """Gather: ``grad_input`` (rows contiguous, or channel stride 1) written once, no zero fill."""
    if _float_kind(grad_input, grad_output, True) == cnp.NPY_FLOAT:
        _avg_backward(<const float*>cnp.PyArray_DATA(grad_output),
                      <float*>cnp.PyArray_DATA(grad_input), grad_output, grad_input,
                      channels_last, num_threads)
    else:
        _avg_backward(<const double*>cnp.PyArray_DATA(grad_output),
                      <double*>cnp.PyArray_DATA(grad_input), grad_output, grad_input,
                      channels_last, num_threads)


def forward_long(cnp.ndarray x not None, cnp.ndarray out not None, cnp.ndarray indices,
                 int num_threads):
    """``out`` (and with ``indices`` their positions: the maximum, else the average) through
    the long-axis kernels, any strides."""
    cdef int t = _float_kind(x, out, False)
    cdef int64_t* ip = NULL
    if indices is not None:
        _check_array(indices, cnp.NPY_INT64, True)
        ip = <int64_t*>cnp.PyArray_DATA(indices)
    if t == cnp.NPY_FLOAT:
        _long(<float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), ip, x, out,
              indices, 0 if indices is None else 1, num_threads)
    else:
        _long(<double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), ip, x, out,
              indices, 0 if indices is None else 1, num_threads)


def avg_backward_long(cnp.ndarray grad_output not None, cnp.ndarray grad_input not None,
                      int num_threads):
    """The average's gradient through the long-axis kernels, any strides."""
    cdef cnp.ndarray no_indices = None
    if _float_kind(grad_input, grad_output, True) == cnp.NPY_FLOAT:
        _long(<float*>cnp.PyArray_DATA(grad_input), <float*>cnp.PyArray_DATA(grad_output),
              NULL, grad_input, grad_output, no_indices, 2, num_threads)
    else:
        _long(<double*>cnp.PyArray_DATA(grad_input), <double*>cnp.PyArray_DATA(grad_output),
              NULL, grad_input, grad_output, no_indices, 2, num_threads)


def max_backward(cnp.ndarray grad_output not None, cnp.ndarray indices not None,
                 cnp.ndarray grad_input not None, bint channels_last, int num_threads,
                 bint fresh=False, bint tables=True):
    """``grad_input.flat_plane[indices] += grad_output``, each element by one thread; True.
    False when an index lies outside the plane, with ``grad_input`` untouched unless
    ``fresh`` (then the indices are tested as the kernels read them, and what was written
    is the caller's to drop)."""
    cdef int t = _float_kind(grad_input, grad_output, True)
    _check_array(indices, cnp.NPY_INT64, False)
    if t == cnp.NPY_FLOAT:
        return _max_backward(<const float*>cnp.PyArray_DATA(grad_output),
                             <float*>cnp.PyArray_DATA(grad_input), grad_output, indices,
                             grad_input, channels_last, num_threads, fresh, tables) == 0
    return _max_backward(<const double*>cnp.PyArray_DATA(grad_output),
                         <double*>cnp.PyArray_DATA(grad_input), grad_output, indices,
                         grad_input, channels_last, num_threads, fresh, tables) == 0
