"""16-bit logits (bfloat16, float16) read natively by the C kernels: the conversions, the
accuracy against the float64 reference on the same 16-bit values, special values, and the
elementwise losses (their own tiles) against the float32 kernels."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastloss as fl

cython = pytest.importorskip("fastloss._ext._cython")

HALVES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]


def _same_bits(a, b):
    """Equal 16-bit patterns, any NaN equal to any NaN."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    return (a.view(np.uint16) == b.view(np.uint16)) | (np.isnan(a32) & np.isnan(b32))


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_every_16_bit_value_converts_exactly(half):
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(half)
    ours = cython.half_to_float(every)
    theirs = every.astype(np.float32)
    same = (ours.view(np.uint32) == theirs.view(np.uint32)) | (np.isnan(ours) & np.isnan(theirs))
    assert same.all()


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_float_to_16_bits_rounds_to_nearest_even_like_ml_dtypes(half):
    finite = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(half)
    finite = finite[np.isfinite(finite.astype(np.float32))]
    f = np.sort(finite.astype(np.float32))
    f = np.unique(f)
    midpoints = (f[:-1].astype(np.float64) + f[1:]) / 2  # the ties, exact in float32
    rng = np.random.default_rng(0)
    values = np.concatenate([
        f, midpoints.astype(np.float32), np.nextafter(midpoints.astype(np.float32), np.inf),
        np.nextafter(midpoints.astype(np.float32), -np.inf),
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.996, 65520,
                  3.4e38, 1e-45, -1e-45, 2.9802322e-08, 2.98e-08], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(half)
    assert _same_bits(cython.float_to_half(values, half), expected).all()


def _ulps(a, b):
    """Distance in 16-bit units in the last place between two finite arrays."""
    def ordered(x):
        bits = x.view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, 0x8000 - bits, bits)
    return np.abs(ordered(a) - ordered(b))


CASES = {
    "cross_entropy": lambda x, rng: (fl.cross_entropy_with_grad,
                                     rng.integers(0, x.shape[-1], x.shape[:-1]), {}),
    "cross_entropy[probs,smoothing]": lambda x, rng: (
        fl.cross_entropy_with_grad, rng.dirichlet(np.ones(x.shape[-1]), x.shape[0]),
        {"label_smoothing": 0.1}),
    "cross_entropy[softcap,z_loss]": lambda x, rng: (
        fl.cross_entropy_with_grad, rng.integers(0, x.shape[-1], x.shape[:-1]),
        {"softcap": 5.0, "z_loss": 1e-3, "temperature": 0.7}),
    "kl_divergence": lambda x, rng: (fl.kl_divergence_with_grad,
                                     rng.dirichlet(np.ones(x.shape[-1]), x.shape[0]), {}),
    "softmax_mse": lambda x, rng: (fl.softmax_mse_with_grad,
                                   rng.integers(0, x.shape[-1], x.shape[:-1]), {}),
    "entropy": lambda x, rng: (fl.entropy_with_grad, None, {}),
    "binary_cross_entropy": lambda x, rng: (fl.binary_cross_entropy_with_logits_with_grad,
                                            rng.random(x.shape), {}),
    "binary_cross_entropy[weight,pos_weight]": lambda x, rng: (
        fl.binary_cross_entropy_with_logits_with_grad, rng.random(x.shape),
        {"weight": rng.random(x.shape[-1]), "pos_weight": rng.random(x.shape[-1]) + 0.5}),
    # a target near x, so that float16's sum stays finite
    "mse": lambda x, rng: (fl.mse_loss_with_grad,
                           x.astype(np.float64) + rng.standard_normal(x.shape) / 2, {}),
}


