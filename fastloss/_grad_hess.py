"""Gradient and Hessian of the cross-entropy for gradient boosting: validate -> pick a backend
that has the kernel -> run it (docs/design.md section 2, ``*_grad_hess`` kernels).

The objectives for XGBoost and LightGBM built on these are in :mod:`fastloss.boosting`; the
math is in :func:`fastloss.reference.cross_entropy_grad_hess` and
:func:`fastloss.reference.binary_cross_entropy_grad_hess`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _backends
from . import _validate as V

__all__ = ["cross_entropy_grad_hess", "binary_cross_entropy_grad_hess"]

ORDERS = ("C", "F")


# --------------------------------------------------------------------------------------------
# argument checks (besides those of fastloss._validate)


def _finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {V._describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def hessian_scale(value) -> float:
    """A finite number > 0."""
    value = _finite_number(value, "hessian_scale")
    if not value > 0.0:
        raise ValueError(f"hessian_scale must be a finite number > 0, got {value!r}")
    return value


def min_hessian(value) -> float:
    """A finite number >= 0."""
    value = _finite_number(value, "min_hessian")
    if not value >= 0.0:
        raise ValueError(f"min_hessian must be a finite number >= 0, got {value!r}")
    return value


def order(value) -> str:
    if not isinstance(value, str) or value not in ORDERS:
        raise ValueError(f"order must be 'C' or 'F', got {value!r}")
    return value


def out_dtype(value) -> np.dtype | None:
    """``None`` or float16 / float32 / float64 (anything ``np.dtype`` reads as one)."""
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        raise TypeError(f"dtype must be None, float16, float32 or float64, "
                        f"got {V._describe(value)}") from None
    if dtype.newbyteorder("=") not in V.FLOAT_DTYPES:
        raise TypeError(f"dtype must be None, float16, float32 or float64, got {dtype}")
    return dtype.newbyteorder("=")


def sample_weight(value, n_rows: int) -> np.ndarray | None:
    """``None`` or a C-contiguous float64 array of shape ``(N,)`` of finite values (a copy:
    the kernels never see the caller's array)."""
    if value is None:
        return None
    arr = V.real(value, "sample_weight")
    if V.is_device_array(arr):
        arr = np.asarray(arr.copy_to_host())
    if tuple(arr.shape) != (n_rows,):
        raise ValueError(f"sample_weight must have shape ({n_rows},), one weight per sample, "
                         f"got {tuple(arr.shape)}")
    arr = np.array(arr, dtype=np.float64, order="C")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"sample_weight must be finite, got {float(arr[first])!r} at position "
                         f"{first}")
    return arr


def _contiguous(a, order_: str) -> bool:
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous if order_ == "C" else a.flags.f_contiguous
    return a.is_c_contiguous() if order_ == "C" else a.is_f_contiguous()


def _out_pair(out, shape, dtype, order_, raw, inputs):
    """``None`` or the ``(grad, hess)`` pair, checked: arrays of ``shape`` and ``dtype`` laid
    out in ``order_``, writeable, on the raw scores' device, overlapping nothing."""
    if out is None:
        return None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"out must be a (grad, hess) pair of arrays, got {V._describe(out)}")
    device = V.is_device_array(raw)
    arrays = []
    for name, a in zip(("out[0] (grad)", "out[1] (hess)"), out):
        if device:
            if not V.is_device_array(a):
                raise TypeError(f"{name} must be a GPU array when raw is one, "
                                f"got {type(a).__name__}")
            a = V.as_device_array(a)
        elif not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        problems = []
        if tuple(a.shape) != tuple(shape):
            problems.append(f"shape {tuple(a.shape)} (expected {tuple(shape)})")
        if np.dtype(a.dtype) != dtype:
            problems.append(f"dtype {a.dtype} (expected {dtype}; pass dtype= to choose)")
        if not _contiguous(a, order_):
            problems.append(f"a layout that is not {'C' if order_ == 'C' else 'Fortran'}-"
                            f"contiguous (expected order={order_!r}; pass order= to choose)")
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            problems.append("a read-only buffer")
        if problems:
            raise ValueError(f"{name} has " + ", ".join(problems))
        arrays.append(a)
    grad, hess = arrays
    if not device:
        if np.may_share_memory(grad, hess):
            raise ValueError("out[0] (grad) and out[1] (hess) overlap; pass two distinct arrays")
        for name, a in zip(("out[0] (grad)", "out[1] (hess)"), arrays):
            for what, b in inputs:
                if isinstance(b, np.ndarray) and np.may_share_memory(a, b):
                    raise ValueError(f"{name} overlaps {what}; the outputs must not share "
                                     f"memory with the inputs")
    return grad, hess


# --------------------------------------------------------------------------------------------
# backend choice


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if V.is_half(dtype) else np.dtype(dtype)


