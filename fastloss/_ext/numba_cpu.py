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

from .._numpy_kernels import (  # noqa: F401 (as_rows, empty: host memory, as the reference)
    as_rows,
    empty,
    row_scales,
)
from ._threads import run_ranges
from .numba_math import (
    BLOCK,
    IR_INLINE,
    KERNEL,
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
    vlog1p_unit,
    wide_vectors,
)

ACCEPTS_DEVICE_ARRAYS = False
NAN = np.nan
# The range kernels run with KERNEL (numba_math: no reference counting), so they allocate
# nothing: their scratch (block maxima, the transformed row) is allocated by the pool, once
# per worker (run_ranges(..., scratch=)).


def unavailable_reason():
    return None


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

@njit(**IR_INLINE)
def _dense_stats(row, trow, weight, keep, eps_c, log_target, kl, m0):
    """``(A, sum_c a_c (m0 - z_c), const)`` of a row of probability / log-probability
    targets, ``m0`` the row max.  Summing the gaps to the max, not ``A m - sum_c a_c z_c``,
    keeps rows of huge logits exact (1e30 - 1e30 cancels to 0, (A m) - (sum a z) does not)."""
    big_a = 0.0
    gap = 0.0
    const = 0.0
    for k in range(row.shape[0]):
        v = np.float64(trow[k])
        a = hooks.ce_coef(hooks.target_prob(v, log_target), weight[k], keep, eps_c)
        big_a += a
        gap += hooks.weighted(a, m0 - np.float64(row[k]))
        if kl:
            const += hooks.target_t_log_t(v, log_target)
    return big_a, gap, const


@njit(**IR_INLINE)
def _subtract_dense(g, trow, weight, keep, eps_c, si, log_target):
    """``g_c -= si a_c`` for probability / log-probability targets."""
    for k in range(g.shape[0]):
        a = hooks.ce_coef(hooks.target_prob(np.float64(trow[k]), log_target), weight[k], keep,
                          eps_c)
        g[k] -= like(si * a, g)


@njit(**IR_INLINE)
def _linear_row(row, trow, sparse, y, weight, w_total, keep, eps_c, log_target, kl, z_grad,
                si, g, write_grad, in_place, block_max, tmp):
    """Loss and logsumexp of one row of (transformed) logits ``row``; writes
    ``si * d loss / d row`` into ``g`` (which may be ``row`` itself: ``in_place``).  ``tmp``:
    scratch of the row's dtype for the forward alone with class indices (one block of exp:
    ``online_sum_exp``)."""
    c = row.shape[0]
    # statistics of the coefficients: read before the gradient may overwrite the row
    z_y = 0.0
    a_t = 0.0  # sparse: the target's share of a_y
    big_a = 0.0  # A = sum_c a_c
    gap = 0.0  # sum_c a_c (m0 - z_c) (sparse: sum_c w_c (m0 - z_c)), 0 * inf counted as 0
    const = 0.0
    m0 = 0.0  # the row max, taken first where the sums need it (the row is then in cache)
    if sparse:
        z_y = np.float64(row[y])
        a_t = hooks.ce_coef(1.0, weight[y], keep, 0.0)
        big_a = a_t + eps_c * w_total
        if eps_c > 0.0:
            m0 = np.float64(row_max(row))
            for k in range(c):
                gap += hooks.weighted(weight[k], m0 - np.float64(row[k]))
    else:
        m0 = np.float64(row_max(row))
        if not kl:  # the flags as constants: LLVM drops the exp / log of the KL's cases
            big_a, gap, const = _dense_stats(row, trow, weight, keep, eps_c, False, False, m0)
        elif log_target:
            big_a, gap, const = _dense_stats(row, trow, weight, keep, eps_c, True, True, m0)
        else:
            big_a, gap, const = _dense_stats(row, trow, weight, keep, eps_c, False, True, m0)
    # class indices: the sums leave the class y out (rest = sum_{c != y} e_c); with e_y in
    # float64, s = rest + e_y and 1 - p_y = rest / s without the cancellation of 1 - e_y / s
    # (about 2 digits of a float32 gradient as p_y nears 1).  A NaN at y makes s NaN.
    skip = y if sparse else -1
    if write_grad:
        m, s = exp_blocks(row, g, block_max, in_place, skip)
    else:
        m, s = online_sum_exp(row, skip, tmp)
    rest = s
    e_y = math.exp(z_y - m) if sparse and m > -np.inf else 0.0
    s = rest + e_y
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
            value += eps_c * hooks.linear_loss(w_total, hooks.shift_gap(w_total, gap, m, m0),
                                               0.0, log_s)
    else:
        value = hooks.linear_loss(big_a, hooks.shift_gap(big_a, gap, m, m0), const, log_s)
    if write_grad:
        big_a_p = hooks.p_coef(big_a, z_grad, lse)
        scale_blocks(g, block_max, m, si * big_a_p / s)  # g_c = si A' p_c
        if sparse:
            if eps_c > 0.0:
                for k in range(c):
                    g[k] -= like(si * hooks.ce_coef(0.0, weight[k], keep, eps_c), g)
            # A' p_y - a_y = (A' - a_y) p_y - a_y (1 - p_y), in float64
            d_y = hooks.ce_coef(0.0, weight[y], keep, eps_c)
            g[y] = si * ((big_a_p - a_t) * (e_y / s) - a_t * (rest / s) - d_y)
        elif log_target:
            _subtract_dense(g, trow, weight, keep, eps_c, si, True)
        else:
            _subtract_dense(g, trow, weight, keep, eps_c, si, False)
    return value, lse


