"""Every loss on every backend against the float64 reference, in every layout and dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastloss as fl
from conftest import assert_close
from fastloss._losses import LOSSES
from fastloss._losses import get as get_loss
from fastloss._registry import CASES, reference_rows

SHAPES = [(5, 7), (3, 4, 33), (2, 1), (1, 300)]


def test_every_loss_of_the_table_has_cases():
    assert {case.loss for case in CASES} == set(LOSSES)


def test_an_unknown_loss_is_an_error():
    with pytest.raises(KeyError, match="unknown loss 'focal'"):
        get_loss("focal")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backend_matches_reference(case, dtype, backend):
    """Every reduction and grad_output against the numpy backend: the reference behind the
    same kernel protocol, itself checked against PyTorch (tests/test_reference.py)."""
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        logits, args, kwargs = case.inputs(rng, shape, dtype)
        rows, grad_rows = reference_rows(case, logits, args, kwargs)
        for reduction in case.reductions:
            go = rng.uniform(0.5, 2.0, size=rows.shape if reduction == "none" else ())
            loss, grad = case.with_grad(logits, *args, **kwargs, reduction=reduction,
                                        grad_output=go, backend=backend)
            forward = case.forward(logits, *args, **kwargs, reduction=reduction,
                                   backend=backend)
            expected, expected_grad = case.with_grad(logits.astype(np.float64), *args,
                                                     **kwargs, reduction=reduction,
                                                     grad_output=go, backend="numpy")
            msg = f"{case.id} {shape} {reduction}"
            assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == shape, msg
            assert_close(loss, expected, dtype, err_msg=msg)
            assert_close(forward, expected, dtype, err_msg=msg)
            assert_close(grad, expected_grad, dtype, err_msg=msg)
            if reduction == "none":  # the unreduced loss is the reference's, row by row
                assert_close(loss, rows, dtype, err_msg=msg)
                scale = go if case.elementwise else go[..., None]
                assert_close(grad, scale * grad_rows, dtype, err_msg=msg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1000, 10), (3, 5000), (70, 100)])
@pytest.mark.parametrize("weights", ["weight", "class_weight", "pos_weight", "both"])
def test_bce_weights_in_every_tile(weights, shape, dtype, backend):
    """The BCE's weights, copied into tiles before the loop: a weight that differs in every
    element, per class, or only pos_weight, over several tiles of short rows (1000 x 10),
    rows longer than a tile (3 x 5000), and split between threads; against the reference."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4.0).astype(dtype)
    t = rng.random(shape).astype(dtype)
    kwargs = {}
    if weights in ("weight", "both"):
        kwargs["weight"] = rng.uniform(0.2, 2.0, shape)
    if weights == "class_weight":
        kwargs["weight"] = rng.uniform(0.2, 2.0, shape[-1])
    if weights in ("pos_weight", "both"):
        kwargs["pos_weight"] = rng.uniform(0.5, 3.0, shape[-1])
    go = rng.uniform(0.5, 2.0, shape)
    for reduction, grad_output in (("none", go), ("sum", 1.5)):
        expected, expected_grad = fl.binary_cross_entropy_with_logits_with_grad(
            x.astype(np.float64), t.astype(np.float64), **kwargs, reduction=reduction,
            grad_output=grad_output, backend="numpy")
        for n_threads in (1, 2, 3):
            loss, grad = fl.binary_cross_entropy_with_logits_with_grad(
                x, t, **kwargs, reduction=reduction, grad_output=grad_output,
                backend=backend, n_threads=n_threads)
            forward = fl.binary_cross_entropy_with_logits(
                x, t, **kwargs, reduction=reduction, backend=backend, n_threads=n_threads)
            msg = f"{weights} {shape} {reduction} {n_threads} threads"
            assert_close(loss, expected, dtype, err_msg=msg)
            assert_close(forward, expected, dtype, err_msg=msg)
            assert_close(grad, expected_grad, dtype, err_msg=msg)


HALF_DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


