"""The common cross-entropy call's shorter path (``fastloss._api._fast_cross_entropy``).

It must give bit-identical results to the general driver, be taken exactly for the calls it
is meant for, and leave every other call (and every error) to the general driver.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss import _api


def _general(want_grad, logits, target, reduction="mean", out=None, n_threads=None,
             backend="auto"):
    """The same call through the general driver."""
    options = dict(weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                   softcap=None, temperature=1.0)
    return _api._loss("cross_entropy", want_grad, logits, target, options, reduction, backend,
                      n_threads, None, out)


def _spy_on(monkeypatch, name):
    """Records, for each call of ``_api.<name>``, whether the short path answered it."""
    taken = []
    original = getattr(_api, name)

    def wrapped(*args):
        result = original(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(_api, name, wrapped)
    return taken


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls the cross-entropy short path answered."""
    return _spy_on(monkeypatch, "_fast_cross_entropy")


def _assert_same_loss(got, expected):
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


def _assert_grads(x, grad, grad_out, out, want_grad):
    """The gradients without and with ``out=``: the second is ``out``; both are the general
    driver's, bit for bit, in the logits' dtype and shape."""
    assert grad_out is out
    for got in (grad, grad_out):
        assert got.dtype == x.dtype and got.shape == x.shape
        np.testing.assert_array_equal(got, want_grad)


@pytest.mark.parametrize("shape", [(64, 10), (1, 1), (3, 1), (257, 37), (40, 5000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bit_identical_to_the_general_driver(shape, dtype, reduction, spy):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    fast_loss = fl.cross_entropy(x, t, reduction=reduction)
    loss, grad = fl.cross_entropy_with_grad(x, t, reduction=reduction)
    out = np.full_like(x, np.nan)
    loss_out, grad_out = fl.cross_entropy_with_grad(x, t, reduction=reduction, out=out)
    assert spy == [True, True, True]
    want = _general(False, x, t, reduction)
    want_loss, want_grad = _general(True, x, t, reduction)
    for got in (fast_loss, loss, loss_out):
        _assert_same_loss(got, want)
    np.testing.assert_array_equal(want_loss, want)
    _assert_grads(x, grad, grad_out, out, want_grad)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_named_compiled_backend_takes_the_short_path(backend, reduction, spy):
    """backend="cython" or "numba" named outright: the short path, on that backend, with the
    general driver's bits (and its errors for a bad index)."""
    from fastloss import _backends

    if not _backends.available(backend):
        pytest.skip(f"backend {backend!r} is not available here")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 70)).astype(np.float32)
    t = rng.integers(0, 70, 500)
    loss = fl.cross_entropy(x, t, reduction=reduction, backend=backend)
    loss_g, grad = fl.cross_entropy_with_grad(x, t, reduction=reduction, backend=backend,
                                              n_threads=2)
    assert spy == [True, True]
    np.testing.assert_array_equal(loss, _general(False, x, t, reduction, backend=backend))
    want_loss, want_grad = _general(True, x, t, reduction, n_threads=2, backend=backend)
    np.testing.assert_array_equal(loss_g, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    t[7] = -3
    with pytest.raises(IndexError, match="target -3 at position 7"):
        fl.cross_entropy_with_grad(x, t, backend=backend)


def test_in_place_and_thread_counts(spy):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 200))
    t = rng.integers(0, 200, 300)
    want_loss, want_grad = _general(True, x, t)
    for n_threads in (1, 2, 3):
        y = x.copy()
        loss, grad = fl.cross_entropy_with_grad(y, t, out=y, n_threads=n_threads)
        assert grad is y
        assert loss == want_loss
        np.testing.assert_array_equal(y, want_grad)
    assert spy == [True] * 3


