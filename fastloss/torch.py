"""PyTorch adapter: fastloss's fused losses as drop-in ``torch.nn.functional`` losses.

``import fastloss.torch`` (``import fastloss`` never imports torch).  Every loss here is a
``torch.library.custom_op`` that returns ``(loss, grad)`` from fastloss's single fused pass;
the gradient is saved for backward, which only multiplies it by ``grad_output`` (and skips
that when ``grad_output`` is 1).  So the losses work in eager mode, under
``torch.compile(fullgraph=True)`` (no graph break: the ops have fake implementations) and
pass ``torch.library.opcheck``.

* ``cross_entropy``, ``binary_cross_entropy_with_logits``, ``mse_loss``: the signatures and
  semantics of ``torch.nn.functional`` for ``(N, C)`` and ``(C,)`` inputs (the elementwise
  losses take any shape).  ``(N, C, d1, ...)`` inputs are refused: fastloss puts the
  classes on the *last* axis; flatten them to ``(N * d1 * ..., C)``.
* ``kl_div_with_logits(logits, target)`` is ``F.kl_div(F.log_softmax(logits, -1), target)``
  (``reduction="none"`` gives one value per row); ``softmax_mse`` and ``entropy`` are
  fastloss's own.
* fastloss's options: ``z_loss``, ``softcap``, ``temperature`` (cross-entropy),
  ``backend``, ``n_threads`` (default ``torch.get_num_threads()``) and
  ``inplace_backward=True``, which writes the gradient over the logits' storage
  (``out=logits``): no gradient buffer is allocated, and **the logits are consumed** (their
  values are gone after the forward; autograd raises if another op
  saved them for its own backward).  Under ``torch.compile`` the results are the same;
  whether the buffer is really shared is then up to the compiler's re-inplacing.
* CPU tensors reach the kernels without a copy; float16 / bfloat16 are computed in float32
  and give their gradient in their own dtype.  CUDA tensors go to fastloss's ``cuda``
  backend through ``__cuda_array_interface__`` (not yet run on a GPU).
* ``linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, ...)``: the
  fused language-model head (:func:`fastloss.linear_cross_entropy`) with autograd: CPU
  tensors on NumPy's BLAS, CUDA tensors on torch's products and fastloss's cuda backend.
* Gradients flow to the logits only: a target or weight that requires grad is an error;
  double backward (``create_graph=True``) is not supported.
"""

# The custom ops' annotations are evaluated by torch (schema inference) on Python >= 3.9:
# they must say Optional[...], not "X | None".
# ruff: noqa: UP045

from __future__ import annotations

import sys
import threading
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

import fastloss
from fastloss import _api, _backends, _linear
from fastloss import _validate as V

__all__ = [
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div_with_logits",
    "softmax_mse",
    "entropy",
    "mse_loss",
    "linear_cross_entropy",
    "empty_cache",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "KLDivWithLogitsLoss",
    "SoftmaxMSELoss",
    "EntropyLoss",
    "MSELoss",
]

_HALF = (torch.float16, torch.bfloat16)
_NO_GRAD = (0,)  # shape of the placeholder "grad" output of a forward-only call


# --------------------------------------------------------------------------------------------
# tensors <-> arrays


