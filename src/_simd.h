/* Vector helpers for src/_kernels.pxi: window sums, row adds and transposes, the
 * channels-last max-backward scatter, the planar window argmax, and CPU feature detection.
 *
 * Window argmax (SPEC "Max pooling"). A window is kd*kh runs of kw contiguous elements; run
 * r = dd*kh + hh starts at p + dd*sd + hh*sh, and the scan order is run by run, then along
 * each run. The result is the run index and the position in the run of
 *   - the last NaN in scan order, if the window holds a NaN;
 *   - else the first element equal to the maximum (ties -> first; all -inf -> the first),
 * which is exactly what "replace when v > maxval or isnan(v)" keeps.
 *
 * Why C: the obvious scalar scan costs a compare-and-branch per element and runs at PyTorch's
 * speed, and GCC does not vectorise a float max reduction without -ffast-math, which must stay
 * off (NaN has to propagate). Here a first pass finds the maximum and whether a NaN exists a
 * vector at a time (max is idempotent, so a run's last vector may overlap the one before it);
 * a second pass finds the first element equal to that maximum (or the last NaN), again a
 * vector at a time, in data that is now in L1. SSE2 (baseline of x86-64), AVX2 when the file
 * is compiled with -mavx2 (fastpool._cy_avx2), else the scalar scan.
 */
#ifndef FASTPOOL_SIMD_H
#define FASTPOOL_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define FP_SIMD_NAME "avx2"
#define FP_VECTOR 1
#elif defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define FP_SIMD_NAME "sse2"
#define FP_VECTOR 1
#else
#define FP_SIMD_NAME "scalar"
#define FP_VECTOR 0
#endif

/* Can this CPU and OS run AVX2 code? (GCC and Clang check the OS's YMM support too.) */
static inline int fp_cpu_has_avx2(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

/* Sum of n contiguous values (the average kernels' window and plane sums). Sixteen lanes
 * a[0..15], all starting at +0.0: element i of each whole block of 16 goes to lane i % 16,
 * then each block of 4 to lanes 0-3, then the last 0-3 elements to lanes 0, 1, 2; the lanes
 * are folded as a[j] + a[j + 8], a[j] + a[j + 4], (a[0] + a[1]) + (a[2] + a[3]). For float
 * sums of 64 or more, whole blocks of 32 come first, element i to lane i % 32 (lanes 16-31
 * are b[0..15], also from +0.0), then a[j] = a[j] + b[j] and the rest as above: four
 * vector chains instead of two (a memory-bound plane sum 1.1x faster). Runs of at most 8
 * are one plain chain. The order depends on n only (deterministic), and the vector builds
 * give the bits of the scalar reference: where they add +0.0 to an unused lane, the lane
 * is unchanged (a sum that starts at +0.0 is never -0.0). Kept in registers: a C loop
 * over a stack array keeps the lanes in memory, a store and a load per addition. */
#define FP_SUM_SHORT(T)                                                                      \
    T s = p[0];                                                                              \
    ptrdiff_t i;                                                                             \
    for (i = 1; i < n; i++) s = s + p[i];                                                    \
    return s;

#define FP_SUM_SCALAR(T, wide)                                                               \
    static inline T fp_sum_scalar_##T(const T *p, ptrdiff_t n) {                            \
        T a[16];                                                                             \
        ptrdiff_t i = 0, j;                                                                  \
        if (n <= 8) {                                                                        \
            FP_SUM_SHORT(T)                                                                  \
        }                                                                                    \
        for (j = 0; j < 16; j++) a[j] = 0;                                                   \
        if (wide && n >= 64) {                                                               \
            T b[16];                                                                         \
            for (j = 0; j < 16; j++) b[j] = 0;                                               \
            for (; i + 32 <= n; i += 32)                                                     \
                for (j = 0; j < 16; j++) {                                                   \
                    a[j] = a[j] + p[i + j];                                                  \
                    b[j] = b[j] + p[i + 16 + j];                                             \
                }                                                                            \
            for (j = 0; j < 16; j++) a[j] = a[j] + b[j];                                     \
        }                                                                                    \
        for (; i + 16 <= n; i += 16)                                                         \
            for (j = 0; j < 16; j++) a[j] = a[j] + p[i + j];                                 \
        for (; i + 4 <= n; i += 4)                                                           \
            for (j = 0; j < 4; j++) a[j] = a[j] + p[i + j];                                  \
        for (j = 0; i < n; i++, j++) a[j] = a[j] + p[i];                                     \
        for (j = 0; j < 8; j++) a[j] = a[j] + a[j + 8];                                      \
        for (j = 0; j < 4; j++) a[j] = a[j] + a[j + 4];                                      \
        return (a[0] + a[1]) + (a[2] + a[3]);                                                \
    }
