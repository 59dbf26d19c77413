"""The NumPy reference: against PyTorch, finite differences, hand-checked values, properties."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import central_difference

import fastloss
from fastloss import reference
from fastloss._registry import CASES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

SHAPES = [(7, 5), (2, 3, 4), (1, 1)]


# ---------------------------------------------------------------- PyTorch as the oracle

def _torch_loss(torch, case, logits, args, kwargs, reduction):
    """The same loss in PyTorch (the loss table's peer), on a leaf tensor that requires grad."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    return x, case.torch_loss(torch, x, args, kwargs, reduction)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reference_matches_torch(case, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits, args, kwargs = case.inputs(rng, shape)
    for reduction in case.reductions:
        loss_shape = shape if case.elementwise else shape[:-1]
        grad_output = rng.uniform(0.5, 1.5, size=loss_shape if reduction == "none" else ())
        loss, grad = case.with_grad(logits, *args, **kwargs, reduction=reduction,
                                    grad_output=grad_output, backend="numpy")
        x, t_loss = _torch_loss(torch, case, logits, args, kwargs, reduction)
        t_loss.backward(torch.tensor(grad_output))
        np.testing.assert_allclose(loss, t_loss.detach().numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=f"loss, reduction={reduction}")
        np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=f"grad, reduction={reduction}")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_transforms_match_torch(name):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((4, 3, 9)) * 10
    x[0, 0, :4] = -np.inf
    expected = getattr(torch, name)(torch.tensor(x), -1).numpy()
    np.testing.assert_allclose(getattr(fastloss, name)(x, backend="numpy"), expected,
                               rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------- finite differences

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradient_matches_central_differences(case, backend):
    rng = np.random.default_rng(2)
    logits, args, kwargs = case.inputs(rng, (6, 5), scale=1.0)
    loss_shape = logits.shape if case.elementwise else logits.shape[:-1]
    grad_output = rng.uniform(0.5, 1.5, size=loss_shape)
    _, grad = case.with_grad(logits, *args, **kwargs, reduction="none", grad_output=grad_output,
                             backend=backend)

    def f(x):
        return case.forward(x, *args, **kwargs, reduction="none", backend=backend)

    numeric = central_difference(f, logits)
    if not case.elementwise:
        grad_output = grad_output[:, None]
    np.testing.assert_allclose(grad, grad_output * numeric, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- values checked by hand

def test_worked_example_binary():
    # sigma(x) = 0.8: -log 0.8 for the positive label, -log 0.2 for the negative one
    x = np.log(np.array([0.8 / 0.2, 0.8 / 0.2]))
    loss = fastloss.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0]), reduction="none")
    np.testing.assert_allclose(loss, [0.22314355131420976, 1.6094379124341003], rtol=1e-14)


def test_worked_example_three_classes():
    # softmax(log p) = p, so the loss against the one-hot [1, 0, 0] is -log p_0
    p = np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2]])
    onehot = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    for target in (np.array([0, 0]), onehot):
        loss, grad = fastloss.cross_entropy_with_grad(np.log(p), target, reduction="none")
        np.testing.assert_allclose(loss, [-np.log(0.8), -np.log(0.5)], rtol=1e-14)
        np.testing.assert_allclose(loss, [0.2231435513142097, 0.6931471805599453], rtol=1e-14)
        np.testing.assert_allclose(grad, p - onehot, atol=1e-15)  # softmax - one-hot
    mean = fastloss.cross_entropy(np.log(p), np.array([0, 0]))
    np.testing.assert_allclose(mean, (0.2231435513142097 + 0.6931471805599453) / 2, rtol=1e-14)


def test_hand_checked_smoothing_and_weight():
    # uniform logits over 4 classes: every -log p_c is log 4, so with weight w the loss is
    # (1-eps) w_y log 4 + eps/4 * sum(w) log 4, and "mean" divides by w_y
    w = np.array([1.0, 2.0, 3.0, 4.0])
    loss = fastloss.cross_entropy(np.zeros((1, 4)), np.array([2]), weight=w, label_smoothing=0.4,
                                  reduction="sum")
    np.testing.assert_allclose(loss, (0.6 * 3 + 0.1 * 10) * np.log(4), rtol=1e-14)


