"""Timings of the PyTorch and JAX adapters (cross-entropy, class indices).

``python -m fastloss._bench_adapters 2048 32768 [n_threads]`` or ``run((2048, 32768), 2)``.
Every figure is the best of 5 interleaved repetitions after a warm-up, in ms; the
per-call overheads (64 x 10) in microseconds.  torch runs on ``n_threads``
(``torch.set_num_threads``); XLA uses its own thread pool (every core).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _best(fns: dict, repeat: int, number: int = 1) -> dict:
    """Best time of one call of each function, in seconds: one warm-up call each, then
    ``repeat`` rounds that time every function in turn (interleaved, so that a busy machine
    slows them alike)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def run(shape=(2048, 32768), n_threads: int | None = None, repeat: int = 5) -> dict:
    """Time, at ``shape`` (float32 logits, int64 targets, reduction "mean"):

    * ``torch_adapter``: ``fastloss.torch.cross_entropy`` forward + backward
    * ``torch_native``: ``F.cross_entropy`` forward + backward
    * ``numpy_fused``: ``fastloss.cross_entropy_with_grad`` (the NumPy-level fused call);
      ``numpy_fused_out``: the same into a preallocated gradient (``out=``; the torch
      adapter reuses its gradient buffer once the previous gradient is dead, so this is the
      figure it compares with in a loop)
    * ``jax_fastloss`` / ``jax_fastloss_reduced`` / ``jax_fastloss_callback`` /
      ``jax_optax``: ``jax.jit(jax.value_and_grad(mean loss))`` with fastloss.jax
      (per-example losses then ``.mean()``; ``reduction="mean"``, whose gradient is scaled
      in the fused pass; pure_callback instead of the FFI handler) and with optax
    * ``overhead_torch_adapter_us`` / ``overhead_torch_native_us``: forward + backward at
      64 x 10 (the per-call overhead); ``overhead_jax_fastloss_us`` / ``overhead_jax_optax_us``:
      the same for ``jax.jit(jax.value_and_grad(...))``
    """
    import torch
    import torch.nn.functional as F

    import fastloss
    import fastloss.torch as ft

    n, c = shape
    threads = n_threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    results: dict[str, float] = {}
    try:
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((n, c), dtype=np.float32)
        t_np = rng.integers(0, c, n)
        out_np = np.empty_like(x_np)
        x = torch.from_numpy(x_np).requires_grad_()
        t = torch.from_numpy(t_np)

        def torch_step(loss_fn):
            def step():  # each step frees its own gradient (as a training loop does)
                loss_fn(x, t).backward()
                x.grad = None
            return step

        adapter = torch_step(lambda x, t: ft.cross_entropy(x, t, n_threads=threads))
        native = torch_step(F.cross_entropy)
        times = _best({
            "torch_adapter_ms": adapter,
            "torch_native_ms": native,
            "numpy_fused_ms": lambda: fastloss.cross_entropy_with_grad(x_np, t_np,
                                                                      n_threads=threads),
            "numpy_fused_out_ms": lambda: fastloss.cross_entropy_with_grad(
                x_np, t_np, n_threads=threads, out=out_np),
        }, repeat)
        results.update({k: v * 1e3 for k, v in times.items()})
        x.grad = None

        xs = torch.randn(64, 10, requires_grad=True)
        ts = torch.randint(0, 10, (64,))

        def small(loss_fn):
            def step():
                loss_fn(xs, ts).backward()
                xs.grad = None
            return step

        times = _best({
            "overhead_torch_adapter_us": small(
                lambda x, t: ft.cross_entropy(x, t, n_threads=threads)),
            "overhead_torch_native_us": small(F.cross_entropy),
        }, repeat, 300)
        results.update({k: v * 1e6 for k, v in times.items()})
    finally:
        torch.set_num_threads(previous_threads)

    import jax
    import jax.numpy as jnp
    import optax

    import fastloss.jax as fj

    xj = jnp.asarray(x_np)
    tj = jnp.asarray(t_np.astype(np.int32))
    variants = {
        "jax_fastloss_ms": lambda x: fj.softmax_cross_entropy_with_integer_labels(
            x, tj, n_threads=threads).mean(),
        "jax_fastloss_reduced_ms": lambda x: fj.softmax_cross_entropy_with_integer_labels(
            x, tj, n_threads=threads, reduction="mean"),
        "jax_fastloss_callback_ms": lambda x: fj.softmax_cross_entropy_with_integer_labels(
            x, tj, n_threads=threads, implementation="callback").mean(),
        "jax_optax_ms": lambda x: optax.softmax_cross_entropy_with_integer_labels(x, tj).mean(),
    }
    steps = {}
    for name, loss in variants.items():
        f = jax.jit(jax.value_and_grad(loss))
        steps[name] = lambda f=f: jax.block_until_ready(f(xj))
    results.update({k: v * 1e3 for k, v in _best(steps, repeat).items()})

    xs_j = jnp.asarray(np.random.default_rng(1).standard_normal((64, 10), dtype=np.float32))
    ts_j = jnp.asarray(np.arange(64, dtype=np.int32) % 10)
    small = {
        "overhead_jax_fastloss_us": lambda x: fj.softmax_cross_entropy_with_integer_labels(
            x, ts_j, n_threads=threads).mean(),
        "overhead_jax_optax_us": lambda x: optax.softmax_cross_entropy_with_integer_labels(
            x, ts_j).mean(),
    }
    steps = {}
    for name, loss in small.items():
        f = jax.jit(jax.value_and_grad(loss))
        steps[name] = lambda f=f: jax.block_until_ready(f(xs_j))
    results.update({k: v * 1e6 for k, v in _best(steps, repeat, 300).items()})
    results["ffi"] = fj.ffi_status()
    return results


