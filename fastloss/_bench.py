"""``python -m fastloss bench``: every backend against NumPy, PyTorch, JAX and the bandwidth limit.

Each workload (loss, forward or fused forward+backward, shape, dtype) is timed for every
available backend, the NumPy reference, the peers that are installed, and the physical
limit: a copy of the logits (fused: the same bytes read and written) or a read (forward),
the fastest of a parallel one, one on the calling thread and NumPy's (see ``_limits``).
Timings are the best of several runs after one warm-up call, whose time (the JIT compile,
for Numba) is reported on its own. Every result is checked against the reference.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _backends, _losses
from ._registry import CASES, CASES_BY_ID

DEFAULT_SHAPES = [(65536, 10), (8192, 1000), (2048, 32768), (512, 128256)]
GPU_SHAPES = [(8192, 128256), (2048, 32768), (65536, 10)]
QUICK_SHAPES = [(512, 10), (64, 1000)]
# the first case of each loss in the table: its plainest variant
ALL_LOSSES = [next(c.id for c in CASES if c.loss == name) for name in _losses.LOSSES]
DEFAULT_LOSSES = ALL_LOSSES[:1]
TOLERANCE = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12),
             # 16-bit results: the float32 values rounded once (an ulp is 2^-8 / 2^-11)
             "bfloat16": (8e-3, 1e-6), "float16": (1e-3, 1e-6)}


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _raw(a):
    """16-bit arrays as uint16 (what the Numba copy and read can move), others as they are."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


@dataclass
class Result:
    loss: str
    mode: str  # "forward" or "fused"
    shape: tuple
    dtype: str
    impl: str  # backend, "reference" (float64), "numpy" (plain), "torch", "jax", "limit",
    #            "limit+target" (the loss's own limit, when its target has the logits' shape)
    seconds: float  # best of `runs`
    runs: int
    warmup_seconds: float
    bytes_moved: int
    check: str  # "ok", "WRONG (...)", "reference", or "-"
    ratio_limit: float = float("nan")  # time / physical limit (copy or read of the logits)
    ratio_own: float = float("nan")  # time / the loss's own limit (every input, once)
    speedup_numpy: float = float("nan")  # plain NumPy time / time
    speedup_peer: float = float("nan")  # best peer time / time

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.seconds / 1e9


def _timeit(fn, budget: float, min_runs: int = 3, max_runs: int = 50):
    """(best seconds, runs, warm-up seconds, last result)."""
    t0 = time.perf_counter()
    result = fn()
    warmup = time.perf_counter() - t0
    best, runs, spent = float("inf"), 0, 0.0
    if warmup > budget:  # the slow NumPy reference: one timed run after the warm-up
        min_runs = 1
    while runs < max_runs and (runs < min_runs or spent < budget):
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    return best, runs, warmup, result


def _agrees(result, reference, dtype: str) -> str:
    rtol, atol = TOLERANCE[dtype]
    worst = 0.0
    for got, want in zip(result, reference):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        finite = np.isfinite(want)
        if not np.array_equal(np.isfinite(got), finite):
            return "WRONG (non-finite values differ)"
        err = np.abs(got[finite] - want[finite]) - rtol * np.abs(want[finite])
        worst = max(worst, float(err.max(initial=0.0)))
    # the grad of "mean" is divided by N: scale the absolute tolerance the same way
    return "ok" if worst <= atol else f"WRONG (error {worst:.2g})"


# ------------------------------------------------------------------------------------ peers

