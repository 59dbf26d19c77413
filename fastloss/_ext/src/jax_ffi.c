/* fastloss's XLA FFI handler (CPU): softmax cross-entropy with integer labels, per row.
 *
 * Written against XLA's C API only (xla/ffi/api/c_api.h, shipped by jaxlib: see
 * jax.ffi.include_dir()), so it is plain C and needs no C++ or XLA build.  fastloss.jax
 * compiles it at first use with the system C compiler, links it with libfastloss (its public
 * C API, include/fastloss.h, only), and registers `fastloss_jax_ce_index` with
 * jax.ffi.register_ffi_target(..., platform="cpu").
 *
 * Call (jax.ffi.ffi_call):
 *   args:  logits (..., C) f32 or f64; labels (...) s32 or s64
 *   rets:  loss of the logits' dtype [; grad (..., C) of the logits' dtype]
 *   attrs: ignore_index (s64), label_smoothing (f64), z_loss (f64), softcap (f64, 0: none),
 *          temperature (f64), n_threads (s64, <= 0: all cores),
 *          reduction (s64: 0 none, 1 sum, 2 mean)
 * The options are those of fastloss_cross_entropy_options: the per-row loss includes
 * z_loss * lse^2 (lse of the softcapped, tempered row) and the gradient its derivative.
 * reduction none: one loss per row (loss has the labels' shape) and, when a second result
 * is asked for, d loss_i / d logits_i, from one fused pass.  sum / mean: loss has G values
 * (G = its element count; G > 1 under jax.vmap): the rows are split in G equal consecutive
 * groups, each reduced on its own in a fixed order; "mean" divides by the number of rows
 * that are not ignored, and the gradient is scaled in the same pass (the options'
 * grad_scale).  Labels outside [0, C) that are not ignore_index, and invalid options, are
 * INVALID_ARGUMENT errors.
 *
 * The handler also answers XLA's metadata query (a call frame whose first extension is
 * XLA_FFI_Extension_Metadata), as the C++ wrapper in xla/ffi/api/api.h does: it reports
 * the FFI API version of the header it was compiled with.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "fastloss.h"
#include "xla/ffi/api/c_api.h"

/* The FFI ABI this file was written and tested against (fastloss.jax checks it too). */
#if XLA_FFI_API_MAJOR != 0 || XLA_FFI_API_MINOR < 1
#error "fastloss/_ext/src/jax_ffi.c needs XLA FFI API 0.x (x >= 1)"
#endif

int fastloss_jax_ffi_api_major(void) { return XLA_FFI_API_MAJOR; }
int fastloss_jax_ffi_api_minor(void) { return XLA_FFI_API_MINOR; }

static XLA_FFI_Error *fail(const XLA_FFI_Api *api, XLA_FFI_Error_Code code, const char *msg) {
    XLA_FFI_Error_Create_Args args;
    memset(&args, 0, sizeof args);
    args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
    args.message = msg; /* copied by XLA */
    args.errc = code;
    return api->XLA_FFI_Error_Create(&args);
}

/* XLA hands the gradient over as a fresh, untouched allocation: large ones come straight from
 * mmap, so writing them faults in 4 KiB pages one at a time (on virtual machines that costs
 * more than the kernel itself).  Asking for transparent huge pages on the whole 2 MiB pages
 * inside the buffer, before the kernel touches it, makes that 512 times fewer faults, as
 * NumPy does for its own large arrays.  A hint only: any failure is ignored. */
static void huge_pages_hint(void *data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t lo = ((uintptr_t)data + huge - 1) & ~(huge - 1);
    const uintptr_t hi = ((uintptr_t)data + bytes) & ~(huge - 1);
    if (bytes >= 4 * huge && hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)data;
    (void)bytes;
#endif
}

static XLA_FFI_Error *invalid(const XLA_FFI_Api *api, const char *msg) {
    return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, msg);
}

static XLA_FFI_Error *metadata(XLA_FFI_CallFrame *frame) {
    XLA_FFI_Metadata_Extension *ext = (XLA_FFI_Metadata_Extension *)frame->extension_start;
    if (ext->extension_base.struct_size < XLA_FFI_Metadata_Extension_STRUCT_SIZE ||
        ext->metadata == NULL || ext->metadata->struct_size < XLA_FFI_Metadata_STRUCT_SIZE)
        return invalid(frame->api, "fastloss: XLA's metadata structs are older than the "
                                   "FFI header this handler was compiled with");
    ext->metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
    ext->metadata->api_version.extension_start = NULL;
    ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
    ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
    ext->metadata->traits = 0;
    return NULL;
}

