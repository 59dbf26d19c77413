/* fastloss: fused classification losses, forward and backward in one pass.
 *
 * The C API: callable from C or C++ with no Python interpreter.  Every function works on
 * n rows of c classes (row-major, contiguous) and computes, per row i, the loss and its
 * gradient d loss_i / d logits_i:
 *
 *     int fastloss_<loss>_<f32|f64>(n, c, inputs..., const fastloss_<loss>_options *opts,
 *                                   outputs...);
 *
 * loss_out (n values, n*c for the elementwise losses) and grad_out (n*c) may each be NULL;
 * grad_out may equal logits (in place).  The math of every loss is documented in the Python
 * package (fastloss.reference).
 *
 * Options.  Each loss has an options struct whose first member is its size.  Fill it with
 * fastloss_<loss>_options_init(&opts) (the defaults) and set what you need; or pass NULL for
 * the defaults.  New options are only ever appended, and a library that receives a smaller
 * (older) struct uses the defaults for the members it lacks: a program built against an older
 * fastloss.h keeps working with a newer library.  A size of 0, or larger than this library
 * knows, is FASTLOSS_E_OPTIONS.
 *
 * Errors.  Every function returns FASTLOSS_OK (0) or a negative FASTLOSS_E_* code (see
 * fastloss_strerror); on an error the outputs are untouched.  The one exception is
 * FASTLOSS_E_MEMORY from a worker thread's scratch buffer (rows above 512k classes, or a
 * softcap/temperature on rows of more than 32 classes), after which the outputs may be
 * partly written.
 *
 * Threads.  A call uses at most n_threads threads (options; 0 = every usable CPU): itself
 * and workers of the library's own pool of POSIX threads (no OpenMP runtime), started on
 * the first parallel call; they take contiguous chunks of rows, and every chunk has run
 * when the call returns (small problems run on the caller alone).  Results are
 * bit-identical for any thread count.  The functions are thread-safe (a call that finds the
 * pool busy with another starts threads of its own for the call) and fork-safe (the pool is
 * reset in a forked child, which can call them at once).  Pool workers block every signal.
 * A library built without threads (FASTLOSS_NO_THREADS=1, or no pthreads) runs every call
 * serially.
 *
 * Build:  cc prog.c $(python -m fastloss config --cflags) $(python -m fastloss config --libs)
 */
#ifndef FASTLOSS_H
#define FASTLOSS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version: written here only (setup.py and the Python package read it from here). */
#define FASTLOSS_VERSION_MAJOR 0
#define FASTLOSS_VERSION_MINOR 2
#define FASTLOSS_VERSION_PATCH 0
#define FASTLOSS_STRINGIFY_(x) #x
#define FASTLOSS_STRINGIFY(x) FASTLOSS_STRINGIFY_(x)
#define FASTLOSS_VERSION                          \
    FASTLOSS_STRINGIFY(FASTLOSS_VERSION_MAJOR) "." \
    FASTLOSS_STRINGIFY(FASTLOSS_VERSION_MINOR) "." FASTLOSS_STRINGIFY(FASTLOSS_VERSION_PATCH)

#define FASTLOSS_OK 0
#define FASTLOSS_E_NULL (-1)        /* a required pointer is NULL */
#define FASTLOSS_E_SHAPE (-2)       /* n < 0 or c < 1 */
#define FASTLOSS_E_TARGET (-3)      /* a class index outside [0, c) that is not ignore_index */
#define FASTLOSS_E_SMOOTHING (-4)   /* label_smoothing outside [0, 1] */
#define FASTLOSS_E_MEMORY (-5)      /* out of memory */
#define FASTLOSS_E_OPTIONS (-6)     /* options size is 0 or larger than this library knows */
#define FASTLOSS_E_Z_LOSS (-7)      /* z_loss negative or not finite */
#define FASTLOSS_E_SOFTCAP (-8)     /* softcap negative or not finite */
#define FASTLOSS_E_TEMPERATURE (-9) /* temperature not positive or not finite */
#define FASTLOSS_E_THREADS (-10)    /* n_threads negative */
#define FASTLOSS_E_HESSIAN_SCALE (-11) /* hessian_scale not positive or not finite */
#define FASTLOSS_E_MIN_HESSIAN (-12)   /* min_hessian negative or not finite */
#define FASTLOSS_E_GRAD_SCALE (-13)    /* grad_scale not finite */

