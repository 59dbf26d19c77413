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

from . import _backends, _losses
from . import _validate as V
from ._ext import MIN_PARALLEL_ELEMENTS

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
    """float16 and bfloat16 are computed in float32 (and returned in their own dtype)."""
    return np.dtype(np.float32) if V.is_half(dtype) else np.dtype(dtype)


@dataclass
class _Call:
    """What a call shares once its arguments have been validated."""

    logits: object  # the user's array, validated
    reduction: str
    loss_shape: tuple  # shape of the unreduced loss
    module: object  # the backend (fastloss._protocol.Kernels)
    n_threads: int
    # 16-bit logits that the backend's kernel reads natively (its NATIVE_HALF): they, and
    # probability targets of their dtype, are handed over as they are
    native_half: bool = False

    @property
    def n_cols(self) -> int:
        return tuple(self.logits.shape)[-1] if self.logits.ndim else 1

    @property
    def n_rows(self) -> int:
        return self.logits.size // self.n_cols if self.n_cols else 0

    @property
    def dtype(self) -> np.dtype:
        return _compute_dtype(self.logits.dtype)

    def rows(self, a):
        """``a`` as the backend's C-contiguous (rows, C) array in the compute dtype (or, for
        a native 16-bit call, in the logits' own dtype when ``a`` has it)."""
        dtype = self.logits.dtype if self.native_half and a.dtype == self.logits.dtype \
            else self.dtype
        return self.module.as_rows(a, self.n_cols, dtype)


def _setup(spec, logits, reduction, backend, n_threads) -> _Call:
    logits = V.floating(logits, spec.input_name, min_ndim=0 if spec.elementwise else 1)
    reduction = V.reduction(reduction, spec.reductions)
    shape = tuple(logits.shape)
    n_threads = V.n_threads(n_threads) or _backends.default_threads()
    V.supported_on_device(logits, spec.input_name)
    _, module = _backends.resolve(backend, device=V.is_device_array(logits))
    return _Call(logits, reduction, shape if spec.elementwise else shape[:-1], module,
                 n_threads)


def _loss(name, want_grad, logits, target, options, reduction, backend, n_threads,
          grad_output=None, out=None, return_z_loss=False):
    """Every public loss function: validate -> backend -> kernel -> reduce (one driver)."""
    spec = _losses.get(name)
    call = _setup(spec, logits, reduction, backend, n_threads)
    call.native_half = (V.is_half(call.logits.dtype)
                        and spec.kernel in getattr(call.module, "NATIVE_HALF", ()))
    o = {option.name: option.check(options[option.name]) for option in spec.options}
    if want_grad:
        grad_output = V.grad_output(grad_output, call.reduction, call.loss_shape)
        out = V.out_array(out, call.logits)
    prepared = spec.prepare(call, call.logits, target, o)
    x = call.rows(call.logits)
    n_rows, n_cols = x.shape
    mean = call.reduction in ("mean", "batchmean")
    # Python floats: 1/0 is inf here (every target ignored: the loss is 0 * inf = NaN, as in
    # PyTorch, and the kernels write 0 gradients for ignored rows whatever the scale)
    denominator = prepared.denominator
    inv_denominator = 1.0 / denominator if denominator else math.inf

    scale = grad = None
    grad_is_out = False
    if want_grad:
        go = grad_output
        if go.ndim == 0:
            value = float(go) * (inv_denominator if mean else 1.0)
            scale = (np.broadcast_to(np.float64(value), (n_rows, n_cols)) if spec.elementwise
                     else value)  # a float: every row's factor (the kernel protocol)
        else:
            scale = go.reshape(n_rows, n_cols) if spec.elementwise else \
                np.ascontiguousarray(go.reshape(-1))
        grad_is_out = out is not None and out.dtype == x.dtype
        grad = (call.module.as_rows(out, n_cols, x.dtype) if grad_is_out
                else call.module.empty((n_rows, n_cols), x.dtype))
    loss_rows = np.empty((n_rows, n_cols) if spec.elementwise and call.reduction == "none"
                         else (n_rows,))

    kernel = getattr(call.module, spec.kernel)
    if spec.z_loss:
        z_loss = o["z_loss"]
        counted = prepared.counted_rows
        # the z-term is averaged over the counted rows, the CE term by its own denominator
        z_grad = z_loss * (denominator / counted if mean and counted else 1.0)
        lse = np.empty(n_rows) if (z_loss or return_z_loss) else None
        kernel(x, *prepared.kernel_args, z_grad, scale, loss_rows, lse, grad, call.n_threads)
        z_rows = lse  # (z_loss * lse) * lse, the reference's order, in lse's own storage
        if z_loss:
            np.multiply(lse, z_loss * lse, out=lse)
        elif lse is not None:
            lse.fill(0.0)  # z_loss = 0 (return_z_loss): every term 0, a poisoned row's too
    else:
        kernel(x, *prepared.kernel_args, scale, loss_rows, grad, call.n_threads)
        z_rows = None

    loss = _reduce(call, loss_rows, inv_denominator)
    z_term = None
    if z_rows is not None:
        z_term = _reduce(call, z_rows, 1.0 / counted if counted else math.nan)
        loss = loss + z_term
    results = [_as_result(call, loss)]
    if return_z_loss:
        results.append(_as_result(call, z_term))
    if want_grad:
        results.append(_finish_grad(call, grad, out, grad_is_out))
    return results[0] if len(results) == 1 else tuple(results)


