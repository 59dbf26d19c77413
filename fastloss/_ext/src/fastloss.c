/* fastloss C kernels: one skeleton per kernel shape, a hook per loss (kernels.inc),
 * instantiated here per dtype (float, double) and vector width.
 *
 * Compiled once and linked twice: into the Python extension (the "cython" backend) and
 * into libfastloss.so, the C API of include/fastloss.h (api.c).  Compiled with -O3 and
 * without -ffast-math: -inf and NaN are meaningful here.  Vectorisation comes from
 * `#pragma omp simd` (reductions included; -fopenmp-simd, no OpenMP runtime) and from exp
 * written as plain arithmetic, the same range reduction and polynomial as the Numba backend:
 * portable (no libmvec, so also musl and macOS) and the same numbers on both backends.
 * Rows run in parallel through fl_parallel_rows (threads.c).
 *
 * FL_PART picks what one compilation of this file emits, so that the build can compile the
 * float and the double kernels at once (fastloss_f32.c and fastloss_f64.c, on two cores):
 * 0 (the default) everything; 32 the float kernels, the 16-bit entry points and the
 * functions that take no dtype; 64 the double kernels.  Both parts include both dtypes; a
 * dtype the part does not emit is compiled FL_DROPPED, which the compiler removes unread
 * since nothing calls it.
 */
#include <math.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "rows.h"

#define BLOCK 1024        /* classes per block of the online softmax (as in numba_math) */
#define STACK_BLOCKS 512  /* block maxima kept on the stack: C up to 512k classes */

/* Clones for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, picked at load
   time by the CPU's features (an "arch=<cpu>" clone would need that exact CPU), so the installed
   library uses the machine's vector width and still runs on an older CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    !defined(FASTLOSS_NO_CLONES)
#define FL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FL_HAVE_WIDE 1
#else
#define FL_CLONES
#endif

#ifndef FL_PART
#define FL_PART 0
#endif
#define FL_EMIT_F32 (FL_PART != 64)
#define FL_EMIT_F64 (FL_PART != 32)
#define FL_DROPPED static __attribute__((unused))

/* Every row helper is inlined into the cloned chunk functions: a helper left out of line
   would be compiled once, for the baseline CPU, and the clones would call it. */
#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

#include "fl_math.h" /* exp, log, log1p, softplus: vectorisable, header-only */

/* ------------------------------------------------------------------ scalar helpers */

FL_INLINE int poisoned(double m, double s) {
    /* a NaN makes s NaN; +inf or only -inf make the max infinite */
    return !(s == s) || m == INFINITY || m == -INFINITY;
}

/* Fold a block (m_b, s_b = sum exp(x - m_b)) into the running (m, s = sum exp(x - m)). */
FL_INLINE void fold(double *m, double *s, double m_b, double s_b) {
    if (*m == -INFINITY) {
        *m = m_b;
        *s = s_b;
    } else if (m_b > *m) {
        *s = *s * exp(*m - m_b) + s_b;
        *m = m_b;
    } else {
        *s += s_b * exp(m_b - *m);
    }
}

/* k exp(m_b - m): what turns a block's stored exp(x - m_b) into k p s (k for the block that
   holds the max, 0 for a block of -inf). */
FL_INLINE double fl_block_factor(double m_b, double m, double k) {
    return m_b == m ? k : (m_b == -INFINITY ? 0.0 : k * exp(m_b - m));
}

/* ------------------------------------------------------------------ shared kernel types */

/* The hooks of each shape are chosen by a compile-time constant `kind`: the skeletons are
   always inlined into one chunk function per loss, where the switch on `kind` folds away. */
enum fl_linear_kind { FL_CE_INDEX, FL_CE_PROBS, FL_KL };                 /* linear in log p */
enum fl_fop_kind { FL_SOFTMAX_MSE_INDEX, FL_SOFTMAX_MSE_PROBS, FL_ENTROPY }; /* f(p) */
enum fl_elementwise_kind { FL_BCE, FL_MSE, FL_BCE_GRAD_HESS };            /* elementwise */

/* The binary gradient and Hessian of n scores run as rows of this many (the elementwise
   skeleton's rows, so that they vectorise and split over threads), plus one shorter row. */
#define FL_FLAT_ROW 4096

