# cython: language_level=3
"""A Cython module of someone else's that calls fastloss's C kernels directly, nogil."""

import numpy as np

from libc.stdint cimport int64_t

from fastloss._ext.fastloss cimport (
    FASTLOSS_OK,
    fastloss_cross_entropy_f64,
    fastloss_cross_entropy_options,
    fastloss_cross_entropy_options_init,
    fastloss_strerror,
)


def cross_entropy_rows(const double[:, ::1] logits, const int64_t[::1] target,
                       double label_smoothing=0.0, double z_loss=0.0, int n_threads=0):
    """Per-row cross-entropy (with its z-loss term) and its gradient, without the GIL."""
    cdef int64_t n = logits.shape[0], c = logits.shape[1]
    loss = np.empty(n)
    grad = np.empty((n, c))
    cdef double[::1] loss_view = loss
    cdef double[:, ::1] grad_view = grad
    cdef fastloss_cross_entropy_options opts
    fastloss_cross_entropy_options_init(&opts)  # the defaults, and opts.size
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.n_threads = n_threads
    cdef int status
    with nogil:
        status = fastloss_cross_entropy_f64(n, c, &logits[0, 0], &target[0], &opts,
                                            &loss_view[0], &grad_view[0, 0])
    if status != FASTLOSS_OK:
        raise ValueError(fastloss_strerror(status).decode())
    return loss, grad
