"""The cross-entropy options z_loss, softcap and temperature on every backend: their forms,
their limits, and the z-term reported on its own.  The values of every option combination
against PyTorch autograd of the explicit formulas are in tests/test_reference.py (the cases
of fastloss._registry with options), every backend against the reference in
tests/test_backends.py."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from conftest import assert_close
from fastloss import reference

X = np.random.default_rng(0).standard_normal((6, 9)) * 4
Y = np.array([0, 3, -100, 8, 1, -100])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_return_z_loss_gives_the_z_term_reduced_like_the_loss(reduction, backend):
    z_loss = 1e-2
    loss, z_term = fl.cross_entropy(X, Y, z_loss=z_loss, reduction=reduction,
                                    return_z_loss=True, backend=backend)
    loss2, z_term2, grad = fl.cross_entropy_with_grad(X, Y, z_loss=z_loss,
                                                      reduction=reduction,
                                                      return_z_loss=True, backend=backend)
    plain = fl.cross_entropy(X, Y, reduction=reduction, backend=backend)
    counted = Y != -100
    rows = np.where(counted, z_loss * reference.logsumexp(X) ** 2, 0.0)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows[counted].mean()}[reduction]
    assert_close(z_term, expected, np.float64)
    assert_close(z_term2, expected, np.float64)
    assert_close(loss, plain + expected, np.float64)
    assert_close(loss2, loss, np.float64)
    assert grad.shape == X.shape


def test_return_z_loss_without_z_loss_is_zero(backend):
    loss, z_term = fl.cross_entropy(X, Y, return_z_loss=True, backend=backend)
    assert z_term == 0.0 and loss == fl.cross_entropy(X, Y, backend=backend)


def test_every_row_ignored_gives_nan_mean_and_zero_gradient(backend):
    loss, z_term, grad = fl.cross_entropy_with_grad(X, np.full(6, -100), z_loss=0.1,
                                                    softcap=5.0, return_z_loss=True,
                                                    backend=backend)
    assert np.isnan(loss) and np.isnan(z_term) and np.all(grad == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap_keeps_impossible_classes_impossible(dtype, backend):
    x = X.astype(dtype)
    x[:, 2] = -np.inf
    y = np.array([0, 3, 1, 8, 1, 4])
    loss, grad = fl.cross_entropy_with_grad(x, y, softcap=3.0, temperature=0.5, z_loss=1e-3,
                                            reduction="none", backend=backend)
    assert np.all(np.isfinite(loss)) and np.all(grad[:, 2] == 0.0)
    # the cap bounds the logits: the loss is at most log(C - 1) + 2 * cap / temperature
    assert np.all(loss < np.log(8) + 2 * 3.0 / 0.5 + 1e-3 * (3.0 / 0.5 + np.log(8)) ** 2)


def test_softcap_and_temperature_compose_in_order(backend):
    """softcap first, then temperature: the same as capping, then dividing, by hand."""
    cap, t = 2.0, 0.25
    z = cap * np.tanh(X / cap) / t
    expected = fl.cross_entropy(z, Y, reduction="none", backend="numpy")
    got = fl.cross_entropy(X, Y, softcap=cap, temperature=t, reduction="none", backend=backend)
    assert_close(got, expected, np.float64)


def test_options_at_their_defaults_change_nothing(backend):
    plain = fl.cross_entropy_with_grad(X, Y, backend=backend)
    explicit = fl.cross_entropy_with_grad(X, Y, z_loss=0.0, softcap=None, temperature=1.0,
                                          backend=backend)
    np.testing.assert_array_equal(plain[1], explicit[1])
    assert plain[0] == explicit[0]


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_z_loss_gradient_matches_central_differences(reduction, backend):
    from helpers import central_difference

    x = X[:4] / 4
    y = np.array([1, -100, 5, 2])
    kwargs = dict(z_loss=0.3, softcap=1.5, temperature=0.8, label_smoothing=0.1)
    _, grad = fl.cross_entropy_with_grad(x, y, **kwargs, reduction="none", backend=backend)
    numeric = central_difference(
        lambda v: fl.cross_entropy(v, y, **kwargs, reduction="none", backend=backend), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


def _fused_matches_reference(x, target, kwargs, dtype, backend, in_place):
    """The fused call on a copy of x (written into that copy when in_place) against the
    NumPy backend on x, loss rows and gradient; returns the call's loss rows and gradient."""
    want_loss, want_grad = fl.cross_entropy_with_grad(x, target, **kwargs, reduction="none",
                                                      backend="numpy")
    logits = x.copy()
    loss, grad = fl.cross_entropy_with_grad(logits, target, **kwargs, reduction="none",
                                            out=logits if in_place else None, backend=backend)
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype)
    return loss, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_place", [False, True])
