"""The loss table: one :class:`Loss` row per loss, read by the public API, the tests, the
benchmarks and the CLI (docs/design.md §1).

A row says everything about a loss that is not kernel math: its public names, its options and
their validators, the target kinds it takes, its reductions and the mean's denominator, how
validated arguments become the arguments of its kernel (docs/design.md §2), the reference that
checks it, and the PyTorch / JAX peers that the tests and the bench compare it with.  Adding
a loss is a row here, a kernel hook per language and a reference; adding an option is a
field of a row, a hook argument per language and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _validate as V
from . import reference

_INT64 = np.dtype(np.int64)

REDUCTIONS = V.REDUCTIONS


@dataclass(frozen=True)
class Option:
    """A keyword option of a loss: its default and its validator (value -> normalised)."""

    name: str
    default: object
    check: Callable


@dataclass
class Prepared:
    """What a loss's ``prepare`` hands the driver: the kernel's arguments after ``x``, the
    mean's denominator, and (for losses with a z-term) the number of counted rows."""

    kernel_args: tuple
    denominator: float
    counted_rows: int = 0
    ignored: np.ndarray | None = None


@dataclass(frozen=True)
class Loss:
    name: str  # the public forward function; the fused one adds "_with_grad"
    kernel: str  # the kernel of the protocol (fastloss._protocol.Kernels)
    prepare: Callable  # (call, x, target, options) -> Prepared
    reference: Callable  # (x float64 (..., C), target, options) -> (unreduced loss, grad)
    torch: Callable | None = None  # (torch, x, target, options, reduction) -> loss tensor
    jax: Callable | None = None  # (jnp, x, target) -> mean loss, default options
    numpy: Callable | None = None  # plain vectorised NumPy in x's dtype, default options:
    #                                (x (N, C), target, want_grad) -> loss or (loss, grad)
    input_name: str = "logits"
    target: str | None = "target"  # name of the target argument (None: no target)
    elementwise: bool = False  # one loss value per element, not per row
    options: tuple = ()
    reductions: tuple = REDUCTIONS
    default_reduction: str = "mean"
    z_loss: bool = False  # has z_loss / return_z_loss (the kernel writes lse)
    summary: str = ""
    # The short path (fastloss._api._fast_loss): (target, x) -> the kernel's arguments after
    # x for the default options, when the target is already what the kernel reads (x a
    # C-contiguous 2-D float32/float64 array); None sends the call to the general driver.
    fast_args: Callable | None = None
    mean_over_elements: bool = False  # "mean" divides by every element, not by the rows

    @property
    def fused_name(self) -> str:
        return self.name + "_with_grad"

    @property
    def option_names(self) -> tuple:
        return tuple(o.name for o in self.options)

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}


# ------------------------------------------------------------------------------- helpers

def _rowwise(fn):
    """A reference on (N, C) rows, lifted to logits of any shape (..., C)."""
    def reference_nd(x, target, o):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        t = None if target is None else np.asarray(target)
        t2 = None if t is None else (t.reshape(x2.shape) if t.shape == shape else t.reshape(-1))
        loss, grad = fn(x2, t2, o)
        return loss.reshape(shape[:-1]), grad.reshape(shape)
    return reference_nd

def _same_layout(target, x) -> bool:
    """``target`` is a C-contiguous array of ``x``'s shape and dtype (no conversion needed)."""
    return (type(target) is np.ndarray and target.shape == x.shape and target.dtype == x.dtype
            and target.flags.c_contiguous)


def _fast_same(target, x):
    return (target,) if _same_layout(target, x) else None


def _soft_or_index(target, logits, ignore_index):
    """``(target, soft)``: probabilities of the logits' shape, or flat int64 class indices."""
    if V.is_probability_target(target, logits):
        return V.same_shape(target, logits, "target"), True
    return V.class_target(target, logits, ignore_index), False


# ------------------------------------------------------------------------------- plain NumPy
# What a NumPy user writes, in the input's dtype, with the loss's default options and
# reduction: the honest baseline of `python -m fastloss bench` (the float64 reference checks
# results; it is not a speed baseline).

