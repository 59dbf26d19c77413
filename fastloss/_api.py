"""The public functions: validate -> pick a backend -> run its row kernel -> reduce.

Every backend computes the loss of each row (in float64) and, when asked, writes
``scale * d loss / d logits`` into the gradient buffer; the batch reduction and the gradient
scale are worked out here, once, in a fixed order, so every backend and every thread count
reduces the same way.  The math of each loss is in :mod:`fastloss.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _backends
from . import _validate as V

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "softmax_mse",
    "softmax_mse_with_grad",
    "kl_divergence",
    "kl_divergence_with_grad",
    "entropy",
    "entropy_with_grad",
    "mse_loss",
    "mse_loss_with_grad",
    "softmax",
    "log_softmax",
    "logsumexp",
]


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32 (and returned as float16)."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _rows(a: np.ndarray, n_cols: int, dtype: np.dtype):
    """A C-contiguous (rows, n_cols) view or copy of ``a`` in ``dtype``."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1, n_cols)


@dataclass
class _Call:
    """What every loss call shares once its own arguments have been validated."""

    logits: np.ndarray
    reduction: str
    loss_shape: tuple  # shape of the unreduced loss
    want_grad: bool
    grad_output: np.ndarray | None
    out: np.ndarray | None
    backend: str
    module: object
    n_threads: int | None

    @property
    def n_cols(self) -> int:
        return tuple(self.logits.shape)[-1] if self.logits.ndim else 1

    @property
    def dtype(self) -> np.dtype:
        return _compute_dtype(self.logits.dtype)

    @property
    def device(self) -> bool:
        return V.is_device_array(self.logits)

    def rows(self, a) -> np.ndarray:
        if V.is_device_array(a):
            return self.module.rows(a, self.n_cols)
        return _rows(a, self.n_cols, self.dtype)


def _common(logits, reduction, want_grad, grad_output, out, backend, n_threads, *,
            loss_shape, reductions=V.REDUCTIONS) -> _Call:
    reduction = V.reduction(reduction, reductions)
    if want_grad:
        grad_output = V.grad_output(grad_output, reduction, loss_shape)
        out = V.out_array(out, logits)
    n_threads = V.n_threads(n_threads)
    device = V.is_device_array(logits)
    if device and logits.dtype == np.float16:
        raise TypeError("float16 GPU arrays are not supported; use float32 or float64")
    name, module = _backends.resolve(backend, device=device)
    return _Call(logits, reduction, tuple(loss_shape), want_grad, grad_output, out, name,
                 module, n_threads)


def _run(call: _Call, kernel: str, x: np.ndarray, args: tuple, denominator: float,
         *, elementwise: bool = False):
    """Run ``kernel`` on the (N, C) rows ``x``, reduce the loss, scale and return the grad."""
    n_rows, n_cols = x.shape
    # Python floats: 1/0 is inf here (every target ignored: the loss is 0 * inf = NaN, as in
    # PyTorch, and the kernels write 0 gradients for ignored rows whatever the scale)
    inv_denominator = 1.0 / denominator if denominator else math.inf
    scale = None
    if call.want_grad:
        go = call.grad_output
        if go.ndim == 0:
            value = float(go) * (inv_denominator if call.reduction == "mean" else 1.0)
            scale = (np.broadcast_to(np.float64(value), (n_rows, n_cols)) if elementwise
                     else np.full(n_rows, value))
        elif elementwise:
            scale = go.reshape(n_rows, n_cols)
        else:
            scale = np.ascontiguousarray(go.reshape(-1))
    loss_rows = np.empty((n_rows, n_cols) if elementwise and call.reduction == "none"
                         else (n_rows,))
    grad = None
    if call.want_grad:
        if call.out is not None and call.out.dtype == x.dtype:
            grad = call.rows(call.out) if call.device else call.out.reshape(n_rows, n_cols)
        elif call.device:
            grad = call.module.empty((n_rows, n_cols), x.dtype)
        else:
            grad = np.empty((n_rows, n_cols), dtype=x.dtype)
    with call.module.thread_limit(call.n_threads):
        getattr(call.module, kernel)(x, *args, scale, loss_rows, grad)

    result_type = call.logits.dtype.type
    if call.reduction == "none":
        loss = loss_rows.reshape(call.loss_shape).astype(call.logits.dtype)
    else:
        total = float(np.sum(loss_rows, dtype=np.float64))
        loss = result_type(total * inv_denominator if call.reduction == "mean" else total)
    if not call.want_grad:
        return loss
    return loss, _finish_grad(call, grad)