FP_SUM_SCALAR(float, 1)
FP_SUM_SCALAR(double, 0)

#if defined(__AVX2__)

static inline float fp_sum_float(const float *p, ptrdiff_t n) {
    ptrdiff_t i = 0, r;
    __m256 a0, a1, s8;
    __m128 lo, s4, s2;
    if (n <= 8) {
        FP_SUM_SHORT(float)
    }
    a0 = _mm256_setzero_ps(); /* lanes 0-7 */
    a1 = _mm256_setzero_ps(); /* lanes 8-15 */
    if (n >= 64) {
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(); /* lanes 16-23, 24-31 */
        for (; i + 32 <= n; i += 32) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
            b0 = _mm256_add_ps(b0, _mm256_loadu_ps(p + i + 16));
            b1 = _mm256_add_ps(b1, _mm256_loadu_ps(p + i + 24));
        }
        a0 = _mm256_add_ps(a0, b0);
        a1 = _mm256_add_ps(a1, b1);
    }
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    }
    lo = _mm256_castps256_ps128(a0);
    for (; i + 4 <= n; i += 4) lo = _mm_add_ps(lo, _mm_loadu_ps(p + i));
    r = n - i;
    if (r > 0)
        lo = _mm_add_ps(lo, _mm_setr_ps(p[i], r > 1 ? p[i + 1] : 0.0f, r > 2 ? p[i + 2] : 0.0f,
                                        0.0f));
    a0 = _mm256_insertf128_ps(a0, lo, 0);
    s8 = _mm256_add_ps(a0, a1);
    s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s2 = _mm_add_ps(s4, _mm_shuffle_ps(s4, s4, _MM_SHUFFLE(3, 3, 3, 1))); /* a0+a1, -, a2+a3 */
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehl_ps(s2, s2)));
}

