"""Gradient and Hessian for gradient boosting: ``cross_entropy_grad_hess``,
``binary_cross_entropy_grad_hess`` (every backend) and the XGBoost / LightGBM objectives of
``fastloss.boosting``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import central_difference

from conftest import TOLERANCES, assert_close
from fastloss import _backends, boosting, reference
from fastloss._grad_hess import binary_cross_entropy_grad_hess, cross_entropy_grad_hess

FLOATS = (np.float32, np.float64)


def _inputs(rng, n=37, k=5, *, dtype=np.float64, scale=3.0):
    x = (rng.standard_normal((n, k)) * scale).astype(dtype)
    return x, rng.integers(0, k, n), rng.uniform(0.1, 2.0, n)


def _probabilities(rng, n, k, total=1.0):
    t = rng.uniform(0.0, 1.0, (n, k))
    return t / t.sum(axis=1, keepdims=True) * total


def _row_loss(target, smoothing, weight):
    """The weighted reference cross-entropy of each row, as a function of the scores."""
    def f(x):
        loss, _ = reference.cross_entropy(x, target, label_smoothing=smoothing)
        return loss * weight
    return f


# ------------------------------------------------------------------------------------------
# the reference against finite differences


@pytest.mark.parametrize("kind", ["index", "probabilities", "unnormalised"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_reference_gradient_and_hessian_match_finite_differences(rng, kind, smoothing):
    x, y, w = _inputs(rng, 12, 4, scale=1.5)
    target = {"index": y, "probabilities": _probabilities(rng, 12, 4),
              "unnormalised": _probabilities(rng, 12, 4, total=1.7)}[kind]
    grad, hess = reference.cross_entropy_grad_hess(x, target, w, smoothing)
    np.testing.assert_allclose(grad, central_difference(_row_loss(target, smoothing, w), x),
                               rtol=1e-8, atol=1e-9)

    def gradient(z):  # d grad_c / d x_c: the diagonal of the Hessian
        return reference.cross_entropy_grad_hess(z, target, w, smoothing)[0]

    diagonal = central_difference(gradient, x)
    np.testing.assert_allclose(hess, diagonal, rtol=1e-8, atol=1e-9)
    scaled = reference.cross_entropy_grad_hess(x, target, w, smoothing, hessian_scale=2.5,
                                               min_hessian=0.05)[1]
    np.testing.assert_allclose(scaled, np.maximum(2.5 * diagonal, 0.05), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("soft", [False, True])
def test_reference_binary_matches_finite_differences(rng, soft):
    x = rng.standard_normal(15) * 4
    t = rng.uniform(0, 1, 15) if soft else rng.integers(0, 2, 15).astype(float)
    w = rng.uniform(0.1, 2.0, 15)
    grad, hess = reference.binary_cross_entropy_grad_hess(x, t, w)

    def loss(z):
        return reference.binary_cross_entropy_with_logits(z[:, 0], t)[0][:, None] * w[:, None]

    def gradient(z):
        return reference.binary_cross_entropy_grad_hess(z[:, 0], t, w)[0][:, None]

    np.testing.assert_allclose(grad, central_difference(loss, x[:, None])[:, 0],
                               rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(hess, central_difference(gradient, x[:, None])[:, 0],
                               rtol=1e-7, atol=1e-9)


def test_reference_binary_keeps_relative_accuracy_for_large_scores():
    x = np.array([40.0, -40.0, 30.0])
    grad, hess = reference.binary_cross_entropy_grad_hess(x, np.array([1.0, 0.0, 1.0]))
    expected = np.exp(-np.abs(x))  # sigma(-|x|) to full relative accuracy here
    np.testing.assert_allclose(hess, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, [-expected[0], expected[1], -expected[2]], rtol=1e-12)


# ------------------------------------------------------------------------------------------
# every backend against the reference and scikit-learn


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["index", "probabilities", "unnormalised"])
@pytest.mark.parametrize("options", [
    {},
    {"label_smoothing": 0.1},
    {"weighted": True, "hessian_scale": 2.0, "min_hessian": 1e-3},
    {"weighted": True, "label_smoothing": 0.3, "hessian_scale": 10 / 9},
])
@pytest.mark.parametrize("n, k", [(300, 7), (40, 300)])  # 300: the C backend's 512-bit rows
def test_backend_matches_reference(backend, rng, dtype, kind, options, n, k):
    options = dict(options)
    x, y, w = _inputs(rng, n, k, dtype=dtype)
    target = {"index": y, "probabilities": _probabilities(rng, n, k).astype(dtype),
              "unnormalised": _probabilities(rng, n, k, 0.6).astype(dtype)}[kind]
    if options.pop("weighted", False):
        options["sample_weight"] = w
    grad, hess = cross_entropy_grad_hess(x, target, backend=backend, **options)
    assert grad.dtype == dtype and hess.dtype == dtype
    assert grad.shape == hess.shape == x.shape
    ref = reference.cross_entropy_grad_hess(
        x, target, options.get("sample_weight"), options.get("label_smoothing", 0.0),
        options.get("hessian_scale", 1.0), options.get("min_hessian", 0.0))
    assert_close(grad, ref[0], dtype)
    assert_close(hess, ref[1], dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_backend_matches_reference(backend, rng, dtype, soft, weighted):
    x = (rng.standard_normal(500) * 6).astype(dtype)
    t = rng.uniform(0, 1, 500) if soft else rng.integers(0, 2, 500)
    w = rng.uniform(0.1, 2.0, 500) if weighted else None
    grad, hess = binary_cross_entropy_grad_hess(x, t, sample_weight=w, hessian_scale=1.5,
                                                min_hessian=1e-4, backend=backend)
    assert grad.dtype == hess.dtype == dtype and grad.shape == hess.shape == (500,)
    t_x = t.astype(dtype) if soft else t  # the kernels read the targets in x's dtype
    ref = reference.binary_cross_entropy_grad_hess(x, t_x, w, 1.5, 1e-4)
    assert_close(grad, ref[0], dtype)
    assert_close(hess, ref[1], dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_sklearn(backend, rng, dtype, weighted):
    loss_module = pytest.importorskip("sklearn._loss.loss")
    x, y, w = _inputs(rng, 200, 6)
    w = w if weighted else None
    x = x.astype(dtype)
    grad, hess = cross_entropy_grad_hess(x, y, sample_weight=w, backend=backend)
    sk_grad, sk_hess = loss_module.HalfMultinomialLoss(n_classes=6).gradient_hessian(
        y.astype(np.float64), x.astype(np.float64), sample_weight=w)
    assert_close(grad, sk_grad, dtype)
    assert_close(hess, sk_hess, dtype)

    xb = (rng.standard_normal(200) * 5).astype(dtype)
    yb = rng.integers(0, 2, 200).astype(np.float64)
    grad, hess = binary_cross_entropy_grad_hess(xb, yb, sample_weight=w, backend=backend)
    sk_grad, sk_hess = loss_module.HalfBinomialLoss().gradient_hessian(
        yb, xb.astype(np.float64), sample_weight=w)
    assert_close(grad, sk_grad, dtype)
    assert_close(hess, sk_hess, dtype)


# ------------------------------------------------------------------------------------------
# dtype, order and out=


@pytest.mark.parametrize("raw_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [None, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("use_out", [False, True])
def test_dtype_order_and_out(backend, rng, raw_dtype, dtype, order, use_out):
    x, y, w = _inputs(rng, 40, 6, scale=2.0)
    x = x.astype(raw_dtype)
    expected_dtype = np.dtype(dtype or (np.float32 if raw_dtype == np.float16 else raw_dtype))
    out = None
    if use_out:
        out = (np.full(x.shape, 7.0, expected_dtype, order=order),
               np.full(x.shape, 7.0, expected_dtype, order=order))
    grad, hess = cross_entropy_grad_hess(x, y, sample_weight=w, dtype=dtype, order=order,
                                         out=out, backend=backend)
    if use_out:
        assert grad is out[0] and hess is out[1]
    for a in (grad, hess):
        assert a.dtype == expected_dtype and a.shape == x.shape
        assert a.flags.c_contiguous if order == "C" else a.flags.f_contiguous
    # computed in the wider of the two dtypes, from the scores as given
    compute = max(np.dtype(np.float32) if raw_dtype == np.float16 else np.dtype(raw_dtype),
                  expected_dtype, key=lambda d: d.itemsize)
    ref = reference.cross_entropy_grad_hess(x.astype(np.float64), y, w)
    tolerance = expected_dtype if expected_dtype.itemsize < compute.itemsize else compute
    assert_close(grad, ref[0], tolerance)
    assert_close(hess, ref[1], tolerance)


def test_dtype_none_follows_out(backend, rng):
    x, y, _ = _inputs(rng, 10, 3, dtype=np.float32)
    out = (np.empty((10, 3)), np.empty((10, 3)))  # float64
    grad, hess = cross_entropy_grad_hess(x, y, out=out, backend=backend)
    assert grad is out[0] and grad.dtype == np.float64
    assert_close(grad, reference.cross_entropy_grad_hess(x, y)[0], np.float64)


def test_binary_dtype_and_out(backend, rng):
    x = rng.standard_normal(30).astype(np.float32)
    t = rng.integers(0, 2, 30)
    out = (np.empty(30, np.float64), np.empty(30, np.float64))
    grad, hess = binary_cross_entropy_grad_hess(x, t, dtype=np.float64, out=out,
                                                backend=backend)
    assert grad is out[0] and hess is out[1]
    ref = reference.binary_cross_entropy_grad_hess(x, t)
    assert_close(grad, ref[0], np.float64)
    assert_close(hess, ref[1], np.float64)
    g16, h16 = binary_cross_entropy_grad_hess(x.astype(np.float16), t, backend=backend)
    assert g16.dtype == h16.dtype == np.float32


def test_noncontiguous_and_empty_inputs(backend, rng):
    x, y, w = _inputs(rng, 20, 8)
    view = x[::2, ::2]  # strided scores are converted
    grad, hess = cross_entropy_grad_hess(view, y[::2] % 4, backend=backend)
    assert_close(grad, reference.cross_entropy_grad_hess(view, y[::2] % 4)[0], np.float64)
    grad, hess = cross_entropy_grad_hess(np.empty((0, 3)), np.empty(0, np.int64),
                                         backend=backend)
    assert grad.shape == hess.shape == (0, 3)
    grad, hess = binary_cross_entropy_grad_hess(np.empty(0), np.empty(0), backend=backend)
    assert grad.shape == hess.shape == (0,)
    grad, hess = cross_entropy_grad_hess(np.zeros((2, 1)), np.zeros(2, np.int64),
                                         backend=backend)  # one class: p = 1
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_array_equal(hess, 0.0)


def test_threads_do_not_change_results(backend, rng):
    x, y, w = _inputs(rng, 6000, 8, dtype=np.float32)
    one = cross_entropy_grad_hess(x, y, sample_weight=w, n_threads=1, backend=backend)
    three = cross_entropy_grad_hess(x, y, sample_weight=w, n_threads=3, backend=backend)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])
    xb = x.reshape(-1)
    one = binary_cross_entropy_grad_hess(xb, xb > 0, n_threads=1, backend=backend)
    three = binary_cross_entropy_grad_hess(xb, xb > 0, n_threads=3, backend=backend)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


# ------------------------------------------------------------------------------------------
# special values


@pytest.mark.parametrize("dtype", FLOATS)
def test_special_values(backend, dtype):
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, nan, 1.0],      # NaN: the row is NaN
                  [0.0, inf, 1.0],      # +inf: the row is NaN
                  [0.0, -inf, 0.0],     # -inf: an impossible class
                  [-inf, -inf, -inf],   # no possible class: NaN
                  [1e30, 1e30, -1e30]], dtype=dtype)
    y = np.array([0, 0, 1, 0, 2])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    grad, hess = cross_entropy_grad_hess(x, y, sample_weight=w, min_hessian=1e-3,
                                         backend=backend)
    for row in (0, 1, 3):
        assert np.isnan(grad[row]).all() and np.isnan(hess[row]).all()
    np.testing.assert_allclose(grad[2], [1.0, -2.0, 1.0], rtol=TOLERANCES[np.dtype(dtype)][0])
    np.testing.assert_allclose(hess[2], [0.5, 1e-3, 0.5], rtol=TOLERANCES[np.dtype(dtype)][0])
    np.testing.assert_allclose(grad[4], [0.5, 0.5, -1.0], rtol=TOLERANCES[np.dtype(dtype)][0])
    np.testing.assert_allclose(hess[4], [0.25, 0.25, 1e-3], rtol=TOLERANCES[np.dtype(dtype)][0])

    xb = np.array([inf, -inf, nan, 0.0, 800.0], dtype=dtype)
    tb = np.array([0.25, 0.25, 1.0, 0.0, 1.0])
    grad, hess = binary_cross_entropy_grad_hess(xb, tb, min_hessian=1e-3, backend=backend)
    np.testing.assert_array_equal(grad[:2], [0.75, -0.25])
    np.testing.assert_array_equal(hess[:2], [1e-3, 1e-3] if dtype == np.float64
                                  else np.float32([1e-3, 1e-3]))
    assert np.isnan(grad[2]) and np.isnan(hess[2])
    assert grad[3] == 0.5 and hess[3] == 0.25
    assert grad[4] == 0.0 and hess[4] == np.asarray(1e-3, dtype)


# ------------------------------------------------------------------------------------------
# bad inputs: a clear error, and nothing modified


def _bad_calls():
    x = np.zeros((4, 3))
    y = np.array([0, 1, 2, 0])
    c = ("multi", x, y)
    return [
        (c, {"raw": np.zeros(4)}, ValueError, r"raw must have shape \(N, K\)"),
        (c, {"raw": np.zeros((4, 3), np.int64)}, TypeError, "raw must be a floating array"),
        (c, {"raw": np.zeros((4, 0))}, ValueError, "at least one class"),
        (c, {"target": np.array([0, 1, 3, 0])}, IndexError, "target 3 at position 2"),
        (c, {"target": np.array([0.0, 1.0, 2.0, 0.0])}, TypeError, "integer array"),
        (c, {"target": np.array([0, 1, 2])}, ValueError, "target of shape"),
        (c, {"sample_weight": np.ones(3)}, ValueError, r"sample_weight must have shape \(4,\)"),
        (c, {"sample_weight": np.array([1.0, np.nan, 1, 1])}, ValueError,
         "sample_weight must be finite, got nan at position 1"),
        (c, {"sample_weight": np.array([1.0, 1, np.inf, 1])}, ValueError, "finite"),
        (c, {"sample_weight": np.array(["a"] * 4)}, TypeError, "sample_weight"),
        (c, {"hessian_scale": 0.0}, ValueError, "hessian_scale must be a finite number > 0"),
        (c, {"hessian_scale": -1.0}, ValueError, "hessian_scale"),
        (c, {"hessian_scale": np.inf}, ValueError, "hessian_scale must be finite"),
        (c, {"hessian_scale": np.nan}, ValueError, "hessian_scale must be finite"),
        (c, {"hessian_scale": "2"}, TypeError, "hessian_scale must be a real number"),
        (c, {"hessian_scale": True}, TypeError, "hessian_scale"),
        (c, {"min_hessian": -1e-9}, ValueError, "min_hessian must be a finite number >= 0"),
        (c, {"min_hessian": np.inf}, ValueError, "min_hessian must be finite"),
        (c, {"min_hessian": None}, TypeError, "min_hessian"),
        (c, {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        (c, {"order": "K"}, ValueError, "order must be 'C' or 'F', got 'K'"),
        (c, {"dtype": np.int32}, TypeError, "dtype must be None, float16, float32 or float64"),
        (c, {"dtype": "nonsense"}, TypeError, "dtype must be"),
        (c, {"out": np.zeros((4, 3))}, TypeError, r"out must be a \(grad, hess\) pair"),
        (c, {"out": (np.zeros((4, 3)), [0] * 12)}, TypeError, r"out\[1\] \(hess\) must be a "),
        (c, {"out": (np.zeros((4, 2)), np.zeros((4, 3)))}, ValueError,
         r"out\[0\] \(grad\) has shape \(4, 2\)"),
        (c, {"out": (np.zeros((4, 3)), np.zeros((4, 3), np.float32))}, ValueError,
         r"out\[1\] \(hess\) has dtype float32"),
        (c, {"out": (np.zeros((4, 3), order="F"), np.zeros((4, 3)))}, ValueError,
         "not C-contiguous"),
        (c, {"out": (np.zeros((4, 3)), np.zeros((4, 3))), "order": "F"}, ValueError,
         "not Fortran-contiguous"),
        (c, {"out": (np.zeros((4, 3)), np.zeros((4, 3))), "dtype": np.float32}, ValueError,
         "dtype float64"),
        (c, {"backend": "nope"}, ValueError, "backend must be"),
        (c, {"n_threads": 0}, ValueError, "n_threads"),
        (("binary", np.zeros(4), np.zeros(4)), {"raw": np.zeros((4, 1))}, ValueError,
         r"raw must have shape \(N,\)"),
        (("binary", np.zeros(4), np.zeros(4)), {"target": np.zeros(5)}, ValueError,
         "target of shape"),
        (("binary", np.zeros(4), np.zeros(4)), {"target": np.array(["a"] * 4)}, TypeError,
         "target"),
        (("binary", np.zeros(4), np.zeros(4)), {"min_hessian": -1.0}, ValueError,
         "min_hessian"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda case: str(case[3])[:40])
def test_bad_inputs_raise_and_modify_nothing(case):
    (kind, x, y), kwargs, error, match = case
    kwargs = dict(kwargs)
    raw = kwargs.pop("raw", x)
    target = kwargs.pop("target", y)
    out = kwargs.pop("out", None)
    raw_before = np.array(raw, copy=True)
    out_before = [np.array(o, copy=True) for o in out] if isinstance(out, tuple) else None
    fn = cross_entropy_grad_hess if kind == "multi" else binary_cross_entropy_grad_hess
    kwargs.setdefault("backend", "numpy")
    with pytest.raises(error, match=match):
        fn(raw, target, out=out, **kwargs)
    np.testing.assert_array_equal(raw, raw_before)
    if out_before is not None:
        for o, before in zip(out, out_before):
            np.testing.assert_array_equal(np.asarray(o), before)


def test_out_must_not_overlap(rng):
    x, y, _ = _inputs(rng, 4, 3)
    x_before = x.copy()
    with pytest.raises(ValueError, match=r"out\[0\] \(grad\) overlaps raw"):
        cross_entropy_grad_hess(x, y, out=(x, np.zeros_like(x)), backend="numpy")
    shared = np.zeros_like(x)
    with pytest.raises(ValueError, match="overlap"):
        cross_entropy_grad_hess(x, y, out=(shared, shared), backend="numpy")
    t = _probabilities(rng, 4, 3)
    with pytest.raises(ValueError, match=r"out\[1\] \(hess\) overlaps target"):
        cross_entropy_grad_hess(x, t, out=(np.zeros_like(x), t), backend="numpy")
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cross_entropy_grad_hess(x, y, out=(np.zeros_like(x), readonly), backend="numpy")
    np.testing.assert_array_equal(x, x_before)


def test_every_available_backend_implements_the_kernel_protocol():
    from fastloss._protocol import Kernels

    for name, state in _backends.backends().items():
        if state == "available":
            assert isinstance(_backends.resolve(name)[1], Kernels), name


# ------------------------------------------------------------------------------------------
# XGBoost and LightGBM: the custom objectives reproduce the built-in ones


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    return X, y


def _weights_for(y, weighted):
    return np.random.default_rng(7).uniform(0.5, 2.0, y.size) if weighted else None


XGB = {"nthread": 1, "seed": 0, "max_depth": 3, "eta": 0.3}


@pytest.mark.parametrize("weighted", [False, True])
def test_xgboost_softmax_objective_matches_multi_softprob(backend, digits, weighted):
    xgb = pytest.importorskip("xgboost")
    X, y = digits
    w = _weights_for(y, weighted)
    d = xgb.DMatrix(X, label=y, weight=w)
    builtin_log = {}
    builtin = xgb.train(dict(XGB, objective="multi:softprob", num_class=10), d, 20,
                        evals=[(d, "train")], evals_result=builtin_log, verbose_eval=False)
    custom_log = {}
    params = dict(XGB, num_class=10, disable_default_eval_metric=1,
                  base_score=boosting.xgboost_base_score(y, num_class=10, sample_weight=w))
    custom = xgb.train(params, d, 20, obj=boosting.xgboost_softmax_objective(backend=backend),
                       custom_metric=boosting.xgboost_multi_logloss_metric(backend=backend),
                       evals=[(d, "train")], evals_result=custom_log, verbose_eval=False)
    expected = builtin.predict(d, output_margin=True)
    actual = custom.predict(d, output_margin=True)
    assert actual.shape == expected.shape == (len(y), 10)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(custom_log["train"]["mlogloss"],
                               builtin_log["train"]["mlogloss"], rtol=1e-5)


def test_xgboost_explicit_base_score_matches_on_any_version(digits):
    xgb = pytest.importorskip("xgboost")
    X, y = digits
    d = xgb.DMatrix(X[:600], label=y[:600])
    params = dict(XGB, num_class=10, base_score=0.0)
    builtin = xgb.train(dict(params, objective="multi:softprob"), d, 10)
    custom = xgb.train(params, d, 10, obj=boosting.xgboost_softmax_objective())
    np.testing.assert_allclose(custom.predict(d, output_margin=True),
                               builtin.predict(d, output_margin=True), rtol=0, atol=2e-5)


def test_xgboost_base_score_is_the_builtin_intercept(digits):
    xgb = pytest.importorskip("xgboost")
    import json

    if tuple(int(v) for v in xgb.__version__.split(".")[:2]) < (3, 1):
        pytest.skip("XGBoost < 3.1 does not fit the intercept of multi:softprob")
    X, y = digits
    d = xgb.DMatrix(X, label=y)
    booster = xgb.train(dict(XGB, objective="multi:softprob", num_class=10), d, 1)
    fitted = json.loads(json.loads(booster.save_config())["learner"]["learner_model_param"]
                        ["base_score"])
    np.testing.assert_allclose(boosting.xgboost_base_score(y, num_class=10), fitted, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_xgboost_binary_objective_matches_binary_logistic(backend, digits, weighted):
    xgb = pytest.importorskip("xgboost")
    X, y = digits
    yb = (y >= 5).astype(np.float64)
    w = _weights_for(y, weighted)
    d = xgb.DMatrix(X, label=yb, weight=w)
    builtin_log, custom_log = {}, {}
    builtin = xgb.train(dict(XGB, objective="binary:logistic", eval_metric="logloss"), d, 20,
                        evals=[(d, "train")], evals_result=builtin_log, verbose_eval=False)
    params = dict(XGB, disable_default_eval_metric=1,
                  base_score=boosting.xgboost_base_score(yb, sample_weight=w))
    custom = xgb.train(params, d, 20, obj=boosting.xgboost_binary_objective(backend=backend),
                       custom_metric=boosting.xgboost_binary_logloss_metric(backend=backend),
                       evals=[(d, "train")], evals_result=custom_log, verbose_eval=False)
    np.testing.assert_allclose(custom.predict(d, output_margin=True),
                               builtin.predict(d, output_margin=True), rtol=0, atol=2e-5)
    np.testing.assert_allclose(custom_log["train"]["logloss"], builtin_log["train"]["logloss"],
                               rtol=1e-5)


def test_xgboost_metrics_on_probabilities(digits):
    xgb = pytest.importorskip("xgboost")
    X, y = digits
    d = xgb.DMatrix(X, label=y)
    log, builtin_log = {}, {}
    xgb.train(dict(XGB, objective="multi:softprob", num_class=10), d, 5, evals=[(d, "t")],
              evals_result=builtin_log, verbose_eval=False)
    xgb.train(dict(XGB, objective="multi:softprob", num_class=10,
                   disable_default_eval_metric=1), d, 5, evals=[(d, "t")],
              custom_metric=boosting.xgboost_multi_logloss_metric(output_margin=False),
              evals_result=log, verbose_eval=False)
    np.testing.assert_allclose(log["t"]["mlogloss"], builtin_log["t"]["mlogloss"], rtol=1e-5)


LGB = {"num_threads": 1, "deterministic": True, "seed": 0, "verbose": -1,
       "force_col_wise": True}


@pytest.mark.parametrize("weighted", [False, True])
def test_lightgbm_multiclass_objective_matches_multiclass(backend, digits, weighted):
    lgb = pytest.importorskip("lightgbm")
    X, y = digits
    w = _weights_for(y, weighted)
    builtin_log, custom_log = {}, {}
    train = lgb.Dataset(X, y, weight=w)
    builtin = lgb.train(dict(LGB, objective="multiclass", num_class=10), train, 20,
                        valid_sets=[train], valid_names=["train"],
                        callbacks=[lgb.record_evaluation(builtin_log)])
    init = boosting.lightgbm_init_score(y, num_class=10, sample_weight=w)
    train = lgb.Dataset(X, y, weight=w, init_score=np.tile(init, (len(y), 1)))
    params = dict(LGB, objective=boosting.lightgbm_multiclass_objective(backend=backend),
                  num_class=10, metric="None")
    custom = lgb.train(params, train, 20, valid_sets=[train], valid_names=["train"],
                       feval=boosting.lightgbm_multi_logloss_metric(backend=backend),
                       callbacks=[lgb.record_evaluation(custom_log)])
    expected = builtin.predict(X, raw_score=True)
    actual = custom.predict(X, raw_score=True) + init
    assert actual.shape == expected.shape == (len(y), 10)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(custom_log["train"]["multi_logloss"],
                               builtin_log["train"]["multi_logloss"], rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_lightgbm_binary_objective_matches_binary(backend, digits, weighted):
    lgb = pytest.importorskip("lightgbm")
    X, y = digits
    yb = (y >= 5).astype(np.float64)
    w = _weights_for(y, weighted)
    builtin_log, custom_log = {}, {}
    train = lgb.Dataset(X, yb, weight=w)
    builtin = lgb.train(dict(LGB, objective="binary"), train, 20, valid_sets=[train],
                        valid_names=["train"], callbacks=[lgb.record_evaluation(builtin_log)])
    init = boosting.lightgbm_init_score(yb, sample_weight=w)
    train = lgb.Dataset(X, yb, weight=w, init_score=np.full(len(yb), init))
    params = dict(LGB, objective=boosting.lightgbm_binary_objective(backend=backend),
                  metric="None")
    custom = lgb.train(params, train, 20, valid_sets=[train], valid_names=["train"],
                       feval=boosting.lightgbm_binary_logloss_metric(backend=backend),
                       callbacks=[lgb.record_evaluation(custom_log)])
    np.testing.assert_allclose(custom.predict(X, raw_score=True) + init,
                               builtin.predict(X, raw_score=True), rtol=0, atol=1e-6)
    np.testing.assert_allclose(custom_log["train"]["binary_logloss"],
                               builtin_log["train"]["binary_logloss"], rtol=1e-6)


def test_lightgbm_metric_on_probabilities(digits):
    lgb = pytest.importorskip("lightgbm")
    X, y = digits
    ours, builtin = {}, {}
    train = lgb.Dataset(X, y)
    params = dict(LGB, objective="multiclass", num_class=10)
    lgb.train(dict(params, metric="None"), train, 5, valid_sets=[train], valid_names=["t"],
              feval=boosting.lightgbm_multi_logloss_metric(raw_score=False),
              callbacks=[lgb.record_evaluation(ours)])
    lgb.train(params, train, 5, valid_sets=[train], valid_names=["t"],
              callbacks=[lgb.record_evaluation(builtin)])
    np.testing.assert_allclose(ours["t"]["multi_logloss"], builtin["t"]["multi_logloss"],
                               rtol=1e-6)


def test_objectives_check_labels_and_options():
    class Data:  # the part of DMatrix / Dataset the objectives read
        def __init__(self, label):
            self.label = np.asarray(label, dtype=np.float32)

        def get_label(self):
            return self.label

        def get_weight(self):
            return None

    obj = boosting.xgboost_softmax_objective(backend="numpy")
    grad, hess = obj(np.zeros((3, 2), np.float32), Data([0, 1, 1]))
    assert grad.dtype == np.float32
    np.testing.assert_allclose(hess, 0.5)  # 2 p (1 - p) at p = 1/2
    with pytest.raises(ValueError, match="class indices"):
        obj(np.zeros((3, 2), np.float32), Data([0, 0.5, 1]))
    with pytest.raises(IndexError, match="out of range"):
        obj(np.zeros((3, 2), np.float32), Data([0, 2, 1]))
    lgb_obj = boosting.lightgbm_multiclass_objective(backend="numpy")
    grad, hess = lgb_obj(np.zeros((3, 4)), Data([0, 1, 3]))
    assert grad.dtype == np.float32 and grad.flags.f_contiguous
    np.testing.assert_allclose(hess, 4 / 3 * 0.25 * 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="num_class >= 2"):
        lgb_obj(np.zeros((3, 1)), Data([0, 0, 0]))
    with pytest.raises(ValueError, match="hessian_scale"):
        boosting.xgboost_softmax_objective(hessian_scale=0)
    with pytest.raises(ValueError, match="backend"):
        boosting.lightgbm_binary_objective(backend="gpu")


def test_import_boosting_imports_neither_library():
    code = ("import sys, fastloss.boosting; "
            "print(any(m in sys.modules for m in ('xgboost', 'lightgbm')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_bench_runs():
    from fastloss._bench_boosting import bench

    rows = bench(shapes=((500, 4),), backend="numpy", budget=0.0, verbose=False)
    assert {r["impl"].split(" ")[0] for r in rows} >= {"fastloss[numpy]", "numpy", "limit"}
    assert all(r["seconds"] > 0 for r in rows)