def _finish_grad(call: _Call, grad: np.ndarray) -> np.ndarray:
    shape = tuple(call.logits.shape)
    if call.device:  # the gradient stays on the GPU, as the logits
        return call.out if call.out is not None else grad.reshape(shape)
    if call.out is None:
        return grad.reshape(shape).astype(call.logits.dtype, copy=False)
    if not np.shares_memory(grad, call.out):
        call.out[...] = grad.reshape(shape)
    return call.out


# --------------------------------------------------------------------------------------------
# cross-entropy


def _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                   backend, n_threads, want_grad, grad_output=None, out=None):
    logits = V.floating(logits, "logits", min_ndim=1)
    n_classes = tuple(logits.shape)[-1]
    eps = V.label_smoothing(label_smoothing)
    ignore_index = V.integer(ignore_index, "ignore_index")
    w = V.class_weight(weight, n_classes)
    soft = V.is_probability_target(target, logits)
    if soft:
        if ignore_index != -100:
            raise ValueError(
                f"ignore_index={ignore_index} cannot be used with probability targets "
                f"(target has the logits' shape {tuple(logits.shape)})"
            )
        target = V.same_shape(target, logits, "target")
    else:
        target = V.class_target(target, logits, ignore_index)
    call = _common(logits, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(logits.shape)[:-1])

    x = call.rows(logits)
    weights = np.ones(n_classes) if w is None else w
    if soft:
        t = call.rows(target)
        denominator = x.shape[0]  # PyTorch: the number of rows
    else:
        t = target
        counted = t != ignore_index
        # PyTorch: the sum of the weights of the non-ignored targets
        denominator = weights[t[counted]].sum() if w is not None else np.count_nonzero(counted)
    return _run(call, "ce", x, (t, weights, ignore_index, eps), denominator)


def cross_entropy(logits, target, *, weight=None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean",
                  backend: str = "auto", n_threads: int | None = None):
    r"""Softmax cross-entropy between logits and class indices or class probabilities.

    .. math::

        \ell_i = -\sum_c a_{ic} \log \operatorname{softmax}(x_i)_c, \qquad
        a_{ic} = w_c\big((1-\varepsilon)\, t_{ic} + \varepsilon / C\big)

    where :math:`t_i` is the one-hot row of the class index :math:`y_i` (or the given
    probabilities), :math:`w` the class weights and :math:`\varepsilon` the label smoothing.
    Same semantics as ``torch.nn.functional.cross_entropy``, with classes on the *last* axis.

    Parameters
    ----------
    logits : array_like, shape (..., C)
        Raw, unnormalised scores (float16, float32 or float64).
    target : array_like
        Integer class indices of shape ``logits.shape[:-1]``, or floating probabilities of
        shape ``logits.shape``.
    weight : array_like, shape (C,), optional
        Weight of each class.
    ignore_index : int, default -100
        Rows whose class index equals it contribute 0 loss and 0 gradient, and are left out
        of the mean's denominator (class indices only).
    label_smoothing : float in [0, 1], default 0
        Mass moved from the target to the uniform distribution.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the sum of the weights of the non-ignored targets (class
        indices) or by the number of rows (probabilities).
    backend : {"auto", "numpy", "numba", "cython", "cuda"}
        Where to compute; ``"auto"`` reads ``$FASTLOSS_BACKEND`` or picks the fastest.
    n_threads : int, optional
        At most this many threads (default: all cores).  Results do not depend on it.

    Returns
    -------
    loss : scalar of the logits' dtype, or array of shape ``logits.shape[:-1]`` for "none".

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> logits = np.log(np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2]]))
    >>> fastloss.cross_entropy(logits, np.array([0, 0]), reduction="none", backend="numpy")
    array([0.22314355, 0.69314718])
    """
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, n_threads, want_grad=False)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index: int = -100,
                            label_smoothing: float = 0.0, reduction: str = "mean",
                            grad_output=None, out=None, backend: str = "auto",
                            n_threads: int | None = None):
    r"""Cross-entropy and its gradient with respect to the logits, in one fused pass.

    The gradient of row :math:`i` is :math:`A_i\,\operatorname{softmax}(x_i) - a_i` with
    :math:`A_i = \sum_c a_{ic}` (see :func:`cross_entropy` for :math:`a`), times
    ``grad_output`` and divided by the mean's denominator when ``reduction="mean"``.

    Parameters
    ----------
    logits, target, weight, ignore_index, label_smoothing, reduction, backend, n_threads
        As for :func:`cross_entropy`.
    grad_output : scalar or array, optional
        Upstream gradient: a scalar for "mean"/"sum", an array of the loss's shape for
        "none".  Default 1.
    out : ndarray, optional
        C-contiguous array of the logits' shape and dtype that receives the gradient;
        ``out=logits`` overwrites the logits and needs no extra memory.

    Returns
    -------
    loss : as for :func:`cross_entropy`.
    grad : ndarray of the logits' shape and dtype (``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> logits = np.log(np.array([[0.8, 0.1, 0.1]]))
    >>> loss, grad = fastloss.cross_entropy_with_grad(logits, np.array([0]), backend="numpy")
    >>> print(round(float(loss), 6), np.round(grad, 6))
    0.223144 [[-0.2  0.1  0.1]]
    """
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, n_threads, want_grad=True, grad_output=grad_output, out=out)


