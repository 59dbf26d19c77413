"""One table of losses and option variants, shared by the tests, the benchmarks and the CLI.

A :class:`Case` knows how to make valid inputs for one loss with one set of options, how to
call the public forward and fused functions, and the reference of its unreduced loss.  A new
loss is one more row here; a new backend is one more name in :mod:`fastloss._backends`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _api, reference


@dataclass(frozen=True)
class Case:
    loss: str  # public name of the forward function
    variant: str  # short description of the options
    make: Callable  # (rng, shape, dtype) -> (target_args, kwargs)
    reductions: tuple = ("mean", "sum", "none")
    elementwise: bool = False
    kwargs: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.loss}[{self.variant}]"

    @property
    def forward(self) -> Callable:
        return getattr(_api, self.loss)

    @property
    def with_grad(self) -> Callable:
        return getattr(_api, self.loss + "_with_grad")

    def inputs(self, rng, shape, dtype=np.float64, scale=3.0):
        """``(logits, args, kwargs)`` for a call of this case on logits of ``shape``."""
        logits = (rng.standard_normal(shape) * scale).astype(dtype)
        args, kwargs = self.make(rng, shape, dtype)
        return logits, args, {**self.kwargs, **kwargs}


def _classes(rng, shape, dtype, *, ignore=False):
    n_classes = shape[-1]
    target = rng.integers(0, n_classes, size=shape[:-1])
    if ignore and target.size:
        target.reshape(-1)[1::3] = -100
    return target


def _probabilities(rng, shape, dtype):
    t = rng.random(shape) ** 3  # some near-zero mass
    return (t / t.sum(axis=-1, keepdims=True)).astype(dtype)


def _class_weight(rng, shape):
    return rng.uniform(0.2, 2.0, size=shape[-1])


def _ce(variant, *, weight=False, ignore=False, smoothing=0.0, soft=False):
    def make(rng, shape, dtype):
        target = _probabilities(rng, shape, dtype) if soft else _classes(rng, shape, dtype,
                                                                       ignore=ignore)
        kwargs = {}
        if weight:
            kwargs["weight"] = _class_weight(rng, shape)
        if smoothing:
            kwargs["label_smoothing"] = smoothing
        return (target,), kwargs
    return Case("cross_entropy", variant, make)


def _bce(variant, *, weight=False, pos_weight=False):
    def make(rng, shape, dtype):
        target = (rng.random(shape) < 0.4).astype(dtype)
        kwargs = {}
        if weight:
            kwargs["weight"] = rng.uniform(0.2, 2.0, size=shape[-1:])
        if pos_weight:
            kwargs["pos_weight"] = rng.uniform(0.5, 3.0, size=shape[-1:])
        return (target,), kwargs
    return Case("binary_cross_entropy_with_logits", variant, make, elementwise=True)


CASES = (
    _ce("index"),
    _ce("index,weight", weight=True),
    _ce("index,ignore", ignore=True),
    _ce("index,smoothing", smoothing=0.1),
    _ce("index,weight,ignore,smoothing", weight=True, ignore=True, smoothing=0.2),
    _ce("probs", soft=True),
    _ce("probs,weight,smoothing", soft=True, weight=True, smoothing=0.1),
    _bce("plain"),
    _bce("weight,pos_weight", weight=True, pos_weight=True),
    Case("softmax_mse", "index", lambda rng, s, d: ((_classes(rng, s, d),), {})),
    Case("softmax_mse", "probs", lambda rng, s, d: ((_probabilities(rng, s, d),), {})),
    Case("kl_divergence", "probs", lambda rng, s, d: ((_probabilities(rng, s, d),), {}),
         reductions=("batchmean", "mean", "sum", "none")),
    Case("kl_divergence", "log_target",
         lambda rng, s, d: ((np.log(_probabilities(rng, s, d)),), {"log_target": True}),
         reductions=("batchmean", "mean", "sum", "none")),
    Case("entropy", "plain", lambda rng, s, d: ((), {})),
    Case("mse_loss", "plain", lambda rng, s, d: ((rng.standard_normal(s).astype(d),), {}),
         elementwise=True),
)

CASES_BY_ID = {case.id: case for case in CASES}


def reference_rows(case: Case, logits, args, kwargs):
    """The reference's unreduced ``(loss, d loss / d logits)`` for a call of ``case``."""
    x = np.asarray(logits, dtype=np.float64)
    shape = x.shape
    n_cols = shape[-1] if x.ndim else 1
    x2 = x.reshape(-1, n_cols)
    kw = dict(kwargs)
    if case.loss == "cross_entropy":
        target = np.asarray(args[0])
        target = target.reshape(-1, n_cols) if target.shape == shape else target.reshape(-1)
        loss, grad = reference.cross_entropy(x2, target, kw.get("weight"),
                                             kw.get("ignore_index", -100),
                                             kw.get("label_smoothing", 0.0))
    elif case.loss == "binary_cross_entropy_with_logits":
        w = kw.get("weight")
        w = None if w is None else np.broadcast_to(w, shape).reshape(x2.shape)
        loss, grad = reference.binary_cross_entropy_with_logits(
            x2, np.reshape(args[0], x2.shape), w, kw.get("pos_weight"))
    elif case.loss == "softmax_mse":
        target = np.asarray(args[0])
        target = target.reshape(-1, n_cols) if target.shape == shape else target.reshape(-1)
        loss, grad = reference.softmax_mse(x2, target)
    elif case.loss == "kl_divergence":
        loss, grad = reference.kl_divergence(x2, np.reshape(args[0], x2.shape),
                                             kw.get("log_target", False))
    elif case.loss == "entropy":
        loss, grad = reference.entropy(x2)
    elif case.loss == "mse_loss":
        loss, grad = reference.mse_loss(x2, np.reshape(args[0], x2.shape))
    else:  # pragma: no cover - a new loss needs a row here
        raise KeyError(case.loss)
    loss_shape = shape if case.elementwise else shape[:-1]
    return loss.reshape(loss_shape), grad.reshape(shape)