static inline double fp_sum_double(const double *p, ptrdiff_t n) {
    ptrdiff_t i = 0, r;
    __m256d a0, a1, a2, a3, c;
    __m128d lo, hi;
    if (n <= 8) {
        FP_SUM_SHORT(double)
    }
    a0 = a1 = a2 = a3 = _mm256_setzero_pd(); /* lanes 0-3, 4-7, 8-11, 12-15 */
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_pd(a0, _mm256_loadu_pd(p + i));
        a1 = _mm256_add_pd(a1, _mm256_loadu_pd(p + i + 4));
        a2 = _mm256_add_pd(a2, _mm256_loadu_pd(p + i + 8));
        a3 = _mm256_add_pd(a3, _mm256_loadu_pd(p + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = _mm256_add_pd(a0, _mm256_loadu_pd(p + i));
    r = n - i;
    if (r > 0)
        a0 = _mm256_add_pd(a0, _mm256_setr_pd(p[i], r > 1 ? p[i + 1] : 0.0,
                                              r > 2 ? p[i + 2] : 0.0, 0.0));
    c = _mm256_add_pd(_mm256_add_pd(a0, a2), _mm256_add_pd(a1, a3));
    lo = _mm256_castpd256_pd128(c);
    hi = _mm256_extractf128_pd(c, 1);
    lo = _mm_add_sd(lo, _mm_unpackhi_pd(lo, lo));
    hi = _mm_add_sd(hi, _mm_unpackhi_pd(hi, hi));
    return _mm_cvtsd_f64(_mm_add_sd(lo, hi));
}

#elif FP_VECTOR

static inline float fp_sum_float(const float *p, ptrdiff_t n) {
    ptrdiff_t i = 0, r;
    __m128 a0, a1, a2, a3, c, t;
    if (n <= 8) {
        FP_SUM_SHORT(float)
    }
    a0 = a1 = a2 = a3 = _mm_setzero_ps(); /* lanes 0-3, 4-7, 8-11, 12-15 */
    if (n >= 64) {
        __m128 b0, b1, b2, b3; /* lanes 16-19, 20-23, 24-27, 28-31 */
        b0 = b1 = b2 = b3 = _mm_setzero_ps();
        for (; i + 32 <= n; i += 32) {
            a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
            a1 = _mm_add_ps(a1, _mm_loadu_ps(p + i + 4));
            a2 = _mm_add_ps(a2, _mm_loadu_ps(p + i + 8));
            a3 = _mm_add_ps(a3, _mm_loadu_ps(p + i + 12));
            b0 = _mm_add_ps(b0, _mm_loadu_ps(p + i + 16));
            b1 = _mm_add_ps(b1, _mm_loadu_ps(p + i + 20));
            b2 = _mm_add_ps(b2, _mm_loadu_ps(p + i + 24));
            b3 = _mm_add_ps(b3, _mm_loadu_ps(p + i + 28));
        }
        a0 = _mm_add_ps(a0, b0);
        a1 = _mm_add_ps(a1, b1);
        a2 = _mm_add_ps(a2, b2);
        a3 = _mm_add_ps(a3, b3);
    }
    for (; i + 16 <= n; i += 16) {
        a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
        a1 = _mm_add_ps(a1, _mm_loadu_ps(p + i + 4));
        a2 = _mm_add_ps(a2, _mm_loadu_ps(p + i + 8));
        a3 = _mm_add_ps(a3, _mm_loadu_ps(p + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
    r = n - i;
    if (r > 0)
        a0 = _mm_add_ps(a0, _mm_setr_ps(p[i], r > 1 ? p[i + 1] : 0.0f, r > 2 ? p[i + 2] : 0.0f,
                                        0.0f));
    c = _mm_add_ps(_mm_add_ps(a0, a2), _mm_add_ps(a1, a3));
    t = _mm_add_ps(c, _mm_shuffle_ps(c, c, _MM_SHUFFLE(3, 3, 3, 1)));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t)));
}

static inline double fp_sum_double(const double *p, ptrdiff_t n) {
    ptrdiff_t i = 0, r, k;
    __m128d a[8], c0, c1;
    if (n <= 8) {
        FP_SUM_SHORT(double)
    }
    for (k = 0; k < 8; k++) a[k] = _mm_setzero_pd(); /* lanes 2k, 2k+1 */
    for (; i + 16 <= n; i += 16)
        for (k = 0; k < 8; k++) a[k] = _mm_add_pd(a[k], _mm_loadu_pd(p + i + 2 * k));
    for (; i + 4 <= n; i += 4) {
        a[0] = _mm_add_pd(a[0], _mm_loadu_pd(p + i));
        a[1] = _mm_add_pd(a[1], _mm_loadu_pd(p + i + 2));
    }
    r = n - i;
    if (r > 0) {
        a[0] = _mm_add_pd(a[0], _mm_setr_pd(p[i], r > 1 ? p[i + 1] : 0.0));
        a[1] = _mm_add_pd(a[1], _mm_setr_pd(r > 2 ? p[i + 2] : 0.0, 0.0));
    }
    c0 = _mm_add_pd(_mm_add_pd(a[0], a[4]), _mm_add_pd(a[2], a[6])); /* lanes 0, 1 */
    c1 = _mm_add_pd(_mm_add_pd(a[1], a[5]), _mm_add_pd(a[3], a[7])); /* lanes 2, 3 */
    c0 = _mm_add_sd(c0, _mm_unpackhi_pd(c0, c0));
    c1 = _mm_add_sd(c1, _mm_unpackhi_pd(c1, c1));
    return _mm_cvtsd_f64(_mm_add_sd(c0, c1));
}

#else

static inline float fp_sum_float(const float *p, ptrdiff_t n) { return fp_sum_scalar_float(p, n); }
static inline double fp_sum_double(const double *p, ptrdiff_t n) {
    return fp_sum_scalar_double(p, n);
}

#endif

/* Channels-last max backward (dense rows): for every channel c, if ip[c*ic] (a flat plane
 * position) lies in [lo, hi), add gp[c*sc] to base[(p - lo) * bw + c]. Which channels hit
 * these rows is data-dependent and unpredictable, so no branch: a miss adds +0.0 to
 * base[c], which changes no value (these sums start at +0.0 and round to nearest, so they
 * are never -0.0). Written with integer masks because compilers turn selects back into
 * branches. Returns the number of hits. */
#define FP_SCATTER_ROWS(T, U)                                                                \
    static inline ptrdiff_t fp_scatter_rows_##T(T *base, const T *gp, ptrdiff_t sc,          \
                                                const int64_t *ip, ptrdiff_t ic,             \
                                                ptrdiff_t nc, int64_t lo, int64_t hi,        \
                                                ptrdiff_t bw) {                              \
        ptrdiff_t c, hits = 0;                                                               \
        uint64_t span = (uint64_t)(hi - lo);                                                 \
        for (c = 0; c < nc; c++) {                                                           \
            int64_t p = ip[c * ic];                                                          \
            int64_t in = -(int64_t)((uint64_t)(p - lo) < span); /* lo <= p < hi */           \
            T v = gp[c * sc];                                                                \
            U vb;                                                                            \
            ptrdiff_t off = (ptrdiff_t)((p - lo) & in) * bw + c;                             \
            memcpy(&vb, &v, sizeof(T));                                                      \
            vb &= (U)in;                                                                     \
            memcpy(&v, &vb, sizeof(T));                                                      \
            base[off] += v;                                                                  \
            hits -= in;                                                                      \
        }                                                                                    \
        return hits;                                                                         \
    }

FP_SCATTER_ROWS(float, uint32_t)
FP_SCATTER_ROWS(double, uint64_t)

/* dst[c * dstride + r] = src[r * sstride + c] for r < rows, c < cols: channels-last results
 * stored into a planar output (the default output of a channels-last input), 4x4 blocks at
 * a time when SSE2 is there (a quarter of the stores of an element-wise copy). */
static inline void fp_transpose_float(float *dst, ptrdiff_t dstride, const float *src,
                                      ptrdiff_t sstride, ptrdiff_t rows, ptrdiff_t cols) {
    ptrdiff_t r = 0, c;
#if FP_VECTOR
    for (; r + 4 <= rows; r += 4) {
        for (c = 0; c + 4 <= cols; c += 4) {
            __m128 a = _mm_loadu_ps(src + r * sstride + c);
            __m128 b = _mm_loadu_ps(src + (r + 1) * sstride + c);
            __m128 e = _mm_loadu_ps(src + (r + 2) * sstride + c);
            __m128 f = _mm_loadu_ps(src + (r + 3) * sstride + c);
            _MM_TRANSPOSE4_PS(a, b, e, f);
            _mm_storeu_ps(dst + c * dstride + r, a);
            _mm_storeu_ps(dst + (c + 1) * dstride + r, b);
            _mm_storeu_ps(dst + (c + 2) * dstride + r, e);
            _mm_storeu_ps(dst + (c + 3) * dstride + r, f);
        }
        for (; c < cols; c++) {
            dst[c * dstride + r] = src[r * sstride + c];
            dst[c * dstride + r + 1] = src[(r + 1) * sstride + c];
            dst[c * dstride + r + 2] = src[(r + 2) * sstride + c];
            dst[c * dstride + r + 3] = src[(r + 3) * sstride + c];
        }
    }
#endif
    for (; r < rows; r++)
        for (c = 0; c < cols; c++) dst[c * dstride + r] = src[r * sstride + c];
}

static inline void fp_transpose_double(double *dst, ptrdiff_t dstride, const double *src,
                                       ptrdiff_t sstride, ptrdiff_t rows, ptrdiff_t cols) {
    ptrdiff_t r = 0, c;
#if FP_VECTOR
    for (; r + 2 <= rows; r += 2) {
        for (c = 0; c + 2 <= cols; c += 2) {
            __m128d a = _mm_loadu_pd(src + r * sstride + c);
            __m128d b = _mm_loadu_pd(src + (r + 1) * sstride + c);
            _mm_storeu_pd(dst + c * dstride + r, _mm_unpacklo_pd(a, b));
            _mm_storeu_pd(dst + (c + 1) * dstride + r, _mm_unpackhi_pd(a, b));
        }
        for (; c < cols; c++) {
            dst[c * dstride + r] = src[r * sstride + c];
            dst[c * dstride + r + 1] = src[(r + 1) * sstride + c];
        }
    }
#endif
    for (; r < rows; r++)
        for (c = 0; c < cols; c++) dst[c * dstride + r] = src[r * sstride + c];
}

static inline void fp_transpose_i64(int64_t *dst, ptrdiff_t dstride, const int64_t *src,
                                    ptrdiff_t sstride, ptrdiff_t rows, ptrdiff_t cols) {
    ptrdiff_t r = 0, c;
#if FP_VECTOR
    for (; r + 2 <= rows; r += 2) {
        for (c = 0; c + 2 <= cols; c += 2) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + r * sstride + c));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + (r + 1) * sstride + c));
            _mm_storeu_si128((__m128i *)(dst + c * dstride + r), _mm_unpacklo_epi64(a, b));
            _mm_storeu_si128((__m128i *)(dst + (c + 1) * dstride + r), _mm_unpackhi_epi64(a, b));
        }
        for (; c < cols; c++) {
            dst[c * dstride + r] = src[r * sstride + c];
            dst[c * dstride + r + 1] = src[(r + 1) * sstride + c];
        }
    }
