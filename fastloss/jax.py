"""JAX adapter: optax-compatible losses on fastloss's fused kernels.

``import fastloss.jax`` (``import fastloss`` never imports jax).  Each function returns the
per-example losses, as optax does, and works under ``jax.jit``, ``jax.grad``,
``jax.value_and_grad`` and ``jax.vmap``:

* ``softmax_cross_entropy_with_integer_labels(logits, labels)``
* ``softmax_cross_entropy(logits, labels)`` (labels are probabilities)
* ``sigmoid_binary_cross_entropy(logits, labels)`` (elementwise)
* ``squared_error(predictions, targets=None)`` (elementwise)
* ``kl_divergence_with_logits(logits, targets)``: ``optax.kl_divergence(log_softmax(logits),
  targets)``; ``softmax_mse(logits, labels)`` and ``entropy(logits)`` (fastloss's own).

plus fastloss's options (``label_smoothing``, ``ignore_index``, ``z_loss``, ``softcap``,
``temperature``; ``n_threads``, ``backend``) and ``reduction`` ("none": optax's per-example
losses, the default; "mean" / "sum" as fastloss and PyTorch reduce, with the gradient
scaled inside the fused pass: under ``jit(grad(...))`` the backward then costs nothing).
Classes are on the last axis (``axis=-1`` only); ``where`` may have the batch shape (one
flag per example).

Each is a ``jax.custom_vjp`` whose forward runs fastloss's fused pass once and keeps the
gradient it produced as the residual; the backward multiplies it by the cotangent.  The
kernels run on the host: through XLA's FFI (a small C handler compiled at first use and
linked to ``libfastloss``'s C API; every loss in float32/float64, with every option) or else
through ``jax.pure_callback``.  Gradients with respect to float labels /
targets are computed (rarely wanted) by differentiating a jnp reference in the backward.
float16 / bfloat16 are computed in float32.  CPU only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import fastloss
from fastloss import _capi, _validate

__all__ = [
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "squared_error",
    "kl_divergence_with_logits",
    "softmax_mse",
    "entropy",
    "ffi_status",
]

FFI_TARGET = "fastloss_jax_ce_index"
FFI_ROWS_TARGET = "fastloss_jax_rows"  # every other loss, reduction "none"
# The XLA FFI C API this adapter's handler was written and tested against (jaxlib 0.10.2
# ships 0.3).  A different major version is refused (pure_callback is used instead).
FFI_API_TESTED = (0, 3)
ENV_FFI = "FASTLOSS_JAX_FFI"  # "0": never use the FFI handler
ENV_CACHE = "FASTLOSS_CACHE_DIR"

_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


# --------------------------------------------------------------------------------------------
# the FFI handler: compiled at first use, registered once


class _FFI:
    lock = threading.Lock()
    state: str | None = None  # None: not tried; "available" or the reason it is not
    library = None  # the loaded ctypes.CDLL (kept alive)
    api_version: tuple | None = None


def _cache_dir() -> str:
    root = os.environ.get(ENV_CACHE)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        root = os.path.join(base, "fastloss")
    return root


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    return cc if shutil.which(cc[0]) else None


def _build() -> str:
    """Compile src/jax_ffi.c into the cache dir (once per source/header/library/compiler)
    and return the path of the shared library; raise RuntimeError with the reason."""
    include = jax.ffi.include_dir()
    header = os.path.join(include, "xla", "ffi", "api", "c_api.h")
    if not os.path.exists(header):
        raise RuntimeError(f"jaxlib ships no XLA FFI header ({header})")
    library = _capi.library_path()
    if not os.path.exists(library):
        raise RuntimeError(f"{library} is missing (the C extension was not built)")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC or cc)")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext", "src",
                          "jax_ffi.c")
    key = hashlib.sha256()
    for path in (source, header, os.path.join(fastloss.get_include(), "fastloss.h")):
        with open(path, "rb") as f:
            key.update(f.read())
    key.update(f"{library}\0{' '.join(cc)}\0{jax.__version__}".encode())
    folder = _cache_dir()
    target = os.path.join(folder, f"jax_ffi-{key.hexdigest()[:16]}.so")
    if os.path.exists(target):
        return target
    os.makedirs(folder, exist_ok=True)
    lib_dir = os.path.dirname(library)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    cmd = cc + ["-O2", "-shared", "-fPIC", f"-I{include}", f"-I{fastloss.get_include()}",
                source, "-o", tmp, f"-L{lib_dir}", "-lfastloss", f"-Wl,-rpath,{lib_dir}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the handler failed: {' '.join(cmd)}\n"
                               f"{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: concurrent builds are harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load_ffi() -> str:
    if os.environ.get(ENV_FFI, "") == "0":
        return f"disabled by ${ENV_FFI}=0"
    try:
        path = _build()
        lib = ctypes.CDLL(path)
        version = (lib.fastloss_jax_ffi_api_major(), lib.fastloss_jax_ffi_api_minor())
        if version[0] != FFI_API_TESTED[0]:
            return (f"jaxlib's XLA FFI API is {version[0]}.{version[1]}; the handler was "
                    f"written for {FFI_API_TESTED[0]}.x")
        jax.ffi.register_ffi_target(FFI_TARGET, jax.ffi.pycapsule(lib.fastloss_jax_ce_index),
                                    platform="cpu")
        jax.ffi.register_ffi_target(FFI_ROWS_TARGET, jax.ffi.pycapsule(lib.fastloss_jax_rows),
                                    platform="cpu")
    except (RuntimeError, OSError, AttributeError) as exc:
        return str(exc)
    _FFI.library, _FFI.api_version = lib, version
    return "available"


def ffi_status() -> str:
    """``"available"`` when the XLA FFI handler is compiled and registered (building it on
    the first call), else the reason why not (the losses then use ``jax.pure_callback``)."""
    with _FFI.lock:
        if _FFI.state is None:
            _FFI.state = _load_ffi()
            if _FFI.state != "available" and os.environ.get(ENV_FFI, "") != "0":
                warnings.warn(f"fastloss.jax: the XLA FFI handler is unavailable "
                              f"({_FFI.state}); using jax.pure_callback", RuntimeWarning,
                              stacklevel=3)
        return _FFI.state


# --------------------------------------------------------------------------------------------
# the host computation: one fused fastloss call, per-example losses ("none") and the grad


@functools.lru_cache(maxsize=None)  # noqa: UP033 (py39)
def _numpy_options() -> frozenset:
    return frozenset(inspect.signature(fastloss.cross_entropy_with_grad).parameters)


def _ce_extras(z_loss, softcap, temperature) -> dict:
    """fastloss's newer options, passed only when not the defaults."""
    extra = {}
    if z_loss:
        extra["z_loss"] = z_loss
    if softcap:
        extra["softcap"] = softcap
    if temperature != 1.0:
        extra["temperature"] = temperature
    missing = [k for k in extra if k not in _numpy_options()]
    if missing:
        raise TypeError(f"fastloss.jax: {', '.join(missing)} need(s) a fastloss whose NumPy "
                        f"API has them (this one, {fastloss.__file__}, does not)")
    return extra