def _torch_peer(case, logits, args, mode, threads, device="cpu"):
    """The loss in PyTorch, default options, the loss's default reduction (the table's peer)."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    if threads:
        torch.set_num_threads(threads)
    spec = case.spec

    def tensor(a):
        a = np.asarray(a)
        if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: same bits
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).to(device)
        return torch.tensor(a, device=device)

    x = tensor(logits)
    targets = [tensor(a) for a in args]

    def loss_fn(x):
        return spec.torch(torch, x, targets[0] if targets else None, case.options({}),
                          spec.default_reduction)

    def synced(result):
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    if mode == "forward":
        def run():
            with torch.no_grad():
                return synced((loss_fn(x).float().cpu().numpy(),))
        return run

    leaf = x.clone().requires_grad_()

    def run_fused():
        leaf.grad = None
        loss = loss_fn(leaf)
        loss.backward()
        return synced((loss.detach().float().cpu().numpy(), leaf.grad.float().cpu().numpy()))
    return run_fused


def _numpy_peer(case, logits, args, mode, threads):
    """Plain vectorised NumPy in the input's dtype: what a NumPy user runs (the table's)."""
    if case.spec.numpy is None:
        return None
    target = np.asarray(args[0]) if args else None
    if logits.dtype.itemsize == 2:
        # 16-bit sums in NumPy lose every digit: a NumPy user computes in float32 and
        # rounds the gradient back
        t32 = target if target is None or target.dtype.kind in "iu" else \
            target.astype(np.float32)
        if mode == "forward":
            return lambda: (case.spec.numpy(logits.astype(np.float32), t32, False),)

        def run():
            loss, grad = case.spec.numpy(logits.astype(np.float32), t32, True)
            return loss, grad.astype(logits.dtype)
        return run
    if mode == "forward":
        return lambda: (case.spec.numpy(logits, target, False),)
    return lambda: case.spec.numpy(logits, target, True)


def _jax_peer(case, logits, args, mode, threads):
    """The loss as a JAX user writes it (optax where it has the loss), under ``jit``."""
    if case.spec.jax is None:
        return None
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", logits.dtype == np.float64)
    x = jnp.asarray(logits)
    target = jnp.asarray(args[0]) if args else None

    def loss_fn(x):
        return case.spec.jax(jnp, x, target)

    if mode == "forward":
        f = jax.jit(loss_fn)
        return lambda: (np.asarray(f(x).block_until_ready()),)
    g = jax.jit(jax.value_and_grad(loss_fn))

    def run():
        loss, grad = g(x)
        return np.asarray(loss.block_until_ready()), np.asarray(grad)
    return run


# ------------------------------------------------------------------------------------ main

def _limits(threads=None):
    """Ways to move the bytes of the limit, each ``(copy, read, add, read_pair)``: a copy /
    read of the logits, and their counterparts that also read a target of the logits' shape
    (``(src, target, dst)``, ``(src, target, out)``).  The limit is the fastest of them
    (:func:`_limit_time`): Numba's kernels on ``threads`` threads and on the calling thread
    alone (where handing work to the pool costs more than it saves: small arrays), and
    NumPy's ``copyto`` / ``add`` and a max over the elements' bits (a read that vectorises
    whatever the row length, where the Numba read sums row by row)."""
    n_threads = threads or _backends.default_threads()

    def bits(a):  # the elements as unsigned integers: NumPy's max over them is vectorised
        return a.reshape(-1).view(f"u{a.dtype.itemsize}")

    def read(src, out):
        out[0] = bits(src).max()

    def read_pair(src, t, out):
        out[0] = max(bits(src).max(), bits(t).max())

    def add(src, t, dst):  # on the bits where the sizes agree: NumPy's bfloat16 add is slow
        if src.dtype.itemsize == t.dtype.itemsize == dst.dtype.itemsize:
            np.add(bits(src), bits(t), out=bits(dst))
        else:
            np.add(src, t, out=dst)

    ways = [((lambda src, dst: np.copyto(dst, src)), read, add, read_pair)]
    if _backends.available("numba"):
        from ._ext import numba_cpu

        for k in dict.fromkeys((n_threads, 1)):
            ways.insert(0, (
                lambda src, dst, k=k: numba_cpu.parallel_copy(_raw(src), _raw(dst), k),
                lambda src, out, k=k: numba_cpu.parallel_read(_raw(src), out, k),
                lambda src, t, dst, k=k: numba_cpu.parallel_add(_raw(src), _raw(t),
                                                                _raw(dst), k),
                lambda src, t, out, k=k: numba_cpu.parallel_read_pair(_raw(src), _raw(t),
                                                                      out, k)))
    return ways


def _limit_time(fns, budget):
    """:func:`_timeit` of the fastest of ``fns`` (each a no-argument call)."""
    return min((_timeit(fn, budget) for fn in fns), key=lambda r: r[0])


def _same_shape_target(logits, args):
    """The target a loss reads element for element beside the logits (BCE, KL, MSE, soft
    targets), or None (class indices, no target)."""
    for a in args:
        if isinstance(a, np.ndarray) and a.shape == logits.shape:
            return a
    return None

def parse_shapes(text):
    """``"2048x32768,512x128256"`` -> ``[(2048, 32768), (512, 128256)]`` (any number of
    dimensions: ``NxHxV`` for the linear workload); ``None`` for no text."""
    if not text:
        return None
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]


def _shapes(options, default):
    if options.quick:
        return QUICK_SHAPES
    return parse_shapes(options.shapes) or default


def _dtypes(options):
    return ["float32", "float64"] if options.dtype == "both" else [options.dtype]


def _losses_wanted(options):
    """--loss NAME[,NAME...] (names of the loss table), --all, or cross-entropy alone."""
    names = getattr(options, "loss", None)
    if not names:
        return ALL_LOSSES if options.all else DEFAULT_LOSSES
    wanted = [n.strip() for n in names.split(",")]
    for name in wanted:
        if name not in _losses.LOSSES:
            raise SystemExit(f"unknown loss {name!r}; known: {', '.join(_losses.LOSSES)}")
    return [case_id for case_id in ALL_LOSSES if CASES_BY_ID[case_id].loss in wanted]


def _workloads(options):
    shapes = _shapes(options, DEFAULT_SHAPES)
    dtypes = _dtypes(options)
    losses = _losses_wanted(options)
    return [(CASES_BY_ID[loss], mode, shape, dtype) for loss in losses
            for shape in shapes for dtype in dtypes for mode in ("forward", "fused")]


def _backends_to_run(options):
    """The CPU backends to time (cuda gets GPU rows of its own, see _run_gpu_workload)."""
    names = [n for n, s in _backends.backends().items() if s == "available" and n != "cuda"]
    if options.backends:
        wanted = [b.strip() for b in options.backends.split(",")]
        for name in wanted:
            if name not in _backends.NAMES:
                raise SystemExit(f"unknown backend {name!r}; known: {', '.join(_backends.NAMES)}")
        names = [n for n in names if n in wanted]
    if "numpy" not in names:
        names.insert(0, "numpy")  # the reference is always timed: it checks the others
    return names


def _run_workload(case, mode, shape, dtype, impls, peers, options, budget, progress):
    """Time one (loss, mode, shape, dtype) on the limit, every backend and every peer."""
    ways = _limits(options.threads)
    logits, args, kwargs = case.inputs(np.random.default_rng(0), shape, _dtype(dtype))
    nbytes = logits.nbytes * (2 if mode == "fused" else 1)
    label = f"{case.loss} {mode} {shape[0]}x{shape[1]} {dtype}"
    buffer = np.empty_like(logits)
    rows = np.empty(shape[0])
    if mode == "fused":
        t, n, w, _ = _limit_time([lambda f=f: f[0](logits, buffer) for f in ways], budget)
    else:
        t, n, w, _ = _limit_time([lambda f=f: f[1](logits, rows) for f in ways], budget)
    group = [Result(case.loss, mode, shape, dtype, "limit", t, n, w, nbytes, "-")]
    target = _same_shape_target(logits, args)
    if target is not None:  # the loss's own limit: the target is read once too
        if mode == "fused":
            t, n, w, _ = _limit_time([lambda f=f: f[2](logits, target, buffer)
                                      for f in ways], budget)
        else:
            t, n, w, _ = _limit_time([lambda f=f: f[3](logits, target, rows) for f in ways],
                                     budget)
        group.append(Result(case.loss, mode, shape, dtype, "limit+target", t, n, w,
                            nbytes + target.nbytes, "-"))

    def call(impl):
        if mode == "fused":
            return case.with_grad(logits, *args, **kwargs, backend=impl, out=buffer,
                                  n_threads=options.threads)
        return (case.forward(logits, *args, **kwargs, backend=impl,
                             n_threads=options.threads),)

    reference = None
    for impl in impls:
        if progress:
            progress(f"{label}: {impl}")
        t, n, w, out = _timeit(lambda impl=impl: call(impl), budget)
        out = tuple(np.array(o, copy=True) for o in out)
        if impl == "numpy":  # the float64 reference behind the kernel protocol: the check
            reference, check, impl = out, "reference", "reference"
        else:
            check = _agrees(out, reference, dtype)
        group.append(Result(case.loss, mode, shape, dtype, impl, t, n, w, nbytes, check))
    for name, make in peers:
        fn = make(case, logits, args, mode, options.threads)
        if fn is None:
            continue
        if progress:
            progress(f"{label}: {name}")
        t, n, w, out = _timeit(fn, budget)
        group.append(Result(case.loss, mode, shape, dtype, name, t, n, w, nbytes,
                            _agrees(out, reference, dtype)))
    limit, own = group[0].seconds, group[1 if target is not None else 0].seconds
    numpy_t = next((r.seconds for r in group if r.impl == "numpy"),
                   next(r.seconds for r in group if r.impl == "reference"))
    peer_ts = [r.seconds for r in group if r.impl in ("torch", "jax")]
    for r in group:
        r.ratio_limit = r.seconds / limit
        r.ratio_own = r.seconds / own
        r.speedup_numpy = numpy_t / r.seconds
        if peer_ts:
            r.speedup_peer = min(peer_ts) / r.seconds
    return group


def _gpu_wanted(options) -> bool:
    """GPU rows: on a real GPU, or on the CUDA simulator when asked for by name."""
    if not _backends.available("cuda"):
        return False
    named = options.backends is not None and "cuda" in options.backends.split(",")
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
    return named or (options.backends is None and not simulated)


def _run_gpu_workload(case, mode, shape, dtype, options, budget, progress):
    """The cuda backend on GPU arrays against a device-to-device copy (fused) or the same
    copy's read half (forward), and PyTorch CUDA when torch sees the GPU."""
    from numba import cuda

    def synced(fn):
        def run():
            result = fn()
            cuda.synchronize()
            return result
        return run

    logits, args, kwargs = case.inputs(np.random.default_rng(0), shape, _dtype(dtype))
    nbytes = logits.nbytes * (2 if mode == "fused" else 1)
    d_x, d_out = cuda.to_device(logits), cuda.device_array(logits.shape, logits.dtype)
    d_args = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in args)
    label = f"GPU {case.loss} {mode} {shape[0]}x{shape[1]} {dtype}"
    if progress:
        progress(label)
    t, n, w, _ = _timeit(synced(lambda: d_out.copy_to_device(d_x)), budget)
    limit = Result(case.loss, mode, shape, dtype, "limit", t * (0.5 if mode == "forward"
                   else 1.0), n, w, nbytes, "-")
    group = [limit]
    if mode == "fused":
        call = synced(lambda: case.with_grad(d_x, *d_args, **kwargs, out=d_out))
    else:
        call = synced(lambda: (case.forward(d_x, *d_args, **kwargs),))
    t, n, w, out = _timeit(call, budget)
    out = tuple(o.copy_to_host() if hasattr(o, "copy_to_host") else np.asarray(o) for o in out)
    reference = _reference_result(case, mode, logits, args, kwargs)
    group.append(Result(case.loss, mode, shape, dtype, "cuda", t, n, w, nbytes,
                        _agrees(out, reference, dtype)))
    torch_fn = None if options.no_peers else _torch_peer(case, logits, args, mode, None,
                                                         device="cuda")
    if torch_fn is not None:
        t, n, w, out = _timeit(torch_fn, budget)
        group.append(Result(case.loss, mode, shape, dtype, "torch-cuda", t, n, w, nbytes,
                            _agrees(out, reference, dtype)))
    for r in group:
        r.ratio_limit = r.ratio_own = r.seconds / limit.seconds  # cross-entropy: no target
        if torch_fn is not None:
            r.speedup_peer = group[-1].seconds / r.seconds
    return group


