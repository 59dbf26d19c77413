"""Fused linear + cross-entropy: a language-model head without the ``N x V`` logits.

``logits = input @ linear_weight.T + linear_bias`` is computed a chunk of rows at a time into
one reused ``(chunk, V)`` buffer; fastloss's fused cross-entropy runs in place on it (the buffer
becomes the gradient of the logits, already scaled by ``grad_output`` and the mean's
denominator), and the buffer is then projected back:

    grad_input[chunk]   = g @ linear_weight                    (BLAS gemm, into the output)
    grad_linear_weight += g.T @ input[chunk]                   (BLAS gemm with beta = 1)
    grad_linear_bias   += g.sum(0)                             (float64 accumulator)

The three products of a chunk run on one BLAS: SciPy's wrappers when SciPy is importable
(NumPy's matmul has no ``beta``), else NumPy's matmul with a scratch block of at most one
chunk's size for the accumulation.

GPU arrays run the same loop on their own library (:class:`_TorchArrays` for torch CUDA
tensors: ``torch.matmul(out=)``, ``addmm_``; :class:`_ModuleArrays` for CuPy arrays): the
buffers and the products on the device, the cross-entropy on fastloss's cuda backend, which
reads the chunk buffer in place through ``__cuda_array_interface__``.  Only the small
arguments (class indices, class weights, ``grad_output``) are read on the host, where they
are checked; every result, the loss included, is an array of the input's library on its
device.

The mean's denominator D is the whole batch's (worked out once, from the targets and the class
weights, exactly as :func:`fastloss.cross_entropy` does); each chunk is called with
``reduction="none"`` and a per-row ``grad_output`` of ``grad_output / D`` (the user's per-row
``grad_output`` for ``"none"``), and the per-row losses are reduced here, in float64, in a
fixed order.  ``z_loss`` with ``"mean"`` is averaged over the counted rows instead: the chunks
get ``z_loss * D / n_counted``, which the ``1 / D`` of the rows turns into ``z_loss /
n_counted``, for the loss and its gradient alike.
"""

from __future__ import annotations

import math

import numpy as np

from . import _api, _backends
from . import _validate as V

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "default_chunk_size"]

CHUNK_BYTES = 64 << 20  # the default chunk holds 64 MiB of logits ...
MIN_CHUNK_ROWS = 256  # ... or at least this many rows, ...
MAX_CHUNK_BYTES = 256 << 20  # ... when they fit in this

# None: the products run on SciPy's BLAS wrappers when SciPy is importable (gemm with
# beta = 1 accumulates grad_linear_weight in place), else on NumPy's matmul; False: NumPy only
USE_SCIPY_BLAS: bool | None = None
_scipy_blas_module = None  # imported on first use: `import fastloss` stays light


def _scipy_blas():
    """``scipy.linalg.blas``, or None without SciPy."""
    global _scipy_blas_module
    if _scipy_blas_module is None:
        try:
            from scipy.linalg import blas
        except ImportError:  # pragma: no cover - depends on the environment
            blas = False
        _scipy_blas_module = blas
    return _scipy_blas_module or None


def default_chunk_size(n_classes: int, dtype) -> int:
    """Rows per chunk: as many as fit ``CHUNK_BYTES`` (64 MiB) of logits, but at least
    ``MIN_CHUNK_ROWS`` (256) where those fit ``MAX_CHUNK_BYTES`` (256 MiB), else as many
    as fit that (at least 1).

    Every chunk reads and writes all of ``grad_linear_weight`` (V x H) once, and its rows
    are the inner dimension of that product: at 1024 x 512 x 128256 float32 on 2 threads,
    chunks of 130 rows (64 MiB) took 1.48x the time of the three products alone, of 256
    rows 1.18x, of 512 rows 1.12x.

    >>> default_chunk_size(32768, "float32"), default_chunk_size(128256, "float32")
    (512, 256)
    """
    row = int(n_classes) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // row, min(MIN_CHUNK_ROWS, MAX_CHUNK_BYTES // row))


# --------------------------------------------------------------------------------------------
# validation (everything that fastloss._validate has is used from there)


