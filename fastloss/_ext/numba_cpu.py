"""The ``numba`` backend: one serial, ``nogil`` skeleton per kernel shape (docs/design.md
section 3) over a range of rows; :mod:`fastloss._ext._threads` runs the ranges on fastloss's
own thread pool (section 4).  The loss math is in :mod:`fastloss._ext.numba_hooks` (shared with
the cuda backend); the vectorisable exp, max and blocked online softmax in
:mod:`fastloss._ext.numba_math`.

Each row is handled by one thread, start to finish, so results do not depend on the thread
count; the batch reduction happens afterwards, in a fixed order, in :mod:`fastloss._api`.
A row is read from memory once (the blocked online softmax stores the exp into the gradient)
and its gradient written once: the later passes find the row in cache (128k float32 classes
are 512 KiB).  Row sums accumulate in float64.

Notation as in :mod:`fastloss.reference`: ``m`` the row max, ``e_c = exp(z_c - m)``,
``s = sum_c e_c``, so ``p_c = e_c / s`` and ``-log p_c = (m - z_c) + log s``.  The kernels
implement the protocol of :mod:`fastloss._protocol` (docs/design.md section 2).
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import njit

from ._threads import run_ranges
from .numba_math import (
    BLOCK,
    INLINE,
    JIT,
    exp_blocks,
    fill_row,
    hooks,
    like,
    online_sum_exp,
    poisoned,
    poisoned_lse,
    row_max,
    scale_blocks,
    sum_exp,
    vexp,
)

ACCEPTS_DEVICE_ARRAYS = False
NAN = np.nan
# The range kernels run without Numba's reference counting: every row and block view
# (``x[i]``, ``row[start:stop]``) would otherwise pay an atomic incref/decref, which costs
# 25% at 32k classes a row.  So they allocate nothing: their scratch (block maxima, the
# transformed row) is allocated by the caller, once per range.
KERNEL = dict(JIT, _nrt=False)


def unavailable_reason():
    return None


def as_rows(a, n_cols, dtype):
    """A C-contiguous ``(rows, n_cols)`` array of ``dtype`` (no copy when ``a`` is one)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1, n_cols)


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


# Numba wants one array type per argument: these stand for "not given" (with a flag).
_DUMMY = {np.dtype(np.float32): np.zeros((1, 1), np.float32),
          np.dtype(np.float64): np.zeros((1, 1), np.float64)}
_NO_ROWS = np.zeros(1)
_NO_ELEMENTS = np.zeros((1, 1))


def _grad_arg(grad, x):
    return (_DUMMY[x.dtype], False) if grad is None else (grad, True)


def _readable(a):
    """Read-only arrays would compile a second copy of every kernel; copy them instead."""
    return a if a is None or a.flags.writeable else a.copy()


def _n_blocks(c):
    return (c + BLOCK - 1) // BLOCK


# ------------------------------------------------------------ shape 1: softmax, linear in log p
#
# loss_i = sum_c a_ic (-log p_ic) + const_i,  d loss_i / d z_ic = A'_i p_ic - a_ic  (A' = A plus
# the z-loss term), then times dz/dx.  Targets: class indices, stored as an (N, 1) int64 array
# (``sparse``: a_c = w_c ((1 - eps) [c = y] + eps / C), with a fast path for eps = 0), or
# probabilities / log-probabilities (N, C) (cross-entropy; KL divergence = cross-entropy with
# w = 1, eps = 0, plus const = sum t log t).

# The helpers below are called with constant flags (``_dense_stats(..., False, False)``):
# after inlining, LLVM folds the branches on them, and each loop is the one of its loss
# (a loop-invariant branch left in a loop keeps it from vectorising: 4x at 32k classes).

@njit(**INLINE)
def _dense_stats(row, trow, weight, keep, eps_c, log_target, kl):
    """``(A, sum_c a_c z_c, const)`` of a row of probability / log-probability targets."""
    big_a = 0.0
    az = 0.0
    const = 0.0
    for k in range(row.shape[0]):
        v = np.float64(trow[k])
        a = hooks.ce_coef(hooks.target_prob(v, log_target), weight[k], keep, eps_c)
        big_a += a
        az += hooks.weighted(a, np.float64(row[k]))
        if kl:
            const += hooks.target_t_log_t(v, log_target)
    return big_a, az, const