/* The per-call constants of the linear-in-log-p losses. */
typedef struct {
    const double *weight; /* c class weights, or NULL: ones */
    double w_total;       /* sum of the weights */
    double eps, eps_c;    /* label smoothing, and eps / c */
    int log_target;       /* KL: the target holds log-probabilities */
    double z_grad;        /* adds 2 z_grad lse to the coefficient of p */
} fl_linear_params;

/* A row of a linear-in-log-p loss: loss = sum_c a_c (-log p_c) + cnst with
   a_c = d_c + [c = y] a_y (a "sparse" class y and "dense" coefficients d_c = f u_c), so
   loss = a_y ((m - x_y) + log s) + f (sum_c u_c (m - x_c) + U log s) + cnst. */
typedef struct {
    int64_t y;       /* the sparse class, or -1 */
    double a_y, x_y; /* its coefficient and its logit */
    int dense;       /* whether some d_c may be nonzero */
    double f;        /* d_c = f u_c */
    double u;        /* U = sum_c u_c */
    double u_shift;  /* sum_c u_c (m - x_c) (see fl_shifted) */
    double cnst;
} fl_linear_stats;

/* sum_c u_c (m - x_c), m the row max, block by block with the running max M of the blocks so
   far: every term is >= 0, so logits like 1e30 do not cancel (sum u x - U m would).  A term
   with u_c = 0 is dropped (0 * inf = 0); u_c != 0 on x_c = -inf makes the sum +inf. */
typedef struct {
    double max, u, shift;
} fl_shifted;

/* A block's sums, u_b = sum u_c and shift_b = sum u_c (mb - x_c) with the block's max mb
   (from vectorised loops: kl_block, dense_block), moved to the running max: the sum so far
   grows by U (mb - M) when mb is a new max, the block's by u_b (M - mb) otherwise. */
FL_INLINE void fl_shifted_add_block(fl_shifted *acc, double mb, double u_b, double shift_b) {
    if (mb > acc->max) {
        if (acc->u != 0.0) acc->shift += acc->u * (mb - acc->max);
        acc->max = mb;
    }
    if (u_b != 0.0) acc->shift += mb == -INFINITY ? shift_b : shift_b + u_b * (acc->max - mb);
    acc->u += u_b;
}

/* Softmax MSE with class indices: the sums that leave the class y out, rest = sum_{c != y}
   e_c and rest_sq = sum_{c != y} e_c^2 with e_c = exp(x_c - max), block by block with the
   running max: fold moves rest as it moves s, and rest_sq as a sum of exp(2 (x_c - max))
   (2 max and 2 mb are exact).  Then 1 - p_y = rest / s and sum_{c != y} p_c^2 =
   rest_sq / s^2 come without cancellation (1 - p_y from p_y would lose every digit as p_y
   nears 1). */
typedef struct {
    int64_t y; /* the class */
    double max, rest, rest_sq;
} fl_rest;

FL_INLINE void fl_rest_add_block(fl_rest *acc, double mb, double r_b, double q_b) {
    double max_sq = 2.0 * acc->max;
    fold(&max_sq, &acc->rest_sq, 2.0 * mb, q_b);
    fold(&acc->max, &acc->rest, mb, r_b);
}

/* A thread's scratch, O(c): the block maxima (on the stack up to STACK_BLOCKS blocks) and
   up to two rows of doubles. */
typedef struct {
    double *block_max;
    double *z, *dz;
    double *heap;
    double stack[STACK_BLOCKS];
} fl_scratch;

static int fl_scratch_open(fl_scratch *s, int64_t c, int rows) {
    const int64_t n_blocks = (c + BLOCK - 1) / BLOCK;
    const int64_t heap_blocks = n_blocks > STACK_BLOCKS ? n_blocks : 0;
    s->block_max = s->stack;
    s->z = s->dz = s->heap = NULL;
    if (heap_blocks == 0 && rows == 0) return FASTLOSS_OK;
    double *h = (double *)malloc((size_t)(heap_blocks + rows * c) * sizeof(double));
    if (!h) return FASTLOSS_E_MEMORY;
    s->heap = h;
    if (heap_blocks) s->block_max = h, h += heap_blocks;
    if (rows >= 1) s->z = h, h += c;
    if (rows >= 2) s->dz = h;
    return FASTLOSS_OK;
}

static void fl_scratch_close(fl_scratch *s) { free(s->heap); }

