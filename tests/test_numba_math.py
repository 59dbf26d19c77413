"""The vectorisable math of the Numba backend: accuracy of vexp, vexp_any, vlog, vlog1p and
vtanh, and the order-key max."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys

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


@numba.njit(fastmath=nm.FASTMATH, error_model="numpy")
def _vlog_all(x, out):
    for j in range(x.shape[0]):
        out[j] = nm.vlog(x[j])


@numba.njit(fastmath=nm.FASTMATH, error_model="numpy")
def _vlog1p_all(x, out):
    for j in range(x.shape[0]):
        out[j] = nm.vlog1p(x[j])


@numba.njit(fastmath=nm.FASTMATH, error_model="numpy")
def _vlog1p_unit_all(x, out):
    for j in range(x.shape[0]):
        out[j] = nm.vlog1p_unit(x[j])


@numba.njit(fastmath=nm.FASTMATH, error_model="numpy")
def _vexp_any_all(x, out):
    for j in range(x.shape[0]):
        out[j] = nm.vexp_any(x[j])


def _max_ulp(fn, x, exact):
    """The largest error of ``fn`` over ``x`` in ulps of the correctly rounded result."""
    out = np.empty_like(x)
    fn(x, out)
    want = exact(x.astype(np.longdouble))
    ulp = np.spacing(np.abs(want.astype(x.dtype))).astype(np.longdouble)
    return float(np.max(np.abs(out.astype(np.longdouble) - want) / ulp))


def _positive_floats(dtype, n=1_000_000):
    """Every binade of the positive floats, subnormals included (uniform in the bits), and
    the binades around 1 densely (where log is smallest, its relative error largest)."""
    int_type = np.int32 if dtype == np.float32 else np.int64
    top = np.array(np.finfo(dtype).max, dtype).view(int_type)
    bits = np.random.default_rng(1).integers(1, top, n, dtype=int_type)
    return np.concatenate([bits.view(dtype), np.linspace(0.5, 2.0, n + 1).astype(dtype)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vlog_is_within_its_ulp_bound(dtype):
    assert _max_ulp(_vlog_all, _positive_floats(dtype), np.log) <= 0.85


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vlog1p_is_within_its_ulp_bound(dtype):
    tiny = np.finfo(dtype).tiny
    x = np.concatenate([_positive_floats(dtype), -np.geomspace(tiny, 1.0, 200001)[:-1],
                        np.linspace(-0.999, 3.0, 400001), [-1.0 + np.finfo(dtype).epsneg]])
    assert _max_ulp(_vlog1p_all, x.astype(dtype), np.log1p) <= 0.88


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vlog1p_unit_is_within_its_ulp_bound_on_its_domain(dtype):
    """``log1p(e)`` for ``e = exp(-|v|)`` in [0, 1]: every binade down to the subnormals
    (uniform in the bits), densely near 1, and the ends; NaN stays NaN."""
    int_type = np.int32 if dtype == np.float32 else np.int64
    bits = np.random.default_rng(2).integers(1, np.array(1.0, dtype).view(int_type), 1_000_000,
                                             dtype=int_type)
    x = np.concatenate([bits.view(dtype), np.linspace(0.0, 1.0, 1_000_001).astype(dtype),
                        np.array([np.finfo(dtype).smallest_subnormal, 1.0], dtype)])
    assert _max_ulp(_vlog1p_unit_all, x, np.log1p) <= 1.05
    out = np.empty(3, dtype)
    _vlog1p_unit_all(np.array([0.0, 1.0, np.nan], dtype), out)
    assert out[0] == 0.0 and out[1] == dtype(np.log(2.0)) and np.isnan(out[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vexp_any_is_within_its_ulp_bound(dtype):
    lo, hi = (-87.3, 88.7) if dtype == np.float32 else (-708.0, 709.7)
    z = np.linspace(lo, hi, 400001).astype(dtype)
    assert _max_ulp(_vexp_any_all, z, np.exp) <= 0.88


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vlog_vlog1p_vexp_any_special_values(dtype):
    info = np.finfo(dtype)
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -info.smallest_subnormal,
                  info.smallest_subnormal, info.tiny, 1.0, info.max], dtype)
    out = np.empty_like(x)
    _vlog_all(x, out)
    assert out[:3].tolist() == [-np.inf, -np.inf, np.inf] and np.isnan(out[3:7]).all()
    assert out[9] == 0.0
    np.testing.assert_allclose(out[7:], np.log(x[7:].astype(np.float64)), rtol=1e-7)
    x = np.array([0.0, -1.0, np.inf, -np.inf, np.nan, -1.5, -info.smallest_subnormal,
                  info.smallest_subnormal, 1e-30, info.max, -0.5], dtype)
    _vlog1p_all(x, out)
    assert out[:3].tolist() == [0.0, -np.inf, np.inf] and np.isnan(out[3:6]).all()
    assert out[6] == x[6] and out[7] == x[7] and out[8] == x[8]  # log1p(x) = x for tiny x
    np.testing.assert_allclose(out[9:], np.log1p(x[9:].astype(np.float64)), rtol=1e-7)
    z = np.array([-np.inf, np.inf, np.nan, -1e4, 1e4, 0.0, -0.0, 88.0, -87.0], dtype)
    out = np.empty_like(z)
    _vexp_any_all(z, out)
    assert out[:2].tolist() == [0.0, np.inf] and np.isnan(out[2])
    assert out[3:7].tolist() == [0.0, np.inf, 1.0, 1.0]
    np.testing.assert_allclose(out[7:], np.exp(z[7:].astype(np.float64)), rtol=1e-6)


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


@numba.njit(fastmath=nm.FASTMATH, _nrt=False)
def _exp_blocks_in_a_kernel(row, out, block_max, in_place):
    return nm.exp_blocks(row, out, block_max, in_place, -1)


def test_row_helpers_inlined_without_reference_counting():
    """The row helpers are compiled on their own and inlined by LLVM.  Called from Python
    first (where Numba's default is reference counting), the compiled helper is the one every
    kernel gets afterwards: it must still count no references (an atomic incref / decref on
    every block view, 25% at 32k classes)."""
    row = np.linspace(-3.0, 2.0, 2 * nm.BLOCK + 5).astype(np.float32)
    block_max = np.empty(3)
    out = np.empty_like(row)
    m, s = nm.exp_blocks(row, out, block_max, False, -1)  # from Python first
    m2, s2 = _exp_blocks_in_a_kernel(row, out, block_max, False)  # the same signature
    assert m == m2 == 2.0
    assert s == s2 == pytest.approx(np.exp(row.astype(np.float64) - 2.0).sum(), rel=1e-6)
    llvm = "".join(_exp_blocks_in_a_kernel.inspect_llvm().values())
    assert re.search(r"@NRT_(incref|decref)\(", llvm) is None


# Compiled (not run) in a child process for an Intel AVX-512 CPU, whose LLVM tuning prefers
# 256-bit vectors: the zmm (512-bit) registers in the machine code of a row helper, a kernel
# and, as the control, a plain Numba loop without wide_vectors().
_ZMM_PROBE = """
import re
import numba
from numba import types
from fastloss._ext import numba_cpu, numba_math

@numba.njit(cache=False)
def plain(x, out):
    for j in range(x.shape[0]):
        out[j] = x[j] * x[j]

row = types.float32[::1]
rows = types.float32[:, ::1]
probes = ((numba_math.row_max, (row,)),
          (numba_cpu._copy_rows, (types.int64, types.int64, rows, rows)),
          (plain, (row, row)))
for fn, sig in probes:
    fn.compile(sig)
    print(len(re.findall(r"%zmm", fn.inspect_asm(sig))))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="x86 vector widths: no such CPU to compile for")
