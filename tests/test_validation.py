"""Bad input: a clear error naming the argument, value and position, and nothing changed."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastloss as fl

rng = np.random.default_rng(3)
X = rng.standard_normal((4, 10)).astype(np.float32)
Y = np.array([1, 12, 3, 0])  # 12 is out of range at position 1
Y_OK = np.array([1, 2, 3, 0])
P = np.full((4, 10), 0.1, dtype=np.float32)
X3 = rng.standard_normal((2, 3, 5))

# (id, function, args, kwargs, exception, message pattern)
BAD_INPUTS = [
    ("target out of range", fl.cross_entropy, (X, Y), {}, IndexError,
     r"target 12 at position 1 is out of range for 10 classes"),
    ("negative target", fl.cross_entropy, (X, np.array([1, 2, -1, 0])), {}, IndexError,
     r"target -1 at position 2 is out of range"),
    ("nd target position", fl.cross_entropy, (X3, np.array([[0, 1, 2], [3, 4, 5]])), {},
     IndexError, r"target 5 at position \(1, 2\) is out of range for 5 classes"),
    ("ignore_index is not a free pass", fl.cross_entropy, (X, np.array([1, -100, 3, 0])),
     {"ignore_index": -1}, IndexError, r"target -100 at position 1"),
    ("batch size mismatch", fl.cross_entropy, (X, np.array([1, 2, 3])), {}, ValueError,
     r"target of shape \(3,\) does not match the batch shape \(4,\)"),
    ("weight shape", fl.cross_entropy, (X, Y_OK), {"weight": np.ones(9)}, ValueError,
     r"weight must have shape \(10,\), got \(9,\)"),
    ("soft target shape", fl.cross_entropy, (X, P[:, :9]), {}, ValueError,
     r"target of shape \(4, 9\) matches neither class indices \(4,\) nor probabilities"),
    ("integer logits", fl.cross_entropy, (np.ones((4, 10), dtype=np.int64), Y_OK), {}, TypeError,
     r"logits must be a floating array .* got an array of dtype int64"),
    ("complex logits", fl.cross_entropy, (X.astype(np.complex64), Y_OK), {}, TypeError,
     r"logits must be a floating array .* complex64"),
    ("object logits", fl.entropy, (np.array([[1.0, "a"]], dtype=object),), {}, TypeError,
     r"logits must be a numeric array, got an array of dtype object"),
    ("floating class indices", fl.cross_entropy, (X, Y_OK.astype(np.float32)), {}, TypeError,
     r"target holds class indices of shape \(4,\) and must be an integer array"),
    ("bool target", fl.cross_entropy, (X, np.array([True, False, True, False])), {}, TypeError,
     r"target must hold integer class indices, got an array of dtype bool"),
    ("label_smoothing above 1", fl.cross_entropy, (X, Y_OK), {"label_smoothing": 1.5},
     ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    ("label_smoothing negative", fl.cross_entropy_with_grad, (X, Y_OK),
     {"label_smoothing": -0.1}, ValueError, r"label_smoothing must be in \[0, 1\], got -0.1"),
    ("label_smoothing NaN", fl.cross_entropy, (X, Y_OK), {"label_smoothing": float("nan")},
     ValueError, r"label_smoothing must be in \[0, 1\], got nan"),
    ("z_loss negative", fl.cross_entropy, (X, Y_OK), {"z_loss": -1e-4}, ValueError,
     r"z_loss must be a finite number >= 0, got -0.0001"),
    ("z_loss NaN", fl.cross_entropy_with_grad, (X, Y_OK), {"z_loss": float("nan")},
     ValueError, r"z_loss must be a finite number >= 0, got nan"),
    ("z_loss inf", fl.cross_entropy, (X, P), {"z_loss": float("inf")}, ValueError,
     r"z_loss must be a finite number >= 0, got inf"),
    ("z_loss a string", fl.cross_entropy, (X, Y_OK), {"z_loss": "1e-4"}, TypeError,
     r"z_loss must be a real number, got str '1e-4'"),
    ("softcap zero", fl.cross_entropy, (X, Y_OK), {"softcap": 0.0}, ValueError,
     r"softcap must be None or a finite number > 0, got 0.0"),
    ("softcap negative", fl.cross_entropy_with_grad, (X, P), {"softcap": -30}, ValueError,
     r"softcap must be None or a finite number > 0, got -30.0"),
    ("softcap inf", fl.cross_entropy, (X, Y_OK), {"softcap": float("inf")}, ValueError,
     r"softcap must be None or a finite number > 0, got inf"),
    ("temperature zero", fl.cross_entropy, (X, Y_OK), {"temperature": 0}, ValueError,
     r"temperature must be a finite number > 0, got 0.0"),
    ("temperature negative", fl.cross_entropy_with_grad, (X, Y_OK), {"temperature": -1.0},
     ValueError, r"temperature must be a finite number > 0, got -1.0"),
    ("temperature NaN", fl.cross_entropy, (X, Y_OK), {"temperature": float("nan")},
     ValueError, r"temperature must be a finite number > 0, got nan"),
    ("unknown reduction", fl.cross_entropy, (X, Y_OK), {"reduction": "avg"}, ValueError,
     r"reduction must be one of 'mean', 'sum', 'none'; got 'avg'"),
    ("batchmean outside kl", fl.entropy, (X,), {"reduction": "batchmean"}, ValueError,
     r"reduction must be one of .*; got 'batchmean'"),
    ("unknown backend", fl.cross_entropy, (X, Y_OK), {"backend": "fortran"}, ValueError,
     r"backend must be 'auto' or one of .*; got 'fortran'"),
    ("grad_output shape for none", fl.cross_entropy_with_grad, (X, Y_OK),
     {"reduction": "none", "grad_output": np.ones(3)}, ValueError,
     r"grad_output for reduction='none' must be the loss's shape \(4,\), got shape \(3,\)"),
    ("grad_output not scalar for mean", fl.softmax_mse_with_grad, (X, Y_OK),
     {"grad_output": np.ones(4)}, ValueError,
     r"grad_output for reduction='mean' must be a scalar \(\), got shape \(4,\)"),
    ("negative n_threads", fl.cross_entropy, (X, Y_OK), {"n_threads": -2}, ValueError,
     r"n_threads must be a positive integer or None, got -2"),
    ("float n_threads", fl.cross_entropy, (X, Y_OK), {"n_threads": 1.5}, TypeError,
     r"n_threads must be an integer, got float 1.5"),
    ("out wrong shape", fl.cross_entropy_with_grad, (X, Y_OK),
     {"out": np.empty((4, 9), np.float32)}, ValueError,
     r"out has shape \(4, 9\) \(expected \(4, 10\)\)"),
    ("out wrong dtype", fl.cross_entropy_with_grad, (X, Y_OK),
     {"out": np.empty((4, 10), np.float64)}, ValueError,
     r"out has dtype float64 \(expected float32\)"),
    ("out Fortran", fl.entropy_with_grad, (X,),
     {"out": np.empty((4, 10), np.float32, order="F")}, ValueError, r"non C-contiguous layout"),
    ("out read-only", fl.kl_divergence_with_grad, (X, P),
     {"out": np.broadcast_to(np.float32(0), (4, 10))}, ValueError,
     r"non C-contiguous layout, a read-only buffer"),
    ("out a list", fl.cross_entropy_with_grad, (X, Y_OK), {"out": [[0.0] * 10] * 4}, TypeError,
     r"out must be a NumPy array, got list"),
    ("ignore_index with probabilities", fl.cross_entropy, (X, P), {"ignore_index": 0},
     ValueError, r"ignore_index=0 cannot be used with probability targets"),
    ("float ignore_index", fl.cross_entropy, (X, Y_OK), {"ignore_index": 1.0}, TypeError,
     r"ignore_index must be an integer, got float 1.0"),
    ("scalar logits", fl.cross_entropy, (np.float32(1.0), np.int64(0)), {}, ValueError,
     r"logits must have at least 1 dimension"),
    ("zero classes", fl.entropy, (np.empty((3, 0)),), {}, ValueError,
     r"logits must have at least one class, got shape \(3, 0\)"),
    ("bce target shape", fl.binary_cross_entropy_with_logits, (X, P[:, :5]), {}, ValueError,
     r"target of shape \(4, 5\) must have the shape of logits \(4, 10\)"),
    ("bce weight broadcast", fl.binary_cross_entropy_with_logits, (X, P),
     {"weight": np.ones(3)}, ValueError, r"weight of shape \(3,\) does not broadcast"),
    ("bce pos_weight shape", fl.binary_cross_entropy_with_logits_with_grad, (X, P),
     {"pos_weight": np.ones((4, 10))}, ValueError, r"pos_weight must have shape \(10,\)"),
    ("mse would broadcast", fl.mse_loss, (X, X[:1]), {}, ValueError,
     r"target of shape \(1, 10\) must have the shape of input \(4, 10\)"),
    ("mse integer input", fl.mse_loss, (np.arange(4), np.arange(4.0)), {}, TypeError,
     r"input must be a floating array"),
    ("kl target shape", fl.kl_divergence, (X, P[:2]), {}, ValueError,
     r"target of shape \(2, 10\) must have the shape of logits"),
    ("kl log_target not bool", fl.kl_divergence, (X, P), {"log_target": "yes"}, TypeError,
     r"log_target must be True or False, got str 'yes'"),
    ("kl complex target", fl.kl_divergence, (X, P.astype(np.complex64)), {}, TypeError,
     r"target must be a real numeric array, got an array of dtype complex64"),
    ("softmax_mse target out of range", fl.softmax_mse_with_grad, (X, np.array([0, 1, 2, 10])),
     {}, IndexError, r"target 10 at position 3 is out of range for 10 classes \(valid: 0 to 9\)"),
    ("ragged logits", fl.softmax, ([[1.0, 2.0], [3.0]],), {}, TypeError,
     r"logits must be array-like"),
]


def _snapshot(value):
    return value.copy() if isinstance(value, np.ndarray) else copy.deepcopy(value)


def _same(a, b):
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    return True


def test_table_is_large_enough():
    assert len(BAD_INPUTS) >= 25


@pytest.mark.parametrize("func, args, kwargs, exc, pattern",
                         [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_raises_and_changes_nothing(func, args, kwargs, exc, pattern, backend):
    if "backend" not in kwargs:
        kwargs = {**kwargs, "backend": backend}
    before_args = [_snapshot(a) for a in args]
    before_kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
    with pytest.raises(exc, match=pattern):
        func(*args, **kwargs)
    assert all(_same(a, b) for a, b in zip(args, before_args))
    assert all(_same(kwargs[k], before_kwargs[k]) for k in kwargs)


def test_unavailable_backend_says_why(monkeypatch):
    missing = [name for name, state in fl.backends().items() if state != "available"]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=f"backend '{missing[0]}' is not available: .+"):
        fl.cross_entropy(X, Y_OK, backend=missing[0])


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"\$FASTLOSS_BACKEND must be 'auto' or one of"):
        fl.cross_entropy(X, Y_OK)
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    assert fl.cross_entropy(X, Y_OK) == fl.cross_entropy(X, Y_OK, backend="numpy")