# --------------------------------------------------------------------------------------------
# binary cross-entropy with logits


def _bce(logits, target, weight, pos_weight, reduction, backend, n_threads, want_grad,
         grad_output=None, out=None):
    logits = V.floating(logits, "logits")
    target = V.same_shape(target, logits, "target")
    w = V.broadcast_weight(weight, logits, "weight")
    n_cols = tuple(logits.shape)[-1] if logits.ndim else 1
    pw = V.class_vector(pos_weight, n_cols, "pos_weight")
    call = _common(logits, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(logits.shape))
    x = call.rows(logits)
    t = call.rows(target)
    if w is not None:
        w = np.broadcast_to(w, tuple(logits.shape)).reshape(x.shape)
    return _run(call, "bce", x, (t, w, pw), logits.size, elementwise=True)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction: str = "mean", backend: str = "auto",
                                     n_threads: int | None = None):
    r"""Sigmoid binary cross-entropy of every element, from raw logits.

    .. math::

        \ell = -w\,\big[p_w\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))\big]

    computed as :math:`w\,[p_w\, t\, \operatorname{softplus}(-x) + (1-t)\operatorname{softplus}(x)]`
    with :math:`\operatorname{softplus}(x) = \max(x, 0) + \log(1 + e^{-|x|})`, so it never
    overflows.  Same semantics as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    logits : array_like
        Raw scores of any shape.
    target : array_like
        Targets in [0, 1], of the logits' shape.
    weight : array_like, optional
        Weights that broadcast to the logits' shape.
    pos_weight : array_like, shape (C,), optional
        Weight of the positive term of each class (last axis).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages over every element.
    backend, n_threads
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> logits = np.log(np.array([0.8 / 0.2]))   # sigma(logit) = 0.8
    >>> round(float(fastloss.binary_cross_entropy_with_logits(logits, np.array([1.0]))), 6)
    0.223144
    """
    return _bce(logits, target, weight, pos_weight, reduction, backend, n_threads, False)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction: str = "mean", grad_output=None,
                                               out=None, backend: str = "auto",
                                               n_threads: int | None = None):
    r"""Binary cross-entropy with logits and its gradient, in one pass.

    .. math::

        \frac{\partial \ell}{\partial x} = w\,\big[(1-t)\,\sigma(x) - p_w\, t\,(1 - \sigma(x))\big]

    Parameters and returns as for :func:`binary_cross_entropy_with_logits` and
    :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> loss, grad = fastloss.binary_cross_entropy_with_logits_with_grad(
    ...     np.array([0.0, 0.0]), np.array([1.0, 0.0]), reduction="sum")
    >>> print(round(float(loss), 6), grad)
    1.386294 [-0.5  0.5]
    """
    return _bce(logits, target, weight, pos_weight, reduction, backend, n_threads, True,
                grad_output, out)


# --------------------------------------------------------------------------------------------
# softmax MSE (Brier score), KL divergence, entropy


def _softmax_target(target, logits):
    """Class indices (flat int64) or probabilities of the logits' shape."""
    if V.is_probability_target(target, logits):
        return V.same_shape(target, logits, "target"), True
    return V.class_target(target, logits, None), False


def _softmax_mse(logits, target, reduction, backend, n_threads, want_grad, grad_output=None,
                 out=None):
    logits = V.floating(logits, "logits", min_ndim=1)
    target, soft = _softmax_target(target, logits)
    call = _common(logits, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(logits.shape)[:-1])
    x = call.rows(logits)
    t = call.rows(target) if soft else target
    return _run(call, "softmax_mse", x, (t,), x.shape[0])


