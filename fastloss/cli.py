"""``python -m fastloss info | bench | demo | config``."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def cmd_info(args) -> int:
    import numpy as np

    import fastloss
    from fastloss._backends import auto_cpu
    from fastloss._machine import cpu_description, default_threads

    cpu = cpu_description()
    print(f"fastloss {fastloss.__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    try:
        import numba

        print(f"numba    {numba.__version__}")
    except ImportError:
        print("numba    not installed")
    print(f"cpu      {cpu['model']}")
    print(f"features {' '.join(cpu['features']) or 'none detected'}")
    print(f"threads  {default_threads()} of {cpu['cores']} cores")
    print("backends")
    for name, state in fastloss.backends().items():
        print(f"  {name:<7}{state}")
    print(f"auto     {os.environ.get('FASTLOSS_BACKEND') or auto_cpu()} for NumPy arrays")
    return 0


def cmd_bench(args) -> int:
    from . import _bench

    if args.workload == "linear":  # fused linear + cross-entropy, shapes NxHxV
        from . import _bench_linear

        return _bench_linear.main(args)
    if args.workload == "boosting":  # gradient + Hessian objectives
        from . import _bench_boosting

        shapes = _bench.parse_shapes(args.shapes) or ((100000, 10), (10000, 1000))
        _bench_boosting.bench(shapes, "float32" if args.dtype == "both" else args.dtype,
                              args.threads)
        return 0
    if args.workload == "adapters":  # fastloss.torch / fastloss.jax against their peers
        from . import _bench_adapters

        _bench_adapters.bench(_bench.parse_shapes(args.shapes) or _bench_adapters.DEFAULT_SHAPES,
                              args.threads, args.json)
        return 0
    return _bench.main(args)


def cmd_demo(args) -> int:
    from . import _demo

    return _demo.main(args)


def cmd_config(args) -> int:
    from . import _capi

    return _capi.print_config(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastloss",
                                     description="fused loss kernels: information, benchmarks, "
                                                 "a demo and build flags")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="version, backends and why any is unavailable, CPU")

    bench = sub.add_parser("bench", help="time every backend against NumPy, PyTorch, JAX and "
                                         "the memory-bandwidth limit")
    bench.add_argument("--workload", default="losses",
                       choices=["losses", "linear", "boosting", "adapters"],
                       help="losses (default): every backend per loss; linear: fused "
                            "linear + cross-entropy (shapes NxHxV); boosting: gradient + "
                            "Hessian objectives; adapters: fastloss.torch / fastloss.jax")
    bench.add_argument("--shapes", help="comma-separated NxC list, e.g. 2048x32768,512x128256")
    bench.add_argument("--dtype", default="float32",
                       choices=["float32", "float64", "both", "bfloat16", "float16"],
                       help="both: float32 and float64; bfloat16 needs ml_dtypes")
    bench.add_argument("--backends", help="comma-separated backends (default: all available)")
    bench.add_argument("--threads", type=int, help="threads for every kernel and peer")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs (linear workload)")
    bench.add_argument("--all", action="store_true", help="every loss, not only cross-entropy")
    bench.add_argument("--loss", help="comma-separated losses of the table, e.g. "
                                      "binary_cross_entropy_with_logits,kl_divergence")
    bench.add_argument("--compare", metavar="OLD.json",
                       help="print each ratio beside the same figure of an earlier --json run")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    bench.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    bench.add_argument("--json", metavar="FILE", help="write every figure and machine info")
    bench.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios")

    demo = sub.add_parser("demo", help="cross-entropy vs MSE on handwritten digits")
    demo.add_argument("--epochs", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo.png", help="figure to write")
    demo.add_argument("--backend", default="auto")

    config = sub.add_parser("config", help="flags to build C code against fastloss")
    config.add_argument("--cflags", action="store_true")
    config.add_argument("--libs", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"info": cmd_info, "bench": cmd_bench, "demo": cmd_demo,
               "config": cmd_config}[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
