"""Custom objectives and metrics for XGBoost and LightGBM on fastloss's fused kernels.

``import fastloss.boosting`` imports neither XGBoost nor LightGBM; nothing here needs them
until a model calls one of the functions returned (which only read the data they are given).

By default the objectives reproduce the libraries' built-in ones, so that a model trained
with them matches the built-in model (checked by ``tests/test_boosting.py`` on scikit-learn's
digits data):

================================  ===========================================================
``xgboost_softmax_objective``     ``multi:softprob`` of XGBoost >= 2.1 (checked with 3.2):
                                  ``g = (p - onehot) w``, ``h = max(2 p (1 - p) w, 1e-16)``
``xgboost_binary_objective``      ``binary:logistic``: ``g = (p - y) w``,
                                  ``h = max(p (1 - p) w, 1e-16)``
``lightgbm_multiclass_objective`` ``multiclass`` of LightGBM 4.x (checked with 4.7):
                                  ``g = (p - onehot) w``, ``h = K / (K - 1) p (1 - p) w``
``lightgbm_binary_objective``     ``binary`` (``sigmoid=1``): ``g = (p - y) w``,
                                  ``h = p (1 - p) w``
================================  ===========================================================

**Intercepts.**  A built-in objective starts from an intercept fitted to the labels; a custom
objective cannot, so the libraries start it elsewhere:

* XGBoost >= 3.1 starts ``multi:softprob`` from the centred log of the class frequencies and
  ``binary:logistic`` from the (weighted) mean label, but a custom objective from
  ``base_score=0.5`` (a margin).  Pass ``base_score=xgboost_base_score(y, ...)`` in the
  parameters of the custom model: it is the built-in intercept, as a margin (to within
  XGBoost's float32 rounding, about 1e-7).  XGBoost 2.1 - 3.0 start ``multi:softprob`` at 0.5
  as well, and estimate ``binary:logistic``'s intercept differently: there, or to be sure on
  any version, give the same explicit ``base_score`` to both models (the built-in objective
  then takes it as a probability for ``binary:logistic``, as a margin for ``multi:softprob``).
* LightGBM (``boost_from_average=True``) starts ``multiclass`` from ``log(class frequency)``
  and ``binary`` from the log-odds of the mean label, a custom objective from 0.  Pass
  ``init_score=lightgbm_init_score(y, ...)`` (broadcast to every row) to the training
  ``Dataset`` and add it to ``predict(X, raw_score=True)``: LightGBM keeps an ``init_score``
  out of the model.  Or set ``boost_from_average=False`` for the built-in objective.

Example (runnable; see also README "Gradient boosting")::

    import numpy as np, xgboost as xgb
    from sklearn.datasets import load_digits
    from fastloss import boosting

    X, y = load_digits(return_X_y=True)
    params = {"num_class": 10, "base_score": boosting.xgboost_base_score(y, num_class=10)}
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=20,
                        obj=boosting.xgboost_softmax_objective(),
                        custom_metric=boosting.xgboost_multi_logloss_metric(),
                        evals=[(xgb.DMatrix(X, label=y), "train")])
    margins = booster.predict(xgb.DMatrix(X), output_margin=True)   # (N, 10)

The metrics compute the log-loss of raw margins (what the libraries give a metric when the
objective is custom) exactly, from the log-softmax; pass ``output_margin=False`` /
``raw_score=False`` to use them with a built-in objective, which gives them probabilities.
"""

from __future__ import annotations

import numpy as np

from . import _grad_hess
from . import _validate as V

__all__ = [
    "xgboost_softmax_objective",
    "xgboost_binary_objective",
    "xgboost_multi_logloss_metric",
    "xgboost_binary_logloss_metric",
    "xgboost_base_score",
    "lightgbm_multiclass_objective",
    "lightgbm_binary_objective",
    "lightgbm_multi_logloss_metric",
    "lightgbm_binary_logloss_metric",
    "lightgbm_init_score",
]

_XGB_EPS = 1e-6  # XGBoost's kRtEps: floor of the class frequencies / clip of the mean label
_LGB_EPS = 1e-15  # LightGBM's kEpsilon


# --------------------------------------------------------------------------------------------
# shared pieces


def _options(label_smoothing=None, hessian_scale=None, min_hessian=0.0, dtype=None,
             order="C", backend="auto", n_threads=None):
    """Check the options once, when the objective is made, not at every boosting round."""
    o = {"min_hessian": _grad_hess.min_hessian(min_hessian),
         "dtype": _grad_hess.out_dtype(dtype), "order": _grad_hess.order(order),
         "backend": backend, "n_threads": V.n_threads(n_threads)}
    from . import _backends

    _backends._check_name(backend, "backend")
    if hessian_scale is not None:
        o["hessian_scale"] = _grad_hess.hessian_scale(hessian_scale)
    if label_smoothing is not None:
        o["label_smoothing"] = V.label_smoothing(label_smoothing)
    return o