/* ------------------------------------------------------------------ streaming stores
 *
 * A gradient written with ordinary stores is read from memory first (each cache line is
 * fetched before it is written), so a fused pass into a large `out` moves three times the
 * logits' bytes: the logits, the gradient's old contents, the gradient.  Streaming stores
 * write whole lines without reading them, as memcpy does for large copies.  Cross-entropy
 * with class indices and without label smoothing, softcap or temperature (linear_rows)
 * uses them in its 512-bit kernels when the gradient is large and is not the logits' own
 * storage (in place, the lines are already read): linear_row's exp goes into a scratch row
 * that stays in cache, and its last pass writes gradient = scratch * factor by
 * stream_scale_*_wide (same products, same bits): 3-15% faster at 2048 x 32768 and
 * 512 x 128256 on 2 threads (AMD Zen 5).  The 256-bit kernels do not stream: on an AMD
 * Zen 3 (AVX2, no AVX-512) the fused pass at 2048 x 32768 float32, 2 threads, took 49-56 ms
 * with 128-bit streaming stores and 33-34 ms without.  The other softmax
 * losses compute their gradient over the stored exp in more than one pass; streaming it
 * needs one more pass over the row, and that made them 6-16% slower, so they do not.
 * (16-bit gradients are streamed by their rounding pass, fl_half_store: on the Zen 3 that
 * measured the same as ordinary stores, within the noise.) */
#define FL_STREAM_BYTES (16 << 20) /* gradients from 16 MiB: well past the L2 */
#define FL_STREAM_C 1024           /* rows of at least this many classes */

#if defined(__x86_64__) && defined(__GNUC__)
#define FL_HAVE_STREAMS 1
#else
#define FL_HAVE_STREAMS 0 /* no streaming stores here: the scratch row would only cost */
#endif

static int fl_streams(int64_t n, int64_t c, size_t size, const void *x, const void *grad) {
    return FL_HAVE_STREAMS && grad != NULL && grad != x && c >= FL_STREAM_C
           && (double)n * (double)c * (double)size >= (double)FL_STREAM_BYTES;
}

#if FL_HAVE_STREAMS
/* Streaming stores are weakly ordered: fenced before a chunk returns to its thread's join. */
FL_INLINE void fl_stream_fence(void) { _mm_sfence(); }
#else
FL_INLINE void fl_stream_fence(void) {}
#endif

/* ------------------------------------------------------------------ the instantiations */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

/* Kernel argument structs, one per dtype (shared by the two vector widths).  TN(name): the
   type's name for T. */
#define T float
#define TN(name) CAT(name, f32)
#include "types.inc"
#undef T
#undef TN
#define T double
#define TN(name) CAT(name, f64)
#include "types.inc"
#undef T
#undef TN

/* 16-bit conversions (see "16-bit logits" below), used by the kernels' 16-bit tiles too. */

#define FL_HALF_FLOATS 32768

typedef union {
    float f;
    uint32_t u;
} fl_bits;

FL_INLINE float fl_from_bf16(uint16_t h) {
    fl_bits b = {.u = (uint32_t)h << 16};
    return b.f;
}