@pytest.mark.parametrize("switch", ["", "1"])
def test_numba_kernels_take_512_bit_vectors_without_process_settings(tmp_path, switch):
    """LLVM's tuning for skylake-avx512 prefers 256-bit vectors, so a plain Numba loop gets no
    zmm register; the kernels and row helpers set their own preference (wide_vectors) and do,
    unless FASTLOSS_NO_AVX512 is set.  Compiled only: any x86-64 machine can check it."""
    env = dict(os.environ, NUMBA_CPU_NAME="skylake-avx512", NUMBA_CPU_FEATURES="",
               NUMBA_CACHE_DIR=str(tmp_path), FASTLOSS_NO_AVX512=switch)
    run = subprocess.run([sys.executable, "-c", _ZMM_PROBE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    helper, kernel, plain = (int(v) for v in run.stdout.split())
    assert plain == 0
    if switch:
        assert helper == kernel == 0
    else:
        assert helper > 0 and kernel > 0


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


def _cpu_hook(name):
    """The CPU-compiled hook (inline="always": called from a jitted function)."""
    hook = getattr(nm.hooks, name)
    n_args = hook.py_func.__code__.co_argcount
    names = ", ".join(f"a{k}" for k in range(n_args))
    namespace = {"hook": hook}
    exec(f"def run({names}):\n    return hook({names})", namespace)
    return numba.njit(namespace["run"])


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "njit"])
def test_grad_hess_hooks(compiled):
    """The boosting hooks: the floor keeps NaN, an impossible class gets ``-q w`` and the
    floor, the sigmoid pair keeps its relative accuracy and its limits."""
    from fastloss import reference
    from fastloss._ext import numba_hooks

    def hook(name):
        return _cpu_hook(name) if compiled else getattr(numba_hooks, name)

    floor = hook("floor_hessian")
    assert floor(0.5, 1e-3) == 0.5 and floor(0.0, 1e-3) == 1e-3 and np.isnan(floor(np.nan, 1.0))
    g, h = hook("softmax_grad_hess")(0.25, 1.0, 1.0, 2.0, 3.0, 0.0)
    assert (g, h) == ((0.25 - 1.0) * 2.0, 3.0 * 0.25 * 0.75 * 2.0)
    assert hook("softmax_grad_hess")(0.0, 0.3, 1.0, 2.0, 3.0, 1e-3) == (-0.6, 1e-3)
    pair = hook("sigmoid_pair")
    for v in (0.0, 1.5, -1.5, 40.0, -40.0, 700.0, -700.0):
        np.testing.assert_allclose(pair(v), [reference.sigmoid(v), reference.sigmoid(-v)],
                                   rtol=2e-16, atol=0)
    assert pair(np.inf) == (1.0, 0.0) and pair(-np.inf) == (0.0, 1.0)
    assert all(np.isnan(pair(np.nan)))
    v = np.array([-30.0, -2.0, 0.0, 0.5, 30.0])
    t = np.array([0.0, 1.0, 0.25, 1.0, 0.0])
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    expected = reference.binary_cross_entropy_grad_hess(v, t, w, 1.5, 1e-20)
    got = np.array([hook("bce_grad_hess")(*args, 1.5, 1e-20) for args in zip(v, t, w)]).T
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
    assert hook("bce_grad_hess")(np.inf, 0.25, 2.0, 1.0, 1e-3) == (1.5, 1e-3)
    assert hook("bce_grad_hess")(-np.inf, 0.25, 2.0, 1.0, 1e-3) == (-0.5, 1e-3)