def _class_labels(label) -> np.ndarray:
    """Float labels (as the libraries store them) -> int64 class indices."""
    label = np.asarray(label).reshape(-1)
    classes = label.astype(np.int64)
    if label.dtype.kind == "f" and not np.array_equal(classes, label):
        bad = int(np.flatnonzero(classes != label)[0])
        raise ValueError(f"the labels must be class indices 0, 1, ..., K - 1; got "
                         f"{label[bad]!r} at position {bad}")
    return classes


def _weights(weight):
    """The libraries' "no weights": ``None`` (LightGBM) or an empty array (XGBoost)."""
    if weight is None:
        return None
    weight = np.asarray(weight)
    return weight if weight.size else None


def _rows(predt, n_rows):
    """Scores as (N, K): XGBoost >= 2.1 and LightGBM 4 give (N, K) already; older ones
    a flat array."""
    predt = np.asarray(predt)
    return predt if predt.ndim == 2 else predt.reshape(n_rows, -1)


def _weighted_mean(values, weight) -> float:
    if weight is None:
        return float(np.mean(values))
    return float(np.sum(values * weight) / np.sum(weight))


def _multi_logloss(predt, label, weight, margins, backend):
    """Weighted mean of -log p_label, from margins (exact log-softmax) or probabilities."""
    y = _class_labels(label)
    scores = np.asarray(predt, dtype=np.float64)
    scores = scores.reshape(y.size, -1)
    if margins:
        from ._api import cross_entropy

        rows = cross_entropy(scores, y, reduction="none", backend=backend)
    else:
        rows = -np.log(np.maximum(scores[np.arange(y.size), y], _LGB_EPS))
    return _weighted_mean(rows, _weights(weight))


def _binary_logloss(predt, label, weight, margins, backend):
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    scores = np.asarray(predt, dtype=np.float64).reshape(-1)
    if margins:
        from ._api import binary_cross_entropy_with_logits

        rows = binary_cross_entropy_with_logits(scores, y, reduction="none", backend=backend)
    else:
        p = np.clip(scores, _LGB_EPS, 1.0 - _LGB_EPS)
        rows = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return _weighted_mean(rows, _weights(weight))


def _prior(label, num_class, sample_weight):
    """Weighted class frequencies (multiclass) or mean label (binary)."""
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if num_class is None:
        y = np.asarray(label, dtype=np.float64).reshape(-1)
        return float(np.average(y, weights=w))
    y = _class_labels(label)
    if y.size and (y.min() < 0 or y.max() >= num_class):
        raise ValueError(f"the labels must be in [0, {num_class}), got {y.min()}..{y.max()}")
    counts = np.bincount(y, weights=w, minlength=num_class)
    return counts / counts.sum()


# --------------------------------------------------------------------------------------------
# XGBoost


def xgboost_softmax_objective(*, label_smoothing: float = 0.0, hessian_scale: float = 2.0,
                              min_hessian: float = 1e-16, dtype=None, backend: str = "auto",
                              n_threads: int | None = None):
    """A custom objective ``obj(predt, dtrain) -> (grad, hess)`` for
    ``xgboost.train(params, dtrain, obj=...)``: the softmax cross-entropy of the class indices
    stored as the labels of ``dtrain`` (and its weights).

    The defaults are XGBoost's ``multi:softprob`` (XGBoost >= 2.1, checked with 3.2):
    ``grad = (p - onehot) w``, ``hess = max(2 p (1 - p) w, 1e-16)``; XGBoost >= 2.1 passes
    ``predt`` of shape (N, K) and takes (N, K) gradients.  Set ``base_score`` to match the
    built-in model (see :func:`xgboost_base_score` and the module's documentation).  Options
    as for :func:`fastloss._grad_hess.cross_entropy_grad_hess`; the outputs have ``predt``'s
    dtype (float32) by default.
    """
    o = _options(label_smoothing, hessian_scale, min_hessian, dtype, "C", backend, n_threads)

    def softmax_objective(predt, dtrain):
        y = _class_labels(dtrain.get_label())
        raw = _rows(predt, y.size)
        grad, hess = _grad_hess.cross_entropy_grad_hess(
            raw, y, sample_weight=_weights(dtrain.get_weight()), **o)
        shape = np.shape(predt)
        return grad.reshape(shape), hess.reshape(shape)

    return softmax_objective