DEFAULT_SHAPES = ((2048, 32768), (512, 128256))


def report(shape, r: dict) -> None:
    n, c = shape
    print(f"cross-entropy, float32 logits ({n}, {c}), forward + backward, best of 5:")
    for key, value in r.items():
        print(f"  {key:28s} {value if isinstance(value, str) else round(value, 2)}")
    print(f"  torch adapter / numpy fused     {r['torch_adapter_ms'] / r['numpy_fused_ms']:.2f}x"
          f" (with out=: {r['torch_adapter_ms'] / r['numpy_fused_out_ms']:.2f}x)")
    print(f"  F.cross_entropy / torch adapter {r['torch_native_ms'] / r['torch_adapter_ms']:.2f}x")
    print(f"  optax / fastloss.jax            {r['jax_optax_ms'] / r['jax_fastloss_ms']:.2f}x")
    print(f"  64x10 per call: torch adapter / F.cross_entropy "
          f"{r['overhead_torch_adapter_us'] / r['overhead_torch_native_us']:.2f}x, "
          f"fastloss.jax / optax {r['overhead_jax_fastloss_us'] / r['overhead_jax_optax_us']:.2f}x")
    print(f"  optax / fastloss.jax (reduced)  "
          f"{r['jax_optax_ms'] / r['jax_fastloss_reduced_ms']:.2f}x")


def bench(shapes=DEFAULT_SHAPES, n_threads: int | None = None,
          json_path: str | None = None) -> list:
    """:func:`run` and :func:`report` at each shape; every figure to ``json_path`` too."""
    results = []
    for shape in shapes:
        r = run(tuple(shape), n_threads)
        report(shape, r)
        results.append({"shape": list(shape), "threads": n_threads, **r})
    if json_path:
        import json

        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    shape = (int(argv[0]), int(argv[1])) if len(argv) >= 2 else DEFAULT_SHAPES[0]
    n_threads = int(argv[2]) if len(argv) >= 3 else None
    bench((shape,), n_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