def _is(value, default) -> bool:
    """``value`` is a plain Python number equal to the option's default."""
    return type(value) in (int, float) and value == default


def _default_ce_options(weight, ignore_index, label_smoothing, z_loss, softcap, temperature,
                        return_z_loss) -> bool:
    return (weight is None and softcap is None and return_z_loss is False
            and _is(ignore_index, -100) and _is(label_smoothing, 0.0) and _is(z_loss, 0.0)
            and _is(temperature, 1.0))


_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)
_FAST_REDUCTIONS = ("mean", "sum", "none")
# the compiled CPU backends a call may also name outright (backend="cython") on the short path
_FAST_BACKENDS = ("cython", "numba")


def _fast_module(backend):
    """The module of a short-path call's backend: ``"auto"``'s CPU choice (unless
    ``$FASTLOSS_BACKEND`` overrides it) or a named compiled CPU backend that is available;
    None for any other backend (the general driver resolves it, and raises its errors)."""
    if type(backend) is not str:
        return None
    if backend == "auto":
        return None if _backends.env_backend_set() else _backends.auto_cpu_module()
    if backend in _FAST_BACKENDS and _backends.available(backend):
        return _backends.resolve(backend)[1]
    return None


def _fast_setup(logits, reduction, reductions, backend, n_threads, out):
    """The checks every short path makes on what is not the target: 2-D C-contiguous
    float32/float64 logits in native byte order, not empty; ``reduction`` one of
    ``reductions``; ``n_threads`` None or a positive int; ``out`` None or an array of the
    logits' shape and dtype, C-contiguous and writeable; a CPU backend (:func:`_fast_module`).
    Returns ``(module, threads)``, or None when the call is not the common case."""
    if (type(logits) is not np.ndarray or logits.ndim != 2
            or logits.dtype not in _FAST_DTYPES or not logits.flags.c_contiguous
            or type(reduction) is not str or reduction not in reductions
            or (n_threads is not None and (type(n_threads) is not int or n_threads < 1))):
        return None
    n_rows, n_cols = logits.shape
    if n_rows == 0 or n_cols == 0:
        return None
    if out is not None and (type(out) is not np.ndarray or out.shape != logits.shape
                            or out.dtype != logits.dtype or not out.flags.c_contiguous
                            or not out.flags.writeable):
        return None
    module = _fast_module(backend)
    if module is None:
        return None
    # below MIN_PARALLEL_ELEMENTS the kernels run on one thread whatever they are given (the
    # results never depend on the thread count): skip asking the OS for the core count
    small = n_rows * n_cols < MIN_PARALLEL_ELEMENTS
    return module, n_threads or (1 if small else _backends.default_threads())


def _fast_cross_entropy(logits, target, reduction, backend, n_threads, want_grad, out):
    """The common call, with fewer steps: the logits, ``out``, ``n_threads`` and backend of
    :func:`_fast_setup`, a 1-D C-contiguous int64 array of class indices all in ``[0, C)``,
    default options, no ``grad_output``.  Returns what :func:`_loss` would (bit for bit: the
    same kernel and the same reduction), or ``None`` when the call is not that common case;
    the general driver then validates it (and raises the errors).  Every check of the general
    path that can fail for such a call is made here too."""
    setup = _fast_setup(logits, reduction, _FAST_REDUCTIONS, backend, n_threads, out)
    if (setup is None or type(target) is not np.ndarray or target.ndim != 1
            or target.dtype != _INT64 or not target.flags.c_contiguous
            or target.shape[0] != logits.shape[0]):
        return None
    module, threads = setup
    grad = None
    if want_grad:
        grad = out if out is not None else np.empty(logits.shape, logits.dtype)
    loss = _fast_cross_entropy_run(logits, target, reduction, threads, grad, module)
    if loss is None:
        return None
    return (loss, grad) if want_grad else loss


