/* fastloss: fused classification losses, forward and backward in one pass.
 *
 * The C API: callable from C or C++ with no Python interpreter.  Every function works on
 * n rows of c classes (row-major, contiguous) and computes, per row i, the loss and its
 * gradient d loss_i / d logits_i.  loss_out (n, or n*c for the elementwise losses) and
 * grad_out (n*c) may each be NULL; grad_out may equal logits (in place).  The math of every
 * loss is documented in the Python package (fastloss.reference).
 *
 * Every function returns 0 or a negative FASTLOSS_E* code (see fastloss_strerror); on an
 * error the outputs are untouched.  Rows are computed in parallel (OpenMP) when the library
 * was built with it; results do not depend on the number of threads.
 *
 * Build:  cc prog.c $(python -m fastloss config --cflags) $(python -m fastloss config --libs)
 *
 * The extended *_rows_* functions at the end return 0 or FASTLOSS_E_MEMORY (C above 512k
 * classes needs a small buffer per thread); only then may the outputs be partly written.
 */
#ifndef FASTLOSS_H
#define FASTLOSS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FASTLOSS_VERSION "0.1.0"

#define FASTLOSS_OK 0
#define FASTLOSS_E_NULL (-1)      /* a required pointer is NULL */
#define FASTLOSS_E_SHAPE (-2)     /* n < 0 or c < 1 */
#define FASTLOSS_E_TARGET (-3)    /* a class index outside [0, c) that is not ignore_index */
#define FASTLOSS_E_SMOOTHING (-4) /* label_smoothing outside [0, 1] */
#define FASTLOSS_E_MEMORY (-5)    /* out of memory */

/* A static string describing an error code. */
const char *fastloss_strerror(int code);

/* Per-row softmax cross-entropy with class indices; grad = d loss_i / d logits_i.
   loss_out (n) and grad_out (n*c) may each be NULL; grad_out may equal logits.
   weight (c) may be NULL. Returns 0, or a negative FASTLOSS_E* code (see fastloss_strerror). */
int fastloss_cross_entropy_f32(int64_t n, int64_t c, const float *logits,
                               const int64_t *target, const float *weight,
                               int64_t ignore_index, float label_smoothing,
                               float *loss_out, float *grad_out);
int fastloss_cross_entropy_f64(int64_t n, int64_t c, const double *logits,
                               const int64_t *target, const double *weight,
                               int64_t ignore_index, double label_smoothing,
                               double *loss_out, double *grad_out);

/* Cross-entropy against probabilities target (n*c), with class weights (c, or NULL). */
int fastloss_cross_entropy_probs_f32(int64_t n, int64_t c, const float *logits,
                                     const float *target, const float *weight,
                                     float label_smoothing, float *loss_out, float *grad_out);
int fastloss_cross_entropy_probs_f64(int64_t n, int64_t c, const double *logits,
                                     const double *target, const double *weight,
                                     double label_smoothing, double *loss_out,
                                     double *grad_out);

/* Elementwise sigmoid binary cross-entropy; loss_out has n*c values.  weight (n*c) and
   pos_weight (c) may be NULL. */
int fastloss_binary_cross_entropy_with_logits_f32(int64_t n, int64_t c, const float *logits,
                                                  const float *target, const float *weight,
                                                  const float *pos_weight, float *loss_out,
                                                  float *grad_out);
int fastloss_binary_cross_entropy_with_logits_f64(int64_t n, int64_t c, const double *logits,
                                                  const double *target, const double *weight,
                                                  const double *pos_weight, double *loss_out,
                                                  double *grad_out);

/* sum_c (softmax_c - onehot(target)_c)^2 per row (the Brier score). */
int fastloss_softmax_mse_f32(int64_t n, int64_t c, const float *logits, const int64_t *target,
                             float *loss_out, float *grad_out);
int fastloss_softmax_mse_f64(int64_t n, int64_t c, const double *logits,
                             const int64_t *target, double *loss_out, double *grad_out);

/* KL(target || softmax(logits)) per row; target (n*c) holds probabilities, or
   log-probabilities when log_target is nonzero. */
