"""Differential property test: every loss of the table (``fastloss._registry.CASES``) on every
CPU backend against the reference, on adversarial values: +-inf, NaN, +-1e30, subnormals,
-0.0, all-equal rows, one-class rows, one-hot probability targets, all-ignored batches.

The unreduced loss and gradient are compared with :func:`fastloss._registry.reference_rows`
(the float64 reference, rounded to the result's dtype), the reductions with the ``numpy``
backend, both with the tolerances of ``conftest.assert_close``: NaN and inf must sit at the
same places.  Bounded: a few dozen examples per loss and backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import BACKENDS, assert_close
from fastloss._registry import CASES, reference_rows

CPU_BACKENDS = [b for b in BACKENDS if b != "cuda"]
MAX_EXAMPLES = 30


def _specials(dtype) -> list[float]:
    info = np.finfo(dtype)
    values = [np.inf, -np.inf, np.nan, 1e30, -1e30, info.smallest_subnormal,
              -info.smallest_subnormal, info.tiny, -0.0, 0.0, 1.0, -1.0, 88.0, -88.0,
              1e4, -1e4]
    return [float(dtype.type(v)) for v in values]  # exactly representable in dtype


def _elements(dtype):
    return st.one_of(st.sampled_from(_specials(dtype)),
                     st.floats(-40, 40, width=8 * dtype.itemsize))


def _class_indices(args, shape) -> bool:
    return bool(args) and np.asarray(args[0]).shape == shape[:-1]


@st.composite
def adversarial_inputs(draw, case):
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    n_rows = draw(st.integers(1, 5))
    n_cols = draw(st.sampled_from([1, 1, 2, 3, 5, 8]))  # one-class rows are frequent
    shape = (n_rows, n_cols)
    elements = _elements(dtype)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    for i in range(n_rows):  # whole-row patterns
        kind = draw(st.sampled_from(["as drawn", "as drawn", "all equal", "finite"]))
        if kind == "all equal":
            x[i] = draw(elements)
        elif kind == "finite":
            x[i] = draw(hnp.arrays(dtype, n_cols, elements=st.floats(-40, 40,
                                                                      width=8 * dtype.itemsize)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    args, kwargs = case.make(rng, shape, dtype)
    kwargs = {**case.kwargs, **kwargs}
    if case.loss == "cross_entropy" and _class_indices(args, shape):
        target = np.array(args[0])
        ignore = draw(st.sampled_from(["none", "some", "all"]))
        if ignore == "all":
            target[:] = -100
        elif ignore == "some":
            target[draw(st.integers(0, n_rows - 1))] = -100
        args = (target,)
    elif args and np.asarray(args[0]).shape == shape and case.loss != "mse_loss" and (
            case.loss != "binary_cross_entropy_with_logits") and draw(st.booleans()):
        # one-hot probabilities: exact zeros (0 log 0 = 0, also on a -inf logit)
        one_hot = np.zeros(shape, dtype)
        one_hot[np.arange(n_rows), rng.integers(0, n_cols, n_rows)] = 1
        if kwargs.get("log_target"):
            with np.errstate(divide="ignore"):
                one_hot = np.log(one_hot)
        args = (one_hot,)
    elif case.loss == "mse_loss":
        args = (draw(hnp.arrays(dtype, shape, elements=elements)),)
    return x, args, kwargs


def _check(case, backend, x, args, kwargs):
    dtype = x.dtype
    where = f"{case.id} on {backend}, x={x!r}, args={args!r}, kwargs={kwargs!r}"
    with np.errstate(all="ignore"):
        ref_loss, ref_grad = reference_rows(case, x, args, kwargs)
        # the reference in float64, rounded to the dtype the result has
        ref_loss, ref_grad = ref_loss.astype(dtype), ref_grad.astype(dtype)
    loss, grad = case.with_grad(x, *args, **kwargs, reduction="none", backend=backend)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close(loss, ref_loss, dtype, err_msg="loss, " + where)
    assert_close(grad, ref_grad, dtype, err_msg="grad, " + where)
    assert_close(case.forward(x, *args, **kwargs, reduction="none", backend=backend), loss,
                 dtype, err_msg="forward, " + where)
    for reduction in case.reductions:
        if reduction == "none":
            continue
        got = case.with_grad(x, *args, **kwargs, reduction=reduction, backend=backend)
        expected = case.with_grad(x, *args, **kwargs, reduction=reduction, backend="numpy")
        assert_close(got[0], expected[0], dtype, err_msg=f"{reduction} loss, " + where)
        assert_close(got[1], expected[1], dtype, err_msg=f"{reduction} grad, " + where)


@pytest.mark.parametrize("backend", CPU_BACKENDS or [pytest.param(
    None, marks=pytest.mark.skip(reason="no CPU backend is available here"))])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # adversarial values overflow in NumPy
@settings(max_examples=MAX_EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_the_reference_on_adversarial_values(case, backend, data):
    x, args, kwargs = data.draw(adversarial_inputs(case), label="inputs")
    _check(case, backend, x, args, kwargs)
