"""The per-row and per-element math of every loss, written once, as plain Python.

Two compilers read these functions: :mod:`fastloss._ext.numba_math` compiles them with
``njit`` for the CPU kernels (LLVM inlines every call) and :mod:`fastloss._ext.numba_cuda`
with ``cuda.jit(device=True, inline="always")`` for the GPU ones; Numba's CUDA simulator runs them
as they are (so the CPU-only test runs exercise the GPU's math too).  Rules: arguments and
results are float64 scalars (or bools / small ints; a hook with an argument ``one`` computes
in the precision of ``one``), only ``math.*`` and arithmetic, no NumPy,
no decorators, no division by a value that can be 0 and no ``log`` of one that can be <= 0 on a
path the kernels take (the simulator runs Python's ``math``, which raises there).  A hook may
call another by its module-level name: :func:`compile_hooks` rebinds those names to the
compiled versions.

Notation as in :mod:`fastloss.reference`: a row of (transformed) logits ``z``, ``m = max z``,
``s = sum_c exp(z_c - m)``, ``-log p_c = (m - z_c) + log s``.  The kernel shapes that use the
hooks are described in docs/design.md section 3.
"""

from __future__ import annotations

import math
import types

INF = math.inf
NAN = math.nan
# A compiler may put its own implementations here: numba_math puts the vectorisable tanh,
# exp (``exp_neg``: arguments <= 0 only; ``exp``: any), log and log1p (``log1p_unit``:
# arguments in [0, 1] only, all the hooks need) of the CPU (a libm call per element would
# keep every loop scalar).  CUDA keeps these: Numba maps math.* to libdevice, which is
# already one call per GPU thread, and accurate.
tanh = math.tanh
exp_neg = math.exp
exp = math.exp
log = math.log
log1p_unit = math.log1p


# ----------------------------------------------------------------------------- online softmax

def fold(m1, s1, m2, s2):
    """``(m, s = sum exp(v - m))`` of two parts of a row.  A part with ``m = -inf`` saw only
    impossible classes (``s = 0``) or, on the GPU, a NaN (``s = NaN``, which must survive);
    it adds its ``s`` and takes no exp (rows of 10 classes notice one)."""
    if m2 == -INF:
        return m1, s1 + s2
    if m1 == -INF:
        return m2, s2 + s1
    if m1 >= m2:
        return m1, s1 + s2 * math.exp(m2 - m1)
    return m2, s2 + s1 * math.exp(m1 - m2)


def poisoned(m, s):
    """A row whose results are NaN: it holds a NaN (``s`` or ``m`` NaN), a ``+inf``
    (``m = inf``), or only ``-inf`` (``m = -inf``: nothing is possible)."""
    return not (s == s and m == m) or m == INF or m == -INF


def poisoned_lse(any_nan, any_pos_inf):
    """``logsumexp`` of a poisoned row: NaN, else ``+inf``, else (all ``-inf``) ``-inf``."""
    if any_nan:
        return NAN
    return INF if any_pos_inf else -INF


# ----------------------------------------------------------------------------- cross-entropy

def transform(v, softcap, inv_temperature):
    """``(z, dz/dx)`` of a logit: ``z = softcap * tanh(x / softcap)`` (``softcap = 0``: none),
    then times ``inv_temperature``; ``dz/dx = inv_temperature * (1 - tanh^2(x / softcap))``.
    A ``-inf`` logit stays ``-inf`` with slope 0 (an impossible class stays impossible; a
    plain ``tanh`` would make it ``-softcap``); ``+inf`` becomes ``softcap`` (finite: with a
    cap it does not poison its row), see ``reference.transform_logits``.  NaN stays NaN."""
    if softcap == 0.0:
        return v * inv_temperature, inv_temperature
    th = tanh(v / softcap)
    z = softcap * th if v != -INF else v
    return z * inv_temperature, inv_temperature * (1.0 - th * th)


def ce_coef(t, w, keep, eps_c):
    """``a_c = w_c ((1 - eps) t_c + eps / C)``, the coefficient of ``-log p_c`` in a
    cross-entropy row (``keep = 1 - eps``, ``eps_c = eps / C``; ``t_c = [c = y]`` for a class
    index).  KL divergence is the case ``w = 1, eps = 0`` plus the constant ``sum t log t``."""
    return w * (keep * t + eps_c)


def target_prob(v, log_target):
    """The target probability of a stored target value (``log_target``: it holds log t)."""
    return exp(v) if log_target else v


def target_t_log_t(v, log_target):
    """``t log t`` of a stored target value, ``0 log 0 = 0``: the KL's constant term."""
    if log_target:
        t = exp(v)
        return t * v if t != 0.0 else 0.0
    return v * log(v) if v != 0.0 else 0.0