def _np_softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=-1, keepdims=True)
    return z, e, s


def _np_cross_entropy(x, target, want_grad):
    z, e, s = _np_softmax(x)
    rows = np.arange(x.shape[0])
    loss = (np.log(s[:, 0]) - z[rows, target]).mean()
    if not want_grad:
        return loss
    grad = e / s
    grad[rows, target] -= 1
    grad /= x.shape[0]
    return loss, grad


def _np_bce(x, t, want_grad):
    loss = (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean()
    if not want_grad:
        return loss
    return loss, (1 / (1 + np.exp(-x)) - t) / x.size


def _np_softmax_mse(x, target, want_grad):
    _, e, s = _np_softmax(x)
    p = e / s
    d = p
    d[np.arange(x.shape[0]), target] -= 1  # p - onehot, in place
    loss = (d * d).sum(axis=-1).mean()
    if not want_grad:
        return loss
    p = d.copy()
    p[np.arange(x.shape[0]), target] += 1
    return loss, 2 * p * (d - (d * p).sum(axis=-1, keepdims=True)) / x.shape[0]


def _np_kl(x, t, want_grad):
    z, e, s = _np_softmax(x)
    logp = z - np.log(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(t > 0, t * (np.log(t) - logp), 0).sum() / x.shape[0]
    if not want_grad:
        return loss
    return loss, (t.sum(axis=-1, keepdims=True) * (e / s) - t) / x.shape[0]


def _np_entropy(x, target, want_grad):
    z, e, s = _np_softmax(x)
    logp = z - np.log(s)
    p = e / s
    h = -(p * logp).sum(axis=-1)
    if not want_grad:
        return h.mean()
    return h.mean(), -p * (logp + h[:, None]) / x.shape[0]


def _np_mse(x, t, want_grad):
    d = x - t
    loss = (d * d).mean()
    return (loss, 2 * d / x.size) if want_grad else loss


# ------------------------------------------------------------------------------- cross-entropy

def _prepare_cross_entropy(call, x_user, target, o):
    n_classes = call.n_cols
    weight = V.class_weight(o["weight"], n_classes)
    target, soft = _soft_or_index(target, x_user, o["ignore_index"])
    if soft and o["ignore_index"] != -100:
        raise ValueError(
            f"ignore_index={o['ignore_index']} cannot be used with probability targets "
            f"(target has the logits' shape {tuple(x_user.shape)})"
        )
    weights = np.ones(n_classes) if weight is None else weight
    if soft:
        t = call.rows(target)
        n_rows = call.n_rows
        denominator = n_rows  # PyTorch: the number of rows
        counted, ignored = n_rows, None
    else:
        t = target
        ignored = t == o["ignore_index"]
        counted = int(t.size - np.count_nonzero(ignored))
        # PyTorch: the sum of the weights of the counted targets
        denominator = weights[t[~ignored]].sum() if weight is not None else counted
    softcap = o["softcap"]
    return Prepared(
        (t, weights, o["ignore_index"], o["label_smoothing"], softcap or 0.0,
         1.0 / o["temperature"]),
        denominator, counted, ignored)


@_rowwise
def _reference_cross_entropy(x, target, o):
    return reference.cross_entropy(x, target, o["weight"], o["ignore_index"],
                                   o["label_smoothing"], softcap=o["softcap"],
                                   temperature=o["temperature"], z_loss=o["z_loss"])


def _torch_cross_entropy(torch, x, target, o, reduction):
    F = torch.nn.functional
    z = x if o["softcap"] is None else o["softcap"] * torch.tanh(x / o["softcap"])
    z = z / o["temperature"]
    soft = target.shape == x.shape
    weight = None if o["weight"] is None else torch.as_tensor(o["weight"], dtype=x.dtype)
    moved = z.movedim(-1, 1) if z.ndim > 1 else z
    t = (target.movedim(-1, 1) if target.ndim > 1 else target) if soft else target.long()
    loss = F.cross_entropy(moved, t, weight=weight, ignore_index=o["ignore_index"],
                           label_smoothing=o["label_smoothing"], reduction=reduction)
    if o["z_loss"]:
        lse = torch.logsumexp(z, -1)
        counted = (torch.ones_like(lse, dtype=torch.bool) if soft
                   else target != o["ignore_index"])
        term = torch.where(counted, o["z_loss"] * lse * lse, torch.zeros_like(lse))
        loss = loss + {"none": term, "sum": term.sum(),
                       "mean": term.sum() / counted.sum()}[reduction]
    return loss


def _jax_cross_entropy(jnp, x, target):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(x, target).mean()


CROSS_ENTROPY = Loss(
    "cross_entropy", "cross_entropy", _prepare_cross_entropy, _reference_cross_entropy,
    torch=_torch_cross_entropy, jax=_jax_cross_entropy, numpy=_np_cross_entropy,
    options=(Option("weight", None, lambda v: v),  # checked against C in prepare
             Option("ignore_index", -100, lambda v: V.integer(v, "ignore_index")),
             Option("label_smoothing", 0.0, V.label_smoothing),
             Option("z_loss", 0.0, V.z_loss),
             Option("softcap", None, V.softcap),
             Option("temperature", 1.0, V.temperature)),
    z_loss=True,
    summary="softmax cross-entropy; class indices (any integer dtype) or probabilities",
)


# ------------------------------------------------------------------------------- binary CE

def _prepare_bce(call, x_user, target, o):
    target = V.same_shape(target, x_user, "target")
    w = V.broadcast_weight(o["weight"], x_user, "weight")
    pos_weight = V.class_vector(o["pos_weight"], call.n_cols, "pos_weight")
    if w is not None:
        w = np.broadcast_to(w, tuple(x_user.shape)).reshape(call.n_rows, call.n_cols)
    return Prepared((call.rows(target), w, pos_weight), x_user.size)


def _torch_bce(torch, x, target, o, reduction):
    kw = {k: None if o[k] is None else torch.as_tensor(o[k], dtype=x.dtype)
          for k in ("weight", "pos_weight")}
    return torch.nn.functional.binary_cross_entropy_with_logits(x, target, **kw,
                                                                reduction=reduction)


def _jax_bce(jnp, x, target):
    import optax

    return optax.sigmoid_binary_cross_entropy(x, target).mean()


BINARY_CROSS_ENTROPY = Loss(
    "binary_cross_entropy_with_logits", "binary_cross_entropy", _prepare_bce,
    lambda x, t, o: reference.binary_cross_entropy_with_logits(x, t, o["weight"],
                                                               o["pos_weight"]),
    torch=_torch_bce, jax=_jax_bce, numpy=_np_bce, elementwise=True,
    options=(Option("weight", None, lambda v: v), Option("pos_weight", None, lambda v: v)),
    fast_args=lambda t, x: (t, None, None) if _same_layout(t, x) else None,
    mean_over_elements=True,
    summary="elementwise sigmoid binary cross-entropy",
)


# ------------------------------------------------------------------------------- softmax MSE

def _prepare_softmax_mse(call, x_user, target, o):
    target, soft = _soft_or_index(target, x_user, None)
    return Prepared((call.rows(target) if soft else target,), call.n_rows)


def _fast_softmax_mse(target, x):
    """Probabilities as they are, or in-range int64 class indices (an index out of range
    goes to the general driver, which raises the error)."""
    if _same_layout(target, x):
        return (target,)
    if (type(target) is np.ndarray and target.dtype == _INT64 and target.ndim == 1
            and target.shape[0] == x.shape[0] and target.flags.c_contiguous
            and V.indices_below(target, x.shape[1])):
        return (target,)
    return None


def _torch_softmax_mse(torch, x, target, o, reduction):
    if target.shape != x.shape:
        target = torch.nn.functional.one_hot(target.long(), x.shape[-1]).to(x.dtype)
    rows = ((torch.softmax(x, -1) - target) ** 2).sum(-1)
    return _torch_reduce(rows, reduction)


def _jax_softmax_mse(jnp, x, target):
    import jax

    p = jax.nn.softmax(x, axis=-1)
    onehot = jax.nn.one_hot(target, x.shape[-1], dtype=x.dtype)
    return ((p - onehot) ** 2).sum(-1).mean()


SOFTMAX_MSE = Loss(
    "softmax_mse", "softmax_mse", _prepare_softmax_mse,
    _rowwise(lambda x, t, o: reference.softmax_mse(x, t)),
    torch=_torch_softmax_mse, jax=_jax_softmax_mse, numpy=_np_softmax_mse,
    fast_args=_fast_softmax_mse,
    summary="sum_c (softmax_c - t_c)^2, the Brier score",
)


# ------------------------------------------------------------------------------- KL divergence

def _prepare_kl(call, x_user, target, o):
    target = V.same_shape(target, x_user, "target")
    # PyTorch's kl_div: "mean" divides by every element, "batchmean" by the first dimension
    if call.reduction == "mean":
        denominator = x_user.size
    else:
        denominator = tuple(x_user.shape)[0] if x_user.ndim > 1 else 1
    return Prepared((call.rows(target), o["log_target"]), denominator)


def _torch_kl(torch, x, target, o, reduction):
    loss = torch.nn.functional.kl_div(torch.log_softmax(x, -1), target, reduction=reduction,
                                      log_target=o["log_target"])
    return loss.sum(-1) if reduction == "none" else loss


def _jax_kl(jnp, x, target):
    import jax

    logp = jax.nn.log_softmax(x, axis=-1)
    t = target
    return jnp.where(t > 0, t * (jnp.log(jnp.where(t > 0, t, 1)) - logp), 0).sum() / x.shape[0]


KL_DIVERGENCE = Loss(
    "kl_divergence", "kl_divergence", _prepare_kl,
    _rowwise(lambda x, t, o: reference.kl_divergence(x, t, o["log_target"])),
    torch=_torch_kl, jax=_jax_kl, numpy=_np_kl,
    options=(Option("log_target", False, lambda v: V.boolean(v, "log_target")),),
    reductions=REDUCTIONS + ("batchmean",), default_reduction="batchmean",
    fast_args=lambda t, x: (t, False) if _same_layout(t, x) else None,
    mean_over_elements=True,
    summary="KL(target || softmax(logits))",
)


# ------------------------------------------------------------------------------- entropy, MSE

def _torch_entropy(torch, x, target, o, reduction):
    return _torch_reduce(torch.distributions.Categorical(logits=x).entropy(), reduction)


def _jax_entropy(jnp, x, target):
    import jax

    logp = jax.nn.log_softmax(x, axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1).mean()


ENTROPY = Loss(
    "entropy", "entropy", lambda call, x_user, target, o: Prepared((), call.n_rows),
    _rowwise(lambda x, t, o: reference.entropy(x)),
    torch=_torch_entropy, jax=_jax_entropy, numpy=_np_entropy, target=None,
    fast_args=lambda t, x: (),
    summary="H(softmax(logits))",
)


def _prepare_mse(call, x_user, target, o):
    target = V.same_shape(target, x_user, "target", "input")
    return Prepared((call.rows(target),), x_user.size)


MSE = Loss(
    "mse_loss", "mse", _prepare_mse, lambda x, t, o: reference.mse_loss(x, t),
    torch=lambda torch, x, t, o, r: torch.nn.functional.mse_loss(x, t, reduction=r),
    jax=lambda jnp, x, t: ((x - t) ** 2).mean(), numpy=_np_mse,
    input_name="input", elementwise=True, summary="elementwise (input - target)^2",
    fast_args=_fast_same, mean_over_elements=True,
)


def _torch_reduce(rows, reduction):
    return {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (
    CROSS_ENTROPY, BINARY_CROSS_ENTROPY, SOFTMAX_MSE, KL_DIVERGENCE, ENTROPY, MSE)}


def get(name: str) -> Loss:
    """The row of a loss by its public name; an unknown name is an error, never a default."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; fastloss has {', '.join(LOSSES)}") from None


# The transforms of the last axis: public name -> (kernel, output per row)
TRANSFORMS = {"softmax": False, "log_softmax": False, "logsumexp": True}

__all__ = ["Loss", "Option", "Prepared", "LOSSES", "TRANSFORMS", "get"]
