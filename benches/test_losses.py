"""pytest-benchmark suite, driven by the same registry as the tests.

Smoke test (CI, and the default of pytest.ini):  python -m pytest benches/
Real run:   python -m pytest benches/ --benchmark-enable --benchmark-only --benchmark-autosave
Compare two runs:  pytest-benchmark compare 0001 0002 --group-by=group
Each group is ``loss|shape|dtype``: every available backend, the NumPy reference, PyTorch
when installed and a copy of the logits (the memory-bandwidth limit: the fastest of a parallel
one, one on the calling thread and NumPy's, as in ``python -m fastloss bench``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastloss
from fastloss._bench import ALL_LOSSES as LOSSES
from fastloss._registry import CASES_BY_ID

FULL_SHAPES = [(65536, 10), (8192, 1000), (2048, 32768), (512, 128256)]
SMOKE_SHAPES = [(64, 10), (8, 1000)]
DTYPES = ["float32", "float64"]
BACKENDS = [b for b, s in fastloss.backends().items() if s == "available" and b != "cuda"]
PAIRS = [(loss, impl) for loss in LOSSES for impl in ["copy", *BACKENDS, "torch"]
         if impl != "torch" or CASES_BY_ID[loss].spec.torch is not None]


def _shapes(config):
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if disabled or os.environ.get("FASTLOSS_BENCH_SMALL"):
        return SMOKE_SHAPES
    return FULL_SHAPES


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        metafunc.parametrize("shape", _shapes(metafunc.config), ids=lambda s: f"{s[0]}x{s[1]}")


def _torch_fused(case, logits, args):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(logits).requires_grad_()
    target = torch.from_numpy(np.asarray(args[0])) if args else None
    options = case.options({})

    def run():
        x.grad = None
        case.spec.torch(torch, x, target, options, case.spec.default_reduction).backward()
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss, impl", PAIRS)
def test_fused(benchmark, loss, impl, shape, dtype):
    case = CASES_BY_ID[loss]
    logits, args, kwargs = case.inputs(np.random.default_rng(0), shape, np.dtype(dtype))
    out = np.empty_like(logits)
    benchmark.group = f"{loss}|{shape[0]}x{shape[1]}|{dtype}"
    if impl == "copy":  # the fastest of the bench's ways to copy the logits
        from fastloss._bench import _limits, _timeit

        copies = [lambda f=way[0]: f(logits, out) for way in _limits()]
        benchmark(min(copies, key=lambda copy: _timeit(copy, 0.05)[0]))
        assert np.array_equal(out, logits)
        return
    if impl == "torch":
        benchmark(_torch_fused(case, logits, args))
        return
    result = benchmark(case.with_grad, logits, *args, **kwargs, backend=impl, out=out)
    assert result[1] is out
