"""The ``numpy`` backend: the reference (:mod:`fastloss.reference`) behind the kernel protocol
of :mod:`fastloss._protocol` that every backend implements.

It is the oracle the other backends are tested against, and what runs where nothing compiled
is available; it is written to be read, not to be fast.
"""

from __future__ import annotations

import numpy as np

from . import reference

ACCEPTS_DEVICE_ARRAYS = False


def unavailable_reason():
    return None


def as_rows(a, n_cols, dtype):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1, n_cols)


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def row_scales(scale, n_rows):
    """The row losses' ``scale`` as an array of each row's factor (or None): a float (one
    factor for every row, see the kernel protocol) becomes ``n_rows`` copies of it, for the
    backends whose kernels read an array."""
    return np.full(n_rows, scale) if isinstance(scale, float) else scale


def _store(loss_out, loss, grad_out, grad, scale, ignored=None):
    if loss_out.ndim == 1 and loss.ndim == 2:
        loss = loss.sum(axis=1)
    loss_out[...] = loss
    if grad_out is None:
        return
    scale = np.asarray(scale)  # a float: every row's factor
    if scale.ndim == 1:
        scale = scale[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        grad = grad * scale
    if ignored is not None:
        grad[ignored] = 0.0  # exactly 0, even when the scale is inf (every target ignored)
    grad_out[...] = grad


def cross_entropy(x, target, weight, ignore_index, label_smoothing, softcap, inv_temperature,
                  z_grad, scale, loss, lse, grad, n_threads):
    options = dict(softcap=softcap or None, temperature=1.0 / inv_temperature)
    rows, d = reference.cross_entropy(x, target, weight, ignore_index, label_smoothing,
                                      **options)
    ignored = target == ignore_index if target.ndim == 1 else None
    if z_grad:
        _, z_term_grad = reference.z_loss_term(x, target, ignore_index, z_loss=z_grad,
                                               **options)
        d = d + z_term_grad
    if lse is not None:
        lse[...] = reference.logsumexp(reference.transform_logits(x, **options)[0])
        if ignored is not None:
            lse[ignored] = 0.0
    _store(loss, rows, grad, d, scale, ignored)


def binary_cross_entropy(x, target, weight, pos_weight, scale, loss, grad, n_threads):
    values, d = reference.binary_cross_entropy_with_logits(x, target, weight, pos_weight)
    _store(loss, values, grad, d, scale)


def softmax_mse(x, target, scale, loss, grad, n_threads):
    values, d = reference.softmax_mse(x, target)
    _store(loss, values, grad, d, scale)


def kl_divergence(x, target, log_target, scale, loss, grad, n_threads):
    values, d = reference.kl_divergence(x, target, log_target)
    _store(loss, values, grad, d, scale)


def entropy(x, scale, loss, grad, n_threads):
    values, d = reference.entropy(x)
    _store(loss, values, grad, d, scale)


def mse(x, target, scale, loss, grad, n_threads):
    values, d = reference.mse_loss(x, target)
    _store(loss, values, grad, d, scale)


def softmax(x, out, n_threads):
    out[...] = reference.softmax(x)


def log_softmax(x, out, n_threads):
    out[...] = reference.log_softmax(x)


def logsumexp(x, out, n_threads):
    out[...] = reference.logsumexp(x)


def cross_entropy_grad_hess(x, target, sample_weight, label_smoothing, hessian_scale,
                            min_hessian, grad, hess, n_threads):
    """Gradient and diagonal Hessian for gradient boosting (see
    :func:`fastloss.reference.cross_entropy_grad_hess`); ``grad`` and ``hess`` may have any
    strides (C or Fortran order)."""
    g, h = reference.cross_entropy_grad_hess(x, target, sample_weight, label_smoothing,
                                             hessian_scale, min_hessian)
    with np.errstate(over="ignore", invalid="ignore"):
        grad[...] = g
        hess[...] = h


def binary_cross_entropy_grad_hess(x, target, sample_weight, hessian_scale, min_hessian,
                                   grad, hess, n_threads):
    """Gradient and Hessian of the sigmoid BCE of each score (see
    :func:`fastloss.reference.binary_cross_entropy_grad_hess`)."""
    g, h = reference.binary_cross_entropy_grad_hess(x, target, sample_weight, hessian_scale,
                                                    min_hessian)
    with np.errstate(over="ignore", invalid="ignore"):
        grad[...] = g
        hess[...] = h
