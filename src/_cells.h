/* Channels-last cell kernels for src/_kernels.pxi: one output cell (forward) or one run of
 * input elements (average backward) over a vector of channels, with the channels of a block
 * held in registers for the whole window.
 *
 * Channel c of window position (d, h, w) sits at base[d*sd + h*sh + w*sw + c]: channel
 * stride 1 (channels-last data, or a block of planes transposed into an L1 buffer). A block
 * of B channels (32 floats or 16 doubles: four AVX2 registers) is loaded, combined and
 * stored once per cell, where an update of an accumulator in memory per window position
 * would be a chain through store forwarding. Plain C written so that GCC and Clang vectorise
 * it at -O3 (no intrinsics, no -ffast-math): the same additions and comparisons in the same
 * order as the scalar definition, so the same bits.
 */
#ifndef FASTPOOL_CELLS_H
#define FASTPOOL_CELLS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h> /* memcpy */

#include "_simd.h" /* FP_RESTRICT */

#if defined(__GNUC__) || defined(__clang__)
#define FP_INLINE static inline __attribute__((always_inline))
/* GCC/Clang vector extensions: 32-byte vectors (one AVX2 register, two SSE2 ones) that may
 * sit at any element-aligned address. Arrays of scalars updated in a loop are not reliably
 * kept in registers (GCC zeroes them with `rep stos` and spills them); named vectors are. */
#define FP_VEXT 1
typedef float fp_v_float __attribute__((vector_size(32), aligned(4), may_alias));
typedef double fp_v_double __attribute__((vector_size(32), aligned(8), may_alias));
typedef int32_t fp_k_float __attribute__((vector_size(32), aligned(4), may_alias));
typedef int64_t fp_k_double __attribute__((vector_size(32), aligned(8), may_alias));
#else
#define FP_INLINE static __forceinline
#define FP_VEXT 0
#endif

/* How a window sum becomes a mean, each way giving the correctly rounded quotient sum/count
 * (so every mode gives the bits of a division):
 *   FP_DIV_POW2  -- count a power of two: multiply by 1/count in the data type (exact);
 *   FP_DIV_RCP   -- float data, count < 2**24: multiply in double, round once (see the
 *                   _EXACT_RCP note in _kernels.pxi);
 *   FP_DIV_PLAIN -- divide. */
enum { FP_DIV_POW2 = 0, FP_DIV_RCP = 1, FP_DIV_PLAIN = 2 };

FP_INLINE int fp_div_mode(int64_t count, int is_float) {
    if ((count & (count - 1)) == 0) return FP_DIV_POW2;
    if (is_float && count < (1 << 24)) return FP_DIV_RCP;
    return FP_DIV_PLAIN;
}

/* ----------------------------------------------------------------- average of one window */

/* Full blocks: four vectors of sums, scaled in registers when count is a power of two. */
#if FP_VEXT
#define FP_AVG_VEC(T)                                                                         \
    FP_INLINE void fp_avg_vec_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,          \
                                  ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw,     \
                                  int mode, T rcp) {                                          \
        fp_v_##T a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                      \
        fp_v_##T *o = (fp_v_##T *)dst;                                                        \
        ptrdiff_t d, h, w;                                                                    \
        for (d = 0; d < kd; d++)                                                              \
            for (h = 0; h < kh; h++)                                                          \
                for (w = 0; w < kw; w++) {                                                    \
                    const fp_v_##T *x = (const fp_v_##T *)(base + d * sd + h * sh + w * sw);  \
                    a0 += x[0];                                                               \
                    a1 += x[1];                                                               \
                    a2 += x[2];                                                               \
                    a3 += x[3];                                                               \
                }                                                                             \
        if (mode == FP_DIV_POW2) {                                                            \
            a0 *= rcp;                                                                        \
            a1 *= rcp;                                                                        \
            a2 *= rcp;                                                                        \
            a3 *= rcp;                                                                        \
        }                                                                                     \
        o[0] = a0;                                                                            \
        o[1] = a1;                                                                            \
        o[2] = a2;                                                                            \
        o[3] = a3;                                                                            \
    }
#endif

/* Any block of m <= 32 channels, scalar loops (partial blocks; compilers without vector
 * extensions). Same additions in the same order as the vector code. */
