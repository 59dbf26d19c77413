"""The cuda backend on Numba's CUDA simulator (run by test_cuda.py with NUMBA_ENABLE_CUDASIM=1
and 8 threads per block, so that every row spans several threads and several blocks run).

Small shapes: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import fastloss as fl
from conftest import assert_close
from fastloss import reference
from fastloss._grad_hess import binary_cross_entropy_grad_hess, cross_entropy_grad_hess
from fastloss._registry import CASES, reference_rows

assert cuda.is_available() and fl.backends()["cuda"] == "available"

SHAPES = [(5, 7), (2, 3, 21)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cuda_matches_reference(case, dtype):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        logits, args, kwargs = case.inputs(rng, shape, dtype)
        rows, grad_rows = reference_rows(case, logits, args, kwargs)
        loss, grad = case.with_grad(logits, *args, **kwargs, reduction="none", backend="cuda")
        assert_close(loss, rows, dtype, err_msg=f"{case.id} {shape}")
        assert_close(grad, grad_rows, dtype, err_msg=f"{case.id} {shape}")
        for reduction in case.reductions[:1]:  # "mean" ("batchmean" for KL): the simulator is slow
            expected = case.with_grad(logits, *args, **kwargs, reduction=reduction,
                                      backend="numpy")
            got = case.with_grad(logits, *args, **kwargs, reduction=reduction, backend="cuda")
            forward = case.forward(logits, *args, **kwargs, reduction=reduction, backend="cuda")
            assert_close(got[0], expected[0], dtype)
            assert_close(forward, expected[0], dtype)
            assert_close(got[1], expected[1], dtype)


@pytest.mark.parametrize("case", [c for c in CASES if c.loss == "cross_entropy"] + [
    c for c in CASES if c.loss in ("kl_divergence", "entropy", "softmax_mse")][:2],
    ids=lambda c: c.id)
def test_device_arrays_stay_on_the_device(case):
    logits, args, kwargs = case.inputs(np.random.default_rng(1), (4, 19), np.float32)
    expected_loss, expected_grad = case.with_grad(logits, *args, **kwargs, backend="numpy")
    d_logits = cuda.to_device(logits)
    d_args = tuple(cuda.to_device(a) for a in args)
    loss, grad = case.with_grad(d_logits, *d_args, **kwargs)  # "auto" picks cuda
    assert not isinstance(grad, np.ndarray) and hasattr(grad, "copy_to_host")
    assert_close(loss, expected_loss, np.float32)
    assert_close(grad.copy_to_host(), expected_grad, np.float32)
    out = cuda.device_array_like(d_logits)
    loss, grad = case.with_grad(d_logits, *d_args, **kwargs, out=out)
    assert grad is out
    assert_close(out.copy_to_host(), expected_grad, np.float32)


def test_edge_cases_on_the_gpu():
    x = np.array([[0.5, -np.inf, 1.0, -np.inf], [-np.inf, 2.0, 0.0, 1.0],
                  [np.nan, 1.0, 2.0, 3.0], [1e30, -1e30, 0.0, 0.0],
                  [-np.inf] * 4, [np.nan] * 4], dtype=np.float32)
    target = np.array([2, 0, 1, 0, 1, -100])
    loss, grad = fl.cross_entropy_with_grad(x, target, reduction="none", backend="cuda")
    expected_loss, expected_grad = fl.cross_entropy_with_grad(x, target, reduction="none",
                                                              backend="numpy")
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(expected_loss))
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7)
    assert grad[0, 1] == 0.0 and grad[0, 3] == 0.0  # impossible classes
    assert loss[1] == np.inf and np.all(np.isfinite(grad[1]))  # impossible target
    assert np.all(grad[5] == 0.0) and loss[5] == 0.0  # ignored NaN row
    mean, g = fl.cross_entropy_with_grad(x[:0], target[:0], backend="cuda")
    assert np.isnan(mean) and g.shape == (0, 4)


@pytest.mark.parametrize("options", [dict(softcap=5.0), dict(temperature=0.5, z_loss=1e-3),
                                     dict(softcap=5.0, z_loss=1e-3, label_smoothing=0.1)],
                         ids=["softcap", "temperature,z_loss", "softcap,z_loss,smoothing"])
def test_options_edge_cases_on_the_gpu(options):
    """softcap keeps -inf at -inf and makes +inf finite; lse (return_z_loss) of poisoned and
    ignored rows; the same rows as the numpy backend."""
    x = np.array([[0.5, -np.inf, 1.0, -np.inf], [-np.inf, 2.0, 0.0, 1.0],
                  [np.nan, 1.0, 2.0, 3.0], [np.inf, -1e30, 0.0, 0.0],
                  [-np.inf] * 4, [np.nan] * 4, [30.0, -30.0, 0.5, 0.0]], dtype=np.float32)
    target = np.array([2, 0, 1, 0, 1, -100, 3])
    for in_place in (False, True):
        results = []
        for backend in ("cuda", "numpy"):
            logits = x.copy()
            results.append(fl.cross_entropy_with_grad(
                logits, target, **options, reduction="none", return_z_loss=True,
                out=logits if in_place else None, backend=backend))
        got, expected = results
        for a, b in zip(got, expected):
            assert_close(a, b, np.float32)
    loss, z, grad = got
    assert grad[0, 1] == 0.0 and grad[0, 3] == 0.0  # impossible classes
    assert loss[5] == 0.0 and z[5] == 0.0 and np.all(grad[5] == 0.0)  # ignored NaN row


def test_bit_identical_runs():
    logits, args, kwargs = CASES[4].inputs(np.random.default_rng(2), (6, 45), np.float32)
    first = CASES[4].with_grad(logits, *args, **kwargs, backend="cuda")
    second = CASES[4].with_grad(logits, *args, **kwargs, backend="cuda")
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].tobytes() == second[1].tobytes()


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_transforms(name):
    x = np.random.default_rng(3).standard_normal((3, 17)) * 4
    x[0, :5] = -np.inf
    assert_close(getattr(fl, name)(x, backend="cuda"), getattr(fl, name)(x, backend="numpy"),
                 np.float64)


def test_bad_device_out_is_refused():
    d = cuda.to_device(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"out has shape \(3, 5\) \(expected \(3, 4\)\)"):
        fl.cross_entropy_with_grad(d, np.array([0, 1, 2]),
                                   out=cuda.device_array((3, 5), np.float32))
    with pytest.raises(TypeError, match="out must be a GPU array when logits is one"):
        fl.cross_entropy_with_grad(d, np.array([0, 1, 2]), out=np.zeros((3, 4), np.float32))
    with pytest.raises(IndexError, match="target 7 at position 2 is out of range"):
        fl.cross_entropy_with_grad(d, cuda.to_device(np.array([0, 1, 7])))


# ------------------------------------------------------------------ grad + hess (boosting)

def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_grad_hess_matches_reference(dtype, kind, order):
    rng = np.random.default_rng(4)
    n, k = 6, 19  # rows span several 8-thread blocks' worth of classes
    x = (rng.standard_normal((n, k)) * 3).astype(dtype)
    x[1, 3] = -np.inf  # an impossible class
    y = rng.integers(0, k, n)
    t = rng.uniform(0, 1, (n, k))
    target = y if kind == "index" else (t / t.sum(axis=1, keepdims=True) * 0.8).astype(dtype)
    w = rng.uniform(0.1, 2.0, n)
    options = dict(sample_weight=w, label_smoothing=0.1, hessian_scale=2.0, min_hessian=1e-3)
    grad, hess = cross_entropy_grad_hess(x, target, order=order, backend="cuda", **options)
    expected = reference.cross_entropy_grad_hess(x, target, w, 0.1, 2.0, 1e-3)
    assert_close(_host(grad), expected[0], dtype)
    assert_close(_host(hess), expected[1], dtype)
    out = (np.full(x.shape, 7.0, dtype, order=order), np.full(x.shape, 7.0, dtype, order=order))
    got = cross_entropy_grad_hess(x, target, out=out, order=order, backend="cuda", **options)
    assert got[0] is out[0] and got[1] is out[1]
    assert_close(out[0], expected[0], dtype)
    assert_close(out[1], expected[1], dtype)


def test_grad_hess_special_values_and_device_arrays():
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, nan, 1.0], [0.0, inf, 1.0], [0.0, -inf, 0.0], [-inf, -inf, -inf],
                  [1e30, 1e30, -1e30]])
    y = np.array([0, 0, 1, 0, 2])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    grad, hess = (_host(a) for a in cross_entropy_grad_hess(
        x, y, sample_weight=w, min_hessian=1e-3, backend="cuda"))
    for row in (0, 1, 3):
        assert np.isnan(grad[row]).all() and np.isnan(hess[row]).all()
    np.testing.assert_allclose(grad[2], [1.0, -2.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(hess[2], [0.5, 1e-3, 0.5], rtol=1e-12)
    np.testing.assert_allclose(grad[4], [0.5, 0.5, -1.0], rtol=1e-12)
    np.testing.assert_allclose(hess[4], [0.25, 0.25, 1e-3], rtol=1e-12)
    # GPU arrays stay on the GPU, in either order
    x32 = np.random.default_rng(5).standard_normal((5, 11)).astype(np.float32)
    expected = reference.cross_entropy_grad_hess(x32, y)
    for order in ("C", "F"):
        grad, hess = cross_entropy_grad_hess(cuda.to_device(x32), cuda.to_device(y),
                                             order=order)  # "auto" picks cuda
        assert not isinstance(grad, np.ndarray) and hasattr(grad, "copy_to_host")
        assert_close(grad.copy_to_host(), expected[0], np.float32)
        assert_close(hess.copy_to_host(), expected[1], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_grad_hess_matches_reference(dtype, weighted):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(37) * 6).astype(dtype)
    x[:4] = [np.inf, -np.inf, np.nan, 800.0]
    t = rng.uniform(0, 1, 37).astype(dtype)
    w = rng.uniform(0.1, 2.0, 37) if weighted else None
    grad, hess = binary_cross_entropy_grad_hess(x, t, sample_weight=w, hessian_scale=1.5,
                                                min_hessian=1e-4, backend="cuda")
    expected = reference.binary_cross_entropy_grad_hess(x, t, w, 1.5, 1e-4)
    assert_close(_host(grad), expected[0], dtype)
    assert_close(_host(hess), expected[1], dtype)


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# without torch the torch case is not generated (a skip would fail the suite's summary check)
@pytest.mark.parametrize("library", ["module"] + (["torch"] if _torch_installed() else []))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_library_path_on_the_cuda_backend(library, reduction,
                                                               monkeypatch):
    """linear_cross_entropy's code for GPU arrays (their library's products, the
    cross-entropy on the cuda backend), run on host arrays: NumPy through _ModuleArrays,
    torch CPU tensors through torch's products.  The same results as the host path."""
    from fastloss import _linear

    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((9, 5)), rng.standard_normal((13, 5)), rng.standard_normal(13)
    y = rng.integers(0, 13, 9)
    y[2] = -100
    go = rng.standard_normal(9) if reduction == "none" else 0.5
    kw = dict(reduction=reduction, label_smoothing=0.1, grad_output=go, chunk_size=4)
    want = _linear.linear_cross_entropy_with_grad(x, w, y, linear_bias=b, backend="numpy", **kw)
    if library == "module":
        def convert(a):
            return a
    else:
        import torch

        convert = torch.from_numpy
    monkeypatch.setattr(_linear, "_LIBRARY_PATH_ON_HOST", True)
    got = _linear.linear_cross_entropy_with_grad(convert(x), convert(w), convert(y),
                                                 linear_bias=convert(b), backend="cuda", **kw)
    assert type(got[1]) is type(convert(x))
    for g, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n_classes", [7, 300])
def test_gradient_in_place_over_device_logits(n_classes):
    """out= the device logits themselves (what linear_cross_entropy's GPU path does with its
    chunk buffer): the same loss and gradient as the numpy backend."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, n_classes)) * 3).astype(np.float32)
    t = rng.integers(0, n_classes, 6)
    t[1] = -100
    kw = dict(reduction="none", label_smoothing=0.1, grad_output=np.linspace(0.5, 2.0, 6))
    want = fl.cross_entropy_with_grad(x, t, backend="numpy", **kw)
    d = cuda.to_device(x)
    loss, grad = fl.cross_entropy_with_grad(d, t, out=d, **kw)
    assert_close(loss, want[0], np.float32)
    assert_close(d.copy_to_host(), want[1], np.float32)