@pytest.mark.parametrize("call", [
    pytest.param(lambda x, t: fl.cross_entropy(x, t, ignore_index=2), id="ignore_index"),
    pytest.param(lambda x, t: fl.cross_entropy(x, t, label_smoothing=0.1), id="smoothing"),
    pytest.param(lambda x, t: fl.cross_entropy(x, t, label_smoothing=np.float64(0.0)),
                 id="numpy-scalar-option"),
    pytest.param(lambda x, t: fl.cross_entropy(x, t, temperature=True), id="bool-option"),
    pytest.param(lambda x, t: fl.cross_entropy(x, t.astype(np.int32)), id="int32-target"),
    pytest.param(lambda x, t: fl.cross_entropy(x[:, ::2], t % 2), id="strided-logits"),
    pytest.param(lambda x, t: fl.cross_entropy(x.astype(">f8"), t), id="byte-order"),
    pytest.param(lambda x, t: fl.cross_entropy(x[None], t[None]), id="3-d"),
    pytest.param(lambda x, t: fl.cross_entropy(x, t, backend="numpy"), id="backend"),
    pytest.param(lambda x, t: fl.cross_entropy_with_grad(x, t, grad_output=2.0),
                 id="grad_output"),
    pytest.param(lambda x, t: fl.cross_entropy_with_grad(x, t, out=np.empty((8, 5), ">f8")),
                 id="out-byte-order"),
])
def test_other_calls_take_the_general_path(call, spy):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 5))
    t = rng.integers(0, 5, 8)
    try:
        call(x, t)
    except (TypeError, ValueError):
        pass  # some are bad calls: the general driver's errors
    assert not any(spy)


@pytest.mark.parametrize("target, error, message", [
    (np.array([0, 1, 5]), IndexError, r"target 5 at position 2 is out of range"),
    (np.array([0, -1, 2]), IndexError, r"target -1 at position 1 is out of range"),
    (np.array([0, 1]), ValueError, r"does not match the batch shape"),
])
def test_errors_come_from_the_general_driver(target, error, message):
    x = np.zeros((3, 5), np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(error, match=message):
        fl.cross_entropy_with_grad(x, target, out=out)
    assert (out == 7.0).all()  # nothing was written


def test_ignored_rows_take_the_general_path_and_agree():
    x = np.random.default_rng(2).standard_normal((6, 4))
    t = np.array([0, -100, 3, 1, -100, 2])
    loss, grad = fl.cross_entropy_with_grad(x, t)
    np.testing.assert_array_equal(grad[[1, 4]], 0.0)
    kept = t != -100
    want = fl.cross_entropy(x[kept], t[kept], backend="numpy")
    np.testing.assert_allclose(loss, want, rtol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (dict(n_threads=0), r"n_threads must be a positive integer"),
    (dict(reduction="avg"), r"reduction"),
    (dict(out=np.empty((3, 5), np.float64)), r"out has dtype float64"),
    (dict(out=np.empty((5, 3), np.float32)), r"out has shape"),
])
def test_bad_arguments_raise_as_before(bad, message):
    x = np.zeros((3, 5), np.float32)
    with pytest.raises((TypeError, ValueError), match=message):
        fl.cross_entropy_with_grad(x, np.array([0, 1, 2]), **bad)


def test_read_only_out_is_refused():
    x = np.zeros((3, 5), np.float32)
    out = np.empty_like(x)
    out.flags.writeable = False
    with pytest.raises(ValueError):
        fl.cross_entropy_with_grad(x, np.array([0, 1, 2]), out=out)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backends_without_the_one_step_entry_agree(reduction, spy, monkeypatch):
    """The short path on a backend without ``cross_entropy_index_fast`` (the C backend's one
    call that checks the indices and runs the kernel) gives the same bits and errors."""
    from fastloss import _backends

    module = _backends._load(_backends.auto_cpu())[0]
    rng = np.random.default_rng(11)
    x = rng.standard_normal((70, 12)).astype(np.float32)
    t = rng.integers(0, 12, 70)
    want = fl.cross_entropy_with_grad(x, t, reduction=reduction)
    if hasattr(module, "cross_entropy_index_fast"):
        monkeypatch.delattr(module, "cross_entropy_index_fast")
    got = fl.cross_entropy_with_grad(x, t, reduction=reduction)
    assert spy == [True, True]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    t[5] = 12
    with pytest.raises(IndexError, match="target 12 at position 5"):
        fl.cross_entropy_with_grad(x, t, reduction=reduction)


