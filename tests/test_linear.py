"""linear_cross_entropy(_with_grad) against the unfused computation in float64.

The oracle is PyTorch autograd on ``cross_entropy(input @ W.T + b, target)`` when torch is
installed (it must be when ``FASTLOSS_REQUIRE_TORCH`` is set), else the same computation in
NumPy from :mod:`fastloss.reference`; the two oracles are checked against each other.

Tolerances.  The expected values are computed in float64 from the same (float32 or float64)
inputs.  Every gradient entry is a sum of K products (K = H for the logits, V for
``grad_input``, N for ``grad_linear_weight`` and ``grad_linear_bias``) of the logits'
gradient ``g`` with the input or the weight.  Its error is bounded by the error of ``g``
(the cross-entropy contract: relative ``eps`` = 1e-5 in float32, 1e-12 in float64, plus the
absolute 1e-6 on ``g / scale``) and the rounding of the sum (at most about K * u of the sum of
the absolute terms; u = 6e-8 in float32, 1.1e-16 in float64), both relative to the sum of the
*absolute* terms, not to the result, which cancels.  So each entry is checked as
``|got - want| <= eps * |want| + 2 * eps * M`` with ``M`` the same product of absolute values
(``|g| @ |W|``, ``|g|.T @ |x|``...), ``|g|`` padded by a tenth of the row's scale for the
absolute part of the contract.  The loss is checked against ``eps`` relative plus ``2 * eps``
times the largest logit magnitude ``|x| @ |W|.T + |b|`` (an error of a logit moves the row's
loss by at most the row's total target weight times that error).
"""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest

import fastloss
from fastloss import _linear, reference
from fastloss._linear import (
    default_chunk_size,
    linear_cross_entropy,
    linear_cross_entropy_with_grad,
)

try:
    import torch
except ImportError:
    if os.environ.get("FASTLOSS_REQUIRE_TORCH"):
        raise
    torch = None

try:
    import scipy.linalg.blas  # noqa: F401
    HAS_SCIPY = True
except ImportError:
    HAS_SCIPY = False

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

EPS = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@pytest.fixture(autouse=True)
def _one_blas_thread(request):
    """BLAS on one thread, except for the tests that ask for ``all_blas_threads``.

    The results do not depend on it beyond the last bits (which the tolerances cover), and
    OpenBLAS's idle threads spin between the products of a chunk: on a busy machine with few
    cores, that makes these small problems 10 to 100 times slower.
    """
    if threadpool_limits is None or "all_blas_threads" in request.fixturenames:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def all_blas_threads():
    """BLAS with its default thread count (all cores)."""


@pytest.fixture(params=[True, False] if HAS_SCIPY else [False], ids=lambda s: f"scipy={s}")
def blas_path(request, monkeypatch):
    """The products on SciPy's BLAS wrappers (gemm with beta) or on NumPy's matmul."""
    monkeypatch.setattr(_linear, "USE_SCIPY_BLAS", request.param)
    return request.param


# --------------------------------------------------------------------------------------------
# the oracles


def _transform(logits, softcap, temperature):
    if softcap is None:
        z, dz = logits, np.ones_like(logits)
    else:
        t = np.tanh(logits / softcap)
        z, dz = softcap * t, 1.0 - t * t
    return z / temperature, dz / temperature


