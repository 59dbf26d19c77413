"""The edge cases of the numerics contract (docs/design.md §5), on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss._registry import CASES

INF = np.inf
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_empty_batch(case, backend):
    logits, args, kwargs = case.inputs(np.random.default_rng(0), (0, 5))
    for reduction in case.reductions:
        loss, grad = case.with_grad(logits, *args, **kwargs, reduction=reduction, backend=backend)
        assert grad.shape == (0, 5)
        if reduction == "none":
            assert loss.shape == ((0, 5) if case.elementwise else (0,))
        elif reduction == "sum":
            assert loss == 0.0
        else:
            assert np.isnan(loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_mean_is_nan_with_zero_gradient(backend, dtype):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(dtype)
    loss, grad = fl.cross_entropy_with_grad(x, np.full(3, -100), backend=backend)
    assert np.isnan(loss) and loss.dtype == dtype
    assert np.all(grad == 0.0)
    loss, grad = fl.cross_entropy_with_grad(x, np.full(3, -100), reduction="sum",
                                            backend=backend)
    assert loss == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_masks(backend, dtype):
    x = np.array([[0.5, -INF, 1.0, -INF], [-INF, 2.0, 0.0, 1.0]], dtype=dtype)
    loss, grad = fl.cross_entropy_with_grad(x, np.array([2, 0]), reduction="none",
                                            backend=backend)
    # row 0: an impossible non-target class gets exactly 0 gradient
    assert grad[0, 1] == 0.0 and grad[0, 3] == 0.0
    assert np.isfinite(loss[0])
    # row 1: an impossible target gives an infinite loss and a finite gradient
    assert loss[1] == INF
    assert np.all(np.isfinite(grad[1]))
    p = np.exp(x[1, 1:] - x[1, 1:].max())
    np.testing.assert_allclose(grad[1], [-1.0, *(p / p.sum())], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ignored_rows_are_exactly_zero_whatever_their_logits(backend, dtype):
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(dtype)
    x[1] = np.nan
    x[2] = -INF
    target = np.array([0, -100, -100, 5])
    loss, grad = fl.cross_entropy_with_grad(x, target, reduction="none", backend=backend)
    assert np.all(loss[1:3] == 0.0) and np.all(grad[1:3] == 0.0)
    assert np.all(np.isfinite(loss[[0, 3]])) and np.all(np.isfinite(grad[[0, 3]]))
    mean, grad_mean = fl.cross_entropy_with_grad(x, target, backend=backend)
    assert np.isfinite(mean) and np.all(grad_mean[1:3] == 0.0)


@pytest.mark.parametrize("case", [c for c in CASES if not c.elementwise], ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisoned_rows_are_nan_and_other_rows_untouched(case, backend, dtype):
    rng = np.random.default_rng(3)
    x, args, kwargs = case.inputs(rng, (5, 7), dtype)
    x[1, 3] = np.nan
    x[2, 0] = INF
    x[3] = -INF
    if "ignore" in case.variant:
        args = (np.array([0, 1, 2, 3, 4]),)  # keep the poisoned rows counted
    loss, grad = case.with_grad(x, *args, **kwargs, reduction="none", backend=backend)
    # a soft cap maps +inf to the finite logit softcap: that row is not poisoned
    poisoned = [1, 3] if kwargs.get("softcap") else [1, 2, 3]
    assert np.all(np.isnan(loss[poisoned])) and np.all(np.isnan(grad[poisoned]))
    clean = [i for i in range(5) if i not in poisoned]
    clean_loss, clean_grad = case.with_grad(x[clean], *_rows(args, clean), **kwargs,
                                            reduction="none", backend=backend)
    np.testing.assert_array_equal(loss[clean], clean_loss)
    np.testing.assert_array_equal(grad[clean], clean_grad)


def _rows(args, rows):
    return tuple(a[rows] for a in args)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_stay_finite_and_correct(case, backend, dtype):
    rng = np.random.default_rng(4)
    x, args, kwargs = case.inputs(rng, (4, 6), dtype)
    x = (np.sign(x) * 1e30).astype(dtype)
    if case.loss == "mse_loss" or kwargs.get("z_loss"):
        x = (x * 1e-20).astype(dtype)  # (1e30)^2 overflows any float; that is not a bug
    loss, grad = case.with_grad(x, *args, **kwargs, reduction="none", backend=backend)
    expected, expected_grad = case.with_grad(x.astype(np.float64), *args, **kwargs,
                                             reduction="none", backend="numpy")
    assert not np.any(np.isnan(loss)) and not np.any(np.isnan(grad))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_at_plus_minus_1e30(backend, dtype):
    x = np.array([[1e30, -1e30, 0.0], [1e30, -1e30, 0.0]], dtype=dtype)
    loss, grad = fl.cross_entropy_with_grad(x, np.array([0, 2]), reduction="none",
                                            backend=backend)
    np.testing.assert_allclose(loss, [0.0, 1e30], rtol=1e-6)
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]])


def test_bce_extremes(backend):
    x = np.array([-INF, -INF, INF, INF, -1e30, 1e30, -50.0, 50.0])
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    loss, grad = fl.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none",
                                                               backend=backend)
    np.testing.assert_array_equal(loss[[0, 2, 4, 5]], 0.0)
    assert loss[1] == INF and loss[3] == INF
    np.testing.assert_allclose(loss[6:], np.exp(-50.0), rtol=1e-12)  # log1p keeps tiny values
    np.testing.assert_array_equal(grad[:6], [0.0, -1.0, 0.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("transform", ["softmax", "log_softmax", "logsumexp"])
def test_transforms_on_masked_and_huge_rows(backend, transform):
    x = np.array([[0.0, -INF, 1e30], [-INF, -INF, -INF], [1.0, 2.0, 3.0]])
    result = getattr(fl, transform)(x, backend=backend)
    expected = getattr(fl, transform)(x, backend="numpy")
    np.testing.assert_allclose(result, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_row_max_wherever_it_is_in_a_long_row(backend, dtype):
    """Rows long enough for the kernels' several running maxima (and a tail after them): the
    largest logit, a NaN or a +inf at any position gives the reference's row."""
    c = 300
    positions = (0, 1, 15, 63, 64, 127, 128, 255, 256, 299)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3 * len(positions), c)).astype(dtype)
    for i, k in enumerate(positions):
        # the max: a shift by any other logit would overflow exp in this dtype
        x[i, k] = 120.0 if dtype == np.float32 else 800.0
        x[len(positions) + i, k] = np.nan
        x[2 * len(positions) + i, k] = INF
    target = rng.integers(0, c, x.shape[0])
    loss, grad = fl.cross_entropy_with_grad(x, target, reduction="none", backend=backend)
    n = len(positions)
    ref_loss, ref_grad = fl.cross_entropy_with_grad(x[:n], target[:n], reduction="none",
                                                    backend="numpy")
    np.testing.assert_allclose(loss[:n], ref_loss, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad[:n], ref_grad, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-7 if dtype == np.float32 else 1e-15)
    assert np.all(np.isnan(loss[n:])) and np.all(np.isnan(grad[n:]))