# kind -> (fastloss function name, elementwise loss?, has a target?)
_KINDS = {
    "ce_index": ("cross_entropy", False, True),
    "ce_prob": ("cross_entropy", False, True),
    "bce": ("binary_cross_entropy_with_logits", True, True),
    "mse": ("mse_loss", True, True),
    "kl": ("kl_divergence", False, True),
    "softmax_mse": ("softmax_mse", False, True),
    "entropy": ("entropy", False, False),
}


def _host_call(kind: str, options: tuple, want_grad: bool, unbatched_ndim: int, logits,
               target=None):
    """On the host (pure_callback): fastloss on ``logits``; with a reduction, each group of
    rows that jax.vmap stacked (the leading ``logits.ndim - unbatched_ndim`` axes) is
    reduced on its own."""
    name, _, has_target = _KINDS[kind]
    kw = dict(options)
    fn = getattr(fastloss, name + "_with_grad" if want_grad else name)
    x = np.asarray(logits)
    t = np.asarray(target) if has_target else None
    batch = x.shape[:x.ndim - unbatched_ndim]
    if kw["reduction"] == "none" or not batch:
        out = fn(x, *((t,) if has_target else ()), **kw)
        return out if want_grad else (out,)
    groups = int(np.prod(batch))
    xs = x.reshape((groups,) + x.shape[len(batch):])
    ts = t.reshape((groups,) + t.shape[len(batch):]) if has_target else None
    loss = np.empty(groups, dtype=x.dtype)
    grad = np.empty(xs.shape, dtype=x.dtype) if want_grad else None
    for g in range(groups):
        args = (xs[g],) + ((ts[g],) if has_target else ())
        if want_grad:
            loss[g], _ = fn(*args, out=grad[g], **kw)
        else:
            loss[g] = fn(*args, **kw)
    loss = loss.reshape(batch)
    return (loss, grad.reshape(x.shape)) if want_grad else (loss,)