def _reference_result(case, mode, logits, args, kwargs):
    """The check of a GPU result: the fastest CPU backend, itself checked by the tests."""
    backend = _backends.auto_cpu()
    if mode == "fused":
        return case.with_grad(logits, *args, **kwargs, backend=backend)
    return (case.forward(logits, *args, **kwargs, backend=backend),)


def run(options, progress=None) -> list[Result]:
    budget = 0.05 if options.quick else 0.4
    impls = _backends_to_run(options)
    peers = [("numpy", _numpy_peer)]
    if not options.no_peers:
        peers += [("torch", _torch_peer), ("jax", _jax_peer)]
    results = []
    for case, mode, shape, dtype in _workloads(options):
        results.extend(_run_workload(case, mode, shape, dtype, impls, peers, options, budget,
                                     progress))
    if _gpu_wanted(options):
        for dtype in _dtypes(options):
            for shape in _shapes(options, GPU_SHAPES):
                for mode in ("forward", "fused"):
                    results.extend(_run_gpu_workload(CASES_BY_ID[DEFAULT_LOSSES[0]], mode,
                                                     shape, dtype, options, budget, progress))
    return results


def per_call(dtype="float32", n_calls: int = 3000, rounds: int = 5) -> dict:
    """Microseconds per call at 64 x 10 (cross-entropy, class indices, "mean", fused into
    ``out=``, ``backend="auto"``: what a small training step calls), best of ``rounds``,
    beside plain vectorised NumPy and ``np.empty_like`` (the cost of any NumPy call)."""
    import fastloss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 10)).astype(_dtype(dtype))
    t = rng.integers(0, 10, 64)
    out = np.empty_like(x)
    spec = CASES_BY_ID[DEFAULT_LOSSES[0]].spec
    calls = {
        "fastloss": lambda: fastloss.cross_entropy_with_grad(x, t, out=out),
        "numpy": lambda: spec.numpy(x, t, True),
        "empty_like": lambda: np.empty_like(x),
    }
    best = dict.fromkeys(calls, float("inf"))
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(n_calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n_calls * 1e6)
    return best