def _counted_and_denominator(target, n_classes, weight, ignore_index, soft):
    if soft:
        counted = np.ones(target.size // n_classes, dtype=bool)
        return counted, counted.size
    t = target.reshape(-1)
    counted = t != ignore_index
    denominator = (np.asarray(weight, np.float64)[t[counted]].sum() if weight is not None
                   else np.count_nonzero(counted))
    return counted, denominator


def _numpy_unfused(x, w, b, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                   reduction="mean", grad_output=None, z_loss=0.0, softcap=None,
                   temperature=1.0):
    """float64 NumPy: (loss, d loss / d logits (N, V), per-row gradient scale (N,))."""
    n_classes, n_features = w.shape
    x2 = np.asarray(x, np.float64).reshape(-1, n_features)
    logits = x2 @ np.asarray(w, np.float64).T
    if b is not None:
        logits = logits + np.asarray(b, np.float64)
    soft = np.asarray(target).dtype.kind == "f"
    t = (np.asarray(target, np.float64).reshape(-1, n_classes) if soft
         else np.asarray(target).reshape(-1))
    z, dz = _transform(logits, softcap, temperature)
    ce, dce = reference.cross_entropy(z, t, weight, ignore_index, label_smoothing)
    counted, denominator = _counted_and_denominator(target, n_classes, weight, ignore_index,
                                                    soft)
    lse = reference.logsumexp(z)
    zt = np.where(counted, z_loss * lse * lse, 0.0)
    dzt = np.where(counted[:, None], 2.0 * z_loss * lse[:, None] * reference.softmax(z), 0.0)
    n = x2.shape[0]
    go = np.ones(n) if reduction == "none" else 1.0
    if grad_output is not None:
        go = np.asarray(grad_output, np.float64).reshape(-1) if reduction == "none" \
            else float(grad_output)
    if reduction == "mean":
        n_counted = np.count_nonzero(counted)
        loss = ce.sum() / denominator + (zt.sum() / n_counted if z_loss else 0.0)
        s_ce = np.full(n, go / denominator)
        s_z = np.full(n, go / n_counted if z_loss else 0.0)
    elif reduction == "sum":
        loss, s_ce, s_z = ce.sum() + zt.sum(), np.full(n, go), np.full(n, go)
    else:
        loss, s_ce, s_z = ce + zt, go, go
    g = (s_ce[:, None] * dce + s_z[:, None] * dzt) * dz
    return loss, g, np.maximum(np.abs(s_ce), np.abs(s_z))


def _torch_unfused(x, w, b, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                   reduction="mean", grad_output=None, z_loss=0.0, softcap=None,
                   temperature=1.0):
    """The same with PyTorch autograd (its own cross-entropy, denominators and gradients)."""
    F = torch.nn.functional
    n_classes, n_features = w.shape
    xt = torch.tensor(np.asarray(x, np.float64).reshape(-1, n_features))
    wt = torch.tensor(np.asarray(w, np.float64))
    logits = (xt @ wt.T).requires_grad_()
    z = logits if b is None else logits + torch.tensor(np.asarray(b, np.float64))
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    soft = np.asarray(target).dtype.kind == "f"
    tt = torch.tensor(np.asarray(target, np.float64).reshape(-1, n_classes) if soft
                      else np.asarray(target, np.int64).reshape(-1))
    wt_class = None if weight is None else torch.tensor(np.asarray(weight, np.float64))
    ce = F.cross_entropy(z, tt, weight=wt_class, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, reduction=reduction)
    counted = torch.ones(z.shape[0], dtype=torch.bool) if soft else tt != ignore_index
    zt = torch.where(counted, z_loss * torch.logsumexp(z, -1) ** 2, 0.0)
    if z_loss:
        ce = ce + {"mean": lambda: zt.sum() / counted.sum(), "sum": zt.sum,
                   "none": lambda: zt}[reduction]()
    n = z.shape[0]
    if reduction == "none":
        go = torch.ones(n) if grad_output is None else torch.tensor(
            np.asarray(grad_output, np.float64).reshape(-1))
        (ce * go).sum().backward()
    else:
        (ce * (1.0 if grad_output is None else float(grad_output))).backward()
    _, denominator = _counted_and_denominator(target, n_classes, weight, ignore_index, soft)
    go_rows = np.broadcast_to(go.numpy() if reduction == "none"
                              else (1.0 if grad_output is None else float(grad_output)), (n,))
    scale = np.abs(go_rows) / (denominator if reduction == "mean" else 1.0)
    if reduction == "mean" and z_loss:
        scale = np.maximum(scale, np.abs(go_rows) / counted.sum().item())
    return ce.detach().numpy(), logits.grad.numpy(), scale


def unfused(x, w, b, target, **options):
    """Expected ``(loss, grad_input, grad_w, grad_b)`` in float64 and their magnitudes."""
    oracle = _torch_unfused if torch is not None else _numpy_unfused
    loss, g, scale = oracle(x, w, b, target, **options)
    n_classes, n_features = w.shape
    x2 = np.asarray(x, np.float64).reshape(-1, n_features)
    w64 = np.asarray(w, np.float64)
    expected = (np.asarray(loss).reshape(np.shape(x)[:-1]) if options.get("reduction") == "none"
                else loss, (g @ w64).reshape(np.shape(x)), g.T @ x2,
                None if b is None else g.sum(axis=0))
    a = np.abs(g) + 0.1 * scale[:, None]
    logit_mag = np.abs(x2) @ np.abs(w64).T + (0.0 if b is None else np.abs(b))
    max_weight = 1.0 if options.get("weight") is None else np.abs(options["weight"]).max()
    row_loss_mag = logit_mag.max(axis=1, initial=0.0) * max_weight * (
        1 + 2 * options.get("z_loss", 0.0) * logit_mag.max(initial=0.0))
    if options.get("reduction") == "none":
        loss_mag = row_loss_mag.reshape(np.shape(x)[:-1])
    else:
        loss_mag = row_loss_mag.max(initial=0.0) * (
            x2.shape[0] if options.get("reduction") == "sum" else 1.0)
    # softcap and temperature multiply a logit's error by up to 1 / temperature
    amplify = max(1.0, 1.0 / options.get("temperature", 1.0))
    loss_mag = loss_mag * amplify
    a = a * amplify
    magnitudes = (loss_mag, (a @ np.abs(w64)).reshape(np.shape(x)), a.T @ np.abs(x2),
                  None if b is None else a.sum(axis=0))
    return expected, magnitudes


def assert_matches(got, expected, magnitudes, dtype, names=("loss", "grad_input",
                                                             "grad_linear_weight",
                                                             "grad_linear_bias")):
    eps = EPS[np.dtype(dtype)]
    for name, g, e, m in zip(names, got, expected, magnitudes):
        if e is None:
            assert g is None, name
            continue
        assert np.asarray(g).dtype == dtype, name
        assert np.shape(g) == np.shape(e), name
        g64, e64 = np.asarray(g, np.float64), np.asarray(e, np.float64)
        err = np.abs(g64 - e64)
        bound = eps * np.abs(e64) + 2 * eps * np.asarray(m)
        bad = ~(err <= bound)
        if np.any(bad):
            i = np.unravel_index(np.flatnonzero(bad)[0], np.shape(bad)) if np.ndim(bad) else ()
            raise AssertionError(
                f"{name}: {np.count_nonzero(bad)} entries off; first at {i}: got "
                f"{g64[i]!r}, want {e64[i]!r}, error {err[i]:.3g} > bound {bound[i]:.3g}")


# --------------------------------------------------------------------------------------------
# inputs

N, H, V = 13, 6, 11
RNG_SEED = 20261121


def make(dtype=np.float64, n=N, h=H, v=V, *, target="index", seed=RNG_SEED, bias=True,
         batch=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if batch is None else tuple(batch)
    x = rng.standard_normal(shape + (h,)).astype(dtype)
    w = (rng.standard_normal((v, h)) * 1.5 / math.sqrt(h)).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    if target == "probs":
        y = rng.dirichlet(np.full(v, 0.5), size=shape).astype(dtype)
    else:
        y = rng.integers(0, v, size=shape)
        flat = y.reshape(-1)
        if flat.size > 3:
            flat[1] = -100  # an ignored row
    return x, w, b, y


CASES = {
    "index": dict(),
    "ignore_index=3": dict(ignore_index=3),
    "weight": dict(weight="w"),
    "smoothing": dict(label_smoothing=0.2),
    "weight+smoothing": dict(weight="w", label_smoothing=0.1),
    "probs": dict(target="probs"),
    "probs+weight+smoothing": dict(target="probs", weight="w", label_smoothing=0.3),
}


def case_inputs(case, dtype, bias, reduction, seed=RNG_SEED):
    options = dict(CASES[case])
    x, w, b, y = make(dtype, target=options.pop("target", "index"), bias=bias, seed=seed)
    if options.get("weight") == "w":
        options["weight"] = np.random.default_rng(seed + 1).uniform(0.2, 2.0, V)
    if options.get("ignore_index") == 3:
        y = np.where(y == -100, 3, y)
    options["reduction"] = reduction
    options["grad_output"] = (np.random.default_rng(seed + 2).standard_normal(y.shape[:1])
                              if reduction == "none" else 1.5)
    return x, w, b, y, options


# --------------------------------------------------------------------------------------------
# against the unfused computation


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_unfused(case, reduction, bias, dtype, backend):
    x, w, b, y, options = case_inputs(case, dtype, bias, reduction)
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=4,
                                         backend=backend, **options)
    expected, magnitudes = unfused(x, w, b, y, **options)
    assert_matches(got, expected, magnitudes, dtype)
    forward_options = {k: v for k, v in options.items() if k != "grad_output"}
    loss = linear_cross_entropy(x, w, y, linear_bias=b, chunk_size=4, backend=backend,
                                **forward_options)
    assert_matches((loss,), expected[:1], magnitudes[:1], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_on_either_blas(dtype, blas_path):
    x, w, b, y, options = case_inputs("weight+smoothing", dtype, True, "mean")
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=5, **options)
    assert_matches(got, *unfused(x, w, b, y, **options), dtype)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 12, 13, 14, 1000, None])
