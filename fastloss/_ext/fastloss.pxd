# cimport-able declarations of the fastloss C API (include/fastloss.h).
#
# Other Cython code:  from fastloss._ext.fastloss cimport fastloss_cross_entropy_f64
# and build with include_dirs=[fastloss.get_include()], library_dirs / runtime_library_dirs
# = [fastloss.get_lib_dir()], libraries=["fastloss"].  Every function may be called nogil.

from libc.stdint cimport int64_t


cdef extern from "fastloss.h" nogil:
    enum:
        FASTLOSS_OK
        FASTLOSS_E_NULL
        FASTLOSS_E_SHAPE
        FASTLOSS_E_TARGET
        FASTLOSS_E_SMOOTHING
        FASTLOSS_E_MEMORY

    const char *fastloss_strerror(int code)
    int fastloss_openmp()
    int fastloss_max_threads()

    int fastloss_cross_entropy_f32(int64_t n, int64_t c, const float *logits,
                                   const int64_t *target, const float *weight,
                                   int64_t ignore_index, float label_smoothing,
                                   float *loss_out, float *grad_out)
    int fastloss_cross_entropy_probs_f32(int64_t n, int64_t c, const float *logits,
                                         const float *target, const float *weight,
                                         float label_smoothing, float *loss_out, float *grad_out)
    int fastloss_binary_cross_entropy_with_logits_f32(int64_t n, int64_t c,
                                                      const float *logits, const float *target,
                                                      const float *weight, const float *pos_weight,
                                                      float *loss_out, float *grad_out)
    int fastloss_softmax_mse_f32(int64_t n, int64_t c, const float *logits,
                                 const int64_t *target, float *loss_out, float *grad_out)
    int fastloss_kl_divergence_f32(int64_t n, int64_t c, const float *logits,
                                   const float *target, int log_target, float *loss_out,
                                   float *grad_out)
    int fastloss_entropy_f32(int64_t n, int64_t c, const float *logits, float *loss_out,
                             float *grad_out)
    int fastloss_mse_loss_f32(int64_t n, int64_t c, const float *input, const float *target,
                              float *loss_out, float *grad_out)

    int fastloss_ce_index_rows_f32(int64_t n, int64_t c, const float *x, const int64_t *target,
                                  const double *weight, int64_t ignore_index, double eps,
                                  const double *row_scale, double *loss, float *grad,
                                  int n_threads)
    int fastloss_ce_prob_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                                 const double *weight, double eps, const double *row_scale,
                                 double *loss, float *grad, int n_threads)
    int fastloss_softmax_mse_rows_f32(int64_t n, int64_t c, const float *x,
                                     const int64_t *target_index, const float *target_prob,
                                     const double *row_scale, double *loss, float *grad,
                                     int n_threads)
    int fastloss_kl_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                            int log_target, const double *row_scale, double *loss, float *grad,
                            int n_threads)
    int fastloss_entropy_rows_f32(int64_t n, int64_t c, const float *x, const double *row_scale,
                                 double *loss, float *grad, int n_threads)
    int fastloss_bce_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                             const double *weight, int64_t weight_rs, int64_t weight_cs,
                             const double *pos_weight, const double *scale, int64_t scale_rs,
                             int64_t scale_cs, double *loss, int row_sums, float *grad,
                             int n_threads)
    int fastloss_mse_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                             const double *scale, int64_t scale_rs, int64_t scale_cs,
                             double *loss, int row_sums, float *grad, int n_threads)
    int fastloss_softmax_rows_f32(int64_t n, int64_t c, const float *x, float *out, int log,
                                 int n_threads)
    int fastloss_logsumexp_rows_f32(int64_t n, int64_t c, const float *x, double *out,
                                   int n_threads)

    int fastloss_cross_entropy_f64(int64_t n, int64_t c, const double *logits,
                                   const int64_t *target, const double *weight,
                                   int64_t ignore_index, double label_smoothing,
                                   double *loss_out, double *grad_out)
    int fastloss_cross_entropy_probs_f64(int64_t n, int64_t c, const double *logits,
                                         const double *target, const double *weight,
                                         double label_smoothing, double *loss_out, double *grad_out)
    int fastloss_binary_cross_entropy_with_logits_f64(int64_t n, int64_t c,
                                                      const double *logits, const double *target,
                                                      const double *weight, const double *pos_weight,
                                                      double *loss_out, double *grad_out)
    int fastloss_softmax_mse_f64(int64_t n, int64_t c, const double *logits,
                                 const int64_t *target, double *loss_out, double *grad_out)
    int fastloss_kl_divergence_f64(int64_t n, int64_t c, const double *logits,
                                   const double *target, int log_target, double *loss_out,
                                   double *grad_out)
    int fastloss_entropy_f64(int64_t n, int64_t c, const double *logits, double *loss_out,
                             double *grad_out)
    int fastloss_mse_loss_f64(int64_t n, int64_t c, const double *input, const double *target,
                              double *loss_out, double *grad_out)

    int fastloss_ce_index_rows_f64(int64_t n, int64_t c, const double *x, const int64_t *target,
                                  const double *weight, int64_t ignore_index, double eps,
                                  const double *row_scale, double *loss, double *grad,
                                  int n_threads)
    int fastloss_ce_prob_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                                 const double *weight, double eps, const double *row_scale,
                                 double *loss, double *grad, int n_threads)
    int fastloss_softmax_mse_rows_f64(int64_t n, int64_t c, const double *x,
                                     const int64_t *target_index, const double *target_prob,
                                     const double *row_scale, double *loss, double *grad,
                                     int n_threads)
    int fastloss_kl_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                            int log_target, const double *row_scale, double *loss, double *grad,
                            int n_threads)
    int fastloss_entropy_rows_f64(int64_t n, int64_t c, const double *x, const double *row_scale,
                                 double *loss, double *grad, int n_threads)
    int fastloss_bce_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                             const double *weight, int64_t weight_rs, int64_t weight_cs,
                             const double *pos_weight, const double *scale, int64_t scale_rs,
                             int64_t scale_cs, double *loss, int row_sums, double *grad,
                             int n_threads)
    int fastloss_mse_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                             const double *scale, int64_t scale_rs, int64_t scale_cs,
                             double *loss, int row_sums, double *grad, int n_threads)
    int fastloss_softmax_rows_f64(int64_t n, int64_t c, const double *x, double *out, int log,
                                 int n_threads)
    int fastloss_logsumexp_rows_f64(int64_t n, int64_t c, const double *x, double *out,
                                   int n_threads)
