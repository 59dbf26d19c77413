"""Helpers shared by the test modules."""

from __future__ import annotations

import numpy as np


def central_difference(f, x, h=1e-4):
    """4th-order central differences of the unreduced loss ``f(x)`` (one value per row, or
    per element), perturbing one class column of every row at a time.

    Rows are independent, so the change of row ``i`` under a shift of column ``j`` is
    ``d f_i / d x_ij``; softmax is shift-invariant, so columns are perturbed one by one.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    n_cols = x.shape[-1]
    for j in range(n_cols):
        def at(step, j=j):
            y = x.copy()
            y[..., j] += step
            return np.asarray(f(y), dtype=np.float64)
        diff = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
        # elementwise losses: only element j of each row moves; row losses: the row's value
        grad[..., j] = diff[..., j] if diff.shape == x.shape else diff
    return grad
