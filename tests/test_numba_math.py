"""The vectorisable math of the Numba backend: accuracy of vexp, and the order-key max."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastloss._ext import numba_math as nm  # noqa: E402


@numba.njit(fastmath=nm.FASTMATH)
def _vexp_all(z, out):
    for j in range(z.shape[0]):
        out[j] = nm.vexp(z[j])


def _ulp_error(dtype):
    z = np.linspace(-87.3 if dtype == np.float32 else -708.0, 0.0, 400001).astype(dtype)
    out = np.empty_like(z)
    _vexp_all(z, out)
    exact = np.exp(z.astype(np.longdouble))
    ulp = np.spacing(exact.astype(dtype)).astype(np.longdouble)
    return float(np.max(np.abs(out.astype(np.longdouble) - exact) / ulp))


def test_vexp_float32_is_within_one_ulp():
    assert _ulp_error(np.float32) <= 1.0


def test_vexp_float64_is_within_one_ulp():
    assert _ulp_error(np.float64) <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vexp_limits(dtype):
    z = np.array([-np.inf, np.nan, -1e30, -200.0, -800.0, 0.0, -0.0], dtype=dtype)
    out = np.empty_like(z)
    _vexp_all(z, out)
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 0.0
    assert out[5] == 1.0 and out[6] == 1.0
    # below the smallest normal number the result is 0, as np.exp's underflow in that dtype
    np.testing.assert_allclose(out[3:5], np.exp(z[3:5]), rtol=2e-7, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_on_order_keys(dtype):
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 33, 1000):
        row = (rng.standard_normal(n) * 1e3).astype(dtype)
        assert nm.row_max(row) == row.max()
        row[:] = -np.inf
        assert nm.row_max(row) == -np.inf
        row[n // 2] = -0.0
        assert nm.row_max(row) == 0.0
        row[-1] = np.inf
        assert nm.row_max(row) == np.inf


@numba.njit(fastmath=nm.FASTMATH)
def _vtanh_all(u, out):
    for j in range(u.shape[0]):
        out[j] = nm.vtanh(u[j])


def test_vtanh_is_within_its_absolute_bound():
    """The softcap's tanh: what a softmax sees is the absolute error of softcap * tanh."""
    u = np.concatenate([np.linspace(-40.0, 40.0, 400001), np.geomspace(1e-300, 1.0, 20001),
                        -np.geomspace(1e-300, 1.0, 20001)])
    out = np.empty_like(u)
    _vtanh_all(u, out)
    assert float(np.max(np.abs(out - np.tanh(u.astype(np.longdouble))))) <= 2.5e-16
    limits = np.array([np.inf, -np.inf, 0.0, 800.0, -800.0, np.nan])
    out = np.empty_like(limits)
    _vtanh_all(limits, out)
    assert out[:5].tolist() == [1.0, -1.0, 0.0, 1.0, -1.0] and np.isnan(out[5])


# --------------------------------------------------------------------------------- the hooks

def _cpu_transform(v, softcap, inv_temperature):
    @numba.njit
    def run(v, softcap, inv_temperature):
        return nm.hooks.transform(v, softcap, inv_temperature)

    return run(v, softcap, inv_temperature)


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "njit"])
def test_transform_limits(compiled):
    """-inf stays -inf (slope 0 with a cap), +inf becomes the cap, NaN stays NaN: the same in
    plain Python (what the CUDA simulator runs) and compiled."""
    from fastloss._ext import numba_hooks

    transform = _cpu_transform if compiled else numba_hooks.transform
    assert transform(-np.inf, 5.0, 0.5) == (-np.inf, 0.0)
    assert transform(np.inf, 5.0, 0.5) == (2.5, 0.0)
    assert transform(-np.inf, 0.0, 0.5) == (-np.inf, 0.5)
    assert all(np.isnan(transform(np.nan, 5.0, 1.0)))
    z, slope = transform(1.5, 5.0, 0.5)
    th = np.tanh(0.3)
    np.testing.assert_allclose([z, slope], [2.5 * th, 0.5 * (1 - th * th)], rtol=1e-15)
    assert transform(1.5, 0.0, 1.0) == (1.5, 1.0)


def test_every_hook_compiles_for_the_cpu():
    from fastloss._ext import numba_hooks

    for name in numba_hooks.HOOKS:
        assert hasattr(getattr(nm.hooks, name), "py_func"), name


# --------------------------------------------------------------------------------- the pool

def test_rows_split_in_equal_contiguous_ranges():
    from fastloss._ext._threads import split

    assert split(10, 10000, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert split(10, 100, 4) == [(0, 10)]  # small work: one range
    assert split(3, 100000, 8) == [(0, 1), (1, 2), (2, 3)]  # never more ranges than rows
    assert split(1000, 1000, 1) == [(0, 1000)]
    assert split(0, 1000, 4) == [(0, 0)]


def test_run_ranges_waits_for_all_and_reraises_the_first_error():
    from fastloss._ext._threads import run_ranges

    seen = []

    def fn(lo, hi, out):
        seen.append((lo, hi))
        if lo > 0:
            raise ValueError(f"range {lo}")
        out[lo:hi] = 1

    out = np.zeros(8)
    with pytest.raises(ValueError, match="range 2"):
        run_ranges(fn, 8, 1 << 20, 4, out)
    assert sorted(seen) == [(0, 2), (2, 4), (4, 6), (6, 8)] and out[:2].tolist() == [1, 1]