def machine_info(options) -> dict:
    from ._machine import cpu_description, default_threads

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m fastloss " + " ".join(sys.argv[1:]),
            "python": platform.python_version(), "numpy": np.__version__,
            "cpu": cpu_description(), "threads": options.threads or default_threads(),
            "backends": _backends.backends()}
    for module in ("numba", "torch", "jax"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def _fmt(value, spec) -> str:
    return "-" if value != value else format(value, spec)


def _times(value) -> str:
    return "-" if value != value else f"{value:.1f}x"


def render(results, info, console=None):
    headers = ["loss", "mode", "shape", "dtype", "impl", "ms", "warm-up s", "x limit", "x own",
               "vs numpy", "vs peer", "GB/s", "check"]
    rows = []
    for r in results:
        limit_name = "copy" if r.mode == "fused" else "read"
        if any(g.impl == "cuda" and (g.loss, g.mode, g.shape, g.dtype) == (
                r.loss, r.mode, r.shape, r.dtype) for g in results):
            limit_name = "d2d " + limit_name
        impl = {"limit": limit_name, "limit+target": limit_name + "+target"}.get(r.impl, r.impl)
        rows.append([r.loss, r.mode, f"{r.shape[0]}x{r.shape[1]}", r.dtype, impl,
                     f"{r.seconds * 1e3:.2f}", f"{r.warmup_seconds:.2f}",
                     _fmt(r.ratio_limit, ".2f"), _fmt(r.ratio_own, ".2f"),
                     _times(r.speedup_numpy), _times(r.speedup_peer),
                     f"{r.gbps:.1f}", r.check])
    title = (f"fastloss {info['date']} - {info['cpu']['model']}, {info['threads']} threads; "
             "x limit = time / parallel copy (fused) or read (forward) of the logits; "
             "x own = time / the loss's own limit, which also reads a target of the logits' "
             "shape once (copy+target, read+target rows; the copy or read otherwise); "
             "vs numpy/peer = their time / this time (numpy: plain vectorised NumPy in the "
             "input's dtype; reference: the float64 oracle that checks every result); "
             "fused calls write into out=")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
        print(title)
        for row in [headers, *rows]:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        return
    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, justify="left" if h in ("loss", "mode", "impl", "check") else "right")
    previous = None
    for r, row in zip(results, rows):
        key = (r.loss, r.mode, r.shape, r.dtype)
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        style = "bold red" if row[-1].startswith("WRONG") else (
            "dim" if _is_limit(r.impl) else None)
        table.add_row(*row, style=style)
    (console or Console(width=200)).print(table)


