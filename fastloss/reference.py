"""NumPy reference of every fastloss loss: the oracle that every backend is tested against.

Each function works on a 2-D float64 array of logits ``x`` of shape ``(N, C)`` (one row per
sample, classes last) and returns ``(loss, grad)`` where ``loss`` holds the loss of each row
(or of each element for the elementwise losses) and ``grad[i] = d loss[i] / d x[i]``: the
gradient of the *unreduced* loss.  Reductions, ``grad_output`` and dtypes are handled once, in
:mod:`fastloss._api`, for every backend alike.

Notation: ``m_i = max_c x_ic``, ``z_ic = x_ic - m_i``, ``s_i = sum_c exp(z_ic)``,
``log p_ic = z_ic - log s_i`` (log-softmax), ``p_ic = exp(log p_ic)``.

Conventions of the numerics contract (docs/design.md):

* ``0 * log 0 = 0``: a term whose coefficient is zero contributes zero, even when its log is
  ``-inf``.  This is where fastloss departs from PyTorch, which gives NaN there.
* A row containing NaN or ``+inf`` gives NaN for its loss and its whole gradient row.
* An ignored row (class index equal to ``ignore_index``) gives exactly 0 loss and 0 gradient,
  whatever its logits.

Everything is computed in float64 and is written to be read, not to be fast.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "logsumexp",
    "log_softmax",
    "softmax",
    "transform_logits",
    "cross_entropy",
    "z_loss_term",
    "binary_cross_entropy_with_logits",
    "softmax_mse",
    "kl_divergence",
    "entropy",
    "mse_loss",
]


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _poisoned_rows(x: np.ndarray) -> np.ndarray:
    """Rows that hold a NaN or ``+inf``: their loss and gradient are NaN."""
    return np.any(np.isnan(x) | (x == np.inf), axis=-1)


def _xlogy_like(coef: np.ndarray, log_value: np.ndarray) -> np.ndarray:
    """``coef * log_value`` with ``0 * (anything) = 0`` (the ``0 log 0 = 0`` convention)."""
    with np.errstate(invalid="ignore"):
        return np.where(coef == 0, 0.0, coef * log_value)


def _shifted(x: np.ndarray):
    """``(z, log s)`` with ``z = x - m`` and ``s = sum exp(z)`` over the last axis.

    An infinite row max would make ``x - m`` NaN; shifting by 0 then gives the right limits.
    """
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z, np.log(np.sum(np.exp(z), axis=-1, keepdims=True)), m


def logsumexp(x) -> np.ndarray:
    r"""Row-wise :math:`\log \sum_c e^{x_c}`, computed as :math:`m + \log \sum_c e^{x_c - m}`.

    A row of all ``-inf`` gives ``-inf``; a row with ``+inf`` gives ``+inf``; NaN gives NaN.
    """
    _, log_s, m = _shifted(_f64(x))
    return (m + log_s)[..., 0]


def log_softmax(x) -> np.ndarray:
    r""":math:`\log p_c = (x_c - m) - \log \sum_k e^{x_k - m}`.

    Subtracting the shifted terms, not ``x_c - \operatorname{logsumexp}(x)``, keeps small
    differences next to huge logits: ``[1e30, 1e30]`` gives ``log 1/2``, not 0.
    """
    z, log_s, _ = _shifted(_f64(x))
    with np.errstate(invalid="ignore"):
        return z - log_s


def softmax(x) -> np.ndarray:
    r""":math:`p_c = e^{x_c - m} / \sum_k e^{x_k - m}`."""
    return np.exp(log_softmax(x))


def _class_coefficients(x, target, weight, label_smoothing):
    """The coefficients ``a_ic`` of ``loss_i = -sum_c a_ic log p_ic`` (see cross_entropy)."""
    n, c = x.shape
    w = np.ones(c) if weight is None else _f64(weight)
    if target.ndim == 2:
        q = _f64(target)
    else:
        q = np.zeros((n, c))
        q[np.arange(n), target] = 1.0
    q = (1.0 - label_smoothing) * q + label_smoothing / c
    return w * q


def transform_logits(x, softcap=None, temperature=1.0):
    r"""The logits the softmax of :func:`cross_entropy` sees, and their derivative.

    .. math::

        z = \frac{s \tanh(x / s)}{T}, \qquad
        \frac{\partial z}{\partial x} = \frac{1 - \tanh^2(x / s)}{T}

    for a soft cap :math:`s` (``None``: :math:`z = x / T`, derivative :math:`1/T`) and a
    temperature :math:`T`.  The cap comes first, then the temperature (as in Gemma 2 and RL
    trainers).  A ``-inf`` logit stays ``-inf`` with derivative 0: an impossible class stays
    impossible (a plain ``tanh`` would make it ``-s``, a possible class).  ``+inf`` becomes
    :math:`s / T`, a finite logit, so with a cap it does not poison its row.
    """
    x = _f64(x)
    if softcap is None:
        z, dz = x.copy(), np.ones_like(x)
    else:
        t = np.tanh(x / softcap)
        z = np.where(x == -np.inf, -np.inf, softcap * t)
        dz = np.where(x == -np.inf, 0.0, 1.0 - t * t)
    return z / temperature, dz / temperature


def cross_entropy(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, *,
                  softcap=None, temperature=1.0, z_loss=0.0):
    r"""Softmax cross-entropy of each row, and its gradient.

    With class indices :math:`y_i` (or probabilities :math:`t_{ic}`), class weights
    :math:`w_c` and label smoothing :math:`\varepsilon`, every variant is one formula,

    .. math::

        \ell_i = -\sum_c a_{ic} \log p_{ic}, \qquad
        \frac{\partial \ell_i}{\partial x_{ij}} = A_i\, p_{ij} - a_{ij}, \qquad
        A_i = \sum_c a_{ic},

    with :math:`a_{ic} = w_c \big((1-\varepsilon)\,\delta_{c y_i} + \varepsilon / C\big)` for
    class indices and :math:`a_{ic} = w_c \big((1-\varepsilon)\, t_{ic} + \varepsilon/C\big)` for
    probabilities.  This is PyTorch's ``F.cross_entropy`` row by row: the smoothing term is
    :math:`\tfrac{\varepsilon}{C}\sum_c w_c (-\log p_{ic})` and the gradient follows from
    :math:`\partial(-\log p_{ic})/\partial x_{ij} = p_{ij} - \delta_{cj}`.

    Options.  ``softcap`` and ``temperature`` replace :math:`x` by :math:`z(x)` of
    :func:`transform_logits` before the softmax; the gradient is then
    :math:`(A_i p_{ij} - a_{ij})\, \partial z_{ij} / \partial x_{ij}`.  ``z_loss``
    :math:`\lambda` adds :math:`\lambda\, L_i^2` with :math:`L_i = \log\sum_c e^{z_{ic}}`
    (PaLM's z-loss), whose gradient is :math:`2 \lambda L_i p_{ij}\,\partial z_{ij}/\partial
    x_{ij}` since :math:`\partial L_i / \partial z_{ij} = p_{ij}`; see :func:`z_loss_term`.

    Rows with ``target == ignore_index`` give 0 and a zero gradient.  A ``-inf`` logit with
    :math:`a_{ic} = 0` is an impossible class: it adds nothing and gets 0 gradient.

    Parameters
    ----------
    x : (N, C) array of logits.
    target : (N,) integer class indices, or (N, C) probabilities.
    weight : (C,) class weights, or None.
    ignore_index : int, class index whose rows are ignored (class indices only).
    label_smoothing : float in [0, 1].
    softcap : float > 0 or None.
    temperature : float > 0.
    z_loss : float >= 0; the returned loss and gradient include the z-term.
    """
    z, dz = transform_logits(x, softcap, temperature)
    target = np.asarray(target)
    if target.ndim == 1:
        ignored = target == ignore_index
        target = np.where(ignored, 0, target)
    else:
        ignored = np.zeros(z.shape[0], dtype=bool)
    a = _class_coefficients(z, target, weight, label_smoothing)
    logp = log_softmax(z)
    p = np.exp(logp)
    loss = -np.sum(_xlogy_like(a, logp), axis=-1)
    with np.errstate(invalid="ignore"):
        grad = (np.sum(a, axis=-1, keepdims=True) * p - a) * dz
    if z_loss:
        lse = logsumexp(z)
        loss = loss + z_loss * lse * lse
        with np.errstate(invalid="ignore"):
            grad = grad + 2.0 * z_loss * lse[:, None] * p * dz
    return _mask_rows(z, loss, grad, ignored)


def z_loss_term(x, target, ignore_index=-100, *, softcap=None, temperature=1.0, z_loss=0.0):
    r"""The z-loss part of :func:`cross_entropy` alone: :math:`\lambda L_i^2` per row and its
    gradient :math:`2\lambda L_i p_{ij}\, \partial z_{ij}/\partial x_{ij}`, 0 for ignored rows.

    ``"mean"`` averages this term over the counted (not ignored) rows, while the
    cross-entropy term keeps PyTorch's denominator (the weights of the counted targets).
    """
    z, dz = transform_logits(x, softcap, temperature)
    target = np.asarray(target)
    ignored = (target == ignore_index if target.ndim == 1
               else np.zeros(z.shape[0], dtype=bool))
    lse = logsumexp(z)
    p = softmax(z)
    with np.errstate(invalid="ignore"):
        grad = 2.0 * z_loss * lse[:, None] * p * dz
    return _mask_rows(z, z_loss * lse * lse, grad, ignored)


def _mask_rows(x, loss, grad, ignored=None):
    """NaN for rows with NaN/+inf logits, then exactly 0 for ignored rows."""
    poisoned = _poisoned_rows(x)
    loss = np.where(poisoned, np.nan, loss)
    grad = np.where(poisoned[:, None], np.nan, grad)
    if ignored is not None:
        loss = np.where(ignored, 0.0, loss)
        grad = np.where(ignored[:, None], 0.0, grad)
    return loss, grad


def softplus(x) -> np.ndarray:
    r""":math:`\log(1 + e^{x}) = \max(x, 0) + \operatorname{log1p}(e^{-|x|})`.

    The form never overflows (``e^{-|x|} <= 1``) and keeps full relative accuracy for very
    negative ``x``, where ``log1p`` of a tiny number is that number.
    """
    x = _f64(x)
    with np.errstate(invalid="ignore"):
        return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x) -> np.ndarray:
    r""":math:`\sigma(x) = 1/(1+e^{-x})`, evaluated without overflow on both sides."""
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def binary_cross_entropy_with_logits(x, target, weight=None, pos_weight=None):
    r"""Elementwise sigmoid binary cross-entropy, and its gradient.

    .. math::

        \ell = w\,\big[\,p_w\, t\,\operatorname{softplus}(-x)
                 + (1-t)\operatorname{softplus}(x)\big],
        \qquad
        \frac{\partial \ell}{\partial x} = w\,\big[(1-t)\,\sigma(x) - p_w\, t\,\sigma(-x)\big],

    since :math:`-\log\sigma(x) = \operatorname{softplus}(-x)` and
    :math:`-\log(1-\sigma(x)) = \operatorname{softplus}(x)`.  ``pos_weight`` :math:`p_w`
    broadcasts over the last axis, ``weight`` :math:`w` over the whole array; both default to 1.
    A term with a zero coefficient is 0 (so ``x = -inf`` with ``t = 0`` gives 0, not NaN).
    """
    x = _f64(x)
    t = _f64(target)
    w = 1.0 if weight is None else _f64(weight)
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    a = pw * t  # coefficient of -log sigma(x)
    b = 1.0 - t  # coefficient of -log(1 - sigma(x))
    loss = w * (_xlogy_like(a, softplus(-x)) + _xlogy_like(b, softplus(x)))
    grad = w * (b * sigmoid(x) - a * sigmoid(-x))
    return loss, grad


def softmax_mse(x, target):
    r"""Squared error between the softmax and a target distribution (multiclass Brier score).

    .. math::

        \ell_i = \sum_c (p_{ic} - t_{ic})^2, \qquad
        \frac{\partial \ell_i}{\partial x_{ij}}
          = 2\,p_{ij}\Big[(p_{ij} - t_{ij}) - \sum_c (p_{ic} - t_{ic})\,p_{ic}\Big],

    from :math:`\partial p_c / \partial x_j = p_c(\delta_{cj} - p_j)`.  ``target`` is (N,)
    class indices (one-hot rows) or (N, C) probabilities.  With class indices,
    :math:`p_y - 1 = -\sum_{c \ne y} p_c` (no cancellation as :math:`p_y` nears 1) and
    :math:`\partial \ell / \partial x_y = -2 p_y \ell` (its two terms would cancel there).
    """
    x = _f64(x)
    target = np.asarray(target)
    p = softmax(x)
    if target.ndim == 1:
        rows = np.arange(x.shape[0])
        d = p.copy()
        p_y = p[rows, target]
        d[rows, target] = 0.0
        d[rows, target] = np.where(np.isnan(p_y), np.nan, -np.sum(d, axis=-1))  # a row of -inf
    else:
        d = p - _f64(target)
    loss = np.sum(d * d, axis=-1)
    grad = 2.0 * p * (d - np.sum(d * p, axis=-1, keepdims=True))
    if target.ndim == 1:
        grad[rows, target] = -2.0 * p[rows, target] * loss
    return _mask_rows(x, loss, grad)


def kl_divergence(x, target, log_target=False):
    r"""KL divergence of each target row from the softmax of its logits, and its gradient.

    .. math::

        \ell_i = \mathrm{KL}(t_i \,\|\, p_i) = \sum_c t_{ic}\,(\log t_{ic} - \log p_{ic}),
        \qquad
        \frac{\partial \ell_i}{\partial x_{ij}} = T_i\, p_{ij} - t_{ij},
        \qquad T_i = \sum_c t_{ic}.

    With ``log_target`` the target holds :math:`\log t`.  Terms with :math:`t_{ic} = 0`
    contribute 0 (PyTorch's ``kl_div`` gives NaN there when ``log p = -inf``).
    """
    x = _f64(x)
    if log_target:
        log_t = _f64(target)
        t = np.exp(log_t)
    else:
        t = _f64(target)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_t = np.log(t)
    logp = log_softmax(x)
    with np.errstate(invalid="ignore"):
        loss = np.sum(_xlogy_like(t, log_t - logp), axis=-1)
        grad = np.sum(t, axis=-1, keepdims=True) * np.exp(logp) - t
    return _mask_rows(x, loss, grad)


def entropy(x):
    r"""Shannon entropy of the softmax of each row, and its gradient.

    .. math::

        H_i = -\sum_c p_{ic} \log p_{ic}, \qquad
        \frac{\partial H_i}{\partial x_{ij}} = -p_{ij}\,(\log p_{ij} + H_i),

    from :math:`\partial p_c/\partial x_j = p_c(\delta_{cj} - p_j)` and
    :math:`\sum_c \partial p_c / \partial x_j = 0`.  Impossible classes (``-inf``) add 0.
    """
    x = _f64(x)
    logp = log_softmax(x)
    p = np.exp(logp)
    h = -np.sum(_xlogy_like(p, logp), axis=-1)
    grad = -_xlogy_like(p, logp + h[:, None])
    return _mask_rows(x, h, grad)


def mse_loss(x, target):
    r"""Elementwise squared error :math:`(x - t)^2` and its gradient :math:`2(x - t)`."""
    x = _f64(x)
    d = x - _f64(target)
    return d * d, 2.0 * d


def cross_entropy_grad_hess(x, target, sample_weight=None, label_smoothing=0.0,
                            hessian_scale=1.0, min_hessian=0.0):
    r"""Gradient and diagonal Hessian of the softmax cross-entropy of each row, for gradient
    boosting (the objective of XGBoost's ``multi:softprob``, LightGBM's ``multiclass`` and
    scikit-learn's ``HalfMultinomialLoss.gradient_hessian``).

    With the smoothed target :math:`q_{ic} = (1-\varepsilon)\, t_{ic} + \varepsilon / K`
    (:math:`t_i` the one-hot row of the class index :math:`y_i`, or the given probabilities),
    :math:`A_i = \sum_c q_{ic}` (1 for class indices; :math:`(1-\varepsilon)\sum_c t_{ic} +
    \varepsilon` for probabilities), :math:`p_i = \operatorname{softmax}(x_i)` and the sample
    weight :math:`w_i` (1 by default), the loss :math:`\ell_i = -w_i \sum_c q_{ic}\log p_{ic}`
    has

    .. math::

        g_{ic} = \frac{\partial \ell_i}{\partial x_{ic}} = (A_i\, p_{ic} - q_{ic})\, w_i,
        \qquad
        \frac{\partial^2 \ell_i}{\partial x_{ic}^2} = A_i\, p_{ic} (1 - p_{ic})\, w_i,

    and the returned Hessian is the scaled, floored diagonal

    .. math::

        h_{ic} = \max\big(s \cdot A_i\, p_{ic} (1 - p_{ic})\, w_i,\; h_{\min}\big)

    for ``hessian_scale`` :math:`s` (XGBoost uses 2, LightGBM :math:`K/(K-1)`) and
    ``min_hessian`` :math:`h_{\min}` (XGBoost uses 1e-16).  The max keeps NaN: a row with a
    NaN or ``+inf`` score gives NaN for its whole gradient and Hessian row; a ``-inf`` score is
    an impossible class (:math:`p = 0`: gradient :math:`-q_{ic} w_i`, Hessian :math:`h_{\min}`).

    Parameters
    ----------
    x : (N, K) array of raw scores.
    target : (N,) integer class indices, or (N, K) probabilities.
    sample_weight : (N,) weights, or None.
    label_smoothing : float in [0, 1].
    hessian_scale : float > 0.
    min_hessian : float >= 0.

    Returns
    -------
    grad, hess : (N, K) float64 arrays.
    """
    x = _f64(x)
    target = np.asarray(target)
    q = _class_coefficients(x, target, None, label_smoothing)
    a = np.sum(q, axis=-1, keepdims=True)
    w = np.ones((x.shape[0], 1)) if sample_weight is None else _f64(sample_weight)[:, None]
    p = softmax(x)
    with np.errstate(invalid="ignore", over="ignore"):
        grad = (a * p - q) * w
        hess = hessian_scale * a * p * (1.0 - p) * w
        hess = np.where(hess < min_hessian, min_hessian, hess)  # a NaN stays NaN
    poisoned = _poisoned_rows(x)[:, None]
    return np.where(poisoned, np.nan, grad), np.where(poisoned, np.nan, hess)


def binary_cross_entropy_grad_hess(x, target, sample_weight=None, hessian_scale=1.0,
                                   min_hessian=0.0):
    r"""Gradient and Hessian of the sigmoid binary cross-entropy of each score, for gradient
    boosting (XGBoost's ``binary:logistic``, LightGBM's ``binary``, scikit-learn's
    ``HalfBinomialLoss.gradient_hessian``).

    For the loss :math:`\ell = w\,[t \operatorname{softplus}(-x) + (1-t)\operatorname{softplus}(x)]`
    of a score :math:`x`, a target :math:`t \in [0, 1]` (soft targets allowed) and a weight
    :math:`w`,

    .. math::

        g = \frac{\partial \ell}{\partial x} = \big[(1-t)\,\sigma(x) - t\,\sigma(-x)\big]\, w
          = (\sigma(x) - t)\, w,
        \qquad
        h = \max\big(s\, \sigma(x)\,\sigma(-x)\, w,\; h_{\min}\big),

    :math:`\sigma(x)\sigma(-x) = \sigma(x)(1-\sigma(x))` written so that it keeps its relative
    accuracy for large :math:`|x|` (as does the gradient's form for hard targets).  ``x = +inf``
    gives :math:`g = (1-t) w`, ``-inf`` gives :math:`g = -t w`, both with :math:`h = h_{\min}`;
    NaN gives NaN.

    Parameters
    ----------
    x : (N,) array of raw scores.
    target : (N,) targets.
    sample_weight : (N,) weights, or None.
    hessian_scale : float > 0.
    min_hessian : float >= 0.

    Returns
    -------
    grad, hess : (N,) float64 arrays.
    """
    x = _f64(x)
    t = _f64(target)
    w = 1.0 if sample_weight is None else _f64(sample_weight)
    s_pos, s_neg = sigmoid(x), sigmoid(-x)
    with np.errstate(invalid="ignore", over="ignore"):
        grad = ((1.0 - t) * s_pos - t * s_neg) * w
        hess = hessian_scale * s_pos * s_neg * w
        hess = np.where(hess < min_hessian, min_hessian, hess)  # a NaN stays NaN
    return grad, hess


__all__ += ["cross_entropy_grad_hess", "binary_cross_entropy_grad_hess"]