def softmax_mse(logits, target, *, reduction: str = "mean", backend: str = "auto",
                n_threads: int | None = None):
    r"""Squared error between the softmax of the logits and a target (multiclass Brier score).

    .. math::

        \ell_i = \sum_c \big(\operatorname{softmax}(x_i)_c - t_{ic}\big)^2

    Parameters
    ----------
    logits : array_like, shape (..., C)
    target : array_like
        Class indices (one-hot targets) of shape ``logits.shape[:-1]``, or probabilities of
        the logits' shape.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages the rows.
    backend, n_threads
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> logits = np.log(np.array([[0.8, 0.1, 0.1]]))
    >>> round(float(fastloss.softmax_mse(logits, np.array([0]))), 6)
    0.06
    """
    return _softmax_mse(logits, target, reduction, backend, n_threads, False)


def softmax_mse_with_grad(logits, target, *, reduction: str = "mean", grad_output=None,
                          out=None, backend: str = "auto", n_threads: int | None = None):
    r"""Softmax MSE and its gradient, in one pass.

    .. math::

        \frac{\partial \ell_i}{\partial x_{ij}} = 2 p_{ij}\Big[(p_{ij} - t_{ij})
            - \sum_c (p_{ic} - t_{ic})\, p_{ic}\Big]

    Parameters and returns as for :func:`softmax_mse` and :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> loss, grad = fastloss.softmax_mse_with_grad(np.zeros((1, 2)), np.array([0]))
    >>> print(float(loss), grad)
    0.5 [[-0.5  0.5]]
    """
    return _softmax_mse(logits, target, reduction, backend, n_threads, True, grad_output, out)


def _kl(logits, target, log_target, reduction, backend, n_threads, want_grad, grad_output=None,
        out=None):
    logits = V.floating(logits, "logits", min_ndim=1)
    target = V.same_shape(target, logits, "target")
    log_target = V.boolean(log_target, "log_target")
    call = _common(logits, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(logits.shape)[:-1],
                   reductions=V.REDUCTIONS + ("batchmean",))
    x = call.rows(logits)
    t = call.rows(target)
    # PyTorch's kl_div: "mean" divides by every element, "batchmean" by the first dimension.
    if call.reduction == "mean":
        denominator = logits.size
    else:
        denominator = tuple(logits.shape)[0] if logits.ndim > 1 else 1
    if call.reduction == "batchmean":
        call.reduction = "mean"
    return _run(call, "kl", x, (t, log_target), denominator)


def kl_divergence(logits, target, *, log_target: bool = False, reduction: str = "batchmean",
                  backend: str = "auto", n_threads: int | None = None):
    r"""KL divergence :math:`\mathrm{KL}(t \,\|\, \operatorname{softmax}(x))` of each row.

    .. math::

        \ell_i = \sum_c t_{ic}\,\big(\log t_{ic} - \log \operatorname{softmax}(x_i)_c\big)

    with :math:`0 \log 0 = 0`.  Equals
    ``torch.nn.functional.kl_div(log_softmax(logits), target, ...)`` summed over the class axis.

    Parameters
    ----------
    logits : array_like, shape (..., C)
    target : array_like, shape (..., C)
        Probabilities (or log-probabilities with ``log_target=True``).
    reduction : {"batchmean", "mean", "sum", "none"}
        As PyTorch: ``"batchmean"`` divides the sum by ``logits.shape[0]`` (1 for 1-D
        logits), ``"mean"`` by the number of elements, ``"none"`` gives one value per row.
    backend, n_threads
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> t = np.array([[0.5, 0.5]])
    >>> round(float(fastloss.kl_divergence(np.log([[0.8, 0.2]]), t)), 6)
    0.223144
    """
    return _kl(logits, target, log_target, reduction, backend, n_threads, False)


def kl_divergence_with_grad(logits, target, *, log_target: bool = False,
                            reduction: str = "batchmean", grad_output=None, out=None,
                            backend: str = "auto", n_threads: int | None = None):
    r"""KL divergence and its gradient :math:`T_i\,\operatorname{softmax}(x_i) - t_i`,
    :math:`T_i = \sum_c t_{ic}`, in one pass.

    Parameters and returns as for :func:`kl_divergence` and :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> loss, grad = fastloss.kl_divergence_with_grad(np.zeros((1, 2)), np.array([[1.0, 0.0]]))
    >>> print(round(float(loss), 6), grad)
    0.693147 [[-0.5  0.5]]
    """
    return _kl(logits, target, log_target, reduction, backend, n_threads, True, grad_output,
               out)