def _softmax_linear_kernel(sparse):
    """The kernel for class indices (``sparse``: ``target`` (N, 1)) or probabilities
    (``target`` (N, C)).  Two kernels, ``sparse`` a constant of each: one kernel with a
    run-time ``sparse`` compiled both kinds of row for every argument type."""

    @njit(**KERNEL)
    def kernel(lo, hi, x, target, ignore_index, weight, w_total, keep, eps_c, log_target, kl,
               softcap, inv_temperature, z_grad, scale, loss, lse, grad, write_grad, write_lse,
               in_place, block_max, z, slope, tmp):
        """Rows ``lo:hi``.  With a softcap or a temperature, each row is first transformed into
        the float64 scratch row ``z`` (its slope ``dz/dx`` beside it), and the gradient multiplied
        by the slope at the end; without, the skeleton runs on ``x`` itself."""
        wide_vectors()
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
                # slope as the forward's scratch (of z's dtype): only the gradient reads it
                value, lse_i = _linear_row(z, target[i], sparse, y, weight, w_total, keep, eps_c,
                                           log_target, kl, z_grad, si, g, write_grad, False,
                                           block_max, slope)
                if write_grad:
                    for k in range(c):
                        g[k] = like(g[k] * slope[k], g)
            else:
                value, lse_i = _linear_row(x[i], target[i], sparse, y, weight, w_total, keep,
                                           eps_c, log_target, kl, z_grad, si, g, write_grad,
                                           in_place, block_max, tmp)
            loss[i] = value
            if write_lse:
                lse[i] = lse_i

    return kernel


_SOFTMAX_LINEAR = {True: _softmax_linear_kernel(True), False: _softmax_linear_kernel(False)}


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
    args = (x, target, ignore_index, weight, float(np.sum(weight)),
            1.0 - label_smoothing, label_smoothing / c if c else 0.0, log_target, kl, softcap,
            inv_temperature, float(z_grad), _NO_ROWS if scale is None else row_scales(scale, n),
            loss,
            _NO_ROWS if lse is None else lse, g, write_grad, lse is not None, in_place)

    n_tmp = min(c, BLOCK) if sparse and not write_grad else 0  # online_sum_exp's block
    run_ranges(_SOFTMAX_LINEAR[sparse], n, c, n_threads, *args,
               scratch=lambda: (np.empty(_n_blocks(c)), np.empty(scratch), np.empty(scratch),
                                np.empty(n_tmp, x.dtype)))


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

@njit(**IR_INLINE)
def _rest_sums(row, y, m, inv_s):
    """Softmax MSE with a one-hot target: ``(R, Q)``, ``R = sum_{k != y} p_k = 1 - p_y`` and
    ``Q = sum_{k != y} p_k^2`` (a select, not a branch: the loop vectorises)."""
    rest = 0.0
    q = 0.0
    for k in range(row.shape[0]):
        p = vexp(row[k] - m) * inv_s
        p = 0.0 if k == y else p
        rest += p
        q += p * p
    return rest, q