def _loss_shape(kind, logits, reduction):
    if reduction != "none":
        return ()
    return logits.shape if _KINDS[kind][1] else logits.shape[:-1]


# kind -> the `kind` code of the rows handler (src/jax_ffi.c)
_ROWS_KINDS = {"ce_prob": 1, "bce": 2, "mse": 3, "kl": 4, "softmax_mse": 5, "entropy": 6}


def _use_ffi(kind: str, options: dict, dtype) -> bool:
    if options["backend"] not in ("auto", "cython"):
        return False
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return False
    if options["implementation"] == "callback":
        return False
    return ffi_status() == "available"


_REDUCTION_CODES = {"none": 0, "sum": 1, "mean": 2}


def _compute(kind: str, static: tuple, logits, target, want_grad: bool):
    """(loss,) or (loss, grad) for ``logits`` already in float32/float64."""
    options = dict(static)
    reduction = options["reduction"]
    loss_sds = jax.ShapeDtypeStruct(_loss_shape(kind, logits, reduction), logits.dtype)
    results = (loss_sds, jax.ShapeDtypeStruct(logits.shape, logits.dtype))[:1 + want_grad]
    if kind != "ce_index" and _use_ffi(kind, options, logits.dtype):
        return _rows_ffi(kind, options, logits, target, want_grad)
    if _use_ffi(kind, options, logits.dtype):
        call = jax.ffi.ffi_call(FFI_TARGET, results, vmap_method="broadcast_all")
        return tuple(call(logits, target,
                          ignore_index=np.int64(options["ignore_index"]),
                          label_smoothing=np.float64(options["label_smoothing"]),
                          z_loss=np.float64(options.get("z_loss", 0.0)),
                          softcap=np.float64(options.get("softcap") or 0.0),
                          temperature=np.float64(options.get("temperature", 1.0)),
                          n_threads=np.int64(options["n_threads"] or 0),
                          reduction=np.int64(_REDUCTION_CODES[reduction])))
    if options["implementation"] == "ffi":
        raise RuntimeError(f"fastloss.jax: implementation='ffi' cannot be used here "
                           f"(FFI handler: {ffi_status()}; it covers float32/float64 on the "
                           "auto or cython backend)")
    host_options = tuple((k, v) for k, v in static if k != "implementation")
    fn = functools.partial(_host_call, kind, host_options, want_grad, logits.ndim)
    operands = (logits,) + ((target,) if _KINDS[kind][2] else ())
    return tuple(jax.pure_callback(fn, results, *operands, vmap_method="broadcast_all"))