def test_chunk_sizes(chunk_size, blas_path):
    """Chunks that do not divide N, one chunk larger than N, the default chunk."""
    x, w, b, y, options = case_inputs("weight", np.float64, True, "mean")
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=chunk_size,
                                         **options)
    assert_matches(got, *unfused(x, w, b, y, **options), np.float64)


def test_default_chunk_size(monkeypatch):
    assert default_chunk_size(32768, np.float32) == 512  # 64 MiB
    assert default_chunk_size(128256, np.float32) == 256  # at least 256 rows: 125 MiB
    assert default_chunk_size(32768, np.float64) == 256
    assert default_chunk_size(262144, np.float64) == 128  # 256 rows would take 512 MiB
    assert default_chunk_size(10**9, np.float64) == 1
    # the default comes from the budget: 3 rows of V float64 logits -> chunks of 3 rows
    monkeypatch.setattr(_linear, "CHUNK_BYTES", 3 * V * 8)
    monkeypatch.setattr(_linear, "MIN_CHUNK_ROWS", 1)
    calls = []
    real = fastloss._api.cross_entropy_with_grad

    def spy(logits, *args, **kwargs):
        calls.append(logits.shape[0])
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(fastloss._api, "cross_entropy_with_grad", spy)
    x, w, b, y = make()
    linear_cross_entropy_with_grad(x, w, y, linear_bias=b)
    assert calls == [3, 3, 3, 3, 1]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["index", "probs"])
