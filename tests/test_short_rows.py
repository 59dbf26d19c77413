"""The C kernels' short-row path (kernels.inc, ``FL_SHORT_C`` = 32 classes, blocks of
``FL_SHORT_R`` = 16 rows transposed into a tile): cross-entropy with class indices and the
cross-entropy gradient + Hessian, softmax MSE, entropy and KL.  Row counts that are not
multiples of the block, C at the threshold and one above it (the row-by-row path), C at 16
and 17 (the 512-bit transposes take 16 classes at a time), C at 4, 5, 8 and 9 (the 256-bit
ones take 4 doubles or 8 floats; where that does not divide C the last block overlaps the one
before it), ignored and poisoned rows inside
a block, and bit-identical results for any number of threads (the threads split rows at
points that are not multiples of the block)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastloss
from conftest import assert_close
from fastloss import _backends
from fastloss._grad_hess import cross_entropy_grad_hess

pytestmark = pytest.mark.skipif(not _backends.available("cython"),
                                reason="the cython backend is not built")

FLOATS = (np.float32, np.float64)
CLASSES = (1, 2, 4, 5, 8, 9, 10, 16, 17, 31, 32, 33)  # 4, 5, 8, 9 and 16, 17: the 256-bit
# transposes go 4 (double) and 8 (float) classes at a time, the 512-bit ones 16 (float)
ROWS = (1, 15, 16, 17, 53)


def _logits(rng, n, c, dtype, *, poison=True):
    x = (rng.standard_normal((n, c)) * 3.0).astype(dtype)
    if poison and n >= 17:  # inside the first and the second block
        x[3, 0] = np.nan
        x[5, c - 1] = np.inf
        x[6, :] = -np.inf
        x[16, c // 2] = np.nan
        if c > 1:
            x[7, 0] = -np.inf  # an impossible class in a normal row
            x[8, :] = -np.inf
            x[8, 1] = 2.0
    return x


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("n", ROWS)
def test_cross_entropy_short_rows(n, c, dtype):
    rng = np.random.default_rng(n * 100 + c)
    x = _logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    t[::4] = -100  # ignored rows inside every block
    if n >= 17 and c > 1:
        t[7] = 1  # not the impossible class
        t[8] = 1
    weight = rng.uniform(0.5, 2.0, c)
    no_first = weight.copy()
    no_first[0] = 0.0 if c > 1 else 1.0  # smoothing leaves out a class of weight 0
    for kwargs in ({}, {"weight": weight}, {"z_loss": 1e-2}, {"reduction": "none"},
                   {"weight": weight, "z_loss": 0.1, "reduction": "sum"},
                   {"label_smoothing": 0.1, "reduction": "none"},
                   {"label_smoothing": 0.2, "weight": weight, "z_loss": 0.05},
                   {"label_smoothing": 1.0, "weight": no_first, "reduction": "none"}):
        got = fastloss.cross_entropy_with_grad(x, t, backend="cython", **kwargs)
        want = fastloss.cross_entropy_with_grad(x, t, backend="numpy", **kwargs)
        for g, w in zip(got, want):
            assert_close(g, w, dtype, err_msg=str(kwargs))
    loss, grad = fastloss.cross_entropy_with_grad(x, t, backend="cython", reduction="none")
    ignored = t == -100
    assert np.all(loss[ignored] == 0) and np.all(grad[ignored] == 0)
    if n >= 17:
        for r in (5, 6, 16):
            if t[r] != -100:
                assert np.isnan(loss[r]) and np.all(np.isnan(grad[r]))
        if c > 1:
            assert np.isfinite(loss[7]) and grad[8, 0] == 0 and np.isclose(loss[8], 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", (10, 32, 33))
def test_cross_entropy_short_rows_lse_and_forward(c, dtype):
    """The raw kernel: lse of counted / ignored / poisoned rows, and the forward alone."""
    from fastloss._ext import _cython
    rng = np.random.default_rng(c)
    n = 37
    x = _logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    t[::5] = -100
    scale = rng.uniform(0.5, 1.5, n)
    outs = {}
    for name, backend in (("c", _cython), ("ref", _backends.resolve("numpy")[1])):
        loss, lse, grad = np.empty(n), np.empty(n), np.empty_like(x)
        backend.cross_entropy(x, t, None, -100, 0.0, 0.0, 1.0, 0.0, scale, loss, lse, grad, 1)
        loss_f = np.empty(n)
        backend.cross_entropy(x, t, None, -100, 0.0, 0.0, 1.0, 0.0, None, loss_f, None, None, 1)
        outs[name] = (loss, lse, grad, loss_f)
    for got, want in zip(outs["c"], outs["ref"]):
        assert_close(got, want, dtype)
    lse = outs["c"][1]
    assert np.all(lse[t == -100] == 0)
    assert lse[5] == np.inf or t[5] == -100
    assert np.isneginf(lse[6]) or t[6] == -100
    assert np.isnan(lse[3]) or t[3] == -100


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", (10, 32, 33))
def test_short_rows_bit_identical_over_threads(c, dtype):
    rng = np.random.default_rng(7)
    n = 40_003  # over the one-thread size, split at rows that are not multiples of 16
    x = _logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    t[::9] = -100
    for smoothing in (0.0, 0.1):
        first = fastloss.cross_entropy_with_grad(x, t, backend="cython", reduction="none",
                                                 label_smoothing=smoothing, n_threads=1)
        for threads in (2, 3, 7):
            again = fastloss.cross_entropy_with_grad(x, t, backend="cython", reduction="none",
                                                     label_smoothing=smoothing,
                                                     n_threads=threads)
            for a, b in zip(first, again):
                np.testing.assert_array_equal(a, b)
    t[t == -100] = 0
    first = cross_entropy_grad_hess(x, t, backend="cython", n_threads=1)
    for threads in (2, 3):
        again = cross_entropy_grad_hess(x, t, backend="cython", n_threads=threads)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("order", ("C", "F"))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("n", ROWS)
def test_grad_hess_short_rows(n, c, dtype, order):
    rng = np.random.default_rng(n * 100 + c + 1)
    x = _logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    w = rng.uniform(0.1, 2.0, n)
    for kwargs in ({}, {"sample_weight": w}, {"label_smoothing": 0.1, "hessian_scale": 2.0},
                   {"sample_weight": w, "min_hessian": 1e-3}):
        got = cross_entropy_grad_hess(x, t, backend="cython", order=order, **kwargs)
        want = cross_entropy_grad_hess(x, t, backend="numpy", order=order, **kwargs)
        for g, e in zip(got, want):
            assert g.flags.f_contiguous == (order == "F") or c == 1 or n == 1
            assert_close(g, e, dtype, err_msg=str(kwargs))
        if n >= 17:
            for r in (3, 5, 6, 16):
                assert np.all(np.isnan(got[0][r])) and np.all(np.isnan(got[1][r]))


def _probabilities(rng, n, c, dtype):
    t = rng.uniform(0.0, 1.0, (n, c))
    if c > 1:
        t[::3, 0] = 0.0
        t[7 % n, 0] = 0.0  # row 7 of _logits has x = -inf there
    return (t / t.sum(axis=1, keepdims=True)).astype(dtype)


def _log(p):
    with np.errstate(divide="ignore"):
        return np.log(p)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("n", ROWS)
def test_softmax_mse_entropy_and_kl_short_rows(n, c, dtype):
    """Softmax MSE (class indices and probabilities), entropy and KL (probabilities and log
    probabilities): the tile against the reference, forward and fused, every reduction and a
    per-row grad_output; poisoned rows NaN, a row with impossible classes finite with a zero
    gradient there (KL: where the target is 0 too)."""
    rng = np.random.default_rng(n * 100 + c + 2)
    x = _logits(rng, n, c, dtype)
    calls = {
        "softmax_mse_index": (fastloss.softmax_mse_with_grad, fastloss.softmax_mse,
                              (rng.integers(0, c, n),)),
        "softmax_mse_probs": (fastloss.softmax_mse_with_grad, fastloss.softmax_mse,
                              (_probabilities(rng, n, c, dtype),)),
        "entropy": (fastloss.entropy_with_grad, fastloss.entropy, ()),
        "kl": (fastloss.kl_divergence_with_grad, fastloss.kl_divergence,
               (_probabilities(rng, n, c, dtype),)),
        "kl_log_target": (functools.partial(fastloss.kl_divergence_with_grad, log_target=True),
                          functools.partial(fastloss.kl_divergence, log_target=True),
                          (_log(_probabilities(rng, n, c, dtype)),)),
    }
    go = rng.uniform(0.5, 2.0, n)
    for name, (with_grad, forward, args) in calls.items():
        for kwargs in ({}, {"reduction": "sum"}, {"reduction": "none"},
                       {"reduction": "none", "grad_output": go}):
            got = with_grad(x, *args, backend="cython", **kwargs)
            want = with_grad(x, *args, backend="numpy", **kwargs)
            for g, w in zip(got, want):
                assert_close(g, w, dtype, err_msg=f"{name} {kwargs}")
        loss = forward(x, *args, backend="cython", reduction="none")
        np.testing.assert_array_equal(loss, got[0], err_msg=name)  # forward = fused's loss
        if n >= 17:
            for r in (3, 5, 16):
                assert np.isnan(got[0][r]) and np.all(np.isnan(got[1][r])), name
            if c > 1 and not name.startswith("kl"):
                assert np.isfinite(got[0][7]) and got[1][7, 0] == 0, name
                assert np.isfinite(got[0][8]) and np.all(got[1][8, 2:] == 0), name
            if c > 1 and name.startswith("kl"):  # x = -inf where the target is 0: finite
                assert np.isfinite(got[0][7]) and got[1][7, 0] == 0, name
        # in place: the gradient over the logits
        y = x.copy()
        with_grad(y, *args, backend="cython", reduction="none", out=y)
        np.testing.assert_array_equal(y, with_grad(x, *args, backend="cython",
                                                   reduction="none")[1], err_msg=name)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("c", (10, 32))
def test_softmax_mse_entropy_and_kl_tiles_bit_identical_over_threads(c, dtype):
    rng = np.random.default_rng(8)
    n = 40_003
    x = _logits(rng, n, c, dtype)
    t = _probabilities(rng, n, c, dtype)
    for call in (lambda k: fastloss.entropy_with_grad(x, reduction="none", backend="cython",
                                                      n_threads=k),
                 lambda k: fastloss.softmax_mse_with_grad(x, t, reduction="none",
                                                          backend="cython", n_threads=k),
                 lambda k: fastloss.kl_divergence_with_grad(x, t, reduction="none",
                                                            backend="cython", n_threads=k)):
        first = call(1)
        for threads in (2, 3):
            for a, b in zip(first, call(threads)):
                np.testing.assert_array_equal(a, b)


_BOTH_WIDTHS = textwrap.dedent("""
    import sys
    import numpy as np
    import fastloss
    from fastloss._ext import _cython
    from fastloss._grad_hess import cross_entropy_grad_hess
    rng = np.random.default_rng(5)
    out = {"wide": np.array(_cython.wide_vectors())}
    for c in (10, 31, 300):
        for dtype in (np.float32, np.float64):
            x = (rng.standard_normal((53, c)) * 3.0).astype(dtype)
            x[3, 0] = np.nan
            x[20, c - 1] = np.inf
            t = rng.integers(0, c, 53)
            t[7] = -100
            name = f"{c}_{np.dtype(dtype).name}"
            out["loss_" + name], out["grad_" + name] = fastloss.cross_entropy_with_grad(
                x, t, reduction="none", backend="cython")
            t[7] = 0
            out["g_" + name], out["h_" + name] = cross_entropy_grad_hess(x, t, backend="cython")
            p = rng.uniform(0.0, 1.0, (53, c))
            p = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
            out["eloss_" + name], out["egrad_" + name] = fastloss.entropy_with_grad(
                x, reduction="none", backend="cython")
            out["mloss_" + name], out["mgrad_" + name] = fastloss.softmax_mse_with_grad(
                x, p, reduction="none", backend="cython")
            out["p_" + name] = p
            out["kloss_" + name], out["kgrad_" + name] = fastloss.kl_divergence_with_grad(
                x, p, reduction="none", backend="cython")
            out["x_" + name], out["t_" + name] = x, t
    np.savez(sys.argv[1], **out)