/* A static string describing an error code. */
const char *fastloss_strerror(int code);

/* FASTLOSS_VERSION of the library (which may be newer than the header a program was built
   with). */
const char *fastloss_version(void);

/* 1 when the library runs rows on several threads (POSIX threads), 0 when it is serial. */
int fastloss_has_threads(void);

/* The number of usable CPUs, the thread count of n_threads = 0: those this process may run
   on (its affinity mask, on Linux), else the online ones; 1 when serial. */
int fastloss_max_threads(void);

/* ------------------------------------------------------------------ cross-entropy */

/* Options of fastloss_cross_entropy_* (members are only ever appended). */
typedef struct fastloss_cross_entropy_options {
    size_t size;            /* sizeof(fastloss_cross_entropy_options), set by _init */
    int n_threads;          /* 0: every usable CPU (default) */
    const double *weight;   /* c class weights, or NULL: ones (default) */
    int64_t ignore_index;   /* rows with this class index give 0 (default -100) */
    double label_smoothing; /* in [0, 1] (default 0) */
    double z_loss;          /* >= 0: adds z_loss * lse_i^2 to every counted row (default 0) */
    double softcap;         /* >= 0: logits become softcap * tanh(x / softcap); 0: none */
    double temperature;     /* > 0: logits (after the softcap) are divided by it (default 1) */
    double grad_scale;      /* finite: multiplies grad_out, e.g. 1 / (counted rows) for a
                               mean; loss_out is not scaled (default 1) */
} fastloss_cross_entropy_options;

void fastloss_cross_entropy_options_init(fastloss_cross_entropy_options *opts);

/* Per-row softmax cross-entropy with class indices (n of them); ignore_index rows give 0.
   With z_loss, loss_i includes z_loss * lse_i^2, lse_i the logsumexp of the (softcapped,
   tempered) row, and the gradient its derivative. */
int fastloss_cross_entropy_f32(int64_t n, int64_t c, const float *logits,
                               const int64_t *target, const fastloss_cross_entropy_options *opts,
                               float *loss_out, float *grad_out);
int fastloss_cross_entropy_f64(int64_t n, int64_t c, const double *logits,
                               const int64_t *target, const fastloss_cross_entropy_options *opts,
                               double *loss_out, double *grad_out);

/* The same against probabilities target (n*c); ignore_index is not used. */
int fastloss_cross_entropy_probs_f32(int64_t n, int64_t c, const float *logits,
                                     const float *target,
                                     const fastloss_cross_entropy_options *opts,
                                     float *loss_out, float *grad_out);
int fastloss_cross_entropy_probs_f64(int64_t n, int64_t c, const double *logits,
                                     const double *target,
                                     const fastloss_cross_entropy_options *opts,
                                     double *loss_out, double *grad_out);

/* ------------------------------------------------------------------ binary cross-entropy */

typedef struct fastloss_binary_cross_entropy_options {
    size_t size;               /* set by _init */
    int n_threads;             /* 0: every usable CPU (default) */
    const double *weight;      /* n*c element weights, or NULL: ones (default) */
    const double *pos_weight;  /* c weights of the positive term, or NULL: ones (default) */
} fastloss_binary_cross_entropy_options;

void fastloss_binary_cross_entropy_options_init(fastloss_binary_cross_entropy_options *opts);