/* Round to nearest even; a NaN stays a (quiet) NaN, overflow gives +-inf. */
FL_INLINE uint16_t fl_to_bf16(float f) {
    fl_bits b = {.f = f};
    const uint32_t rounded = (b.u + 0x7FFFu + ((b.u >> 16) & 1u)) >> 16;
    const uint32_t nan = (b.u >> 16) | 0x40u;
    return (uint16_t)((b.u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

/* IEEE binary16 -> float, exact (subnormals, +-inf and NaN included), without F16C so that
   it builds everywhere; branch-free so that the loops vectorise. */
FL_INLINE float fl_from_f16(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu; /* exponent and mantissa */
    fl_bits normal = {.u = (em << 13) + ((127u - 15u) << 23)};
    fl_bits special = {.u = (em << 13) | 0x7F800000u}; /* inf, NaN (payload kept) */
    const float small = (float)(int32_t)em * 5.9604644775390625e-08f; /* em < 0x400: em 2^-24 */
    fl_bits out;
    out.f = em < 0x400u ? small : normal.f;
    out.u = em >= 0x7C00u ? special.u : out.u;
    out.u |= sign;
    return out.f;
}

/* float -> IEEE binary16, round to nearest even; overflow gives +-inf, NaN a quiet NaN. */
FL_INLINE uint16_t fl_to_f16(float f) {
    fl_bits b = {.f = f};
    const uint32_t sign = (b.u >> 16) & 0x8000u;
    const uint32_t a = b.u & 0x7FFFFFFFu;
    /* normal results: rebias and round the 13 dropped bits to nearest even */
    const uint32_t normal = (a + ((uint32_t)(15 - 127) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    /* subnormal results (|f| < 2^-14): adding 0.5 puts the value's units of 2^-24 in the low
       bits of the sum, rounded to nearest even by the float addition itself */
    fl_bits magic = {.u = 126u << 23}, abs_f = {.u = a};
    fl_bits sum = {.f = abs_f.f + magic.f};
    const uint32_t sub = sum.u - magic.u;
    uint32_t out = a < (113u << 23) ? sub : normal;
    out = a >= (143u << 23) ? 0x7C00u : out; /* >= 65536: inf (65520..65536 round up above) */
    out = a > 0x7F800000u ? 0x7E00u : out;
    return (uint16_t)(out | sign);
}

enum { FL_HALF_BF16 = 1, FL_HALF_F16 = 2 };

#define FL_HALF_LINE 32             /* 16-bit values in a cache line */
#define FL_HALF_PREFETCH (8 << 10)  /* bytes ahead, as prefetch_ahead's */

/* n values converted line by line, each line's load prefetched FL_HALF_PREFETCH bytes ahead
   (each thread's buffer-sized pieces start and stop the stream: with the hardware
   prefetcher alone, the loads waited on memory for about half of fl_half_chunk's time in
   the 16-bit cross-entropy at 2048 x 32768, by perf) */
FL_INLINE void fl_half_load(float *dst, const uint16_t *src, int64_t n, int format) {
    for (int64_t j0 = 0; j0 < n; j0 += FL_HALF_LINE) {
        const int64_t len = n - j0 < FL_HALF_LINE ? n - j0 : FL_HALF_LINE;
        __builtin_prefetch((const char *)(src + j0) + FL_HALF_PREFETCH, 0, 3);
        const uint16_t *s = src + j0;
        float *d = dst + j0;
        if (format == FL_HALF_BF16) {
#pragma omp simd
            for (int64_t j = 0; j < len; ++j) d[j] = fl_from_bf16(s[j]);
        } else {
#pragma omp simd
            for (int64_t j = 0; j < len; ++j) d[j] = fl_from_f16(s[j]);
        }
    }
}

FL_INLINE void fl_half_round(uint16_t *dst, const float *src, int64_t n, int format) {
    if (format == FL_HALF_BF16) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) dst[j] = fl_to_bf16(src[j]);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) dst[j] = fl_to_f16(src[j]);
    }
}

/* stream: with streaming stores from the first 16-byte boundary (see "streaming stores"
   above: the gradient's lines are not read from memory before they are written); the
   caller fences. */
FL_INLINE void fl_half_store(uint16_t *dst, const float *src, int64_t n, int format,
                             int stream) {
#if FL_HAVE_STREAMS
    if (stream) {
        int64_t j = 0;
        for (; j < n && ((uintptr_t)(dst + j) & 15) != 0; ++j)
            fl_half_round(dst + j, src + j, 1, format);
        for (; j + FL_HALF_LINE <= n; j += FL_HALF_LINE) {
            uint16_t line[FL_HALF_LINE] __attribute__((aligned(64)));
            fl_half_round(line, src + j, FL_HALF_LINE, format);
            for (int q = 0; q < FL_HALF_LINE; q += 8)
                _mm_stream_si128((__m128i *)(dst + j + q),
                                 _mm_load_si128((const __m128i *)(line + q)));
        }
        fl_half_round(dst + j, src + j, n - j, format);
        return;
    }
#endif
    (void)stream;
    fl_half_round(dst, src, n, format);
}

/* Wide rows (at least WIDE_CLASSES classes) on an AVX-512 CPU run a third variant with
   512-bit vectors: 1.4x faster there than 256-bit ones (the forward at 2048 x 32768: 17 vs
   24 ms) and 1.1-1.35x from 128 classes up (one thread, rows in L2: the fused cross-entropy
   and the gradient + Hessian at 781 x 512 and 400 x 1000).  The short-row path (rows of up
   to FL_SHORT_C classes, FL_SHORT_R at a time through a transposed tile, kernels.inc: the
   cross-entropy with class indices, its gradient + Hessian, softmax MSE, entropy, KL) takes
   it too: a float tile is then one 16-lane vector per class and its transposes are
   in-register 16 x 16 transposes (kernels.inc); the chunk functions' *_args pick it by the
   same predicate as the path
   (ce_takes_tile, gh_takes_tile, fop_takes_tile, kl_takes_tile).  Short rows that go one
   at a time (cross-entropy with options the tile does not take) stay on 256-bit vectors
   (2x slower in 512-bit ones), as do rows in between, where neither width wins clearly.
   BCE and MSE take it at every row length: their tiles are 1024 contiguous elements.
   It is compiled for x86-64-v4
   outright and only called after a run-time check of the CPU. */
#define WIDE_CLASSES 128
#define FL_SHORT_C 32 /* the short-row path: rows of at most FL_SHORT_C classes, */
#define FL_SHORT_R 16 /* FL_SHORT_R rows at a time */

/* The short-row tiles' gather / scatter offsets.  Defined here, before the 512-bit pass and
   outside it, so that it is compiled for the baseline CPU: every pass calls it (an AVX2-only
   CPU runs the 256-bit kernels, and a function compiled inside the x86-64-v4 region would
   stop them with an illegal instruction). */
typedef struct {
    int32_t load[FL_SHORT_C * FL_SHORT_R], store[FL_SHORT_C * FL_SHORT_R];
} fl_short_index;

static void fl_short_index_init(fl_short_index *ix, int64_t c) {
    for (int32_t r = 0; r < FL_SHORT_R; ++r)
        for (int32_t k = 0; k < (int32_t)c; ++k) {
            ix->load[k * FL_SHORT_R + r] = r * (int32_t)c + k;
            ix->store[r * (int32_t)c + k] = k * FL_SHORT_R + r;
        }
}

#ifdef FL_HAVE_WIDE
/* Whether the 512-bit variant may run: the CPU has x86-64-v4, and FASTLOSS_NO_AVX512 is
   unset, empty or "0" in the environment when the process first asks (it lets the tests,
   and anyone comparing, run the 256-bit kernels that AVX2-only CPUs get).  Worked out once:
   concurrent first calls compute the same answer. */
static int fl_wide_allowed(void) {
    static int state = -1;
    int allowed = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (allowed < 0) {
        const char *off = getenv("FASTLOSS_NO_AVX512");
        allowed = __builtin_cpu_supports("x86-64-v4")
                  && !(off != NULL && off[0] != '\0' && strcmp(off, "0") != 0);
        __atomic_store_n(&state, allowed, __ATOMIC_RELAXED);
    }
    return allowed;
}

static int fl_use_wide(int64_t c) {
    return c >= WIDE_CLASSES && fl_wide_allowed();
}


#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4", "prefer-vector-width=512")
/* dst = src * k by 512-bit streaming stores, one per cache line (the cross-entropy's
   streamed gradient: kernels.inc, scale_blocks).  They start at a cache line (the head
   goes through ordinary stores), so that whole lines are streamed but for the row's last
   one. */
FL_INLINE void stream_scale_f32_wide(float *dst, const float *src, int64_t n, float k) {
    int64_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63) != 0; ++j) dst[j] = src[j] * k;
    const __m512 kv = _mm512_set1_ps(k);
    for (; j + 16 <= n; j += 16)
        _mm512_stream_ps(dst + j, _mm512_mul_ps(_mm512_loadu_ps(src + j), kv));
    for (; j < n; ++j) dst[j] = src[j] * k;
}

