"""Timing of the gradient-boosting objective (``cross_entropy_grad_hess``) against its peers.

``python -c "from fastloss._bench_boosting import bench; bench()"`` prints, for each shape,
the best time of:

* ``fastloss[<backend>]``: :func:`fastloss._grad_hess.cross_entropy_grad_hess` with XGBoost's
  ``multi:softprob`` options, writing into preallocated outputs;
* ``numpy``: the custom objective of XGBoost's ``demo/guide-python/custom_softmax.py``,
  vectorised (softmax, ``p - onehot``, ``max(2 p (1 - p), 1e-6)``);
* ``sklearn``: ``HalfMultinomialLoss().gradient_hessian(..., n_threads=n_threads)`` into
  preallocated outputs (when scikit-learn is installed);
* ``limit``: the memory traffic of the fused kernel, read the scores once and write two
  outputs once: the fastest of a copy of the scores into both outputs in one pass (a Numba
  kernel, on fastloss's thread pool and on the calling thread alone) and two ``np.copyto``
  (which read the scores twice);

with the effective bandwidth (``3 * N * K * itemsize`` bytes) and the ratio to the limit.
"""

from __future__ import annotations

import time

import numpy as np

from . import _backends
from ._grad_hess import cross_entropy_grad_hess


def _limit_fn(n_threads):
    """``(name, [fn(src, dst1, dst2), ...])``: ways to make the read-once, write-twice pass
    of the memory limit, of which the fastest is the limit."""
    ways = [lambda src, a, b: (np.copyto(a, src), np.copyto(b, src))]
    if not _backends.available("numba"):
        return "2 x np.copyto", ways
    from ._ext import numba_cpu

    for k in dict.fromkeys((n_threads, 1)):
        ways.append(lambda src, a, b, k=k: numba_cpu.parallel_copy_twice(src, a, b, k))
    return "copy into both", ways


def numpy_softprob(raw, label):
    """XGBoost's demo objective (``custom_softmax.py``), vectorised with NumPy."""
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    grad = p.copy()
    grad[np.arange(raw.shape[0]), label] -= 1.0
    hess = np.maximum(2.0 * p * (1.0 - p), 1e-6)
    return grad, hess


def _best(fn, budget, min_runs=3, max_runs=30):
    fn()  # warm-up (compilation, page faults)
    best, runs, spent = float("inf"), 0, 0.0
    while runs < max_runs and (runs < min_runs or spent < budget):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    return best


def _implementations(raw, label, grad, hess, backend, n_threads, limit_name, limit,
                     multinomial):
    """``{name: fn()}`` for one input."""
    impls = {
        f"fastloss[{backend}]": lambda: cross_entropy_grad_hess(
            raw, label, hessian_scale=2.0, min_hessian=1e-16, out=(grad, hess),
            backend=backend, n_threads=n_threads),
        "numpy (XGBoost demo)": lambda: numpy_softprob(raw, label),
    }
    if multinomial is not None:
        loss = multinomial(n_classes=raw.shape[1])
        y_true = label.astype(raw.dtype)
        impls["sklearn HalfMultinomialLoss"] = lambda: loss.gradient_hessian(
            y_true, raw, gradient_out=grad, hessian_out=hess, n_threads=n_threads)
    impls[f"limit ({limit_name})"] = [lambda f=f: f(raw, grad, hess) for f in limit]
    return impls


def bench(shapes=((100000, 10), (10000, 1000)), dtype="float32", n_threads=None,
          backend="auto", budget=0.5, seed=0, verbose=True):
    """Time the implementations listed in the module's documentation; returns a list of
    ``{"shape", "impl", "seconds", "gbps", "x_limit"}`` and prints a table when ``verbose``.
    """
    n_threads = n_threads or _backends.default_threads()
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    limit_name, limit = _limit_fn(n_threads)
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
    except ImportError:
        HalfMultinomialLoss = None
    rows = []
    for n, k in shapes:
        raw = (rng.standard_normal((n, k)) * 3).astype(dtype)
        label = rng.integers(0, k, n)
        grad, hess = np.empty_like(raw), np.empty_like(raw)
        impls = _implementations(raw, label, grad, hess, backend, n_threads, limit_name, limit,
                                 HalfMultinomialLoss)
        nbytes = 3 * raw.nbytes
        times = {name: min(_best(f, budget) for f in fn) if isinstance(fn, list)
                 else _best(fn, budget) for name, fn in impls.items()}
        t_limit = times[f"limit ({limit_name})"]
        for name, t in times.items():
            rows.append({"shape": (n, k), "impl": name, "seconds": t, "gbps": nbytes / t / 1e9,
                         "x_limit": t / t_limit})
    if verbose:
        print(f"cross_entropy_grad_hess, {dtype}, n_threads={n_threads}")
        print(f"{'shape':>14}  {'implementation':<36}{'ms':>9}{'GB/s':>8}{'x limit':>9}")
        for r in rows:
            print(f"{str(r['shape']):>14}  {r['impl']:<36}{r['seconds'] * 1e3:9.2f}"
                  f"{r['gbps']:8.1f}{r['x_limit']:9.2f}")
    return rows