/* A scalar attribute by name (XLA sorts attributes by name; a linear scan is enough). */
static const XLA_FFI_Scalar *scalar_attr(const XLA_FFI_CallFrame *frame, const char *name,
                                         XLA_FFI_DataType dtype) {
    size_t len = strlen(name);
    for (int64_t i = 0; i < frame->attrs.size; ++i) {
        const XLA_FFI_ByteSpan *key = frame->attrs.names[i];
        if (key->len != len || memcmp(key->ptr, name, len) != 0) continue;
        if (frame->attrs.types[i] != XLA_FFI_AttrType_SCALAR) return NULL;
        const XLA_FFI_Scalar *s = (const XLA_FFI_Scalar *)frame->attrs.attrs[i];
        return s->dtype == dtype ? s : NULL;
    }
    return NULL;
}

static int64_t elements(const XLA_FFI_Buffer *b, int64_t first, int64_t last) {
    int64_t count = 1;
    for (int64_t d = first; d < last; ++d) count *= b->dims[d];
    return count;
}

/* THE call into fastloss's C API (the one place that changes with it): rows [0, n) of the
   logits x, their losses into loss (n values of the logits' dtype, may be NULL) and their
   gradient into grad (n*c, may be NULL). */
static int run_kernel(int f64, int64_t n, int64_t c, const void *x, const int64_t *labels,
                      const fastloss_cross_entropy_options *opts, void *loss, void *grad) {
    if (f64)
        return fastloss_cross_entropy_f64(n, c, (const double *)x, labels, opts,
                                          (double *)loss, (double *)grad);
    return fastloss_cross_entropy_f32(n, c, (const float *)x, labels, opts, (float *)loss,
                                      (float *)grad);
}

static XLA_FFI_Error *kernel_error(const XLA_FFI_Api *api, int status) {
    char msg[256];
    snprintf(msg, sizeof msg, "fastloss: %s", fastloss_strerror(status));
    return fail(api,
                status == FASTLOSS_E_MEMORY ? XLA_FFI_Error_Code_RESOURCE_EXHAUSTED
                : status == FASTLOSS_E_NULL ? XLA_FFI_Error_Code_INTERNAL
                                            : XLA_FFI_Error_Code_INVALID_ARGUMENT,
                msg);
}