@njit(**IR_INLINE)
def _fn_row(row, trow, y, sparse, loss_code, si, g, write_grad):
    """Loss of one row; writes ``si * d loss / d row`` into ``g`` (which may be ``row``: the
    gradient pass recomputes p from the row element by element)."""
    c = row.shape[0]
    m = row_max(row)
    s = sum_exp(row, m, -1, row)  # nothing left out: nothing stored
    if poisoned(m, s):
        if write_grad:
            fill_row(g, NAN)
        return NAN
    log_s = math.log(s)
    inv_s = 1.0 / s
    p_y = 0.0
    value = 0.0
    dot = 0.0  # sum_k p_k phi_k
    if sparse:  # softmax MSE, one-hot target: (p_y - 1)^2 and 2 p_y (p_y - 1) from
        # 1 - p_y = rest, without cancellation as p_y nears 1
        rest, q = _rest_sums(row, y, m, inv_s)
        p_y = vexp(row[y] - m) * inv_s
        value = q + rest * rest
        dot = 2.0 * (q - p_y * rest)
    else:
        for k in range(c):
            zk = row[k] - m
            p = vexp(zk) * inv_s
            log_p = np.float64(zk) - log_s
            t = np.float64(trow[k])
            value += hooks.p_term(loss_code, p, log_p, t)
            dot += p * hooks.p_phi(loss_code, p, log_p, t)
    if write_grad:
        for k in range(c):
            zk = row[k] - m
            p = vexp(zk) * inv_s
            log_p = np.float64(zk) - log_s
            t = 0.0 if sparse else np.float64(trow[k])
            g[k] = like(si * p * (hooks.p_phi(loss_code, p, log_p, t) - dot), g)
        if sparse:  # si p_y (2 (p_y - 1) - dot) = -2 si p_y loss, without cancellation
            g[y] = like(-2.0 * si * p_y * value, g)
    return value


def _softmax_fn_kernel(loss_code, sparse):
    """The kernel of one loss (``hooks.SOFTMAX_MSE``, ``hooks.ENTROPY``) and target kind:
    ``target`` (N, 1) class indices (``sparse``) or (N, C) probabilities; the entropy, which
    has none, passes ``x`` (never read).  Both constants of each kernel (LLVM specialises
    the loops, see _dense_stats; one kernel compiled every loss and kind for every argument
    type)."""

    @njit(**KERNEL)
    def kernel(lo, hi, x, target, scale, loss, grad, write_grad):
        wide_vectors()
        for i in range(lo, hi):
            g = grad[i] if write_grad else grad[0]
            si = scale[i] if write_grad else 1.0
            y = np.int64(target[i, 0]) if sparse else np.int64(-1)
            loss[i] = _fn_row(x[i], target[i], y, sparse, loss_code, si, g, write_grad)

    return kernel


_SOFTMAX_FN = {(code, sparse): _softmax_fn_kernel(code, sparse)
               for code, sparse in ((hooks.ENTROPY, False), (hooks.SOFTMAX_MSE, False),
                                    (hooks.SOFTMAX_MSE, True))}


def _run_softmax_fn(x, target, loss_code, scale, loss, grad, n_threads):
    g, write_grad = _grad_arg(grad, x)
    x, target = _readable(x), _readable(target)
    sparse = target.ndim == 1
    if sparse:
        target = target.reshape(-1, 1)
    n, c = x.shape
    run_ranges(_SOFTMAX_FN[loss_code, sparse], n, c, n_threads, x, target,
               _NO_ROWS if scale is None else row_scales(scale, n), loss, g, write_grad)


def softmax_mse(x, target, scale, loss, grad, n_threads):
    _run_softmax_fn(x, target, hooks.SOFTMAX_MSE, scale, loss, grad, n_threads)


def entropy(x, scale, loss, grad, n_threads):
    _run_softmax_fn(x, x, hooks.ENTROPY, scale, loss, grad, n_threads)


# ------------------------------------------------------------------------ shape 3: elementwise

# The elements are processed flat, in tiles of about ELEMENT_TILE elements: whole rows, or
# pieces of a row longer than that.  Whole rows, not one row at a time: a row of 10 classes
# would leave most of its elements to the loop's scalar remainder, where the exp -> log1p ->
# division chain of the BCE is latency-bound (20x).  512 elements, as the C kernels' tiles
# (FL_TILE): the BCE's loops go over six or more tile-sized arrays (logits, target,
# gradient, exp, log1p, values), which then stay in L1.  With tiles of 4096 elements and whole
# rows of any length (128 KiB arrays at 32768 classes), the BCE at 2048x32768 took 1.1-1.6x the
# time (docs/design.md, elementwise).
# The BCE's weights are first copied into tiles in the logits' dtype, as the C kernels do
# (pos_weight once, weight once per tile): indexed as ``weight[j // c, j % c]`` inside the
# loop, they kept it from vectorising (7-9x the unweighted time).

ELEMENT_TILE = 512