def test_hand_checked_other_losses():
    x = np.log(np.array([[0.8, 0.1, 0.1]]))
    np.testing.assert_allclose(fastloss.softmax_mse(x, np.array([0])), 0.04 + 0.01 + 0.01)
    np.testing.assert_allclose(fastloss.entropy(x), -(0.8 * np.log(0.8) + 0.2 * np.log(0.1)))
    t = np.array([[0.5, 0.25, 0.25]])
    np.testing.assert_allclose(fastloss.kl_divergence(x, t),
                               0.5 * np.log(0.5 / 0.8) + 0.5 * np.log(0.25 / 0.1))
    np.testing.assert_allclose(fastloss.mse_loss(np.array([3.0]), np.array([1.0])), 4.0)
    # pos_weight multiplies the positive term only
    loss = fastloss.binary_cross_entropy_with_logits(np.zeros(2), np.array([1.0, 0.0]),
                                                     pos_weight=np.array([3.0, 3.0]),
                                                     reduction="none")
    np.testing.assert_allclose(loss, [3 * np.log(2), np.log(2)])


# ---------------------------------------------------------------- properties

_finite = st.floats(-50, 50, allow_nan=False, width=64)


@st.composite
def _logits_and_classes(draw, masked=False):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 9))
    x = draw(arrays(np.float64, (n, c), elements=_finite))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    if masked:
        mask = draw(arrays(np.bool_, (n, c)))
        mask[np.arange(n), y] = False  # the target class stays possible
        x = np.where(mask, -np.inf, x)
    return x, y


SOFTMAX_LOSSES = [c for c in CASES if not c.elementwise]


# a z-term depends on the log-sum-exp, a soft cap is not linear: neither is shift-invariant
SHIFT_INVARIANT = [c for c in SOFTMAX_LOSSES if not {"z_loss", "softcap"} & set(c.kwargs)]


@settings(max_examples=40, deadline=None)
@given(data=_logits_and_classes(), shift=st.floats(-1e3, 1e3),
       case=st.sampled_from(SHIFT_INVARIANT))
def test_softmax_losses_are_shift_invariant(data, shift, case):
    x, _ = data
    _, args, kwargs = case.inputs(np.random.default_rng(0), x.shape)
    loss, grad = case.with_grad(x, *args, **kwargs, reduction="none", backend="numpy")
    loss2, grad2 = case.with_grad(x + shift, *args, **kwargs, reduction="none", backend="numpy")
    np.testing.assert_allclose(loss2, loss, rtol=1e-9, atol=1e-9 * (1 + abs(shift)))
    np.testing.assert_allclose(grad2, grad, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(data=_logits_and_classes(masked=True))
def test_cross_entropy_gradient_rows_sum_to_zero_and_stay_finite(data):
    x, y = data
    loss, grad = fastloss.cross_entropy_with_grad(x, y, reduction="none", backend="numpy")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)
    assert np.all(grad[np.isneginf(x)] == 0.0)


@settings(max_examples=40, deadline=None)
@given(data=_logits_and_classes(masked=True), case=st.sampled_from(SOFTMAX_LOSSES))
def test_no_nan_from_finite_or_masked_logits(data, case):
    x, y = data
    if case.loss == "cross_entropy" and "smoothing" in case.variant:
        x = np.where(np.isneginf(x), -30.0, x)  # smoothing puts mass on every class
    _, args, kwargs = case.inputs(np.random.default_rng(0), x.shape)
    if case.loss in ("cross_entropy", "softmax_mse") and "index" in case.variant:
        args = (y,)
    elif case.loss != "entropy":
        # probability targets put no mass on impossible classes
        t = np.where(np.isneginf(x), 0.0, 1.0 + np.arange(x.shape[1]))
        t = t / t.sum(axis=1, keepdims=True)
        args = (np.log(t),) if kwargs.get("log_target") else (t,)
    loss, grad = case.with_grad(x, *args, **kwargs, reduction="none", backend="numpy")
    assert not np.any(np.isnan(loss)) and not np.any(np.isnan(grad))


def test_reference_logsumexp_limits():
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [1e30, -1e30], [np.nan, 0.0]])
    out = reference.logsumexp(x)
    assert out[0] == -np.inf and out[1] == np.inf and out[2] == 1e30 and np.isnan(out[3])
