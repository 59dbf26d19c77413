/* fastloss private row kernels: the unchecked functions behind the C API (api.c) and the
 * Python "cython" backend (_cython.pyx declares them; tests/test_c_api.py checks that its
 * declarations match these).  Not installed as an API: no argument is checked.
 *
 * Conventions (docs/design.md section 2, the kernel protocol):
 *   x (n*c) logits; per-row losses are written in double into loss (may be NULL);
 *   grad (may be NULL, may equal x) receives scale * d loss / d x, the scale being
 *   row_scale[i] for the row losses (NULL: their scale argument, the same for every row)
 *   or scale[i*scale_rs + k*scale_cs] for the elementwise ones (strides in doubles, 0 to
 *   broadcast; NULL: 1);
 *   elementwise losses write loss[i*c + k], or the row sums loss[i] when row_sums != 0;
 *   weight / pos_weight are double (NULL: ones); n_threads <= 0 means every usable CPU.
 * Return FASTLOSS_OK, or FASTLOSS_E_MEMORY when a thread's scratch buffer could not be
 * allocated (outputs may then be partly written).
 */
#ifndef FASTLOSS_ROWS_H
#define FASTLOSS_ROWS_H

#include <stdint.h>

#include "fastloss.h"

#if defined(__GNUC__) && defined(__ELF__)
#define FL_PRIVATE __attribute__((visibility("hidden")))
#else
#define FL_PRIVATE
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Cross-entropy against class indices (target_index, n) or probabilities (target_prob, n*c;
   exactly one of the two is non-NULL).  The logits are transformed first: z = softcap *
   tanh(x / softcap) (softcap 0: none; -inf stays -inf), then z *= inv_temperature.  lse
   (n, may be NULL) receives logsumexp(z_i), 0 for ignored rows.  z_grad adds
   row_scale_i * z_grad * 2 * lse_i * p_ic to the gradient of every counted row (before the
   chain rule through the transform).  The gradient of row i is multiplied by row_scale[i],
   or by scale when row_scale is NULL (a mean's 1 / N without an array of them). */
FL_PRIVATE int fl_cross_entropy_rows_f32(int64_t n, int64_t c, const float *x,
                                         const int64_t *target_index, const float *target_prob,
                                         const double *weight, int64_t ignore_index,
                                         double label_smoothing, double softcap,
                                         double inv_temperature, double z_grad,
                                         const double *row_scale, double scale, double *loss,
                                         double *lse, float *grad, int n_threads);
FL_PRIVATE int fl_cross_entropy_rows_f64(int64_t n, int64_t c, const double *x,
                                         const int64_t *target_index, const double *target_prob,
                                         const double *weight, int64_t ignore_index,
                                         double label_smoothing, double softcap,
                                         double inv_temperature, double z_grad,
                                         const double *row_scale, double scale, double *loss,
                                         double *lse, double *grad, int n_threads);

/* Gradient boosting: the gradient and diagonal Hessian of the cross-entropy of each row
   against class indices (target_index) or probabilities (target_prob), label smoothing,
   sample_weight (n, NULL: ones) multiplying both, hess = max(hessian_scale * (...),
   min_hessian) keeping NaN.  grad / hess element (i, k) at grad[i*grad_rs + k*grad_cs]
   (any strides: C or Fortran order); they must not overlap each other or the inputs. */
FL_PRIVATE int fl_cross_entropy_grad_hess_rows_f32(
    int64_t n, int64_t c, const float *x, const int64_t *target_index, const float *target_prob,
    const double *sample_weight, double label_smoothing, double hessian_scale,
    double min_hessian, float *grad, int64_t grad_rs, int64_t grad_cs, float *hess,
    int64_t hess_rs, int64_t hess_cs, int n_threads);
FL_PRIVATE int fl_cross_entropy_grad_hess_rows_f64(
    int64_t n, int64_t c, const double *x, const int64_t *target_index,
    const double *target_prob, const double *sample_weight, double label_smoothing,
    double hessian_scale, double min_hessian, double *grad, int64_t grad_rs, int64_t grad_cs,
    double *hess, int64_t hess_rs, int64_t hess_cs, int n_threads);

FL_PRIVATE int fl_kl_divergence_rows_f32(int64_t n, int64_t c, const float *x,
                                         const float *target, int log_target,
                                         const double *row_scale, double scale,
                                         double *loss, float *grad,
                                         int n_threads);
FL_PRIVATE int fl_kl_divergence_rows_f64(int64_t n, int64_t c, const double *x,
                                         const double *target, int log_target,
                                         const double *row_scale, double scale,
                                         double *loss, double *grad,
                                         int n_threads);

/* Softmax MSE against class indices (target_index) or a distribution (target_prob). */
FL_PRIVATE int fl_softmax_mse_rows_f32(int64_t n, int64_t c, const float *x,
                                       const int64_t *target_index, const float *target_prob,
                                       const double *row_scale, double scale,
                                       double *loss, float *grad,
                                       int n_threads);
FL_PRIVATE int fl_softmax_mse_rows_f64(int64_t n, int64_t c, const double *x,
                                       const int64_t *target_index, const double *target_prob,
                                       const double *row_scale, double scale,
                                       double *loss, double *grad,
                                       int n_threads);

FL_PRIVATE int fl_entropy_rows_f32(int64_t n, int64_t c, const float *x,
                                   const double *row_scale, double scale, double *loss, float *grad,
                                   int n_threads);
FL_PRIVATE int fl_entropy_rows_f64(int64_t n, int64_t c, const double *x,
                                   const double *row_scale, double scale,
                                   double *loss, double *grad,
                                   int n_threads);

/* weight: element (i, k) at weight[i*weight_rs + k*weight_cs]; pos_weight: c values. */
FL_PRIVATE int fl_bce_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                               const double *weight, int64_t weight_rs, int64_t weight_cs,
                               const double *pos_weight, const double *scale, int64_t scale_rs,
                               int64_t scale_cs, double *loss, int row_sums, float *grad,
                               int n_threads);