#define FP_AVG_BLOCK(T)                                                                       \
    FP_INLINE void fp_avg_block_##T(T *FP_RESTRICT dst, const T *FP_RESTRICT base,            \
                                    ptrdiff_t kd, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sd,   \
                                    ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t m, int mode,        \
                                    T rcp) {                                                  \
        T a[32];                                                                              \
        ptrdiff_t d, h, w, j;                                                                 \
        for (j = 0; j < m; j++) a[j] = 0;                                                     \
        for (d = 0; d < kd; d++)                                                              \
            for (h = 0; h < kh; h++)                                                          \
                for (w = 0; w < kw; w++) {                                                    \
                    const T *x = base + d * sd + h * sh + w * sw;                             \
                    for (j = 0; j < m; j++) a[j] += x[j];                                     \
                }                                                                             \
        if (mode == FP_DIV_POW2)                                                              \
            for (j = 0; j < m; j++) dst[j] = a[j] * rcp;                                      \
        else                                                                                  \
            for (j = 0; j < m; j++) dst[j] = a[j];                                            \
    }                                                                                         \
    /* The window's channel blocks: FP_DIV_POW2 scales in registers, the others leave the     \
     * plain sums. */                                                                         \
    static inline void fp_cell_blocks_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,  \
                                          ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh,           \
                                          ptrdiff_t sw, ptrdiff_t nc, int mode, T rcp) {      \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0;                                                                     \
        for (; c0 + B <= nc; c0 += B)                                                         \
            FP_AVG_FULL(T)(dst + c0, base + c0, kd, kh, kw, sd, sh, sw, FP_AVG_M(B) mode, rcp); \
        if (c0 < nc)                                                                          \
            fp_avg_block_##T(dst + c0, base + c0, kd, kh, kw, sd, sh, sw, nc - c0, mode, rcp); \
    }                                                                                         \
    /* dst[c] = mean over the kd*kh*kw window positions of base[... + c], c < nc. */          \
    static inline void fp_avg_cell_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,     \
                                       ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw, \
                                       ptrdiff_t nc) {                                        \
        int64_t count = (int64_t)kd * kh * kw;                                                \
        int mode = fp_div_mode(count, sizeof(T) == sizeof(float));                            \
        T rcp = (T)1 / (T)count, cnt = (T)count;                                              \
        double drcp = 1.0 / (double)count;                                                    \
        ptrdiff_t j;                                                                          \
        fp_cell_blocks_##T(dst, base, kd, kh, kw, sd, sh, sw, nc, mode, rcp);                 \
        if (mode == FP_DIV_RCP)                                                               \
            for (j = 0; j < nc; j++) dst[j] = (T)((double)dst[j] * drcp);                     \
        else if (mode == FP_DIV_PLAIN)                                                        \
            for (j = 0; j < nc; j++) dst[j] = dst[j] / cnt;                                   \
    }                                                                                         \
    /* dst[c] = sum over the window positions of base[... + c], c < nc: fp_avg_cell without   \
     * the division (pieces of long float windows, which _kernels.pxi adds up in double). */  \
    static inline void fp_sum_cell_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,     \
                                       ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw, \
                                       ptrdiff_t nc) {                                        \
        fp_cell_blocks_##T(dst, base, kd, kh, kw, sd, sh, sw, nc, FP_DIV_PLAIN, (T)1);        \
    }

#if FP_VEXT
FP_AVG_VEC(float)
FP_AVG_VEC(double)
#define FP_AVG_FULL(T) fp_avg_vec_##T
#define FP_AVG_M(B)
#else
#define FP_AVG_FULL(T) fp_avg_block_##T
#define FP_AVG_M(B) B,
#endif
FP_AVG_BLOCK(float)
FP_AVG_BLOCK(double)

/* dst[c] = the sum over the window's kd x kh rows of base[d*sd + h*sh + c], c < n, added in
 * row order from zero: the column sums of a planar window, rows of n contiguous elements.
 * The sums stay in registers across the rows, eight vectors (256 bytes of a row) at a time:
 * an accumulator row in memory costs a load and a store per element and row, and narrower
 * column blocks read each row in pieces that the hardware prefetcher follows less well. */
#if FP_VEXT
#define FP_COLSUM_WIDE(T)                                                                     \
    FP_INLINE void fp_colsum_wide_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,      \
                                      ptrdiff_t sd, ptrdiff_t sh, int from_dst) {             \
        fp_v_##T a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0},        \
                 a7 = {0};                                                                    \
        fp_v_##T *o = (fp_v_##T *)dst;                                                        \
        ptrdiff_t d, h;                                                                       \
        if (from_dst) {                                                                       \
            a0 = o[0];                                                                        \
            a1 = o[1];                                                                        \
            a2 = o[2];                                                                        \
            a3 = o[3];                                                                        \
            a4 = o[4];                                                                        \
            a5 = o[5];                                                                        \
            a6 = o[6];                                                                        \
            a7 = o[7];                                                                        \
        }                                                                                     \
        for (d = 0; d < kd; d++)                                                              \
            for (h = 0; h < kh; h++) {                                                        \
                const fp_v_##T *x = (const fp_v_##T *)(base + d * sd + h * sh);               \
                a0 += x[0];                                                                   \
                a1 += x[1];                                                                   \
                a2 += x[2];                                                                   \
                a3 += x[3];                                                                   \
                a4 += x[4];                                                                   \
                a5 += x[5];                                                                   \
                a6 += x[6];                                                                   \
                a7 += x[7];                                                                   \
            }                                                                                 \
        o[0] = a0;                                                                            \
        o[1] = a1;                                                                            \
        o[2] = a2;                                                                            \
        o[3] = a3;                                                                            \
        o[4] = a4;                                                                            \
        o[5] = a5;                                                                            \
        o[6] = a6;                                                                            \
        o[7] = a7;                                                                            \
    }
