"""The ``numpy`` backend: the reference, behind the row-kernel protocol every backend implements.

The protocol (all arrays already validated by :mod:`fastloss._validate`):

* ``x``: ``(N, C)`` C-contiguous float32 or float64 logits                      # IN
* ``target``: ``(N,)`` int64 class indices or ``(N, C)`` array of ``x``'s dtype  # IN
* ``weight``: ``(C,)`` float64 (ones when the user gave none)                    # IN
* ``scale``: float64, ``(N,)`` for row losses, ``(N, C)`` (possibly a broadcast view) for
  elementwise losses: ``grad_output`` divided by the mean's denominator          # IN
* ``loss``: float64, ``(N,)`` per row; for elementwise losses ``(N, C)`` per element or
  ``(N,)`` for per-row sums                                                       # OUT
* ``grad``: ``(N, C)`` of ``x``'s dtype, or None for the forward only; it may be ``x`` itself
  (``out=logits``), so a kernel must read a row before it writes it              # OUT

``grad`` receives ``scale * d loss / d x``; ignored rows receive exactly 0.  ``thread_limit(n)``
is a context manager that runs the kernels on at most ``n`` threads.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import reference

ACCEPTS_DEVICE_ARRAYS = False


def thread_limit(n_threads):
    return contextlib.nullcontext()


def _store(loss_out, loss, grad_out, grad, scale, ignored=None):
    if loss_out.ndim == 1 and loss.ndim == 2:
        loss = loss.sum(axis=1)
    loss_out[...] = loss
    if grad_out is None:
        return
    if scale.ndim == 1:
        scale = scale[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        grad = grad * scale
    if ignored is not None:
        grad[ignored] = 0.0
    grad_out[...] = grad


def ce(x, target, weight, ignore_index, eps, scale, loss, grad):
    loss_rows, d = reference.cross_entropy(x, target, weight, ignore_index, eps)
    ignored = target == ignore_index if target.ndim == 1 else None
    _store(loss, loss_rows, grad, d, scale, ignored)


def bce(x, target, weight, pos_weight, scale, loss, grad):
    values, d = reference.binary_cross_entropy_with_logits(x, target, weight, pos_weight)
    _store(loss, values, grad, d, scale)


def softmax_mse(x, target, scale, loss, grad):
    values, d = reference.softmax_mse(x, target)
    _store(loss, values, grad, d, scale)


def kl(x, target, log_target, scale, loss, grad):
    values, d = reference.kl_divergence(x, target, log_target)
    _store(loss, values, grad, d, scale)


def entropy(x, scale, loss, grad):
    values, d = reference.entropy(x)
    _store(loss, values, grad, d, scale)


def mse(x, target, scale, loss, grad):
    values, d = reference.mse_loss(x, target)
    _store(loss, values, grad, d, scale)


def softmax(x, out):
    out[...] = reference.softmax(x)


def log_softmax(x, out):
    out[...] = reference.log_softmax(x)


def logsumexp(x, out):
    out[...] = reference.logsumexp(x)
