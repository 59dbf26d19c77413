/* The checked C API of include/fastloss.h: options, validation, then the row kernels of
 * rows.h.  The functions themselves are in api.inc, instantiated for float and double. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "rows.h"

const char *fastloss_strerror(int code) {
    switch (code) {
        case FASTLOSS_OK: return "success";
        case FASTLOSS_E_NULL: return "a required pointer is NULL";
        case FASTLOSS_E_SHAPE: return "invalid shape: n must be >= 0 and c >= 1";
        case FASTLOSS_E_TARGET:
            return "a class index is outside [0, c) and is not ignore_index";
        case FASTLOSS_E_SMOOTHING: return "label_smoothing must be in [0, 1]";
        case FASTLOSS_E_MEMORY: return "out of memory";
        case FASTLOSS_E_OPTIONS:
            return "invalid options size: 0, or larger than this fastloss library knows "
                   "(a program built against a newer fastloss.h?)";
        case FASTLOSS_E_Z_LOSS: return "z_loss must be finite and >= 0";
        case FASTLOSS_E_SOFTCAP: return "softcap must be finite and >= 0 (0: no softcap)";
        case FASTLOSS_E_TEMPERATURE: return "temperature must be finite and > 0";
        case FASTLOSS_E_THREADS: return "n_threads must be >= 0 (0: every usable CPU)";
        case FASTLOSS_E_HESSIAN_SCALE: return "hessian_scale must be finite and > 0";
        case FASTLOSS_E_MIN_HESSIAN: return "min_hessian must be finite and >= 0";
        case FASTLOSS_E_GRAD_SCALE: return "grad_scale must be finite";
        default: return "unknown fastloss error code";
    }
}

const char *fastloss_version(void) { return FASTLOSS_VERSION; }

/* ------------------------------------------------------------------ options */

/* The end (offset + size) of a member: a smaller struct holds the members that end within
   its size. */
#define FL_END(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/* Copy the members of the caller's struct `in` (of in->size bytes, an older or the current
   layout) that end within that size over `out`, which holds the defaults.  ends: the end of
   every member after size, in order. */
static int read_options(void *out, size_t known_size, const void *in, const size_t *ends,
                        size_t n_ends) {
    size_t size;
    memcpy(&size, in, sizeof size);
    if (size < sizeof(size_t) || size > known_size) return FASTLOSS_E_OPTIONS;
    size_t end = sizeof(size_t);
    for (size_t k = 0; k < n_ends && ends[k] <= size; ++k) end = ends[k];
    memcpy((char *)out + sizeof(size_t), (const char *)in + sizeof(size_t),
           end - sizeof(size_t));
    return FASTLOSS_OK;
}

static int check_threads(int n_threads) {
    return n_threads < 0 ? FASTLOSS_E_THREADS : FASTLOSS_OK;
}

void fastloss_cross_entropy_options_init(fastloss_cross_entropy_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
    opts->weight = NULL;
    opts->ignore_index = -100;
    opts->label_smoothing = 0.0;
    opts->z_loss = 0.0;
    opts->softcap = 0.0;
    opts->temperature = 1.0;
    opts->grad_scale = 1.0;
}

static int ce_options(const fastloss_cross_entropy_options *in,
                      fastloss_cross_entropy_options *o) {
    typedef fastloss_cross_entropy_options S;
    static const size_t ends[] = {FL_END(S, n_threads),       FL_END(S, weight),
                                  FL_END(S, ignore_index),    FL_END(S, label_smoothing),
                                  FL_END(S, z_loss),          FL_END(S, softcap),
                                  FL_END(S, temperature),     FL_END(S, grad_scale)};
    fastloss_cross_entropy_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    if (check_threads(o->n_threads)) return FASTLOSS_E_THREADS;
    if (!(o->label_smoothing >= 0.0 && o->label_smoothing <= 1.0)) return FASTLOSS_E_SMOOTHING;
    if (!(o->z_loss >= 0.0 && o->z_loss < INFINITY)) return FASTLOSS_E_Z_LOSS;
    if (!(o->softcap >= 0.0 && o->softcap < INFINITY)) return FASTLOSS_E_SOFTCAP;
    if (!(o->temperature > 0.0 && o->temperature < INFINITY)) return FASTLOSS_E_TEMPERATURE;
    if (!(fabs(o->grad_scale) < INFINITY)) return FASTLOSS_E_GRAD_SCALE;
    return FASTLOSS_OK;
}

void fastloss_binary_cross_entropy_options_init(fastloss_binary_cross_entropy_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
    opts->weight = NULL;
    opts->pos_weight = NULL;
}

static int bce_options(const fastloss_binary_cross_entropy_options *in,
                       fastloss_binary_cross_entropy_options *o) {
    typedef fastloss_binary_cross_entropy_options S;
    static const size_t ends[] = {FL_END(S, n_threads), FL_END(S, weight),
                                  FL_END(S, pos_weight)};
    fastloss_binary_cross_entropy_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    return check_threads(o->n_threads);
}