def xgboost_binary_objective(*, hessian_scale: float = 1.0, min_hessian: float = 1e-16,
                             dtype=None, backend: str = "auto", n_threads: int | None = None):
    """A custom objective for ``xgboost.train(..., obj=...)``: the sigmoid cross-entropy of the
    labels of ``dtrain`` (0/1, or soft in [0, 1]) and its weights.

    The defaults are XGBoost's ``binary:logistic`` (>= 2.1, checked with 3.2):
    ``grad = (p - y) w``, ``hess = max(p (1 - p) w, 1e-16)``.  XGBoost floors the unweighted
    Hessian, ``max(p (1 - p), 1e-16) w``: the two differ only for weighted samples whose
    ``p (1 - p)`` is below 1e-16 (margins beyond +-37).  ``scale_pos_weight`` is not
    reproduced: put it in the sample weights.
    """
    o = _options(None, hessian_scale, min_hessian, dtype, "C", backend, n_threads)

    def binary_objective(predt, dtrain):
        y = np.asarray(dtrain.get_label()).reshape(-1)
        grad, hess = _grad_hess.binary_cross_entropy_grad_hess(
            np.asarray(predt).reshape(-1), y, sample_weight=_weights(dtrain.get_weight()), **o)
        shape = np.shape(predt)
        return grad.reshape(shape), hess.reshape(shape)

    return binary_objective


def xgboost_multi_logloss_metric(*, output_margin: bool = True, backend: str = "auto"):
    """``metric(predt, dmatrix) -> ("mlogloss", value)`` for
    ``xgboost.train(..., custom_metric=...)``: the weighted mean of ``-log p_label``.

    XGBoost gives a custom metric raw margins when the objective is custom
    (``output_margin=True``, computed exactly from the log-softmax) and probabilities when it
    is built in (``output_margin=False``; clipped at 1e-15).
    """
    margins = V.boolean(output_margin, "output_margin")

    def mlogloss(predt, dmatrix):
        return "mlogloss", _multi_logloss(predt, dmatrix.get_label(), dmatrix.get_weight(),
                                          margins, backend)

    return mlogloss


def xgboost_binary_logloss_metric(*, output_margin: bool = True, backend: str = "auto"):
    """``metric(predt, dmatrix) -> ("logloss", value)`` for ``custom_metric=``: the weighted
    mean binary log-loss, from margins (exact, ``output_margin=True``) or probabilities."""
    margins = V.boolean(output_margin, "output_margin")

    def logloss(predt, dmatrix):
        return "logloss", _binary_logloss(predt, dmatrix.get_label(), dmatrix.get_weight(),
                                          margins, backend)

    return logloss


def xgboost_base_score(label, *, num_class: int | None = None, sample_weight=None):
    """The intercept XGBoost >= 3.1 fits for its built-in objective, as the margin a custom
    objective needs: ``params["base_score"] = xgboost_base_score(y, num_class=K)``.

    * ``num_class=K``: the list of ``log(max(f_c, 1e-6)) - mean_c log(max(f_c, 1e-6))`` for
      the weighted class frequencies ``f`` (``multi:softprob``).
    * ``num_class=None``: ``logit(clip(mean label, 1e-6, 1 - 1e-6))`` (``binary:logistic``).

    XGBoost computes these in float32: they agree to about 1e-7.
    """
    if num_class is None:
        mean = min(max(_prior(label, None, sample_weight), _XGB_EPS), 1.0 - _XGB_EPS)
        return float(np.log(mean / (1.0 - mean)))
    num_class = V.integer(num_class, "num_class")
    log_f = np.log(np.maximum(_prior(label, num_class, sample_weight), _XGB_EPS))
    return [float(v) for v in log_f - log_f.mean()]


# --------------------------------------------------------------------------------------------
# LightGBM