@njit(**IR_INLINE)
def _element_tile(x, t, w, pw, weighted, loss_code, scale, uniform, s0, values, g,
                  write_grad, e, lg):
    """One tile of flat elements: ``values[j] = value``, ``g[j] = scale * slope``, the scale
    ``s0`` everywhere (``uniform``) or ``scale[j]``, the weight ``w[j]`` and pos_weight
    ``pw[j]`` (``weighted``) or 1.  ``weighted``, ``write_grad`` and ``uniform`` are constants
    in each call (straight vectorisable loops); one exp and one log1p per element
    (hooks.element_value_slope), the BCE in float32 for float32 logits (the values are summed
    in float64).  The BCE's ``e = exp(-|x|)`` and ``log1p(e)`` go first into the scratch
    ``e``, ``lg``, each in a loop of its own, as the C kernels' bce_tile_exp: in one loop the
    chain exp -> division -> log1p series -> division made it latency-bound."""
    one = like(1.0, x)  # the BCE in the logits' precision (hooks.bce_value_slope)
    s0 = like(s0, x)
    n = x.shape[0]
    if loss_code == hooks.BCE:
        for j in range(n):
            e[j] = vexp(-abs(x[j]))
        for j in range(n):
            lg[j] = vlog1p_unit(e[j])
    for j in range(n):
        if loss_code == hooks.BCE:
            value, slope = hooks.bce_value_slope_el(x[j], e[j], lg[j], t[j],
                                                    w[j] if weighted else one,
                                                    pw[j] if weighted else one, one)
        else:
            value, slope = hooks.element_value_slope(loss_code, x[j], t[j],
                                                     w[j] if weighted else one,
                                                     pw[j] if weighted else one, one)
        if write_grad:  # (else LLVM drops the slope's work)
            g[j] = like((s0 if uniform else like(scale[j], x)) * slope, g)
        values[j] = like(value, values)


@njit(**IR_INLINE)
def _weight_tile(out, weight, i0, i1, k0, k1):
    """``out[(i - i0) * (k1 - k0) + k - k0] = weight[i, k]`` for the rows ``i0:i1``, columns
    ``k0:k1`` of the (N, C) ``weight``, in ``out``'s dtype."""
    width = k1 - k0
    for r in range(i1 - i0):
        w_row = weight[i0 + r, k0:k1]
        o = out[r * width:(r + 1) * width]
        for k in range(width):
            o[k] = like(w_row[k], out)