def _bfloat16():
    """NumPy's bfloat16 (ml_dtypes), or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _array(t: Tensor):
    """What fastloss reads: an ndarray view of a CPU tensor (no copy; bfloat16 as
    ml_dtypes' bfloat16, the same bits), or the CUDA tensor itself (fastloss views it
    through ``__cuda_array_interface__``)."""
    if t.is_cuda:
        return t
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def _tensor(a: np.ndarray) -> Tensor:
    """A CPU tensor viewing an ndarray (ml_dtypes' bfloat16 as torch.bfloat16)."""
    if a.dtype.kind == "V":  # ml_dtypes' bfloat16 (the only such dtype fastloss returns)
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class _SpareGradient:
    """One gradient buffer kept for the next call (what ``torch.empty`` would be with a
    caching allocator, as PyTorch has on GPUs).

    A fresh gradient of the logits' size costs page faults on its first write: at
    2048 x 32768 float32 (256 MiB) about three quarters as much time again as the fused
    pass.  In a training loop the previous step's gradient is dead by the next forward, so
    its buffer can take the new gradient.  The buffer is a NumPy array; every array made from
    it (NumPy collapses a view's base to the owner) and every tensor made from those keeps a
    reference to it, so "only this object references it" means no tensor uses it any more.
    That count is calibrated once, on a probe held the same way, rather than assumed (an
    interpreter may count a borrowed reference differently).  The buffer is the largest
    recent gradient: a smaller one fits in it, a larger one replaces it once it is unused.
    Buffers under ``MIN_BYTES`` are not kept (their page faults cost little).
    :func:`empty_cache` drops the buffer.
    """

    MIN_BYTES = 1 << 22

    def __init__(self):
        self._lock = threading.Lock()
        self._buffer: Optional[np.ndarray] = np.empty(1, np.uint8)  # the probe
        self._free_count = self._count()
        self._buffer = None

    def _count(self) -> int:
        """References to the buffer, counted as take() counts them."""
        return sys.getrefcount(self._buffer)

    def take(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``: the kept buffer's
        memory when no tensor uses it any more, else fresh memory (which becomes the kept
        buffer when the kept one is too small and unused)."""
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= n
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            free = self._buffer is not None and self._count() <= self._free_count
            if free and self._buffer.nbytes < nbytes:
                self._buffer = None  # too small: free it before taking more memory
            if self._buffer is None:
                self._buffer = np.empty(nbytes, np.uint8)
            elif not free:
                return np.empty(shape, dtype)
            return self._buffer[:nbytes].view(dtype).reshape(shape)

    def clear(self) -> None:
        with self._lock:
            self._buffer = None


_SPARE = _SpareGradient()


def empty_cache() -> None:
    """Drop the gradient buffer kept for the next call (the memory returns to the system
    once no tensor uses it).  The CPU losses keep one buffer of their largest recent
    gradient (at least 4 MiB) and reuse it when no tensor uses it any more: a fresh one
    costs page faults on every call."""
    _SPARE.clear()


def _backend(backend: str, t: Tensor) -> str:
    return "cuda" if t.is_cuda and backend == "auto" else backend


def _threads_arg(n_threads) -> int:
    """A public ``n_threads`` checked as the NumPy API checks it; None becomes the ops' 0
    (every thread torch uses)."""
    return V.n_threads(n_threads) or 0


def _threads(n_threads: int) -> int:
    return n_threads if n_threads > 0 else torch.get_num_threads()


def _compute(t: Tensor, keep_half: bool = True) -> Tensor:
    """A detached, contiguous tensor fastloss reads: CPU float16/bfloat16 stay 16-bit when
    ``keep_half`` (the losses read them natively; bfloat16 needs ml_dtypes), else they
    become float32 (a copy)."""
    t = t.detach()
    if t.dtype in _HALF and (not keep_half or t.is_cuda
                             or (t.dtype == torch.bfloat16 and _bfloat16() is None)):
        return t.to(torch.float32, memory_format=torch.contiguous_format)
    return t.contiguous()


def _as(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A target of the compute dtype (float targets) as an array; integers are kept."""
    t = t.detach()
    if t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype, memory_format=torch.contiguous_format)
    return _array(t.contiguous())


def _host64(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """Weights: small, read once, float64 on the host (what fastloss uses anyway)."""
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


def _loss_tensor(loss, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The loss (an array, or a NumPy scalar of the logits' dtype) as a tensor of ``dtype``."""
    a = np.asarray(loss)  # a 0-d array for a scalar: from_numpy is the cheapest way in
    if a.dtype.kind == "V":  # ml_dtypes' bfloat16: exact through float32
        a = a.astype(np.float32)
    out = torch.from_numpy(a)
    if out.dtype != dtype:
        out = out.to(dtype)
    return out if device.type == "cpu" else out.to(device)


def _fused(with_grad, forward, logits: Tensor, args: tuple, kwargs: dict, *, want_grad: bool,
           consume: bool, backend: str, n_threads: int):
    """Run one fastloss loss on ``logits``; return ``(loss, grad or None)``.

    ``consume``: the gradient is written over ``logits`` (the op mutates it)."""
    x = _compute(logits)
    kwargs = dict(kwargs, backend=_backend(backend, x), n_threads=_threads(n_threads))
    if not want_grad:
        loss = forward(_array(x), *args, **kwargs)
        return _loss_tensor(loss, logits.dtype, logits.device), None
    # x is a private copy for upcast float16/bfloat16 or non-contiguous logits: the gradient
    # can overwrite it; for in-place calls it overwrites the logits themselves.  Otherwise
    # it goes to the kept buffer when no tensor uses it (see _SpareGradient), else to fresh
    # NumPy memory (NumPy asks for huge pages: fewer page faults than torch.empty)
    private = x.data_ptr() != logits.data_ptr() or x.dtype != logits.dtype
    if private or consume:
        g = x
        loss, _ = with_grad(_array(x), *args, out=_array(g), **kwargs)
    elif x.is_cuda:
        g = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        loss, _ = with_grad(_array(x), *args, out=g, **kwargs)
    else:
        a = _array(x)
        loss, grad = with_grad(a, *args, out=_SPARE.take(a.shape, a.dtype), **kwargs)
        g = _tensor(grad)
    if g.dtype != logits.dtype:
        g = g.to(logits.dtype)
    if consume and g.data_ptr() != logits.data_ptr():
        logits.copy_(g)
        g = logits
    return _loss_tensor(loss, logits.dtype, logits.device), g


def _grad_or_placeholder(logits: Tensor, grad: Optional[Tensor]) -> Tensor:
    return grad if grad is not None else logits.new_empty(_NO_GRAD)


# --------------------------------------------------------------------------------------------
# the custom ops: each returns (loss, grad); grad is an empty placeholder when not wanted


def _ce_kwargs(weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
               temperature, soft: bool) -> dict:
    kw = dict(weight=_host64(weight), label_smoothing=label_smoothing, reduction=reduction)
    if not soft:  # torch ignores ignore_index with probability targets; fastloss refuses it
        kw["ignore_index"] = ignore_index
    # the custom ops carry floats: softcap 0.0 stands for None
    kw.update(z_loss=z_loss, softcap=softcap or None, temperature=temperature)
    return kw


def _ce(logits, target, weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
        temperature, want_grad, backend, n_threads, consume):
    x_dtype = torch.float32 if logits.dtype in _HALF else logits.dtype
    soft = target.is_floating_point()
    t = _as(target, x_dtype)
    kw = _ce_kwargs(weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
                    temperature, soft)
    return _fused(fastloss.cross_entropy_with_grad, fastloss.cross_entropy, logits, (t,), kw,
                  want_grad=want_grad, consume=consume, backend=backend, n_threads=n_threads)


@torch.library.custom_op("fastloss::cross_entropy", mutates_args=())
def _cross_entropy_op(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                      ignore_index: int, label_smoothing: float, reduction: str, z_loss: float,
                      softcap: float, temperature: float, want_grad: bool, backend: str,
                      n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _ce(logits, target, weight, ignore_index, label_smoothing, reduction, z_loss,
                     softcap, temperature, want_grad, backend, n_threads, consume=False)
    return loss, _grad_or_placeholder(logits, grad)


@torch.library.custom_op("fastloss::cross_entropy_overwrite", mutates_args=("logits",))
def _cross_entropy_overwrite_op(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                                ignore_index: int, label_smoothing: float, reduction: str,
                                z_loss: float, softcap: float, temperature: float,
                                backend: str, n_threads: int) -> Tensor:
    """Cross-entropy whose gradient overwrites ``logits`` (``out=logits``)."""
    loss, _ = _ce(logits, target, weight, ignore_index, label_smoothing, reduction, z_loss,
                  softcap, temperature, True, backend, n_threads, consume=True)
    return loss


def _bce(logits, target, weight, pos_weight, reduction, want_grad, backend, n_threads,
         consume):
    x_dtype = torch.float32 if logits.dtype in _HALF else logits.dtype
    kw = dict(weight=_host64(weight), pos_weight=_host64(pos_weight), reduction=reduction)
    return _fused(fastloss.binary_cross_entropy_with_logits_with_grad,
                  fastloss.binary_cross_entropy_with_logits, logits, (_as(target, x_dtype),),
                  kw, want_grad=want_grad, consume=consume, backend=backend,
                  n_threads=n_threads)


@torch.library.custom_op("fastloss::binary_cross_entropy_with_logits", mutates_args=())
def _bce_op(logits: Tensor, target: Tensor, weight: Optional[Tensor],
            pos_weight: Optional[Tensor], reduction: str, want_grad: bool, backend: str,
            n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _bce(logits, target, weight, pos_weight, reduction, want_grad, backend,
                      n_threads, consume=False)
    return loss, _grad_or_placeholder(logits, grad)


@torch.library.custom_op("fastloss::binary_cross_entropy_with_logits_overwrite",
                         mutates_args=("logits",))
def _bce_overwrite_op(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                      pos_weight: Optional[Tensor], reduction: str, backend: str,
                      n_threads: int) -> Tensor:
    loss, _ = _bce(logits, target, weight, pos_weight, reduction, True, backend, n_threads,
                   consume=True)
    return loss


def _simple(name: str, logits, target, extra: dict, reduction, want_grad, backend,
            n_threads, consume):
    """softmax_mse, kl_divergence, entropy, mse_loss."""
    x_dtype = torch.float32 if logits.dtype in _HALF else logits.dtype
    args = () if target is None else (_as(target, x_dtype),)
    return _fused(getattr(fastloss, name + "_with_grad"), getattr(fastloss, name), logits,
                  args, dict(extra, reduction=reduction), want_grad=want_grad,
                  consume=consume, backend=backend, n_threads=n_threads)


@torch.library.custom_op("fastloss::softmax_mse", mutates_args=())
def _softmax_mse_op(logits: Tensor, target: Tensor, reduction: str, want_grad: bool,
                    backend: str, n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _simple("softmax_mse", logits, target, {}, reduction, want_grad, backend,
                         n_threads, False)
    return loss, _grad_or_placeholder(logits, grad)


@torch.library.custom_op("fastloss::kl_div_with_logits", mutates_args=())
def _kl_op(logits: Tensor, target: Tensor, log_target: bool, reduction: str, want_grad: bool,
           backend: str, n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _simple("kl_divergence", logits, target, {"log_target": log_target},
                         reduction, want_grad, backend, n_threads, False)
    return loss, _grad_or_placeholder(logits, grad)


@torch.library.custom_op("fastloss::entropy", mutates_args=())
def _entropy_op(logits: Tensor, reduction: str, want_grad: bool, backend: str,
                n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _simple("entropy", logits, None, {}, reduction, want_grad, backend,
                         n_threads, False)
    return loss, _grad_or_placeholder(logits, grad)


@torch.library.custom_op("fastloss::mse_loss", mutates_args=())
def _mse_op(input: Tensor, target: Tensor, reduction: str, want_grad: bool, backend: str,
            n_threads: int) -> tuple[Tensor, Tensor]:
    loss, grad = _simple("mse_loss", input, target, {}, reduction, want_grad, backend,
                         n_threads, False)
    return loss, _grad_or_placeholder(input, grad)


# --------------------------------------------------------------------------------------------
# fake implementations (shapes and dtypes only) and autograd

# op -> (index of `reduction` in its arguments, index of `want_grad`, elementwise loss?)
_OPS = {
    _cross_entropy_op: (5, 9, False),
    _bce_op: (4, 5, True),
    _softmax_mse_op: (2, 3, False),
    _kl_op: (3, 4, False),
    _entropy_op: (1, 2, False),
    _mse_op: (2, 3, True),
}
_OVERWRITE_OPS = {_cross_entropy_overwrite_op: (5, False), _bce_overwrite_op: (4, True)}


def _loss_shape(logits: Tensor, reduction: str, elementwise: bool):
    if reduction != "none":
        return ()
    return logits.shape if elementwise else logits.shape[:-1]


def _register(op, reduction_at: int, want_grad_at: int, elementwise: bool) -> None:
    def fake(*args):
        logits = args[0]
        loss = logits.new_empty(_loss_shape(logits, args[reduction_at], elementwise))
        grad = logits.new_empty(logits.shape if args[want_grad_at] else _NO_GRAD)
        return loss, grad

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # else backward gets zeros the size of the logits
        ctx.n_inputs = len(inputs)
        ctx.broadcast_rows = inputs[reduction_at] == "none" and not elementwise

    def backward(ctx, grad_loss, _grad_of_grad):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:  # not materialized: nothing flows back
            return (None,) * ctx.n_inputs
        return (_scaled(grad, grad_loss, ctx.broadcast_rows),) + (None,) * (ctx.n_inputs - 1)

    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)


def _register_overwrite(op, reduction_at: int, elementwise: bool) -> None:
    def fake(*args):
        logits = args[0]
        return logits.new_empty(_loss_shape(logits, args[reduction_at], elementwise))

    op.register_fake(fake)


def _is_one(grad_loss: Tensor, eager_cpu: bool = False) -> bool:
    """``grad_output == 1`` (what ``loss.backward()`` passes), checked only on real CPU
    tensors in eager mode: reading a GPU value would synchronise, and a traced graph cannot
    branch on data.  ``eager_cpu``: the caller knows it is both (the common call)."""
    return (type(grad_loss) is torch.Tensor and grad_loss.ndim == 0
            and (eager_cpu or (grad_loss.is_cpu and not torch.compiler.is_compiling()))
            and grad_loss.item() == 1.0)


def _check_backward(grad: Tensor) -> None:
    """A saved gradient can be used: the forward computed one, and this is not a double
    backward."""
    if grad.numel() == 0 and grad.shape == _NO_GRAD:
        raise RuntimeError("fastloss.torch: the forward was run without a gradient (the "
                           "logits did not require grad, or grad mode was off)")
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError("fastloss.torch losses support a single backward; double "
                           "backward (create_graph=True) is not implemented")


def _scaled(grad: Tensor, grad_loss: Tensor, broadcast_rows: bool,
            eager_cpu: bool = False) -> Tensor:
    """``grad`` times ``grad_loss`` (per row when ``broadcast_rows``), or ``grad`` itself when
    ``grad_loss`` is 1.  ``eager_cpu``: the forward ran in plain eager mode on CPU tensors and
    computed the gradient, so only a double backward is left to refuse."""
    if not eager_cpu or torch.is_grad_enabled():
        _check_backward(grad)
    if _is_one(grad_loss, eager_cpu):
        return grad
    return grad * (grad_loss.unsqueeze(-1) if broadcast_rows else grad_loss)


for _op, (_r, _w, _e) in _OPS.items():
    _register(_op, _r, _w, _e)
for _op, (_r, _e) in _OVERWRITE_OPS.items():
    _register_overwrite(_op, _r, _e)


def _saved_scaled(ctx, grad_loss: Optional[Tensor], eager_cpu: bool = False
                  ) -> Optional[Tensor]:
    """The backward of the eager Functions: the saved gradient scaled by ``grad_loss``, or
    None when it is not materialized (nothing flows back)."""
    if grad_loss is None:
        return None
    (grad,) = ctx.saved_tensors
    return _scaled(grad, grad_loss, ctx.broadcast_rows, eager_cpu)


def _plain_eager(*tensors) -> bool:
    """Plain eager mode: no compilation or tracing, no torch function / dispatch mode, no
    torch.func transform, and every tensor a plain ``torch.Tensor`` (not a fake, functional
    or subclass tensor).  There the ops' Python implementations are called directly, under
    :class:`_Eager`: the same computation as the custom op without the dispatcher's
    per-call cost (about 40 us of argument handling).  Elsewhere the custom ops run."""
    try:
        if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled()
                or torch._C._are_functorch_transforms_active()):
            return False
    except AttributeError:  # pragma: no cover - a torch without these hooks: the ops only
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)


class _Eager(torch.autograd.Function):
    """Autograd of an op's implementation called directly in plain eager mode (see
    :func:`_plain_eager`): forward keeps the gradient of the fused pass, backward scales it,
    exactly as the op's registered autograd does."""

    @staticmethod
    def forward(ctx, impl, args, broadcast_rows, logits):
        # the op's other arguments travel as one tuple: autograd.Function.apply costs about
        # 1 us per argument, and none of them gets a gradient
        loss, grad = impl(logits, *args)
        ctx.save_for_backward(grad)
        ctx.set_materialize_grads(False)
        ctx.broadcast_rows = broadcast_rows
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return (None, None, None, _saved_scaled(ctx, grad_loss))


def _run(op, *args) -> Tensor:
    """The loss of ``op(*args)`` (the op's arguments: the logits first, tensors anywhere)."""
    reduction_at, want_grad_at, elementwise = _OPS[op]
    if not _plain_eager(*(a for a in args if isinstance(a, torch.Tensor) or a is None)):
        return op(*args)[0]
    impl = op._init_fn  # the undecorated Python function
    if not args[want_grad_at]:
        return impl(*args)[0]
    broadcast_rows = args[reduction_at] == "none" and not elementwise
    return _Eager.apply(impl, args[1:], broadcast_rows, args[0])


class _Overwrite(torch.autograd.Function):
    """Autograd for the ``*_overwrite`` ops: the logits hold the gradient after the forward;
    backward returns them (scaled).  A custom op that mutates an input cannot have a
    registered autograd formula, hence this Function around it (eager mode only)."""

    @staticmethod
    def forward(ctx, name, broadcast_rows, logits, *args):
        op = _OVERWRITE_NAMES[name]
        loss = op(logits, *args)
        ctx.save_for_backward(logits)  # now the gradient
        ctx.broadcast_rows = broadcast_rows
        ctx.n_args = len(args)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (None, None, _scaled(grad, grad_loss, ctx.broadcast_rows)) + (None,) * ctx.n_args


_OVERWRITE_NAMES = {"cross_entropy": _cross_entropy_overwrite_op, "bce": _bce_overwrite_op}


# --------------------------------------------------------------------------------------------
# argument handling shared by the public functions


def _reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction

        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


def _rows_only(logits: Tensor, name: str) -> None:
    if logits.dim() > 2:
        c = "C"
        raise ValueError(
            f"fastloss.torch.{name} takes logits of shape (N, C) or (C,), got "
            f"{tuple(logits.shape)}: fastloss puts the classes on the last axis.  For "
            f"PyTorch's (N, C, d1, ...) layout, move the class axis last and flatten: "
            f"logits.movedim(1, -1).reshape(-1, {c}) and target.reshape(-1) (class indices) "
            f"or target.movedim(1, -1).reshape(-1, {c}) (probabilities)")


def _no_grad_needed(name: str, **tensors) -> None:
    for arg, t in tensors.items():
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"fastloss.torch.{name}: gradients with respect to {arg} are not "
                             f"supported; pass {arg}.detach()")


def _wants_grad(logits: Tensor) -> bool:
    return logits.requires_grad and torch.is_grad_enabled()


def _overwrite(inplace_backward: bool, logits: Tensor) -> bool:
    return inplace_backward and _wants_grad(logits)


def _check_options(z_loss, softcap, temperature) -> tuple:
    """fastloss's validators (ValueError naming the option); softcap None becomes 0.0."""
    return (V.z_loss(z_loss), float(V.softcap(softcap) or 0.0), V.temperature(temperature))


# --------------------------------------------------------------------------------------------
# the public functions


_COMMON_DTYPES = (torch.float32, torch.float64)
_COMMON_REDUCTIONS = ("mean", "sum", "none")


class _NotCommon(Exception):
    """Raised inside :class:`_CommonCrossEntropy`'s forward when the call is not the common
    case after all (an index out of range, ...): the general path then runs (and raises the
    error)."""


class _CommonCrossEntropy(torch.autograd.Function):
    """The common cross-entropy call in plain eager mode, with fewer steps: the NumPy API's
    own kernel call (:func:`fastloss._api._fast_cross_entropy_run`: the same kernel, the same
    result bit for bit), its checks made on the tensors by :func:`_common_cross_entropy`,
    and nothing else to carry.  Backward is the ops' own."""

    @staticmethod
    def forward(ctx, logits, target, reduction, n_threads):
        x = logits.detach().numpy()
        grad = _SPARE.take(x.shape, x.dtype)
        loss = _api._fast_cross_entropy_run(x, target.numpy(), reduction, n_threads, grad)
        if loss is None:
            raise _NotCommon
        ctx.save_for_backward(torch.from_numpy(grad))
        ctx.set_materialize_grads(False)
        ctx.broadcast_rows = reduction == "none"
        return torch.from_numpy(np.asarray(loss))

    @staticmethod
    def backward(ctx, grad_loss):
        # the common call's forward ran in plain eager mode on CPU tensors: the shared
        # backward can skip the checks for other cases (3-7% of a 64 x 10 step, measured
        # with the adapters bench)
        return _saved_scaled(ctx, grad_loss, eager_cpu=True), None, None, None


def _direct_apply(function: type):
    """``function.apply`` without the Python layer of ``torch.autograd.Function.apply``
    (about 3 us per call), for plain eager calls only (:func:`_plain_eager`: no functorch
    transform active).  That layer binds default arguments (only for Functions with a
    ``setup_context``) and unwraps dead functorch wrappers, which the returned function
    does too.  A torch without these internals gets ``function.apply``."""
    try:
        apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, function)
        unwrap = torch._C._functorch.unwrap_if_dead
    except (AttributeError, KeyError):  # pragma: no cover - other torch internals
        return function.apply

    def direct(logits, *args):
        return apply(unwrap(logits), *args)

    return direct


_common_apply = _direct_apply(_CommonCrossEntropy)


def _common_cross_entropy(input, target, reduction, n_threads) -> Optional[Tensor]:
    """The loss of the common call (CPU float32/float64 (N, C) contiguous logits with N, C
    >= 1, int64 class indices, default options: checked by the caller and here, with every
    check of :func:`fastloss._api._fast_cross_entropy` that can fail for tensors), or
    None."""
    if (type(input) is not torch.Tensor or type(target) is not torch.Tensor
            or input.dtype not in _COMMON_DTYPES or target.dtype != torch.int64
            or input.ndim != 2 or target.ndim != 1 or not input.is_cpu
            or not target.is_cpu or reduction not in _COMMON_REDUCTIONS
            or not input.is_contiguous() or not target.is_contiguous()
            or input.shape[0] != target.shape[0] or input.numel() == 0
            or (n_threads is not None and (type(n_threads) is not int or n_threads < 1))
            or _backends.env_backend_set() or not _plain_eager()):
        return None
    threads = n_threads or torch.get_num_threads()
    if not (input.requires_grad and torch.is_grad_enabled()):
        loss = _api._fast_cross_entropy_run(input.detach().numpy(), target.numpy(), reduction,
                                            threads, None)
        return None if loss is None else torch.from_numpy(np.asarray(loss))
    try:
        return _common_apply(input, target, reduction, threads)
    except _NotCommon:
        return None


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  z_loss: float = 0.0, softcap: Optional[float] = None,
                  temperature: float = 1.0, inplace_backward: bool = False,
                  backend: str = "auto", n_threads: Optional[int] = None) -> Tensor:
    """``torch.nn.functional.cross_entropy`` for ``(N, C)`` / ``(C,)`` logits, fused.

    ``target``: class indices (``(N,)``) or probabilities (the logits' shape).  fastloss's
    options: ``z_loss`` (adds ``z_loss * logsumexp(z)^2`` per row, averaged over the counted
    rows for "mean"), ``softcap`` (``x -> softcap * tanh(x / softcap)``), ``temperature``
    (divides the capped logits), ``inplace_backward`` (the gradient overwrites ``input``,
    which is consumed), ``backend``, ``n_threads``.
    """
    if (size_average is None and reduce is None and not inplace_backward and backend == "auto"
            and _api._default_ce_options(weight, ignore_index, label_smoothing, z_loss,
                                         softcap, temperature, False)):
        loss = _common_cross_entropy(input, target, reduction, n_threads)
        if loss is not None:
            return loss
    reduction = _reduction(size_average, reduce, reduction)
    _rows_only(input, "cross_entropy")
    _no_grad_needed("cross_entropy", target=target, weight=weight)
    z_loss, softcap, temperature = _check_options(z_loss, softcap, temperature)
    args = (target, weight, int(ignore_index), float(label_smoothing), reduction, z_loss,
            softcap, temperature)
    threads = _threads_arg(n_threads)
    if _overwrite(inplace_backward, input):
        return _Overwrite.apply("cross_entropy", reduction == "none", input, *args, backend,
                                threads)
    return _run(_cross_entropy_op, input, *args, _wants_grad(input), backend, threads)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Optional[Tensor] = None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight: Optional[Tensor] = None, *,
                                     inplace_backward: bool = False, backend: str = "auto",
                                     n_threads: Optional[int] = None) -> Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits``, fused (any shape; the
    target must have the input's shape; ``pos_weight`` is per class, on the last axis)."""
    reduction = _reduction(size_average, reduce, reduction)
    _no_grad_needed("binary_cross_entropy_with_logits", target=target, weight=weight,
                    pos_weight=pos_weight)
    args = (target, weight, pos_weight, reduction)
    threads = _threads_arg(n_threads)
    if _overwrite(inplace_backward, input):
        return _Overwrite.apply("bce", False, input, *args, backend, threads)
    return _run(_bce_op, input, *args, _wants_grad(input), backend, threads)


def kl_div_with_logits(logits: Tensor, target: Tensor, reduction: str = "mean",
                       log_target: bool = False, *, backend: str = "auto",
                       n_threads: Optional[int] = None) -> Tensor:
    """``F.kl_div(F.log_softmax(logits, -1), target, reduction=..., log_target=...)`` fused.

    ``reduction="none"`` gives one value per row (the sum over the classes), not one per
    element.  ``"batchmean"`` divides by ``logits.shape[0]`` as PyTorch does.
    """
    _rows_only(logits, "kl_div_with_logits")
    _no_grad_needed("kl_div_with_logits", target=target)
    if reduction == "batchmean" and logits.dim() == 1:
        reduction = "mean"  # PyTorch divides by input.size(0), i.e. C, for 1-D input
    return _run(_kl_op, logits, target, bool(log_target), reduction, _wants_grad(logits),
                backend, _threads_arg(n_threads))


def softmax_mse(logits: Tensor, target: Tensor, reduction: str = "mean", *,
                backend: str = "auto", n_threads: Optional[int] = None) -> Tensor:
    """``sum_c (softmax(logits)_c - t_c)^2`` per row (Brier score); ``target``: class
    indices or probabilities.  "mean" averages the rows."""
    _rows_only(logits, "softmax_mse")
    _no_grad_needed("softmax_mse", target=target)
    return _run(_softmax_mse_op, logits, target, reduction, _wants_grad(logits), backend,
                _threads_arg(n_threads))


def entropy(logits: Tensor, reduction: str = "mean", *, backend: str = "auto",
            n_threads: Optional[int] = None) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row; "mean" averages the rows."""
    _rows_only(logits, "entropy")
    return _run(_entropy_op, logits, reduction, _wants_grad(logits), backend,
                _threads_arg(n_threads))


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight=None, *, backend: str = "auto",
             n_threads: Optional[int] = None) -> Tensor:
    """``torch.nn.functional.mse_loss``, fused (no broadcasting: same shapes)."""
    if weight is not None:
        raise NotImplementedError("fastloss.torch.mse_loss: weight is not supported")
    reduction = _reduction(size_average, reduce, reduction)
    _no_grad_needed("mse_loss", target=target)
    return _run(_mse_op, input, target, reduction, _wants_grad(input), backend,
                _threads_arg(n_threads))


# --------------------------------------------------------------------------------------------
# fused linear + cross-entropy (the language-model head)


def _lce_arrays(input, linear_weight, target, linear_bias):
    """What :func:`fastloss.linear_cross_entropy` takes.  CUDA tensors as they are: the
    products run on torch on their device, the cross-entropy on fastloss's cuda backend.
    CPU tensors as host arrays (NumPy views) in the compute dtype (float16/bfloat16 upcast to
    float32): the products run on NumPy's BLAS."""
    if input.is_cuda or _linear._LIBRARY_PATH_ON_HOST:  # the second: tests without a GPU
        return (input.detach(), linear_weight.detach(),
                None if linear_bias is None else linear_bias.detach(), target.detach())
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias),
                    ("target", target)):
        if t is not None and t.is_cuda:
            raise TypeError(f"fastloss.torch.linear_cross_entropy: {name} is a CUDA tensor "
                            f"but input is on {input.device}; they must be on one device")
    x, w = _compute(input, False), _compute(linear_weight, False)
    b = None if linear_bias is None else _compute(linear_bias, False)
    return x.numpy(), w.numpy(), None if b is None else b.numpy(), _as(target, x.dtype)


def _is_soft(target) -> bool:
    return target.is_floating_point() if isinstance(target, Tensor) else target.dtype.kind == "f"


def _lce_kwargs(weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
                temperature, chunk_size, backend, n_threads, soft: bool) -> dict:
    kw = _ce_kwargs(weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
                    temperature, soft)
    return dict(kw, chunk_size=chunk_size or None, backend=backend,
                n_threads=_threads(n_threads))


def _placeholder_or(t: Optional[Tensor], like: Tensor) -> Tensor:
    return t if t is not None else like.new_empty(_NO_GRAD)


def _as_dtype(a, like: Tensor) -> Tensor:
    """A result (an ndarray, or a tensor from the CUDA path) as a tensor of ``like``'s
    dtype."""
    return (a if isinstance(a, Tensor) else torch.from_numpy(a)).to(like.dtype)


@torch.library.custom_op("fastloss::linear_cross_entropy", mutates_args=())
def _linear_ce_op(input: Tensor, linear_weight: Tensor, target: Tensor,
                  linear_bias: Optional[Tensor], weight: Optional[Tensor], ignore_index: int,
                  label_smoothing: float, reduction: str, z_loss: float, softcap: float,
                  temperature: float, chunk_size: int, want_grad: bool, backend: str,
                  n_threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_input, grad_linear_weight, grad_linear_bias) from one chunked pass; the
    gradients (for ``grad_output = 1``) are empty placeholders unless ``want_grad``."""
    x, w, bias, t = _lce_arrays(input, linear_weight, target, linear_bias)
    kw = _lce_kwargs(weight, ignore_index, label_smoothing, reduction, z_loss, softcap,
                     temperature, chunk_size, backend, n_threads, _is_soft(t))
    arrays = (x, w, t)
    if not want_grad:
        loss = fastloss.linear_cross_entropy(*arrays, linear_bias=bias, **kw)
        return (_lce_loss(loss, input), input.new_empty(_NO_GRAD),
                input.new_empty(_NO_GRAD), input.new_empty(_NO_GRAD))
    loss, gx, gw, gb = fastloss.linear_cross_entropy_with_grad(*arrays, linear_bias=bias, **kw)
    return (_lce_loss(loss, input), _as_dtype(gx, input),
            _as_dtype(gw, linear_weight),
            input.new_empty(_NO_GRAD) if gb is None else _as_dtype(gb, linear_bias))


def _lce_loss(loss, input: Tensor) -> Tensor:
    if isinstance(loss, Tensor):  # the CUDA path: already on the device, in input's dtype
        return loss
    return _loss_tensor(loss, input.dtype, input.device)


@torch.library.custom_op("fastloss::linear_cross_entropy_backward", mutates_args=())
def _linear_ce_backward_op(grad_output: Tensor, input: Tensor, linear_weight: Tensor,
                           target: Tensor, linear_bias: Optional[Tensor],
                           weight: Optional[Tensor], ignore_index: int,
                           label_smoothing: float, z_loss: float, softcap: float,
                           temperature: float, chunk_size: int, backend: str,
                           n_threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients for ``reduction="none"``: the per-row ``grad_output`` must scale each
    row before the products, so they are computed here, in a second chunked pass."""
    x, w, b, t = _lce_arrays(input, linear_weight, target, linear_bias)
    kw = _lce_kwargs(weight, ignore_index, label_smoothing, "none", z_loss, softcap,
                     temperature, chunk_size, backend, n_threads, _is_soft(t))
    go = grad_output.detach().to("cpu", torch.float64).contiguous().numpy()
    _, gx, gw, gb = fastloss.linear_cross_entropy_with_grad(x, w, t, linear_bias=b,
                                                            grad_output=go, **kw)
    return (_as_dtype(gx, input), _as_dtype(gw, linear_weight),
            input.new_empty(_NO_GRAD) if gb is None else _as_dtype(gb, linear_bias))


@_linear_ce_op.register_fake
def _(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
      reduction, z_loss, softcap, temperature, chunk_size, want_grad, backend, n_threads):
    loss = input.new_empty(() if reduction != "none" else input.shape[:-1])
    grads = want_grad and reduction != "none"
    return (loss, input.new_empty(input.shape if grads else _NO_GRAD),
            linear_weight.new_empty(linear_weight.shape if grads else _NO_GRAD),
            input.new_empty(linear_bias.shape if grads and linear_bias is not None
                            else _NO_GRAD))


@_linear_ce_backward_op.register_fake
def _(grad_output, input, linear_weight, target, linear_bias, *args):
    return (input.new_empty(input.shape), linear_weight.new_empty(linear_weight.shape),
            input.new_empty(_NO_GRAD if linear_bias is None else linear_bias.shape))


def _lce_setup_context(ctx, inputs, output):
    (input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
     reduction, z_loss, softcap, temperature, chunk_size, want_grad, backend,
     n_threads) = inputs
    ctx.reduction = reduction
    ctx.has_bias = linear_bias is not None
    ctx.set_materialize_grads(False)
    if reduction == "none":  # the gradients come from a second pass, scaled per row
        ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
        ctx.options = (ignore_index, label_smoothing, z_loss, softcap, temperature,
                       chunk_size, backend, n_threads)
    else:
        ctx.save_for_backward(*output[1:])
        ctx.mark_non_differentiable(*output[1:])


def _lce_backward(ctx, grad_loss, *_grads_of_grads):
    nothing = (None,) * 15
    if grad_loss is None:
        return nothing
    if ctx.reduction == "none":
        input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
        gx, gw, gb = _linear_ce_backward_op(grad_loss, input, linear_weight, target,
                                            linear_bias, weight, *ctx.options)
    else:
        grads = ctx.saved_tensors
        _check_backward(grads[0])
        one = _is_one(grad_loss)
        gx, gw, gb = (g if one else g * grad_loss for g in grads)
    return (gx, gw, None, gb if ctx.has_bias else None) + nothing[4:]


_linear_ce_op.register_autograd(_lce_backward, setup_context=_lce_setup_context)


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Optional[Tensor] = None,
                         weight: Optional[Tensor] = None, ignore_index: int = -100,
                         label_smoothing: float = 0.0, reduction: str = "mean",
                         z_loss: float = 0.0, softcap: Optional[float] = None,
                         temperature: float = 1.0, chunk_size: Optional[int] = None,
                         backend: str = "auto", n_threads: Optional[int] = None) -> Tensor:
    """``F.cross_entropy(input @ linear_weight.T + linear_bias, target)`` without the
    ``N x V`` logits (:func:`fastloss.linear_cross_entropy`), with autograd.

    ``input`` (..., H), ``linear_weight`` (V, H), ``linear_bias`` (V,), CPU tensors
    (float32/float64; float16/bfloat16 are computed in float32); ``target``: class indices
    of shape ``input.shape[:-1]`` or probabilities of shape ``input.shape[:-1] + (V,)``.
    For "mean" and "sum" the forward computes the loss and all three gradients in one
    chunked pass and backward only scales them; for "none" backward runs a second chunked
    pass, since each row's ``grad_output`` must scale it before it is projected.
    """
    _no_grad_needed("linear_cross_entropy", target=target, weight=weight)
    z_loss, softcap, temperature = _check_options(z_loss, softcap, temperature)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    want_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    loss, *_ = _linear_ce_op(input, linear_weight, target, linear_bias, weight,
                             int(ignore_index), float(label_smoothing), reduction, z_loss,
                             softcap, temperature, chunk_size or 0,
                             want_grad and reduction != "none", backend,
                             _threads_arg(n_threads))
    return loss