def _rows_ffi(kind: str, options: dict, logits, target, want_grad: bool):
    """Every loss but integer-label cross-entropy through the rows handler: per-row (or
    per-element) losses and their gradient; a reduction is then taken here, in JAX (so
    jax.vmap batches it), and the gradient scaled by its constant derivative."""
    elementwise = _KINDS[kind][1]
    loss_shape = logits.shape if elementwise else logits.shape[:-1]
    results = (jax.ShapeDtypeStruct(loss_shape, logits.dtype),
               jax.ShapeDtypeStruct(logits.shape, logits.dtype))[:1 + want_grad]
    attrs = dict(kind=np.int64(_ROWS_KINDS[kind]),
                 n_threads=np.int64(options["n_threads"] or 0))
    if kind == "ce_prob":
        attrs.update(label_smoothing=np.float64(options["label_smoothing"]),
                     z_loss=np.float64(options.get("z_loss", 0.0)),
                     softcap=np.float64(options.get("softcap") or 0.0),
                     temperature=np.float64(options.get("temperature", 1.0)))
    if kind == "kl":
        attrs["log_target"] = np.int64(bool(options["log_target"]))
    operands = (logits,) + ((target,) if _KINDS[kind][2] else ())
    call = jax.ffi.ffi_call(FFI_ROWS_TARGET, results, vmap_method="broadcast_all")
    out = call(*operands, **attrs)
    values = out[0]
    reduction = options["reduction"]
    if reduction == "none":
        return tuple(out)
    denominator = _denominator(kind, reduction, logits, values)
    total = values.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32).sum()
    loss = (total if denominator is None else total / denominator).astype(logits.dtype)
    if not want_grad:
        return (loss,)
    grad = out[1] if denominator is None else out[1] * (1.0 / denominator)
    return loss, grad.astype(logits.dtype)


def _denominator(kind: str, reduction: str, x, values):
    """What the reduction divides the summed values by (None for "sum"), as
    :func:`_reduced_reference` (and fastloss's NumPy API) does."""
    if reduction == "sum":
        return None
    if reduction == "batchmean":
        return x.shape[0] if x.ndim > 1 else 1
    if reduction == "mean" and kind == "kl":
        return x.size
    return values.size


# --------------------------------------------------------------------------------------------
# the custom_vjp shared by every loss


def _upcast(x):
    return x.astype(jnp.float32) if jnp.dtype(x.dtype) in _HALF else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(kind, static, logits, target):
    (loss,) = _compute(kind, static, _upcast(logits), target, want_grad=False)
    return loss.astype(logits.dtype)


def _fused_fwd(kind, static, logits, target):
    x = logits.value
    t = getattr(target, "value", target)  # None (entropy) has no leaf to wrap
    loss, grad = _compute(kind, static, _upcast(x), t, want_grad=True)
    # the target is kept only when its cotangent is asked for
    keep = getattr(target, "perturbed", False)
    return loss.astype(x.dtype), (grad.astype(x.dtype), (x, t) if keep else None)


def _fused_bwd(kind, static, residual, g):
    grad, kept = residual
    if type(g) is jax.custom_derivatives.SymbolicZero:
        g = jnp.zeros(g.aval.shape, g.aval.dtype)
    # under jit, a cotangent that is the constant 1 (jax.grad of a reduced loss) is folded
    # away by XLA: the residual is then the gradient itself, with no extra pass
    elementwise = _KINDS[kind][1] or dict(static)["reduction"] != "none"
    scale = g if elementwise else g[..., None]
    g_logits = grad * scale.astype(grad.dtype)
    g_target = None
    if kept is not None:
        x, t = kept
        _, vjp = jax.vjp(lambda t_: _reduced_reference(kind, dict(static), x, t_), t)
        (g_target,) = vjp(g.astype(x.dtype))
    return g_logits, g_target


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def _reduced_reference(kind: str, options: dict, x, t):
    values = _reference(kind, options, x, t)
    reduction = options["reduction"]
    if reduction == "none":
        return values
    if reduction == "batchmean":
        return values.sum() / (x.shape[0] if x.ndim > 1 else 1)
    if reduction == "mean" and kind == "kl":
        return values.sum() / x.size
    return values.sum() if reduction == "sum" else values.mean()


