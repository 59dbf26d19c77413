"""Cross-entropy's streaming stores (fastloss.c, ``fl_streams``): a gradient of 16 MiB or
more with rows of 1024 classes or more, written into an ``out`` that is not the logits, is
written by streaming stores from a scratch row.  It must be the gradient of the ordinary
path bit for bit: the same logits computed in place (``out=logits``, which never streams)
give the reference here.  The other softmax losses, which do not stream, are held to the
same identity at the same size.  Row lengths that are not a multiple of the vector width,
so that rows start at every alignment; poisoned, impossible and ignored rows; one and two
threads."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from conftest import assert_close
from fastloss import _backends, reference

pytestmark = pytest.mark.skipif(not _backends.available("cython"),
                                reason="the cython backend is not built")

C = 4100  # four blocks and a partial one; rows at every 16-byte offset
ROWS = {np.float32: 1040, np.float64: 520}  # just over 16 MiB of gradient


def _logits(dtype, seed):
    rng = np.random.default_rng(seed)
    n = ROWS[dtype]
    x = (rng.standard_normal((n, C)) * 3.0).astype(dtype)
    x[3, 17] = np.nan
    x[5, C - 1] = np.inf
    x[6, :] = -np.inf
    x[7, 1024:2048] = -np.inf  # a whole block of impossible classes
    x[8, :] = -np.inf
    x[8, 4099] = 1.0
    return rng, x


def _probs(rng, x):
    t = rng.random(x.shape).astype(x.dtype)
    t[10, :2000] = 0.0
    return t / t.sum(axis=1, keepdims=True)


def _cases(rng, x):
    n = x.shape[0]
    y = rng.integers(0, C, n)
    y[::7] = -100
    y[7], y[8] = 5, 4099
    t = _probs(rng, x)
    log_t = np.log(t)
    go = rng.uniform(0.5, 2.0, n)
    w = rng.uniform(0.5, 2.0, C)
    return [
        (fastloss.cross_entropy_with_grad, (y,), {}),
        (fastloss.cross_entropy_with_grad, (y,), {"weight": w, "z_loss": 1e-3}),
        (fastloss.cross_entropy_with_grad, (y,), {"reduction": "none", "grad_output": go}),
        (fastloss.cross_entropy_with_grad, (y,), {"label_smoothing": 0.1}),
        (fastloss.cross_entropy_with_grad, (t,), {}),
        (fastloss.kl_divergence_with_grad, (t,), {}),
        (fastloss.kl_divergence_with_grad, (log_t,), {"log_target": True,
                                                     "reduction": "none", "grad_output": go}),
        (fastloss.softmax_mse_with_grad, (y.clip(0),), {}),
        (fastloss.softmax_mse_with_grad, (t,), {"reduction": "none"}),
        (fastloss.entropy_with_grad, (), {}),
        (fastloss.entropy_with_grad, (), {"reduction": "none", "grad_output": go}),
    ]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_gradient_is_the_in_place_gradient(dtype, n_threads):
    rng, x = _logits(dtype, 11)
    for fn, args, kwargs in _cases(rng, x):
        out = np.full_like(x, 7.0)
        loss, grad = fn(x, *args, **kwargs, out=out, backend="cython", n_threads=n_threads)
        assert grad is out
        in_place = x.copy()
        loss_ip, grad_ip = fn(in_place, *args, **kwargs, out=in_place, backend="cython",
                              n_threads=n_threads)
        name = f"{fn.__name__} {kwargs}"
        np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_ip), err_msg=name)
        assert grad.tobytes() == grad_ip.tobytes(), name


def test_streamed_gradient_matches_the_reference():
    """A few rows of the streamed gradients against the float64 reference (the rows above
    are compared bit for bit with the ordinary path; this checks that path's values too)."""
    rng, x = _logits(np.float32, 12)
    y = rng.integers(0, C, x.shape[0])
    t = _probs(rng, x)
    rows = slice(20, 24)
    for fn, ref, target in ((fastloss.cross_entropy_with_grad, reference.cross_entropy, y),
                            (fastloss.kl_divergence_with_grad, reference.kl_divergence, t),
                            (fastloss.softmax_mse_with_grad, reference.softmax_mse, t)):
        out = np.empty_like(x)
        loss, grad = fn(x, target, reduction="none", out=out, backend="cython")
        expected_loss, expected = ref(x[rows], target[rows])
        assert_close(loss[rows], expected_loss, np.float32, err_msg=fn.__name__)
        assert_close(grad[rows], expected, np.float32, err_msg=fn.__name__)
    out = np.empty_like(x)
    loss, grad = fastloss.entropy_with_grad(x, reduction="none", out=out, backend="cython")
    expected_loss, expected = reference.entropy(x[rows])
    assert_close(loss[rows], expected_loss, np.float32)
    assert_close(grad[rows], expected, np.float32)