FL_PRIVATE int fl_bce_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                               const double *weight, int64_t weight_rs, int64_t weight_cs,
                               const double *pos_weight, const double *scale, int64_t scale_rs,
                               int64_t scale_cs, double *loss, int row_sums, double *grad,
                               int n_threads);

/* Gradient boosting: the gradient and Hessian of the sigmoid BCE of n scores (contiguous x,
   target, sample_weight (NULL: ones), grad, hess). */
FL_PRIVATE int fl_bce_grad_hess_rows_f32(int64_t n, const float *x, const float *target,
                                         const double *sample_weight, double hessian_scale,
                                         double min_hessian, float *grad, float *hess,
                                         int n_threads);
FL_PRIVATE int fl_bce_grad_hess_rows_f64(int64_t n, const double *x, const double *target,
                                         const double *sample_weight, double hessian_scale,
                                         double min_hessian, double *grad, double *hess,
                                         int n_threads);

FL_PRIVATE int fl_mse_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                               const double *scale, int64_t scale_rs, int64_t scale_cs,
                               double *loss, int row_sums, float *grad, int n_threads);
FL_PRIVATE int fl_mse_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                               const double *scale, int64_t scale_rs, int64_t scale_cs,
                               double *loss, int row_sums, double *grad, int n_threads);

/* out (n*c) = softmax(x) or, when log_ != 0, log_softmax(x); out may equal x. */
FL_PRIVATE int fl_softmax_rows_f32(int64_t n, int64_t c, const float *x, float *out, int log_,
                                   int n_threads);
FL_PRIVATE int fl_softmax_rows_f64(int64_t n, int64_t c, const double *x, double *out,
                                   int log_, int n_threads);

FL_PRIVATE int fl_logsumexp_rows_f32(int64_t n, int64_t c, const float *x, double *out,
                                     int n_threads);
FL_PRIVATE int fl_logsumexp_rows_f64(int64_t n, int64_t c, const double *x, double *out,
                                     int n_threads);

/* Whether every target[i] (n of them) is in [0, c). */
FL_PRIVATE int fl_indices_below(int64_t n, const int64_t *target, int64_t c);

/* 16-bit logits (format 1: bfloat16, 2: IEEE float16), stored as uint16_t: the float
   kernels' math, the gradient (may equal x) rounded to nearest even in the same format.
   Probability targets: float (target_format 0) or 16-bit (target_format 1 or 2). */
FL_PRIVATE int fl_cross_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                         const int64_t *target_index, int target_format,
                                         const void *target_prob, const double *weight,
                                         int64_t ignore_index, double label_smoothing,
                                         double softcap, double inv_temperature, double z_grad,
                                         const double *row_scale, double scale, double *loss,
                                         double *lse, uint16_t *grad, int n_threads);
FL_PRIVATE int fl_kl_divergence_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                         int target_format, const void *target, int log_target,
                                         const double *row_scale, double scale,
                                         double *loss, uint16_t *grad,
                                         int n_threads);
FL_PRIVATE int fl_softmax_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                       const int64_t *target_index, int target_format,
                                       const void *target_prob, const double *row_scale,
                                       double scale, double *loss, uint16_t *grad,
                                       int n_threads);
FL_PRIVATE int fl_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                   const double *row_scale, double scale,
                                   double *loss, uint16_t *grad,
                                   int n_threads);
FL_PRIVATE int fl_bce_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                               int target_format, const void *target, const double *weight,
                               int64_t weight_rs, int64_t weight_cs, const double *pos_weight,
                               const double *scale, int64_t scale_rs, int64_t scale_cs,
                               double *loss, int row_sums, uint16_t *grad, int n_threads);
FL_PRIVATE int fl_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                               int target_format, const void *target, const double *scale,
                               int64_t scale_rs, int64_t scale_cs, double *loss, int row_sums,
                               uint16_t *grad, int n_threads);
/* n values converted between a 16-bit format and float (to 16 bits: nearest even). */
FL_PRIVATE void fl_half_to_float(int64_t n, int format, const uint16_t *src, float *dst);
FL_PRIVATE void fl_float_to_half(int64_t n, int format, const float *src, uint16_t *dst);

/* 1 when the kernels' 512-bit variant may run (an x86-64-v4 CPU, and FASTLOSS_NO_AVX512
   unset, empty or "0" at the first call), else 0. */
FL_PRIVATE int fl_wide_vectors(void);

/* ------------------------------------------------------------------ threads (threads.c) */

/* Computes rows [lo, hi) of the problem described by args; returns a FASTLOSS_* code. */
typedef int (*fl_chunk_fn)(const void *args, int64_t lo, int64_t hi);

/* Runs chunk over [0, n) in contiguous chunks taken by the caller and at most n_threads - 1
   threads of the pool (threads.c); every chunk has run when it returns.  One chunk, on the
   caller, when n * c < 32768 or n_threads == 1; n_threads <= 0: every usable CPU.  Returns
   a nonzero status if a chunk returned one (else FASTLOSS_OK). */
FL_PRIVATE int fl_parallel_rows(int64_t n, int64_t c, int n_threads, fl_chunk_fn chunk,
                                const void *args);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_ROWS_H */