def weighted(a, v):
    """``a * v`` with ``0 * v = 0`` for any ``v`` (``0 log 0 = 0``: a term whose coefficient
    is 0 adds nothing, even on a ``-inf`` logit)."""
    return a * v if a != 0.0 else 0.0


def shift_gap(big_a, gap0, m, m0):
    """``sum_c a_c (m - z_c)`` from ``gap0 = sum_c a_c (m0 - z_c)`` taken against ``m0``
    (the same row max, so the correction ``A (m - m0)`` is 0; kept for safety)."""
    return gap0 + big_a * (m - m0) if m != m0 else gap0


def linear_loss(big_a, a_gap, const, log_s):
    """``sum_c a_c (-log p_c) + const = const + sum_c a_c (m - z_c) + A log s``."""
    return const + a_gap + big_a * log_s


def p_coef(big_a, z_grad, lse):
    """The coefficient of ``p_c`` in ``d loss / d z_c = A' p_c - a_c``: ``A`` plus the z-loss
    term ``2 z_grad lse`` (``d lse^2 / d z_c = 2 lse p_c``)."""
    return big_a + 2.0 * z_grad * lse


# ----------------------------------------------------------------------------- function of p
#
# loss = sum_c term(p_c, ...), phi_c = d loss / d p_c; the skeleton writes
# d loss / d z_j = p_j (phi_j - sum_k p_k phi_k).

SOFTMAX_MSE = 0
ENTROPY = 1


def p_term(loss_code, p, log_p, t):
    """One class's share of ``softmax_mse`` (``(p - t)^2``) or ``entropy`` (``-p log p``,
    ``0 log 0 = 0``)."""
    if loss_code == SOFTMAX_MSE:
        d = p - t
        return d * d
    return -(p * log_p) if p > 0.0 else 0.0


def p_phi(loss_code, p, log_p, t):
    """``d term / d p``: ``2 (p - t)``, or ``-(log p + 1)`` for the entropy (0 for an
    impossible class, whose ``p = 0`` multiplies it)."""
    if loss_code == SOFTMAX_MSE:
        return 2.0 * (p - t)
    return -(log_p + 1.0) if log_p > -INF else 0.0


# ----------------------------------------------------------------------------- elementwise

BCE = 0
MSE = 1


def softplus(v):
    """``log(1 + e^v) = max(v, 0) + log1p(e^-|v|)``: no overflow, full accuracy for v << 0."""
    return (v if v > 0.0 else 0.0) + log1p_unit(exp_neg(-abs(v)))


def sigmoid(v):
    e = exp_neg(-abs(v))
    return 1.0 / (1.0 + e) if v >= 0.0 else e / (1.0 + e)


def bce_value(v, t, w, pos_weight):
    """``w (pw t softplus(-v) + (1 - t) softplus(v))``, a term with a zero coefficient 0."""
    return w * (weighted(pos_weight * t, softplus(-v)) + weighted(1.0 - t, softplus(v)))


def bce_slope(v, t, w, pos_weight):
    """``w ((1 - t) sigmoid(v) - pw t sigmoid(-v))``."""
    return w * ((1.0 - t) * sigmoid(v) - (pos_weight * t) * sigmoid(-v))


def bce_value_slope(v, t, w, pos_weight, one):
    """``(bce_value, bce_slope)`` from one exp and one log1p, in the precision of ``one``
    (``1.0``; the CPU passes a float32 1 with float32 arguments: twice the SIMD lanes and
    shorter polynomials).  With ``e = exp(-|v|)`` and ``l = log1p(e)``,
    ``softplus(+-v) = max(+-v, 0) + l``, and the sigmoids are ``1 / (1 + e)`` and
    ``e / (1 + e)`` (as :func:`sigmoid_pair`, one division).  Branch-free up to selects (the
    elementwise loop vectorises); a term with a zero coefficient is 0 as in :func:`weighted`."""
    e = exp_neg(-abs(v))
    return bce_value_slope_el(v, e, log1p_unit(e), t, w, pos_weight, one)


def bce_value_slope_el(v, e, lg, t, w, pos_weight, one):
    """:func:`bce_value_slope` given ``e = exp(-|v|)`` and ``lg = log1p(e)`` (the CPU's
    elementwise tiles compute them in loops of their own: numba_cpu._element_tile)."""
    zero = one - one
    big = one / (one + e)
    small = e * big
    sp_pos = (v if v > zero else zero) + lg  # softplus(v) = -log(1 - sigmoid(v))
    sp_neg = (zero if v > zero else -v) + lg  # softplus(-v) = -log sigmoid(v)
    s_pos = big if v >= zero else small  # sigmoid(v)
    s_neg = small if v >= zero else big  # sigmoid(-v)
    a = pos_weight * t
    b = one - t
    value = w * ((a * sp_neg if a != zero else zero) + (b * sp_pos if b != zero else zero))
    return value, w * (b * s_pos - a * s_neg)