#endif
    for (; r < rows; r++)
        for (c = 0; c < cols; c++) dst[c * dstride + r] = src[r * sstride + c];
}

/* A hint to fetch the cache line at byte offset `ahead` from p for reading. Computed as an
 * integer, so an address past the array is no pointer arithmetic out of bounds; a prefetch
 * never faults. */
static inline void fp_prefetch(const void *p, ptrdiff_t ahead) {
    const char *q = (const char *)((uintptr_t)p + (uintptr_t)ahead);
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(q, 0, 3);
#elif defined(_MSC_VER) && FP_VECTOR
    _mm_prefetch(q, _MM_HINT_T0);
#else
    (void)q;
#endif
}

/* dst[i] += src[i]: restrict spares the short loops of channels-last kernels (32 channels:
 * four AVX2 adds) the compiler's run-time overlap check and its scalar fallback. */
#if defined(_MSC_VER)
#define FP_RESTRICT __restrict
#else
#define FP_RESTRICT __restrict__
#endif
static inline void fp_add_float(float *FP_RESTRICT dst, const float *FP_RESTRICT src,
                                ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i < n; i++) dst[i] += src[i];
}
static inline void fp_add_double(double *FP_RESTRICT dst, const double *FP_RESTRICT src,
                                 ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i < n; i++) dst[i] += src[i];
}

