"""Test and benchmark cases, made from the loss table (:mod:`fastloss._losses`).

A :class:`Case` is one loss with one set of options: it makes valid inputs, calls the public
forward and fused functions, and knows its reference and its PyTorch peer through the loss's
row in the table.  A new loss gets its cases here; everything else reads the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _api, _losses


@dataclass(frozen=True)
class Case:
    loss: str  # public name of the forward function (a row of the loss table)
    variant: str  # short description of the options
    make: Callable  # (rng, shape, dtype) -> (target_args, kwargs)
    kwargs: dict = field(default_factory=dict)

    @property
    def spec(self) -> _losses.Loss:
        return _losses.get(self.loss)

    @property
    def id(self) -> str:
        return f"{self.loss}[{self.variant}]"

    @property
    def reductions(self) -> tuple:
        return self.spec.reductions

    @property
    def elementwise(self) -> bool:
        return self.spec.elementwise

    @property
    def forward(self) -> Callable:
        return getattr(_api, self.spec.name)

    @property
    def with_grad(self) -> Callable:
        return getattr(_api, self.spec.fused_name)

    def inputs(self, rng, shape, dtype=np.float64, scale=3.0):
        """``(logits, args, kwargs)`` for a call of this case on logits of ``shape``."""
        logits = (rng.standard_normal(shape) * scale).astype(dtype)
        args, kwargs = self.make(rng, shape, dtype)
        return logits, args, {**self.kwargs, **kwargs}

    def options(self, kwargs) -> dict:
        """Every option of the loss, the defaults filled in."""
        return {**self.spec.defaults(), **kwargs}

    def reference(self, logits, args, kwargs):
        """The reference's unreduced ``(loss, d loss / d logits)``."""
        target = np.asarray(args[0]) if args else None
        return self.spec.reference(np.asarray(logits, dtype=np.float64), target,
                                   self.options(kwargs))

    def torch_loss(self, torch, x, args, kwargs, reduction):
        """The same loss in PyTorch (the oracle of the tests) on the tensor ``x``."""
        target = torch.as_tensor(np.asarray(args[0])) if args else None
        return self.spec.torch(torch, x, target, self.options(kwargs), reduction)


def reference_rows(case: Case, logits, args, kwargs):
    return case.reference(logits, args, kwargs)


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


def _ce(variant, *, weight=False, ignore=False, smoothing=0.0, soft=False, **options):
    def make(rng, shape, dtype):
        target = _probabilities(rng, shape, dtype) if soft else _classes(rng, shape, dtype,
                                                                       ignore=ignore)
        kwargs = {}
        if weight:
            kwargs["weight"] = _class_weight(rng, shape)
        if smoothing:
            kwargs["label_smoothing"] = smoothing
        return (target,), kwargs
    return Case("cross_entropy", variant, make, kwargs=options)


def _bce(variant, *, weight=False, pos_weight=False):
    def make(rng, shape, dtype):
        target = (rng.random(shape) < 0.4).astype(dtype)
        kwargs = {}
        if weight:
            kwargs["weight"] = rng.uniform(0.2, 2.0, size=shape[-1:])
        if pos_weight:
            kwargs["pos_weight"] = rng.uniform(0.5, 3.0, size=shape[-1:])
        return (target,), kwargs
    return Case("binary_cross_entropy_with_logits", variant, make)


CASES = (
    _ce("index"),
    _ce("index,weight", weight=True),
    _ce("index,ignore", ignore=True),
    _ce("index,smoothing", smoothing=0.1),
    _ce("index,weight,ignore,smoothing", weight=True, ignore=True, smoothing=0.2),
    _ce("probs", soft=True),
    _ce("probs,weight,smoothing", soft=True, weight=True, smoothing=0.1),
    _ce("index,z_loss", z_loss=1e-2),
    _ce("index,softcap", softcap=2.5),
    _ce("index,temperature", temperature=0.7),
    _ce("index,weight,ignore,smoothing,z_loss,softcap,temperature", weight=True,
        ignore=True, smoothing=0.1, z_loss=0.05, softcap=4.0, temperature=1.5),
    _ce("probs,weight,smoothing,z_loss,softcap,temperature", soft=True, weight=True,
        smoothing=0.2, z_loss=0.02, softcap=3.0, temperature=0.8),
    _bce("plain"),
    _bce("weight,pos_weight", weight=True, pos_weight=True),
    Case("softmax_mse", "index", lambda rng, s, d: ((_classes(rng, s, d),), {})),
    Case("softmax_mse", "probs", lambda rng, s, d: ((_probabilities(rng, s, d),), {})),
    Case("kl_divergence", "probs", lambda rng, s, d: ((_probabilities(rng, s, d),), {})),
    Case("kl_divergence", "log_target",
         lambda rng, s, d: ((np.log(_probabilities(rng, s, d)),), {"log_target": True})),
    Case("entropy", "plain", lambda rng, s, d: ((), {})),
    Case("mse_loss", "plain", lambda rng, s, d: ((rng.standard_normal(s).astype(d),), {})),
)

CASES_BY_ID = {case.id: case for case in CASES}