FL_INLINE void stream_scale_f64_wide(double *dst, const double *src, int64_t n, double k) {
    int64_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63) != 0; ++j) dst[j] = src[j] * k;
    const __m512d kv = _mm512_set1_pd(k);
    for (; j + 8 <= n; j += 8)
        _mm512_stream_pd(dst + j, _mm512_mul_pd(_mm512_loadu_pd(src + j), kv));
    for (; j < n; ++j) dst[j] = src[j] * k;
}

#define FL_WIDE_PASS 1
#if FL_EMIT_F64
#define FL_CHUNK static
#else
#define FL_CHUNK FL_DROPPED
#endif
#define T double
#define TN(name) CAT(name, f64)
#define EXP exp_f64
#define EXP_FULL exp_full_f64
#define LOG log_f64
#define LOG1P_UNIT fl_log1p_unit_f64
#define FN(name) CAT(name, f64_wide)
#include "kernels.inc"
#undef T
#undef TN
#undef EXP
#undef EXP_FULL
#undef LOG
#undef LOG1P_UNIT
#undef FN
#undef FL_CHUNK
#if FL_EMIT_F32
#define FL_CHUNK static
#else
#define FL_CHUNK FL_DROPPED
#endif
#define T float
#define TN(name) CAT(name, f32)
#define EXP exp_f32
#define EXP_FULL exp_full_f32
#define LOG log_f32
#define LOG1P_UNIT fl_log1p_unit_f32
#define FN(name) CAT(name, f32_wide)
#include "kernels.inc"
#undef T
#undef TN
#undef EXP
#undef EXP_FULL
#undef LOG
#undef LOG1P_UNIT
#undef FN
#undef FL_CHUNK
#undef FL_WIDE_PASS
#pragma GCC pop_options
#else
static int fl_use_wide(int64_t c) {
    (void)c;
    return 0;
}