def _fast_cross_entropy_run(logits, target, reduction, threads, grad, module=None):
    """The kernel call of :func:`_fast_cross_entropy`, for a caller that has made its checks
    (``fastloss.torch``'s common call makes them on the tensors): the loss, with the gradient
    written into ``grad`` unless it is None, or None when an index is outside ``[0, C)``.
    ``module``: the backend's (default: ``"auto"``'s CPU backend)."""
    n_rows, n_cols = logits.shape
    if module is None:
        module = _backends.auto_cpu_module()
    value = 1.0 / n_rows if reduction == "mean" else 1.0
    fast = getattr(module, "cross_entropy_index_fast", None)
    if fast is not None:  # the C backend checks the indices and runs the kernel in one step
        loss_rows = fast(logits, target, grad, value, threads)
        if loss_rows is None:
            return None
    else:
        if not V.indices_below(target, n_cols):
            return None
        loss_rows = np.empty(n_rows)
        scale = value if grad is not None else None
        module.cross_entropy(logits, target, _ONES.get(n_cols), -100, 0.0, 0.0, 1.0, 0.0,
                             scale, loss_rows, None, grad, threads)
    if reduction == "none":
        return loss_rows.astype(logits.dtype)
    return logits.dtype.type(_sum_f64(loss_rows) * value)  # value: 1 / n_rows for "mean"


def _fast_loss(name, logits, target, reduction, backend, n_threads, want_grad, out):
    """The common call of the other losses (every option at its default, no
    ``grad_output``), as :func:`_fast_cross_entropy` does it for cross-entropy: C-contiguous
    2-D float32/float64 logits in native byte order, a target that the loss's
    ``fast_args`` takes as it is (the logits' shape, dtype and layout; in-range int64 class
    indices for softmax MSE), a CPU backend as for cross-entropy.  Returns what :func:`_loss`
    would (bit for bit: the same kernel call and the same reduction), or ``None`` when the
    call is not that common case; the general driver then validates it (and raises the
    errors).  Every check of the general path that can fail for such a call is made here
    (:func:`_fast_setup`'s and the loss's ``fast_args``)."""
    spec = _losses.get(name)
    setup = _fast_setup(logits, reduction, spec.reductions, backend, n_threads, out)
    if setup is None:
        return None
    args = spec.fast_args(target, logits)
    if args is None:
        return None
    module, threads = setup
    n_rows = logits.shape[0]
    mean = reduction in ("mean", "batchmean")
    # the general driver's denominator (the losses' prepare) and gradient scale
    value = 1.0 / (logits.size if reduction == "mean" and spec.mean_over_elements
                   else n_rows) if mean else 1.0
    scale = grad = None
    if want_grad:
        scale = (np.broadcast_to(np.float64(value), logits.shape) if spec.elementwise
                 else value)
        grad = out if out is not None else np.empty(logits.shape, logits.dtype)
    per_element = spec.elementwise and reduction == "none"
    loss_rows = np.empty(logits.shape if per_element else n_rows)
    getattr(module, spec.kernel)(logits, *args, scale, loss_rows, grad, threads)
    if reduction == "none":
        loss = loss_rows.astype(logits.dtype)
    else:  # _reduce and _as_result: the float64 sum in the same order, then the mean
        total = _sum_f64(loss_rows)
        loss = logits.dtype.type(total * value if mean else total)
    return (loss, grad) if want_grad else loss


class _Ones(dict):
    """float64 arrays of ones, one per class count (the kernels' unit weights; they only
    read them)."""

    def get(self, n: int) -> np.ndarray:
        ones = dict.get(self, n)
        if ones is None:
            ones = np.ones(n)
            if len(self) < 64:
                self[n] = ones
        return ones


_ONES = _Ones()


_ADD_REDUCE = np.add.reduce