def test_single_row(reduction, target, backend):
    for batch in [(1,), ()]:  # N = 1, and 1-D input (H,) with a scalar target
        x, w, b, y = make(target=target, batch=batch)
        go = np.asarray(-0.7).reshape(batch) if reduction == "none" else 2.0
        options = dict(reduction=reduction, grad_output=go)
        got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, backend=backend,
                                             **options)
        assert got[1].shape == x.shape
        assert_matches(got, *unfused(x, w, b, y, **options), np.float64)


@pytest.mark.parametrize("target", ["index", "probs"])
def test_batch_dims(target):
    x, w, b, y = make(target=target, batch=(2, 3))
    if target == "index":
        y[0, 1] = -100
    go = np.arange(6.0).reshape(2, 3) - 2
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, reduction="none",
                                         grad_output=go, chunk_size=4)
    assert got[0].shape == (2, 3) and got[1].shape == (2, 3, H)
    assert_matches(got, *unfused(x, w, b, y, reduction="none", grad_output=go), np.float64)


def test_ignored_rows_have_zero_loss_and_gradient(backend):
    x, w, b, y = make(np.float32)
    y[[0, 4, 5]] = -100
    loss, gx, _, _ = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, reduction="none",
                                                   chunk_size=3, backend=backend)
    assert np.all(loss[[0, 1, 4, 5]] == 0) and np.all(gx[[0, 1, 4, 5]] == 0)
    assert np.all(loss[2:4] > 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored(reduction, backend):
    """As fastloss.cross_entropy: "mean" is NaN (0/0) with zero gradients."""
    x, w, b, y = make(np.float32)
    y[:] = -100
    loss, gx, gw, gb = linear_cross_entropy_with_grad(x, w, y, linear_bias=b,
                                                      reduction=reduction, chunk_size=5,
                                                      backend=backend)
    want = fastloss.cross_entropy(x @ w.T + b, y, reduction=reduction, backend=backend)
    np.testing.assert_array_equal(loss, want)
    assert (math.isnan(loss) if reduction == "mean" else np.all(loss == 0))
    assert not gx.any() and not gw.any() and not gb.any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    x, w, b, y = make(n=0)
    loss, gx, gw, gb = linear_cross_entropy_with_grad(x, w, y, linear_bias=b,
                                                      reduction=reduction)
    want = fastloss.cross_entropy(np.zeros((0, V)), y, reduction=reduction)
    np.testing.assert_array_equal(loss, want)
    assert gx.shape == (0, H) and not gw.any() and not gb.any()


def test_default_grad_output_is_one():
    x, w, b, y = make()
    for reduction, one in [("mean", 1.0), ("sum", 1.0), ("none", np.ones(N))]:
        a = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, reduction=reduction)
        c = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, reduction=reduction,
                                           grad_output=one)
        for u, v in zip(a, c):
            np.testing.assert_array_equal(u, v)


def test_layouts_and_read_only_inputs():
    """Fortran-ordered, strided and read-only arrays are valid, and change nothing."""
    x, w, b, y = make()
    x_strided = np.zeros((N, 2 * H))[:, ::2]
    x_strided[...] = x
    w_fortran = np.asfortranarray(w)
    w_strided = np.zeros((V, H, 2))[..., 0]
    w_strided[...] = w
    b_strided = np.repeat(b, 2)[::2]
    for xx, ww, bb in [(x_strided, w_fortran, b_strided), (np.asfortranarray(x), w_strided, b)]:
        for a in (xx, ww, bb):
            a.flags.writeable = False
        got = linear_cross_entropy_with_grad(xx, ww, y, linear_bias=bb, chunk_size=4)
        assert_matches(got, *unfused(x, w, b, y), np.float64)


@needs_torch
@pytest.mark.skipif(torch is None or not hasattr(torch.nn.functional, "linear_cross_entropy"),
                    reason="torch has no linear_cross_entropy")