int fastloss_kl_divergence_f32(int64_t n, int64_t c, const float *logits, const float *target,
                               int log_target, float *loss_out, float *grad_out);
int fastloss_kl_divergence_f64(int64_t n, int64_t c, const double *logits,
                               const double *target, int log_target, double *loss_out,
                               double *grad_out);

/* Entropy of softmax(logits) per row. */
int fastloss_entropy_f32(int64_t n, int64_t c, const float *logits, float *loss_out,
                         float *grad_out);
int fastloss_entropy_f64(int64_t n, int64_t c, const double *logits, double *loss_out,
                         double *grad_out);

/* Elementwise (input - target)^2; loss_out has n*c values. */
int fastloss_mse_loss_f32(int64_t n, int64_t c, const float *input, const float *target,
                          float *loss_out, float *grad_out);
int fastloss_mse_loss_f64(int64_t n, int64_t c, const double *input, const double *target,
                          double *loss_out, double *grad_out);

/* ------------------------------------------------------------------------------------------
 * The extended row kernels behind the functions above (and behind the Python bindings).
 * No argument is checked.  Per-row losses are written in double (loss may be NULL);
 * grad (may be NULL, may equal x) receives scale * d loss / d x, scale being row_scale[i]
 * for row losses (NULL: 1) or scale[i*scale_rs + k*scale_cs] for elementwise ones.
 * Elementwise losses write loss[i*c + k], or the row sums loss[i] when row_sums is nonzero.
 * weight is double (c values, NULL: ones); n_threads <= 0 means all cores.
 * ---------------------------------------------------------------------------------------- */
#define FASTLOSS_DECLARE_ROWS(T, S)                                                           \
    int fastloss_ce_index_rows_##S(int64_t n, int64_t c, const T *x, const int64_t *target, \
                                    const double *weight, int64_t ignore_index, double eps,  \
                                    const double *row_scale, double *loss, T *grad,          \
                                    int n_threads);                                          \
    int fastloss_ce_prob_rows_##S(int64_t n, int64_t c, const T *x, const T *target,        \
                                   const double *weight, double eps,                         \
                                   const double *row_scale, double *loss, T *grad,           \
                                   int n_threads);                                           \
    int fastloss_softmax_mse_rows_##S(int64_t n, int64_t c, const T *x,                     \
                                       const int64_t *target_index, const T *target_prob,    \
                                       const double *row_scale, double *loss, T *grad,       \
                                       int n_threads);                                       \
    int fastloss_kl_rows_##S(int64_t n, int64_t c, const T *x, const T *target,             \
                              int log_target, const double *row_scale, double *loss,         \
                              T *grad, int n_threads);                                       \
    int fastloss_entropy_rows_##S(int64_t n, int64_t c, const T *x,                         \
                                   const double *row_scale, double *loss, T *grad,           \
                                   int n_threads);                                           \
    int fastloss_bce_rows_##S(int64_t n, int64_t c, const T *x, const T *target,            \
                               const double *weight, int64_t weight_rs, int64_t weight_cs,   \
                               const double *pos_weight, const double *scale,                \
                               int64_t scale_rs, int64_t scale_cs, double *loss,             \
                               int row_sums, T *grad, int n_threads);                        \
    int fastloss_mse_rows_##S(int64_t n, int64_t c, const T *x, const T *target,            \
                               const double *scale, int64_t scale_rs, int64_t scale_cs,      \
                               double *loss, int row_sums, T *grad, int n_threads);          \
    int fastloss_softmax_rows_##S(int64_t n, int64_t c, const T *x, T *out, int log,        \
                                   int n_threads);                                           \
    int fastloss_logsumexp_rows_##S(int64_t n, int64_t c, const T *x, double *out,          \
                                     int n_threads);

FASTLOSS_DECLARE_ROWS(float, f32)
FASTLOSS_DECLARE_ROWS(double, f64)

/* Whether the library runs rows in parallel (built with OpenMP), and on how many threads. */
int fastloss_openmp(void);
int fastloss_max_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_H */