def test_the_one_step_entry_refuses_arrays_it_cannot_read():
    """``cross_entropy_index_fast`` takes its arrays through the buffer protocol: a shape or
    item size that does not match, a non-contiguous array or a read-only gradient is refused
    before anything is written, never read as if it fitted."""
    _cython = pytest.importorskip("fastloss._ext._cython")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    grad = np.zeros_like(x)
    loss = _cython.cross_entropy_index_fast(x, t, grad, 1.0, 1)
    want_loss, want_grad = _general(True, x, t, reduction="none", backend="cython")
    np.testing.assert_array_equal(loss.astype(np.float32), want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    bad = {
        "a target of the wrong length": (x, t[:5], None),
        "32-bit targets": (x, t.astype(np.int32), None),
        "a gradient of another shape": (x, t, np.zeros((6, 4), np.float32)),
        "a gradient of another dtype": (x, t, np.zeros((6, 5), np.float64)),
        "3-D logits": (x.reshape(6, 5, 1), t, None),
    }
    for what, (xx, tt, gg) in bad.items():
        before = None if gg is None else gg.copy()
        with pytest.raises(ValueError, match="wrong shape or dtype"):
            _cython.cross_entropy_index_fast(xx, tt, gg, 1.0, 1)
        if gg is not None:
            np.testing.assert_array_equal(gg, before, err_msg=what)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _cython.cross_entropy_index_fast(np.asfortranarray(np.ones((6, 5), np.float32)), t,
                                         None, 1.0, 1)
    read_only = np.zeros_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _cython.cross_entropy_index_fast(x, t, read_only, 1.0, 1)
    assert not read_only.any()


# ------------------------------------------------------------------ the other losses
# _fast_loss: the same contract for BCE, softmax MSE, KL, entropy and MSE.

# public name -> (forward, fused, the target for logits x, the default options)
_OTHERS = {
    "binary_cross_entropy_with_logits": (
        fl.binary_cross_entropy_with_logits, fl.binary_cross_entropy_with_logits_with_grad,
        lambda rng, x: rng.random(x.shape).astype(x.dtype), dict(weight=None, pos_weight=None)),
    "softmax_mse[probabilities]": (
        fl.softmax_mse, fl.softmax_mse_with_grad,
        lambda rng, x: rng.dirichlet(np.ones(x.shape[1]), x.shape[0]).astype(x.dtype), {}),
    "softmax_mse[indices]": (
        fl.softmax_mse, fl.softmax_mse_with_grad,
        lambda rng, x: rng.integers(0, x.shape[1], x.shape[0]), {}),
    "kl_divergence": (
        fl.kl_divergence, fl.kl_divergence_with_grad,
        lambda rng, x: rng.dirichlet(np.ones(x.shape[1]), x.shape[0]).astype(x.dtype),
        dict(log_target=False)),
    "entropy": (fl.entropy, fl.entropy_with_grad, None, {}),
    "mse_loss": (fl.mse_loss, fl.mse_loss_with_grad,
                 lambda rng, x: rng.standard_normal(x.shape).astype(x.dtype), {}),
}


def _general_other(key, want_grad, x, t, reduction, out=None, backend="auto"):
    name = key.split("[")[0]
    return _api._loss(name, want_grad, x, t, dict(_OTHERS[key][3]), reduction, backend, None,
                      None, out)


def _call(fn, x, t, **kw):
    return fn(x, **kw) if t is None else fn(x, t, **kw)


@pytest.fixture
def other_spy(monkeypatch):
    """Counts the calls _fast_loss answered."""
    return _spy_on(monkeypatch, "_fast_loss")


@pytest.mark.parametrize("key, reduction", [
    (key, reduction) for key in _OTHERS
    for reduction in fl._losses.get(key.split("[")[0]).reductions])
@pytest.mark.parametrize("shape", [(64, 10), (1, 1), (257, 37), (40, 5000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_losses_bit_identical_to_the_general_driver(key, shape, dtype, reduction,
                                                          other_spy):
    forward, fused, make_target, _ = _OTHERS[key]
    rng = np.random.default_rng(sum(shape) + len(key))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = None if make_target is None else make_target(rng, x)
    fast_loss = _call(forward, x, t, reduction=reduction)
    loss, grad = _call(fused, x, t, reduction=reduction)
    out = np.full_like(x, np.nan)
    loss_out, grad_out = _call(fused, x, t, reduction=reduction, out=out)
    assert other_spy == [True, True, True]
    want = _general_other(key, False, x, t, reduction)
    want_loss, want_grad = _general_other(key, True, x, t, reduction)
    # (a fused kernel's loss may differ from the forward's in the last bit: BCE at 1 x 1)
    for got, expected in ((fast_loss, want), (loss, want_loss), (loss_out, want_loss)):
        assert np.shape(got) == np.shape(expected)
        _assert_same_loss(got, expected)
    _assert_grads(x, grad, grad_out, out, want_grad)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("key", list(_OTHERS))
def test_other_losses_on_a_named_compiled_backend(backend, key, other_spy):
    from fastloss import _backends

    if not _backends.available(backend):
        pytest.skip(f"backend {backend!r} is not available here")
    forward, fused, make_target, _ = _OTHERS[key]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 70)).astype(np.float32)  # above the one-thread size
    t = None if make_target is None else make_target(rng, x)
    loss = _call(forward, x, t, backend=backend)
    loss_g, grad = _call(fused, x, t, backend=backend, n_threads=2)
    assert other_spy == [True, True]
    np.testing.assert_array_equal(loss, _general_other(key, False, x, t, "mean" if key !=
                                  "kl_divergence" else "batchmean", backend=backend))
    want_loss, want_grad = _general_other(key, True, x, t, "mean" if key != "kl_divergence"
                                          else "batchmean", backend=backend)
    np.testing.assert_array_equal(loss_g, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("key, call", [
    ("binary_cross_entropy_with_logits", lambda f, x, t: f(x, t, pos_weight=np.ones(6))),
    ("binary_cross_entropy_with_logits", lambda f, x, t: f(x, t.astype(np.float64))),
    ("kl_divergence", lambda f, x, t: f(x, np.log(t), log_target=True)),
    ("mse_loss", lambda f, x, t: f(x, np.asfortranarray(t))),
    ("mse_loss", lambda f, x, t: f(x.reshape(2, 3, 6), t.reshape(2, 3, 6))),
    ("mse_loss", lambda f, x, t: f(x, t, backend="numpy")),
    ("entropy", lambda f, x, t: f(x[:, ::2])),
    ("softmax_mse[indices]", lambda f, x, t: f(x, np.array([0, 1, 2, 3, 4, -100]))),
])
def test_other_calls_take_the_general_path_and_agree(key, call, other_spy):
    """Options, a converted or strided target, N-D logits, another backend: the general
    driver, with the same answer as the float64 reference up to float32 rounding (or its
    error)."""
    forward = _OTHERS[key][0]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 6)).astype(np.float32)
    t = rng.dirichlet(np.ones(6), 6).astype(np.float32)
    if key == "softmax_mse[indices]":
        with pytest.raises(IndexError, match="-100"):
            call(forward, x, t)
    else:
        call(forward, x, t)
    assert not any(other_spy)


@pytest.mark.parametrize("bad, message", [
    (dict(reduction="avg"), "reduction"),
    (dict(n_threads=0), "n_threads"),
    (dict(out=np.empty((6, 5), np.float32)), "out"),
])
def test_other_losses_bad_arguments_raise_as_before(bad, message):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 6)).astype(np.float32)
    t = rng.standard_normal((6, 6)).astype(np.float32)
    with pytest.raises((TypeError, ValueError), match=message):
        fl.mse_loss_with_grad(x, t, **bad)