def _ce_options(z_loss, softcap, temperature) -> dict:
    """The cross-entropy options, checked once (by the same validators as cross_entropy);
    passed on to every chunk's :func:`fastloss.cross_entropy_with_grad`."""
    return {"z_loss": V.z_loss(z_loss), "softcap": V.softcap(softcap),
            "temperature": V.temperature(temperature)}


def _chunk_size(value, n_rows: int, n_classes: int, dtype) -> int:
    if value is None:
        size = default_chunk_size(n_classes, dtype)
    else:
        size = V.integer(value, "chunk_size")
        if size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {size}")
    return max(1, min(size, n_rows))


class _Problem:
    """The validated, flattened arguments of one call."""

    def __init__(self, input, linear_weight, target, linear_bias, weight, ignore_index,
                 label_smoothing, reduction, z_loss, softcap, temperature, chunk_size,
                 backend, n_threads, want_grad, grad_output):
        self.arrays = arrays = _arrays_of(input)
        x = arrays.floating(input, "input")
        if x.ndim < 1:
            raise ValueError("input must have shape (..., H) with the features on the last "
                             f"axis, got shape {tuple(x.shape)}")
        w = arrays.floating(linear_weight, "linear_weight")
        if w.ndim != 2:
            raise ValueError(f"linear_weight must have shape (V, H) (classes, features), got "
                             f"shape {tuple(w.shape)}")
        n_classes, n_features = w.shape
        if n_features != x.shape[-1]:
            raise ValueError(
                f"linear_weight of shape {tuple(w.shape)} does not match input of shape "
                f"{tuple(x.shape)}: linear_weight must have shape (V, {x.shape[-1]}), its "
                "second dimension being the input's last"
            )
        if n_features == 0:
            raise ValueError(f"input must have at least one feature, got shape {tuple(x.shape)}")
        if n_classes == 0:
            raise ValueError(f"linear_weight must have at least one class (row), got shape "
                             f"{tuple(w.shape)}")
        if w.dtype != x.dtype:
            raise TypeError(f"linear_weight has dtype {w.dtype} but input has dtype {x.dtype}; "
                            "they must be the same")
        b = None
        if linear_bias is not None:
            b = arrays.floating(linear_bias, "linear_bias")
            if tuple(b.shape) != (n_classes,):
                raise ValueError(
                    f"linear_bias must have shape ({n_classes},), one value per row of "
                    f"linear_weight of shape {tuple(w.shape)}, got shape {tuple(b.shape)}"
                )
            if b.dtype != x.dtype:
                raise TypeError(f"linear_bias has dtype {b.dtype} but input has dtype "
                                f"{x.dtype}; they must be the same")

        batch_shape = tuple(x.shape)[:-1]
        # a stand-in for the logits input @ linear_weight.T (no memory): the target checks of
        # fastloss._validate only look at its shape
        logits_like = np.broadcast_to(np.zeros(()), batch_shape + (n_classes,))
        self.label_smoothing = V.label_smoothing(label_smoothing)
        self.ignore_index = V.integer(ignore_index, "ignore_index")
        self.weight = V.class_weight(arrays.host(weight), n_classes)
        self.soft = arrays.is_probability_target(target, logits_like)
        if self.soft:
            if self.ignore_index != -100:
                raise ValueError(
                    f"ignore_index={self.ignore_index} cannot be used with probability "
                    f"targets (target has the logits' shape {tuple(logits_like.shape)})"
                )
            self.target = arrays.probability_rows(target, logits_like)
        else:
            self.target = V.class_target(arrays.host(target), logits_like, self.ignore_index)
        self.reduction = V.reduction(reduction)
        self.grad_output = (V.grad_output(arrays.host(grad_output), self.reduction,
                                          batch_shape) if want_grad else None)
        self.options = _ce_options(z_loss, softcap, temperature)
        self.n_threads = V.n_threads(n_threads)
        # once: $FASTLOSS_BACKEND is read here; "auto" is the cuda backend for GPU arrays
        self.backend, _ = _backends.resolve(backend, device=arrays.on_gpu)

        self.input_shape = tuple(x.shape)
        self.batch_shape = batch_shape
        self.dtype = x.dtype  # of the results
        # BLAS multiplies float32 / float64: 16-bit inputs, weight and bias are converted once
        # (the weight's float32 copy is memory of V x H) and the gradients rounded at the end
        self.compute = arrays.compute_dtype(x.dtype)
        self.x = arrays.rows(x, self.compute)
        self.w = arrays.matrix(w, self.compute)
        self.b = None if b is None else arrays.vector(b, self.compute)
        self.n_rows = self.x.shape[0]
        self.n_classes = n_classes
        self.n_features = n_features
        # (NumPy's float32 / float64 of the same size for a torch dtype)
        self.chunk = _chunk_size(chunk_size, self.n_rows, n_classes,
                                 np.dtype(f"f{self.compute.itemsize}"))

        # the mean's denominator, as fastloss.cross_entropy: PyTorch's rule, over the batch
        if self.soft:
            self.denominator = self.n_rows
            self.n_counted = self.n_rows
        else:
            counted = self.target != self.ignore_index
            self.n_counted = int(np.count_nonzero(counted))
            self.denominator = (self.weight[self.target[counted]].sum()
                                if self.weight is not None else self.n_counted)
        if self.reduction == "mean" and "z_loss" in self.options:
            # The z-term is averaged over the counted rows, the cross-entropy term over the
            # denominator D.  Each chunk's rows are scaled by 1/D, so the z-term's weight
            # becomes z_loss * D / n_counted: the per-row loss then sums to
            # sum(CE)/D + z_loss * sum(lse^2)/n_counted and its gradient is scaled alike.
            if self.n_counted:
                self.options["z_loss"] *= float(self.denominator) / self.n_counted

    def chunks(self):
        for start in range(0, self.n_rows, self.chunk):
            yield start, min(start + self.chunk, self.n_rows)

    def logits_into(self, products, buf: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The logits of rows ``start:stop`` written into the first rows of ``buf``."""
        out = buf[: stop - start]
        products.logits(self.x[start:stop], self.w, self.b, out)
        return out

    def target_rows(self, start: int, stop: int):
        """Class indices (host) or probabilities (the arrays' library) of rows start:stop, as
        the cross-entropy reads them."""
        rows = self.target[start:stop]
        return self.arrays.ce_view(rows) if self.soft else rows


# --------------------------------------------------------------------------------------------
# the matrix products: SciPy's BLAS wrappers (gemm with beta) or NumPy's matmul


def _fortran(a: np.ndarray):
    """``(f, trans)`` with ``f`` Fortran-ordered and ``op(f) == a``: what the f2py wrappers
    take without copying."""
    return (a, 0) if a.flags.f_contiguous else (a.T, 1)


def _gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float) -> None:
    """``c = a @ b + beta * c`` in place, by SciPy's BLAS gemm.

    ``a`` and ``b`` are C- or Fortran-contiguous, ``c`` C-contiguous.  The f2py wrappers copy
    any operand that is not Fortran-ordered (and ``c`` is only written in place when it is),
    so the product is computed transposed, ``c.T = b.T @ a.T``, every array being passed as a
    Fortran-ordered view with the matching ``trans`` flag: nothing is copied (checked by the
    tests with tracemalloc).  Should a wrapper ever return a copy of ``c``, it is copied back.
    """
    blas = _scipy_blas()
    gemm = blas.dgemm if c.dtype == np.float64 else blas.sgemm
    (fa, ta), (fb, tb) = _fortran(b.T), _fortran(a.T)
    result = gemm(1.0, fa, fb, beta=beta, c=c.T, trans_a=ta, trans_b=tb, overwrite_c=1)
    if not np.shares_memory(result, c):  # pragma: no cover - not with SciPy 1.x
        c.T[...] = result


def _accumulate_numpy(acc, g, x, scratch: list, xp=np) -> None:
    """``acc += g.T @ x`` with NumPy's (or another array module ``xp``'s) matmul, which has
    no beta: the product goes into a scratch block of at most ``g.size`` elements, a block of
    rows of ``acc`` at a time, and is then added, so the extra memory stays O(chunk x V) (at
    the cost of reading and writing ``acc`` once more)."""
    n_classes, n_features = acc.shape
    block = max(1, min(n_classes, g.size // max(1, n_features)))
    if not scratch or scratch[0].shape[0] < block:
        scratch[:] = [xp.empty((block, n_features), dtype=acc.dtype)]
    for v0 in range(0, n_classes, block):
        v1 = min(v0 + block, n_classes)
        tmp = scratch[0][: v1 - v0]
        xp.matmul(g[:, v0:v1].T, x, out=tmp)
        acc[v0:v1] += tmp


class _Products:
    """The three products of one chunk, all on one BLAS: SciPy's when it is importable (one
    thread pool busy at a time; two OpenBLAS pools taking turns spin against each other), else
    NumPy's matmul -- or the matmul of another NumPy-like module ``xp`` (CuPy), whose arrays
    they then are."""

    def __init__(self, xp=np):
        self.xp = xp
        self.scipy = xp is np and USE_SCIPY_BLAS is not False and _scipy_blas() is not None
        self.scratch: list = []

    def logits(self, x, w, bias, out):
        """``out = x @ w.T + bias``."""
        if self.scipy:
            if bias is not None:
                out[...] = bias
            _gemm(x, w.T, out, 0.0 if bias is None else 1.0)
        else:
            self.xp.matmul(x, w.T, out=out)
            if bias is not None:
                out += bias

    def grad_input(self, g, w, out):
        """``out = g @ w``."""
        if self.scipy:
            _gemm(g, w, out, 0.0)
        else:
            self.xp.matmul(g, w, out=out)

    def accumulate(self, acc, g, x):
        """``acc += g.T @ x``, in place."""
        if self.scipy:
            _gemm(g.T, x, acc, 1.0)
        else:
            _accumulate_numpy(acc, g, x, self.scratch, self.xp)

    @staticmethod
    def add_column_sums(acc: np.ndarray, g: np.ndarray) -> None:
        """``acc += g.sum(0)``, summed in float64 (``acc`` is float64)."""
        acc += g.sum(axis=0, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# where the call runs: host arrays, or GPU arrays with their own library's products


class _HostArrays:
    """NumPy arrays on the host: NumPy buffers, the products on SciPy's BLAS (or NumPy's
    matmul), the cross-entropy on a CPU backend.  Every other class of this section has the
    same methods."""

    on_gpu = False

    @staticmethod
    def floating(value, name: str):
        """``value`` checked as a float16/bfloat16/float32/float64 array (shape and dtype are
        checked by the caller)."""
        if V.is_device_array(value):
            raise TypeError(
                f"{name} is a GPU array of a library linear_cross_entropy cannot multiply "
                f"({type(value).__module__}.{type(value).__name__}); on the GPU it takes "
                "torch CUDA tensors and CuPy arrays (the products run on their library), on "
                "the host NumPy arrays")
        return V.floating(value, name)  # float16 / bfloat16 are multiplied in float32

    @staticmethod
    def host(value):
        """A small argument (class indices, class weights, grad_output) as
        fastloss._validate checks it: on the host."""
        return value

    @staticmethod
    def is_probability_target(target, logits_like) -> bool:
        return V.is_probability_target(target, logits_like)

    @staticmethod
    def probability_rows(target, logits_like):
        return V.same_shape(target, logits_like, "target").reshape(-1, logits_like.shape[-1])

    @staticmethod
    def compute_dtype(dtype):
        return np.dtype(np.float32) if V.is_half(dtype) else dtype

    @staticmethod
    def rows(x, dtype):
        """C-contiguous (N, H) rows (a copy only for other layouts or dtypes)."""
        return np.ascontiguousarray(x, dtype=dtype).reshape(-1, x.shape[-1])

    @staticmethod
    def matrix(w, dtype):
        """The weight in a layout BLAS reads directly."""
        if w.dtype != dtype:
            w = w.astype(dtype)
        return w if (w.flags.c_contiguous or w.flags.f_contiguous) else np.ascontiguousarray(w)

    @staticmethod
    def vector(b, dtype):
        return b.astype(dtype, copy=False)

    @staticmethod
    def empty(shape, dtype, zero: bool = False):
        return (np.zeros if zero else np.empty)(shape, dtype=dtype)

    def accumulator(self, n: int):
        """float64 zeros (the bias gradient's sums), on the arrays' device."""
        return self.empty(n, np.dtype(np.float64), zero=True)

    @staticmethod
    def products():
        return _Products()

    @staticmethod
    def ce_view(a):
        """What fastloss's cross-entropy reads in place of ``a``."""
        return a

    @staticmethod
    def result(a, dtype, shape=None):
        """A gradient in the input's dtype (and ``shape``)."""
        if shape is not None:
            a = a.reshape(shape)
        return a.astype(dtype, copy=False)

    @staticmethod
    def loss(value, dtype):
        """The float64 loss of :func:`_reduce` rounded once to ``dtype``: NumPy, on the
        host."""
        return value.astype(dtype) if value.ndim else dtype.type(value)


def _describe(value) -> str:
    device = getattr(value, "device", None)
    where = f" on {device}" if device is not None else ""
    return f"{type(value).__module__}.{type(value).__name__}{where}"


class _ModuleArrays(_HostArrays):
    """GPU arrays of a NumPy-like module (CuPy): buffers and products on that module
    (:class:`_Products` on its matmul, as NumPy's path without SciPy), the cross-entropy on
    fastloss's cuda backend, which reads the arrays in place through
    ``__cuda_array_interface__``.  The results are arrays of that
    module.  The tests run this class with NumPy as the module."""

    def __init__(self, xp, on_gpu: bool):
        self.xp = xp
        self.on_gpu = on_gpu

    def _check(self, value, name: str):
        if not isinstance(value, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array like input, got "
                            f"{_describe(value)}")
        return value

    def floating(self, value, name: str):
        value = self._check(value, name)
        if value.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating array (float16, float32 or float64), "
                            f"got an array of dtype {value.dtype}")
        return value

    def host(self, value):
        if isinstance(value, self.xp.ndarray) and self.xp is not np:
            return self.xp.asnumpy(value)
        return value

    def is_probability_target(self, target, logits_like) -> bool:
        return (isinstance(target, self.xp.ndarray) and target.dtype.kind == "f"
                and tuple(target.shape) == tuple(logits_like.shape))

    def probability_rows(self, target, logits_like):
        return self.xp.ascontiguousarray(target).reshape(-1, logits_like.shape[-1])

    def rows(self, x, dtype):
        return self.xp.ascontiguousarray(x.astype(dtype, copy=False)).reshape(-1, x.shape[-1])

    def matrix(self, w, dtype):
        return w.astype(dtype, copy=False)

    def empty(self, shape, dtype, zero: bool = False):
        return (self.xp.zeros if zero else self.xp.empty)(shape, dtype=dtype)

    def products(self):
        return _Products(self.xp)

    def loss(self, value, dtype):
        return self.xp.asarray(value).astype(dtype)