@pytest.mark.parametrize("chunked", [False, True])
def test_matches_torch_linear_cross_entropy(chunked):
    # (torch's chunked path takes no label smoothing)
    x, w, b, y, options = case_inputs("weight", np.float64, True, "mean")
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    kwargs = {"options": torch.nn.LinearCrossEntropyOptions()} if chunked else {}
    loss = torch.nn.functional.linear_cross_entropy(
        leaves[0], leaves[1], torch.tensor(y), linear_bias=leaves[2],
        weight=torch.tensor(options["weight"]), ignore_index=-100, **kwargs)
    (loss * 1.5).backward()
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=4, **options)
    want = [loss.detach().numpy()] + [t.grad.numpy() for t in leaves]
    for u, v in zip(got, want):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("options", [
    dict(reduction="mean", weight="w", label_smoothing=0.1),
    dict(reduction="none", z_loss=0.01, softcap=3.0, temperature=0.7),
    dict(reduction="mean", weight="w", z_loss=0.02, softcap=2.0, temperature=1.3),
    dict(reduction="sum", target="probs", z_loss=0.03, temperature=2.0),
], ids=["plain", "none+options", "mean+weights+options", "sum+probs+options"])
def test_numpy_oracle_matches_torch(options):
    """The NumPy oracle (used when torch is absent) is itself right, options included."""
    options = dict(options)
    x, w, b, y = make(target=options.pop("target", "index"))
    if options.get("weight") == "w":
        options["weight"] = np.linspace(0.5, 2.0, V)
    lt, gt, st = _torch_unfused(x, w, b, y, **options)
    ln, gn, sn = _numpy_unfused(x, w, b, y, **options)
    np.testing.assert_allclose(ln, lt, rtol=1e-12)
    np.testing.assert_allclose(gn, gt, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sn, st, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# z_loss, softcap, temperature: passed through to fastloss.cross_entropy_with_grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    dict(z_loss=1e-2), dict(softcap=2.5), dict(temperature=0.6),
    dict(z_loss=3e-2, softcap=4.0, temperature=1.7),
], ids=["z_loss", "softcap", "temperature", "all"])
@pytest.mark.parametrize("case", ["index", "weight+smoothing", "probs"])
def test_options_match_unfused(case, options, reduction, dtype, backend):
    """With class weights the mean's two denominators differ (z-term: the counted rows)."""
    x, w, b, y, base = case_inputs(case, dtype, True, reduction)
    base.update(options)
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=4,
                                         backend=backend, **base)
    expected, magnitudes = unfused(x, w, b, y, **base)
    assert_matches(got, expected, magnitudes, dtype)
    base.pop("grad_output")
    loss = linear_cross_entropy(x, w, y, linear_bias=b, chunk_size=4, backend=backend, **base)
    assert_matches((loss,), expected[:1], magnitudes[:1], dtype)


def test_options_are_passed_to_every_chunk(monkeypatch):
    """Every chunk gets the options as given, z_loss times D / n_counted for "mean"."""
    seen = []
    real = fastloss._api.cross_entropy_with_grad

    def spy(logits, target, *, z_loss, softcap, temperature, **kwargs):
        seen.append(dict(z_loss=z_loss, softcap=softcap, temperature=temperature))
        return real(logits, target, **kwargs)

    monkeypatch.setattr(fastloss._api, "cross_entropy_with_grad", spy)
    monkeypatch.setattr(fastloss._api, "cross_entropy", spy)
    x, w, b, y = make()  # one ignored row: 12 counted
    weight = np.linspace(0.5, 2.0, V)
    denominator = weight[y[y != -100]].sum()
    defaults = dict(z_loss=0.0, softcap=None, temperature=1.0)
    for options, reduction, want in [
        ({}, "mean", defaults),
        (dict(z_loss=0.1, softcap=3.0, temperature=0.5), "sum",
         dict(z_loss=0.1, softcap=3.0, temperature=0.5)),
        (dict(z_loss=0.1), "none", {**defaults, "z_loss": 0.1}),
        (dict(z_loss=0.1), "mean", {**defaults, "z_loss": 0.1 * denominator / 12}),
    ]:
        seen.clear()
        linear_cross_entropy_with_grad(x, w, y, weight=weight, reduction=reduction,
                                       chunk_size=5, **options)
        assert len(seen) == 3  # one call per chunk
        for s in seen:
            assert s.keys() == want.keys()
            for k in want:
                assert s[k] == (want[k] if want[k] is None else pytest.approx(want[k],
                                                                              rel=1e-15))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(z_loss=-0.1), ValueError, "z_loss"),
    (dict(z_loss="a"), TypeError, "z_loss"),
    (dict(z_loss=True), TypeError, "z_loss"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
])
def test_bad_options(kwargs, error, match):
    x, w, b, y = make()
    with pytest.raises(error, match=match):
        linear_cross_entropy_with_grad(x, w, y, **kwargs)


# --------------------------------------------------------------------------------------------
# bad inputs: those of cross_entropy, and the shapes and dtypes of input, weight and bias