@njit(**IR_INLINE)
def _element_rows(lo, hi, c, x, target, weight, has_weight, pos_weight, has_pos_weight, wt,
                  pwt, weighted, loss_code, scale, uniform, loss, per_element, grad,
                  write_grad, values, eb, lb):
    """Rows ``lo:hi`` of the flat (N * C) arrays, a tile at a time: whole rows, or pieces of
    ELEMENT_TILE elements of one row longer than that (a whole row of 32768 classes made
    every scratch tile 128 KiB, and the tile's loops ran from L2); the values go
    into the scratch tile ``values`` (the logits' dtype: a float64 store would halve the
    float32 loop's vector width), then into ``loss`` (``per_element``) or as float64 row sums
    into ``loss[i]``.  ``weighted``: the weight and pos_weight tiles ``wt``, ``pwt`` (scratch
    as ``values``) hold ``weight`` and ``pos_weight`` (or 1, without them); ``eb``, ``lb``:
    the BCE's exp and log1p tiles (_element_tile)."""
    rows = max(1, ELEMENT_TILE // max(c, 1))
    width = min(c, ELEMENT_TILE)  # a tile's columns: the row, or a piece of it
    pieces = c > ELEMENT_TILE
    s0 = scale[0]
    if weighted:  # the same in every tile of whole rows: pos_weight (C,) in each row
        n_first = min(rows, hi - lo) * width
        if has_pos_weight and not pieces:
            for r in range(min(rows, hi - lo)):
                o = pwt[r * c:(r + 1) * c]
                for k in range(c):
                    o[k] = like(pos_weight[k], pwt)
        elif not has_pos_weight:  # 1 for one absent
            fill_row(pwt[:n_first], like(1.0, pwt))
        if not has_weight:
            fill_row(wt[:n_first], like(1.0, wt))
    for i0 in range(lo, hi, rows):
        i1 = min(i0 + rows, hi)
        row_sum = 0.0  # pieces: the row's sum, piece after piece
        for k0 in range(0, c, width):
            k1 = min(k0 + width, c)
            a, b = i0 * c + k0, (i1 - 1) * c + k1
            out = values[:b - a]
            g = grad[a:b] if write_grad else grad[:1]
            sc = scale[a:b] if write_grad and not uniform else scale[:1]
            if weighted and has_weight:
                _weight_tile(wt, weight, i0, i1, k0, k1)
            if weighted and has_pos_weight and pieces:
                o = pwt[:k1 - k0]
                for k in range(k1 - k0):
                    o[k] = like(pos_weight[k0 + k], pwt)
            _element_tile(x[a:b], target[a:b], wt[:b - a], pwt[:b - a], weighted, loss_code,
                          sc, uniform, s0, out, g, write_grad, eb[:b - a], lb[:b - a])
            if per_element:
                out_loss = loss[a:b]
                for j in range(out.shape[0]):
                    out_loss[j] = out[j]
            elif pieces:
                for j in range(out.shape[0]):
                    row_sum += out[j]
            else:
                for r in range(i1 - i0):
                    row = out[r * c:(r + 1) * c]
                    row_sum = 0.0
                    for k in range(row.shape[0]):
                        row_sum += row[k]
                    loss[i0 + r] = row_sum
        if pieces and not per_element:
            loss[i0] = row_sum


def _element_kernel(loss_code, weighted):
    """The kernel of one loss (``hooks.BCE``, ``hooks.MSE``), with or without weights (both
    constants of each kernel: one kernel with them as arguments compiled all its loops for
    every argument type, and the first compiles of the BCE took minutes).  ``x``,
    ``target``, ``grad``: the flat (N * C) arrays; ``loss``: flat (N * C) (``per_element``)
    or (N,) row sums; ``weight`` an (N, C) view (maybe broadcast), ``pos_weight`` (C,);
    ``scale``: flat (N * C), or one value (``uniform``); ``values``, ``wt``, ``pwt``, ``eb``,
    ``lb``: scratch tiles (``wt`` and ``pwt`` used only ``weighted``, ``eb`` and ``lb`` only by
    the BCE).  ``write_grad`` and ``uniform``
    become constants of three loops."""

    @njit(**KERNEL)
    def kernel(lo, hi, c, x, target, weight, has_weight, pos_weight, has_pos_weight, scale,
               uniform, loss, per_element, grad, write_grad, values, wt, pwt, eb, lb):
        wide_vectors()
        if not write_grad:
            _element_rows(lo, hi, c, x, target, weight, has_weight, pos_weight,
                          has_pos_weight, wt, pwt, weighted, loss_code, scale, True, loss,
                          per_element, grad, False, values, eb, lb)
        elif uniform:
            _element_rows(lo, hi, c, x, target, weight, has_weight, pos_weight,
                          has_pos_weight, wt, pwt, weighted, loss_code, scale, True, loss,
                          per_element, grad, True, values, eb, lb)
        else:
            _element_rows(lo, hi, c, x, target, weight, has_weight, pos_weight,
                          has_pos_weight, wt, pwt, weighted, loss_code, scale, False, loss,
                          per_element, grad, True, values, eb, lb)

    return kernel


_ELEMENTWISE = {(code, weighted): _element_kernel(code, weighted)
                for code, weighted in ((hooks.BCE, True), (hooks.BCE, False),
                                       (hooks.MSE, False))}


def _flat_scale(scale):
    """``(scale, uniform)``: a grad_output broadcast from one value (every stride 0) as that
    one value, else the flat C-ordered (N * C) scale."""
    if scale is None or scale.size == 0:
        return _NO_ROWS, True
    if all(st == 0 for st in scale.strides) or scale.size == 1:
        return np.array([scale.flat[0]], np.float64), True  # (reshape would copy them all)
    return np.ascontiguousarray(scale).reshape(-1), False


def _element_scratch(tile, dtype, weighted, loss_code):
    """A worker's tiles: ``values``, ``wt``, ``pwt``, ``eb``, ``lb`` (``values`` stands for
    those it does not use: ``wt`` and ``pwt`` without weights, ``eb`` and ``lb`` but for the
    BCE)."""
    values = np.empty(tile, dtype)
    wt, pwt = (np.empty(tile, dtype), np.empty(tile, dtype)) if weighted else (values, values)
    if loss_code == hooks.BCE:
        return values, wt, pwt, np.empty(tile, dtype), np.empty(tile, dtype)
    return values, wt, pwt, values, values


def _run_elementwise(loss_code, x, target, weight, pos_weight, scale, loss, grad, n_threads):
    if not loss.flags.c_contiguous or not (grad is None or grad.flags.c_contiguous):
        # the kernel writes flat views (outputs from fastloss._api always are contiguous)
        out_loss, out_grad = np.empty(loss.shape), None if grad is None else np.empty_like(x)
        _run_elementwise(loss_code, x, target, weight, pos_weight, scale, out_loss, out_grad,
                         n_threads)
        loss[...] = out_loss
        if grad is not None:
            grad[...] = out_grad
        return
    g, write_grad = _grad_arg(grad, x)
    x, target = _readable(x), _readable(target)
    n, c = x.shape
    scale, uniform = _flat_scale(scale)
    tile = max(1, ELEMENT_TILE // max(c, 1)) * min(c, ELEMENT_TILE)  # as _element_rows
    weighted = weight is not None or pos_weight is not None
    run_ranges(_ELEMENTWISE[loss_code, weighted], n, c, n_threads, c, x.reshape(-1),
               target.reshape(-1), _NO_ELEMENTS if weight is None else weight,
               weight is not None, _NO_ROWS if pos_weight is None else pos_weight,
               pos_weight is not None, scale, uniform, loss.reshape(-1), loss.ndim == 2,
               g.reshape(-1), write_grad,
               scratch=lambda: _element_scratch(tile, x.dtype, weighted, loss_code))


def binary_cross_entropy(x, target, weight, pos_weight, scale, loss, grad, n_threads):
    _run_elementwise(hooks.BCE, x, target, weight, pos_weight, scale, loss, grad, n_threads)


def mse(x, target, scale, loss, grad, n_threads):
    _run_elementwise(hooks.MSE, x, target, None, None, scale, loss, grad, n_threads)


# --------------------------------------------------------------------------------- transforms

@njit(**KERNEL)
def _softmax_rows(lo, hi, x, out, log, block_max):
    wide_vectors()
    c = x.shape[1]
    for i in range(lo, hi):
        row = x[i]
        if log:
            m, s = online_sum_exp(row, -1, row)
        else:
            m, s = exp_blocks(row, out[i], block_max, False, -1)
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

    run_ranges(_softmax_rows, n, c, n_threads, x, out, log,
               scratch=lambda: (np.empty(_n_blocks(c)),))


def softmax(x, out, n_threads):
    _run_softmax_rows(x, out, False, n_threads)


def log_softmax(x, out, n_threads):
    _run_softmax_rows(x, out, True, n_threads)


@njit(**KERNEL)
def _logsumexp_rows(lo, hi, x, out):
    wide_vectors()
    for i in range(lo, hi):
        row = x[i]
        m = row_max(row)
        s = sum_exp(row, m, -1, row)  # nothing left out: nothing stored
        out[i] = poisoned_lse(row) if poisoned(m, s) else m + math.log(s)


def logsumexp(x, out, n_threads):
    x = _readable(x)
    run_ranges(_logsumexp_rows, x.shape[0], x.shape[1], n_threads, x, out)


# ------------------------------------------------------------- grad + hess (gradient boosting)
#
# Shape 1 again (docs/design.md section 3): d loss_i / d x_ic = (A_i p_ic - q_ic) w_i with the
# smoothed target q_c = (1 - eps) t_c + eps / K, A = sum_c q_c; the diagonal of the Hessian is
# A p_c (1 - p_c) w (hooks.softmax_grad_hess).  The same blocked online softmax as the
# cross-entropy: pass 1 reads the row once and stores e_c = exp(x_c - m_b) into the gradient
# row, pass 2 finds it in cache and writes the gradient and the Hessian once.

@njit(**IR_INLINE)
def _grad_hess_block(e, g, h, trow, dense, factor, big_a, keep, eps_c, w, hessian_scale,
                     min_hessian):
    """Pass 2 over one block: ``p_c = e_c * factor``; ``e`` may be ``g`` itself.  ``dense``
    (a constant in each call): q_c from the target row, else q_c = eps / K for every class
    (the caller fixes the target class)."""
    for j in range(g.shape[0]):
        p = np.float64(e[j]) * factor
        q = hooks.ce_coef(np.float64(trow[j]), 1.0, keep, eps_c) if dense else eps_c
        gj, hj = hooks.softmax_grad_hess(p, q, big_a, w, hessian_scale, min_hessian)
        g[j] = like(gj, g)
        h[j] = like(hj, h)


@njit(**IR_INLINE)
def _grad_hess_row(row, trow, sparse, y, keep, eps_c, w, hessian_scale, min_hessian, e, g, h,
                   block_max):
    """Gradient and Hessian of one row into ``g`` and ``h``; ``e`` (``g`` itself in the
    kernels) receives the exp of pass 1."""
    c = row.shape[0]
    if sparse:
        big_a = keep + c * eps_c
    else:
        big_a = 0.0
        for k in range(c):
            big_a += hooks.ce_coef(np.float64(trow[k]), 1.0, keep, eps_c)
    m, s = exp_blocks(row, e, block_max, False, -1)
    if poisoned(m, s):
        fill_row(g, NAN)
        fill_row(h, NAN)
        return
    inv_s = 1.0 / s
    for b in range(block_max.shape[0]):
        start = b * BLOCK
        m_b = block_max[b]
        if m_b == m:
            factor = inv_s
        else:
            factor = inv_s * math.exp(m_b - m) if m_b != -np.inf else 0.0
        stop = start + BLOCK
        if sparse:
            _grad_hess_block(e[start:stop], g[start:stop], h[start:stop], trow, False, factor,
                             big_a, keep, eps_c, w, hessian_scale, min_hessian)
        else:
            _grad_hess_block(e[start:stop], g[start:stop], h[start:stop], trow[start:stop],
                             True, factor, big_a, keep, eps_c, w, hessian_scale, min_hessian)
    if sparse:
        # p_y recomputed in float64: A p_y - q_y cancels when p_y is close to 1
        p_y = math.exp(np.float64(row[y]) - m) * inv_s
        g_y, h_y = hooks.softmax_grad_hess(p_y, hooks.ce_coef(1.0, 1.0, keep, eps_c), big_a, w,
                                           hessian_scale, min_hessian)
        g[y] = like(g_y, g)
        h[y] = like(h_y, h)


def _softmax_grad_hess_kernel(sparse):
    """The kernel for class indices (``sparse``) or probabilities, as
    :func:`_softmax_linear_kernel`."""

    @njit(**KERNEL)
    def kernel(lo, hi, x, target, weight, has_weight, keep, eps_c, hessian_scale, min_hessian,
               grad, hess, transposed, block_max, tile_g, tile_h):
        """Rows ``lo:hi``.  ``target``: (N, 1) class indices (``sparse``) or (N, K)
        probabilities.  ``grad`` and ``hess``: (N, K), or (K, N) (``transposed``: the C-ordered
        transposes of Fortran-ordered outputs).  Transposed, the rows are computed a tile at a
        time into the scratch tiles (R, K), then written out class by class, R consecutive values
        at once (one row at a time would write one value per class: one cache line and, for
        large N, one page each)."""
        wide_vectors()
        c = x.shape[1]
        if not transposed:
            for i in range(lo, hi):
                y = np.int64(target[i, 0]) if sparse else np.int64(0)
                w = weight[i] if has_weight else 1.0
                _grad_hess_row(x[i], target[i], sparse, y, keep, eps_c, w, hessian_scale,
                               min_hessian, grad[i], grad[i], hess[i], block_max)
            return
        tile = tile_g.shape[0]
        for i0 in range(lo, hi, tile):
            rows = min(tile, hi - i0)
            for r in range(rows):
                i = i0 + r
                y = np.int64(target[i, 0]) if sparse else np.int64(0)
                w = weight[i] if has_weight else 1.0
                _grad_hess_row(x[i], target[i], sparse, y, keep, eps_c, w, hessian_scale,
                               min_hessian, tile_g[r], tile_g[r], tile_h[r], block_max)
            for k in range(c):  # one output at a time: twice as fast as both in one loop
                g = grad[k, i0:i0 + rows]
                for r in range(rows):
                    g[r] = tile_g[r, k]
            for k in range(c):
                h = hess[k, i0:i0 + rows]
                for r in range(rows):
                    h[r] = tile_h[r, k]

    return kernel


_SOFTMAX_GRAD_HESS = {True: _softmax_grad_hess_kernel(True),
                      False: _softmax_grad_hess_kernel(False)}


def cross_entropy_grad_hess(x, target, sample_weight, label_smoothing, hessian_scale,
                            min_hessian, grad, hess, n_threads):
    """``grad`` and ``hess``: both C-ordered or both Fortran-ordered (written through their
    transposes); other layouts are computed into C-ordered arrays, then copied."""
    if grad.flags.c_contiguous and hess.flags.c_contiguous:
        out_g, out_h, transposed = grad, hess, False
    elif grad.flags.f_contiguous and hess.flags.f_contiguous:
        out_g, out_h, transposed = grad.T, hess.T, True
    else:  # not from fastloss._grad_hess
        out_g, out_h = np.empty(grad.shape, x.dtype), np.empty(hess.shape, x.dtype)
        cross_entropy_grad_hess(x, target, sample_weight, label_smoothing, hessian_scale,
                                min_hessian, out_g, out_h, n_threads)
        grad[...] = out_g
        hess[...] = out_h
        return
    x, target = _readable(x), _readable(target)
    sparse = target.ndim == 1
    if sparse:
        target = target.reshape(-1, 1)
    n, c = x.shape
    eps = float(label_smoothing)
    # a tile: 1 KiB of each class (256 float32 rows: long runs of writes, 3x faster than 64
    # bytes), at most 8 MiB for both tiles
    tile = max(1, min(1024 // x.itemsize, (8 << 20) // (2 * max(c, 1) * x.itemsize))) \
        if transposed else 0
    run_ranges(_SOFTMAX_GRAD_HESS[sparse], n, c, n_threads, x, target,
               _NO_ROWS if sample_weight is None else sample_weight, sample_weight is not None,
               1.0 - eps, eps / c if c else 0.0, float(hessian_scale), float(min_hessian),
               out_g, out_h, transposed,
               scratch=lambda: (np.empty(_n_blocks(c)), np.empty((tile, c), x.dtype),
                                np.empty((tile, c), x.dtype)))


@njit(**IR_INLINE)
def _binary_grad_hess_rows(x, target, weight, has_weight, hessian_scale, min_hessian, grad,
                           hess):
    for k in range(x.shape[0]):
        w = weight[k] if has_weight else 1.0
        g, h = hooks.bce_grad_hess(np.float64(x[k]), np.float64(target[k]), w, hessian_scale,
                                   min_hessian)
        grad[k] = like(g, grad)
        hess[k] = like(h, hess)


@njit(**KERNEL)
def _binary_grad_hess(lo, hi, x, target, weight, has_weight, hessian_scale, min_hessian, grad,
                      hess):
    """Elements ``lo:hi`` (taken as slices: see numba_math on negative indices); constant
    flags in each call."""
    wide_vectors()
    w = weight[lo:hi] if has_weight else weight
    if has_weight:
        _binary_grad_hess_rows(x[lo:hi], target[lo:hi], w, True, hessian_scale, min_hessian,
                               grad[lo:hi], hess[lo:hi])
    else:
        _binary_grad_hess_rows(x[lo:hi], target[lo:hi], w, False, hessian_scale, min_hessian,
                               grad[lo:hi], hess[lo:hi])


def binary_cross_entropy_grad_hess(x, target, sample_weight, hessian_scale, min_hessian, grad,
                                   hess, n_threads):
    x, target = _readable(x), _readable(target)
    run_ranges(_binary_grad_hess, x.shape[0], 1, n_threads, x, target,
               _NO_ROWS if sample_weight is None else sample_weight, sample_weight is not None,
               float(hessian_scale), float(min_hessian), grad, hess)


# --------------------------------------------------------------------------------- baselines

# Rows are taken as slices: with 2-D indexing under ``range(lo, hi)`` LLVM cannot prove the
# row index non-negative and every load becomes a gather (the read took 2x as long).

@njit(**KERNEL)
def _copy_rows(lo, hi, src, dst):
    wide_vectors()
    for i in range(lo, hi):
        row, out = src[i], dst[i]
        for k in range(row.shape[0]):
            out[k] = row[k]


@njit(**KERNEL)
def _read_rows(lo, hi, src, out):
    wide_vectors()
    for i in range(lo, hi):
        row = src[i]
        s = like(0.0, row)  # in the row's dtype: as wide a vector as the kernels' own loops
        for k in range(row.shape[0]):
            s += row[k]
        out[i] = s


@njit(**KERNEL)
def _copy_rows_twice(lo, hi, src, dst1, dst2):
    wide_vectors()
    for i in range(lo, hi):
        row, out1, out2 = src[i], dst1[i], dst2[i]
        for k in range(row.shape[0]):
            out1[k] = row[k]
            out2[k] = row[k]


@njit(**KERNEL)
def _add_rows(lo, hi, src, other, dst):
    wide_vectors()
    for i in range(lo, hi):
        row, row2, out = src[i], other[i], dst[i]
        for k in range(row.shape[0]):
            out[k] = row[k] + row2[k]


@njit(**KERNEL)
def _read_rows_pair(lo, hi, src, other, out):
    wide_vectors()
    for i in range(lo, hi):
        row, row2 = src[i], other[i]
        s = like(0.0, row)
        for k in range(row.shape[0]):
            s += row[k] + row2[k]
        out[i] = s


def parallel_add(src, other, dst, n_threads=None):
    """The physical limit of a fused loss whose target has the logits' shape (BCE, KL,
    MSE, ...): read the logits and the target once each, write the gradient once."""
    run_ranges(_add_rows, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, other, dst)


def parallel_read_pair(src, other, out, n_threads=None):
    """The physical limit of such a loss's forward pass: read the logits and the target."""
    run_ranges(_read_rows_pair, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, other, out)


def parallel_copy_twice(src, dst1, dst2, n_threads=None):
    """The physical limit of gradient + Hessian: read every score, write two outputs."""
    run_ranges(_copy_rows_twice, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, dst1, dst2)


def parallel_copy(src, dst, n_threads=None):
    """The physical limit of a fused forward+backward: read every logit, write every grad.
    ``n_threads`` defaults to every core."""
    run_ranges(_copy_rows, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, dst)


def parallel_read(src, out, n_threads=None):
    """The physical limit of a forward pass: read every logit once."""
    run_ranges(_read_rows, src.shape[0], src.shape[1], n_threads or os.cpu_count() or 1,
               src, out)