class _TorchArrays(_HostArrays):
    """torch tensors on one device (CUDA; CPU ones in the tests): buffers and products on
    torch (``torch.matmul(out=)``, ``addmm_`` for the weight's gradient: beta = 1, in place),
    the cross-entropy on fastloss's cuda backend, which reads CUDA tensors in place through
    ``__cuda_array_interface__`` (on CPU tensors: on a CPU backend, through their NumPy
    views).  The results are tensors on that device."""

    def __init__(self, like):
        import torch

        self.torch = torch
        self.device = like.device
        self.on_gpu = like.device.type == "cuda"

    def _check(self, value, name: str):
        if not (isinstance(value, self.torch.Tensor) and value.device == self.device):
            raise TypeError(f"{name} must be a torch tensor on {self.device} like input, got "
                            f"{_describe(value)}")
        return value.detach()

    def floating(self, value, name: str):
        value = self._check(value, name)
        if not value.is_floating_point() or value.is_complex():
            raise TypeError(f"{name} must be a floating array (float16, bfloat16, float32 or "
                            f"float64), got a tensor of dtype {value.dtype}")
        return value

    def host(self, value):
        if isinstance(value, self.torch.Tensor):
            return value.detach().cpu().numpy()
        return value

    def is_probability_target(self, target, logits_like) -> bool:
        return (isinstance(target, self.torch.Tensor) and target.is_floating_point()
                and tuple(target.shape) == tuple(logits_like.shape))

    def probability_rows(self, target, logits_like):
        target = self._check(target, "target")
        return target.reshape(-1, logits_like.shape[-1]).contiguous()

    def compute_dtype(self, dtype):
        half = dtype in (self.torch.float16, self.torch.bfloat16)
        return self.torch.float32 if half else dtype

    def rows(self, x, dtype):
        return x.to(dtype).reshape(-1, x.shape[-1]).contiguous()

    def matrix(self, w, dtype):
        return w.to(dtype)

    def vector(self, b, dtype):
        return b.to(dtype)

    def empty(self, shape, dtype, zero: bool = False):
        make = self.torch.zeros if zero else self.torch.empty
        return make(shape, dtype=dtype, device=self.device)

    def accumulator(self, n: int):
        return self.empty(n, self.torch.float64, zero=True)

    def products(self):
        return _TorchProducts(self.torch)

    def ce_view(self, a):
        return a if self.on_gpu else a.numpy()

    def result(self, a, dtype, shape=None):
        if shape is not None:
            a = a.reshape(shape)
        return a.to(dtype)

    def loss(self, value, dtype):
        return self.torch.from_numpy(np.asarray(value)).to(device=self.device, dtype=dtype)