void fastloss_softmax_mse_options_init(fastloss_softmax_mse_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
}

static int softmax_mse_options(const fastloss_softmax_mse_options *in,
                               fastloss_softmax_mse_options *o) {
    static const size_t ends[] = {FL_END(fastloss_softmax_mse_options, n_threads)};
    fastloss_softmax_mse_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    return check_threads(o->n_threads);
}

void fastloss_kl_divergence_options_init(fastloss_kl_divergence_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
    opts->log_target = 0;
}

static int kl_options(const fastloss_kl_divergence_options *in,
                      fastloss_kl_divergence_options *o) {
    static const size_t ends[] = {FL_END(fastloss_kl_divergence_options, n_threads),
                                  FL_END(fastloss_kl_divergence_options, log_target)};
    fastloss_kl_divergence_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    return check_threads(o->n_threads);
}

void fastloss_entropy_options_init(fastloss_entropy_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
}

static int entropy_options(const fastloss_entropy_options *in, fastloss_entropy_options *o) {
    static const size_t ends[] = {FL_END(fastloss_entropy_options, n_threads)};
    fastloss_entropy_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    return check_threads(o->n_threads);
}

void fastloss_mse_loss_options_init(fastloss_mse_loss_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
}

static int mse_options(const fastloss_mse_loss_options *in, fastloss_mse_loss_options *o) {
    static const size_t ends[] = {FL_END(fastloss_mse_loss_options, n_threads)};
    fastloss_mse_loss_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    return check_threads(o->n_threads);
}

void fastloss_grad_hess_options_init(fastloss_grad_hess_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->n_threads = 0;
    opts->sample_weight = NULL;
    opts->label_smoothing = 0.0;
    opts->hessian_scale = 1.0;
    opts->min_hessian = 0.0;
}

static int grad_hess_options(const fastloss_grad_hess_options *in,
                             fastloss_grad_hess_options *o) {
    typedef fastloss_grad_hess_options S;
    static const size_t ends[] = {FL_END(S, n_threads),       FL_END(S, sample_weight),
                                  FL_END(S, label_smoothing), FL_END(S, hessian_scale),
                                  FL_END(S, min_hessian)};
    fastloss_grad_hess_options_init(o);
    if (in) {
        const int status = read_options(o, sizeof *o, in, ends, sizeof ends / sizeof *ends);
        if (status) return status;
    }
    if (check_threads(o->n_threads)) return FASTLOSS_E_THREADS;
    if (!(o->label_smoothing >= 0.0 && o->label_smoothing <= 1.0)) return FASTLOSS_E_SMOOTHING;
    if (!(o->hessian_scale > 0.0 && o->hessian_scale < INFINITY))
        return FASTLOSS_E_HESSIAN_SCALE;
    if (!(o->min_hessian >= 0.0 && o->min_hessian < INFINITY)) return FASTLOSS_E_MIN_HESSIAN;
    return FASTLOSS_OK;
}

/* ------------------------------------------------------------------ argument checks */

static int check_shape(int64_t n, int64_t c, const void *x) {
    if (n < 0 || c < 1) return FASTLOSS_E_SHAPE;
    if (n > 0 && !x) return FASTLOSS_E_NULL;
    return FASTLOSS_OK;
}

static int check_input(int64_t n, const void *p) {
    return n > 0 && !p ? FASTLOSS_E_NULL : FASTLOSS_OK;
}

/* Every class index in [0, c), or (when has_ignore) equal to ignore_index. */
static int check_targets(int64_t n, int64_t c, const int64_t *target, int has_ignore,
                         int64_t ignore_index) {
    if (n > 0 && !target) return FASTLOSS_E_NULL;
    if (fl_indices_below(n, target, c)) return FASTLOSS_OK; /* the common case, vectorised */
    for (int64_t i = 0; i < n; ++i)
        if ((target[i] < 0 || target[i] >= c) && !(has_ignore && target[i] == ignore_index))
            return FASTLOSS_E_TARGET;
    return FASTLOSS_OK;
}

/* A buffer of count doubles for the kernels' losses (NULL when not wanted or count == 0). */
static int loss_buffer(int wanted, int64_t count, double **out) {
    *out = NULL;
    if (!wanted || count <= 0) return FASTLOSS_OK;
    *out = (double *)malloc((size_t)count * sizeof(double));
    return *out ? FASTLOSS_OK : FASTLOSS_E_MEMORY;
}

/* ------------------------------------------------------------------ the instantiations */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#define T float
#define FN(name) CAT(name, f32)
#include "api.inc"
#undef T
#undef FN

#define T double
#define FN(name) CAT(name, f64)
#include "api.inc"
#undef T
#undef FN