def _empty(module, shape, dtype, order_):
    """An output of the backend (host or GPU) laid out in ``order_`` (a Fortran-ordered
    array is the transpose of a C-ordered one)."""
    if order_ == "F" and len(shape) == 2:
        return module.empty(shape[::-1], dtype).T
    return module.empty(shape, dtype)


# --------------------------------------------------------------------------------------------
# the driver


def _grad_hess(kernel, raw, target, weight, smoothing, scale, floor, dtype, order_, out,
               backend, n_threads):
    binary = kernel == "binary_cross_entropy_grad_hess"
    raw = V.floating(raw, "raw")
    shape = tuple(raw.shape)
    if binary and len(shape) != 1:
        raise ValueError(f"raw must have shape (N,), one score per sample, got shape {shape}")
    if not binary and len(shape) != 2:
        raise ValueError(f"raw must have shape (N, K), one score per sample and class, "
                         f"got shape {shape}")
    if not binary and shape[1] == 0:
        raise ValueError(f"raw must have at least one class, got shape {shape}")
    V.supported_on_device(raw, "raw")
    device = V.is_device_array(raw)
    n_threads = V.n_threads(n_threads) or _backends.default_threads()
    scale = hessian_scale(scale)
    floor = min_hessian(floor)
    if not binary:
        smoothing = V.label_smoothing(smoothing)
    order_ = order(order_)
    dtype = out_dtype(dtype)

    if binary:
        target = V.same_shape(target, raw, "target", "raw")
        soft = True
    elif V.is_probability_target(target, raw):
        target = V.same_shape(target, raw, "target", "raw")
        soft = True
    else:
        target = V.class_target(target, raw, None)
        soft = False
    weight = sample_weight(weight, shape[0])

    if dtype is None:
        if out is not None and isinstance(out, (tuple, list)) and len(out) == 2 \
                and hasattr(out[0], "dtype"):
            dtype = np.dtype(out[0].dtype)  # checked against out[1] below
            if dtype.newbyteorder("=") not in V.FLOAT_DTYPES:
                raise ValueError(f"out[0] (grad) has dtype {dtype} (expected a float dtype)")
        else:
            dtype = _compute_dtype(raw.dtype)
    inputs = [("raw", raw), ("target", target)]
    out = _out_pair(out, shape, dtype, order_, raw, inputs)

    _, module = _backends.resolve(backend, device=device)
    # the compute dtype: the wider of the raw scores' and the output's (float16 -> float32)
    compute = max(_compute_dtype(raw.dtype), _compute_dtype(dtype), key=lambda d: d.itemsize)
    if device and (compute != raw.dtype or dtype != compute):
        raise TypeError(f"raw is a {raw.dtype} GPU array: its gradient and Hessian are "
                        f"computed and returned in {raw.dtype} (dtype=None)")
    n_cols = 1 if binary else shape[1]
    x = module.as_rows(raw, n_cols, compute)
    if soft:
        target = module.as_rows(target, n_cols, compute)
    if binary:
        x, target = x.reshape(-1), target.reshape(-1)

    if dtype == compute:
        grad, hess = out if out is not None else (_empty(module, shape, dtype, order_),
                                                  _empty(module, shape, dtype, order_))
        args = (grad, hess, n_threads)
    else:  # compute, then round into the outputs: one more pass over grad and hess
        args = (module.empty(shape, compute), module.empty(shape, compute), n_threads)
    fn = getattr(module, kernel)
    if binary:
        fn(x, target, weight, scale, floor, *args)
    else:
        fn(x, target, weight, smoothing, scale, floor, *args)
    if dtype == compute:
        return grad, hess
    if out is None:
        out = (np.empty(shape, dtype, order=order_), np.empty(shape, dtype, order=order_))
    with np.errstate(over="ignore"):
        np.copyto(out[0], args[0], casting="unsafe")
        np.copyto(out[1], args[1], casting="unsafe")
    return out[0], out[1]