class _TorchProducts:
    def __init__(self, torch):
        self.torch = torch

    def logits(self, x, w, bias, out):
        if bias is None:
            self.torch.matmul(x, w.T, out=out)
        else:
            self.torch.addmm(bias, x, w.T, out=out)

    def grad_input(self, g, w, out):
        self.torch.matmul(g, w, out=out)

    @staticmethod
    def accumulate(acc, g, x):
        acc.addmm_(g.T, x)

    def add_column_sums(self, acc, g):
        acc.add_(g.sum(0, dtype=self.torch.float64))


# Tests only: run host arrays through the GPU arrays' code (torch CPU tensors on torch's
# products, NumPy arrays on _ModuleArrays with NumPy as the module), which has no GPU here.
_LIBRARY_PATH_ON_HOST = False


def _arrays_of(input) -> _HostArrays:
    """Where a call with this ``input`` runs: the host, or ``input``'s GPU library."""
    module = type(input).__module__.split(".")[0]
    # a torch tensor is asked first: __cuda_array_interface__ raises for one that requires grad
    if module == "torch" and getattr(input, "is_cuda", False):
        return _TorchArrays(input)
    if V.is_device_array(input):
        if module == "cupy":
            import cupy

            return _ModuleArrays(cupy, on_gpu=True)
        return _HostArrays()  # refuses it, naming the library
    if _LIBRARY_PATH_ON_HOST:
        if module == "torch":
            return _TorchArrays(input)
        if isinstance(input, np.ndarray):
            return _ModuleArrays(np, on_gpu=False)
    return _HostArrays()