static int fl_wide_allowed(void) { return 0; }
#endif

#if FL_EMIT_F64
#define FL_CHUNK FL_CLONES static
#define FL_ENTRY
#define EN(name) CAT(name, f64)
#else
#define FL_CHUNK FL_DROPPED
#define FL_ENTRY FL_DROPPED
#define EN(name) CAT(name, f64_dropped)
#endif
#define T double
#define TN(name) CAT(name, f64)
#define EXP exp_f64
#define EXP_FULL exp_full_f64
#define LOG log_f64
#define LOG1P_UNIT fl_log1p_unit_f64
#define FN(name) CAT(name, f64)
#ifdef FL_HAVE_WIDE
#define FNW(name) CAT(name, f64_wide)
#else
#define FNW(name) FN(name)
#endif
#include "kernels.inc"
#undef T
#undef TN
#undef EXP
#undef EXP_FULL
#undef LOG
#undef LOG1P_UNIT
#undef FN
#undef FNW
#undef FL_CHUNK
#undef FL_ENTRY
#undef EN
#if FL_EMIT_F32
#define FL_CHUNK FL_CLONES static
#define FL_ENTRY
#define EN(name) CAT(name, f32)
#else
#define FL_CHUNK FL_DROPPED
#define FL_ENTRY FL_DROPPED
#define EN(name) CAT(name, f32_dropped)
#endif
#define T float
#define TN(name) CAT(name, f32)
#define EXP exp_f32
#define EXP_FULL exp_full_f32
#define LOG log_f32
#define LOG1P_UNIT fl_log1p_unit_f32
#define FN(name) CAT(name, f32)
#ifdef FL_HAVE_WIDE
#define FNW(name) CAT(name, f32_wide)
#else
#define FNW(name) FN(name)
#endif
#include "kernels.inc"
#undef T
#undef TN
#undef EXP
#undef EXP_FULL
#undef LOG
#undef LOG1P_UNIT
#undef FN
#undef FNW
#undef FL_CHUNK
#undef FL_ENTRY
#undef EN

#if FL_EMIT_F32
/* Whether every target[i] is in [0, c): one unsigned compare an index, without an early
   exit, so that the loop vectorises (the common case is that they all are). */
FL_CLONES int fl_indices_below(int64_t n, const int64_t *target, int64_t c) {
    uint64_t bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) bad |= (uint64_t)target[i] >= (uint64_t)c;
    return bad == 0;
}

/* ------------------------------------------------------------------ 16-bit logits
 *
 * bfloat16 and float16 logits (and their gradient) are read and written in their own 16-bit
 * storage; the math is the float kernels'.  Each thread converts a few rows (at most
 * FL_HALF_FLOATS values, so they stay in its cache) into a float buffer, runs the float
 * chunk function on that buffer with the gradient written over it in place (the kernel
 * protocol allows grad == x), and rounds the gradient back to 16 bits, to nearest even.
 * Memory traffic is then that of the 16-bit arrays: half of float32's.  The loads are
 * prefetched ahead and a large gradient that is not the logits is written with streaming
 * stores (fl_streams, as the float cross-entropy's): every loss's 16-bit gradient is
 * written once, by that last rounding pass.  BCE and MSE (elementwise) skip the buffer: their
 * skeleton converts each of its own 1024-element tiles in and out while it is in L1
 * (elementwise_tiles' half), which saves the buffer's passes through L2.
 */

/* A 16-bit call: the float chunk function, its arguments (a linear_args_f32 or a
   fop_args_f32, whose x and grad are replaced by the buffer), and the 16-bit arrays. */
