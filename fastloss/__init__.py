"""fastloss: fused softmax cross-entropy and friends, forward and backward in one pass.

Every loss takes raw logits (classes on the last axis) and has a forward form and a fused
``*_with_grad`` form returning ``(loss, grad)``.  See ``fastloss.reference`` for the math,
``fastloss.backends()`` for where it can run, and ``docs/design.md`` for the design.
"""

from ._api import (
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_with_grad,
    entropy,
    entropy_with_grad,
    kl_divergence,
    kl_divergence_with_grad,
    log_softmax,
    logsumexp,
    mse_loss,
    mse_loss_with_grad,
    softmax,
    softmax_mse,
    softmax_mse_with_grad,
)
from ._backends import backends
from ._capi import get_include, get_lib_dir, header_version
from ._grad_hess import binary_cross_entropy_grad_hess, cross_entropy_grad_hess
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad

__version__ = header_version()

__all__ = [
    "backends",
    "get_include",
    "get_lib_dir",
    "binary_cross_entropy_grad_hess",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "cross_entropy",
    "cross_entropy_grad_hess",
    "cross_entropy_with_grad",
    "entropy",
    "entropy_with_grad",
    "kl_divergence",
    "kl_divergence_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "mse_loss",
    "mse_loss_with_grad",
    "softmax",
    "softmax_mse",
    "softmax_mse_with_grad",
]
