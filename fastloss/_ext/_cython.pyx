# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The ``cython`` backend: the kernel protocol (docs/design.md section 2) over the C kernels.

Typed memoryviews in (the buffer protocol for the common cross-entropy call,
:func:`cross_entropy_index_fast`), the row kernels of src/ (declared in src/rows.h) out.
The GIL is released around every kernel; arguments were validated by
:mod:`fastloss._validate`, so nothing is checked here beyond what the memoryviews (and the
buffer protocol's shape and item-size checks) check.  There is no
module state: ``n_threads`` is an argument of every kernel, passed into the C call, which
starts its own threads and joins them before it returns (fork-safe, thread-safe).
"""

import numpy as np

from fastloss._numpy_kernels import as_rows, empty  # host memory, as the reference

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.stdint cimport int64_t, uint16_t

from fastloss._ext.fastloss cimport (
    FASTLOSS_E_MEMORY,
    FASTLOSS_OK,
    fastloss_has_threads,
    fastloss_max_threads,
    fastloss_strerror,
)

# The private row kernels; tests/test_c_api.py checks these declarations against src/rows.h.
cdef extern from "rows.h" nogil:
    int fl_cross_entropy_rows_f32(int64_t n, int64_t c, const float *x,
                                  const int64_t *target_index, const float *target_prob,
                                  const double *weight, int64_t ignore_index,
                                  double label_smoothing, double softcap,
                                  double inv_temperature, double z_grad,
                                  const double *row_scale, double scale, double *loss,
                                  double *lse, float *grad, int n_threads)
    int fl_cross_entropy_rows_f64(int64_t n, int64_t c, const double *x,
                                  const int64_t *target_index, const double *target_prob,
                                  const double *weight, int64_t ignore_index,
                                  double label_smoothing, double softcap,
                                  double inv_temperature, double z_grad,
                                  const double *row_scale, double scale, double *loss,
                                  double *lse, double *grad, int n_threads)
    int fl_cross_entropy_grad_hess_rows_f32(int64_t n, int64_t c, const float *x,
                                            const int64_t *target_index,
                                            const float *target_prob,
                                            const double *sample_weight,
                                            double label_smoothing, double hessian_scale,
                                            double min_hessian, float *grad, int64_t grad_rs,
                                            int64_t grad_cs, float *hess, int64_t hess_rs,
                                            int64_t hess_cs, int n_threads)
    int fl_cross_entropy_grad_hess_rows_f64(int64_t n, int64_t c, const double *x,
                                            const int64_t *target_index,
                                            const double *target_prob,
                                            const double *sample_weight,
                                            double label_smoothing, double hessian_scale,
                                            double min_hessian, double *grad, int64_t grad_rs,
                                            int64_t grad_cs, double *hess, int64_t hess_rs,
                                            int64_t hess_cs, int n_threads)
    int fl_kl_divergence_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                                  int log_target, const double *row_scale, double scale,
                                  double *loss, float *grad, int n_threads)
    int fl_kl_divergence_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                                  int log_target, const double *row_scale, double scale,
                                  double *loss, double *grad, int n_threads)
    int fl_softmax_mse_rows_f32(int64_t n, int64_t c, const float *x,
                                const int64_t *target_index, const float *target_prob,
                                const double *row_scale, double scale, double *loss,
                                float *grad, int n_threads)
    int fl_softmax_mse_rows_f64(int64_t n, int64_t c, const double *x,
                                const int64_t *target_index, const double *target_prob,
                                const double *row_scale, double scale, double *loss,
                                double *grad, int n_threads)
    int fl_entropy_rows_f32(int64_t n, int64_t c, const float *x, const double *row_scale,
                            double scale, double *loss, float *grad, int n_threads)
    int fl_entropy_rows_f64(int64_t n, int64_t c, const double *x, const double *row_scale,
                            double scale, double *loss, double *grad, int n_threads)
    int fl_bce_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                        const double *weight, int64_t weight_rs, int64_t weight_cs,
                        const double *pos_weight, const double *scale, int64_t scale_rs,
                        int64_t scale_cs, double *loss, int row_sums, float *grad,
                        int n_threads)
    int fl_bce_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                        const double *weight, int64_t weight_rs, int64_t weight_cs,
                        const double *pos_weight, const double *scale, int64_t scale_rs,
                        int64_t scale_cs, double *loss, int row_sums, double *grad,
                        int n_threads)
    int fl_bce_grad_hess_rows_f32(int64_t n, const float *x, const float *target,
                                  const double *sample_weight, double hessian_scale,
                                  double min_hessian, float *grad, float *hess, int n_threads)
    int fl_bce_grad_hess_rows_f64(int64_t n, const double *x, const double *target,
                                  const double *sample_weight, double hessian_scale,
                                  double min_hessian, double *grad, double *hess,
                                  int n_threads)
    int fl_mse_rows_f32(int64_t n, int64_t c, const float *x, const float *target,
                        const double *scale, int64_t scale_rs, int64_t scale_cs,
                        double *loss, int row_sums, float *grad, int n_threads)
    int fl_mse_rows_f64(int64_t n, int64_t c, const double *x, const double *target,
                        const double *scale, int64_t scale_rs, int64_t scale_cs,
                        double *loss, int row_sums, double *grad, int n_threads)
    int fl_softmax_rows_f32(int64_t n, int64_t c, const float *x, float *out, int log_,
                            int n_threads)
    int fl_softmax_rows_f64(int64_t n, int64_t c, const double *x, double *out, int log_,
                            int n_threads)
    int fl_logsumexp_rows_f32(int64_t n, int64_t c, const float *x, double *out,
                              int n_threads)
    int fl_logsumexp_rows_f64(int64_t n, int64_t c, const double *x, double *out,
                              int n_threads)

    int fl_cross_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                  const int64_t *target_index, int target_format,
                                  const void *target_prob, const double *weight,
                                  int64_t ignore_index, double label_smoothing,
                                  double softcap, double inv_temperature, double z_grad,
                                  const double *row_scale, double scale, double *loss,
                                  double *lse, uint16_t *grad, int n_threads)
    int fl_indices_below(int64_t n, const int64_t *target, int64_t c)
    int fl_kl_divergence_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                  int target_format, const void *target, int log_target,
                                  const double *row_scale, double scale, double *loss,
                                  uint16_t *grad, int n_threads)
    int fl_softmax_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                                const int64_t *target_index, int target_format,
                                const void *target_prob, const double *row_scale, double scale,
                                double *loss, uint16_t *grad, int n_threads)
    int fl_entropy_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                            const double *row_scale, double scale, double *loss, uint16_t *grad,
                            int n_threads)
    int fl_bce_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                        int target_format, const void *target, const double *weight,
                        int64_t weight_rs, int64_t weight_cs, const double *pos_weight,
                        const double *scale, int64_t scale_rs, int64_t scale_cs,
                        double *loss, int row_sums, uint16_t *grad, int n_threads)
    int fl_mse_rows_h16(int64_t n, int64_t c, int format, const uint16_t *x,
                        int target_format, const void *target, const double *scale,
                        int64_t scale_rs, int64_t scale_cs, double *loss, int row_sums,
                        uint16_t *grad, int n_threads)
    void fl_half_to_float(int64_t n, int format, const uint16_t *src, float *dst)
    void fl_float_to_half(int64_t n, int format, const float *src, uint16_t *dst)
    int fl_wide_vectors()

ctypedef fused real:
    float
    double

ACCEPTS_DEVICE_ARRAYS = False

# The kernels that read 16-bit logits (bfloat16, float16) in place and write a 16-bit
# gradient (src/fastloss.c); the driver gives the others float32 rows.
NATIVE_HALF = frozenset({"cross_entropy", "kl_divergence", "softmax_mse", "entropy",
                         "binary_cross_entropy", "mse"})


cdef int _half_format(dtype):
    """1 for bfloat16 (ml_dtypes), 2 for float16, 0 for the other dtypes."""
    if dtype.itemsize != 2:
        return 0
    if dtype == np.float16:
        return 2
    return 1 if dtype.name == "bfloat16" else 0


cdef inline uint16_t *_bits(grad) except? NULL:
    cdef uint16_t[:, ::1] g
    if grad is None:
        return NULL
    g = grad.view(np.uint16)
    return &g[0, 0]


cdef inline const uint16_t *_bits_in(x) except? NULL:
    cdef const uint16_t[:, ::1] v = x.view(np.uint16)
    return &v[0, 0]


cdef inline const void *_probs(t, int *fmt) except? NULL:
    """A (N, C) float target (probabilities, BCE's and MSE's): float32, or 16-bit (its
    format into fmt)."""
    cdef const float[:, ::1] f
    fmt[0] = _half_format(t.dtype)
    if fmt[0]:
        return _bits_in(t)
    f = t
    return &f[0, 0]


def unavailable_reason():
    return None


def wide_vectors():
    """Whether the kernels' 512-bit variant may run here (AVX-512, FASTLOSS_NO_AVX512)."""
    return bool(fl_wide_vectors())


def threads():
    """``(built with threads, the number of usable CPUs)``."""
    return bool(fastloss_has_threads()), fastloss_max_threads()


cdef inline int _check(int status) except -1:
    if status == FASTLOSS_E_MEMORY:
        raise MemoryError("fastloss: out of memory for a thread's scratch buffer")
    if status != FASTLOSS_OK:
        raise RuntimeError(fastloss_strerror(status).decode())
    return 0


cdef inline const double *_opt(const double[::1] a) noexcept:
    if a is None:
        return NULL
    return &a[0]


cdef inline double *_out(double[::1] a) noexcept:
    return NULL if a is None else &a[0]


cdef inline const double *_opt2(const double[:, :] a) noexcept:
    if a is None or a.shape[0] == 0 or a.shape[1] == 0:
        return NULL
    return &a[0, 0]


cdef inline int64_t _stride(const double[:, :] a, int axis) noexcept:
    return 0 if a is None else a.strides[axis] // <int64_t>sizeof(double)


# ------------------------------------------------------------------ cross-entropy

cdef tuple _row_scale(scale):
    """The row losses' ``scale`` (kernel protocol): an array of each row's factor, None (1),
    or one float for every row (a mean's 1 / N, passed to the kernels without an array).
    Returns ``(uniform, array or None)``."""
    if isinstance(scale, float):
        return float(scale), None
    return 1.0, scale


cdef int _cross_entropy(const real[:, ::1] x, target, const double[::1] weight,
                        int64_t ignore_index, double label_smoothing, double softcap,
                        double inv_temperature, double z_grad, const double[::1] scale,
                        double uniform,
                        double[::1] loss, double[::1] lse, real[:, ::1] grad,
                        int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const int64_t[::1] index
    cdef const real[:, ::1] probs
    cdef const int64_t *ip = NULL
    cdef const real *pp = NULL
    cdef const double *w = _opt(weight)
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef double *ls = _out(lse)
    cdef int status
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        probs = target
        pp = &probs[0, 0]
    with nogil:
        if real is float:
            status = fl_cross_entropy_rows_f32(n, c, &x[0, 0], ip, pp, w, ignore_index,
                                               label_smoothing, softcap, inv_temperature,
                                               z_grad, sc, uniform, lo, ls, g, n_threads)
        else:
            status = fl_cross_entropy_rows_f64(n, c, &x[0, 0], ip, pp, w, ignore_index,
                                               label_smoothing, softcap, inv_temperature,
                                               z_grad, sc, uniform, lo, ls, g, n_threads)
    return _check(status)

cdef int _cross_entropy_h16(int fmt, x, target, const double[::1] weight,
                            int64_t ignore_index, double label_smoothing, double softcap,
                            double inv_temperature, double z_grad, const double[::1] scale,
                            double uniform,
                            double[::1] loss, double[::1] lse, grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef const int64_t[::1] index
    cdef const int64_t *ip = NULL
    cdef const void *pp = NULL
    cdef int tfmt = 0
    cdef const double *w = _opt(weight)
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef double *ls = _out(lse)
    cdef int status
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        pp = _probs(target, &tfmt)
    with nogil:
        status = fl_cross_entropy_rows_h16(n, c, fmt, xp, ip, tfmt, pp, w, ignore_index,
                                           label_smoothing, softcap, inv_temperature, z_grad,
                                           sc, uniform, lo, ls, g, n_threads)
    return _check(status)


def cross_entropy(x, target, weight, ignore_index, label_smoothing, softcap, inv_temperature,
                  z_grad, scale, loss, lse, grad, n_threads):
    """Per-row cross-entropy of ``x`` against class indices (N,) or probabilities (N, C).

    ``weight`` (C,) float64 or None; ``softcap`` 0 for none; ``inv_temperature`` 1 for none;
    ``z_grad`` adds ``scale_i * z_grad * 2 * lse_i * p_ic`` to the gradient; ``lse`` (N,)
    float64 or None receives the logsumexp of each transformed row (0 when ignored).
    """
    cdef int fmt = _half_format(x.dtype)
    uniform, scale = _row_scale(scale)
    if fmt:
        _cross_entropy_h16(fmt, x, target, weight, ignore_index, label_smoothing, softcap,
                           inv_temperature, z_grad, scale, uniform, loss, lse, grad, n_threads)
    elif x.dtype == np.float32:
        _cross_entropy[float](x, target, weight, ignore_index, label_smoothing, softcap,
                              inv_temperature, z_grad, scale, uniform, loss, lse, grad,
                              n_threads)
    else:
        _cross_entropy[double](x, target, weight, ignore_index, label_smoothing, softcap,
                               inv_temperature, z_grad, scale, uniform, loss, lse, grad,
                               n_threads)


cdef object _ce_index_fast(Py_buffer *bx, Py_buffer *bt, Py_buffer *bg, double scale,
                           int n_threads):
    cdef int64_t n = bx.shape[0], c = bx.shape[1]
    cdef const int64_t *target = <const int64_t *>bt.buf
    if (bx.ndim != 2 or bx.itemsize not in (4, 8) or bt.ndim != 1 or bt.itemsize != 8
            or bt.shape[0] != n or (bg != NULL and (bg.ndim != 2 or bg.shape[0] != n
                                                    or bg.shape[1] != c
                                                    or bg.itemsize != bx.itemsize))):
        raise ValueError("cross_entropy_index_fast: arrays of the wrong shape or dtype")
    if not fl_indices_below(n, target, c):  # with the GIL: a fraction of a ns a row
        return None
    loss = np.empty(n)
    cdef Py_buffer bl
    PyObject_GetBuffer(loss, &bl, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
    cdef double *lo = <double *>bl.buf
    cdef void *g = NULL if bg == NULL else bg.buf
    cdef int status
    with nogil:  # the same scale for every row: no array of them
        if bx.itemsize == 4:
            status = fl_cross_entropy_rows_f32(n, c, <const float *>bx.buf, target, NULL, NULL,
                                               -100, 0.0, 0.0, 1.0, 0.0, NULL, scale, lo,
                                               NULL, <float *>g, n_threads)
        else:
            status = fl_cross_entropy_rows_f64(n, c, <const double *>bx.buf, target, NULL,
                                               NULL, -100, 0.0, 0.0, 1.0, 0.0, NULL, scale,
                                               lo, NULL, <double *>g, n_threads)
    PyBuffer_Release(&bl)
    _check(status)
    return loss


def cross_entropy_index_fast(x, target, grad, double scale, int n_threads):
    """The common call in one step: default options, class indices ``target`` (N,) int64,
    C-contiguous float32/float64 ``x`` (N, C) with N >= 1, ``grad`` (N, C) of ``x``'s dtype
    or None, every gradient row scaled by ``scale``.  Returns the per-row losses (float64),
    or None when an index is outside ``[0, C)`` (the caller's general path then raises the
    error).  The same kernel call as :func:`cross_entropy` with unit weights.

    The arrays come through the buffer protocol, not typed memoryviews (which cost about
    0.5 us a call, a tenth of the whole call at 64 x 10): the callers have checked the
    dtypes (float or integer of those sizes is all that is checked here), the buffer
    protocol checks contiguity and ``grad``'s writability, and the shapes are checked."""
    cdef Py_buffer bx, bt, bg
    cdef int held = 0
    try:
        PyObject_GetBuffer(x, &bx, PyBUF_C_CONTIGUOUS)
        held = 1
        PyObject_GetBuffer(target, &bt, PyBUF_C_CONTIGUOUS)
        held = 2
        if grad is not None:
            PyObject_GetBuffer(grad, &bg, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
            held = 3
        return _ce_index_fast(&bx, &bt, &bg if held == 3 else NULL, scale, n_threads)
    finally:
        if held >= 3:
            PyBuffer_Release(&bg)
        if held >= 2:
            PyBuffer_Release(&bt)
        if held >= 1:
            PyBuffer_Release(&bx)


# ------------------------------------------------------------------ binary cross-entropy

cdef int _binary_cross_entropy(const real[:, ::1] x, const real[:, ::1] target,
                               const double[:, :] weight, const double[::1] pos_weight,
                               const double[:, :] scale, double[::1] loss, bint row_sums,
                               real[:, ::1] grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *w = _opt2(weight)
    cdef const double *pw = _opt(pos_weight)
    cdef const double *sc = _opt2(scale)
    cdef int64_t w_rs = _stride(weight, 0), w_cs = _stride(weight, 1)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        if real is float:
            status = fl_bce_rows_f32(n, c, &x[0, 0], &target[0, 0], w, w_rs, w_cs, pw, sc,
                                     s_rs, s_cs, lo, row_sums, g, n_threads)
        else:
            status = fl_bce_rows_f64(n, c, &x[0, 0], &target[0, 0], w, w_rs, w_cs, pw, sc,
                                     s_rs, s_cs, lo, row_sums, g, n_threads)
    return _check(status)


cdef int _binary_cross_entropy_h16(int fmt, x, target, const double[:, :] weight,
                                   const double[::1] pos_weight, const double[:, :] scale,
                                   double[::1] loss, bint row_sums, grad,
                                   int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef int tfmt = 0
    cdef const void *tp = _probs(target, &tfmt)
    cdef const double *w = _opt2(weight)
    cdef const double *pw = _opt(pos_weight)
    cdef const double *sc = _opt2(scale)
    cdef int64_t w_rs = _stride(weight, 0), w_cs = _stride(weight, 1)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        status = fl_bce_rows_h16(n, c, fmt, xp, tfmt, tp, w, w_rs, w_cs, pw, sc, s_rs, s_cs,
                                 lo, row_sums, g, n_threads)
    return _check(status)


def binary_cross_entropy(x, target, weight, pos_weight, scale, loss, grad, n_threads):
    """Elementwise BCE with logits; ``loss`` is (N, C) per element or (N,) row sums."""
    row_sums = loss is not None and loss.ndim == 1
    flat = None if loss is None else loss.reshape(-1)
    cdef int fmt = _half_format(x.dtype)
    if fmt:
        _binary_cross_entropy_h16(fmt, x, target, weight, pos_weight, scale, flat, row_sums,
                                  grad, n_threads)
    elif x.dtype == np.float32:
        _binary_cross_entropy[float](x, target, weight, pos_weight, scale, flat, row_sums,
                                     grad, n_threads)
    else:
        _binary_cross_entropy[double](x, target, weight, pos_weight, scale, flat, row_sums,
                                      grad, n_threads)


# ------------------------------------------------------------------ gradient boosting

cdef int _cross_entropy_grad_hess(const real[:, ::1] x, target,
                                  const double[::1] sample_weight, double label_smoothing,
                                  double hessian_scale, double min_hessian, real[:, :] grad,
                                  real[:, :] hess, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const int64_t[::1] index
    cdef const real[:, ::1] probs
    cdef const int64_t *ip = NULL
    cdef const real *pp = NULL
    cdef const double *w = _opt(sample_weight)
    # strides in elements: C order, Fortran order or any other
    cdef int64_t g_rs = grad.strides[0] // <int64_t>sizeof(real)
    cdef int64_t g_cs = grad.strides[1] // <int64_t>sizeof(real)
    cdef int64_t h_rs = hess.strides[0] // <int64_t>sizeof(real)
    cdef int64_t h_cs = hess.strides[1] // <int64_t>sizeof(real)
    cdef int status
    if n == 0:
        return 0
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        probs = target
        pp = &probs[0, 0]
    with nogil:
        if real is float:
            status = fl_cross_entropy_grad_hess_rows_f32(
                n, c, &x[0, 0], ip, pp, w, label_smoothing, hessian_scale, min_hessian,
                &grad[0, 0], g_rs, g_cs, &hess[0, 0], h_rs, h_cs, n_threads)
        else:
            status = fl_cross_entropy_grad_hess_rows_f64(
                n, c, &x[0, 0], ip, pp, w, label_smoothing, hessian_scale, min_hessian,
                &grad[0, 0], g_rs, g_cs, &hess[0, 0], h_rs, h_cs, n_threads)
    return _check(status)


def cross_entropy_grad_hess(x, target, sample_weight, label_smoothing, hessian_scale,
                            min_hessian, grad, hess, n_threads):
    """Gradient and diagonal Hessian of the cross-entropy of each row for gradient boosting
    (see :func:`fastloss.reference.cross_entropy_grad_hess`): ``target`` (N,) int64 or
    (N, K) of x's dtype, ``sample_weight`` (N,) float64 or None; ``grad`` and ``hess`` (N, K)
    of x's dtype in any strides (C or Fortran order: the kernel writes through them)."""
    if x.dtype == np.float32:
        _cross_entropy_grad_hess[float](x, target, sample_weight, label_smoothing,
                                        hessian_scale, min_hessian, grad, hess, n_threads)
    else:
        _cross_entropy_grad_hess[double](x, target, sample_weight, label_smoothing,
                                         hessian_scale, min_hessian, grad, hess, n_threads)


cdef int _binary_cross_entropy_grad_hess(const real[::1] x, const real[::1] target,
                                         const double[::1] sample_weight,
                                         double hessian_scale, double min_hessian,
                                         real[::1] grad, real[::1] hess,
                                         int n_threads) except -1:
    cdef int64_t n = x.shape[0]
    cdef const double *w = _opt(sample_weight)
    cdef int status
    if n == 0:
        return 0
    with nogil:
        if real is float:
            status = fl_bce_grad_hess_rows_f32(n, &x[0], &target[0], w, hessian_scale,
                                               min_hessian, &grad[0], &hess[0], n_threads)
        else:
            status = fl_bce_grad_hess_rows_f64(n, &x[0], &target[0], w, hessian_scale,
                                               min_hessian, &grad[0], &hess[0], n_threads)
    return _check(status)


def binary_cross_entropy_grad_hess(x, target, sample_weight, hessian_scale, min_hessian,
                                   grad, hess, n_threads):
    """Gradient and Hessian of the sigmoid BCE of each score (see
    :func:`fastloss.reference.binary_cross_entropy_grad_hess`); every array (N,),
    contiguous."""
    if x.dtype == np.float32:
        _binary_cross_entropy_grad_hess[float](x, target, sample_weight, hessian_scale,
                                               min_hessian, grad, hess, n_threads)
    else:
        _binary_cross_entropy_grad_hess[double](x, target, sample_weight, hessian_scale,
                                                min_hessian, grad, hess, n_threads)


# ------------------------------------------------------------------ softmax MSE

cdef int _softmax_mse(const real[:, ::1] x, target, const double[::1] scale, double uniform,
                      double[::1] loss, real[:, ::1] grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef const int64_t[::1] index
    cdef const real[:, ::1] probs
    cdef const int64_t *ip = NULL
    cdef const real *pp = NULL
    cdef int status
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        probs = target
        pp = &probs[0, 0]
    with nogil:
        if real is float:
            status = fl_softmax_mse_rows_f32(n, c, &x[0, 0], ip, pp, sc, uniform, lo, g,
                                             n_threads)
        else:
            status = fl_softmax_mse_rows_f64(n, c, &x[0, 0], ip, pp, sc, uniform, lo, g,
                                             n_threads)
    return _check(status)


cdef int _softmax_mse_h16(int fmt, x, target, const double[::1] scale,
                          double uniform, double[::1] loss,
                          grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef const int64_t[::1] index
    cdef const int64_t *ip = NULL
    cdef const void *pp = NULL
    cdef int tfmt = 0
    cdef int status
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        pp = _probs(target, &tfmt)
    with nogil:
        status = fl_softmax_mse_rows_h16(n, c, fmt, xp, ip, tfmt, pp, sc, uniform, lo, g,
                                             n_threads)
    return _check(status)


def softmax_mse(x, target, scale, loss, grad, n_threads):
    cdef int fmt = _half_format(x.dtype)
    uniform, scale = _row_scale(scale)
    if fmt:
        _softmax_mse_h16(fmt, x, target, scale, uniform, loss, grad, n_threads)
    elif x.dtype == np.float32:
        _softmax_mse[float](x, target, scale, uniform, loss, grad, n_threads)
    else:
        _softmax_mse[double](x, target, scale, uniform, loss, grad, n_threads)


# ------------------------------------------------------------------ KL divergence

cdef int _kl_divergence(const real[:, ::1] x, const real[:, ::1] target, bint log_target,
                        const double[::1] scale,
                        double uniform, double[::1] loss, real[:, ::1] grad,
                        int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        if real is float:
            status = fl_kl_divergence_rows_f32(n, c, &x[0, 0], &target[0, 0], log_target, sc,
                                               uniform, lo, g, n_threads)
        else:
            status = fl_kl_divergence_rows_f64(n, c, &x[0, 0], &target[0, 0], log_target, sc,
                                               uniform, lo, g, n_threads)
    return _check(status)


cdef int _kl_divergence_h16(int fmt, x, target, bint log_target,
                            const double[::1] scale, double uniform, double[::1] loss, grad,
                            int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef int tfmt = 0
    cdef const void *tp = _probs(target, &tfmt)
    cdef int status
    with nogil:
        status = fl_kl_divergence_rows_h16(n, c, fmt, xp, tfmt, tp, log_target, sc, uniform,
                                           lo, g, n_threads)
    return _check(status)


def kl_divergence(x, target, log_target, scale, loss, grad, n_threads):
    cdef int fmt = _half_format(x.dtype)
    uniform, scale = _row_scale(scale)
    if fmt:
        _kl_divergence_h16(fmt, x, target, log_target, scale, uniform, loss, grad, n_threads)
    elif x.dtype == np.float32:
        _kl_divergence[float](x, target, log_target, scale, uniform, loss, grad, n_threads)
    else:
        _kl_divergence[double](x, target, log_target, scale, uniform, loss, grad, n_threads)


# ------------------------------------------------------------------ entropy

cdef int _entropy(const real[:, ::1] x, const double[::1] scale, double uniform, double[::1] loss,
                  real[:, ::1] grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        if real is float:
            status = fl_entropy_rows_f32(n, c, &x[0, 0], sc, uniform, lo, g, n_threads)
        else:
            status = fl_entropy_rows_f64(n, c, &x[0, 0], sc, uniform, lo, g, n_threads)
    return _check(status)


cdef int _entropy_h16(int fmt, x, const double[::1] scale, double uniform, double[::1] loss, grad,
                      int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef const double *sc = _opt(scale)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        status = fl_entropy_rows_h16(n, c, fmt, xp, sc, uniform, lo, g, n_threads)
    return _check(status)


def entropy(x, scale, loss, grad, n_threads):
    cdef int fmt = _half_format(x.dtype)
    uniform, scale = _row_scale(scale)
    if fmt:
        _entropy_h16(fmt, x, scale, uniform, loss, grad, n_threads)
    elif x.dtype == np.float32:
        _entropy[float](x, scale, uniform, loss, grad, n_threads)
    else:
        _entropy[double](x, scale, uniform, loss, grad, n_threads)


# ------------------------------------------------------------------ MSE

cdef int _mse(const real[:, ::1] x, const real[:, ::1] target, const double[:, :] scale,
              double[::1] loss, bint row_sums, real[:, ::1] grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt2(scale)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        if real is float:
            status = fl_mse_rows_f32(n, c, &x[0, 0], &target[0, 0], sc, s_rs, s_cs, lo,
                                     row_sums, g, n_threads)
        else:
            status = fl_mse_rows_f64(n, c, &x[0, 0], &target[0, 0], sc, s_rs, s_cs, lo,
                                     row_sums, g, n_threads)
    return _check(status)


cdef int _mse_h16(int fmt, x, target, const double[:, :] scale, double[::1] loss,
                  bint row_sums, grad, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef const uint16_t *xp = _bits_in(x)
    cdef uint16_t *g = _bits(grad)
    cdef int tfmt = 0
    cdef const void *tp = _probs(target, &tfmt)
    cdef const double *sc = _opt2(scale)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef double *lo = _out(loss)
    cdef int status
    with nogil:
        status = fl_mse_rows_h16(n, c, fmt, xp, tfmt, tp, sc, s_rs, s_cs, lo, row_sums, g,
                                 n_threads)
    return _check(status)


def mse(x, target, scale, loss, grad, n_threads):
    """Elementwise squared error; ``loss`` is (N, C) per element or (N,) row sums."""
    row_sums = loss is not None and loss.ndim == 1
    flat = None if loss is None else loss.reshape(-1)
    cdef int fmt = _half_format(x.dtype)
    if fmt:
        _mse_h16(fmt, x, target, scale, flat, row_sums, grad, n_threads)
    elif x.dtype == np.float32:
        _mse[float](x, target, scale, flat, row_sums, grad, n_threads)
    else:
        _mse[double](x, target, scale, flat, row_sums, grad, n_threads)


# ------------------------------------------------------------------ softmax, logsumexp

cdef int _softmax(const real[:, ::1] x, real[:, ::1] out, bint log, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef int status
    with nogil:
        if real is float:
            status = fl_softmax_rows_f32(n, c, &x[0, 0], &out[0, 0], log, n_threads)
        else:
            status = fl_softmax_rows_f64(n, c, &x[0, 0], &out[0, 0], log, n_threads)
    return _check(status)


def softmax(x, out, n_threads):
    if x.dtype == np.float32:
        _softmax[float](x, out, False, n_threads)
    else:
        _softmax[double](x, out, False, n_threads)


def log_softmax(x, out, n_threads):
    if x.dtype == np.float32:
        _softmax[float](x, out, True, n_threads)
    else:
        _softmax[double](x, out, True, n_threads)


cdef int _logsumexp(const real[:, ::1] x, double[::1] out, int n_threads) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef int status
    with nogil:
        if real is float:
            status = fl_logsumexp_rows_f32(n, c, &x[0, 0], &out[0], n_threads)
        else:
            status = fl_logsumexp_rows_f64(n, c, &x[0, 0], &out[0], n_threads)
    return _check(status)


def logsumexp(x, out, n_threads):
    if x.dtype == np.float32:
        _logsumexp[float](x, out, n_threads)
    else:
        _logsumexp[double](x, out, n_threads)


# ------------------------------------------------------------------ 16-bit conversions

def half_to_float(x):
    """A float32 copy of a bfloat16 / float16 array (exact)."""
    cdef int fmt = _half_format(x.dtype)
    cdef const uint16_t[::1] src = np.ascontiguousarray(x).reshape(-1).view(np.uint16)
    out = np.empty(x.shape, np.float32)
    cdef float[::1] dst = out.reshape(-1)
    if src.shape[0]:
        fl_half_to_float(src.shape[0], fmt, &src[0], &dst[0])
    return out


def float_to_half(x, dtype):
    """float32 ``x`` rounded to nearest even into a new array of the 16-bit ``dtype``."""
    cdef int fmt = _half_format(np.dtype(dtype))
    cdef const float[::1] src = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(x.shape, dtype)
    cdef uint16_t[::1] dst = out.reshape(-1).view(np.uint16)
    if src.shape[0]:
        fl_float_to_half(src.shape[0], fmt, &src[0], &dst[0])
    return out
