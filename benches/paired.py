"""An earlier build of the C backend against this one, in one process, the calls alternating.

    python benches/paired.py OLD_TREE [--loss cross_entropy,kl_divergence]
                             [--shapes 2048x32768,8192x1000] [--threads 2] [--rounds 9]
                             [--kwargs softcap=30]

OLD_TREE is a checkout of the earlier commit with its extension built in place
(``git worktree add ../old REV && cd ../old && python setup.py build_ext --inplace``); the new
build is the ``fastloss`` this Python imports.  Both ``_cython`` extensions are loaded side by
side, and the public functions run on either in turn (``backend="cython"``).  Each round
times every workload once on the old build and once on the new (a batch of calls taking at
least 5 ms), and the best of the rounds is kept: a machine whose speed drifts between two
``python -m fastloss bench`` runs moves both builds alike here.  It prints new/old for each
(loss, mode, shape), and for the per-call line of ``python -m fastloss bench`` (64x10, fused
into ``out=``).  ``--loss cross_entropy_grad_hess`` adds the boosting bench's gradient +
Hessian call (class indices, XGBoost's scaling, into ``out=``); ``--kwargs softcap=30`` (or
``temperature=2``, any numeric keyword arguments) goes into every loss call.  The two builds
must share the kernel protocol (the Python side is this tree's).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time

import numpy as np

from fastloss import _backends
from fastloss._bench import ALL_LOSSES, _dtype, parse_shapes
from fastloss._registry import CASES_BY_ID


def _load_old(tree):
    paths = glob.glob(os.path.join(tree, "fastloss", "_ext", "_cython.*"))
    paths = [p for p in paths if p.endswith((".so", ".pyd"))]
    if not paths:
        sys.exit(f"no built fastloss/_ext/_cython extension under {tree}: build it in place")
    spec = importlib.util.spec_from_file_location("fastloss_old._cython", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batch(fn, at_least=0.005):
    """How many calls of fn take at least ``at_least`` seconds (one sample of a call under a
    millisecond is mostly this machine's noise)."""
    count = 1
    while True:
        start = time.perf_counter()
        for _ in range(count):
            fn()
        if time.perf_counter() - start >= at_least or count >= 1 << 16:
            return count
        count *= 2


def _best(fn, count, best):
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return min(best, (time.perf_counter() - start) / count)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_tree")
    parser.add_argument("--loss", default="cross_entropy", help="comma-separated losses")
    parser.add_argument("--shapes", default="2048x32768,8192x1000,65536x10")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--kwargs", default="", metavar="NAME=VALUE,...",
                        help="keyword arguments of every loss call, numbers "
                             "(e.g. softcap=30 or temperature=2 with --loss cross_entropy)")
    options = parser.parse_args(argv)
    extra = {}
    for item in filter(None, options.kwargs.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--kwargs takes NAME=VALUE pairs, got {item!r}")
        extra[name.strip()] = float(value)

    new = _backends._load("cython")[0]
    if new is None:
        sys.exit("the cython backend of this tree is not built")
    builds = {"old": _load_old(options.old_tree), "new": new}
    wanted = options.loss.split(",")
    cases = [CASES_BY_ID[c] for c in ALL_LOSSES if CASES_BY_ID[c].loss in wanted]
    grad_hess = "cross_entropy_grad_hess" in wanted
    if not cases and not grad_hess:
        sys.exit(f"no loss among {wanted}")
    rng = np.random.default_rng(0)
    work = []
    import fastloss

    if grad_hess:  # the boosting bench's call: XGBoost's scaling, into out=
        for shape in parse_shapes(options.shapes):
            raw = rng.standard_normal(shape).astype(_dtype(options.dtype))
            label = rng.integers(0, shape[1], shape[0])
            outs = np.empty_like(raw), np.empty_like(raw)
            work.append((f"grad_hess {shape[0]}x{shape[1]}",
                         lambda x=raw, y=label, o=outs: fastloss.cross_entropy_grad_hess(
                             x, y, hessian_scale=2.0, min_hessian=1e-16, out=o,
                             backend="cython", n_threads=options.threads)))
    for case in cases:
        for shape in parse_shapes(options.shapes):
            logits, args, kwargs = case.inputs(rng, shape, _dtype(options.dtype))
            out = np.empty_like(logits)
            kw = dict(kwargs, **extra, backend="cython", n_threads=options.threads)
            work.append((f"{case.loss} fused {shape[0]}x{shape[1]}",
                         lambda c=case, x=logits, a=args, k=kw, o=out: c.with_grad(x, *a, **k,
                                                                                  out=o)))
            work.append((f"{case.loss} forward {shape[0]}x{shape[1]}",
                         lambda c=case, x=logits, a=args, k=kw: c.forward(x, *a, **k)))
    x = rng.standard_normal((64, 10)).astype(np.float32)
    t = rng.integers(0, 10, 64)
    out = np.empty_like(x)

    def per_call():
        for _ in range(2000):
            fastloss.cross_entropy_with_grad(x, t, out=out)
    work.append(("per call 64x10, fused, auto", per_call))

    best = {(name, b): float("inf") for name, _ in work for b in builds}
    counts = {}  # calls per sample, set by the first build's first round
    saved = _backends._cache["cython"]
    try:
        for _ in range(options.rounds):
            for name, fn in work:
                for b, module in builds.items():
                    _backends._cache["cython"] = (module, "available")
                    fn()  # warm: caches, page faults of the output
                    if name not in counts:
                        counts[name] = _batch(fn)
                    count = counts[name]
                    best[name, b] = _best(fn, count, best[name, b])
    finally:
        _backends._cache["cython"] = saved
    print(f"{options.dtype}, threads {options.threads or 'all'}, best of {options.rounds} "
          f"rounds; old: {options.old_tree}"
          + "".join(f"; {k}={v:g}" for k, v in extra.items()))
    for name, _ in work:
        old, new_t = best[name, "old"], best[name, "new"]
        scale, unit = (1e6 / 2000, "us") if name.startswith("per call") else (1e3, "ms")
        print(f"{name:36s} old {old * scale:9.3f} {unit}  new {new_t * scale:9.3f} {unit}  "
              f"new/old {new_t / old:.3f}")


if __name__ == "__main__":
    main()