typedef struct {
    fl_chunk_fn chunk;
    int linear; /* args is a linear_args_f32 (else a fop_args_f32) */
    const void *args;
    int64_t c;
    int format;
    const uint16_t *x;
    uint16_t *grad;
    const uint16_t *target; /* a 16-bit probability target (format target_format), or NULL */
    int target_format;
    int stream; /* the gradient is written with streaming stores (fl_streams) */
} fl_half_job;

/* The arguments (a linear_args_f32 or a fop_args_f32: the same member names) for rows
   [lo, lo + rows) as rows [0, rows) of the buffers: the logits (and gradient) in buf, a
   16-bit target converted into tbuf when there is one. */
#define FL_HALF_SHIFT(a, lo, buf, tbuf, with_grad)                      \
    do {                                                                \
        (a).x = (buf);                                                  \
        (a).grad = (with_grad) ? (buf) : NULL;                          \
        if ((a).target_index) (a).target_index += (lo);                 \
        if (tbuf) (a).target_prob = (tbuf);                             \
        else if ((a).target_prob) (a).target_prob += (lo) * (a).c;     \
        if ((a).row_scale) (a).row_scale += (lo);                       \
        if ((a).loss) (a).loss += (lo);                                \
    } while (0)

FL_CLONES static int fl_half_chunk(const void *job_, int64_t lo, int64_t hi) {
    const fl_half_job *job = (const fl_half_job *)job_;
    const int64_t c = job->c;
    int64_t rows = FL_HALF_FLOATS / c;
    if (rows < 1) rows = 1;
    if (rows > hi - lo) rows = hi - lo;
    const int64_t size = rows * c;
    float *buf = (float *)malloc((size_t)(job->target ? 2 * size : size) * sizeof(float));
    if (!buf) return FASTLOSS_E_MEMORY;
    float *tbuf = job->target ? buf + size : NULL;
    int status = FASTLOSS_OK;
    for (int64_t start = lo; start < hi && status == FASTLOSS_OK; start += rows) {
        const int64_t r = hi - start < rows ? hi - start : rows;
        fl_half_load(buf, job->x + start * c, r * c, job->format);
        if (tbuf) fl_half_load(tbuf, job->target + start * c, r * c, job->target_format);
        if (job->linear) {
            linear_args_f32 a = *(const linear_args_f32 *)job->args;
            FL_HALF_SHIFT(a, start, buf, tbuf, job->grad != NULL);
            if (a.lse) a.lse += start;
            status = job->chunk(&a, 0, r);
        } else {
            fop_args_f32 a = *(const fop_args_f32 *)job->args;
            FL_HALF_SHIFT(a, start, buf, tbuf, job->grad != NULL);
            status = job->chunk(&a, 0, r);
        }
        if (job->grad)
            fl_half_store(job->grad + start * c, buf, r * c, job->format, job->stream);
    }
    if (job->stream) fl_stream_fence();
    free(buf);
    return status;
}

/* target_format 0: the target (if any) is float, already in args; else a 16-bit target. */
static int fl_half_run(int64_t n, int64_t c, int format, const uint16_t *x, uint16_t *grad,
                       int target_format, const void *target, fl_chunk_fn chunk, int linear,
                       const void *args, int n_threads) {
    const fl_half_job job = {.chunk = chunk, .linear = linear, .args = args, .c = c,
                             .format = format, .x = x, .grad = grad,
                             .target = target_format ? (const uint16_t *)target : NULL,
                             .target_format = target_format,
                             .stream = fl_streams(n, c, sizeof(uint16_t), x, grad)};
    return fl_parallel_rows(n, c, n_threads, fl_half_chunk, &job);
}

/* A probability target is float (target_format 0: it goes into the float arguments) or 16-bit
   (converted with the logits, see fl_half_chunk); the chunk functions are chosen by
   target_index alone, so a 16-bit target still gets the probability chunk. */
#define FL_FLOAT_TARGET(t, f) ((f) ? (const float *)NULL : (const float *)(t))

int fl_cross_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                              const int64_t *target_index, int target_format,
                              const void *target_prob, const double *weight,
                              int64_t ignore_index, double label_smoothing, double softcap,
                              double inv_temperature, double z_grad, const double *row_scale,
                              double scale, double *loss, double *lse, uint16_t *grad,
                              int n_threads) {
    linear_args_f32 a;
    const float *t = FL_FLOAT_TARGET(target_prob, target_format);
    const fl_chunk_fn chunk =
        ce_args_f32(&a, c, NULL, target_index, t, weight, ignore_index, label_smoothing,
                    softcap, inv_temperature, z_grad, row_scale, scale, loss, lse, NULL);
    return fl_half_run(n, c, format, x, grad, target_format, target_prob, chunk,
                       1, &a, n_threads);
}