@njit(**INLINE)
def _subtract_dense(g, trow, weight, keep, eps_c, si, log_target):
    """``g_c -= si a_c`` for probability / log-probability targets."""
    for k in range(g.shape[0]):
        a = hooks.ce_coef(hooks.target_prob(np.float64(trow[k]), log_target), weight[k], keep,
                          eps_c)
        g[k] -= like(si * a, g)


@njit(**INLINE)
def _linear_row(row, trow, sparse, y, weight, w_total, keep, eps_c, log_target, kl, z_grad,
                si, g, write_grad, in_place, block_max):
    """Loss and logsumexp of one row of (transformed) logits ``row``; writes
    ``si * d loss / d row`` into ``g`` (which may be ``row`` itself: ``in_place``)."""
    c = row.shape[0]
    # statistics of the coefficients: read before the gradient may overwrite the row
    z_y = 0.0
    a_t = 0.0  # sparse: the target's share of a_y
    big_a = 0.0  # A = sum_c a_c
    az = 0.0  # sum_c a_c z_c (sparse: sum_c w_c z_c), 0 * (-inf) counted as 0
    const = 0.0
    if sparse:
        z_y = np.float64(row[y])
        a_t = hooks.ce_coef(1.0, weight[y], keep, 0.0)
        big_a = a_t + eps_c * w_total
        if eps_c > 0.0:
            for k in range(c):
                az += hooks.weighted(weight[k], np.float64(row[k]))
    elif not kl:  # the flags as constants: LLVM drops the exp / log of the KL's cases
        big_a, az, const = _dense_stats(row, trow, weight, keep, eps_c, False, False)
    elif log_target:
        big_a, az, const = _dense_stats(row, trow, weight, keep, eps_c, True, True)
    else:
        big_a, az, const = _dense_stats(row, trow, weight, keep, eps_c, False, True)
    if write_grad:
        m, s = exp_blocks(row, g, block_max, in_place)
    else:
        m, s = online_sum_exp(row)
    if poisoned(m, s):
        # in place, exp_blocks has overwritten the blocks before the first one holding a NaN
        # or +inf with finite values (and -inf blocks with 0): the scan still sees the row's
        # NaN / +inf / all -inf
        lse_bad = poisoned_lse(row)
        if write_grad:
            fill_row(g, NAN)
        return NAN, lse_bad
    log_s = math.log(s)
    lse = m + log_s
    if sparse:
        value = hooks.linear_loss(a_t, hooks.weighted(a_t, m - z_y), 0.0, log_s)
        if eps_c > 0.0:
            value += eps_c * hooks.linear_loss(w_total, hooks.gap_sum(w_total, az, m), 0.0,
                                               log_s)
    else:
        value = hooks.linear_loss(big_a, hooks.gap_sum(big_a, az, m), const, log_s)
    if write_grad:
        big_a_p = hooks.p_coef(big_a, z_grad, lse)
        scale_blocks(g, block_max, m, si * big_a_p / s)  # g_c = si A' p_c
        if sparse:
            if eps_c > 0.0:
                for k in range(c):
                    g[k] -= like(si * hooks.ce_coef(0.0, weight[k], keep, eps_c), g)
            # p_y recomputed in float64: A' p_y - a_y cancels when p_y is close to 1
            p_y = math.exp(z_y - m) / s
            g[y] = si * (big_a_p * p_y - hooks.ce_coef(1.0, weight[y], keep, eps_c))
        elif log_target:
            _subtract_dense(g, trow, weight, keep, eps_c, si, True)
        else:
            _subtract_dense(g, trow, weight, keep, eps_c, si, False)
    return value, lse


