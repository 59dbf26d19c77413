"""The two pieces of the Numba kernels whose speed the README quotes, on one 32768-class row
(in cache):

    python -m pytest benches/test_kernel_parts.py --benchmark-enable --benchmark-only

group exp-loop: vexp vs np.exp inside a Numba loop (np.exp is a scalar libm call there);
group max-loop: the max on integer order keys vs the plain float max loop;
group tanh-loop: vtanh (cross-entropy's softcap on the CPU) vs math.tanh, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastloss._ext import numba_math as nm  # noqa: E402

ROW = np.random.default_rng(0).standard_normal(32768).astype(np.float32)


@numba.njit(fastmath=nm.FASTMATH)
def _exp_vexp(row, m, out):
    for j in range(row.shape[0]):
        out[j] = nm.vexp(row[j] - m)


@numba.njit(fastmath=nm.FASTMATH)
def _exp_numpy(row, m, out):
    for j in range(row.shape[0]):
        out[j] = np.exp(row[j] - m)


@numba.njit(fastmath=nm.FASTMATH)
def _max_float(row):
    m = row[0]
    for j in range(row.shape[0]):
        m = row[j] if row[j] > m else m
    return m


@pytest.mark.parametrize("impl", [_exp_vexp, _exp_numpy], ids=["vexp", "np.exp"])
def test_exp_loop(benchmark, impl):
    benchmark.group = "exp-loop"
    out = np.empty_like(ROW)
    m = np.float32(ROW.max())
    impl(ROW, m, out)  # compile outside the timing
    benchmark(impl, ROW, m, out)
    np.testing.assert_allclose(out, np.exp((ROW - m).astype(np.float64)), rtol=1.2e-7)


@pytest.mark.parametrize("impl", [nm.row_max, _max_float], ids=["order-keys", "float"])
def test_max_loop(benchmark, impl):
    benchmark.group = "max-loop"
    impl(ROW)
    assert benchmark(impl, ROW) == ROW.max()


ROW64 = ROW.astype(np.float64) * 5.0


@numba.njit(fastmath=nm.FASTMATH)
def _tanh_vtanh(row, out):
    for j in range(row.shape[0]):
        out[j] = nm.vtanh(row[j])


@numba.njit(fastmath=nm.FASTMATH)
def _tanh_math(row, out):
    for j in range(row.shape[0]):
        out[j] = math.tanh(row[j])


@pytest.mark.parametrize("impl", [_tanh_vtanh, _tanh_math], ids=["vtanh", "math.tanh"])
def test_tanh_loop(benchmark, impl):
    benchmark.group = "tanh-loop"
    out = np.empty_like(ROW64)
    impl(ROW64, out)
    benchmark(impl, ROW64, out)
    np.testing.assert_allclose(out, np.tanh(ROW64), rtol=0, atol=2.5e-16)