def _sum_f64(rows) -> float:
    """The float64 sum of unreduced float64 loss values, over every axis, in NumPy's fixed
    (pairwise) order: what ``np.sum(rows, dtype=np.float64)`` does, without its Python
    wrapper (which took 2.4 of the 11.2 us of a fused entropy call at 64 x 10, float32).
    The general driver, the short paths and the linear head share it, so their losses
    agree bit for bit."""
    return float(_ADD_REDUCE(rows, axis=None))


def _reduce(call, rows, inv_denominator):
    """Unreduced float64 values -> the float64 loss: a fixed-order sum, then the mean."""
    if call.reduction == "none":
        return rows.reshape(call.loss_shape)
    total = _sum_f64(rows)
    return total * inv_denominator if call.reduction in ("mean", "batchmean") else total


def _as_result(call, value):
    """The float64 loss, rounded once to the logits' dtype."""
    dtype = call.logits.dtype
    return value.astype(dtype) if call.reduction == "none" else dtype.type(value)


def _finish_grad(call, grad, out, grad_is_out):
    if grad_is_out:
        return out
    grad = grad.reshape(tuple(call.logits.shape))
    if out is not None:  # a 16-bit out: the float32 gradient, rounded
        out[...] = grad
        return out
    return grad if grad.dtype == call.logits.dtype else grad.astype(call.logits.dtype)