@njit(**KERNEL)
def _softmax_linear(lo, hi, x, target, sparse, ignore_index, weight, w_total, keep, eps_c,
                    log_target, kl, softcap, inv_temperature, z_grad, scale, loss, lse, grad,
                    write_grad, write_lse, in_place, block_max, z, slope):
    """Rows ``lo:hi``.  With a softcap or a temperature, each row is first transformed into
    the float64 scratch row ``z`` (its slope ``dz/dx`` beside it), and the gradient multiplied
    by the slope at the end; without, the skeleton runs on ``x`` itself."""
    c = x.shape[1]
    transformed = softcap != 0.0 or inv_temperature != 1.0
    for i in range(lo, hi):
        y = 0
        if sparse:
            y = np.int64(target[i, 0])
            if y == ignore_index:
                loss[i] = 0.0
                if write_lse:
                    lse[i] = 0.0
                if write_grad:
                    fill_row(grad[i], 0.0)
                continue
        g = grad[i] if write_grad else grad[0]
        si = scale[i] if write_grad else 1.0
        if transformed:
            row = x[i]
            for k in range(c):  # all of x_i is read before g (maybe x_i) is written
                z[k], slope[k] = hooks.transform(np.float64(row[k]), softcap, inv_temperature)
            value, lse_i = _linear_row(z, target[i], sparse, y, weight, w_total, keep, eps_c,
                                       log_target, kl, z_grad, si, g, write_grad, False,
                                       block_max)
            if write_grad:
                for k in range(c):
                    g[k] = like(g[k] * slope[k], g)
        else:
            value, lse_i = _linear_row(x[i], target[i], sparse, y, weight, w_total, keep,
                                       eps_c, log_target, kl, z_grad, si, g, write_grad,
                                       in_place, block_max)
        loss[i] = value
        if write_lse:
            lse[i] = lse_i


def _run_softmax_linear(x, target, weight, ignore_index, label_smoothing, log_target, kl,
                        softcap, inv_temperature, z_grad, scale, loss, lse, grad, n_threads):
    g, write_grad = _grad_arg(grad, x)
    in_place = grad is not None and np.may_share_memory(grad, x)  # validated: same or disjoint
    x, target = _readable(x), _readable(target)
    sparse = target.ndim == 1
    if sparse:
        target = target.reshape(-1, 1)
    n, c = x.shape
    if weight is None:
        weight = np.ones(c)
    softcap, inv_temperature = float(softcap), float(inv_temperature)
    scratch = c if softcap != 0.0 or inv_temperature != 1.0 else 0
    args = (x, target, sparse, ignore_index, weight, float(np.sum(weight)),
            1.0 - label_smoothing, label_smoothing / c if c else 0.0, log_target, kl, softcap,
            inv_temperature, float(z_grad), _NO_ROWS if scale is None else scale, loss,
            _NO_ROWS if lse is None else lse, g, write_grad, lse is not None, in_place)

    def rows(lo, hi):
        _softmax_linear(lo, hi, *args, np.empty(_n_blocks(c)), np.empty(scratch),
                        np.empty(scratch))

    run_ranges(rows, n, c, n_threads)


def cross_entropy(x, target, weight, ignore_index, label_smoothing, softcap, inv_temperature,
                  z_grad, scale, loss, lse, grad, n_threads):
    _run_softmax_linear(x, target, weight, ignore_index, float(label_smoothing), False, False,
                        softcap, inv_temperature, z_grad, scale, loss, lse, grad, n_threads)


def kl_divergence(x, target, log_target, scale, loss, grad, n_threads):
    _run_softmax_linear(x, target, np.ones(x.shape[1]), -1, 0.0, bool(log_target), True, 0.0,
                        1.0, 0.0, scale, loss, None, grad, n_threads)


# ------------------------------------------------------------ shape 2: softmax, function of p
#
# loss_i = sum_c term(p_ic, t_ic), phi_c = d term / d p_c,
# d loss_i / d z_ij = p_ij (phi_ij - sum_k p_ik phi_ik).