def test_dense_statistics_over_many_blocks(dtype, in_place, backend):
    """Label smoothing and probability targets on rows of several 1024-class blocks (the C
    kernels gather their statistics block by block, in the fused call while each block is
    visited for the exp): a larger max in a later block, a whole block of -inf, a -inf
    logit with target mass, NaN and +inf, each in one row; against the reference, and the
    fused loss against the forward."""
    rng = np.random.default_rng(5)
    n, c = 7, 3000
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    x[1, 2500] = 40.0  # the max comes in the last block
    x[2, 1024:2048] = -np.inf
    x[3, 10] = -np.inf  # target mass there: an infinite loss
    x[4, 2999] = np.nan
    x[5, 1500] = np.inf
    y = np.array([3, 2500, 5, 7, 11, 0, 2999])
    probs = rng.random((n, c)).astype(dtype)
    probs[2, 1024:2048] = 0  # no mass on the impossible classes
    probs /= probs.sum(1, keepdims=True)
    for target, kw in ((y, dict(label_smoothing=0.2)), (probs, {}),
                       (probs, dict(label_smoothing=0.1)),
                       (y, dict(label_smoothing=0.1, weight=rng.random(c) + 0.5))):
        loss, _ = _fused_matches_reference(x, target, kw, dtype, backend, in_place)
        assert_close(fl.cross_entropy(x, target, **kw, reduction="none", backend=backend),
                     loss, dtype)
        assert np.isinf(loss[3]) and np.isnan(loss[4]) and np.isnan(loss[5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37, 10), (6, 3000)], ids=["short rows", "long rows"])
@pytest.mark.parametrize("options", [dict(softcap=4.0), dict(temperature=0.7),
                                     dict(softcap=3.0, temperature=1.6, z_loss=1e-3,
                                          label_smoothing=0.1)],
                         ids=["softcap", "temperature", "all"])
def test_transformed_rows_match_the_reference(dtype, shape, options, fast_backend):
    """softcap / temperature on short rows (the C kernels' tiles) and long ones (their row
    skeleton), in the input's dtype, against the float64 reference; ignored rows, a -inf
    logit and in place (out= the logits) included."""
    rng = np.random.default_rng(11)
    n, c = shape
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    x[1, 3] = -np.inf
    y = rng.integers(0, c, n)
    y[[2, 4]] = -100
    y[1] = 4
    for in_place in (False, True):
        _, grad = _fused_matches_reference(x, y, options, dtype, fast_backend, in_place)
        assert grad[1, 3] == 0 and np.all(grad[[2, 4]] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [10, 3000], ids=["short rows", "long rows"])
def test_softcap_slope_keeps_its_digits_where_tanh_saturates(dtype, c, fast_backend):
    """Logits many caps away from 0: tanh rounds to +-1 there, and a slope 1 - tanh^2 from
    the rounded value would be 0 (or all noise); 4e / (1 + e)^2, e = exp(-2|x| / cap), keeps
    every digit of those small gradient elements."""
    rng = np.random.default_rng(12)
    cap = 1.0
    x = rng.uniform(-9, 9, (6, c)).astype(dtype)
    y = rng.integers(0, c, 6)
    _, want = fl.cross_entropy_with_grad(x.astype(np.float64), y, softcap=cap,
                                         reduction="sum", backend="numpy")
    _, grad = fl.cross_entropy_with_grad(x, y, softcap=cap, reduction="sum", backend=fast_backend)
    saturated = np.abs(x) > 5 * cap
    assert saturated.sum() > 6 and np.all(want[saturated] != 0)
    np.testing.assert_allclose(grad[saturated], want[saturated],
                               rtol=3e-5 if dtype == np.float32 else 1e-7)