def _entropy(logits, reduction, backend, n_threads, want_grad, grad_output=None, out=None):
    logits = V.floating(logits, "logits", min_ndim=1)
    call = _common(logits, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(logits.shape)[:-1])
    x = call.rows(logits)
    return _run(call, "entropy", x, (), x.shape[0])


def entropy(logits, *, reduction: str = "mean", backend: str = "auto",
            n_threads: int | None = None):
    r"""Shannon entropy (in nats) of the softmax of each row.

    .. math::

        H_i = -\sum_c p_{ic} \log p_{ic}, \qquad p_i = \operatorname{softmax}(x_i)

    Parameters
    ----------
    logits : array_like, shape (..., C)
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages the rows.
    backend, n_threads
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> round(float(fastloss.entropy(np.zeros((1, 4)))), 6)   # log 4
    1.386294
    """
    return _entropy(logits, reduction, backend, n_threads, False)


def entropy_with_grad(logits, *, reduction: str = "mean", grad_output=None, out=None,
                      backend: str = "auto", n_threads: int | None = None):
    r"""Entropy and its gradient :math:`-p_{ij}(\log p_{ij} + H_i)`, in one pass.

    Parameters and returns as for :func:`entropy` and :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> loss, grad = fastloss.entropy_with_grad(np.zeros((1, 4)))
    >>> print(np.abs(grad).max())   # the uniform distribution is a maximum
    0.0
    """
    return _entropy(logits, reduction, backend, n_threads, True, grad_output, out)


# --------------------------------------------------------------------------------------------
# mean squared error


def _mse(input, target, reduction, backend, n_threads, want_grad, grad_output=None, out=None):
    input = V.floating(input, "input")
    target = V.same_shape(target, input, "target", "input")
    call = _common(input, reduction, want_grad, grad_output, out, backend, n_threads,
                   loss_shape=tuple(input.shape))
    return _run(call, "mse", call.rows(input), (call.rows(target),), input.size,
                elementwise=True)


def mse_loss(input, target, *, reduction: str = "mean", backend: str = "auto",
             n_threads: int | None = None):
    r"""Elementwise squared error :math:`(x - t)^2`, as ``torch.nn.functional.mse_loss``.

    ``input`` and ``target`` must have the same shape (no broadcasting).

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> float(fastloss.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 0.0])))
    2.5
    """
    return _mse(input, target, reduction, backend, n_threads, False)


def mse_loss_with_grad(input, target, *, reduction: str = "mean", grad_output=None, out=None,
                       backend: str = "auto", n_threads: int | None = None):
    r"""Squared error and its gradient :math:`2(x - t)` (over the element count for "mean").

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> loss, grad = fastloss.mse_loss_with_grad(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    >>> print(float(loss), grad)
    2.5 [1. 2.]
    """
    return _mse(input, target, reduction, backend, n_threads, True, grad_output, out)


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp


def _transform(kernel, logits, backend, n_threads, *, per_row: bool):
    logits = V.floating(logits, "logits", min_ndim=1)
    call = _common(logits, "none", False, None, None, backend, n_threads,
                   loss_shape=tuple(logits.shape)[:-1])
    x = call.rows(logits)
    result = np.empty(x.shape[0] if per_row else x.shape, dtype=np.float64 if per_row else x.dtype)
    with call.module.thread_limit(call.n_threads):
        getattr(call.module, kernel)(x, result)
    shape = tuple(logits.shape)[:-1] if per_row else tuple(logits.shape)
    return result.reshape(shape).astype(logits.dtype, copy=False)


def softmax(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`\operatorname{softmax}(x)_c = e^{x_c - m} / \sum_k e^{x_k - m}` over the last axis.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> fastloss.softmax(np.log(np.array([[1.0, 3.0]])))
    array([[0.25, 0.75]])
    """
    return _transform("softmax", logits, backend, n_threads, per_row=False)


def log_softmax(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`x_c - \operatorname{logsumexp}(x)` over the last axis.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> np.exp(fastloss.log_softmax(np.log(np.array([[1.0, 3.0]]))))
    array([[0.25, 0.75]])
    """
    return _transform("log_softmax", logits, backend, n_threads, per_row=False)


def logsumexp(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`\log \sum_c e^{x_c}` over the last axis, without overflow.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> fastloss.logsumexp(np.array([[1000.0, 1000.0]])) - 1000.0
    array([0.69314718])
    """
    return _transform("logsumexp", logits, backend, n_threads, per_row=True)