@njit(**INLINE)
def _fn_row(row, trow, y, sparse, loss_code, si, g, write_grad):
    """Loss of one row; writes ``si * d loss / d row`` into ``g`` (which may be ``row``: the
    gradient pass recomputes p from the row element by element)."""
    c = row.shape[0]
    m = row_max(row)
    s = sum_exp(row, m)
    if poisoned(m, s):
        if write_grad:
            fill_row(g, NAN)
        return NAN
    log_s = math.log(s)
    inv_s = 1.0 / s
    value = 0.0
    dot = 0.0  # sum_k p_k phi_k
    for k in range(c):
        zk = row[k] - m
        p = vexp(zk) * inv_s
        log_p = np.float64(zk) - log_s
        t = (1.0 if k == y else 0.0) if sparse else np.float64(trow[k])
        value += hooks.p_term(loss_code, p, log_p, t)
        dot += p * hooks.p_phi(loss_code, p, log_p, t)
    if write_grad:
        for k in range(c):
            zk = row[k] - m
            p = vexp(zk) * inv_s
            log_p = np.float64(zk) - log_s
            t = (1.0 if k == y else 0.0) if sparse else np.float64(trow[k])
            g[k] = like(si * p * (hooks.p_phi(loss_code, p, log_p, t) - dot), g)
    return value


@njit(**KERNEL)
def _softmax_fn(lo, hi, x, target, sparse, loss_code, scale, loss, grad, write_grad):
    """``target``: (N, 1) class indices (``sparse``) or (N, C) probabilities; the entropy,
    which has none, passes ``x`` (never read)."""
    for i in range(lo, hi):
        g = grad[i] if write_grad else grad[0]
        si = scale[i] if write_grad else 1.0
        # constant flags in each call: LLVM specialises the loops (see _dense_stats)
        if loss_code == hooks.ENTROPY:
            loss[i] = _fn_row(x[i], x[i], -1, False, hooks.ENTROPY, si, g, write_grad)
        elif sparse:
            loss[i] = _fn_row(x[i], target[i], np.int64(target[i, 0]), True,
                              hooks.SOFTMAX_MSE, si, g, write_grad)
        else:
            loss[i] = _fn_row(x[i], target[i], -1, False, hooks.SOFTMAX_MSE, si, g,
                              write_grad)


def _run_softmax_fn(x, target, loss_code, scale, loss, grad, n_threads):
    g, write_grad = _grad_arg(grad, x)
    x, target = _readable(x), _readable(target)
    sparse = target.ndim == 1
    if sparse:
        target = target.reshape(-1, 1)
    n, c = x.shape
    run_ranges(_softmax_fn, n, c, n_threads, x, target, sparse, loss_code,
               _NO_ROWS if scale is None else scale, loss, g, write_grad)


def softmax_mse(x, target, scale, loss, grad, n_threads):
    _run_softmax_fn(x, target, hooks.SOFTMAX_MSE, scale, loss, grad, n_threads)


def entropy(x, scale, loss, grad, n_threads):
    _run_softmax_fn(x, x, hooks.ENTROPY, scale, loss, grad, n_threads)


# ------------------------------------------------------------------------ shape 3: elementwise

@njit(**INLINE)
def _element_rows(lo, hi, x, target, weight, has_weight, pos_weight, has_pos_weight,
                  loss_code, scale, loss, per_element, grad, write_grad):
    c = x.shape[1]
    for i in range(lo, hi):
        row_sum = 0.0
        for k in range(c):
            v = np.float64(x[i, k])
            t = np.float64(target[i, k])
            w = weight[i, k] if has_weight else 1.0
            pw = pos_weight[k] if has_pos_weight else 1.0
            value = hooks.element_value(loss_code, v, t, w, pw)
            if per_element:
                loss[i, k] = value
            else:
                row_sum += value
            if write_grad:
                grad[i, k] = like(scale[i, k] * hooks.element_slope(loss_code, v, t, w, pw),
                                  grad)
        if not per_element:
            loss[i, 0] = row_sum


