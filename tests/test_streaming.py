"""Cross-entropy's streaming stores (fastloss.c, ``fl_streams``): a gradient of 16 MiB or
more with rows of 1024 classes or more, written into an ``out`` that is not the logits, is
written by streaming stores from a scratch row where the 512-bit kernels run (on a CPU
without AVX-512 the float ones write it with ordinary stores).  It must be the gradient of
the ordinary path bit for bit: the same logits computed in place (``out=logits``, which
never streams) give the reference here (the cases with class indices and neither label
smoothing nor a transform stream; the others, and the other losses, which do not, are held
to the same identity at the same size; with 16-bit logits every loss streams, BCE and MSE
tile by tile).  Row lengths that are not a multiple of the vector width, so that rows start
at every alignment, and an ``out`` off the element grid's 16-byte
alignment; poisoned, impossible and ignored rows; one and two threads; the 256-bit kernels
of CPUs without AVX-512 (``FASTLOSS_NO_AVX512=1``, in a child process)."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fastloss
from conftest import assert_close
from fastloss import _backends, reference

pytestmark = pytest.mark.skipif(not _backends.available("cython"),
                                reason="the cython backend is not built")

C = 4100  # four blocks and a partial one; rows at every 16-byte offset
BF16 = np.dtype(ml_dtypes.bfloat16).type
ROWS = {np.float32: 1040, np.float64: 520,  # just over 16 MiB of gradient
        BF16: 2050, np.float16: 2050}


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
    t = rng.random(x.shape)
    t[10, :2000] = 0.0
    return (t / t.sum(axis=1, keepdims=True)).astype(x.dtype)


def _cases(rng, x):
    n = x.shape[0]
    y = rng.integers(0, C, n)
    y[::7] = -100
    y[7], y[8] = 5, 4099
    t = _probs(rng, x)
    log_t = np.log(t.astype(np.float32)).astype(x.dtype)
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
        (fastloss.softmax_mse_with_grad, (y.clip(0),), {"reduction": "none",
                                                         "grad_output": go}),
        (fastloss.softmax_mse_with_grad, (t,), {"reduction": "none"}),
        (fastloss.entropy_with_grad, (), {}),
        (fastloss.entropy_with_grad, (), {"reduction": "none", "grad_output": go}),
        # BCE and MSE: a target of the logits' dtype, 16-bit tiles converted in L1
        (fastloss.binary_cross_entropy_with_logits_with_grad, (t,), {"pos_weight": w}),
        (fastloss.mse_loss_with_grad, (t,), {"reduction": "none"}),
    ]


def _off_grid(x):
    """An out= for x whose first element is one element past a 64-byte boundary."""
    buf = np.empty(x.size + 64 // x.itemsize, x.dtype)
    start = (-buf.ctypes.data % 64) // x.itemsize + 1
    return buf[start:start + x.size].reshape(x.shape)


def _results(dtype, n_threads, where):
    """Every case's (name, loss, gradient): into a separate out (``"out"``, streamed where
    it applies), into one off the cache-line grid (``"off_grid"``), or over the logits
    (``"in_place"``, never streamed)."""
    rng, x = _logits(dtype, 11)
    results = []
    for i, (fn, args, kwargs) in enumerate(_cases(rng, x)):
        if where == "in_place":
            logits = out = x.copy()
        else:
            logits, out = x, _off_grid(x) if where == "off_grid" else np.empty_like(x)
            out[...] = 7.0
        loss, grad = fn(logits, *args, **kwargs, out=out, backend="cython",
                        n_threads=n_threads)
        assert grad is out
        results.append((f"case {i}: {fn.__name__} {sorted(kwargs)}", np.asarray(loss), grad))
    return results


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for (name, loss, grad), (_, loss_ip, grad_ip) in zip(got, expected):
        # as float64: assert_array_equal does not match bfloat16 NaNs
        np.testing.assert_array_equal(np.asarray(loss, np.float64),
                                      np.asarray(loss_ip, np.float64), err_msg=name)
        assert grad.tobytes() == grad_ip.tobytes(), name


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16, np.float16])
def test_streamed_gradient_is_the_in_place_gradient(dtype, n_threads):
    """16-bit logits: every loss's gradient is rounded to 16 bits in one last pass over
    each piece, which streams (fl_half_store) for a large out that is not the logits."""
    expected = _results(dtype, n_threads, "in_place")
    _assert_same(_results(dtype, n_threads, "out"), expected)
    _assert_same(_results(dtype, n_threads, "off_grid"), expected)


_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np
import test_streaming as t
out = {}
for dtype in (np.float32, np.float64):
    for where in ("out", "off_grid", "in_place"):
        for i, (_, loss, grad) in enumerate(t._results(dtype, 2, where)):
            key = f"{np.dtype(dtype).name}_{where}_{i}"
            out["loss_" + key], out["grad_" + key] = loss, grad
np.savez(sys.argv[1], **out)
"""


def test_the_256_bit_kernels_into_out(tmp_path):
    """FASTLOSS_NO_AVX512=1: long rows on the 256-bit variant, which does not stream; into
    an ``out``, on the cache-line grid or off it, the same bits as the in-place call of the
    same variant (the two variants may differ in the last bits: their sums are in a
    different order)."""
    path = tmp_path / "narrow.npz"
    env = dict(os.environ, FASTLOSS_NO_AVX512="1")
    subprocess.run([sys.executable, "-c", _CHILD, str(path), os.path.dirname(__file__)],
                   check=True, env=env, timeout=300)
    narrow = np.load(path)
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        n_cases = len([k for k in narrow.files if k.startswith(f"loss_{name}_in_place_")])
        assert n_cases == len(_cases(*_logits(dtype, 0)))

        def read(where, name=name, n_cases=n_cases):
            return [(f"{name} {where} case {i}", narrow[f"loss_{name}_{where}_{i}"],
                     narrow[f"grad_{name}_{where}_{i}"]) for i in range(n_cases)]

        expected = read("in_place")
        _assert_same(read("out"), expected)
        _assert_same(read("off_grid"), expected)


def test_streamed_gradient_matches_the_reference():
    """A few rows of the streamed gradients against the float64 reference (the rows above
    are compared bit for bit with the ordinary path; this checks that path's values too)."""
    rng, x = _logits(np.float32, 12)
    y = rng.integers(0, C, x.shape[0])
    t = _probs(rng, x)
    rows = slice(20, 24)
    for fn, ref, target in ((fastloss.cross_entropy_with_grad, reference.cross_entropy, y),
                            (fastloss.kl_divergence_with_grad, reference.kl_divergence, t),
                            (fastloss.softmax_mse_with_grad, reference.softmax_mse, t),
                            (fastloss.softmax_mse_with_grad, reference.softmax_mse, y)):
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