# --------------------------------------------------------------------------------------------
# nn.Module wrappers


class _Loss(nn.Module):
    def __init__(self, reduction: str = "mean", size_average=None, reduce=None, *,
                 backend: str = "auto", n_threads: Optional[int] = None):
        super().__init__()
        self.reduction = _reduction(size_average, reduce, reduction)
        self.backend = backend
        self.n_threads = n_threads

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """``torch.nn.CrossEntropyLoss`` on fastloss (see :func:`cross_entropy`)."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None,
                 ignore_index: int = -100, reduce=None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap: Optional[float] = None, temperature: float = 1.0,
                 inplace_backward: bool = False, backend: str = "auto",
                 n_threads: Optional[int] = None):
        super().__init__(reduction, size_average, reduce, backend=backend,
                         n_threads=n_threads)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss, self.softcap, self.temperature = z_loss, softcap, temperature
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             temperature=self.temperature,
                             inplace_backward=self.inplace_backward, backend=self.backend,
                             n_threads=self.n_threads)


class BCEWithLogitsLoss(_Loss):
    """``torch.nn.BCEWithLogitsLoss`` on fastloss."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, reduce=None,
                 reduction: str = "mean", pos_weight: Optional[Tensor] = None, *,
                 inplace_backward: bool = False, backend: str = "auto",
                 n_threads: Optional[int] = None):
        super().__init__(reduction, size_average, reduce, backend=backend,
                         n_threads=n_threads)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight,
            inplace_backward=self.inplace_backward, backend=self.backend,
            n_threads=self.n_threads)


class KLDivWithLogitsLoss(_Loss):
    """``torch.nn.KLDivLoss`` applied to ``log_softmax(logits)`` (see
    :func:`kl_div_with_logits`)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 log_target: bool = False, *, backend: str = "auto",
                 n_threads: Optional[int] = None):
        super().__init__(reduction, size_average, reduce, backend=backend,
                         n_threads=n_threads)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div_with_logits(input, target, self.reduction, self.log_target,
                                  backend=self.backend, n_threads=self.n_threads)


class SoftmaxMSELoss(_Loss):
    """Squared error between ``softmax(logits)`` and a target (see :func:`softmax_mse`)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return softmax_mse(input, target, self.reduction, backend=self.backend,
                           n_threads=self.n_threads)


class EntropyLoss(_Loss):
    """Entropy of ``softmax(logits)`` (see :func:`entropy`)."""

    def forward(self, input: Tensor) -> Tensor:
        return entropy(input, self.reduction, backend=self.backend, n_threads=self.n_threads)


class MSELoss(_Loss):
    """``torch.nn.MSELoss`` on fastloss."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction, backend=self.backend,
                        n_threads=self.n_threads)