def _reference(kind: str, options: dict, x, t):
    """jnp references, used only for the cotangent of float labels / targets."""
    x = _upcast(x)
    if kind == "ce_prob":
        z = x
        if options.get("softcap"):
            z = options["softcap"] * jnp.tanh(z / options["softcap"])
        z = z / options.get("temperature", 1.0)
        eps = options["label_smoothing"]
        a = (1.0 - eps) * t + eps / x.shape[-1]
        return -(a * jax.nn.log_softmax(z, axis=-1)).sum(-1) + options.get("z_loss", 0.0) * (
            jax.nn.logsumexp(z, axis=-1) ** 2)
    if kind == "bce":
        return -t * jax.nn.log_sigmoid(x) - (1.0 - t) * jax.nn.log_sigmoid(-x)
    if kind == "mse":
        return (x - t) ** 2
    if kind == "kl":
        logp = jax.nn.log_softmax(x, axis=-1)
        if options["log_target"]:
            return (jnp.exp(t) * (t - logp)).sum(-1)
        return (t * (jnp.where(t == 0, 0.0, jnp.log(jnp.where(t == 0, 1.0, t))) - logp)).sum(-1)
    if kind == "softmax_mse":
        return ((jax.nn.softmax(x, axis=-1) - t) ** 2).sum(-1)
    raise AssertionError(kind)


def _static(n_threads, backend, reduction, name, *, allowed=("none", "mean", "sum"),
            **options) -> tuple:
    if reduction not in allowed:
        raise ValueError(f"fastloss.jax.{name}: reduction must be one of "
                         f"{', '.join(map(repr, allowed))}; got {reduction!r}")
    n_threads = _validate.n_threads(n_threads)  # as the NumPy API: None or a positive int
    return tuple(sorted(dict(options, n_threads=n_threads, backend=backend,
                             reduction=reduction).items()))


def _masked(loss, where, reduction, name):
    """``where`` applied to per-example losses (its cotangent zeroes the masked rows)."""
    if where is None:
        return loss
    if reduction != "none":
        raise NotImplementedError(f"fastloss.jax.{name}: `where` needs reduction='none' "
                                  "(mask, then reduce)")
    return jnp.where(where, loss, 0.0)


def _check_axis(axis, x, name: str) -> None:
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"fastloss.jax.{name}: classes must be on the last axis (axis=-1), "
                         f"got axis={axis!r}; move them with jnp.moveaxis")


def _batch_where(where, batch_shape, name: str):
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.shape != tuple(batch_shape):
        raise NotImplementedError(f"fastloss.jax.{name}: `where` must have the batch shape "
                                  f"{tuple(batch_shape)} (one flag per example), got "
                                  f"{where.shape}")
    return where


def _floating(x, name):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"fastloss.jax.{name}: logits must be floating, got {x.dtype}")
    return x


# --------------------------------------------------------------------------------------------
# the public functions


def softmax_cross_entropy_with_integer_labels(logits, labels, axis=-1, where=None, *,
                                              ignore_index: int = -100,
                                              label_smoothing: float = 0.0,
                                              z_loss: float = 0.0, softcap=None,
                                              temperature: float = 1.0,
                                              reduction: str = "none",
                                              n_threads: int | None = None,
                                              backend: str = "auto",
                                              implementation: str = "auto"):
    """``optax.softmax_cross_entropy_with_integer_labels``, fused: per-example losses.

    Labels equal to ``ignore_index`` (and examples where ``where`` is False) give 0 loss and
    0 gradient.  ``reduction``: "none" (optax's per-example losses), "sum", or "mean" over
    the examples that are not ignored (PyTorch's rule) -- a reduced loss is cheaper to
    differentiate: its gradient is scaled inside the fused pass.  ``implementation``: "auto"
    (the XLA FFI handler when it applies, else pure_callback), "ffi" or "callback".
    """
    logits = _floating(logits, "softmax_cross_entropy_with_integer_labels")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError("fastloss.jax.softmax_cross_entropy_with_integer_labels: labels must "
                        f"be integers, got {labels.dtype}")
    _check_axis(axis, logits, "softmax_cross_entropy_with_integer_labels")
    if implementation not in ("auto", "ffi", "callback"):
        raise ValueError(f"implementation must be 'auto', 'ffi' or 'callback', got "
                         f"{implementation!r}")
    where = _batch_where(where, logits.shape[:-1], "softmax_cross_entropy_with_integer_labels")
    if where is not None:
        labels = jnp.where(where, labels, ignore_index)
    extra = _ce_extras(z_loss, softcap, temperature)
    static = _static(n_threads, backend, reduction,
                     "softmax_cross_entropy_with_integer_labels",
                     ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
                     implementation=implementation, **extra)
    return _fused("ce_index", static, logits, labels)