/* Lowest / highest set bit of a non-zero lane mask (at most 8 lanes). */
static inline int fp_first_bit(int mask) {
    int i = 0;
    while (!(mask & 1)) {
        mask >>= 1;
        i++;
    }
    return i;
}
static inline int fp_last_bit(int mask) {
    int i = -1;
    while (mask) {
        mask >>= 1;
        i++;
    }
    return i;
}

/* Scalar scan. Tiny windows (output larger than input: 1 to 4 elements) take a branch-free
 * select, as a mispredicted branch per element costs more than the whole scan; longer ones
 * branch, as the replace branch is then rarely taken and well predicted. */
#define FP_SCALAR_ARGMAX(T, U)                                                               \
    static inline void fp_argmax_scalar_##T(const T *p, ptrdiff_t kd, ptrdiff_t kh,          \
                                            ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh,        \
                                            ptrdiff_t *run, ptrdiff_t *col) {                 \
        T m = -INFINITY;                                                                     \
        ptrdiff_t best_r = 0, best_c = 0, dd, hh, w;                                         \
        if (kd * kh * kw <= 8) {                                                             \
            ptrdiff_t r = 0;                                                                 \
            for (dd = 0; dd < kd; dd++)                                                      \
                for (hh = 0; hh < kh; hh++, r++) {                                           \
                    const T *q = p + dd * sd + hh * sh;                                      \
                    for (w = 0; w < kw; w++) {                                               \
                        T v = q[w];                                                          \
                        U vb, mb;                                                            \
                        ptrdiff_t take = -(ptrdiff_t)((v > m) | (v != v));                   \
                        memcpy(&vb, &v, sizeof(T));                                          \
                        memcpy(&mb, &m, sizeof(T));                                          \
                        mb = (mb & ~(U)take) | (vb & (U)take);                               \
                        memcpy(&m, &mb, sizeof(T));                                          \
                        best_r = (best_r & ~take) | (r & take);                              \
                        best_c = (best_c & ~take) | (w & take);                              \
                    }                                                                        \
                }                                                                            \
        } else {                                                                             \
            for (dd = 0; dd < kd; dd++)                                                      \
                for (hh = 0; hh < kh; hh++) {                                                \
                    const T *q = p + dd * sd + hh * sh;                                      \
                    for (w = 0; w < kw; w++) {                                               \
                        T v = q[w];                                                          \
                        if (v > m || v != v) {                                               \
                            m = v;                                                           \
                            best_r = dd * kh + hh;                                           \
                            best_c = w;                                                      \
                        }                                                                    \
                    }                                                                        \
                }                                                                            \
        }                                                                                    \
        *run = best_r;                                                                       \
        *col = best_c;                                                                       \
    }