XLA_FFI_Error *fastloss_jax_ce_index(XLA_FFI_CallFrame *frame) {
    const XLA_FFI_Api *api = frame->api;
    char msg[256];
    if (frame->extension_start != NULL &&
        frame->extension_start->type == XLA_FFI_Extension_Metadata)
        return metadata(frame);
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE)
        return invalid(api, "fastloss_jax_ce_index: called outside the execute stage");

    /* arguments */
    if (frame->args.size != 2 || frame->args.types[0] != XLA_FFI_ArgType_BUFFER ||
        frame->args.types[1] != XLA_FFI_ArgType_BUFFER)
        return invalid(api, "fastloss_jax_ce_index: expects 2 buffers (logits, labels)");
    const XLA_FFI_Buffer *x = (const XLA_FFI_Buffer *)frame->args.args[0];
    const XLA_FFI_Buffer *y = (const XLA_FFI_Buffer *)frame->args.args[1];
    if (x->dtype != XLA_FFI_DataType_F32 && x->dtype != XLA_FFI_DataType_F64)
        return invalid(api, "fastloss_jax_ce_index: logits must be float32 or float64");
    if (y->dtype != XLA_FFI_DataType_S32 && y->dtype != XLA_FFI_DataType_S64)
        return invalid(api, "fastloss_jax_ce_index: labels must be int32 or int64");
    if (x->rank < 1 || y->rank != x->rank - 1)
        return invalid(api, "fastloss_jax_ce_index: labels must have the logits' shape "
                            "without the class axis");
    for (int64_t d = 0; d < y->rank; ++d)
        if (y->dims[d] != x->dims[d])
            return invalid(api, "fastloss_jax_ce_index: labels must have the logits' "
                                "batch shape");
    const int f64 = x->dtype == XLA_FFI_DataType_F64;
    const size_t item = f64 ? sizeof(double) : sizeof(float);
    const int64_t n = elements(x, 0, x->rank - 1), c = x->dims[x->rank - 1];

    /* attributes */
    const XLA_FFI_Scalar *a_ignore = scalar_attr(frame, "ignore_index", XLA_FFI_DataType_S64);
    const XLA_FFI_Scalar *a_eps = scalar_attr(frame, "label_smoothing", XLA_FFI_DataType_F64);
    const XLA_FFI_Scalar *a_z = scalar_attr(frame, "z_loss", XLA_FFI_DataType_F64);
    const XLA_FFI_Scalar *a_cap = scalar_attr(frame, "softcap", XLA_FFI_DataType_F64);
    const XLA_FFI_Scalar *a_temp = scalar_attr(frame, "temperature", XLA_FFI_DataType_F64);
    const XLA_FFI_Scalar *a_threads = scalar_attr(frame, "n_threads", XLA_FFI_DataType_S64);
    const XLA_FFI_Scalar *a_reduction = scalar_attr(frame, "reduction", XLA_FFI_DataType_S64);
    if (!a_ignore || !a_eps || !a_z || !a_cap || !a_temp || !a_threads || !a_reduction)
        return invalid(api, "fastloss_jax_ce_index: needs attributes ignore_index (int64), "
                            "label_smoothing, z_loss, softcap, temperature (float64), "
                            "n_threads (int64), reduction (int64)");
    fastloss_cross_entropy_options opts;
    fastloss_cross_entropy_options_init(&opts);
    opts.ignore_index = *(const int64_t *)a_ignore->value;
    opts.label_smoothing = *(const double *)a_eps->value;
    opts.z_loss = *(const double *)a_z->value;
    opts.softcap = *(const double *)a_cap->value;
    opts.temperature = *(const double *)a_temp->value;
    const int64_t threads = *(const int64_t *)a_threads->value;
    opts.n_threads = threads > 0 ? (threads > 1 << 20 ? 1 << 20 : (int)threads) : 0;
    const int64_t reduction = *(const int64_t *)a_reduction->value;
    if (reduction < 0 || reduction > 2)
        return invalid(api, "fastloss_jax_ce_index: reduction must be 0, 1 or 2");

    /* results */
    if (frame->rets.size < 1 || frame->rets.size > 2)
        return invalid(api, "fastloss_jax_ce_index: returns loss, or loss and grad");
    for (int64_t r = 0; r < frame->rets.size; ++r)
        if (frame->rets.types[r] != XLA_FFI_RetType_BUFFER ||
            ((XLA_FFI_Buffer *)frame->rets.rets[r])->dtype != x->dtype)
            return invalid(api, "fastloss_jax_ce_index: results must be buffers of the "
                                "logits' dtype");
    XLA_FFI_Buffer *loss_out = (XLA_FFI_Buffer *)frame->rets.rets[0];
    XLA_FFI_Buffer *grad_out =
        frame->rets.size == 2 ? (XLA_FFI_Buffer *)frame->rets.rets[1] : NULL;
    const int64_t groups = elements(loss_out, 0, loss_out->rank);
    if (reduction == 0 ? groups != n : (groups < 1 || n % groups != 0))
        return invalid(api, "fastloss_jax_ce_index: the loss result has the wrong size");
    if (grad_out && elements(grad_out, 0, grad_out->rank) != n * c)
        return invalid(api, "fastloss_jax_ce_index: the grad result has the wrong size");
    const int64_t rows = reduction == 0 ? 1 : n / groups; /* rows per group */

    /* work space: labels as int64; per-row losses (reduction none: the result itself) */
    const size_t n1 = (size_t)(n ? n : 1);
    int64_t *labels64 = NULL;
    const int64_t *labels = (const int64_t *)y->data;
    void *loss = reduction == 0 ? loss_out->data : malloc(n1 * item);
    int ok = loss != NULL;
    if (y->dtype == XLA_FFI_DataType_S32) ok &= (labels = labels64 = malloc(n1 * 8)) != NULL;
    XLA_FFI_Error *err = NULL;
    if (!ok) err = fail(api, XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "fastloss: out of memory");

    /* check (and widen) the labels */
    for (int64_t i = 0; !err && i < n; ++i) {
        const int64_t t = labels64 ? (int64_t)((const int32_t *)y->data)[i] : labels[i];
        if (labels64) labels64[i] = t;
        if (t != opts.ignore_index && (t < 0 || t >= c)) {
            snprintf(msg, sizeof msg,
                     "fastloss: label %lld at flat position %lld is out of range for %lld "
                     "classes", (long long)t, (long long)i, (long long)c);
            err = invalid(api, msg);
        }
    }
    if (!err && grad_out) huge_pages_hint(grad_out->data, (size_t)(n * c) * item);
    /* the kernel: one call, or ("mean") one per group with grad_scale 1 / (counted rows) */
    const int per_group = reduction == 2 && grad_out != NULL && groups > 1;
    for (int64_t g = 0; !err && g < (per_group ? groups : 1); ++g) {
        const int64_t lo = per_group ? g * rows : 0, hi = per_group ? lo + rows : n;
        if (reduction == 2 && grad_out) {
            int64_t counted = 0;
            for (int64_t i = lo; i < hi; ++i) counted += labels[i] != opts.ignore_index;
            /* all ignored: every gradient row is 0 whatever the scale */
            opts.grad_scale = counted ? 1.0 / (double)counted : 1.0;
        }
        const int status = run_kernel(f64, hi - lo, c, (const char *)x->data + lo * c * item,
                                      labels + lo, &opts, (char *)loss + lo * item,
                                      grad_out ? (char *)grad_out->data + lo * c * item : NULL);
        if (status != FASTLOSS_OK) err = kernel_error(api, status);
    }
    if (!err && reduction != 0) {
        /* the groups' losses, reduced in a fixed order (bit-identical for any n_threads) */
        for (int64_t g = 0; g < groups; ++g) {
            double value = 0.0;
            int64_t counted = 0;
            for (int64_t i = g * rows; i < (g + 1) * rows; ++i) {
                value += f64 ? ((const double *)loss)[i] : (double)((const float *)loss)[i];
                counted += labels[i] != opts.ignore_index;
            }
            if (reduction == 2) value *= 1.0 / (double)counted; /* all ignored: NaN */
            if (f64)
                ((double *)loss_out->data)[g] = value;
            else
                ((float *)loss_out->data)[g] = (float)value;
        }
    }
    free(labels64);
    if (loss != loss_out->data) free(loss);
    return err;
}

