"""The C backend's time per element with the arrays in cache and from memory, one loss at a time.

    python benches/cache_memory.py [--loss kl_divergence,binary_cross_entropy_with_logits]
                                   [--classes 32768] [--rows 16,512] [--threads 1]

For each loss (its first case in the bench's registry, float32) and each row count, the best
time of the forward and of the fused call into ``out=`` over about a second, divided by the
number of elements.  At 16 rows of 32768 classes every array is 2 MiB and stays in cache:
that time is the arithmetic alone.  At 512 rows each array is 64 MiB and comes from memory:
where the kernel overlaps its reads with its arithmetic the two times agree, and the gap
between them is the memory the arithmetic waited for.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastloss._bench import ALL_LOSSES
from fastloss._registry import CASES_BY_ID


def _best_ns(fn, elements, budget=1.0):
    fn()
    best, end = float("inf"), time.perf_counter() + budget
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e9 / elements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="kl_divergence,binary_cross_entropy_with_logits")
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--rows", default="16,512")
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"float32, {options.threads} thread(s), ns per element, best over about 1 s")
    for loss in options.loss.split(","):
        case = next(CASES_BY_ID[c] for c in ALL_LOSSES if CASES_BY_ID[c].loss == loss)
        for rows in (int(r) for r in options.rows.split(",")):
            shape = (rows, options.classes)
            logits, args, kwargs = case.inputs(rng, shape, np.float32)
            out = np.empty_like(logits)
            kw = dict(kwargs, backend="cython", n_threads=options.threads)
            fwd = _best_ns(lambda c=case, x=logits, a=args, k=kw: c.forward(x, *a, **k),
                           logits.size)
            fused = _best_ns(lambda c=case, x=logits, a=args, k=kw, o=out:
                             c.with_grad(x, *a, **k, out=o), logits.size)
            print(f"{loss:34s} {rows}x{options.classes:<8d} forward {fwd:6.3f}  "
                  f"fused {fused:6.3f}")


if __name__ == "__main__":
    main()
