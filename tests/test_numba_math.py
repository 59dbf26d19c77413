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