@pytest.mark.parametrize("half", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_16_bit_logits_are_computed_in_float32(case, half, backend):
    """float16 / bfloat16 give the float32 results on the same values, rounded to the 16-bit
    dtype (whether the backend reads them natively or converts them)."""
    for shape in [(6, 9), (70, 1100)]:  # one block of classes; several rows per thread
        logits, args, kwargs = case.inputs(np.random.default_rng(6), shape, np.float32)
        logits = logits.astype(half)
        args = tuple(a.astype(half) if a.dtype == np.float32 else a for a in args)
        for reduction in ("sum", "none"):
            loss, grad = case.with_grad(logits, *args, **kwargs, reduction=reduction,
                                        backend=backend)
            assert loss.dtype == half and grad.dtype == half
            args32 = tuple(a.astype(np.float32) if a.dtype == half else a for a in args)
            loss32, grad32 = case.with_grad(logits.astype(np.float32), *args32, **kwargs,
                                            reduction=reduction, backend=backend)
            # the loss is rounded once from float64 (float32 then 16 bits may round twice)
            with np.errstate(over="ignore"):  # float16 sums of 77000 values may overflow
                expected = loss32.astype(half).astype(np.float64)
            np.testing.assert_allclose(loss.astype(np.float64), expected,
                                       rtol=float(ml_dtypes.finfo(half).eps), atol=1e-30)
            np.testing.assert_array_equal(grad, grad32.astype(half))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layouts_give_the_same_results(case, backend, tmp_path):
    """Non-contiguous, Fortran-ordered and read-only memory-mapped logits are valid input."""
    logits, args, kwargs = case.inputs(np.random.default_rng(7), (6, 10), np.float32)
    expected = case.with_grad(logits, *args, **kwargs, reduction="none", backend=backend)
    wide = np.zeros((6, 20), np.float32)
    wide[:, ::2] = logits
    path = tmp_path / "logits.bin"
    logits.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=logits.shape)
    for variant in (wide[:, ::2], np.asfortranarray(logits), mapped):
        loss, grad = case.with_grad(variant, *args, **kwargs, reduction="none", backend=backend)
        np.testing.assert_array_equal(loss, expected[0])
        np.testing.assert_array_equal(grad, expected[1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_out_receives_the_gradient(case, dtype, backend):
    logits, args, kwargs = case.inputs(np.random.default_rng(8), (4, 3, 11), dtype)
    expected_loss, expected_grad = case.with_grad(logits, *args, **kwargs, backend=backend)
    out = np.full_like(logits, 7.0)
    loss, grad = case.with_grad(logits, *args, **kwargs, out=out, backend=backend)
    assert grad is out
    np.testing.assert_array_equal(out, expected_grad)
    in_place = logits.copy()
    loss, grad = case.with_grad(in_place, *args, **kwargs, out=in_place, backend=backend)
    assert grad is in_place and np.shares_memory(grad, in_place)
    # Overlapping input and output take LLVM's scalar (non-vectorised) loop, which may round
    # the last bit differently; equal within the dtype's tolerance, not bit for bit.
    compute = np.float32 if dtype == np.float16 else dtype
    assert_close(loss, expected_loss, compute)
    assert_close(in_place, expected_grad, compute)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_inputs_are_not_modified(case, backend):
    logits, args, kwargs = case.inputs(np.random.default_rng(9), (5, 8), np.float32)
    before = [logits.copy(), *[a.copy() for a in args]]
    case.with_grad(logits, *args, **kwargs, backend=backend)
    for a, b in zip([logits, *args], before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("target_dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32,
                                          np.int64, np.uint64])
def test_any_integer_target_dtype(target_dtype, backend):
    x = np.random.default_rng(10).standard_normal((6, 5))
    y = np.array([0, 1, 2, 3, 4, 0])
    expected = fl.cross_entropy_with_grad(x, y, backend="numpy")
    result = fl.cross_entropy_with_grad(x, y.astype(target_dtype), backend=backend)
    assert_close(result[0], expected[0], np.float64)
    assert_close(result[1], expected[1], np.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_deterministic_across_threads_and_runs(case, fast_backend):
    logits, args, kwargs = case.inputs(np.random.default_rng(11), (257, 1031), np.float32)
    runs = [case.with_grad(logits, *args, **kwargs, backend=fast_backend, n_threads=n)
            for n in (1, 2, 2, None)]
    for loss, grad in runs[1:]:
        assert loss.tobytes() == runs[0][0].tobytes()
        assert grad.tobytes() == runs[0][1].tobytes()


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transforms_match_reference(name, dtype, backend):
    x = (np.random.default_rng(12).standard_normal((3, 5, 40)) * 5).astype(dtype)
    result = getattr(fl, name)(x, backend=backend)
    assert result.dtype == dtype
    assert_close(result, getattr(fl, name)(x.astype(np.float64), backend="numpy"), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("n_classes", [32768, 262144])
@pytest.mark.parametrize("case", [c for c in CASES if not c.elementwise], ids=lambda c: c.id)
def test_large_vocabularies_in_float32(case, n_classes, backend):
    logits, args, kwargs = case.inputs(np.random.default_rng(13), (3, n_classes), np.float32)
    rows, grad_rows = reference_rows(case, logits, args, kwargs)
    loss, grad = case.with_grad(logits, *args, **kwargs, reduction="none", backend=backend)
    assert_close(loss, rows, np.float32)
    assert_close(grad, grad_rows, np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(37, 3), (300, 10), (3, 1100)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_plain_tiles_equal_the_weighted_ones(dtype, shape, reduction):
    """The C elementwise tiles take a shorter loop for the default call (no weight, no
    pos_weight, one scale for every element): the same numbers, bit for bit, as the loop
    that reads a weight and a pos_weight of ones, whole-row tiles and a long row's pieces."""
    from fastloss import _backends

    if not _backends.available("cython"):
        pytest.skip("the cython backend is not built")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.flat[::11] = -np.inf
    t = rng.random(shape).astype(dtype)
    kw = dict(reduction=reduction, backend="cython")
    ones = dict(weight=np.ones(shape[-1]), pos_weight=np.ones(shape[-1]))
    calls = [(fl.binary_cross_entropy_with_logits_with_grad, ones),
             (fl.binary_cross_entropy_with_logits, ones)]
    if reduction == "none":  # a grad_output of ones for every element: a scale array
        calls.append((fl.mse_loss_with_grad, dict(grad_output=np.ones(shape))))
    for fn, extra in calls:
        plain, general = fn(x, t, **kw), fn(x, t, **kw, **extra)
        for p, g in zip(plain if isinstance(plain, tuple) else (plain,),
                        general if isinstance(general, tuple) else (general,)):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(g))