@pytest.mark.parametrize("c", [5, 40, 3000])
def test_softmax_mse_near_its_one_hot_target(backend, c):
    """Softmax MSE with class indices where p_y nears 1 (training converges there): the loss,
    about (1 - p_y)^2, and g_y to float32's precision, not to that of p_y - 1 in float32
    (which keeps about 2 digits of 1 - p_y = 4e-6).  Against the float64 reference."""
    x = np.zeros((4, c), dtype=np.float32)
    y = np.array([0, c - 1, c // 2, 1])
    x[np.arange(4), y] = np.array([12.0, 16.0, 20.0, 14.0]) + np.log(c)
    loss, grad = fl.softmax_mse_with_grad(x, y, reduction="none", backend=backend)
    ref_loss, ref_grad = fl.softmax_mse_with_grad(x.astype(np.float64), y, reduction="none",
                                                  backend="numpy")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("c", [5, 40, 3000])
@pytest.mark.parametrize("kwargs", [{}, {"weight": True, "z_loss": 1e-3}, {"label_smoothing": 0.1}],
                         ids=["plain", "weight,z_loss", "smoothing"])
def test_cross_entropy_near_its_target(backend, c, kwargs):
    """Cross-entropy where p_y nears 1 (a confident model: training converges there): the
    loss, about 1 - p_y, and g_y to float32's precision, not to that of a float32 sum s in
    1 - p_y = 1 - e_y / s (which keeps about 2 digits of 1 - p_y = 1e-5, and none below
    6e-8, where s rounds to 1).  The target in the first, the last and a middle class (for
    C = 3000, in the first, third and second 1024-class block); the forward alone and the
    fused call in place give the same loss."""
    x = np.zeros((5, c), dtype=np.float32)
    y = np.array([0, c - 1, c // 2, 1, 2])
    x[np.arange(5), y] = np.array([12.0, 16.0, 20.0, 14.0, 30.0]) + np.log(c)
    x[4, 0] = 29.0  # a row where p_y is e / (1 + e): no cancellation either way
    if kwargs.get("weight"):
        kwargs = dict(kwargs, weight=np.linspace(0.5, 2.0, c))
    loss, grad = fl.cross_entropy_with_grad(x, y, reduction="none", backend=backend, **kwargs)
    ref_loss, ref_grad = fl.cross_entropy_with_grad(x.astype(np.float64), y, reduction="none",
                                                    backend="numpy", **kwargs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(fl.cross_entropy(x, y, reduction="none", backend=backend,
                                                   **kwargs), loss)
    logits = x.copy()
    in_place = fl.cross_entropy_with_grad(logits, y, reduction="none", out=logits,
                                          backend=backend, **kwargs)
    np.testing.assert_array_equal(in_place[0], loss)
    np.testing.assert_array_equal(in_place[1], grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_mse_over_many_blocks(backend, dtype):
    """Softmax MSE with class indices on rows of several 1024-class blocks (the C kernel sums
    each block's exp, but the target's, as it stores them): the max in a later block, the
    target in a block of -inf or in the block of the max, NaN and +inf; against the
    reference, and the fused loss against the forward and the call in place."""
    rng = np.random.default_rng(8)
    n, c = 7, 3000
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    x[1, 2500] = 40.0
    x[2, 1024:2048] = -np.inf
    x[3, 2999] = 50.0
    x[4, 2999] = np.nan
    x[5, 1500] = np.inf
    y = np.array([3, 2500, 1500, 2999, 11, 0, 2047])
    want_loss, want_grad = fl.softmax_mse_with_grad(x, y, reduction="none", backend="numpy")
    loss, grad = fl.softmax_mse_with_grad(x, y, reduction="none", backend=backend)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=100 * rtol, atol=rtol * 1e-3)
    np.testing.assert_array_equal(fl.softmax_mse(x, y, reduction="none", backend=backend), loss)
    logits = x.copy()
    in_place = fl.softmax_mse_with_grad(logits, y, reduction="none", out=logits,
                                        backend=backend)
    np.testing.assert_array_equal(in_place[0], loss)
    np.testing.assert_array_equal(in_place[1], grad)