def _is_limit(impl) -> bool:
    return impl in ("limit", "limit+target")


def _key(r) -> tuple:
    return (r["loss"], r["mode"], tuple(r["shape"]), r["dtype"], r["impl"])


def compare(results, old_path):
    """Each ratio of this run beside the same figure of an earlier ``--json`` run."""
    with open(old_path) as f:
        old = {_key(r): r for r in json.load(f)["results"]}
    print(f"\nagainst {old_path} (now / before; a regression is a larger x limit)")
    print(f"{'loss':<34}{'mode':<8}{'shape':<13}{'dtype':<8}{'impl':<10}"
          f"{'x limit':>16}{'x own':>16}{'vs numpy':>18}{'ms':>20}")
    for r in results:
        before = old.get(_key(asdict(r)))
        if before is None or _is_limit(r.impl):
            continue
        now_then = [(r.ratio_limit, before["ratio_limit"]),
                    (r.ratio_own, before.get("ratio_own", float("nan"))),
                    (r.speedup_numpy, before["speedup_numpy"]),
                    (r.seconds * 1e3, before["seconds"] * 1e3)]
        cells = "".join(f"{_fmt(a, '.2f'):>8} / {_fmt(b, '.2f'):<7}" for a, b in now_then)
        print(f"{r.loss:<34}{r.mode:<8}{r.shape[0]}x{r.shape[1]:<8}{r.dtype:<8}{r.impl:<10}"
              + cells)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def key_of(r):
        return f"{r.loss}\n{r.mode}\n{r.shape[0]}x{r.shape[1]} {r.dtype}"

    groups = list(dict.fromkeys(key_of(r) for r in results))
    impls = [i for i in dict.fromkeys(r.impl for r in results) if not _is_limit(i)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, key in enumerate(groups):
            for r in results:
                if key_of(r) == key and r.impl == impl:
                    xs.append(i + j * width)
                    ys.append(r.ratio_own)
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="black", lw=1, ls="--",
               label="own limit: every input read once, the gradient written once")
    ax.set_yscale("log")
    ax.set_ylabel("time / memory-bandwidth limit (lower is better)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(options) -> int:
    info = machine_info(options)
    try:
        from rich.progress import Progress
    except ImportError:
        results = run(options, progress=lambda text: print(text, file=sys.stderr))
    else:
        with Progress(transient=True) as bar:
            total = len(_workloads(options))
            task = bar.add_task("benchmarking", total=total * (1 + len(_backends_to_run(options))))

            def progress(text):
                bar.update(task, advance=1, description=text)

            results = run(options, progress)
    render(results, info)
    small = None
    if DEFAULT_LOSSES[0] in _losses_wanted(options) and not options.quick \
            and options.dtype in ("float32", "float64", "both"):
        dtype = _dtypes(options)[0]
        small = per_call(dtype)
        print(f"per call at 64x10 ({dtype}, cross-entropy fused into out=, "
              f"backend auto): fastloss {small['fastloss']:.1f} us, plain NumPy "
              f"{small['numpy']:.1f} us, np.empty_like {small['empty_like']:.2f} us")
    if not any(r.impl not in ("reference", "numpy", "torch", "jax") and not _is_limit(r.impl)
               for r in results):
        print("no accelerated backend is available: only the NumPy reference was timed")
    if getattr(options, "compare", None):
        compare(results, options.compare)
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"machine": info, "per_call_us": small, "results": [
                {**asdict(r), "gbps": r.gbps} for r in results]}, f, indent=2, default=str)
        print(f"wrote {options.json}")
    if options.plot:
        plot(results, options.plot)
        print(f"wrote {options.plot}")
    wrong = [r for r in results if r.check.startswith("WRONG")]
    ours = [r for r in wrong if r.impl in _backends.NAMES]
    if len(wrong) > len(ours):
        # e.g. PyTorch and JAX sum bfloat16 rows in bfloat16: their loss, not a fastloss bug
        print(f"{len(wrong) - len(ours)} peer result(s) differ from the reference by more "
              f"than the dtype's tolerance", file=sys.stderr)
    if ours:
        print(f"{len(ours)} fastloss result(s) disagree with the reference", file=sys.stderr)
        return 1
    return 0