FP_SCALAR_ARGMAX(float, uint32_t)
FP_SCALAR_ARGMAX(double, uint64_t)

#if FP_VECTOR

/* One vocabulary over SSE2 and AVX2: fp_V<T> vectors of FP_L<T> lanes. */
#if defined(__AVX2__)
typedef __m256 fp_vf;
typedef __m256d fp_vd;
#define FP_LF 8
#define FP_LD 4
#define fp_loadu_f _mm256_loadu_ps
#define fp_loadu_d _mm256_loadu_pd
#define fp_storeu_f _mm256_storeu_ps
#define fp_storeu_d _mm256_storeu_pd
#define fp_set1_f _mm256_set1_ps
#define fp_set1_d _mm256_set1_pd
#define fp_zero_f _mm256_setzero_ps
#define fp_zero_d _mm256_setzero_pd
#define fp_max_f _mm256_max_ps
#define fp_max_d _mm256_max_pd
#define fp_or_f _mm256_or_ps
#define fp_or_d _mm256_or_pd
#define fp_unord_f(a) _mm256_cmp_ps((a), (a), _CMP_UNORD_Q)
#define fp_unord_d(a) _mm256_cmp_pd((a), (a), _CMP_UNORD_Q)
#define fp_eq_f(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define fp_eq_d(a, b) _mm256_cmp_pd((a), (b), _CMP_EQ_OQ)
#define fp_mask_f _mm256_movemask_ps
#define fp_mask_d _mm256_movemask_pd
#else
typedef __m128 fp_vf;
typedef __m128d fp_vd;
#define FP_LF 4
#define FP_LD 2
#define fp_loadu_f _mm_loadu_ps
#define fp_loadu_d _mm_loadu_pd
#define fp_storeu_f _mm_storeu_ps
#define fp_storeu_d _mm_storeu_pd
#define fp_set1_f _mm_set1_ps
#define fp_set1_d _mm_set1_pd
#define fp_zero_f _mm_setzero_ps
#define fp_zero_d _mm_setzero_pd
#define fp_max_f _mm_max_ps
#define fp_max_d _mm_max_pd
#define fp_or_f _mm_or_ps
#define fp_or_d _mm_or_pd
#define fp_unord_f(a) _mm_cmpunord_ps((a), (a))
#define fp_unord_d(a) _mm_cmpunord_pd((a), (a))
#define fp_eq_f(a, b) _mm_cmpeq_ps((a), (b))
#define fp_eq_d(a, b) _mm_cmpeq_pd((a), (b))
#define fp_mask_f _mm_movemask_ps
#define fp_mask_d _mm_movemask_pd
#endif

