"""The C API from a C program (no Python in it) and from another Cython module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss import reference

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")

pytestmark = [
    pytest.mark.skipif(fastloss.backends()["cython"] != "available",
                       reason="the C extension is not built: " + fastloss.backends()["cython"]),
    pytest.mark.skipif(CC is None, reason="no C compiler"),
]


def config(flag):
    out = subprocess.run([sys.executable, "-m", "fastloss", "config", flag], check=True,
                         capture_output=True, text=True).stdout.split()
    return out


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    exe = tmp_path_factory.mktemp("c") / "cross_entropy"
    cmd = [CC, os.path.join(EXAMPLES, "c", "cross_entropy.c"), *config("--cflags"),
           *config("--libs"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def test_config_prints_include_and_library_flags():
    cflags, libs = config("--cflags"), config("--libs")
    assert cflags == [f"-I{fastloss.get_include()}"]
    assert f"-L{fastloss.get_lib_dir()}" in libs and "-lfastloss" in libs
    assert f"-Wl,-rpath,{fastloss.get_lib_dir()}" in libs
    assert os.path.exists(os.path.join(fastloss.get_include(), "fastloss.h"))


def test_c_program_matches_the_reference(c_program):
    rng = np.random.default_rng(0)
    n, c = 7, 33
    logits = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    target = rng.integers(0, c, n)
    target[2] = -100  # ignored row
    text = f"{n} {c}\n" + " ".join(map(repr, logits.ravel().tolist())) + "\n" + \
        " ".join(map(str, target))
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # rpath suffices
    out = subprocess.run([str(c_program)], input=text, capture_output=True, text=True,
                         check=True, env=env).stdout.split("\n")
    loss = np.array([float(v) for v in out[:n]])
    grad = np.array([[float(v) for v in line.split()] for line in out[n:2 * n]])
    expected_loss, expected_grad = reference.cross_entropy(logits, target)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_c_program_has_no_python_in_it(c_program):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("no ldd")
    libraries = subprocess.run([ldd, str(c_program)], capture_output=True, text=True).stdout
    assert "libfastloss" in libraries
    assert "libpython" not in libraries


def test_c_program_reports_a_bad_target(c_program):
    proc = subprocess.run([str(c_program)], input="2 3  0 1 2  1 1 1  0 5",
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "class index is outside [0, c)" in proc.stderr


def test_cython_consumer_cimports_the_pxd(tmp_path):
    pytest.importorskip("Cython")
    for name in ("consumer.pyx", "setup.py"):
        shutil.copy(os.path.join(EXAMPLES, "cython", name), tmp_path)
    # the fastloss under test, wherever it was imported from (installed or a source tree)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                   check=True, capture_output=True, text=True, env=env)
    script = (
        "import numpy as np, consumer, fastloss.reference as r\n"
        "x = np.random.default_rng(1).standard_normal((5, 9)) * 3\n"
        "y = np.array([0, 8, -100, 3, 4])\n"
        "loss, grad = consumer.cross_entropy_rows(x, y, 0.1)\n"
        "el, eg = r.cross_entropy(x, y, None, -100, 0.1)\n"
        "np.testing.assert_allclose(loss, el, rtol=1e-12, atol=1e-12)\n"
        "np.testing.assert_allclose(grad, eg, rtol=1e-12, atol=1e-12)\n"
        "try:\n"
        "    consumer.cross_entropy_rows(x, np.array([0, 9, 0, 0, 0]))\n"
        "except ValueError as e:\n"
        "    print('error:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env=env).stdout
    assert "error: a class index is outside [0, c)" in out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_api_leaves_outputs_untouched_on_error(dtype):
    import ctypes

    lib = ctypes.CDLL(os.path.join(fastloss.get_lib_dir(), "libfastloss.so"))
    suffix = "f32" if dtype == np.float32 else "f64"
    fn = getattr(lib, f"fastloss_cross_entropy_{suffix}")
    real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    fn.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int64, real, ctypes.c_void_p, ctypes.c_void_p]
    lib.fastloss_strerror.restype = ctypes.c_char_p
    x = np.zeros((3, 4), dtype)
    loss = np.full(3, 7, dtype)
    grad = np.full((3, 4), 7, dtype)
    for target, smoothing, code in [(np.array([0, 4, 1]), 0.0, -3), (np.array([0, 1, 2]), 1.5, -4)]:
        status = fn(3, 4, x.ctypes.data, target.ctypes.data, None, -100, smoothing,
                    loss.ctypes.data, grad.ctypes.data)
        assert status == code
        assert np.all(loss == 7) and np.all(grad == 7)
    assert fn(-1, 4, x.ctypes.data, None, None, -100, 0.0, None, None) == -2
    assert lib.fastloss_strerror(-2) == b"invalid shape: n must be >= 0 and c >= 1"
    assert fn(3, 4, x.ctypes.data, np.array([0, 1, 2]).ctypes.data, None, -100, 0.0,
              loss.ctypes.data, grad.ctypes.data) == 0
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