# plain Python has no float32 scalars: the float32 case runs compiled only
@pytest.mark.parametrize("compiled, dtype", [(False, np.float64), (True, np.float64),
                                             (True, np.float32)],
                         ids=["python-float64", "njit-float64", "njit-float32"])
def test_bce_value_slope_hook(compiled, dtype):
    """The fused BCE hook (one exp, one log1p) against the reference, in the precision of
    ``one``, with its limits: a zero coefficient gives 0 even on an infinite logit."""
    from fastloss import reference
    from fastloss._ext import numba_hooks

    hook = _cpu_hook("bce_value_slope") if compiled else numba_hooks.bce_value_slope
    one = dtype(1.0)
    v = np.array([-800.0, -30.0, -2.0, -1e-9, 0.0, 0.5, 17.0, 40.0, 700.0])
    t = np.array([0.0, 1.0, 0.25, 1.0, 0.5, 0.0, 1.0, 0.75, 0.0])
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 2.0, 1.0])
    if dtype == np.float32:
        v[0], v[-1] = -80.0, 80.0
    v, t, w = v.astype(dtype), t.astype(dtype), w.astype(dtype)
    want_value, want_slope = reference.binary_cross_entropy_with_logits(v, t, w, 1.5)
    got = np.array([hook(a, b, c, dtype(1.5), one) for a, b, c in zip(v, t, w)], np.float64).T
    rtol = 1e-14 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got[0], want_value, rtol=rtol, atol=0)
    np.testing.assert_allclose(got[1], want_slope, rtol=rtol, atol=1e-300)
    inf = dtype(np.inf)
    assert hook(inf, dtype(1.0), one, one, one) == (0.0, 0.0)  # t = 1: softplus(-inf) = 0
    assert hook(-inf, dtype(0.0), one, one, one) == (0.0, 0.0)
    assert hook(inf, dtype(0.0), one, one, one) == (np.inf, 1.0)
    assert hook(-inf, dtype(1.0), one, one, one) == (np.inf, -1.0)
    assert all(np.isnan(hook(dtype(np.nan), dtype(0.5), one, one, one)))