FP_COLSUM_WIDE(float)
FP_COLSUM_WIDE(double)
#define FP_COLSUM_WIDE_BLOCKS(T)                                                              \
    for (; c0 + 2 * B <= n; c0 += 2 * B) fp_colsum_wide_##T(dst + c0, base + c0, kd, kh, sd, sh, 0);
#else
#define FP_COLSUM_WIDE_BLOCKS(T)
#endif
#define FP_COLSUM(T)                                                                          \
    static inline void fp_colsum_##T(T *dst, const T *base, ptrdiff_t kd, ptrdiff_t kh,       \
                                     ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t n) {               \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0;                                                                     \
        FP_COLSUM_WIDE_BLOCKS(T)                                                              \
        for (; c0 + B <= n; c0 += B)                                                          \
            FP_AVG_FULL(T)(dst + c0, base + c0, kd, kh, 1, sd, sh, 0, FP_AVG_M(B)             \
                           FP_DIV_PLAIN, (T)0);                                               \
        if (c0 < n)                                                                           \
            fp_avg_block_##T(dst + c0, base + c0, kd, kh, 1, sd, sh, 0, n - c0,              \
                             FP_DIV_PLAIN, (T)0);                                             \
    }
FP_COLSUM(float)
FP_COLSUM(double)

/* dst[c] += base[k*sk + c] for k = 0 .. nk-1, in order, c < n: a run of window positions
 * added to an accumulator row in memory, which is loaded and stored once per `chunk`
 * positions instead of once per position (the same additions in the same order). */
#define FP_ADD_RUN(T)                                                                         \
    static inline void fp_add_run_##T(T *FP_RESTRICT dst, const T *FP_RESTRICT base,          \
                                      ptrdiff_t nk, ptrdiff_t sk, ptrdiff_t n,                \
                                      ptrdiff_t chunk) {                                      \
        ptrdiff_t c0, c, k, k0, kn;                                                           \
        for (k0 = 0; k0 < nk; k0 += chunk) {                                                  \
            const T *b = base + k0 * sk;                                                      \
            kn = nk - k0 < chunk ? nk - k0 : chunk;                                           \
            c0 = 0;                                                                           \
            FP_ADD_RUN_WIDE(T)                                                                \
            for (k = 0; k < kn; k++) /* the rest, position by position (vectorised) */       \
                for (c = c0; c < n; c++) dst[c] += b[k * sk + c];                             \
        }                                                                                     \
    }
#if FP_VEXT
#define FP_ADD_RUN_WIDE(T)                                                                    \
    for (; c0 + (ptrdiff_t)(64 * sizeof(float) / sizeof(T)) <= n;                            \
         c0 += (ptrdiff_t)(64 * sizeof(float) / sizeof(T)))                                    \
        fp_colsum_wide_##T(dst + c0, b + c0, 1, kn, 0, sk, 1);
#else
#define FP_ADD_RUN_WIDE(T)
#endif
FP_ADD_RUN(float)
FP_ADD_RUN(double)

/* ------------------------------------------------------- maximum (and position) of a window */

/* SPEC's scan: start from the first element, replace when v > max or v is NaN. Positions are
 * kept in an integer as wide as the data (int32 for float: planes under 2**31 elements, which
 * the caller guarantees; int64 for double), so that the selects vectorise, and are widened
 * to int64 on the store. Position of (d, h, w) = pos0 + d*hw + h*wd + w. */
#if FP_VEXT
/* One vector step of the scan: where v wins, take v and pos. Selects as bit masks (which
 * vectorise the same with every compiler and ISA). */