/* Elementwise sigmoid binary cross-entropy against target (n*c); loss_out has n*c values. */
int fastloss_binary_cross_entropy_with_logits_f32(
    int64_t n, int64_t c, const float *logits, const float *target,
    const fastloss_binary_cross_entropy_options *opts, float *loss_out, float *grad_out);
int fastloss_binary_cross_entropy_with_logits_f64(
    int64_t n, int64_t c, const double *logits, const double *target,
    const fastloss_binary_cross_entropy_options *opts, double *loss_out, double *grad_out);

/* ------------------------------------------------------------------ gradient boosting */

/* Options of the *_grad_hess functions (members are only ever appended). */
typedef struct fastloss_grad_hess_options {
    size_t size;                 /* set by _init */
    int n_threads;               /* 0: every usable CPU (default) */
    const double *sample_weight; /* n weights (multiply grad and hess), or NULL: ones */
    double label_smoothing;      /* in [0, 1] (default 0); not used by the binary function */
    double hessian_scale;        /* finite, > 0: multiplies the Hessian (default 1; XGBoost's
                                    multi:softprob uses 2, LightGBM's multiclass k / (k - 1)) */
    double min_hessian;          /* finite, >= 0: the Hessian's floor (default 0); NaN stays
                                    NaN */
} fastloss_grad_hess_options;

void fastloss_grad_hess_options_init(fastloss_grad_hess_options *opts);

/* The gradient and diagonal Hessian of the softmax cross-entropy with respect to the raw
   scores (n rows of k classes), the custom objective of multiclass gradient boosting: with
   p = softmax(raw_i), q_c = (1 - eps) [c = target_i] + eps / k, A = sum_c q_c, w the sample
   weight,
       grad_out[i*k + c] = (A p_c - q_c) w,
       hess_out[i*k + c] = max(hessian_scale A p_c (1 - p_c) w, min_hessian).
   A row holding NaN or +inf, or only -inf, gives NaN for its whole gradient and Hessian; a
   -inf score is an impossible class (grad -q_c w, hess min_hessian).  target: n class
   indices in [0, k) (no ignore_index).  grad_out and hess_out (n*k, row-major) are
   required and must not overlap each other or the inputs. */
int fastloss_cross_entropy_grad_hess_f32(int64_t n, int64_t k, const float *raw,
                                         const int64_t *target,
                                         const fastloss_grad_hess_options *opts,
                                         float *grad_out, float *hess_out);
int fastloss_cross_entropy_grad_hess_f64(int64_t n, int64_t k, const double *raw,
                                         const int64_t *target,
                                         const fastloss_grad_hess_options *opts,
                                         double *grad_out, double *hess_out);

/* The same against probabilities target (n*k): q_c = (1 - eps) target_ic + eps / k (rows
   that do not sum to 1 give the exact derivatives of -sum_c q_c log p_c). */
int fastloss_cross_entropy_grad_hess_probs_f32(int64_t n, int64_t k, const float *raw,
                                               const float *target,
                                               const fastloss_grad_hess_options *opts,
                                               float *grad_out, float *hess_out);
int fastloss_cross_entropy_grad_hess_probs_f64(int64_t n, int64_t k, const double *raw,
                                               const double *target,
                                               const fastloss_grad_hess_options *opts,
                                               double *grad_out, double *hess_out);

/* The gradient and Hessian of the sigmoid binary cross-entropy of n raw scores against
   targets in [0, 1] (soft targets allowed): with s+ = sigmoid(raw_i), s- = sigmoid(-raw_i),
       grad_out[i] = ((1 - t_i) s+ - t_i s-) w_i,
       hess_out[i] = max(hessian_scale s+ s- w_i, min_hessian);
   +-inf gives grad (1 - t) w or -t w and hess min_hessian; NaN gives NaN. */
int fastloss_binary_cross_entropy_grad_hess_f32(int64_t n, const float *raw,
                                                const float *target,
                                                const fastloss_grad_hess_options *opts,
                                                float *grad_out, float *hess_out);
