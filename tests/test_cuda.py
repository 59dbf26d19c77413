"""The cuda backend where there is no GPU: every kernel compiled to PTX, and the backend
suite run on Numba's CUDA simulator (tests/cuda_simulated.py, in a process of its own).
Tests marked ``gpu`` need a real GPU and are skipped without one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastloss as fl

HERE = os.path.dirname(os.path.abspath(__file__))
numba_cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")


def _has_gpu():
    return fl.backends()["cuda"] == "available" and not os.environ.get("NUMBA_ENABLE_CUDASIM")


def test_unavailable_backend_says_why():
    state = fl.backends()["cuda"]
    assert state == "available" or "GPU" in state or "numba-cuda" in state


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_every_kernel_compiles_to_ptx(cc):
    if os.environ.get("NUMBA_ENABLE_CUDASIM"):
        pytest.skip("the simulator does not compile")
    from fastloss._ext import numba_cuda as backend

    index, row = "int64[:, ::1]", "float64[::1]"
    linear = ("void({x}, {t}, boolean, int64, float64[::1], float64, float64, boolean, boolean, "
              "float64, float64, float64, float64[::1], float64[::1], float64[::1], {x}, boolean, "
              "boolean)")
    function_of_p = "void({x}, {t}, boolean, int64, float64[::1], float64[::1], {x}, boolean)"
    grad_hess = ("void({x}, {t}, boolean, float64[::1], boolean, float64, float64, float64, "
                 "float64, {o}, {o})")
    sigs = {  # class indices come as (N, 1) int64, probabilities as x
        "_softmax_linear_kernel": [linear.replace("{t}", index), linear.replace("{t}", "{x}")],
        "_softmax_fn_kernel": [function_of_p.replace("{t}", index),
                               function_of_p.replace("{t}", "{x}")],
        "_elementwise_kernel": ["void({x}, {x}, float64[:, ::1], boolean, " + row + ", boolean, "
                                "int64, float64[:, ::1], float64[:, ::1], {x}, boolean)"],
        "_softmax_kernel": ["void({x}, {x}, int64)"],
        # grad and hess in C or Fortran order
        "_softmax_grad_hess_kernel": [grad_hess.replace("{t}", t).replace("{o}", o)
                                      for t in (index, "{x}") for o in ("{x}", "{f}[::1, :]")],
        "_binary_grad_hess_kernel": ["void({f}[::1], {f}[::1], float64[::1], boolean, float64, "
                                     "float64, {f}[::1], {f}[::1])"],
    }
    assert set(sigs) == set(backend.KERNELS)
    for name, kernel_sigs in sigs.items():
        kernel = getattr(backend, name)
        for sig in kernel_sigs:
            for f in ("float32", "float64"):
                ptx, _ = numba_cuda.compile_ptx(kernel.py_func, sig.format(x=f"{f}[:, ::1]", f=f),
                                                cc=cc)
                assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx, name


class Simulator:
    """The backend suite on the simulator, in a process of its own: several minutes of one
    core.  conftest.py starts it as soon as the tests are collected (when this test is among
    them), so that it runs beside the other tests; the test waits for it."""

    proc = None
    output = None

    @classmethod
    def start(cls):
        if cls.proc is not None:
            return
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "FASTLOSS_CUDA_THREADS": "8",
               "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
        cls.output = tempfile.TemporaryFile(mode="w+")
        cls.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
             "--rootdir", HERE, "-c", os.devnull, os.path.join(HERE, "cuda_simulated.py")],
            cwd=HERE, env=env, stdout=cls.output, stderr=subprocess.STDOUT, text=True)

    @classmethod
    def result(cls, timeout):
        """(return code, output)"""
        cls.start()
        try:
            code = cls.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            cls.stop()
            raise
        cls.output.seek(0)
        return code, cls.output.read()

    @classmethod
    def stop(cls):
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()
        if cls.output is not None:
            cls.output.close()


def test_backend_suite_on_the_simulator():
    code, output = Simulator.result(timeout=1500)
    lines = output.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert code == 0, output[-9000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(3, 423, 32000), (64, 128256), (4096, 10)])
def test_real_gpu_matches_reference(shape):
    from numba import cuda

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape).astype(np.float32) * 3
    target = rng.integers(0, shape[-1], shape[:-1])
    expected = fl.cross_entropy_with_grad(logits, target, backend="cython"
                                          if fl.backends()["cython"] == "available" else "numpy")
    loss, grad = fl.cross_entropy_with_grad(cuda.to_device(logits), target)
    np.testing.assert_allclose(loss, expected[0], rtol=1e-5)
    np.testing.assert_allclose(grad.copy_to_host(), expected[1], rtol=1e-5, atol=1e-6)
    again = fl.cross_entropy_with_grad(cuda.to_device(logits), target)
    assert again[0] == loss and np.array_equal(again[1].copy_to_host(), grad.copy_to_host())