int fl_kl_divergence_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                              int target_format, const void *target, int log_target,
                              const double *row_scale, double scale, double *loss,
                              uint16_t *grad, int n_threads) {
    linear_args_f32 a;
    const fl_chunk_fn chunk = kl_args_f32(&a, c, NULL, FL_FLOAT_TARGET(target, target_format),
                                          log_target, row_scale, scale, loss, NULL);
    return fl_half_run(n, c, format, x, grad, target_format, target, chunk,
                       1, &a, n_threads);
}

int fl_softmax_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                            const int64_t *target_index, int target_format,
                            const void *target_prob, const double *row_scale, double scale,
                            double *loss, uint16_t *grad, int n_threads) {
    fop_args_f32 a;
    const float *t = FL_FLOAT_TARGET(target_prob, target_format);
    const fl_chunk_fn chunk =
        softmax_mse_args_f32(&a, c, NULL, target_index, t, row_scale, scale, loss, NULL);
    return fl_half_run(n, c, format, x, grad, target_format, target_prob, chunk,
                       0, &a, n_threads);
}

int fl_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                        const double *row_scale, double scale, double *loss, uint16_t *grad,
                        int n_threads) {
    fop_args_f32 a;
    const fl_chunk_fn chunk = entropy_args_f32(&a, c, NULL, row_scale, scale, loss, NULL);
    return fl_half_run(n, c, format, x, grad, 0, NULL, chunk, 0, &a, n_threads);
}

/* BCE and MSE: the float skeleton's own tiles, each converted from 16 bits and its
   gradient rounded back while in L1 (elementwise_tiles' half); a 16-bit target
   (target_format) or a float one. */
static void fl_elementwise_half(elementwise_args_f32 *a, int64_t n, int64_t c, int format,
                                const uint16_t *x, int target_format, const void *target,
                                uint16_t *grad) {
    a->x16 = x;
    a->format = format;
    a->target16 = target_format ? (const uint16_t *)target : NULL;
    a->target_format = target_format;
    a->grad16 = grad;
    a->stream = fl_streams(n, c, sizeof(uint16_t), x, grad);
}

int fl_bce_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x, int target_format,
                    const void *target, const double *weight, int64_t weight_rs,
                    int64_t weight_cs, const double *pos_weight, const double *scale,
                    int64_t scale_rs, int64_t scale_cs, double *loss, int row_sums,
                    uint16_t *grad, int n_threads) {
    elementwise_args_f32 a;
    const fl_chunk_fn chunk =
        bce_args_f32(&a, n, c, NULL, FL_FLOAT_TARGET(target, target_format), weight, weight_rs,
                     weight_cs, pos_weight, scale, scale_rs, scale_cs, loss, row_sums, NULL);
    fl_elementwise_half(&a, n, c, format, x, target_format, target, grad);
    return elementwise_parallel_f32(&a, n, chunk, n_threads);
}

int fl_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x, int target_format,
                    const void *target, const double *scale, int64_t scale_rs,
                    int64_t scale_cs, double *loss, int row_sums, uint16_t *grad,
                    int n_threads) {
    elementwise_args_f32 a;
    const fl_chunk_fn chunk =
        mse_args_f32(&a, n, c, NULL, FL_FLOAT_TARGET(target, target_format), scale, scale_rs,
                     scale_cs, loss, row_sums, NULL);
    fl_elementwise_half(&a, n, c, format, x, target_format, target, grad);
    return elementwise_parallel_f32(&a, n, chunk, n_threads);
}

/* Conversions of whole arrays: the tests check the kernels' conversions through these. */
void fl_half_to_float(int64_t n, int format, const uint16_t *src, float *dst) {
    fl_half_load(dst, src, n, format);
}

void fl_float_to_half(int64_t n, int format, const float *src, uint16_t *dst) {
    fl_half_store(dst, src, n, format, 0);
}

int fl_wide_vectors(void) {
#ifdef FL_HAVE_WIDE
    return fl_wide_allowed();
#else
    return 0;
#endif
}
#endif /* FL_EMIT_F32 */