def test_every_hook_compiles_for_the_cpu():
    from fastloss._ext import numba_hooks

    for name in numba_hooks.HOOKS:
        assert hasattr(getattr(nm.hooks, name), "py_func"), name


# --------------------------------------------------------------------------------- the pool

def test_rows_split_in_shrinking_chunks():
    """Contiguous chunks, more than threads, each 1/(2 n_threads) of the rows left down to
    the smallest size (MIN_CHUNK_ELEMENTS elements, except the last); never more than rows;
    one for small work or one thread."""
    from fastloss._ext._threads import MIN_CHUNK_ELEMENTS, split

    assert split(10, 10000, 4) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert split(9, 10000, 4) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    assert split(10, 100, 4) == [(0, 10)]  # small work: one chunk
    assert split(3, 100000, 8) == [(0, 1), (1, 2), (2, 3)]  # never more chunks than rows
    assert split(1000, 1000, 1) == [(0, 1000)]
    assert split(0, 1000, 4) == [(0, 0)]
    assert split(2048, 32768, 2)[:3] == [(0, 512), (512, 896), (896, 1184)]
    for n, c, t in [(65536, 10, 2), (2048, 32768, 2), (5000, 7, 3), (100, 1000, 16),
                    (7, 1 << 20, 2), (100000, 10, 16)]:
        chunks = split(n, c, t)
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        sizes = [hi - lo for lo, hi in chunks]
        assert len(chunks) <= min(n, t * 2 * max(1, math.log(n)))
        assert len(chunks) > t or n * c < 2 * t * MIN_CHUNK_ELEMENTS or n <= t
        assert sizes == sorted(sizes, reverse=True)  # shrinking
        assert min(sizes[:-1]) * c >= MIN_CHUNK_ELEMENTS or min(sizes[:-1]) == 1


def test_run_ranges_runs_every_chunk_and_reraises_the_first_error():
    from fastloss._ext._threads import run_ranges

    seen = []

    def fn(lo, hi, out):
        seen.append((lo, hi))
        if lo > 0:
            raise ValueError(f"range {lo}")
        out[lo:hi] = 1

    out = np.zeros(8)
    with pytest.raises(ValueError, match="range 1$"):  # the first chunk that raised
        run_ranges(fn, 8, 1 << 20, 4, out)
    assert sorted(seen) == [(k, k + 1) for k in range(8)] and out.tolist() == [1] + [0] * 7


def test_run_ranges_covers_every_row_once_with_scratch_per_worker():
    import threading

    from fastloss._ext._threads import run_ranges, split

    n_rows, n_cols = 1000, 1 << 12
    assert len(split(n_rows, n_cols, 3)) > 3
    made = []

    def scratch():
        buf = np.zeros(1)
        made.append((threading.get_ident(), buf))
        return (buf,)

    def fn(lo, hi, counts, buf):
        assert any(b is buf for _, b in made)
        buf[0] += hi - lo
        counts[lo:hi] += 1

    counts = np.zeros(n_rows, np.int64)
    run_ranges(fn, n_rows, n_cols, 3, counts, scratch=scratch)
    assert (counts == 1).all()
    assert 1 <= len(made) <= 3 and len({ident for ident, _ in made}) == len(made)
    assert sum(b[0] for _, b in made) == n_rows  # each worker reused its own scratch
    counts[:] = 0
    run_ranges(fn, 10, 10, 3, counts, scratch=scratch)  # small work: one chunk, here
    assert (counts[:10] == 1).all() and made[-1][0] == threading.get_ident()


def test_run_ranges_does_not_wait_for_a_busy_pool():
    """Pool threads busy elsewhere (another call, another Python thread): the caller takes
    every chunk itself and cancels the helpers that have not started."""
    import threading

    from fastloss._ext import _threads

    pool = _threads._get_pool()
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(pool._max_workers)]
    try:
        counts = np.zeros(64, np.int64)
        callers = []

        def fn(lo, hi):
            callers.append(threading.get_ident())
            counts[lo:hi] += 1

        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (_threads.run_ranges(fn, 64, 1 << 16, 4), done.set()), daemon=True)
        worker.start()
        assert done.wait(20), "run_ranges waited for a busy pool"
        assert (counts == 1).all() and set(callers) == {worker.ident}
    finally:
        release.set()
        for f in blockers:
            f.result()