# --------------------------------------------------------------------------------------------
# the public functions


def _reduce(p: _Problem, loss_rows: np.ndarray):
    """The batch reduction, in float64 and a fixed order, as fastloss.cross_entropy: a
    float64 array for "none", else a float64 scalar (the caller rounds it once to the
    result's dtype: :meth:`_HostArrays.loss`)."""
    if p.reduction == "none":
        return loss_rows.reshape(p.batch_shape)
    total = _api._sum_f64(loss_rows)
    if p.reduction == "sum":
        return np.float64(total)
    inv_denominator = 1.0 / p.denominator if p.denominator else math.inf
    return np.float64(total * inv_denominator)


def _ce_kwargs(p: _Problem) -> dict:
    return dict(weight=p.weight, ignore_index=p.ignore_index,
                label_smoothing=p.label_smoothing, reduction="none", backend=p.backend,
                n_threads=p.n_threads, **p.options)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index: int = -100, label_smoothing: float = 0.0,
                         reduction: str = "mean", z_loss: float = 0.0, softcap=None,
                         temperature: float = 1.0, chunk_size: int | None = None,
                         backend: str = "auto", n_threads: int | None = None):
    r"""Cross-entropy of the logits ``input @ linear_weight.T + linear_bias``, never holding
    more than one chunk of them.

    Equals ``fastloss.cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` (and
    ``torch.nn.functional.linear_cross_entropy``) with the memory of one ``(chunk_size, V)``
    block of logits instead of ``(N, V)``.

    Parameters
    ----------
    input : array_like, shape (..., H)
        float32 or float64 features (the hidden states); float16 / bfloat16 are multiplied
        in float32 (one float32 copy of the input, weight and bias) and the results rounded
        to their dtype.  A torch CUDA tensor or a CuPy array runs on the GPU: the products
        on its library, the cross-entropy on the cuda backend, every result (the loss
        included) an array of that library; ``linear_weight``, ``linear_bias`` and
        probability targets must then be arrays of that library on the same device.
    linear_weight : array_like, shape (V, H)
        The projection to the V classes, of the input's dtype.
    target : array_like
        Integer class indices of shape ``input.shape[:-1]``, or probabilities of shape
        ``input.shape[:-1] + (V,)`` (the logits' shape).
    linear_bias : array_like, shape (V,), optional
        Of the input's dtype.
    weight, ignore_index, label_smoothing, reduction, backend, n_threads
        As for :func:`fastloss.cross_entropy` (the same checks and errors; "logits" in an
        error message means ``input @ linear_weight.T``).  The mean's denominator is the
        whole batch's.  ``n_threads`` bounds the cross-entropy kernel's threads; the matrix
        products run on the BLAS NumPy (and SciPy) link, with its own thread count.
    z_loss, softcap, temperature
        Passed through to :func:`fastloss.cross_entropy_with_grad` when set.  With
        ``reduction="mean"`` the z-term is averaged over the counted rows while the
        cross-entropy keeps PyTorch's denominator D: each chunk gets ``z_loss * D / n_counted``
        with its rows scaled by ``1 / D``.
    chunk_size : int, optional
        Rows per chunk; default: as many as fit 64 MiB of logits, at least 256 where those
        fit 256 MiB (see :func:`default_chunk_size`).

    Returns
    -------
    loss : scalar of the input's dtype, or array of shape ``input.shape[:-1]`` for "none".

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]]); w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> float(linear_cross_entropy(x, w, np.array([0, 2]), chunk_size=1)) == float(
    ...     fastloss.cross_entropy(x @ w.T, np.array([0, 2])))
    True
    """
    p = _Problem(input, linear_weight, target, linear_bias, weight, ignore_index,
                 label_smoothing, reduction, z_loss, softcap, temperature, chunk_size, backend,
                 n_threads, want_grad=False, grad_output=None)
    loss_rows = np.zeros(p.n_rows)
    if p.n_rows:
        buf = p.arrays.empty((p.chunk, p.n_classes), p.compute)
        kwargs = _ce_kwargs(p)
        products = p.arrays.products()
        for start, stop in p.chunks():
            logits = p.logits_into(products, buf, start, stop)
            loss_rows[start:stop] = _api.cross_entropy(
                p.arrays.ce_view(logits), p.target_rows(start, stop), **kwargs)
    return p.arrays.loss(_reduce(p, loss_rows), p.dtype)