/* T: scalar type, X: f or d (selects the vocabulary above), L: lanes. */
#define FP_VECTOR_ARGMAX(T, X, L)                                                            \
    static inline void fp_argmax_##T(const T *p, ptrdiff_t kd, ptrdiff_t kh, ptrdiff_t kw,   \
                                     ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t *run,             \
                                     ptrdiff_t *col) {                                       \
        ptrdiff_t dd, hh, i;                                                                 \
        fp_v##X m0, m1, bad0, bad1, mv;                                                      \
        T lanes[L], m;                                                                       \
        int mask, k;                                                                         \
        if (kw < L) {                                                                        \
            fp_argmax_scalar_##T(p, kd, kh, kw, sd, sh, run, col);                           \
            return;                                                                          \
        }                                                                                    \
        /* pass 1: maximum (a NaN is ignored: max returns its 2nd operand) and a NaN flag */ \
        m0 = m1 = fp_set1_##X(-INFINITY);                                                    \
        bad0 = bad1 = fp_zero_##X();                                                         \
        for (dd = 0; dd < kd; dd++)                                                          \
            for (hh = 0; hh < kh; hh++) {                                                    \
                const T *q = p + dd * sd + hh * sh;                                          \
                for (i = 0; i + 2 * L <= kw; i += 2 * L) {                                   \
                    fp_v##X a = fp_loadu_##X(q + i), b = fp_loadu_##X(q + i + L);            \
                    m0 = fp_max_##X(a, m0);                                                  \
                    m1 = fp_max_##X(b, m1);                                                  \
                    bad0 = fp_or_##X(bad0, fp_unord_##X(a));                                 \
                    bad1 = fp_or_##X(bad1, fp_unord_##X(b));                                 \
                }                                                                            \
                for (; i < kw; i += L) {                                                     \
                    fp_v##X a = fp_loadu_##X(q + (i + L <= kw ? i : kw - L));                \
                    m0 = fp_max_##X(a, m0);                                                  \
                    bad0 = fp_or_##X(bad0, fp_unord_##X(a));                                 \
                }                                                                            \
            }                                                                                \
        if (fp_mask_##X(fp_or_##X(bad0, bad1))) {                                            \
            /* pass 2 with a NaN: the last NaN, scanning backwards */                        \
            for (dd = kd - 1; dd >= 0; dd--)                                                 \
                for (hh = kh - 1; hh >= 0; hh--) {                                           \
                    const T *q = p + dd * sd + hh * sh;                                      \
                    for (i = kw; i > 0; i -= L) {                                            \
                        ptrdiff_t s = i >= L ? i - L : 0;                                    \
                        mask = fp_mask_##X(fp_unord_##X(fp_loadu_##X(q + s)));               \
                        if (mask) {                                                          \
                            *run = dd * kh + hh;                                             \
                            *col = s + fp_last_bit(mask);                                    \
                            return;                                                          \
                        }                                                                    \
                    }                                                                        \
                }                                                                            \
        }                                                                                    \
        fp_storeu_##X(lanes, fp_max_##X(m0, m1));                                            \
        m = lanes[0];                                                                        \
        for (k = 1; k < L; k++)                                                              \
            if (lanes[k] > m) m = lanes[k];                                                  \
        /* pass 2 without NaN: the first element equal to the maximum (one exists) */        \
        mv = fp_set1_##X(m);                                                                 \
        for (dd = 0; dd < kd; dd++)                                                          \
            for (hh = 0; hh < kh; hh++) {                                                    \
                const T *q = p + dd * sd + hh * sh;                                          \
                for (i = 0; i < kw; i += L) {                                                \
                    ptrdiff_t s = i + L <= kw ? i : kw - L;                                  \
                    mask = fp_mask_##X(fp_eq_##X(fp_loadu_##X(q + s), mv));                  \
                    if (mask) {                                                              \
                        *run = dd * kh + hh;                                                 \
                        *col = s + fp_first_bit(mask);                                       \
                        return;                                                              \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        *run = 0; /* unreachable: the maximum is one of the elements */                      \
        *col = 0;                                                                            \
    }

FP_VECTOR_ARGMAX(float, f, FP_LF)
FP_VECTOR_ARGMAX(double, d, FP_LD)

#else

static inline void fp_argmax_float(const float *p, ptrdiff_t kd, ptrdiff_t kh, ptrdiff_t kw,
                                   ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t *run, ptrdiff_t *col) {
    fp_argmax_scalar_float(p, kd, kh, kw, sd, sh, run, col);
}
static inline void fp_argmax_double(const double *p, ptrdiff_t kd, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t *run, ptrdiff_t *col) {
    fp_argmax_scalar_double(p, kd, kh, kw, sd, sh, run, col);
}

#endif

#endif