""")


def _has_x86_64_v4() -> bool:
    """Whether /proc/cpuinfo lists the features of x86-64-v4 (as GCC's
    ``__builtin_cpu_supports`` checks them: v2, v3, then AVX-512 F, BW, CD, DQ, VL)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:  # pragma: no cover - not Linux
        return False
    v2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
    v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
    v4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    return v2 | v3 | v4 <= set(flags)


def test_the_256_bit_kernels_give_the_same_rows(tmp_path):
    """FASTLOSS_NO_AVX512=1 runs the 256-bit kernels (what CPUs without AVX-512 get): the
    short-row tile gives the same bits as the 512-bit one (each lane runs the same
    arithmetic), long rows the reference's values."""
    results = {}
    for switch in ("1", "0"):
        path = tmp_path / f"no_avx512_{switch}.npz"
        env = dict(os.environ, FASTLOSS_NO_AVX512=switch)
        subprocess.run([sys.executable, "-c", _BOTH_WIDTHS, str(path)], check=True, env=env,
                       timeout=300)
        results[switch] = np.load(path)
    narrow, default = results["1"], results["0"]
    assert not narrow["wide"]  # the switch is obeyed ...
    assert default["wide"] == _has_x86_64_v4()  # ... and the default takes 512 bits if it can
    for key in narrow.files:
        if key.startswith(("x_", "t_", "p_", "wide")):
            continue
        if key.split("_")[1] != "300":
            np.testing.assert_array_equal(narrow[key], default[key], err_msg=key)
    for dtype in FLOATS:
        name = f"300_{np.dtype(dtype).name}"
        x, t = narrow["x_" + name], narrow["t_" + name]
        t_ignored = t.copy()
        t_ignored[7] = -100
        loss, grad = fastloss.cross_entropy_with_grad(x, t_ignored, reduction="none",
                                                      backend="numpy")
        assert_close(narrow["loss_" + name], loss, dtype)
        assert_close(narrow["grad_" + name], grad, dtype)
        for got, want in zip((narrow["g_" + name], narrow["h_" + name]),
                             cross_entropy_grad_hess(x, t, backend="numpy")):
            assert_close(got, want, dtype)
        p = narrow["p_" + name]
        for prefix, want in (("e", fastloss.entropy_with_grad(x, reduction="none",
                                                               backend="numpy")),
                             ("m", fastloss.softmax_mse_with_grad(x, p, reduction="none",
                                                                  backend="numpy")),
                             ("k", fastloss.kl_divergence_with_grad(x, p, reduction="none",
                                                                    backend="numpy"))):
            assert_close(narrow[prefix + "loss_" + name], want[0], dtype)
            assert_close(narrow[prefix + "grad_" + name], want[1], dtype)