def softmax_cross_entropy(logits, labels, axis=-1, where=None, *,
                          label_smoothing: float = 0.0, z_loss: float = 0.0, softcap=None,
                          temperature: float = 1.0, reduction: str = "none",
                          n_threads: int | None = None, backend: str = "auto"):
    """``optax.softmax_cross_entropy`` (probability labels), fused: per-example losses
    ("mean": over the examples)."""
    logits = _floating(logits, "softmax_cross_entropy")
    _check_axis(axis, logits, "softmax_cross_entropy")
    labels = jnp.asarray(labels, dtype=_upcast(logits).dtype)
    where = _batch_where(where, logits.shape[:-1], "softmax_cross_entropy")
    extra = _ce_extras(z_loss, softcap, temperature)
    static = _static(n_threads, backend, reduction, "softmax_cross_entropy",
                     label_smoothing=float(label_smoothing), implementation="auto", **extra)
    return _masked(_fused("ce_prob", static, logits, labels), where, reduction,
                   "softmax_cross_entropy")


def sigmoid_binary_cross_entropy(logits, labels, *, reduction: str = "none",
                                 n_threads: int | None = None, backend: str = "auto"):
    """``optax.sigmoid_binary_cross_entropy``, fused: elementwise losses (labels must have
    the logits' shape; "mean": over the elements)."""
    logits = _floating(logits, "sigmoid_binary_cross_entropy")
    labels = jnp.asarray(labels).astype(_upcast(logits).dtype)
    static = _static(n_threads, backend, reduction, "sigmoid_binary_cross_entropy",
                     implementation="auto")
    return _fused("bce", static, logits, labels)


def squared_error(predictions, targets=None, *, reduction: str = "none",
                  n_threads: int | None = None, backend: str = "auto"):
    """``optax.squared_error``: elementwise ``(predictions - targets)^2``."""
    predictions = _floating(predictions, "squared_error")
    targets = (jnp.zeros_like(predictions) if targets is None else jnp.asarray(targets))
    targets = targets.astype(_upcast(predictions).dtype)
    static = _static(n_threads, backend, reduction, "squared_error", implementation="auto")
    return _fused("mse", static, predictions, targets)


def kl_divergence_with_logits(logits, targets, axis=-1, where=None, *,
                              log_targets: bool = False, reduction: str = "none",
                              n_threads: int | None = None, backend: str = "auto"):
    """``optax.kl_divergence(jax.nn.log_softmax(logits), targets)`` (or
    ``kl_divergence_with_log_targets`` with ``log_targets=True``), fused, per example;
    reductions as ``torch.nn.functional.kl_div``: "batchmean", "mean" (over elements), "sum".
    """
    logits = _floating(logits, "kl_divergence_with_logits")
    _check_axis(axis, logits, "kl_divergence_with_logits")
    targets = jnp.asarray(targets).astype(_upcast(logits).dtype)
    where = _batch_where(where, logits.shape[:-1], "kl_divergence_with_logits")
    static = _static(n_threads, backend, reduction, "kl_divergence_with_logits",
                     allowed=("none", "batchmean", "mean", "sum"),
                     log_target=bool(log_targets), implementation="auto")
    return _masked(_fused("kl", static, logits, targets), where, reduction,
                   "kl_divergence_with_logits")


def softmax_mse(logits, labels, *, reduction: str = "none", n_threads: int | None = None,
                backend: str = "auto"):
    """``sum_c (softmax(logits)_c - t_c)^2`` per example; labels: integers or probabilities."""
    logits = _floating(logits, "softmax_mse")
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        labels = labels.astype(_upcast(logits).dtype)
    static = _static(n_threads, backend, reduction, "softmax_mse", implementation="auto")
    return _fused("softmax_mse", static, logits, labels)


def entropy(logits, *, reduction: str = "none", n_threads: int | None = None,
            backend: str = "auto"):
    """Shannon entropy (nats) of ``softmax(logits)`` per example."""
    logits = _floating(logits, "entropy")
    static = _static(n_threads, backend, reduction, "entropy", implementation="auto")
    return _fused("entropy", static, logits, None)