def lightgbm_multiclass_objective(*, label_smoothing: float = 0.0, hessian_scale=None,
                                  min_hessian: float = 0.0, dtype=np.float32, order: str = "F",
                                  backend: str = "auto", n_threads: int | None = None):
    """A custom objective ``fobj(preds, train_data) -> (grad, hess)`` for
    ``lightgbm.train({"objective": fobj, "num_class": K, ...}, train_set)``.

    The defaults are LightGBM's ``multiclass`` (LightGBM 4.x, checked with 4.7):
    ``grad = (p - onehot) w``, ``hess = K / (K - 1) p (1 - p) w`` (``hessian_scale=None``:
    ``K / (K - 1)``, Friedman's rescaling of the redundant K-class form); LightGBM 4 passes
    ``preds`` of shape (N, K) and takes (N, K) gradients.  LightGBM computes in float64 and
    stores float32: so does this (``dtype=float32``), in Fortran order, which LightGBM reads
    without a copy.  Start from :func:`lightgbm_init_score` to match the built-in model.
    """
    o = _options(label_smoothing, hessian_scale, min_hessian, dtype, order, backend, n_threads)

    def multiclass_objective(preds, train_data):
        y = _class_labels(train_data.get_label())
        raw = _rows(preds, y.size)
        n_classes = raw.shape[1]
        options = dict(o)
        if "hessian_scale" not in options:
            if n_classes < 2:
                raise ValueError("the multiclass objective needs num_class >= 2, got "
                                 f"{n_classes}; use lightgbm_binary_objective for one score")
            options["hessian_scale"] = n_classes / (n_classes - 1.0)
        return _grad_hess.cross_entropy_grad_hess(
            raw, y, sample_weight=_weights(train_data.get_weight()), **options)

    return multiclass_objective


def lightgbm_binary_objective(*, hessian_scale: float = 1.0, min_hessian: float = 0.0,
                              dtype=np.float32, backend: str = "auto",
                              n_threads: int | None = None):
    """A custom objective for ``lightgbm.train({"objective": fobj, ...}, train_set)``: the
    sigmoid cross-entropy of the labels (0/1 or soft) and weights of ``train_set``.

    The defaults are LightGBM's ``binary`` objective with ``sigmoid=1`` (4.x, checked with
    4.7): ``grad = (p - y) w``, ``hess = p (1 - p) w``.  ``is_unbalance`` /
    ``scale_pos_weight`` are not reproduced: put them in the sample weights.
    """
    o = _options(None, hessian_scale, min_hessian, dtype, "C", backend, n_threads)

    def binary_objective(preds, train_data):
        y = np.asarray(train_data.get_label()).reshape(-1)
        return _grad_hess.binary_cross_entropy_grad_hess(
            np.asarray(preds).reshape(-1), y, sample_weight=_weights(train_data.get_weight()),
            **o)

    return binary_objective


def lightgbm_multi_logloss_metric(*, raw_score: bool = True, backend: str = "auto"):
    """``feval(preds, eval_data) -> ("multi_logloss", value, False)`` for
    ``lightgbm.train(..., feval=...)``: the weighted mean of ``-log p_label``.

    LightGBM gives ``feval`` raw scores when the objective is custom (``raw_score=True``,
    computed exactly from the log-softmax) and probabilities when it is built in
    (``raw_score=False``; clipped at 1e-15 as LightGBM does).
    """
    margins = V.boolean(raw_score, "raw_score")

    def multi_logloss(preds, eval_data):
        value = _multi_logloss(preds, eval_data.get_label(), eval_data.get_weight(), margins,
                               backend)
        return "multi_logloss", value, False

    return multi_logloss


def lightgbm_binary_logloss_metric(*, raw_score: bool = True, backend: str = "auto"):
    """``feval(preds, eval_data) -> ("binary_logloss", value, False)``: the weighted mean
    binary log-loss, from raw scores (exact, ``raw_score=True``) or probabilities."""
    margins = V.boolean(raw_score, "raw_score")

    def binary_logloss(preds, eval_data):
        value = _binary_logloss(preds, eval_data.get_label(), eval_data.get_weight(), margins,
                                backend)
        return "binary_logloss", value, False

    return binary_logloss


def lightgbm_init_score(label, *, num_class: int | None = None, sample_weight=None):
    """The initial score of LightGBM's built-in objective (``boost_from_average=True``): a
    float (``binary``: ``log(m / (1 - m))`` for the weighted mean label ``m`` clipped to
    ``[1e-15, 1 - 1e-15]``) or an array of shape (K,) (``multiclass``:
    ``log(max(f_c, 1e-15))`` for the weighted class frequencies ``f``).

    Give it, broadcast to one row per sample, to the ``Dataset`` of a custom objective, and add
    it to the custom model's raw scores::

        init = lightgbm_init_score(y, num_class=K)
        train_set = lightgbm.Dataset(X, y, init_score=np.tile(init, (len(y), 1)))
        ...
        raw = booster.predict(X, raw_score=True) + init
    """
    if num_class is None:
        mean = min(max(_prior(label, None, sample_weight), _LGB_EPS), 1.0 - _LGB_EPS)
        return float(np.log(mean / (1.0 - mean)))
    num_class = V.integer(num_class, "num_class")
    return np.log(np.maximum(_prior(label, num_class, sample_weight), _LGB_EPS))
