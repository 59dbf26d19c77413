# cimport-able declarations of the fastloss C API (include/fastloss.h, the only hand-written
# declaration of that API; tests/test_c_api.py checks that this file matches it).
#
# Other Cython code:  from fastloss._ext.fastloss cimport fastloss_cross_entropy_f64
# and build with include_dirs=[fastloss.get_include()], library_dirs / runtime_library_dirs
# = [fastloss.get_lib_dir()], libraries=["fastloss"].  Every function may be called nogil.

from libc.stdint cimport int64_t


cdef extern from "fastloss.h" nogil:
    enum:
        FASTLOSS_VERSION_MAJOR
        FASTLOSS_VERSION_MINOR
        FASTLOSS_VERSION_PATCH
        FASTLOSS_OK
        FASTLOSS_E_NULL
        FASTLOSS_E_SHAPE
        FASTLOSS_E_TARGET
        FASTLOSS_E_SMOOTHING
        FASTLOSS_E_MEMORY
        FASTLOSS_E_OPTIONS
        FASTLOSS_E_Z_LOSS
        FASTLOSS_E_SOFTCAP
        FASTLOSS_E_TEMPERATURE
        FASTLOSS_E_THREADS
        FASTLOSS_E_HESSIAN_SCALE
        FASTLOSS_E_MIN_HESSIAN
        FASTLOSS_E_GRAD_SCALE

    const char *FASTLOSS_VERSION

    const char *fastloss_strerror(int code)
    const char *fastloss_version()
    int fastloss_has_threads()
    int fastloss_max_threads()

    ctypedef struct fastloss_cross_entropy_options:
        size_t size
        int n_threads
        const double *weight
        int64_t ignore_index
        double label_smoothing
        double z_loss
        double softcap
        double temperature
        double grad_scale

    void fastloss_cross_entropy_options_init(fastloss_cross_entropy_options *opts)
    int fastloss_cross_entropy_f32(int64_t n, int64_t c, const float *logits,
                                   const int64_t *target,
                                   const fastloss_cross_entropy_options *opts,
                                   float *loss_out, float *grad_out)
    int fastloss_cross_entropy_f64(int64_t n, int64_t c, const double *logits,
                                   const int64_t *target,
                                   const fastloss_cross_entropy_options *opts,
                                   double *loss_out, double *grad_out)
    int fastloss_cross_entropy_probs_f32(int64_t n, int64_t c, const float *logits,
                                         const float *target,
                                         const fastloss_cross_entropy_options *opts,
                                         float *loss_out, float *grad_out)
    int fastloss_cross_entropy_probs_f64(int64_t n, int64_t c, const double *logits,
                                         const double *target,
                                         const fastloss_cross_entropy_options *opts,
                                         double *loss_out, double *grad_out)

    ctypedef struct fastloss_binary_cross_entropy_options:
        size_t size
        int n_threads
        const double *weight
        const double *pos_weight

    void fastloss_binary_cross_entropy_options_init(fastloss_binary_cross_entropy_options *opts)
    int fastloss_binary_cross_entropy_with_logits_f32(
        int64_t n, int64_t c, const float *logits, const float *target,
        const fastloss_binary_cross_entropy_options *opts, float *loss_out, float *grad_out)
    int fastloss_binary_cross_entropy_with_logits_f64(
        int64_t n, int64_t c, const double *logits, const double *target,
        const fastloss_binary_cross_entropy_options *opts, double *loss_out, double *grad_out)

    ctypedef struct fastloss_grad_hess_options:
        size_t size
        int n_threads
        const double *sample_weight
        double label_smoothing
        double hessian_scale
        double min_hessian

    void fastloss_grad_hess_options_init(fastloss_grad_hess_options *opts)
    int fastloss_cross_entropy_grad_hess_f32(int64_t n, int64_t k, const float *raw,
                                             const int64_t *target,
                                             const fastloss_grad_hess_options *opts,
                                             float *grad_out, float *hess_out)
    int fastloss_cross_entropy_grad_hess_f64(int64_t n, int64_t k, const double *raw,
                                             const int64_t *target,
                                             const fastloss_grad_hess_options *opts,
                                             double *grad_out, double *hess_out)
    int fastloss_cross_entropy_grad_hess_probs_f32(int64_t n, int64_t k, const float *raw,
                                                   const float *target,
                                                   const fastloss_grad_hess_options *opts,
                                                   float *grad_out, float *hess_out)
    int fastloss_cross_entropy_grad_hess_probs_f64(int64_t n, int64_t k, const double *raw,
                                                   const double *target,
                                                   const fastloss_grad_hess_options *opts,
                                                   double *grad_out, double *hess_out)
    int fastloss_binary_cross_entropy_grad_hess_f32(int64_t n, const float *raw,
                                                    const float *target,
                                                    const fastloss_grad_hess_options *opts,
                                                    float *grad_out, float *hess_out)
    int fastloss_binary_cross_entropy_grad_hess_f64(int64_t n, const double *raw,
                                                    const double *target,
                                                    const fastloss_grad_hess_options *opts,
                                                    double *grad_out, double *hess_out)

    ctypedef struct fastloss_softmax_mse_options:
        size_t size
        int n_threads

    void fastloss_softmax_mse_options_init(fastloss_softmax_mse_options *opts)
    int fastloss_softmax_mse_f32(int64_t n, int64_t c, const float *logits,
                                 const int64_t *target, const fastloss_softmax_mse_options *opts,
                                 float *loss_out, float *grad_out)
    int fastloss_softmax_mse_f64(int64_t n, int64_t c, const double *logits,
                                 const int64_t *target, const fastloss_softmax_mse_options *opts,
                                 double *loss_out, double *grad_out)
    int fastloss_softmax_mse_probs_f32(int64_t n, int64_t c, const float *logits,
                                       const float *target,
                                       const fastloss_softmax_mse_options *opts,
                                       float *loss_out, float *grad_out)
    int fastloss_softmax_mse_probs_f64(int64_t n, int64_t c, const double *logits,
                                       const double *target,
                                       const fastloss_softmax_mse_options *opts,
                                       double *loss_out, double *grad_out)

    ctypedef struct fastloss_kl_divergence_options:
        size_t size
        int n_threads
        int log_target

    void fastloss_kl_divergence_options_init(fastloss_kl_divergence_options *opts)
    int fastloss_kl_divergence_f32(int64_t n, int64_t c, const float *logits,
                                   const float *target,
                                   const fastloss_kl_divergence_options *opts,
                                   float *loss_out, float *grad_out)
    int fastloss_kl_divergence_f64(int64_t n, int64_t c, const double *logits,
                                   const double *target,
                                   const fastloss_kl_divergence_options *opts,
                                   double *loss_out, double *grad_out)

    ctypedef struct fastloss_entropy_options:
        size_t size
        int n_threads

    void fastloss_entropy_options_init(fastloss_entropy_options *opts)
    int fastloss_entropy_f32(int64_t n, int64_t c, const float *logits,
                             const fastloss_entropy_options *opts, float *loss_out,
                             float *grad_out)
    int fastloss_entropy_f64(int64_t n, int64_t c, const double *logits,
                             const fastloss_entropy_options *opts, double *loss_out,
                             double *grad_out)

    ctypedef struct fastloss_mse_loss_options:
        size_t size
        int n_threads

    void fastloss_mse_loss_options_init(fastloss_mse_loss_options *opts)
    int fastloss_mse_loss_f32(int64_t n, int64_t c, const float *input, const float *target,
                              const fastloss_mse_loss_options *opts, float *loss_out,
                              float *grad_out)
    int fastloss_mse_loss_f64(int64_t n, int64_t c, const double *input, const double *target,
                              const fastloss_mse_loss_options *opts, double *loss_out,
                              double *grad_out)
