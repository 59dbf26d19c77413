/* fastloss C kernels: one row function per loss, parallel over rows with OpenMP.
 *
 * Built twice from the same sources: into the Python extension (the "cython" backend) and
 * into libfastloss.so, the C API of include/fastloss.h.  Compiled with -O3 and without
 * -ffast-math: -inf and NaN are meaningful here.  Vectorisation comes from `#pragma omp simd`
 * (reductions included) and from exp written as plain arithmetic, the same range reduction
 * and polynomial as the Numba backend: portable (no libmvec, so also musl and macOS) and the
 * same numbers on both backends.
 */
#include "fastloss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 1024        /* classes per block of the online softmax (as in numba_math) */
#define STACK_BLOCKS 512  /* block maxima kept on the stack: C up to 512k classes */

/* Clones for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, picked at load
   time by the CPU's features (an "arch=<cpu>" clone would need that exact CPU), so the installed
   library uses the machine's vector width and still runs on an older CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    !defined(FASTLOSS_NO_CLONES)
#define FL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_CLONES
#endif

/* Every row helper is inlined into the cloned chunk functions: a helper left out of line
   would be compiled once, for the baseline CPU, and the clones would call it. */
#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

/* ------------------------------------------------------------------ type-independent helpers */

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

/* log(1 + e^v) = max(v, 0) + log1p(e^-|v|): no overflow, full accuracy for v << 0. */
FL_INLINE double softplus(double v) { return (v > 0.0 ? v : 0.0) + log1p(exp(-fabs(v))); }