def _transform(name, logits, backend, n_threads):
    call = _setup(_losses.get("entropy"), logits, "none", backend, n_threads)
    x = call.rows(call.logits)
    per_row = _losses.TRANSFORMS[name]
    result = np.empty(x.shape[0] if per_row else x.shape,
                      dtype=np.float64 if per_row else x.dtype)
    getattr(call.module, name)(x, result, call.n_threads)
    shape = call.loss_shape if per_row else tuple(call.logits.shape)
    return result.reshape(shape).astype(call.logits.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# cross-entropy


def cross_entropy(logits, target, *, weight=None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: float | None = None, temperature: float = 1.0,
                  reduction: str = "mean", return_z_loss: bool = False,
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
    z_loss : float >= 0, default 0
        Adds ``z_loss * lse_i**2`` for every counted row, ``lse_i`` the log-sum-exp of the
        (transformed) row (PaLM's z-loss; ``lse_square_scale`` in flash-attn).  ``"mean"``
        averages this term over the counted rows.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2 uses
        30).  A ``-inf`` logit stays ``-inf``: an impossible class stays impossible.
    temperature : float > 0, default 1
        Logits (after the cap) are divided by it.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the sum of the weights of the non-ignored targets (class
        indices) or by the number of rows (probabilities).
    return_z_loss : bool, default False
        Also return the z-term alone, reduced like the loss (for logging):
        ``(loss, z_term)``, and ``(loss, z_term, grad)`` for the fused form.
    backend : {"auto", "numpy", "numba", "cython", "cuda"}
        Where to compute; ``"auto"`` reads ``$FASTLOSS_BACKEND`` or picks the fastest.
    n_threads : int, optional
        At most this many threads (default: all cores).  Results do not depend on it.

    Returns
    -------
    loss : scalar of the logits' dtype, or array of shape ``logits.shape[:-1]`` for "none"
        (the z-term included).

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> logits = np.log(np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2]]))
    >>> fastloss.cross_entropy(logits, np.array([0, 0]), reduction="none", backend="numpy")
    array([0.22314355, 0.69314718])
    >>> loss, z = fastloss.cross_entropy(logits, np.array([0, 0]), z_loss=1e-4,
    ...                                  return_z_loss=True, backend="numpy")
    >>> print(float(z))   # log-probabilities: every row's log-sum-exp is 0
    0.0
    """
    if _default_ce_options(weight, ignore_index, label_smoothing, z_loss, softcap,
                           temperature, return_z_loss):
        fast = _fast_cross_entropy(logits, target, reduction, backend, n_threads, False, None)
        if fast is not None:
            return fast
    return _loss("cross_entropy", False, logits, target, locals(), reduction, backend,
                 n_threads, return_z_loss=return_z_loss)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index: int = -100,
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: float | None = None, temperature: float = 1.0,
                            reduction: str = "mean", return_z_loss: bool = False,
                            grad_output=None, out=None, backend: str = "auto",
                            n_threads: int | None = None):
    r"""Cross-entropy and its gradient with respect to the logits, in one fused pass.

    The gradient of row :math:`i` is :math:`A_i\,\operatorname{softmax}(x_i) - a_i` with
    :math:`A_i = \sum_c a_{ic}` (see :func:`cross_entropy` for :math:`a`), times
    ``grad_output`` and divided by the mean's denominator when ``reduction="mean"``; the
    z-term adds :math:`2 \lambda L_i p_i`, and ``softcap`` / ``temperature`` multiply by the
    derivative of the transform (see :func:`fastloss.reference.cross_entropy`).

    Parameters
    ----------
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, temperature
        As for :func:`cross_entropy`.
    reduction, return_z_loss, backend, n_threads
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
    if grad_output is None and _default_ce_options(weight, ignore_index, label_smoothing,
                                                   z_loss, softcap, temperature,
                                                   return_z_loss):
        fast = _fast_cross_entropy(logits, target, reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("cross_entropy", True, logits, target, locals(), reduction, backend,
                 n_threads, grad_output, out, return_z_loss)


# --------------------------------------------------------------------------------------------
# binary cross-entropy with logits


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
    if weight is None and pos_weight is None:
        fast = _fast_loss("binary_cross_entropy_with_logits", logits, target,
                          reduction, backend, n_threads, False, None)
        if fast is not None:
            return fast
    return _loss("binary_cross_entropy_with_logits", False, logits, target, locals(),
                 reduction, backend, n_threads)


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
    if grad_output is None and weight is None and pos_weight is None:
        fast = _fast_loss("binary_cross_entropy_with_logits", logits, target,
                          reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("binary_cross_entropy_with_logits", True, logits, target, locals(),
                 reduction, backend, n_threads, grad_output, out)


# --------------------------------------------------------------------------------------------
# softmax MSE (Brier score), KL divergence, entropy


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
    fast = _fast_loss("softmax_mse", logits, target, reduction, backend, n_threads, False, None)
    if fast is not None:
        return fast
    return _loss("softmax_mse", False, logits, target, locals(), reduction, backend, n_threads)


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
    if grad_output is None:
        fast = _fast_loss("softmax_mse", logits, target, reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("softmax_mse", True, logits, target, locals(), reduction, backend, n_threads,
                 grad_output, out)


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
    if log_target is False:
        fast = _fast_loss("kl_divergence", logits, target,
                          reduction, backend, n_threads, False, None)
        if fast is not None:
            return fast
    return _loss("kl_divergence", False, logits, target, locals(), reduction, backend,
                 n_threads)


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
    if grad_output is None and log_target is False:
        fast = _fast_loss("kl_divergence", logits, target,
                          reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("kl_divergence", True, logits, target, locals(), reduction, backend,
                 n_threads, grad_output, out)


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
    fast = _fast_loss("entropy", logits, None, reduction, backend, n_threads, False, None)
    if fast is not None:
        return fast
    return _loss("entropy", False, logits, None, locals(), reduction, backend, n_threads)


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
    if grad_output is None:
        fast = _fast_loss("entropy", logits, None, reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("entropy", True, logits, None, locals(), reduction, backend, n_threads,
                 grad_output, out)


# --------------------------------------------------------------------------------------------
# mean squared error


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
    fast = _fast_loss("mse_loss", input, target, reduction, backend, n_threads, False, None)
    if fast is not None:
        return fast
    return _loss("mse_loss", False, input, target, locals(), reduction, backend, n_threads)


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
    if grad_output is None:
        fast = _fast_loss("mse_loss", input, target, reduction, backend, n_threads, True, out)
        if fast is not None:
            return fast
    return _loss("mse_loss", True, input, target, locals(), reduction, backend, n_threads,
                 grad_output, out)


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp


def softmax(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`\operatorname{softmax}(x)_c = e^{x_c - m} / \sum_k e^{x_k - m}` over the last axis.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> fastloss.softmax(np.log(np.array([[1.0, 3.0]])))
    array([[0.25, 0.75]])
    """
    return _transform("softmax", logits, backend, n_threads)


def log_softmax(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`x_c - \operatorname{logsumexp}(x)` over the last axis.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> np.exp(fastloss.log_softmax(np.log(np.array([[1.0, 3.0]]))))
    array([[0.25, 0.75]])
    """
    return _transform("log_softmax", logits, backend, n_threads)


def logsumexp(logits, *, backend: str = "auto", n_threads: int | None = None) -> np.ndarray:
    r""":math:`\log \sum_c e^{x_c}` over the last axis, without overflow.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> fastloss.logsumexp(np.array([[1000.0, 1000.0]])) - 1000.0
    array([0.69314718])
    """
    return _transform("logsumexp", logits, backend, n_threads)
