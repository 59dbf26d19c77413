"""Benchmark of the fused linear + cross-entropy (the language-model head).

For each shape ``(N, H, V)`` (rows, features, classes) it times the forward and backward of
``cross_entropy(x @ W.T, y)`` and measures its peak extra memory, for:

* ``fastloss linear``: :func:`fastloss._linear.linear_cross_entropy_with_grad` (chunked);
* ``limit: 3 matmuls``: the three products alone (``x @ W.T``, ``g @ W``, ``g.T @ x`` into
  preallocated arrays, on the BLAS fastloss's products use), what any implementation must
  compute;
* ``numpy unfused``: ``x @ W.T``, fastloss's fused cross-entropy in place, the two products;
* ``torch unfused``: ``F.cross_entropy(x @ W.T, y)`` and ``backward()``;
* ``torch linear_cross_entropy``: ``F.linear_cross_entropy`` with its chunked options and
  ``backward()``, where the installed torch has it.

Times are the best of ``repeats`` runs after one warm-up run.  Memory: ``peak_mib`` is the
tracemalloc peak (NumPy's allocations; torch's are invisible to it, so None), ``rss_mib``
the peak resident memory above the start (``/proc/self/clear_refs``, Linux; every allocator).
Every result is checked against fastloss's (loss, grad_input, grad_linear_weight):
``rel_err`` is the largest of the errors, each relative to the largest value of its array.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc

import numpy as np

from . import _linear
from ._api import cross_entropy_with_grad

DEFAULT_SHAPES = ((4096, 1024, 32768), (1024, 512, 128256))
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # normwise, see rel_err

__all__ = ["run", "format_rows", "main", "DEFAULT_SHAPES"]


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_memory(fn):
    """(tracemalloc peak in bytes, peak RSS above the start in bytes or None) of one call."""
    rss_ok = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    except OSError:
        rss_ok = False
    start = _rss_kib("VmRSS")
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    rss = (hwm - start) * 1024 if rss_ok and start is not None and hwm is not None else None
    return peak, rss


def _best_time(fn, repeats: int):
    t0 = time.perf_counter()
    result = fn()
    warmup = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, warmup, result


def _rel_err(result, reference) -> float:
    worst = 0.0
    for got, want in zip(result, reference):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        scale = max(float(np.abs(want).max(initial=0.0)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.abs(got - want).max(initial=0.0)) / scale)
    return worst


@contextlib.contextmanager
def _blas_threads(n_threads):
    """Limit BLAS (NumPy's and SciPy's) to ``n_threads`` for the whole run, if asked."""
    if n_threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=n_threads, user_api="blas"):
        yield


@contextlib.contextmanager
def _torch_threads():
    """Give torch its thread count back after the run (``n_threads`` sets it)."""
    try:
        import torch
    except ImportError:
        yield
        return
    saved = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _implementations(x, w, y, n_threads):
    """name -> (function returning (loss, grad_input, grad_w), uses torch, is the limit)."""
    impls = {}
    impls["fastloss linear"] = (
        lambda: _linear.linear_cross_entropy_with_grad(x, w, y, n_threads=n_threads)[:3],
        False, False)

    n, h = x.shape
    v = w.shape[0]
    logits = np.empty((n, v), dtype=x.dtype)
    gx = np.empty((n, h), dtype=x.dtype)
    gw = np.empty((v, h), dtype=x.dtype)

    # the products on the BLAS fastloss's linear uses (SciPy's when importable): NumPy and
    # SciPy each bundle an OpenBLAS, and two pools taking turns in one process slow each
    # other (a pool's threads spin for a while after its last call), so the limit must not
    # be measured on the other one
    products = _linear._Products()

    def limit():
        products.logits(x, w, None, logits)
        products.grad_input(logits, w, gx)
        if products.scipy:
            _linear._gemm(logits.T, x, gw, 0.0)
        else:
            np.matmul(logits.T, x, out=gw)
        return None

    impls["limit: 3 matmuls"] = (limit, False, True)

    def numpy_unfused():
        z = x @ w.T
        loss, g = cross_entropy_with_grad(z, y, out=z, n_threads=n_threads)
        return loss, g @ w, g.T @ x

    impls["numpy unfused"] = (numpy_unfused, False, False)

    try:
        import torch
    except ImportError:
        return impls
    F = torch.nn.functional
    if n_threads:
        torch.set_num_threads(n_threads)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def torch_run(loss_fn):
        def fn():
            xt.grad = wt.grad = None
            loss = loss_fn()
            loss.backward()
            return loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()
        return fn

    impls["torch unfused"] = (torch_run(lambda: F.cross_entropy(xt @ wt.T, yt)), True, False)
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        options = torch.nn.LinearCrossEntropyOptions()
        impls["torch linear_cross_entropy"] = (
            torch_run(lambda: F.linear_cross_entropy(xt, wt, yt, options=options)), True, False)
    return impls


def run(shapes=DEFAULT_SHAPES, dtype="float32", n_threads=None, *, repeats: int = 3,
        impls=None, seed: int = 0) -> list[dict]:
    """Time and measure every implementation on every shape ``(N, H, V)``; one dict a row.

    ``n_threads`` (default: all cores) limits fastloss's kernels, BLAS (through
    threadpoolctl, when installed) and torch.  ``impls`` restricts the implementations by name.
    """
    rows = []
    rng = np.random.default_rng(seed)
    with _blas_threads(n_threads), _torch_threads():
        for n, h, v in shapes:
            x = rng.standard_normal((n, h), dtype=np.float64).astype(dtype)
            w = (rng.standard_normal((v, h)) / np.sqrt(h)).astype(dtype)
            y = rng.integers(0, v, size=n)
            reference = None
            flops = 3 * 2.0 * n * h * v
            for name, (fn, is_torch, is_limit) in _implementations(x, w, y, n_threads).items():
                if impls is not None and name not in impls:
                    continue
                seconds, warmup, result = _best_time(fn, repeats)
                peak, rss = _peak_memory(fn)
                if reference is None and name == "fastloss linear":
                    reference = result
                if is_limit:
                    check, err = "limit", float("nan")
                elif reference is None or name == "fastloss linear":
                    check, err = "reference", float("nan")
                else:
                    err = _rel_err(result, reference)
                    check = "ok" if err <= TOLERANCE[str(np.dtype(dtype))] else "WRONG"
                rows.append(dict(
                    shape=f"{n}x{h}x{v}", n=n, h=h, v=v, dtype=str(np.dtype(dtype)),
                    impl=name, seconds=seconds, warmup_seconds=warmup, runs=repeats,
                    gflops=flops / seconds / 1e9,
                    peak_mib=None if is_torch else peak / 2**20,
                    rss_mib=None if rss is None else rss / 2**20,
                    logits_mib=n * v * np.dtype(dtype).itemsize / 2**20,
                    outputs_mib=(n + v) * h * np.dtype(dtype).itemsize / 2**20,
                    rel_err=err, check=check))
            limit = [r["seconds"] for r in rows if r["shape"] == f"{n}x{h}x{v}"
                     and r["impl"].startswith("limit")]
            for r in rows:
                if r["shape"] == f"{n}x{h}x{v}" and limit:
                    r["ratio_limit"] = r["seconds"] / limit[0]
    return rows


def format_rows(rows) -> str:
    """A plain-text table."""
    def mib(value):
        return "-" if value is None else f"{value:.0f}"
    lines = [f"{'shape NxHxV':<18}{'dtype':<9}{'impl':<28}{'seconds':>9}{'x limit':>9}"
             f"{'GFLOP/s':>9}{'peak MiB':>10}{'RSS MiB':>9}  check"]
    for r in rows:
        err = "" if r["rel_err"] != r["rel_err"] else f" ({r['rel_err']:.1e})"
        lines.append(f"{r['shape']:<18}{r['dtype']:<9}{r['impl']:<28}{r['seconds']:>9.3f}"
                     f"{r.get('ratio_limit', float('nan')):>9.2f}{r['gflops']:>9.1f}"
                     f"{mib(r['peak_mib']):>10}{mib(r['rss_mib']):>9}  {r['check']}{err}")
    return "\n".join(lines)


def main(args=None) -> int:
    """``python -m fastloss._bench_linear [--shapes NxHxV,...] [--dtype] [--threads]``, or
    ``python -m fastloss bench --workload linear`` with an argparse namespace of the same
    fields."""
    if args is None or isinstance(args, list):
        import argparse

        parser = argparse.ArgumentParser(prog="python -m fastloss._bench_linear")
        parser.add_argument("--shapes", help="comma-separated NxHxV, e.g. 1024x512x32768")
        parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        parser.add_argument("--threads", type=int)
        parser.add_argument("--repeats", type=int, default=3)
        args = parser.parse_args(args)
    from ._bench import parse_shapes

    shapes = parse_shapes(args.shapes) or DEFAULT_SHAPES
    dtype = "float32" if args.dtype == "both" else args.dtype
    rows = run(shapes, dtype, args.threads, repeats=getattr(args, "repeats", 3))
    print(format_rows(rows))
    return 1 if any(r["check"] == "WRONG" for r in rows) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