FL_INLINE double sigmoid(double v) {
    const double e = exp(-fabs(v));
    return v >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* exp(z) for z <= 0 (-inf gives 0, NaN gives NaN), vectorisable.  exp(z) = 2^n exp(r) with
   n = round(z / ln 2) taken by adding 1.5 * 2^23 (the sum's low mantissa bits are n: no
   float-to-int conversion, which would be undefined for NaN), r = z - n ln 2 in two parts
   (Cody-Waite), exp(r) by a degree-6 polynomial fitted for relative error. */
FL_INLINE float exp_f32(float z) {
    const float zc = z < -87.33654f ? -87.33654f : z;
    const float t = zc * 1.44269504f + 12582912.0f;
    const float n = t - 12582912.0f;
    const float r = (zc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 0.0013751407895834938f;
    p = p * r + 0.008368916341375321f;
    p = p * r + 0.04166953310922312f;
    p = p * r + 0.16666518459980356f;
    p = p * r + 0.49999988595112776f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127u) << 23; /* (n + 127) << 23: the magic number's own bits shift out */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return z < -87.33654f ? 0.0f : p * two_n;
}

FL_INLINE double exp_f64(double z) {
    const double zc = z < -708.3964185322641 ? -708.3964185322641 : z;
    const double t = zc * 1.4426950408889634 + 6755399441055744.0;
    const double n = t - 6755399441055744.0;
    const double r = (zc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    /* Taylor to degree 13: the first dropped term is below half an ulp */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 1023u) << 52;
    double two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return z < -708.3964185322641 ? 0.0 : p * two_n;
}

/* ------------------------------------------------------------------ threads */

/* Few elements: one thread (starting a team costs microseconds).  Rows are split in equal
   contiguous ranges; every row is computed by one thread, so results never depend on the
   thread count. */
static inline int team_size(int64_t n, int64_t c, int n_threads) {
#ifdef _OPENMP
    int t = n_threads > 0 ? n_threads : omp_get_max_threads();
    if (n * c < 32768) t = 1;
    if ((int64_t)t > n) t = n > 0 ? (int)n : 1;
    return t;
#else
    (void)n, (void)c, (void)n_threads;
    return 1;
#endif
}

#ifdef _OPENMP
#define THREAD_ID omp_get_thread_num()
#define THREAD_COUNT omp_get_num_threads()
#define PARALLEL_REGION _Pragma("omp parallel num_threads(team_) if (team_ > 1)")
#else
#define THREAD_ID 0
#define THREAD_COUNT 1
#define PARALLEL_REGION
#endif

#define PARALLEL_ROWS(n, c, n_threads, ...)                                                   \
    int status_ = FASTLOSS_OK;                                                                \
    const int64_t n_blocks_ = ((c) + BLOCK - 1) / BLOCK;                                      \
    const int team_ = team_size((n), (c), (n_threads));                                       \
    (void)team_;                                                                              \
    PARALLEL_REGION {                                                                  \
        double stack_[STACK_BLOCKS];                                                          \
        double *block_max =                                                                   \
            n_blocks_ <= STACK_BLOCKS ? stack_ : (double *)malloc(n_blocks_ * sizeof(double)); \
        const int64_t lo = (n) * THREAD_ID / THREAD_COUNT;                                    \
        const int64_t hi = (n) * (THREAD_ID + 1) / THREAD_COUNT;                              \
        if (block_max) {                                                                      \
            __VA_ARGS__;                                                                      \
        } else {                                                                              \
            status_ = FASTLOSS_E_MEMORY;                                                      \
        }                                                                                     \
        if (block_max != stack_) free(block_max);                                             \
    }                                                                                         \
    return status_;

/* ------------------------------------------------------------------ the instantiations */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

/* Wide rows (at least WIDE_CLASSES classes) on an AVX-512 CPU run a third variant with
   512-bit vectors: 1.4x faster there than 256-bit ones (the forward at 2048 x 32768: 17 vs
   24 ms), which are faster for short rows (65536 x 10: 2.1 vs 4.2 ms).  It is compiled for
   x86-64-v4 outright and only called after a run-time check of the CPU. */
#define WIDE_CLASSES 1024
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    !defined(FASTLOSS_NO_CLONES)
#define FL_HAVE_WIDE 1
static int cpu_has_v4(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("x86-64-v4") ? 1 : 0;
    return known;
}
#define USE_WIDE(c) ((c) >= WIDE_CLASSES && cpu_has_v4())
#endif

#ifdef FL_HAVE_WIDE
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4", "prefer-vector-width=512")
#define FL_WIDE_PASS 1
#define FL_CHUNK static
#define T float
#define EXP exp_f32
#define FN(name) CAT(name, f32_wide)
#include "kernels.inc"
#undef T
#undef EXP
#undef FN
#define T double
#define EXP exp_f64
#define FN(name) CAT(name, f64_wide)
#include "kernels.inc"
#undef T
#undef EXP
#undef FN
#undef FL_CHUNK
#undef FL_WIDE_PASS
#pragma GCC pop_options
#endif

#define FL_CHUNK FL_CLONES static
#define T float
#define EXP exp_f32
#define FN(name) CAT(name, f32)
#define FNW(name) CAT(name, f32_wide)
#include "kernels.inc"
#undef T
#undef EXP
#undef FN
#undef FNW
#define T double
#define EXP exp_f64
#define FN(name) CAT(name, f64)
#define FNW(name) CAT(name, f64_wide)
#include "kernels.inc"
#undef T
#undef EXP
#undef FN
#undef FNW

/* ------------------------------------------------------------------ the checked C API */

const char *fastloss_strerror(int code) {
    switch (code) {
        case FASTLOSS_OK: return "success";
        case FASTLOSS_E_NULL: return "a required pointer is NULL";
        case FASTLOSS_E_SHAPE: return "invalid shape: n must be >= 0 and c >= 1";
        case FASTLOSS_E_TARGET:
            return "a class index is outside [0, c) and is not ignore_index";
        case FASTLOSS_E_SMOOTHING: return "label_smoothing must be in [0, 1]";
        case FASTLOSS_E_MEMORY: return "out of memory";
        default: return "unknown fastloss error code";
    }
}

int fastloss_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fastloss_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int check_shape(int64_t n, int64_t c, const void *x) {
    if (n < 0 || c < 1) return FASTLOSS_E_SHAPE;
    if (n > 0 && !x) return FASTLOSS_E_NULL;
    return FASTLOSS_OK;
}

static int check_targets(int64_t n, int64_t c, const int64_t *target, int64_t ignore_index) {
    if (n > 0 && !target) return FASTLOSS_E_NULL;
    for (int64_t i = 0; i < n; ++i)
        if ((target[i] < 0 || target[i] >= c) && target[i] != ignore_index)
            return FASTLOSS_E_TARGET;
    return FASTLOSS_OK;
}

/* float weights to double (NULL stays NULL); *owned must be freed */
#define WEIGHTS_AS_DOUBLE(T, weight, count, out)                                \
    double *out = NULL;                                                         \
    if (weight) {                                                               \
        out = (double *)malloc((size_t)(count) * sizeof(double));               \
        if (!out) return FASTLOSS_E_MEMORY;                                     \
        for (int64_t k_ = 0; k_ < (count); ++k_) out[k_] = (double)(weight)[k_]; \
    }

/* per-row double losses to the caller's type (NULL: none) */
#define LOSS_BUFFER(count) \
    double *loss64 = loss_out ? (double *)malloc((size_t)((count) > 0 ? (count) : 1) * sizeof(double)) : NULL; \
    if (loss_out && !loss64) { free(w64); return FASTLOSS_E_MEMORY; }

#define FINISH(T, count)                                                     \
    if (status == FASTLOSS_OK && loss_out)                                   \
        for (int64_t i_ = 0; i_ < (count); ++i_) loss_out[i_] = (T)loss64[i_]; \
    free(loss64);                                                            \
    free(w64);                                                               \
    return status;

#define DEFINE_API(T, S)                                                                     \
    int fastloss_cross_entropy_##S(int64_t n, int64_t c, const T *logits,                   \
                                   const int64_t *target, const T *weight,                  \
                                   int64_t ignore_index, T label_smoothing, T *loss_out,    \
                                   T *grad_out) {                                           \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        if (!(label_smoothing >= 0 && label_smoothing <= 1)) return FASTLOSS_E_SMOOTHING;   \
        if ((status = check_targets(n, c, target, ignore_index))) return status;            \
        WEIGHTS_AS_DOUBLE(T, weight, c, w64)                                                \
        LOSS_BUFFER(n)                                                                      \
        status = fastloss_ce_index_rows_##S(n, c, logits, target, w64, ignore_index,        \
                                            (double)label_smoothing, NULL, loss64, grad_out, \
                                            0);                                             \
        FINISH(T, n)                                                                        \
    }                                                                                       \
    int fastloss_cross_entropy_probs_##S(int64_t n, int64_t c, const T *logits,             \
                                         const T *target, const T *weight,                  \
                                         T label_smoothing, T *loss_out, T *grad_out) {     \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        if (n > 0 && !target) return FASTLOSS_E_NULL;                                       \
        if (!(label_smoothing >= 0 && label_smoothing <= 1)) return FASTLOSS_E_SMOOTHING;   \
        WEIGHTS_AS_DOUBLE(T, weight, c, w64)                                                \
        LOSS_BUFFER(n)                                                                      \
        status = fastloss_ce_prob_rows_##S(n, c, logits, target, w64,                       \
                                           (double)label_smoothing, NULL, loss64, grad_out, \
                                           0);                                              \
        FINISH(T, n)                                                                        \
    }                                                                                       \
    int fastloss_binary_cross_entropy_with_logits_##S(int64_t n, int64_t c, const T *logits, \
                                                      const T *target, const T *weight,     \
                                                      const T *pos_weight, T *loss_out,     \
                                                      T *grad_out) {                        \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        if (n > 0 && !target) return FASTLOSS_E_NULL;                                       \
        WEIGHTS_AS_DOUBLE(T, weight, n * c, w64)                                            \
        double *pw64 = NULL;                                                                \
        if (pos_weight) {                                                                   \
            pw64 = (double *)malloc((size_t)c * sizeof(double));                            \
            if (!pw64) { free(w64); return FASTLOSS_E_MEMORY; }                             \
            for (int64_t k = 0; k < c; ++k) pw64[k] = (double)pos_weight[k];                \
        }                                                                                   \
        LOSS_BUFFER(n * c)                                                                  \
        status = fastloss_bce_rows_##S(n, c, logits, target, w64, c, 1, pw64, NULL, 0, 0,   \
                                       loss64, 0, grad_out, 0);                             \
        free(pw64);                                                                         \
        FINISH(T, n * c)                                                                    \
    }                                                                                       \
    int fastloss_softmax_mse_##S(int64_t n, int64_t c, const T *logits,                     \
                                 const int64_t *target, T *loss_out, T *grad_out) {         \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        if ((status = check_targets(n, c, target, -1))) return status;                      \
        double *w64 = NULL;                                                                 \
        LOSS_BUFFER(n)                                                                      \
        status = fastloss_softmax_mse_rows_##S(n, c, logits, target, NULL, NULL, loss64,    \
                                               grad_out, 0);                                \
        FINISH(T, n)                                                                        \
    }                                                                                       \
    int fastloss_kl_divergence_##S(int64_t n, int64_t c, const T *logits, const T *target,  \
                                   int log_target, T *loss_out, T *grad_out) {              \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        if (n > 0 && !target) return FASTLOSS_E_NULL;                                       \
        double *w64 = NULL;                                                                 \
        LOSS_BUFFER(n)                                                                      \
        status = fastloss_kl_rows_##S(n, c, logits, target, log_target, NULL, loss64,       \
                                      grad_out, 0);                                         \
        FINISH(T, n)                                                                        \
    }                                                                                       \
    int fastloss_entropy_##S(int64_t n, int64_t c, const T *logits, T *loss_out,            \
                             T *grad_out) {                                                 \
        int status = check_shape(n, c, logits);                                             \
        if (status) return status;                                                          \
        double *w64 = NULL;                                                                 \
        LOSS_BUFFER(n)                                                                      \
        status = fastloss_entropy_rows_##S(n, c, logits, NULL, loss64, grad_out, 0);        \
        FINISH(T, n)                                                                        \
    }                                                                                       \
    int fastloss_mse_loss_##S(int64_t n, int64_t c, const T *input, const T *target,        \
                              T *loss_out, T *grad_out) {                                   \
        int status = check_shape(n, c, input);                                              \
        if (status) return status;                                                          \
        if (n > 0 && !target) return FASTLOSS_E_NULL;                                       \
        double *w64 = NULL;                                                                 \
        LOSS_BUFFER(n * c)                                                                  \
        status = fastloss_mse_rows_##S(n, c, input, target, NULL, 0, 0, loss64, 0,          \
                                       grad_out, 0);                                        \
        FINISH(T, n * c)                                                                    \
    }

DEFINE_API(float, f32)
DEFINE_API(double, f64)