/* ---------------------------------------------------------------------------------------
 * fastloss_jax_rows: every other loss, per row (or per element), reduction "none" only
 * (fastloss.jax reduces in JAX, where jax.vmap batches the reduction for free).
 *
 *   args:  logits (..., C) f32/f64 [; target: the logits' shape and dtype, or, for
 *          softmax MSE with class indices, the batch shape in s32/s64]
 *   rets:  loss (the batch shape; the logits' shape for the elementwise kinds)
 *          [; grad (..., C)]
 *   attrs: kind (s64, ROWS_* below), n_threads (s64), log_target (s64, KL),
 *          label_smoothing, z_loss, softcap, temperature (f64, cross-entropy)
 */
enum { ROWS_CE_PROB = 1, ROWS_BCE, ROWS_MSE, ROWS_KL, ROWS_SOFTMAX_MSE, ROWS_ENTROPY };


static int run_rows(int kind, int f64, int64_t n, int64_t c, const void *x, const void *t,
                    const int64_t *labels, int threads, int64_t log_target,
                    const fastloss_cross_entropy_options *ce, void *loss, void *grad) {
    switch (kind) {
    case ROWS_CE_PROB:
        return f64 ? fastloss_cross_entropy_probs_f64(n, c, x, t, ce, loss, grad)
                   : fastloss_cross_entropy_probs_f32(n, c, x, t, ce, loss, grad);
    case ROWS_BCE: {
        fastloss_binary_cross_entropy_options o;
        fastloss_binary_cross_entropy_options_init(&o);
        o.n_threads = threads;
        return f64 ? fastloss_binary_cross_entropy_with_logits_f64(n, c, x, t, &o, loss, grad)
                   : fastloss_binary_cross_entropy_with_logits_f32(n, c, x, t, &o, loss, grad);
    }
    case ROWS_MSE: {
        fastloss_mse_loss_options o;
        fastloss_mse_loss_options_init(&o);
        o.n_threads = threads;
        return f64 ? fastloss_mse_loss_f64(n, c, x, t, &o, loss, grad)
                   : fastloss_mse_loss_f32(n, c, x, t, &o, loss, grad);
    }
    case ROWS_KL: {
        fastloss_kl_divergence_options o;
        fastloss_kl_divergence_options_init(&o);
        o.n_threads = threads;
        o.log_target = log_target != 0;
        return f64 ? fastloss_kl_divergence_f64(n, c, x, t, &o, loss, grad)
                   : fastloss_kl_divergence_f32(n, c, x, t, &o, loss, grad);
    }
    case ROWS_SOFTMAX_MSE: {
        fastloss_softmax_mse_options o;
        fastloss_softmax_mse_options_init(&o);
        o.n_threads = threads;
        if (labels)
            return f64 ? fastloss_softmax_mse_f64(n, c, x, labels, &o, loss, grad)
                       : fastloss_softmax_mse_f32(n, c, x, labels, &o, loss, grad);
        return f64 ? fastloss_softmax_mse_probs_f64(n, c, x, t, &o, loss, grad)
                   : fastloss_softmax_mse_probs_f32(n, c, x, t, &o, loss, grad);
    }
    case ROWS_ENTROPY: {
        fastloss_entropy_options o;
        fastloss_entropy_options_init(&o);
        o.n_threads = threads;
        return f64 ? fastloss_entropy_f64(n, c, x, &o, loss, grad)
                   : fastloss_entropy_f32(n, c, x, &o, loss, grad);
    }
    }
    return FASTLOSS_E_OPTIONS;
}