#define FP_MAX_STEP(T, a, k, v, pos)                                                          \
    do {                                                                                      \
        fp_k_##T take_ = (fp_k_##T)(((v) > (a)) | ((v) != (v)));                              \
        (a) = (fp_v_##T)((((fp_k_##T)(v)) & take_) | (((fp_k_##T)(a)) & ~take_));             \
        (k) = (take_ & (pos)) | ((k) & ~take_);                                               \
    } while (0)

#define FP_MAX_VEC(T, K)                                                                      \
    FP_INLINE void fp_max_vec_##T(T *dst, int64_t *kdst, const T *base, ptrdiff_t kd,         \
                                  ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh,     \
                                  ptrdiff_t sw, int64_t pos0, int64_t hw, int64_t wd) {       \
        const fp_v_##T *x = (const fp_v_##T *)base;                                           \
        fp_v_##T a0 = x[0], a1 = x[1], a2 = x[2], a3 = x[3];                                  \
        fp_k_##T k0 = {0}, k1, k2, k3;                                                        \
        K kk[4 * sizeof(fp_k_##T) / sizeof(K)];                                               \
        ptrdiff_t d, h, w, j;                                                                 \
        k0 += (K)pos0;                                                                        \
        k1 = k2 = k3 = k0;                                                                    \
        for (d = 0; d < kd; d++)                                                              \
            for (h = 0; h < kh; h++)                                                          \
                for (w = (d == 0 && h == 0) ? 1 : 0; w < kw; w++) {                           \
                    K pos = (K)(pos0 + d * hw + h * wd + w);                                  \
                    x = (const fp_v_##T *)(base + d * sd + h * sh + w * sw);                  \
                    FP_MAX_STEP(T, a0, k0, x[0], pos);                                        \
                    FP_MAX_STEP(T, a1, k1, x[1], pos);                                        \
                    FP_MAX_STEP(T, a2, k2, x[2], pos);                                        \
                    FP_MAX_STEP(T, a3, k3, x[3], pos);                                        \
                }                                                                             \
        ((fp_v_##T *)dst)[0] = a0;                                                            \
        ((fp_v_##T *)dst)[1] = a1;                                                            \
        ((fp_v_##T *)dst)[2] = a2;                                                            \
        ((fp_v_##T *)dst)[3] = a3;                                                            \
        ((fp_k_##T *)kk)[0] = k0;                                                             \
        ((fp_k_##T *)kk)[1] = k1;                                                             \
        ((fp_k_##T *)kk)[2] = k2;                                                             \
        ((fp_k_##T *)kk)[3] = k3;                                                             \
        for (j = 0; j < (ptrdiff_t)(sizeof(kk) / sizeof(K)); j++) kdst[j] = (int64_t)kk[j];   \
    }
#endif

#define FP_MAX_BLOCK(T, K)                                                                    \
    FP_INLINE void fp_max_block_##T(T *FP_RESTRICT dst, int64_t *FP_RESTRICT kdst,            \
                                    const T *FP_RESTRICT base, ptrdiff_t kd, ptrdiff_t kh,    \
                                    ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw,   \
                                    ptrdiff_t m, int64_t pos0, int64_t hw, int64_t wd) {      \
        T a[32];                                                                              \
        K k[32];                                                                              \
        ptrdiff_t d, h, w, j;                                                                 \
        for (j = 0; j < m; j++) {                                                             \
            a[j] = base[j];                                                                   \
            k[j] = (K)pos0;                                                                   \
        }                                                                                     \
        for (d = 0; d < kd; d++)                                                              \
            for (h = 0; h < kh; h++)                                                          \
                for (w = (d == 0 && h == 0) ? 1 : 0; w < kw; w++) {                           \
                    const T *x = base + d * sd + h * sh + w * sw;                             \
                    K pos = (K)(pos0 + d * hw + h * wd + w);                                  \
                    for (j = 0; j < m; j++) {                                                 \
                        T v = x[j], o = a[j];                                                 \
                        K ko = k[j];                                                          \
                        int take = (v > o) | (v != v);                                        \
                        a[j] = take ? v : o;                                                  \
                        k[j] = take ? pos : ko;                                               \
                    }                                                                         \
                }                                                                             \
        for (j = 0; j < m; j++) {                                                             \
            dst[j] = a[j];                                                                    \
            kdst[j] = (int64_t)k[j];                                                          \
        }                                                                                     \
    }                                                                                         \
    /* dst[c], kdst[c] = max over the window of base[... + c] and its plane position. */      \
    static inline void fp_max_cell_##T(T *dst, int64_t *kdst, const T *base, ptrdiff_t kd,    \
                                       ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sd, ptrdiff_t sh, \
                                       ptrdiff_t sw, ptrdiff_t nc, int64_t pos0, int64_t hw,  \
                                       int64_t wd) {                                          \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0;                                                                     \
        for (; c0 + B <= nc; c0 += B)                                                         \
            FP_MAX_FULL(T)(dst + c0, kdst + c0, base + c0, kd, kh, kw, sd, sh, sw,            \
                           FP_AVG_M(B) pos0, hw, wd);                                         \
        if (c0 < nc)                                                                          \
            fp_max_block_##T(dst + c0, kdst + c0, base + c0, kd, kh, kw, sd, sh, sw, nc - c0, \
                             pos0, hw, wd);                                                   \
    }

#if FP_VEXT
FP_MAX_VEC(float, int32_t)
FP_MAX_VEC(double, int64_t)
#define FP_MAX_FULL(T) fp_max_vec_##T
#else
#define FP_MAX_FULL(T) fp_max_block_##T
#endif

FP_MAX_BLOCK(float, int32_t)
FP_MAX_BLOCK(double, int64_t)

/* ------------------------------------------------- average backward: one run of elements */

/* The weight of one output cell in the average backward: 1/count as a double (exact for a
 * power of two) and count itself. A table of them per output plane spares each use a
 * division. */
typedef struct {
    double rcp;
    int64_t count;
} fp_weight;


/* The common tails of the average-backward run kernels below: column ow's sums t folded
 * into v (the first column taken as it is), and v stored into every element of the run. */
#define FP_BWD_FOLD4                                                                          \
    if (ow == ow0) {                                                                          \
        v0 = t0;                                                                              \
        v1 = t1;                                                                              \
        v2 = t2;                                                                              \
        v3 = t3;                                                                              \
    } else {                                                                                  \
        v0 += t0;                                                                             \
        v1 += t1;                                                                             \
        v2 += t2;                                                                             \
        v3 += t3;                                                                             \
    }
#define FP_BWD_STORE4(T)                                                                      \
    for (r = 0; r < rows; r++)                                                                \
        for (q = 0; q < cols; q++) {                                                          \
            fp_v_##T *o = (fp_v_##T *)(dst + r * rs + q * qs);                                \
            o[0] = v0;                                                                        \
            o[1] = v1;                                                                        \
            o[2] = v2;                                                                        \
            o[3] = v3;                                                                        \
        }
#define FP_BWD_FOLD_M                                                                         \
    if (ow == ow0)                                                                            \
        for (j = 0; j < m; j++) v[j] = t[j];                                                  \
    else                                                                                      \
        for (j = 0; j < m; j++) v[j] += t[j];
#define FP_BWD_STORE_M(T)                                                                     \
    for (r = 0; r < rows; r++)                                                                \
        for (q = 0; q < cols; q++) {                                                          \
            T *o = dst + r * rs + q * qs;                                                     \
            for (j = 0; j < m; j++) o[j] = v[j];                                              \
        }

/* The gradient of the input elements that the output cells [od0, od1) x [oh0, oh1) x
 * [ow0, ow1) cover, written to every element of rows x cols (channel vectors at
 * dst + r*rs + q*qs). Cell (od, oh, ow) of grad_output is at g + od*sd + oh*sh + ow*sw and
 * weighs wt[od*wsd + oh*wsh + ow] (1 / its window size). The terms are added as the planar
 * definition adds them: for each ow, the sum over (od, oh) of the scaled gradients from
 * +0.0; then those sums over ow, the first one taken as it is. */
#if FP_VEXT
#define FP_AVG_BWD_VEC(T)                                                                     \
    FP_INLINE void fp_avg_bwd_vec_##T(                                                        \
        T *dst, ptrdiff_t rows, ptrdiff_t rs, ptrdiff_t cols, ptrdiff_t qs, const T *g,       \
        ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t oh0, \
        ptrdiff_t oh1, ptrdiff_t ow0, ptrdiff_t ow1, const fp_weight *wt, ptrdiff_t wsd,      \
        ptrdiff_t wsh) {                                                                      \
        fp_v_##T v0 = {0}, v1 = {0}, v2 = {0}, v3 = {0};                                      \
        T tmp[4 * sizeof(fp_v_##T) / sizeof(T)];                                              \
        ptrdiff_t od, oh, ow, j, r, q;                                                        \
        for (ow = ow0; ow < ow1; ow++) {                                                      \
            fp_v_##T t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};                                  \
            for (od = od0; od < od1; od++)                                                    \
                for (oh = oh0; oh < oh1; oh++) {                                              \
                    const T *xp = g + od * sd + oh * sh + ow * sw;                            \
                    const fp_v_##T *x = (const fp_v_##T *)xp;                                 \
                    const fp_weight *cw = wt + od * wsd + oh * wsh + ow;                      \
                    int64_t count = cw->count;                                                \
                    int mode = fp_div_mode(count, sizeof(T) == sizeof(float));                \
                    if (mode == FP_DIV_POW2) {                                                \
                        T rcp = (T)cw->rcp;                                                   \
                        t0 += x[0] * rcp;                                                     \
                        t1 += x[1] * rcp;                                                     \
                        t2 += x[2] * rcp;                                                     \
                        t3 += x[3] * rcp;                                                     \
                    } else {                                                                  \
                        if (mode == FP_DIV_RCP) {                                             \
                            double drcp = cw->rcp;                                            \
                            for (j = 0; j < (ptrdiff_t)(sizeof(tmp) / sizeof(T)); j++)        \
                                tmp[j] = (T)((double)xp[j] * drcp);                           \
                        } else {                                                              \
                            T cnt = (T)count;                                                 \
                            for (j = 0; j < (ptrdiff_t)(sizeof(tmp) / sizeof(T)); j++)        \
                                tmp[j] = xp[j] / cnt;                                         \
                        }                                                                     \
                        t0 += ((const fp_v_##T *)tmp)[0];                                     \
                        t1 += ((const fp_v_##T *)tmp)[1];                                     \
                        t2 += ((const fp_v_##T *)tmp)[2];                                     \
                        t3 += ((const fp_v_##T *)tmp)[3];                                     \
                    }                                                                         \
                }                                                                             \
            FP_BWD_FOLD4;                                                                     \
        }                                                                                     \
        FP_BWD_STORE4(T);                                                                     \
    }
FP_AVG_BWD_VEC(float)
FP_AVG_BWD_VEC(double)
#define FP_AVG_BWD_FULL(T) fp_avg_bwd_vec_##T
#define FP_AVG_BWD_M(B)
#else
#define FP_AVG_BWD_M(B) , B
#define FP_AVG_BWD_FULL(T) fp_avg_bwd_block_##T
#endif

#define FP_AVG_BWD_BLOCK(T)                                                                   \
    FP_INLINE void fp_avg_bwd_block_##T(                                                      \
        T *dst, ptrdiff_t rows, ptrdiff_t rs, ptrdiff_t cols, ptrdiff_t qs,                   \
        const T *FP_RESTRICT g, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t od0,      \
        ptrdiff_t od1, ptrdiff_t oh0, ptrdiff_t oh1, ptrdiff_t ow0, ptrdiff_t ow1,            \
        const fp_weight *wt, ptrdiff_t wsd, ptrdiff_t wsh, ptrdiff_t m) {                     \
        T v[32] = {0}, t[32];                                                                 \
        ptrdiff_t od, oh, ow, j, r, q;                                                        \
        for (ow = ow0; ow < ow1; ow++) {                                                      \
            for (j = 0; j < m; j++) t[j] = 0;                                                 \
            for (od = od0; od < od1; od++)                                                    \
                for (oh = oh0; oh < oh1; oh++) {                                              \
                    const T *x = g + od * sd + oh * sh + ow * sw;                             \
                    const fp_weight *cw = wt + od * wsd + oh * wsh + ow;                      \
                    int64_t count = cw->count;                                                \
                    int mode = fp_div_mode(count, sizeof(T) == sizeof(float));                \
                    if (mode == FP_DIV_POW2) {                                                \
                        T rcp = (T)cw->rcp;                                                   \
                        for (j = 0; j < m; j++) t[j] += x[j] * rcp;                           \
                    } else if (mode == FP_DIV_RCP) {                                          \
                        double drcp = cw->rcp;                                                \
                        for (j = 0; j < m; j++) t[j] += (T)((double)x[j] * drcp);             \
                    } else {                                                                  \
                        T cnt = (T)count;                                                     \
                        for (j = 0; j < m; j++) t[j] += x[j] / cnt;                           \
                    }                                                                         \
                }                                                                             \
            FP_BWD_FOLD_M;                                                                    \
        }                                                                                     \
        FP_BWD_STORE_M(T);                                                                    \
    }                                                                                         \
    static inline void fp_avg_bwd_run_##T(                                                    \
        T *dst, ptrdiff_t rows, ptrdiff_t rs, ptrdiff_t cols, ptrdiff_t qs, const T *g,       \
        ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t oh0, \
        ptrdiff_t oh1, ptrdiff_t ow0, ptrdiff_t ow1, const fp_weight *wt, ptrdiff_t wsd,      \
        ptrdiff_t wsh, ptrdiff_t nc) {                                                        \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0;                                                                     \
        for (; c0 + B <= nc; c0 += B)                                                         \
            FP_AVG_BWD_FULL(T)(dst + c0, rows, rs, cols, qs, g + c0, sd, sh, sw, od0, od1,    \
                               oh0, oh1, ow0, ow1, wt, wsd, wsh FP_AVG_BWD_M(B));             \
        if (c0 < nc)                                                                          \
            fp_avg_bwd_block_##T(dst + c0, rows, rs, cols, qs, g + c0, sd, sh, sw, od0, od1,  \
                                 oh0, oh1, ow0, ow1, wt, wsd, wsh, nc - c0);                  \
    }

FP_AVG_BWD_BLOCK(float)
FP_AVG_BWD_BLOCK(double)

/* The same sums on terms scaled beforehand (upsampling, where several runs of a row read a
 * cell): fp_scale_T writes a cell's terms as fp_avg_bwd_run computes them, and
 * fp_sum_bwd_run_T adds them in fp_avg_bwd_run's order, row k (0 <= k < nk, the covering
 * (od, oh) in output order) of column ow at s + k*sk + ow*sw. The same bits, without a
 * multiply and a weight lookup per cell and element. */
#define FP_SCALE(T)                                                                           \
    static inline void fp_scale_##T(T *FP_RESTRICT dst, const T *FP_RESTRICT x, ptrdiff_t n,  \
                                    const fp_weight *cw) {                                    \
        int mode = fp_div_mode(cw->count, sizeof(T) == sizeof(float));                        \
        ptrdiff_t j;                                                                          \
        if (mode == FP_DIV_POW2) {                                                            \
            T rcp = (T)cw->rcp;                                                               \
            for (j = 0; j < n; j++) dst[j] = x[j] * rcp;                                      \
        } else if (mode == FP_DIV_RCP) {                                                      \
            double drcp = cw->rcp;                                                            \
            for (j = 0; j < n; j++) dst[j] = (T)((double)x[j] * drcp);                        \
        } else {                                                                              \
            T cnt = (T)cw->count;                                                             \
            for (j = 0; j < n; j++) dst[j] = x[j] / cnt;                                      \
        }                                                                                     \
    }
FP_SCALE(float)
FP_SCALE(double)

#if FP_VEXT
#define FP_SUM_BWD_VEC(T)                                                                     \
    FP_INLINE void fp_sum_bwd_vec_##T(T *dst, ptrdiff_t rows, ptrdiff_t rs, ptrdiff_t cols,   \
                                      ptrdiff_t qs, const T *s, ptrdiff_t nk, ptrdiff_t sk,   \
                                      ptrdiff_t sw, ptrdiff_t ow0, ptrdiff_t ow1) {           \
        fp_v_##T v0 = {0}, v1 = {0}, v2 = {0}, v3 = {0};                                      \
        ptrdiff_t ow, k, r, q;                                                                \
        for (ow = ow0; ow < ow1; ow++) {                                                      \
            fp_v_##T t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};                                  \
            for (k = 0; k < nk; k++) {                                                        \
                const fp_v_##T *x = (const fp_v_##T *)(s + k * sk + ow * sw);                 \
                t0 += x[0];                                                                   \
                t1 += x[1];                                                                   \
                t2 += x[2];                                                                   \
                t3 += x[3];                                                                   \
            }                                                                                 \
            FP_BWD_FOLD4;                                                                     \
        }                                                                                     \
        FP_BWD_STORE4(T);                                                                     \
    }
FP_SUM_BWD_VEC(float)
FP_SUM_BWD_VEC(double)
#define FP_SUM_BWD_FULL(T) fp_sum_bwd_vec_##T
#define FP_SUM_BWD_M(B)
#else
#define FP_SUM_BWD_M(B) , B
#define FP_SUM_BWD_FULL(T) fp_sum_bwd_block_##T
#endif

#define FP_SUM_BWD_BLOCK(T)                                                                   \
    FP_INLINE void fp_sum_bwd_block_##T(T *dst, ptrdiff_t rows, ptrdiff_t rs, ptrdiff_t cols, \
                                        ptrdiff_t qs, const T *FP_RESTRICT s, ptrdiff_t nk,   \
                                        ptrdiff_t sk, ptrdiff_t sw, ptrdiff_t ow0,            \
                                        ptrdiff_t ow1, ptrdiff_t m) {                         \
        T v[32] = {0}, t[32];                                                                 \
        ptrdiff_t ow, k, j, r, q;                                                             \
        for (ow = ow0; ow < ow1; ow++) {                                                      \
            for (j = 0; j < m; j++) t[j] = 0;                                                 \
            for (k = 0; k < nk; k++) {                                                        \
                const T *x = s + k * sk + ow * sw;                                            \
                for (j = 0; j < m; j++) t[j] += x[j];                                         \
            }                                                                                 \
            FP_BWD_FOLD_M;                                                                    \
        }                                                                                     \
        FP_BWD_STORE_M(T);                                                                    \
    }                                                                                         \
    static inline void fp_sum_bwd_run_##T(T *dst, ptrdiff_t rows, ptrdiff_t rs,               \
                                          ptrdiff_t cols, ptrdiff_t qs, const T *s,           \
                                          ptrdiff_t nk, ptrdiff_t sk, ptrdiff_t sw,           \
                                          ptrdiff_t ow0, ptrdiff_t ow1, ptrdiff_t nc) {       \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0;                                                                     \
        for (; c0 + B <= nc; c0 += B)                                                         \
            FP_SUM_BWD_FULL(T)(dst + c0, rows, rs, cols, qs, s + c0, nk, sk, sw, ow0,         \
                               ow1 FP_SUM_BWD_M(B));                                          \
        if (c0 < nc)                                                                          \
            fp_sum_bwd_block_##T(dst + c0, rows, rs, cols, qs, s + c0, nk, sk, sw, ow0, ow1,  \
                                 nc - c0);                                                    \
    }

FP_SUM_BWD_BLOCK(float)
FP_SUM_BWD_BLOCK(double)

/* --------------------------------------------------- max backward: one element, by gather */

/* dst[c] (c < nc) = the sum, from +0.0 and in output order, of g[cell][c] over the covering
 * cells [od0, od1) x [oh0, oh1) x [ow0, ow1) whose index ix[cell][c] is pos: the scatter's
 * sum for this element (a cell that does not point here adds +0.0, which changes nothing:
 * these sums are never -0.0). Cell (od, oh, ow) sits at od*sd + oh*sh + ow*sw in g and at
 * od*id + oh*ih + ow*iw in ix, channel stride 1 in both. Returns the (cell, channel) pairs
 * that point here: the caller adds them up to learn whether every index was found. The
 * selects are integer masks (compilers turn ternaries back into branches). */
#define FP_MAX_BWD_ARGS(T)                                                                    \
    T *dst, const T *g, const int64_t *ix, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sw,          \
        ptrdiff_t id, ptrdiff_t ih, ptrdiff_t iw, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t oh0, \
        ptrdiff_t oh1, ptrdiff_t ow0, ptrdiff_t ow1, int64_t pos
#define FP_MAX_BWD_PASS(c0)                                                                   \
    dst + (c0), g + (c0), ix + (c0), sd, sh, sw, id, ih, iw, od0, od1, oh0, oh1, ow0, ow1, pos

#define FP_MAX_BWD_BLOCK(T, U)                                                                \
    FP_INLINE ptrdiff_t fp_max_bwd_block_##T(FP_MAX_BWD_ARGS(T), ptrdiff_t m) {               \
        T v[32];                                                                              \
        ptrdiff_t od, oh, ow, j, hits = 0;                                                    \
        for (j = 0; j < m; j++) v[j] = 0;                                                     \
        for (od = od0; od < od1; od++)                                                        \
            for (oh = oh0; oh < oh1; oh++)                                                    \
                for (ow = ow0; ow < ow1; ow++) {                                              \
                    const T *x = g + od * sd + oh * sh + ow * sw;                             \
                    const int64_t *k = ix + od * id + oh * ih + ow * iw;                      \
                    for (j = 0; j < m; j++) {                                                 \
                        U mask = (U)0 - (U)(k[j] == pos), bits;                               \
                        T t;                                                                  \
                        memcpy(&bits, x + j, sizeof(T));                                      \
                        bits &= mask;                                                         \
                        memcpy(&t, &bits, sizeof(T));                                         \
                        v[j] += t;                                                            \
                        hits += k[j] == pos;                                                  \
                    }                                                                         \
                }                                                                             \
        for (j = 0; j < m; j++) dst[j] = v[j];                                                \
        return hits;                                                                          \
    }
FP_MAX_BWD_BLOCK(float, uint32_t)
FP_MAX_BWD_BLOCK(double, uint64_t)

#if FP_VEXT && (defined(__clang__) || __GNUC__ >= 12)
/* Full blocks in registers: 32 float or 16 double channels, four vectors of sums and one of
 * hit counts (-1 per hit). FP_MASK_T(k, j, p): the lanes of vector j whose index is p; a
 * float lane's mask is the low half of its int64 comparison. */
#define FP_MASK_float(k, j, p)                                                                \
    __builtin_shufflevector((fp_k_float)(k[2 * (j)] == p), (fp_k_float)(k[2 * (j) + 1] == p), \
                            0, 2, 4, 6, 8, 10, 12, 14)
#define FP_MASK_double(k, j, p) (k[j] == p)

#define FP_MAX_BWD_VEC(T)                                                                     \
    FP_INLINE ptrdiff_t fp_max_bwd_vec_##T(FP_MAX_BWD_ARGS(T)) {                              \
        fp_v_##T v0 = {0}, v1 = {0}, v2 = {0}, v3 = {0};                                      \
        fp_k_##T n = {0};                                                                     \
        fp_k_double p = {pos, pos, pos, pos};                                                 \
        ptrdiff_t od, oh, ow, j, hits = 0;                                                    \
        for (od = od0; od < od1; od++)                                                        \
            for (oh = oh0; oh < oh1; oh++)                                                    \
                for (ow = ow0; ow < ow1; ow++) {                                              \
                    const fp_k_##T *x = (const fp_k_##T *)(g + od * sd + oh * sh + ow * sw);  \
                    const fp_k_double *k =                                                    \
                        (const fp_k_double *)(ix + od * id + oh * ih + ow * iw);              \
                    fp_k_##T m0 = FP_MASK_##T(k, 0, p), m1 = FP_MASK_##T(k, 1, p);            \
                    fp_k_##T m2 = FP_MASK_##T(k, 2, p), m3 = FP_MASK_##T(k, 3, p);            \
                    v0 += (fp_v_##T)(x[0] & m0);                                              \
                    v1 += (fp_v_##T)(x[1] & m1);                                              \
                    v2 += (fp_v_##T)(x[2] & m2);                                              \
                    v3 += (fp_v_##T)(x[3] & m3);                                              \
                    n += (m0 + m1) + (m2 + m3);                                               \
                }                                                                             \
        ((fp_v_##T *)dst)[0] = v0;                                                            \
        ((fp_v_##T *)dst)[1] = v1;                                                            \
        ((fp_v_##T *)dst)[2] = v2;                                                            \
        ((fp_v_##T *)dst)[3] = v3;                                                            \
        for (j = 0; j < (ptrdiff_t)(sizeof(n) / sizeof(n[0])); j++) hits -= n[j];             \
        return hits;                                                                          \
    }
FP_MAX_BWD_VEC(float)
FP_MAX_BWD_VEC(double)
#define FP_MAX_BWD_FULL(T, c0) fp_max_bwd_vec_##T(FP_MAX_BWD_PASS(c0))
#else
#define FP_MAX_BWD_FULL(T, c0) fp_max_bwd_block_##T(FP_MAX_BWD_PASS(c0), 32 * 4 / sizeof(T))
#endif

#define FP_MAX_BWD_GATHER(T)                                                                  \
    static inline ptrdiff_t fp_max_bwd_gather_##T(FP_MAX_BWD_ARGS(T), ptrdiff_t nc) {         \
        const ptrdiff_t B = 32 * sizeof(float) / sizeof(T);                                   \
        ptrdiff_t c0 = 0, hits = 0;                                                           \
        for (; c0 + B <= nc; c0 += B) hits += FP_MAX_BWD_FULL(T, c0);                         \
        if (c0 < nc) hits += fp_max_bwd_block_##T(FP_MAX_BWD_PASS(c0), nc - c0);              \
        return hits;                                                                          \
    }
FP_MAX_BWD_GATHER(float)
FP_MAX_BWD_GATHER(double)

#endif