def linear_cross_entropy_with_grad(input, linear_weight, target, *, linear_bias=None,
                                   weight=None, ignore_index: int = -100,
                                   label_smoothing: float = 0.0, reduction: str = "mean",
                                   z_loss: float = 0.0, softcap=None, temperature: float = 1.0,
                                   chunk_size: int | None = None, grad_output=None,
                                   backend: str = "auto", n_threads: int | None = None):
    r"""Linear + cross-entropy and the gradients of the input, the weight and the bias.

    For each chunk of rows: the logits go into one reused ``(chunk, V)`` buffer, the fused
    cross-entropy overwrites it with its gradient ``g`` (scaled by ``grad_output``, per row
    for ``"none"``, and by ``1 / D`` for ``"mean"`` before it is projected), then
    ``grad_input[chunk] = g @ linear_weight``, ``grad_linear_weight += g.T @ input[chunk]``
    (BLAS gemm with ``beta = 1`` through SciPy, in place; without SciPy a scratch block of
    at most one chunk's size) and ``grad_linear_bias += g.sum(0)`` (in float64).

    Memory: the outputs (``input``'s, ``linear_weight``'s and ``linear_bias``'s sizes), one
    chunk buffer of logits, the per-chunk work of the cross-entropy kernel and O(N) per-row
    values; never ``N x V``.  An input that is not C-contiguous is copied once.

    Determinism: the chunks are processed in a fixed order and every sum over the batch is
    taken in a fixed order, so the same call on the same machine with the same BLAS thread
    count gives bit-identical results (tested), for any ``n_threads``.  A different BLAS, BLAS
    thread count or ``chunk_size`` can change the last bits of the products (float32: the
    gradients are sums of N or V float32 products).

    Parameters
    ----------
    input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
    reduction, z_loss, softcap, temperature, chunk_size, backend, n_threads
        As for :func:`linear_cross_entropy`.
    grad_output : scalar or array, optional
        Upstream gradient: a scalar for "mean"/"sum", an array of shape ``input.shape[:-1]``
        for "none".  Default 1.

    Returns
    -------
    loss : as for :func:`linear_cross_entropy`.
    grad_input : ndarray of the input's shape and dtype.
    grad_linear_weight : ndarray of shape (V, H).
    grad_linear_bias : ndarray of shape (V,), or ``None`` without ``linear_bias``.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]]); w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> loss, gx, gw, gb = linear_cross_entropy_with_grad(x, w, np.array([0, 2]))
    >>> g = fastloss.cross_entropy_with_grad(x @ w.T, np.array([0, 2]))[1]
    >>> np.allclose(gx, g @ w), np.allclose(gw, g.T @ x), gb is None
    (True, True, True)
    """
    p = _Problem(input, linear_weight, target, linear_bias, weight, ignore_index,
                 label_smoothing, reduction, z_loss, softcap, temperature, chunk_size, backend,
                 n_threads, want_grad=True, grad_output=grad_output)
    arrays, dtype = p.arrays, p.compute
    grad_input = arrays.empty((p.n_rows, p.n_features), dtype)
    grad_w = arrays.empty((p.n_classes, p.n_features), dtype, zero=True)
    grad_b = arrays.accumulator(p.n_classes) if p.b is not None else None
    loss_rows = np.zeros(p.n_rows)

    if p.n_rows:
        # per-row scale of each chunk's gradient, as fastloss.cross_entropy works it out
        go = p.grad_output
        if p.reduction == "none":
            scale = np.ascontiguousarray(go.reshape(-1))
        else:
            inv_denominator = 1.0 / p.denominator if p.denominator else math.inf
            value = float(go) * (inv_denominator if p.reduction == "mean" else 1.0)
            scale = np.full(p.chunk, value)
        buf = arrays.empty((p.chunk, p.n_classes), dtype)
        kwargs = _ce_kwargs(p)
        products = arrays.products()
        for start, stop in p.chunks():
            rows = stop - start
            g = p.logits_into(products, buf, start, stop)
            row_scale = scale[start:stop] if p.reduction == "none" else scale[:rows]
            view = arrays.ce_view(g)
            loss, _ = _api.cross_entropy_with_grad(view, p.target_rows(start, stop),
                                                   grad_output=row_scale, out=view, **kwargs)
            loss_rows[start:stop] = loss
            x_rows = p.x[start:stop]
            products.grad_input(g, p.w, grad_input[start:stop])
            products.accumulate(grad_w, g, x_rows)
            if grad_b is not None:
                products.add_column_sums(grad_b, g)

    return (arrays.loss(_reduce(p, loss_rows), p.dtype),
            arrays.result(grad_input, p.dtype, p.input_shape), arrays.result(grad_w, p.dtype),
            None if grad_b is None else arrays.result(grad_b, p.dtype))
