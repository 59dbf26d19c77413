"""The kernel protocol: what every backend module implements (docs/design.md §2).

The Python layer (:mod:`fastloss._api`) validates every argument, picks a backend, allocates
the outputs through the backend and calls one of these kernels; the kernels check nothing.
``x`` is a C-contiguous ``(N, C)`` float32/float64 array; ``scale`` is ``grad_output``
divided by the mean's denominator (``None``: forward only): for the row losses (cross-entropy,
KL, softmax MSE, entropy) an ``(N,)`` array of each row's factor or one float for every row
(a scalar ``grad_output``: no array of copies), for the elementwise ones an array that
broadcasts to ``(N, C)``; ``loss`` receives float64 values
per row (per element or per row for the elementwise losses); ``grad`` receives
``scale * d loss / d x`` and may be ``x`` itself.  ``n_threads`` is the most threads the call
may use: there is no global thread count.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Array = Any  # a NumPy array, or a GPU array for backends that accept them


@runtime_checkable
class Kernels(Protocol):
    ACCEPTS_DEVICE_ARRAYS: bool

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not."""

    def as_rows(self, a: Array, n_cols: int, dtype) -> Array:
        """A C-contiguous ``(rows, n_cols)`` array of ``dtype`` that the kernels can read."""

    def empty(self, shape: tuple, dtype) -> Array:
        """An uninitialised array where this backend writes gradients."""

    def cross_entropy(self, x: Array, target: Array, weight: Array, ignore_index: int,
                      label_smoothing: float, softcap: float, inv_temperature: float,
                      z_grad: float, scale: Array | float | None, loss: Array,
                      lse: Array | None, grad: Array | None, n_threads: int) -> None:
        """Softmax cross-entropy per row (class indices ``(N,)`` int64 or probabilities).

        ``softcap`` 0 means none; ``inv_temperature`` 1 means none; ``lse`` receives the
        log-sum-exp of each transformed counted row (0 for ignored rows); ``z_grad`` adds
        ``scale_i * z_grad * 2 * lse_i * p_ic`` to the gradient (before the transform's
        chain rule)."""

    def binary_cross_entropy(self, x: Array, target: Array, weight: Array | None,
                             pos_weight: Array | None, scale: Array | None, loss: Array,
                             grad: Array | None, n_threads: int) -> None:
        """Elementwise sigmoid BCE; ``weight`` a float64 ``(N, C)`` view (any strides)."""

    def softmax_mse(self, x: Array, target: Array, scale: Array | float | None, loss: Array,
                    grad: Array | None, n_threads: int) -> None:
        """Sum of squared errors between the softmax and one-hot indices or probabilities."""

    def kl_divergence(self, x: Array, target: Array, log_target: bool,
                      scale: Array | float | None, loss: Array, grad: Array | None,
                      n_threads: int) -> None:
        """KL(target || softmax(x)) per row."""

    def entropy(self, x: Array, scale: Array | float | None, loss: Array, grad: Array | None,
                n_threads: int) -> None:
        """Entropy of softmax(x) per row."""

    def mse(self, x: Array, target: Array, scale: Array | None, loss: Array,
            grad: Array | None, n_threads: int) -> None:
        """Elementwise squared error."""

    def cross_entropy_grad_hess(self, x: Array, target: Array, sample_weight: Array | None,
                                label_smoothing: float, hessian_scale: float,
                                min_hessian: float, grad: Array, hess: Array,
                                n_threads: int) -> None:
        """Gradient and diagonal Hessian per element of the softmax cross-entropy;
        ``grad``/``hess`` in C or Fortran order."""

    def binary_cross_entropy_grad_hess(self, x: Array, target: Array,
                                       sample_weight: Array | None, hessian_scale: float,
                                       min_hessian: float, grad: Array, hess: Array,
                                       n_threads: int) -> None:
        """Gradient and Hessian of the sigmoid cross-entropy, ``(N,)`` arrays."""

    def softmax(self, x: Array, out: Array, n_threads: int) -> None: ...

    def log_softmax(self, x: Array, out: Array, n_threads: int) -> None: ...

    def logsumexp(self, x: Array, out: Array, n_threads: int) -> None: ...