def cross_entropy_grad_hess(raw, target, *, sample_weight=None, label_smoothing: float = 0.0,
                            hessian_scale: float = 1.0, min_hessian: float = 0.0, dtype=None,
                            order: str = "C", out=None, backend: str = "auto",
                            n_threads: int | None = None):
    r"""Gradient and diagonal Hessian of the softmax cross-entropy with respect to the raw
    scores, in one fused pass: the custom objective of multiclass gradient boosting.

    .. math::

        g_{ic} = (A_i\, p_{ic} - q_{ic})\, w_i, \qquad
        h_{ic} = \max\big(s\, A_i\, p_{ic}(1 - p_{ic})\, w_i,\; h_{\min}\big)

    with :math:`p_i = \operatorname{softmax}(\mathrm{raw}_i)`, the smoothed target
    :math:`q_{ic} = (1-\varepsilon)\,t_{ic} + \varepsilon/K` (:math:`t_i` the one-hot row of the
    class index, or the given probabilities) and :math:`A_i = \sum_c q_{ic}`.  For class
    indices :math:`A_i = 1`: :math:`g = (p - \mathrm{onehot})\,w` and
    :math:`h = \max(s\,p(1-p)\,w, h_{\min})`, the diagonal of the Hessian as in scikit-learn's
    ``HalfMultinomialLoss.gradient_hessian``.  For probability targets that do not sum to 1,
    the gradient is :math:`(\sum_c q_c)\,p - q` and the Hessian is scaled by
    :math:`\sum_c q_c` (the exact derivatives of :math:`-\sum_c q_c \log p_c`).
    See :func:`fastloss.reference.cross_entropy_grad_hess`.

    Parameters
    ----------
    raw : array_like, shape (N, K)
        Raw scores (float16, float32 or float64), one row per sample.
    target : array_like
        Class indices of shape (N,) (any integer dtype), or probabilities of shape (N, K).
    sample_weight : array_like, shape (N,), optional
        Finite weight of each sample; multiplies the gradient and the Hessian (before the
        floor ``min_hessian``).
    label_smoothing : float in [0, 1], default 0
    hessian_scale : float > 0, default 1
        Multiplies the Hessian: 2 reproduces XGBoost's ``multi:softprob``, ``K / (K - 1)``
        LightGBM's ``multiclass``.
    min_hessian : float >= 0, default 0
        Floor of the Hessian (XGBoost uses 1e-16).  NaN stays NaN.
    dtype : {None, float16, float32, float64}
        The outputs' dtype; ``None``: that of ``out`` when given, else the raw scores' dtype
        (float16 gives float32).  A dtype wider than the raw scores' is computed in that dtype
        (the scores are converted, exactly); a narrower one is computed in the scores' dtype and
        then rounded, which costs one more pass over the gradient and the Hessian.
    order : {"C", "F"}, default "C"
        Memory order of the outputs; the kernels write either directly (``"F"`` is what
        LightGBM reads without a copy).
    out : (ndarray, ndarray), optional
        ``(grad, hess)`` written in place and returned: writeable arrays of shape (N, K), of
        the output dtype, contiguous in ``order``, sharing no memory with each other or with
        the inputs.
    backend : {"auto", "numpy", "numba", "cython", "cuda"}
    n_threads : int, optional
        At most this many threads (default: all cores).  Results do not depend on it.

    Returns
    -------
    grad, hess : ndarrays of shape (N, K) (``out`` when given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastloss._grad_hess import cross_entropy_grad_hess
    >>> raw = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> grad, hess = cross_entropy_grad_hess(raw, np.array([0]), backend="numpy")
    >>> print(grad, hess)
    [[-0.5   0.25  0.25]] [[0.25   0.1875 0.1875]]
    """
    return _grad_hess("cross_entropy_grad_hess", raw, target, sample_weight, label_smoothing,
                      hessian_scale, min_hessian, dtype, order, out, backend, n_threads)


def binary_cross_entropy_grad_hess(raw, target, *, sample_weight=None,
                                   hessian_scale: float = 1.0, min_hessian: float = 0.0,
                                   dtype=None, order: str = "C", out=None,
                                   backend: str = "auto", n_threads: int | None = None):
    r"""Gradient and Hessian of the sigmoid binary cross-entropy with respect to one raw score
    per sample: the custom objective of binary gradient boosting.

    .. math::

        g_i = (\sigma(x_i) - y_i)\, w_i, \qquad
        h_i = \max\big(s\, \sigma(x_i)(1 - \sigma(x_i))\, w_i,\; h_{\min}\big)

    as scikit-learn's ``HalfBinomialLoss.gradient_hessian``; soft targets :math:`y \in [0, 1]`
    are allowed (not checked).  Computed in forms that keep their relative accuracy for large
    :math:`|x|` (see :func:`fastloss.reference.binary_cross_entropy_grad_hess`).

    Parameters
    ----------
    raw : array_like, shape (N,)
        Raw scores (margins).
    target : array_like, shape (N,)
        Targets (bool, integer or floating).
    sample_weight, hessian_scale, min_hessian, dtype, order, out, backend, n_threads
        As for :func:`cross_entropy_grad_hess` (``order`` is moot for one dimension).

    Returns
    -------
    grad, hess : ndarrays of shape (N,) (``out`` when given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastloss._grad_hess import binary_cross_entropy_grad_hess
    >>> grad, hess = binary_cross_entropy_grad_hess(np.array([0.0, 0.0]), np.array([1, 0]),
    ...                                             backend="numpy")
    >>> print(grad, hess)
    [-0.5  0.5] [0.25 0.25]
    """
    return _grad_hess("binary_cross_entropy_grad_hess", raw, target, sample_weight, 0.0,
                      hessian_scale, min_hessian, dtype, order, out, backend, n_threads)