static double f64_attr(const XLA_FFI_CallFrame *frame, const char *name, double fallback) {
    const XLA_FFI_Scalar *s = scalar_attr(frame, name, XLA_FFI_DataType_F64);
    return s ? *(const double *)s->value : fallback;
}

static int64_t s64_attr(const XLA_FFI_CallFrame *frame, const char *name, int64_t fallback) {
    const XLA_FFI_Scalar *s = scalar_attr(frame, name, XLA_FFI_DataType_S64);
    return s ? *(const int64_t *)s->value : fallback;
}

XLA_FFI_Error *fastloss_jax_rows(XLA_FFI_CallFrame *frame) {
    const XLA_FFI_Api *api = frame->api;
    char msg[256];
    if (frame->extension_start != NULL &&
        frame->extension_start->type == XLA_FFI_Extension_Metadata)
        return metadata(frame);
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE)
        return invalid(api, "fastloss_jax_rows: called outside the execute stage");

    const int64_t kind = s64_attr(frame, "kind", 0);
    if (kind < ROWS_CE_PROB || kind > ROWS_ENTROPY)
        return invalid(api, "fastloss_jax_rows: unknown kind");
    const int elementwise = kind == ROWS_BCE || kind == ROWS_MSE;
    const int64_t n_args = kind == ROWS_ENTROPY ? 1 : 2;
    if (frame->args.size != n_args)
        return invalid(api, "fastloss_jax_rows: wrong number of arguments");
    for (int64_t i = 0; i < n_args; ++i)
        if (frame->args.types[i] != XLA_FFI_ArgType_BUFFER)
            return invalid(api, "fastloss_jax_rows: arguments must be buffers");
    const XLA_FFI_Buffer *x = (const XLA_FFI_Buffer *)frame->args.args[0];
    const XLA_FFI_Buffer *y = n_args == 2 ? (const XLA_FFI_Buffer *)frame->args.args[1] : NULL;
    if (x->dtype != XLA_FFI_DataType_F32 && x->dtype != XLA_FFI_DataType_F64)
        return invalid(api, "fastloss_jax_rows: logits must be float32 or float64");
    const int f64 = x->dtype == XLA_FFI_DataType_F64;
    const size_t item = f64 ? 8 : 4;
    if (!elementwise && x->rank < 1)
        return invalid(api, "fastloss_jax_rows: logits need a class axis");
    const int64_t c = x->rank ? x->dims[x->rank - 1] : 1;
    const int64_t n = x->rank ? elements(x, 0, x->rank - 1) : 1;

    /* the target: the logits' shape and dtype, or (softmax MSE) class indices */
    const int indices = y && (y->dtype == XLA_FFI_DataType_S32 || y->dtype == XLA_FFI_DataType_S64);
    if (indices && kind != ROWS_SOFTMAX_MSE)
        return invalid(api, "fastloss_jax_rows: only softmax MSE takes class indices");
    if (y && !indices) {
        if (y->dtype != x->dtype || y->rank != x->rank)
            return invalid(api, "fastloss_jax_rows: target must have the logits' shape and "
                                "dtype");
        for (int64_t d = 0; d < x->rank; ++d)
            if (y->dims[d] != x->dims[d])
                return invalid(api, "fastloss_jax_rows: target must have the logits' shape");
    }
    if (indices && (y->rank != x->rank - 1 || elements(y, 0, y->rank) != n))
        return invalid(api, "fastloss_jax_rows: class indices must have the batch shape");

    /* results */
    if (frame->rets.size < 1 || frame->rets.size > 2)
        return invalid(api, "fastloss_jax_rows: returns loss, or loss and grad");
    for (int64_t r = 0; r < frame->rets.size; ++r)
        if (frame->rets.types[r] != XLA_FFI_RetType_BUFFER ||
            ((XLA_FFI_Buffer *)frame->rets.rets[r])->dtype != x->dtype)
            return invalid(api, "fastloss_jax_rows: results must be buffers of the logits' "
                                "dtype");
    XLA_FFI_Buffer *loss_out = (XLA_FFI_Buffer *)frame->rets.rets[0];
    XLA_FFI_Buffer *grad_out =
        frame->rets.size == 2 ? (XLA_FFI_Buffer *)frame->rets.rets[1] : NULL;
    if (elements(loss_out, 0, loss_out->rank) != (elementwise ? n * c : n))
        return invalid(api, "fastloss_jax_rows: the loss result has the wrong size");
    if (grad_out && elements(grad_out, 0, grad_out->rank) != n * c)
        return invalid(api, "fastloss_jax_rows: the grad result has the wrong size");

    /* options */
    const int64_t threads64 = s64_attr(frame, "n_threads", 0);
    const int threads = threads64 > 0 ? (threads64 > 1 << 20 ? 1 << 20 : (int)threads64) : 0;
    fastloss_cross_entropy_options ce;
    fastloss_cross_entropy_options_init(&ce);
    ce.n_threads = threads;
    ce.label_smoothing = f64_attr(frame, "label_smoothing", 0.0);
    ce.z_loss = f64_attr(frame, "z_loss", 0.0);
    ce.softcap = f64_attr(frame, "softcap", 0.0);
    ce.temperature = f64_attr(frame, "temperature", 1.0);

    /* class indices, checked and widened to int64 */
    int64_t *labels = NULL;
    if (indices) {
        labels = malloc((size_t)(n ? n : 1) * 8);
        if (!labels) return fail(api, XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "fastloss: out of memory");
        for (int64_t i = 0; i < n; ++i) {
            const int64_t t = y->dtype == XLA_FFI_DataType_S32 ? (int64_t)((const int32_t *)y->data)[i]
                                                              : ((const int64_t *)y->data)[i];
            if (t < 0 || t >= c) {
                free(labels);
                snprintf(msg, sizeof msg,
                         "fastloss: label %lld at flat position %lld is out of range for %lld "
                         "classes", (long long)t, (long long)i, (long long)c);
                return invalid(api, msg);
            }
            labels[i] = t;
        }
    }
    if (grad_out) huge_pages_hint(grad_out->data, (size_t)(n * c) * item);
    const int status = n == 0 || c == 0 ? FASTLOSS_OK
        : run_rows((int)kind, f64, n, c, x->data, y && !indices ? y->data : NULL, labels,
                   threads, s64_attr(frame, "log_target", 0), &ce, loss_out->data,
                   grad_out ? grad_out->data : NULL);
    free(labels);
    return status == FASTLOSS_OK ? NULL : kernel_error(api, status);
}
