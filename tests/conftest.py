"""Shared fixtures: the backends under test and the tolerances of docs/design.md §5."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastloss

# Every backend that is available here; FASTLOSS_TEST_BACKENDS=numba,cython narrows the run.
_selected = os.environ.get("FASTLOSS_TEST_BACKENDS")
AVAILABLE = [name for name, state in fastloss.backends().items() if state == "available"]
BACKENDS = [b for b in AVAILABLE if not _selected or b in _selected.split(",")]
ACCELERATED = [b for b in BACKENDS if b != "numpy"]

TOLERANCES = {  # dtype -> (rtol, atol) against the float64 reference on the same inputs
    np.dtype(np.float64): (1e-12, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float16): (2e-3, 2e-3),
}


def assert_close(actual, expected, dtype, *, scale=1.0, err_msg=""):
    """Compare in float64 with the tolerance of ``dtype``; NaN and inf must match exactly."""
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol * scale, err_msg=err_msg)


# cuda_simulated.py runs only on Numba's CUDA simulator, in the process test_cuda.py starts
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") else ["cuda_simulated.py"]

if os.environ.get("FASTLOSS_REQUIRE_TORCH"):
    import torch  # noqa: F401  (CI: the comparisons with PyTorch must not be skipped)


def _is_simulator_suite(item):
    return getattr(item, "originalname", None) == "test_backend_suite_on_the_simulator"


def pytest_collection_modifyitems(items):
    """The CUDA simulator's suite is waited for last (see pytest_collection_finish)."""
    items.sort(key=_is_simulator_suite)  # stable: the other tests keep their order


def pytest_collection_finish(session):
    """Start the CUDA simulator's suite now, when it is to run (test_cuda.Simulator): its
    minutes of one core overlap the other tests, and its test, run last, collects it."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        if _is_simulator_suite(item):
            item.module.Simulator.start()
            session.config.add_cleanup(item.module.Simulator.stop)
            return


def pytest_report_header(config):
    return [f"fastloss backends: {fastloss.backends()}", f"testing on: {BACKENDS}"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=ACCELERATED or [pytest.param(None, marks=pytest.mark.skip(
    reason="no accelerated backend is available here"))])
def fast_backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


__all__ = ["AVAILABLE", "BACKENDS", "ACCELERATED", "assert_close"]