def _bad(name):
    x, w, b, y = make()
    args = dict(input=x, linear_weight=w, target=y, linear_bias=b)
    kwargs = {}
    if name == "target out of range":
        y = y.copy()
        y[2] = V
        args["target"] = y
    elif name == "negative target":
        y = y.copy()
        y[2] = -1
        args["target"] = y
    elif name == "float target of batch shape":
        args["target"] = y.astype(np.float64)
    elif name == "target shape":
        args["target"] = y[:-1]
    elif name == "probabilities shape":
        args["target"] = np.full((N, V + 1), 1.0 / (V + 1))
    elif name == "reduction":
        kwargs["reduction"] = "avg"
    elif name == "label_smoothing":
        kwargs["label_smoothing"] = 1.5
    elif name == "weight shape":
        kwargs["weight"] = np.ones(V + 1)
    elif name == "ignore_index with probabilities":
        args["target"] = np.full((N, V), 1.0 / V)
        kwargs["ignore_index"] = 0
    elif name == "ignore_index type":
        kwargs["ignore_index"] = 1.5
    elif name == "grad_output shape for none":
        kwargs.update(reduction="none", grad_output=np.ones(N + 1))
    elif name == "grad_output not scalar for mean":
        kwargs["grad_output"] = np.ones(N)
    elif name == "n_threads":
        kwargs["n_threads"] = 0
    elif name == "backend":
        kwargs["backend"] = "fortran"
    elif name == "chunk_size zero":
        kwargs["chunk_size"] = 0
    elif name == "chunk_size float":
        kwargs["chunk_size"] = 2.5
    elif name == "weight H mismatch":
        args["linear_weight"] = w[:, :-1]
    elif name == "weight 1-D":
        args["linear_weight"] = w[0]
    elif name == "weight 3-D":
        args["linear_weight"] = w[None]
    elif name == "no classes":
        args["linear_weight"] = w[:0]
        args["linear_bias"] = b[:0]
    elif name == "no features":
        args["input"], args["linear_weight"] = x[:, :0], w[:, :0]
    elif name == "bias shape":
        args["linear_bias"] = b[:-1]
    elif name == "bias 2-D":
        args["linear_bias"] = b[None]
    elif name == "scalar input":
        args["input"] = x[0, 0]
    elif name == "weight dtype":
        args["linear_weight"] = w.astype(np.float32)
    elif name == "bias dtype":
        args["linear_bias"] = b.astype(np.float32)
    elif name == "integer input":
        args["input"] = x.astype(np.int64)
    elif name == "float16 input, float64 weight":
        args["input"] = x.astype(np.float16)
    elif name == "complex weight":
        args["linear_weight"] = w.astype(complex)
    return args, kwargs


BAD = [
    ("target out of range", IndexError, rf"target {V} at position 2 is out of range"),
    ("negative target", IndexError, "target -1 at position 2"),
    ("float target of batch shape", TypeError, "must be an integer array"),
    ("target shape", ValueError, r"target of shape \(12,\)"),
    ("probabilities shape", ValueError, r"\(13, 12\)"),
    ("reduction", ValueError, "reduction must be one of"),
    ("label_smoothing", ValueError, r"label_smoothing must be in \[0, 1\]"),
    ("weight shape", ValueError, rf"weight must have shape \({V},\)"),
    ("ignore_index with probabilities", ValueError, "ignore_index=0 cannot be used"),
    ("ignore_index type", TypeError, "ignore_index must be an integer"),
    ("grad_output shape for none", ValueError, "grad_output for reduction='none'"),
    ("grad_output not scalar for mean", ValueError, "must be a scalar"),
    ("n_threads", ValueError, "n_threads must be a positive integer"),
    ("backend", ValueError, "backend must be 'auto' or one of"),
    ("chunk_size zero", ValueError, "chunk_size must be a positive integer"),
    ("chunk_size float", TypeError, "chunk_size must be an integer"),
    ("weight H mismatch", ValueError,
     rf"linear_weight of shape \({V}, {H - 1}\) does not match input of shape \({N}, {H}\)"),
    ("weight 1-D", ValueError, rf"linear_weight must have shape \(V, H\).*\({H},\)"),
    ("weight 3-D", ValueError, rf"linear_weight must have shape \(V, H\).*\(1, {V}, {H}\)"),
    ("no classes", ValueError, "at least one class"),
    ("no features", ValueError, "at least one feature"),
    ("bias shape", ValueError, rf"linear_bias must have shape \({V},\).*got shape \({V - 1},\)"),
    ("bias 2-D", ValueError, rf"linear_bias must have shape \({V},\).*\(1, {V}\)"),
    ("scalar input", ValueError, r"input must have shape \(\.\.\., H\)"),
    ("weight dtype", TypeError, "linear_weight has dtype float32 but input has dtype float64"),
    ("bias dtype", TypeError, "linear_bias has dtype float32 but input has dtype float64"),
    ("integer input", TypeError, "input must be a floating array"),
    ("float16 input, float64 weight", TypeError,
     "linear_weight has dtype float64 but input has dtype float16"),
    ("complex weight", TypeError, "linear_weight must be a floating array"),
]


