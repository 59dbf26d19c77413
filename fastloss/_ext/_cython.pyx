# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The ``cython`` backend: typed memoryviews in, the C row kernels of src/fastloss.c out.

Implements the row-kernel protocol of :mod:`fastloss._numpy_kernels`.  The GIL is released
around every kernel; arguments were validated by :mod:`fastloss._validate`, so nothing is
checked here beyond what the memoryviews check (dtype, layout).
"""

import contextlib

import numpy as np

from libc.stdint cimport int64_t

from fastloss._ext.fastloss cimport *

ctypedef fused real:
    float
    double

ACCEPTS_DEVICE_ARRAYS = False

cdef int _n_threads = 0  # 0: every core (OpenMP's default)


def unavailable_reason():
    return None


def openmp():
    """Whether the kernels were built with OpenMP, and the default thread count."""
    return bool(fastloss_openmp()), fastloss_max_threads()


@contextlib.contextmanager
def thread_limit(n_threads):
    global _n_threads
    previous = _n_threads
    _n_threads = 0 if n_threads is None else n_threads
    try:
        yield
    finally:
        _n_threads = previous


cdef inline int _check(int status) except -1:
    if status == FASTLOSS_E_MEMORY:
        raise MemoryError("fastloss: out of memory for the per-thread block buffer")
    if status != FASTLOSS_OK:
        raise RuntimeError(fastloss_strerror(status).decode())
    return 0


cdef inline const double *_opt(const double[::1] a) noexcept:
    return NULL if a is None else &a[0]


cdef int _ce(const real[:, ::1] x, target, const double[::1] weight, int64_t ignore_index,
             double eps, const double[::1] scale, double[::1] loss,
             real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef const int64_t[::1] index
    cdef const real[:, ::1] probs
    cdef int status, nt = _n_threads
    if target.ndim == 1:
        index = target
        with nogil:
            if real is float:
                status = fastloss_ce_index_rows_f32(n, c, &x[0, 0], &index[0], &weight[0],
                                                    ignore_index, eps, sc, &loss[0], g, nt)
            else:
                status = fastloss_ce_index_rows_f64(n, c, &x[0, 0], &index[0], &weight[0],
                                                    ignore_index, eps, sc, &loss[0], g, nt)
    else:
        probs = target
        with nogil:
            if real is float:
                status = fastloss_ce_prob_rows_f32(n, c, &x[0, 0], &probs[0, 0], &weight[0],
                                                   eps, sc, &loss[0], g, nt)
            else:
                status = fastloss_ce_prob_rows_f64(n, c, &x[0, 0], &probs[0, 0], &weight[0],
                                                   eps, sc, &loss[0], g, nt)
    return _check(status)


def ce(x, target, weight, ignore_index, eps, scale, loss, grad):
    if x.dtype == np.float32:
        _ce[float](x, target, weight, ignore_index, eps, scale, loss, grad)
    else:
        _ce[double](x, target, weight, ignore_index, eps, scale, loss, grad)


cdef int _softmax_mse(const real[:, ::1] x, target, const double[::1] scale,
                      double[::1] loss, real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef const int64_t[::1] index
    cdef const real[:, ::1] probs
    cdef const int64_t *ip = NULL
    cdef const real *pp = NULL
    cdef int status, nt = _n_threads
    if target.ndim == 1:
        index = target
        ip = &index[0]
    else:
        probs = target
        pp = &probs[0, 0]
    with nogil:
        if real is float:
            status = fastloss_softmax_mse_rows_f32(n, c, &x[0, 0], ip, pp, sc, &loss[0], g, nt)
        else:
            status = fastloss_softmax_mse_rows_f64(n, c, &x[0, 0], ip, pp, sc, &loss[0], g, nt)
    return _check(status)


def softmax_mse(x, target, scale, loss, grad):
    if x.dtype == np.float32:
        _softmax_mse[float](x, target, scale, loss, grad)
    else:
        _softmax_mse[double](x, target, scale, loss, grad)


cdef int _kl(const real[:, ::1] x, const real[:, ::1] target, bint log_target,
             const double[::1] scale, double[::1] loss, real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_kl_rows_f32(n, c, &x[0, 0], &target[0, 0], log_target, sc,
                                          &loss[0], g, nt)
        else:
            status = fastloss_kl_rows_f64(n, c, &x[0, 0], &target[0, 0], log_target, sc,
                                          &loss[0], g, nt)
    return _check(status)


def kl(x, target, log_target, scale, loss, grad):
    if x.dtype == np.float32:
        _kl[float](x, target, log_target, scale, loss, grad)
    else:
        _kl[double](x, target, log_target, scale, loss, grad)


cdef int _entropy(const real[:, ::1] x, const double[::1] scale, double[::1] loss,
                  real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt(scale)
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_entropy_rows_f32(n, c, &x[0, 0], sc, &loss[0], g, nt)
        else:
            status = fastloss_entropy_rows_f64(n, c, &x[0, 0], sc, &loss[0], g, nt)
    return _check(status)


def entropy(x, scale, loss, grad):
    if x.dtype == np.float32:
        _entropy[float](x, scale, loss, grad)
    else:
        _entropy[double](x, scale, loss, grad)


cdef inline int64_t _stride(const double[:, :] a, int axis) noexcept:
    return 0 if a is None else a.strides[axis] // <int64_t>sizeof(double)


cdef inline const double *_opt2(const double[:, :] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0, 0]


cdef int _bce(const real[:, ::1] x, const real[:, ::1] target, const double[:, :] weight,
              const double[::1] pos_weight, const double[:, :] scale, double[::1] loss,
              bint row_sums, real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *w = _opt2(weight)
    cdef const double *pw = _opt(pos_weight)
    cdef const double *sc = _opt2(scale)
    cdef int64_t w_rs = _stride(weight, 0), w_cs = _stride(weight, 1)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_bce_rows_f32(n, c, &x[0, 0], &target[0, 0], w, w_rs, w_cs, pw,
                                           sc, s_rs, s_cs, &loss[0], row_sums, g, nt)
        else:
            status = fastloss_bce_rows_f64(n, c, &x[0, 0], &target[0, 0], w, w_rs, w_cs, pw,
                                           sc, s_rs, s_cs, &loss[0], row_sums, g, nt)
    return _check(status)


def bce(x, target, weight, pos_weight, scale, loss, grad):
    row_sums = loss.ndim == 1
    flat = loss.reshape(-1)
    if x.dtype == np.float32:
        _bce[float](x, target, weight, pos_weight, scale, flat, row_sums, grad)
    else:
        _bce[double](x, target, weight, pos_weight, scale, flat, row_sums, grad)


cdef int _mse(const real[:, ::1] x, const real[:, ::1] target, const double[:, :] scale,
              double[::1] loss, bint row_sums, real[:, ::1] grad) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef real *g = NULL if grad is None else &grad[0, 0]
    cdef const double *sc = _opt2(scale)
    cdef int64_t s_rs = _stride(scale, 0), s_cs = _stride(scale, 1)
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_mse_rows_f32(n, c, &x[0, 0], &target[0, 0], sc, s_rs, s_cs,
                                           &loss[0], row_sums, g, nt)
        else:
            status = fastloss_mse_rows_f64(n, c, &x[0, 0], &target[0, 0], sc, s_rs, s_cs,
                                           &loss[0], row_sums, g, nt)
    return _check(status)


def mse(x, target, scale, loss, grad):
    row_sums = loss.ndim == 1
    flat = loss.reshape(-1)
    if x.dtype == np.float32:
        _mse[float](x, target, scale, flat, row_sums, grad)
    else:
        _mse[double](x, target, scale, flat, row_sums, grad)


cdef int _softmax(const real[:, ::1] x, real[:, ::1] out, bint log) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_softmax_rows_f32(n, c, &x[0, 0], &out[0, 0], log, nt)
        else:
            status = fastloss_softmax_rows_f64(n, c, &x[0, 0], &out[0, 0], log, nt)
    return _check(status)


def softmax(x, out):
    if x.dtype == np.float32:
        _softmax[float](x, out, False)
    else:
        _softmax[double](x, out, False)


def log_softmax(x, out):
    if x.dtype == np.float32:
        _softmax[float](x, out, True)
    else:
        _softmax[double](x, out, True)


cdef int _logsumexp(const real[:, ::1] x, double[::1] out) except -1:
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef int status, nt = _n_threads
    with nogil:
        if real is float:
            status = fastloss_logsumexp_rows_f32(n, c, &x[0, 0], &out[0], nt)
        else:
            status = fastloss_logsumexp_rows_f64(n, c, &x[0, 0], &out[0], nt)
    return _check(status)


def logsumexp(x, out):
    if x.dtype == np.float32:
        _logsumexp[float](x, out)
    else:
        _logsumexp[double](x, out)