int fastloss_binary_cross_entropy_grad_hess_f64(int64_t n, const double *raw,
                                                const double *target,
                                                const fastloss_grad_hess_options *opts,
                                                double *grad_out, double *hess_out);

/* ------------------------------------------------------------------ softmax MSE */

typedef struct fastloss_softmax_mse_options {
    size_t size;   /* set by _init */
    int n_threads; /* 0: every usable CPU (default) */
} fastloss_softmax_mse_options;

void fastloss_softmax_mse_options_init(fastloss_softmax_mse_options *opts);

/* sum_c (softmax_c - onehot(target)_c)^2 per row (the Brier score); target: n indices. */
int fastloss_softmax_mse_f32(int64_t n, int64_t c, const float *logits, const int64_t *target,
                             const fastloss_softmax_mse_options *opts, float *loss_out,
                             float *grad_out);
int fastloss_softmax_mse_f64(int64_t n, int64_t c, const double *logits,
                             const int64_t *target, const fastloss_softmax_mse_options *opts,
                             double *loss_out, double *grad_out);

/* The same against a target distribution (n*c). */
int fastloss_softmax_mse_probs_f32(int64_t n, int64_t c, const float *logits,
                                   const float *target, const fastloss_softmax_mse_options *opts,
                                   float *loss_out, float *grad_out);
int fastloss_softmax_mse_probs_f64(int64_t n, int64_t c, const double *logits,
                                   const double *target,
                                   const fastloss_softmax_mse_options *opts, double *loss_out,
                                   double *grad_out);

/* ------------------------------------------------------------------ KL divergence */

typedef struct fastloss_kl_divergence_options {
    size_t size;    /* set by _init */
    int n_threads;  /* 0: every usable CPU (default) */
    int log_target; /* nonzero: target holds log-probabilities (default 0) */
} fastloss_kl_divergence_options;

void fastloss_kl_divergence_options_init(fastloss_kl_divergence_options *opts);

/* KL(target || softmax(logits)) per row; target (n*c) holds probabilities. */
int fastloss_kl_divergence_f32(int64_t n, int64_t c, const float *logits, const float *target,
                               const fastloss_kl_divergence_options *opts, float *loss_out,
                               float *grad_out);
int fastloss_kl_divergence_f64(int64_t n, int64_t c, const double *logits,
                               const double *target, const fastloss_kl_divergence_options *opts,
                               double *loss_out, double *grad_out);

/* ------------------------------------------------------------------ entropy */

typedef struct fastloss_entropy_options {
    size_t size;   /* set by _init */
    int n_threads; /* 0: every usable CPU (default) */
} fastloss_entropy_options;

void fastloss_entropy_options_init(fastloss_entropy_options *opts);

/* Entropy of softmax(logits) per row. */
int fastloss_entropy_f32(int64_t n, int64_t c, const float *logits,
                         const fastloss_entropy_options *opts, float *loss_out, float *grad_out);
int fastloss_entropy_f64(int64_t n, int64_t c, const double *logits,
                         const fastloss_entropy_options *opts, double *loss_out,
                         double *grad_out);

/* ------------------------------------------------------------------ mean squared error */

typedef struct fastloss_mse_loss_options {
    size_t size;   /* set by _init */
    int n_threads; /* 0: every usable CPU (default) */
} fastloss_mse_loss_options;

void fastloss_mse_loss_options_init(fastloss_mse_loss_options *opts);

/* Elementwise (input - target)^2; loss_out has n*c values. */
int fastloss_mse_loss_f32(int64_t n, int64_t c, const float *input, const float *target,
                          const fastloss_mse_loss_options *opts, float *loss_out,
                          float *grad_out);
int fastloss_mse_loss_f64(int64_t n, int64_t c, const double *input, const double *target,
                          const fastloss_mse_loss_options *opts, double *loss_out,
                          double *grad_out);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_H */