BAD_CASES = ([pytest.param(True, *b, id=f"with_grad-{b[0]}") for b in BAD]
             + [pytest.param(False, *b, id=f"forward-{b[0]}") for b in BAD
                if "grad_output" not in b[0]])


@pytest.mark.parametrize("with_grad, name, error, match", BAD_CASES)
def test_bad_inputs(with_grad, name, error, match, monkeypatch):
    args, kwargs = _bad(name)
    fn = linear_cross_entropy_with_grad if with_grad else linear_cross_entropy
    calls = []
    monkeypatch.setattr(fastloss._api, "cross_entropy_with_grad",
                        lambda *a, **k: calls.append(1))
    monkeypatch.setattr(fastloss._api, "cross_entropy", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=match):
        fn(args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args, **kwargs)
    assert not calls  # checked up front, before any chunk


# --------------------------------------------------------------------------------------------
# determinism and memory


def test_same_call_twice_is_bit_identical(backend, blas_path, all_blas_threads):
    x, w, b, y = make(np.float32, n=300, h=40, v=500)
    runs = [linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=37,
                                           backend=backend, n_threads=n) for n in (None, None, 1)]
    for other in runs[1:]:  # and n_threads changes nothing
        for u, v in zip(runs[0], other):
            assert np.asarray(u).tobytes() == np.asarray(v).tobytes()


def _peak_extra_bytes(fn):
    fn()  # warm-up (JIT, caches)
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", [(2048, 64, 2048, 32), (256, 512, 2048, 8)],
                         ids=["N*V large", "V*H large"])
def test_peak_memory_is_outputs_plus_chunks(shape, backend, blas_path):
    """Peak extra memory: the outputs, O(N) per-row values and a few chunk buffers; never
    N x V, and no V x H temporary per chunk (the second shape, where V x H is 32 chunks)."""
    n, h, v, chunk = shape
    x, w, b, y = make(np.float32, n=n, h=h, v=v)
    peak, (loss, gx, gw, gb) = _peak_extra_bytes(
        lambda: linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=chunk,
                                               backend=backend))
    outputs = gx.nbytes + gw.nbytes + v * 8 + gb.nbytes  # gb: a float64 accumulator + result
    chunk_bytes = chunk * v * 4
    # the numpy backend's reference kernel works on float64 copies of its chunk
    n_chunks = 24 if backend == "numpy" else 4
    bound = outputs + n_chunks * chunk_bytes + 40 * n + (64 << 10)
    assert peak <= bound, (peak, bound)
    assert bound < n * v * 4 / 2 or shape[1] > shape[3] * 16
    if shape[1] > shape[3] * 16:  # a V x H temporary would not fit in the bound
        assert peak - outputs < v * h * 4


@pytest.mark.skipif(not HAS_SCIPY, reason="needs SciPy")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_scipy_gemm_is_in_place(dtype, beta):
    """_gemm writes into c itself and copies no operand, for C- and Fortran-ordered ones."""
    rng = np.random.default_rng(0)
    for a_order in "CF":
        for b_order in "CF":
            a = np.asarray(rng.standard_normal((30, 20)), dtype=dtype, order=a_order)
            bm = np.asarray(rng.standard_normal((20, 40)), dtype=dtype, order=b_order)
            c = rng.standard_normal((30, 40)).astype(dtype)
            want = a.astype(np.float64) @ bm + beta * c
            tracemalloc.start()
            _linear._gemm(a, bm, c, beta)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 1024, (a_order, b_order, peak)  # no copy of any operand
            np.testing.assert_allclose(c, want, rtol=EPS[np.dtype(dtype)] * 10,
                                       atol=EPS[np.dtype(dtype)] * 10 * np.abs(want).max())