@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", [(33, 10), (8, 3000)], ids=str)
def test_native_16_bit_matches_the_float64_reference(name, half, shape):
    """Loss within 1e-5 of the float64 reference on the same 16-bit values (before it is
    rounded to the logits' dtype); gradient within one 16-bit ulp of the correctly rounded
    reference gradient."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 4).astype(half)
    fn, target, kwargs = CASES[name](x, rng)
    args = () if target is None else (target.astype(np.float32) if target.dtype.kind == "f"
                                       else target,)
    loss, grad = fn(x, *args, **kwargs, reduction="sum", backend="cython")
    assert loss.dtype == half and grad.dtype == half
    loss64, grad64 = fn(x.astype(np.float64), *[np.asarray(a, np.float64)
                                                if np.asarray(a).dtype.kind == "f" else a
                                                for a in args],
                        **kwargs, reduction="sum", backend="numpy")
    # the loss: exactly the float64 value rounded to 16 bits, up to one ulp of double rounding
    assert _ulps(np.array([loss], half), np.array([loss64], np.float64).astype(half)) <= 1
    # the float64 per-row losses behind it: the same rows with float32 logits of equal value
    rows = fn(x.astype(np.float32), *args, **kwargs, reduction="none", backend="cython")[0]
    rows64 = fn(x.astype(np.float64), *args, **kwargs, reduction="none", backend="numpy")[0]
    np.testing.assert_allclose(rows, rows64, rtol=1e-5, atol=1e-6)
    assert (_ulps(grad, grad64.astype(half)) <= 1).all()


@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("c", [10, 33, 1000, 3000])
def test_confident_rows_keep_one_ulp(half, c):
    """Cross-entropy where p_y nears 1 (1 - p_y from 1e-3 down to 1e-7): the gradient of
    the class y within one 16-bit ulp of the correctly rounded reference, the per-row
    float32 loss within 1e-5 of it."""
    rng = np.random.default_rng(c)
    n = 64
    x = rng.standard_normal((n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    x[np.arange(n), y] = rng.uniform(8.0, 16.0, n) + np.log(c)
    x = x.astype(half)
    loss, grad = fl.cross_entropy_with_grad(x, y, reduction="sum", backend="cython")
    grad64 = fl.cross_entropy_with_grad(x.astype(np.float64), y, reduction="sum",
                                        backend="numpy")[1]
    assert (_ulps(grad, grad64.astype(half)) <= 1).all()
    rows = fl.cross_entropy(x.astype(np.float32), y, reduction="none", backend="cython")
    rows64 = fl.cross_entropy(x.astype(np.float64), y, reduction="none", backend="numpy")
    np.testing.assert_allclose(rows, rows64, rtol=1e-5)


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_special_values_match_the_float32_kernels(half):
    """+-inf, NaN, subnormal and huge 16-bit logits: the same results as float32 logits of
    the same values (whose handling tests/test_edge_cases.py checks against the reference)."""
    info = ml_dtypes.finfo(half)
    tiny = float(info.smallest_subnormal)
    rows = np.array([
        [0.0, 1.0, -np.inf, 2.0],
        [np.inf, 0.0, 1.0, 2.0],
        [np.nan, 0.0, 1.0, 2.0],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [tiny, -tiny, 2 * tiny, 0.0],
        [float(info.max), -float(info.max), 0.0, 1.0],
        [-np.inf, 3.0, -np.inf, -np.inf],
    ])
    x = np.tile(rows, (3000, 1)).astype(half)  # several threads' worth of rows
    y = np.tile([1, 2, 3, 0, 1, 0, 1], 3000)
    t = np.random.default_rng(3).random(x.shape).astype(np.float32)
    for fn, args in [(fl.cross_entropy_with_grad, (y,)), (fl.entropy_with_grad, ()),
                     (fl.softmax_mse_with_grad, (y,)),
                     (fl.binary_cross_entropy_with_logits_with_grad, (t,)),
                     (fl.mse_loss_with_grad, (t,))]:
        with np.errstate(invalid="ignore", over="ignore"):
            loss, grad = fn(x, *args, reduction="none", backend="cython")
            loss32, grad32 = fn(x.astype(np.float32), *args, reduction="none",
                                backend="cython")
            assert _same_bits(loss, loss32.astype(half)).all()
            assert _same_bits(grad, grad32.astype(half)).all()


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_16_bit_out_and_in_place(half):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 700)).astype(half)
    y = rng.integers(0, 700, 50)
    loss, grad = fl.cross_entropy_with_grad(x, y, backend="cython")
    out = np.zeros_like(x)
    assert fl.cross_entropy_with_grad(x, y, out=out, backend="cython")[1] is out
    assert _same_bits(out, grad).all()
    in_place = x.copy()
    fl.cross_entropy_with_grad(in_place, y, out=in_place, backend="cython")
    assert _same_bits(in_place, grad).all()


def test_the_c_backend_reads_16_bit_logits_in_place(monkeypatch):
    """No float32 copy of the logits (or of a probability target of their dtype) on the
    native path: as_rows is asked for the 16-bit dtype and returns the array unconverted."""
    from fastloss._ext import _cython

    seen = []
    original = _cython.as_rows

    def spy(a, n_cols, dtype):
        rows = original(a, n_cols, dtype)
        seen.append(rows.dtype)
        return rows

    monkeypatch.setattr(_cython, "as_rows", spy)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = np.zeros((4, 5), bf16)
    fl.cross_entropy_with_grad(x, np.arange(4), backend="cython")
    assert seen == [bf16]
    # a probability target of the logits' 16-bit dtype is read in place too; another dtype
    # is converted to float32
    seen.clear()
    fl.kl_divergence_with_grad(x, np.full((4, 5), 0.2, bf16), backend="cython")
    assert seen == [bf16, bf16]
    seen.clear()
    fl.kl_divergence_with_grad(x, np.full((4, 5), 0.2, np.float16), backend="cython")
    assert seen == [np.dtype(np.float32), bf16]
    # BCE's and MSE's targets likewise
    for fn in ELEMENTWISE:
        seen.clear()
        fn(x, np.full((4, 5), 0.2, bf16), backend="cython")
        assert seen == [bf16, bf16]
        seen.clear()
        fn(x, np.full((4, 5), 0.2), backend="cython")
        assert seen == [np.dtype(np.float32), bf16]



ELEMENTWISE = [fl.binary_cross_entropy_with_logits_with_grad, fl.mse_loss_with_grad]


@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("fn", ELEMENTWISE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(3001, 10), (40, 1500), (3, 40000), (7,)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_16_bit_elementwise_losses_equal_the_float32_kernels(half, fn, shape, reduction):
    """BCE and MSE read 16-bit logits and targets in whole tiles of the float kernels (short
    rows many to a tile, long rows in pieces), over both threads: the float32 kernels' results
    on the same values, rounded, bit for bit, with per-element weights and a grad_output."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 4).astype(half)
    kwargs = {}
    if fn is fl.binary_cross_entropy_with_logits_with_grad:
        kwargs = {"weight": rng.random(shape), "pos_weight": rng.random(shape[-1]) + 0.5}
    grad_output = rng.standard_normal(shape) if reduction == "none" else None
    for t in (rng.random(shape).astype(half), rng.random(shape).astype(np.float32)):
        loss, grad = fn(x, t, **kwargs, reduction=reduction, grad_output=grad_output,
                        backend="cython", n_threads=2)
        loss32, grad32 = fn(x.astype(np.float32), t.astype(np.float32), **kwargs,
                            reduction=reduction, grad_output=grad_output, backend="cython",
                            n_threads=2)
        assert grad.dtype == half
        assert _same_bits(grad, grad32.astype(half)).all()
        assert _same_bits(np.asarray(loss), np.asarray(loss32).astype(half)).all()
        out = np.zeros_like(x)
        assert fn(x, t, **kwargs, reduction=reduction, grad_output=grad_output, out=out,
                  backend="cython")[1] is out
        assert _same_bits(out, grad).all()