def mse_value(v, t):
    d = v - t
    return d * d


def mse_slope(v, t):
    return 2.0 * (v - t)


def element_value(loss_code, v, t, w, pos_weight):
    if loss_code == BCE:
        return bce_value(v, t, w, pos_weight)
    return mse_value(v, t)


def element_slope(loss_code, v, t, w, pos_weight):
    if loss_code == BCE:
        return bce_slope(v, t, w, pos_weight)
    return mse_slope(v, t)


def element_value_slope(loss_code, v, t, w, pos_weight, one):
    """``(element_value, element_slope)``, sharing the work of the two; the BCE in the
    precision of ``one`` (see :func:`bce_value_slope`), the MSE in float64 (``v * 1.0``: ``v``
    exactly, as a float64)."""
    if loss_code == BCE:
        return bce_value_slope(v, t, w, pos_weight, one)
    return mse_value(v * 1.0, t * 1.0), mse_slope(v * 1.0, t * 1.0)


# ----------------------------------------------------------------------------- grad + hess
#
# The gradient and the diagonal of the Hessian for gradient boosting
# (reference.cross_entropy_grad_hess, reference.binary_cross_entropy_grad_hess).

def floor_hessian(h, min_hessian):
    """``h`` raised to ``min_hessian``; a NaN stays NaN (``max`` would not say which)."""
    return min_hessian if h < min_hessian else h


def softmax_grad_hess(p, q, big_a, w, hessian_scale, min_hessian):
    """``(grad, hess)`` of one class of a softmax cross-entropy row: ``(A p - q) w`` and the
    floored ``hessian_scale A p (1 - p) w`` (``q`` the smoothed target ``ce_coef(t, 1, ...)``,
    ``A = sum_c q_c``, ``w`` the sample weight).  An impossible class (``p = 0``) gets
    ``-q w`` and ``min_hessian``."""
    g = (big_a * p - q) * w
    h = floor_hessian(hessian_scale * big_a * p * (1.0 - p) * w, min_hessian)
    return g, h


def sigmoid_pair(v):
    """``(sigmoid(v), sigmoid(-v))``, both to full relative accuracy, from one exp:
    ``e = exp(-|v|)``, ``1 / (1 + e)`` and ``e / (1 + e)`` (swapped for ``v < 0``).  ``+inf``
    gives ``(1, 0)``, ``-inf`` ``(0, 1)``, NaN NaN."""
    e = exp_neg(-abs(v))
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)
    if v >= 0.0:
        return big, small
    return small, big


def bce_grad_hess(v, t, w, hessian_scale, min_hessian):
    """``(grad, hess)`` of the sigmoid binary cross-entropy of a score ``v``, target ``t`` and
    weight ``w``: ``((1 - t) sigmoid(v) - t sigmoid(-v)) w`` and the floored
    ``hessian_scale sigmoid(v) sigmoid(-v) w``."""
    s_pos, s_neg = sigmoid_pair(v)
    g = ((1.0 - t) * s_pos - t * s_neg) * w
    h = floor_hessian(hessian_scale * s_pos * s_neg * w, min_hessian)
    return g, h


# ----------------------------------------------------------------------------- compilation

HOOKS = ("fold", "poisoned", "poisoned_lse", "transform", "ce_coef",
         "target_prob", "target_t_log_t", "weighted", "shift_gap", "linear_loss", "p_coef",
         "p_term", "p_phi", "softplus", "sigmoid", "bce_value", "bce_slope", "mse_value",
         "mse_slope", "bce_value_slope", "bce_value_slope_el", "element_value", "element_slope",
         "element_value_slope", "floor_hessian", "softmax_grad_hess",
         "sigmoid_pair", "bce_grad_hess")


def compile_hooks(decorate, name, **replace):
    """A module holding every hook compiled by ``decorate`` (``njit(...)`` or
    ``cuda.jit(device=True, ...)``).  Each hook is rebuilt over a namespace in which the other
    hooks are the compiled ones, so a hook that calls another calls the compiled version;
    ``replace`` swaps other names of that namespace (``tanh``, ``exp_neg``, ``exp``, ``log``,
    ``log1p_unit``).  Kernels call
    ``module.hook(...)``: Numba resolves (and inlines) module attributes at compile time."""
    namespace = dict(globals())
    namespace.update(replace)
    module = types.ModuleType(name, __doc__)
    for hook in HOOKS:
        f = globals()[hook]
        g = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__,
                               f.__closure__)
        g.__qualname__ = f.__qualname__
        g.__module__ = f.__module__
        g.__doc__ = f.__doc__
        namespace[hook] = decorate(g)
        setattr(module, hook, namespace[hook])
    for const in ("INF", "NAN", "SOFTMAX_MSE", "ENTROPY", "BCE", "MSE"):
        setattr(module, const, globals()[const])
    return module
