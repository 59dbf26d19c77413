"""The ``numba`` backend: fused row kernels, parallel over rows with ``prange``.

Each row is handled by one thread, start to finish, so results do not depend on the thread
count; the batch reduction happens afterwards, in a fixed order, in :mod:`fastloss._api`.
A row is read from memory once (the max pass) and its gradient written once: the later passes
find the row in cache (128k float32 classes are 512 KiB).  Row sums accumulate in float64.

Notation as in :mod:`fastloss.reference`: ``m`` the row max, ``e_c = exp(x_c - m)``,
``s = sum_c e_c``, so ``p_c = e_c / s`` and ``-log p_c = (m - x_c) + log s``.
Kernels implement the protocol documented in :mod:`fastloss._numpy_kernels`.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from numba import njit, prange

from .numba_math import (
    BLOCK,
    INLINE,
    JIT,
    exp_blocks,
    fill_row,
    like,
    online_sum_exp,
    poisoned,
    row_max,
    scale_blocks,
    sum_exp,
    vexp,
)

ACCEPTS_DEVICE_ARRAYS = False
PARALLEL = dict(JIT, parallel=True)
NAN = np.nan


def unavailable_reason():
    return None


@contextlib.contextmanager
def thread_limit(n_threads):
    if n_threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


_DUMMY = {np.dtype(np.float32): np.zeros((1, 1), np.float32),
          np.dtype(np.float64): np.zeros((1, 1), np.float64)}


def _grad_arg(grad, x):
    """Numba wants one array type: a 1x1 dummy stands for 'no gradient'."""
    return (_DUMMY[x.dtype], False) if grad is None else (grad, True)


@njit(**JIT)
def _poison(loss, grad, i, write_grad):
    """NaN loss and gradient for row ``i`` (it holds a NaN or +inf, or only -inf)."""
    loss[i] = NAN
    if write_grad:
        fill_row(grad[i], NAN)


def _readable(a):
    """Read-only arrays would compile a second copy of every kernel; copy them instead."""
    return a if a is None or a.flags.writeable else a.copy()


# --------------------------------------------------------------------------------- cross-entropy

@njit(**INLINE)
def _chunking(n_rows, n_cols):
    """Rows per chunk of the parallel loop: about 16k classes per chunk (each chunk allocates
    its block-max scratch once), and at least 16 chunks so two threads stay balanced."""
    rows = max(1, 16384 // n_cols)
    rows = min(rows, max(1, n_rows // 16))
    return rows, (n_rows + rows - 1) // rows


@njit(**INLINE)
def _ce_index_row(row, y, weight, w_total, eps, si, g, write_grad, in_place, block_max):
    """Loss of one row with class index ``y``; writes ``si * d loss / d row`` into ``g``."""
    c = row.shape[0]
    eps_c = eps / c
    a_y = (1.0 - eps) * weight[y]  # coefficient of -log p_y
    x_y = np.float64(row[y])  # read before the gradient may overwrite the row
    wx = 0.0  # sum_c w_c x_c for the smoothing term, 0 * (-inf) counted as 0
    if eps > 0.0:
        for k in range(c):
            wk = weight[k]
            wx += wk * np.float64(row[k]) if wk != 0.0 else 0.0
    if write_grad:
        m, s = exp_blocks(row, g, block_max, in_place)
    else:
        m, s = online_sum_exp(row)
    if poisoned(m, s):
        if write_grad:
            fill_row(g, NAN)
        return NAN
    log_s = math.log(s)
    # -log p_c = (m - x_c) + log s
    value = a_y * ((m - x_y) + log_s) if a_y != 0.0 else 0.0
    if eps > 0.0:
        # eps/C sum_c w_c (-log p_c) = eps/C ((W m - sum_c w_c x_c) + W log s)
        value += eps_c * ((w_total * m - wx) + w_total * log_s)
    if write_grad:
        # d loss / d x_c = A p_c - a_c, A = a_y + eps/C W, a_c = eps/C w_c + [c = y] a_y
        big_a = a_y + eps_c * w_total
        scale_blocks(g, block_max, m, si * big_a / s)
        if eps > 0.0:
            for k in range(c):
                g[k] -= like(si * eps_c * weight[k], g)
        p_y = math.exp(x_y - m) / s
        g[y] = si * (big_a * p_y - a_y - eps_c * weight[y])
    return value


@njit(**PARALLEL)
def _ce_index_kernel(x, target, weight, ignore_index, eps, scale, loss, grad, write_grad,
                     in_place):
    n, c = x.shape
    w_total = 0.0
    for k in range(c):
        w_total += weight[k]
    rows, n_chunks = _chunking(n, c)
    for chunk in prange(n_chunks):
        block_max = np.empty((c + BLOCK - 1) // BLOCK)
        for i in range(chunk * rows, min(n, chunk * rows + rows)):
            y = target[i]
            if y == ignore_index:
                loss[i] = 0.0
                if write_grad:
                    fill_row(grad[i], 0.0)
                continue
            g = grad[i] if write_grad else grad[0]
            si = scale[i] if write_grad else 1.0
            loss[i] = _ce_index_row(x[i], y, weight, w_total, eps, si, g, write_grad, in_place,
                                    block_max)


@njit(**INLINE)
def _ce_prob_row(row, t, weight, eps, si, g, write_grad, in_place, block_max):
    """Loss of one row with target probabilities ``t``; writes its gradient into ``g``."""
    c = row.shape[0]
    eps_c = eps / c
    keep = 1.0 - eps
    big_a = 0.0  # sum_c a_c, a_c = w_c ((1 - eps) t_c + eps / C)
    ax = 0.0  # sum_c a_c x_c, skipping a_c = 0 (0 log 0 = 0)
    for k in range(c):
        a = weight[k] * (keep * t[k] + eps_c)
        big_a += a
        ax += a * np.float64(row[k]) if a != 0.0 else 0.0
    if write_grad:
        m, s = exp_blocks(row, g, block_max, in_place)
    else:
        m, s = online_sum_exp(row)
    if poisoned(m, s):
        if write_grad:
            fill_row(g, NAN)
        return NAN
    if write_grad:
        scale_blocks(g, block_max, m, si * big_a / s)
        for k in range(c):
            g[k] -= like(si * weight[k] * (keep * t[k] + eps_c), g)
    # sum_c a_c (-log p_c) = sum_c a_c ((m - x_c) + log s)
    return (big_a * m - ax) + big_a * math.log(s)


@njit(**PARALLEL)
def _ce_prob_kernel(x, target, weight, eps, scale, loss, grad, write_grad, in_place):
    n, c = x.shape
    rows, n_chunks = _chunking(n, c)
    for chunk in prange(n_chunks):
        block_max = np.empty((c + BLOCK - 1) // BLOCK)
        for i in range(chunk * rows, min(n, chunk * rows + rows)):
            g = grad[i] if write_grad else grad[0]
            si = scale[i] if write_grad else 1.0
            loss[i] = _ce_prob_row(x[i], target[i], weight, eps, si, g, write_grad, in_place,
                                   block_max)


def ce(x, target, weight, ignore_index, eps, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    in_place = grad is not None and np.may_share_memory(grad, x)  # validated: same or disjoint
    scale = np.zeros(0) if scale is None else scale
    x, target = _readable(x), _readable(target)
    if target.ndim == 1:
        _ce_index_kernel(x, target, weight, ignore_index, eps, scale, loss, g, write, in_place)
    else:
        _ce_prob_kernel(x, target, weight, eps, scale, loss, g, write, in_place)


# --------------------------------------------------------------------------------- softmax MSE

@njit(**PARALLEL)
def _softmax_mse_kernel(x, target_index, target_prob, scale, loss, grad, write_grad):
    """One kernel for both target kinds: ``target_index[i] < 0`` means 'use target_prob'."""
    n, c = x.shape
    for i in prange(n):
        row = x[i]
        m = row_max(row)
        s = sum_exp(row, m)
        if poisoned(m, s):
            _poison(loss, grad, i, write_grad)
            continue
        y = target_index[i] if target_index.shape[0] else -1
        inv_s = 1.0 / s
        # sq = sum_c (p_c - t_c)^2, dot = sum_c (p_c - t_c) p_c
        sq = 0.0
        dot = 0.0
        for k in range(c):
            p = vexp(row[k] - m) * inv_s
            t = (1.0 if k == y else 0.0) if y >= 0 else np.float64(target_prob[i, k])
            d = p - t
            sq += d * d
            dot += d * p
        loss[i] = sq
        if write_grad:
            # d loss / d x_j = 2 p_j ((p_j - t_j) - dot)
            g = grad[i]
            two_scale = 2.0 * scale[i]
            for k in range(c):
                p = vexp(row[k] - m) * inv_s
                t = (1.0 if k == y else 0.0) if y >= 0 else np.float64(target_prob[i, k])
                g[k] = like(two_scale * p * (p - t - dot), g)


def softmax_mse(x, target, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    scale = np.zeros(0) if scale is None else scale
    x, target = _readable(x), _readable(target)
    if target.ndim == 1:
        _softmax_mse_kernel(x, target, np.zeros((0, 0), x.dtype), scale, loss, g, write)
    else:
        _softmax_mse_kernel(x, np.zeros(0, np.int64), target, scale, loss, g, write)


# --------------------------------------------------------------------------------- KL, entropy

@njit(**INLINE)
def _kl_row(row, tr, log_target, si, g, write_grad, in_place, block_max):
    """KL(t || softmax(row)) of one row; writes ``si * (T p - t)`` into ``g``."""
    c = row.shape[0]
    # loss = sum_c t_c log t_c + sum_c t_c (m - x_c) + T log s, terms with t_c = 0 dropped
    big_t = 0.0
    t_log_t = 0.0
    t_x = 0.0
    for k in range(c):
        v = np.float64(tr[k])
        t = math.exp(v) if log_target else v
        if t != 0.0:
            big_t += t
            t_log_t += t * (v if log_target else math.log(t))
            t_x += t * np.float64(row[k])
    if write_grad:
        m, s = exp_blocks(row, g, block_max, in_place)
    else:
        m, s = online_sum_exp(row)
    if poisoned(m, s):
        if write_grad:
            fill_row(g, NAN)
        return NAN
    if write_grad:
        scale_blocks(g, block_max, m, si * big_t / s)
        for k in range(c):
            v = np.float64(tr[k])
            g[k] -= like(si * (math.exp(v) if log_target else v), g)
    return t_log_t + (big_t * m - t_x) + big_t * math.log(s)


@njit(**PARALLEL)
def _kl_kernel(x, target, log_target, scale, loss, grad, write_grad, in_place):
    n, c = x.shape
    rows, n_chunks = _chunking(n, c)
    for chunk in prange(n_chunks):
        block_max = np.empty((c + BLOCK - 1) // BLOCK)
        for i in range(chunk * rows, min(n, chunk * rows + rows)):
            g = grad[i] if write_grad else grad[0]
            si = scale[i] if write_grad else 1.0
            loss[i] = _kl_row(x[i], target[i], log_target, si, g, write_grad, in_place,
                              block_max)


def kl(x, target, log_target, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    in_place = grad is not None and np.may_share_memory(grad, x)
    scale = np.zeros(0) if scale is None else scale
    _kl_kernel(_readable(x), _readable(target), log_target, scale, loss, g, write, in_place)


@njit(**PARALLEL)
def _entropy_kernel(x, scale, loss, grad, write_grad):
    n, c = x.shape
    for i in prange(n):
        row = x[i]
        m = row_max(row)
        # H = log s - sum_c e_c z_c / s with z_c = x_c - m (e_c = 0 for impossible classes)
        s = 0.0
        ez = 0.0
        for k in range(c):
            z = row[k] - m
            e = vexp(z)
            s += e
            ez += np.float64(e) * z if e > 0 else 0.0
        if poisoned(m, s):
            _poison(loss, grad, i, write_grad)
            continue
        log_s = math.log(s)
        h = log_s - ez / s
        loss[i] = h
        if write_grad:
            # dH/dx_j = -p_j (log p_j + H), log p_j = z_j - log s; recomputed from the row
            # so that out=logits (grad is the row) stays correct
            g = grad[i]
            si = scale[i]
            inv_s = 1.0 / s
            for k in range(c):
                z = np.float64(row[k] - m)
                p = vexp(z) * inv_s
                g[k] = like(-si * p * (z - log_s + h), g) if p > 0 else like(0.0, g)


def entropy(x, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    scale = np.zeros(0) if scale is None else scale
    _entropy_kernel(_readable(x), scale, loss, g, write)


# --------------------------------------------------------------------------------- elementwise

@njit(**JIT)
def _softplus(v):
    """log(1 + e^v) = max(v, 0) + log1p(e^-|v|): no overflow, full accuracy for v << 0."""
    return (v if v > 0.0 else 0.0) + math.log1p(math.exp(-abs(v)))


@njit(**JIT)
def _sigmoid(v):
    e = math.exp(-abs(v))
    return 1.0 / (1.0 + e) if v >= 0.0 else e / (1.0 + e)


@njit(**PARALLEL)
def _bce_kernel(x, target, weight, has_weight, pos_weight, has_pos_weight, scale, loss,
                per_element, grad, write_grad):
    n, c = x.shape
    for i in prange(n):
        row_sum = 0.0
        for k in range(c):
            v = np.float64(x[i, k])
            t = np.float64(target[i, k])
            w = weight[i, k] if has_weight else 1.0
            a = pos_weight[k] * t if has_pos_weight else t  # coefficient of -log sigma(v)
            b = 1.0 - t  # coefficient of -log(1 - sigma(v))
            value = w * ((a * _softplus(-v) if a != 0.0 else 0.0)
                         + (b * _softplus(v) if b != 0.0 else 0.0))
            if per_element:
                loss[i, k] = value
            else:
                row_sum += value
            if write_grad:
                d = w * (b * _sigmoid(v) - a * _sigmoid(-v))
                grad[i, k] = like(scale[i, k] * d, grad)
        if not per_element:
            loss[i, 0] = row_sum


def bce(x, target, weight, pos_weight, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    scale = np.zeros((0, 0)) if scale is None else scale
    w = np.zeros((0, 0)) if weight is None else weight
    pw = np.zeros(0) if pos_weight is None else pos_weight
    _bce_kernel(_readable(x), _readable(target), w, weight is not None, pw,
                pos_weight is not None, scale, _as_2d(loss), loss.ndim == 2,
                g, write)


@njit(**PARALLEL)
def _mse_kernel(x, target, scale, loss, per_element, grad, write_grad):
    n, c = x.shape
    for i in prange(n):
        row_sum = 0.0
        for k in range(c):
            d = np.float64(x[i, k]) - np.float64(target[i, k])
            if per_element:
                loss[i, k] = d * d
            else:
                row_sum += d * d
            if write_grad:
                grad[i, k] = like(2.0 * scale[i, k] * d, grad)
        if not per_element:
            loss[i, 0] = row_sum


def _as_2d(loss):
    return loss if loss.ndim == 2 else loss[:, None]


def mse(x, target, scale, loss, grad):
    g, write = _grad_arg(grad, x)
    scale = np.zeros((0, 0)) if scale is None else scale
    _mse_kernel(_readable(x), _readable(target), scale, _as_2d(loss),
                loss.ndim == 2, g, write)


# --------------------------------------------------------------------------------- transforms

@njit(**PARALLEL)
def _softmax_kernel(x, out, log):
    n, c = x.shape
    rows, n_chunks = _chunking(n, c)
    for chunk in prange(n_chunks):
        block_max = np.empty((c + BLOCK - 1) // BLOCK)
        for i in range(chunk * rows, min(n, chunk * rows + rows)):
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


def softmax(x, out):
    _softmax_kernel(_readable(x), out, False)


def log_softmax(x, out):
    _softmax_kernel(_readable(x), out, True)


@njit(**PARALLEL)
def _logsumexp_kernel(x, out):
    n, c = x.shape
    for i in prange(n):
        row = x[i]
        m = row_max(row)
        s = sum_exp(row, m)
        if poisoned(m, s):
            has_nan = False
            for k in range(c):
                has_nan |= row[k] != row[k]
            out[i] = NAN if has_nan else m  # +inf row: +inf; all -inf: -inf
            continue
        out[i] = m + math.log(s)


def logsumexp(x, out):
    _logsumexp_kernel(_readable(x), out)


# --------------------------------------------------------------------------------- baselines

@njit(**PARALLEL)
def _copy_rows(src, dst):
    for i in prange(src.shape[0]):
        for k in range(src.shape[1]):
            dst[i, k] = src[i, k]


@njit(**PARALLEL)
def _read_rows(src, out):
    for i in prange(src.shape[0]):
        s = 0.0
        for k in range(src.shape[1]):
            s += src[i, k]
        out[i] = s


def parallel_copy(src, dst):
    """The physical limit of a fused forward+backward: read every logit, write every grad."""
    _copy_rows(src, dst)


def parallel_read(src, out):
    """The physical limit of a forward pass: read every logit once."""
    _read_rows(src, out)