def test_bench_runs_and_agrees():
    from fastloss import _bench_linear

    rows = _bench_linear.run(((40, 8, 300),), "float32", n_threads=1, repeats=1)
    impls = {r["impl"]: r for r in rows}
    assert {"fastloss linear", "limit: 3 matmuls", "numpy unfused"} <= set(impls)
    assert all(r["check"] in ("ok", "reference", "limit") for r in rows), rows
    assert impls["fastloss linear"]["peak_mib"] is not None
    assert "fastloss linear" in _bench_linear.format_rows(rows)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_16_bit_inputs_are_multiplied_in_float32(half):
    """float16 / bfloat16 input, weight and bias: the float32 computation on the same values,
    every result rounded once to the 16-bit dtype."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = np.dtype(ml_dtypes.bfloat16) if half == "bfloat16" else np.dtype(np.float16)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 6)).astype(dtype)
    w = (rng.standard_normal((20, 6)) * 0.5).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    y = rng.integers(0, 20, 9)
    got = linear_cross_entropy_with_grad(x, w, y, linear_bias=b, chunk_size=4)
    want = linear_cross_entropy_with_grad(x.astype(np.float32), w.astype(np.float32), y,
                                          linear_bias=b.astype(np.float32), chunk_size=4)
    assert all(g.dtype == dtype for g in got)
    np.testing.assert_allclose(float(got[0]), float(want[0]),
                               rtol=float(ml_dtypes.finfo(dtype).eps))
    for g, w32 in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g.view(np.uint16), w32.astype(dtype).view(np.uint16))
    loss = linear_cross_entropy(x, w, y, linear_bias=b, reduction="none")
    assert loss.dtype == dtype and loss.shape == (9,)


# --------------------------------------------------------------------------------------------
# GPU arrays: the products on the arrays' own library
#
# torch CUDA tensors and CuPy arrays run the same chunk loop with their library's buffers and
# products (_linear._TorchArrays, _linear._ModuleArrays) and the cross-entropy on the cuda
# backend.  Without a GPU, the tests run that code on host arrays: torch CPU tensors through
# torch's products, NumPy arrays through _ModuleArrays with NumPy as the module; the
# simulator's suite (cuda_simulated.py) runs it with the cross-entropy on the cuda backend.

LIBRARIES = ["module", pytest.param("torch", marks=needs_torch)]


@pytest.fixture
def library_path(monkeypatch):
    monkeypatch.setattr(_linear, "_LIBRARY_PATH_ON_HOST", True)


def _on(library, a):
    if a is None or library == "module":
        return a
    return torch.from_numpy(np.ascontiguousarray(a))


def _assert_library_results(got, library, n_results):
    kind = torch.Tensor if library == "torch" else np.ndarray
    for g in got[:n_results]:
        assert g is None or isinstance(g, kind), type(g)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["index", "ignore_index=3", "weight+smoothing", "probs"])
def test_library_products_match_unfused(case, reduction, bias, dtype, library, library_path):
    x, w, b, y, options = case_inputs(case, dtype, bias, reduction)
    options["z_loss"] = 1e-3
    arrays = [_on(library, a) for a in (x, w, y, b)]
    got = linear_cross_entropy_with_grad(*arrays[:3], linear_bias=arrays[3], chunk_size=4,
                                         **options)
    _assert_library_results(got, library, 4)
    expected, magnitudes = unfused(x, w, b, y, **options)
    assert_matches(got, expected, magnitudes, dtype)
    del options["grad_output"]
    loss = linear_cross_entropy(*arrays[:3], linear_bias=arrays[3], chunk_size=5, **options)
    _assert_library_results((loss,), library, 1)
    assert_matches((loss,), expected[:1], magnitudes[:1], dtype)


@needs_torch
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16] if torch else [],
                         ids=str)
def test_library_16_bit_inputs(half, library_path):
    """16-bit tensors: multiplied in float32, every result in their dtype."""
    x, w, b, y = make(np.float32, n=9, v=20)
    xt, wt, bt = (torch.from_numpy(a).to(half) for a in (x, w, b))
    got = linear_cross_entropy_with_grad(xt, wt, torch.from_numpy(y), linear_bias=bt,
                                         chunk_size=4)
    want = linear_cross_entropy_with_grad(xt.float(), wt.float(), torch.from_numpy(y),
                                          linear_bias=bt.float(), chunk_size=4)
    assert all(g.dtype == half for g in got)
    for g, w32 in zip(got, want):
        assert torch.equal(g, w32.to(half))


def test_library_arguments_must_share_the_library(library_path):
    x, w, b, y = make()
    if torch is not None:
        with pytest.raises(TypeError, match=r"linear_weight must be a torch tensor on cpu "
                                            r"like input, got numpy.ndarray"):
            linear_cross_entropy(torch.from_numpy(x), w, y)
        with pytest.raises(TypeError, match="linear_bias must be a numpy array like input, "
                                            "got torch.Tensor on cpu"):
            linear_cross_entropy(x, w, y, linear_bias=torch.from_numpy(b))
        with pytest.raises(TypeError, match="linear_weight must be a floating array.*"
                                            "torch.int64"):
            linear_cross_entropy(torch.from_numpy(x), torch.ones(V, H, dtype=torch.int64), y)
    with pytest.raises(TypeError, match="input must be a floating array.*int64"):
        linear_cross_entropy(x.astype(np.int64), w, y)


class _OtherGPUArray:
    """A GPU array of a library linear_cross_entropy has no products for."""

    def __init__(self, a):
        self.shape, self.dtype = a.shape, a.dtype
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str,
                                         "data": (0, False), "version": 3}


def test_gpu_array_of_another_library_is_refused():
    x, w, b, y = make()
    with pytest.raises(TypeError, match=r"input is a GPU array of a library .*_OtherGPUArray.*"
                                        "torch CUDA tensors and CuPy arrays"):
        linear_cross_entropy(_OtherGPUArray(x), w, y)