@njit(**KERNEL)
def _elementwise(lo, hi, x, target, weight, has_weight, pos_weight, has_pos_weight, loss_code,
                 scale, loss, per_element, grad, write_grad):
    """``loss`` is (N, C) (``per_element``) or (N, 1) row sums; ``scale`` and ``weight`` may
    be broadcast views.  Constant flags in each call: LLVM specialises the loops."""
    if loss_code == hooks.MSE:
        _element_rows(lo, hi, x, target, weight, False, pos_weight, False, hooks.MSE, scale,
                      loss, per_element, grad, write_grad)
    else:
        _element_rows(lo, hi, x, target, weight, has_weight, pos_weight, has_pos_weight,
                      hooks.BCE, scale, loss, per_element, grad, write_grad)


def _run_elementwise(loss_code, x, target, weight, pos_weight, scale, loss, grad, n_threads):
    g, write_grad = _grad_arg(grad, x)
    x, target = _readable(x), _readable(target)
    n, c = x.shape
    run_ranges(_elementwise, n, c, n_threads, x, target,
               _NO_ELEMENTS if weight is None else weight, weight is not None,
               _NO_ROWS if pos_weight is None else pos_weight, pos_weight is not None,
               loss_code, _NO_ELEMENTS if scale is None else scale,
               loss if loss.ndim == 2 else loss[:, None], loss.ndim == 2, g, write_grad)


def binary_cross_entropy(x, target, weight, pos_weight, scale, loss, grad, n_threads):
    _run_elementwise(hooks.BCE, x, target, weight, pos_weight, scale, loss, grad, n_threads)


def mse(x, target, scale, loss, grad, n_threads):
    _run_elementwise(hooks.MSE, x, target, None, None, scale, loss, grad, n_threads)


# --------------------------------------------------------------------------------- transforms

@njit(**KERNEL)
def _softmax_rows(lo, hi, x, out, log, block_max):
    c = x.shape[1]
    for i in range(lo, hi):
        row = x[i]
        if log:
            m, s = online_sum_exp(row)
        else:
            m, s = exp_blocks(row, out[i], block_max, False)
        if poisoned(m, s):
            fill_row(out[i], NAN)
        elif log:
            log_s = math.log(s)
            for k in range(c):
                out[i, k] = like((np.float64(row[k]) - m) - log_s, out)
        else:
            scale_blocks(out[i], block_max, m, 1.0 / s)


def _run_softmax_rows(x, out, log, n_threads):
    x = _readable(x)
    n, c = x.shape

    def rows(lo, hi):
        _softmax_rows(lo, hi, x, out, log, np.empty(_n_blocks(c)))

    run_ranges(rows, n, c, n_threads)


def softmax(x, out, n_threads):
    _run_softmax_rows(x, out, False, n_threads)


def log_softmax(x, out, n_threads):
    _run_softmax_rows(x, out, True, n_threads)


@njit(**KERNEL)
def _logsumexp_rows(lo, hi, x, out):
    for i in range(lo, hi):
        row = x[i]
        m = row_max(row)
        s = sum_exp(row, m)
        out[i] = poisoned_lse(row) if poisoned(m, s) else m + math.log(s)


def logsumexp(x, out, n_threads):
    x = _readable(x)
    run_ranges(_logsumexp_rows, x.shape[0], x.shape[1], n_threads, x, out)


# --------------------------------------------------------------------------------- baselines

@njit(**KERNEL)
def _copy_rows(lo, hi, src, dst):
    for i in range(lo, hi):
        for k in range(src.shape[1]):
            dst[i, k] = src[i, k]


@njit(**KERNEL)
def _read_rows(lo, hi, src, out):
    for i in range(lo, hi):
        s = 0.0
        for k in range(src.shape[1]):
            s += src[i, k]
        out[i] = s


def parallel_copy(src, dst, n_threads=None):
    """The physical limit of a fused forward+backward: read every logit, write every grad.
    ``n_threads`` defaults to every core."""
    run_ranges(_copy_rows, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, dst)


def parallel_read(src, out, n_threads=None):
    """The physical limit of a forward pass: read every logit once."""
    run_ranges(_read_rows, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, out)
