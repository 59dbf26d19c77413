"""The ``cuda`` backend: the losses on an NVIDIA GPU through Numba (package ``numba-cuda``).

One kernel per kernel shape (docs/design.md section 3); the loss math is in
:mod:`fastloss._ext.numba_hooks`, compiled here as device functions (the CPU backend compiles
the same functions).  Softmax shapes: one thread block per row (rows grid-strided over the
blocks).  Each thread keeps an online (max, sum of exp) over its strided share of the row; the
block folds them in a fixed tree in shared memory, so the result does not depend on scheduling
(no floating-point atomics), and the same kernel then writes the gradient.  Each thread reads
and writes only its own share of a row, so ``out=logits`` (the gradient is the logits) is
safe.  Elementwise shape: one thread per element.  Per-row losses come back to the host, where
:mod:`fastloss._api` reduces the batch in a fixed order, as for every backend.

Inputs may be NumPy arrays (copied to the GPU and back inside the kernel call) or GPU arrays:
Numba device arrays or anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
tensors), used in place; the gradient is returned on the side of the logits.  Imported only
when asked for, so fastloss works where numba-cuda or a GPU is missing.
``NUMBA_ENABLE_CUDASIM=1`` runs it on Numba's simulator (the tests do, with a small block so
that rows span several threads).  ``n_threads`` (CPU threads) is ignored.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .._numpy_kernels import row_scales
from .._validate import as_device_array, is_device_array
from . import numba_hooks

try:  # the reason is reported by unavailable_reason()
    from numba import cuda, float64, int64
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    cuda = None
    _IMPORT_ERROR = exc

ACCEPTS_DEVICE_ARRAYS = True
MAX_THREADS = 1024  # shared-memory size of the block reductions
THREADS_PER_BLOCK = int(os.environ.get("FASTLOSS_CUDA_THREADS", "256"))  # a power of two
MAX_BLOCKS = 65535
NAN = math.nan
INF = math.inf


def unavailable_reason():
    if cuda is None:
        return f"numba-cuda is not installed (pip install 'fastloss[cuda]'): {_IMPORT_ERROR}"
    try:
        if not cuda.is_available():
            return "no CUDA GPU or driver was found (numba.cuda is importable)"
    except Exception as exc:  # pragma: no cover - driver errors
        return f"CUDA is not usable: {exc}"
    return None


# ------------------------------------------------------------------------------ device code

if cuda is not None:
    hooks = numba_hooks.compile_hooks(cuda.jit(device=True, inline="always"),
                                      "fastloss._ext.numba_cuda.hooks")

    @cuda.jit(device=True, inline="always")
    def _row_max_sum(x, i, c, tid, nt, softcap, inv_temperature, sm_m, sm_s):
        """``(m, s)`` of the transformed row ``z(x_i)``, folded over the block; every thread
        gets it."""
        m = -INF
        s = 0.0
        for j in range(tid, c, nt):
            v, _ = hooks.transform(float64(x[i, j]), softcap, inv_temperature)
            if v > m:
                s = s * math.exp(m - v) + 1.0 if m != -INF else s + 1.0  # s: 0, or NaN
                m = v
            elif v != -INF:  # an impossible class adds nothing; NaN makes s NaN
                s += math.exp(v - m)
        sm_m[tid] = m
        sm_s[tid] = s
        cuda.syncthreads()
        stride = nt // 2
        while stride > 0:
            if tid < stride:
                m2, s2 = hooks.fold(sm_m[tid], sm_s[tid], sm_m[tid + stride],
                                    sm_s[tid + stride])
                sm_m[tid] = m2
                sm_s[tid] = s2
            cuda.syncthreads()
            stride //= 2
        m = sm_m[0]
        s = sm_s[0]
        cuda.syncthreads()  # everyone has read before the memory is reused
        return m, s

    @cuda.jit(device=True, inline="always")
    def _block_sum(value, tid, nt, sm):
        sm[tid] = value
        cuda.syncthreads()
        stride = nt // 2
        while stride > 0:
            if tid < stride:
                sm[tid] += sm[tid + stride]
            cuda.syncthreads()
            stride //= 2
        total = sm[0]
        cuda.syncthreads()
        return total

    @cuda.jit(device=True, inline="always")
    def _poisoned_lse(x, i, c, tid, nt, softcap, inv_temperature, sm):
        """``logsumexp`` of a poisoned row (the whole block calls it)."""
        n_nan = 0.0
        n_pos_inf = 0.0
        for j in range(tid, c, nt):
            v, _ = hooks.transform(float64(x[i, j]), softcap, inv_temperature)
            if v != v:
                n_nan += 1.0
            elif v == INF:
                n_pos_inf += 1.0
        n_nan = _block_sum(n_nan, tid, nt, sm)
        n_pos_inf = _block_sum(n_pos_inf, tid, nt, sm)
        return hooks.poisoned_lse(n_nan > 0.0, n_pos_inf > 0.0)

    # -------------------------------------------------- shape 1: softmax, linear in log p

    @cuda.jit
    def _softmax_linear_kernel(x, target, sparse, ignore_index, weight, keep, eps_c,
                               log_target, kl, softcap, inv_temperature, z_grad, scale, loss,
                               lse, grad, write_grad, write_lse):
        """loss_i = sum_c a_ic (-log p_ic) + const_i, d loss_i / d z_ic = A'_i p_ic - a_ic,
        times dz/dx.  ``target``: (N, 1) class indices (``sparse``) or (N, C) (log-)
        probabilities; KL is ``w = 1, eps = 0, kl`` (const = sum t log t)."""
        sm_m = cuda.shared.array(MAX_THREADS, float64)
        sm_s = cuda.shared.array(MAX_THREADS, float64)
        n, c = x.shape
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            y = int64(-1)
            if sparse:
                y = int64(target[i, 0])
                if y == ignore_index:  # the same branch for the whole block
                    if tid == 0:
                        loss[i] = 0.0
                        if write_lse:
                            lse[i] = 0.0
                    if write_grad:
                        for j in range(tid, c, nt):
                            grad[i, j] = 0.0
                    continue
            m, s = _row_max_sum(x, i, c, tid, nt, softcap, inv_temperature, sm_m, sm_s)
            bad = hooks.poisoned(m, s)
            big_a = 0.0  # A = sum_c a_c
            a_gap = 0.0  # sum_c a_c (m - z_c), 0 * inf counted as 0
            const = 0.0
            if not bad:
                for j in range(tid, c, nt):
                    if sparse:
                        t = 1.0 if j == y else 0.0
                    else:
                        t = hooks.target_prob(float64(target[i, j]), log_target)
                    a = hooks.ce_coef(t, weight[j], keep, eps_c)
                    big_a += a
                    if a != 0.0:  # x is read only where it counts (eps = 0: at y)
                        z, _ = hooks.transform(float64(x[i, j]), softcap, inv_temperature)
                        a_gap += hooks.weighted(a, m - z)
                    if kl:
                        const += hooks.target_t_log_t(float64(target[i, j]), log_target)
            big_a = _block_sum(big_a, tid, nt, sm_s)
            a_gap = _block_sum(a_gap, tid, nt, sm_s)
            if kl:
                const = _block_sum(const, tid, nt, sm_s)
            log_s = 0.0
            if bad:
                lse_i = NAN
                if write_lse:
                    lse_i = _poisoned_lse(x, i, c, tid, nt, softcap, inv_temperature, sm_s)
            else:
                log_s = math.log(s)
                lse_i = m + log_s
            if tid == 0:
                loss[i] = NAN if bad else hooks.linear_loss(big_a, a_gap, const, log_s)
                if write_lse:
                    lse[i] = lse_i
            if write_grad:
                si = scale[i]
                big_a_p = hooks.p_coef(big_a, z_grad, lse_i)
                for j in range(tid, c, nt):
                    if bad:
                        grad[i, j] = NAN
                    else:
                        z, slope = hooks.transform(float64(x[i, j]), softcap, inv_temperature)
                        if sparse:
                            t = 1.0 if j == y else 0.0
                        else:
                            t = hooks.target_prob(float64(target[i, j]), log_target)
                        a = hooks.ce_coef(t, weight[j], keep, eps_c)
                        p = math.exp(z - m) / s
                        grad[i, j] = si * (big_a_p * p - a) * slope
            cuda.syncthreads()

    # -------------------------------------------------- shape 2: softmax, function of p

    @cuda.jit
    def _softmax_fn_kernel(x, target, sparse, loss_code, scale, loss, grad, write_grad):
        """loss_i = sum_c term(p_ic, t_ic), d loss_i / d z_ij = p_ij (phi_ij - sum_k p_ik phi_ik).
        ``target``: (N, 1) class indices (``sparse``) or (N, C); the entropy passes ``x``."""
        sm_m = cuda.shared.array(MAX_THREADS, float64)
        sm_s = cuda.shared.array(MAX_THREADS, float64)
        n, c = x.shape
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            y = int64(target[i, 0]) if sparse else int64(-1)
            m, s = _row_max_sum(x, i, c, tid, nt, 0.0, 1.0, sm_m, sm_s)
            bad = hooks.poisoned(m, s)
            log_s = math.log(s) if not bad else 0.0
            value = 0.0
            dot = 0.0  # sum_k p_k phi_k
            rest = 0.0  # sparse (softmax MSE, one-hot target): sum_{k != y} p_k = 1 - p_y
            p_y = 0.0
            if not bad:
                for j in range(tid, c, nt):
                    z = float64(x[i, j]) - m
                    p = math.exp(z) / s
                    if sparse and j == y:
                        p_y = p
                    else:
                        t = 0.0 if sparse else float64(target[i, j])
                        rest += p
                        value += hooks.p_term(loss_code, p, z - log_s, t)
                        dot += p * hooks.p_phi(loss_code, p, z - log_s, t)
            value = _block_sum(value, tid, nt, sm_s)
            dot = _block_sum(dot, tid, nt, sm_s)
            if sparse:  # the class y's terms from 1 - p_y = rest (as the CPU kernels)
                rest = _block_sum(rest, tid, nt, sm_s)
                p_y = _block_sum(p_y, tid, nt, sm_s)
                value += rest * rest
                dot -= 2.0 * p_y * rest
            if tid == 0:
                loss[i] = NAN if bad else value
            if write_grad:
                si = scale[i]
                for j in range(tid, c, nt):
                    if bad:
                        grad[i, j] = NAN
                    else:
                        z = float64(x[i, j]) - m
                        p = math.exp(z) / s
                        t = 0.0 if sparse else float64(target[i, j])
                        grad[i, j] = si * p * (hooks.p_phi(loss_code, p, z - log_s, t) - dot)
                        if sparse and j == y:  # -2 si p_y loss, without cancellation
                            grad[i, j] = -2.0 * si * p_y * value
            cuda.syncthreads()

    # -------------------------------------------------- shape 3: elementwise

    @cuda.jit
    def _elementwise_kernel(x, target, weight, has_weight, pos_weight, has_pos_weight,
                            loss_code, scale, loss, grad, write_grad):
        """One thread per element; ``loss`` holds the value of every element."""
        n, c = x.shape
        start = cuda.grid(1)
        for flat in range(start, n * c, cuda.gridsize(1)):
            i = flat // c
            k = flat - i * c
            v = float64(x[i, k])
            t = float64(target[i, k])
            w = weight[i, k] if has_weight else 1.0
            pw = pos_weight[k] if has_pos_weight else 1.0
            loss[i, k] = hooks.element_value(loss_code, v, t, w, pw)
            if write_grad:
                grad[i, k] = scale[i, k] * hooks.element_slope(loss_code, v, t, w, pw)

    # -------------------------------------------------- grad + hess (gradient boosting)

    @cuda.jit
    def _softmax_grad_hess_kernel(x, target, sparse, weight, has_weight, keep, eps_c,
                                  hessian_scale, min_hessian, grad, hess):
        """grad_c = (A p_c - q_c) w, hess_c = floor(hessian_scale A p_c (1 - p_c) w) with
        q_c = (1 - eps) t_c + eps / K, A = sum_c q_c (hooks.softmax_grad_hess).  ``target``:
        (N, 1) class indices (``sparse``) or (N, K) probabilities; ``grad`` and ``hess``:
        (N, K) in C or Fortran order."""
        sm_m = cuda.shared.array(MAX_THREADS, float64)
        sm_s = cuda.shared.array(MAX_THREADS, float64)
        n, c = x.shape
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            y = int64(target[i, 0]) if sparse else int64(-1)
            m, s = _row_max_sum(x, i, c, tid, nt, 0.0, 1.0, sm_m, sm_s)
            bad = hooks.poisoned(m, s)
            big_a = 0.0
            for j in range(tid, c, nt):
                t = (1.0 if j == y else 0.0) if sparse else float64(target[i, j])
                big_a += hooks.ce_coef(t, 1.0, keep, eps_c)
            big_a = _block_sum(big_a, tid, nt, sm_s)
            w = weight[i] if has_weight else 1.0
            for j in range(tid, c, nt):
                if bad:
                    grad[i, j] = NAN
                    hess[i, j] = NAN
                else:
                    t = (1.0 if j == y else 0.0) if sparse else float64(target[i, j])
                    p = math.exp(float64(x[i, j]) - m) / s
                    g, h = hooks.softmax_grad_hess(p, hooks.ce_coef(t, 1.0, keep, eps_c),
                                                   big_a, w, hessian_scale, min_hessian)
                    grad[i, j] = g
                    hess[i, j] = h
            cuda.syncthreads()

    @cuda.jit
    def _binary_grad_hess_kernel(x, target, weight, has_weight, hessian_scale, min_hessian,
                                 grad, hess):
        """One thread per score (hooks.bce_grad_hess)."""
        for k in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            w = weight[k] if has_weight else 1.0
            g, h = hooks.bce_grad_hess(float64(x[k]), float64(target[k]), w, hessian_scale,
                                       min_hessian)
            grad[k] = g
            hess[k] = h

    # -------------------------------------------------- transforms

    @cuda.jit
    def _softmax_kernel(x, out, mode):
        """mode 0: softmax into out; 1: log_softmax into out; 2: logsumexp into out[:, 0]."""
        sm_m = cuda.shared.array(MAX_THREADS, float64)
        sm_s = cuda.shared.array(MAX_THREADS, float64)
        n, c = x.shape
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            m, s = _row_max_sum(x, i, c, tid, nt, 0.0, 1.0, sm_m, sm_s)
            bad = hooks.poisoned(m, s)
            if mode == 2:
                value = NAN
                if bad:
                    value = _poisoned_lse(x, i, c, tid, nt, 0.0, 1.0, sm_s)
                if tid == 0:
                    out[i, 0] = m + math.log(s) if not bad else value
            else:
                log_s = math.log(s) if not bad else 0.0
                for j in range(tid, c, nt):
                    z = float64(x[i, j]) - m
                    if bad:
                        out[i, j] = NAN
                    elif mode == 0:
                        out[i, j] = math.exp(z - log_s)
                    else:
                        out[i, j] = z - log_s
            cuda.syncthreads()


KERNELS = ("_softmax_linear_kernel", "_softmax_fn_kernel", "_elementwise_kernel",
           "_softmax_kernel", "_softmax_grad_hess_kernel", "_binary_grad_hess_kernel")


# ------------------------------------------------------------------------------ host side

def is_device(a) -> bool:
    return a is not None and is_device_array(a)


def as_device(a):
    """A Numba device array: GPU arrays without a copy, NumPy arrays copied over."""
    if a is None:
        return None
    if is_device(a):
        return as_device_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def as_rows(a, n_cols, dtype):
    """A C-contiguous ``(rows, n_cols)`` array: a view of a GPU array (used in place, its
    dtype kept), or, for a host array, a NumPy array of ``dtype`` (copied over in the kernel
    call)."""
    if not is_device(a):
        return np.ascontiguousarray(a, dtype=dtype).reshape(-1, n_cols)
    d = as_device_array(a)
    if not d.is_c_contiguous():
        raise ValueError("GPU arrays must be C-contiguous (non-contiguous GPU input is not "
                         "supported yet); make a contiguous copy on the GPU first")
    return d.reshape(-1, n_cols)


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


def _launch_rows(n_rows):
    return max(1, min(n_rows, MAX_BLOCKS)), min(THREADS_PER_BLOCK, MAX_THREADS)


class _Out:
    """A device buffer for an output: the output itself when it is a GPU array, else a new
    one whose contents :meth:`finish` copies into the host array."""

    def __init__(self, out, shape, dtype):
        self.host = None if out is None or is_device(out) else out
        if out is None:
            self.device = cuda.device_array(shape, dtype=dtype)
        elif self.host is None:
            self.device = as_device_array(out)
        else:
            self.device = cuda.device_array(out.shape, dtype=out.dtype)

    def finish(self):
        if self.host is not None:
            self.device.copy_to_host(self.host)


def _index_rows(d_target, n):
    """Class indices as an (N, 1) device array (the kernels read ``target[i, 0]``)."""
    return d_target.reshape(n, 1)


def _softmax_linear(x, target, weight, ignore_index, label_smoothing, log_target, kl, softcap,
                    inv_temperature, z_grad, scale, loss, lse, grad):
    d_x = as_device(x)
    n, c = d_x.shape
    if n == 0:
        return
    sparse = len(target.shape) == 1
    d_target = as_device(target)
    if sparse:
        d_target = _index_rows(d_target, n)
    out_loss = _Out(loss, (n,), np.float64)
    out_lse = _Out(lse, (1,), np.float64)
    out_grad = _Out(grad, (1, 1), d_x.dtype)
    d_scale = as_device(np.zeros(1) if scale is None else row_scales(scale, n))
    _softmax_linear_kernel[_launch_rows(n)](
        d_x, d_target, sparse, ignore_index, as_device(weight), 1.0 - label_smoothing,
        label_smoothing / c if c else 0.0, log_target, kl, float(softcap),
        float(inv_temperature), float(z_grad), d_scale, out_loss.device, out_lse.device,
        out_grad.device, grad is not None, lse is not None)
    out_loss.finish()
    if lse is not None:
        out_lse.finish()
    if grad is not None:
        out_grad.finish()


def cross_entropy(x, target, weight, ignore_index, label_smoothing, softcap, inv_temperature,
                  z_grad, scale, loss, lse, grad, n_threads):
    if weight is None:
        weight = np.ones(x.shape[1])
    _softmax_linear(x, target, weight, ignore_index, float(label_smoothing), False, False,
                    softcap, inv_temperature, z_grad, scale, loss, lse, grad)


def kl_divergence(x, target, log_target, scale, loss, grad, n_threads):
    _softmax_linear(x, target, np.ones(x.shape[1]), -1, 0.0, bool(log_target), True, 0.0, 1.0,
                    0.0, scale, loss, None, grad)


def _softmax_fn(x, target, loss_code, scale, loss, grad):
    d_x = as_device(x)
    n = d_x.shape[0]
    if n == 0:
        return
    sparse = len(target.shape) == 1
    d_target = d_x if target is x else as_device(target)
    if sparse:
        d_target = _index_rows(d_target, n)
    out_loss = _Out(loss, (n,), np.float64)
    out_grad = _Out(grad, (1, 1), d_x.dtype)
    d_scale = as_device(np.zeros(1) if scale is None else row_scales(scale, n))
    _softmax_fn_kernel[_launch_rows(n)](d_x, d_target, sparse, loss_code, d_scale,
                                        out_loss.device, out_grad.device, grad is not None)
    out_loss.finish()
    if grad is not None:
        out_grad.finish()


def softmax_mse(x, target, scale, loss, grad, n_threads):
    _softmax_fn(x, target, numba_hooks.SOFTMAX_MSE, scale, loss, grad)


def entropy(x, scale, loss, grad, n_threads):
    _softmax_fn(x, x, numba_hooks.ENTROPY, scale, loss, grad)


def _elementwise(loss_code, x, target, weight, pos_weight, scale, loss, grad):
    d_x = as_device(x)
    n, c = d_x.shape
    if n * c == 0:
        return
    out_grad = _Out(grad, (1, 1), d_x.dtype)
    d_loss = cuda.device_array((n, c), dtype=np.float64)
    d_scale = as_device(np.ascontiguousarray(scale) if scale is not None else np.zeros((1, 1)))
    d_weight = as_device(np.ascontiguousarray(weight) if weight is not None
                         else np.zeros((1, 1)))
    d_pos_weight = as_device(pos_weight if pos_weight is not None else np.zeros(1))
    threads = min(THREADS_PER_BLOCK, MAX_THREADS)
    blocks = max(1, min((n * c + threads - 1) // threads, MAX_BLOCKS))
    _elementwise_kernel[blocks, threads](
        d_x, as_device(target), d_weight, weight is not None, d_pos_weight,
        pos_weight is not None, loss_code, d_scale, d_loss, out_grad.device, grad is not None)
    values = d_loss.copy_to_host()
    loss[...] = values.sum(axis=1) if loss.ndim == 1 else values
    if grad is not None:
        out_grad.finish()


def binary_cross_entropy(x, target, weight, pos_weight, scale, loss, grad, n_threads):
    _elementwise(numba_hooks.BCE, x, target, weight, pos_weight, scale, loss, grad)


def mse(x, target, scale, loss, grad, n_threads):
    _elementwise(numba_hooks.MSE, x, target, None, None, scale, loss, grad)


def _transform(mode, x, out):
    d_x = as_device(x)
    n, c = d_x.shape
    if n == 0:
        return
    d_out = cuda.device_array((n, c if mode < 2 else 1), dtype=np.float64 if mode == 2
                              else d_x.dtype)
    _softmax_kernel[_launch_rows(n)](d_x, d_out, mode)
    host = d_out.copy_to_host()
    out[...] = host[:, 0] if mode == 2 else host


def softmax(x, out, n_threads):
    _transform(0, x, out)


def log_softmax(x, out, n_threads):
    _transform(1, x, out)


def logsumexp(x, out, n_threads):
    _transform(2, x, out)


class _OutputLike(_Out):
    """:class:`_Out` for an output of any layout: a host array gets a device buffer of its
    shape, dtype and order (C or Fortran), which :meth:`finish` copies back."""

    def __init__(self, out):
        self.host = None if is_device(out) else out
        if self.host is None:
            self.device = as_device_array(out)
        else:
            fortran = out.ndim > 1 and out.flags.f_contiguous and not out.flags.c_contiguous
            self.device = cuda.device_array(out.shape, dtype=out.dtype,
                                            order="F" if fortran else "C")


def _weights(sample_weight):
    """``(device weights, has_weight)``."""
    if sample_weight is None:
        return as_device(np.zeros(1)), False
    return as_device(sample_weight), True


def cross_entropy_grad_hess(x, target, sample_weight, label_smoothing, hessian_scale,
                            min_hessian, grad, hess, n_threads):
    """``grad`` and ``hess``: host or GPU arrays, C- or Fortran-ordered (the kernel indexes
    them, whatever their strides)."""
    d_x = as_device(x)
    n, c = d_x.shape
    if n == 0:
        return
    sparse = len(target.shape) == 1
    d_target = as_device(target)
    if sparse:
        d_target = _index_rows(d_target, n)
    d_weight, has_weight = _weights(sample_weight)
    out_grad, out_hess = _OutputLike(grad), _OutputLike(hess)
    eps = float(label_smoothing)
    _softmax_grad_hess_kernel[_launch_rows(n)](
        d_x, d_target, sparse, d_weight, has_weight, 1.0 - eps, eps / c, float(hessian_scale),
        float(min_hessian), out_grad.device, out_hess.device)
    out_grad.finish()
    out_hess.finish()


def binary_cross_entropy_grad_hess(x, target, sample_weight, hessian_scale, min_hessian, grad,
                                   hess, n_threads):
    d_x = as_device(x)
    n = d_x.shape[0]
    if n == 0:
        return
    d_weight, has_weight = _weights(sample_weight)
    out_grad, out_hess = _OutputLike(grad), _OutputLike(hess)
    threads = min(THREADS_PER_BLOCK, MAX_THREADS)
    blocks = max(1, min((n + threads - 1) // threads, MAX_BLOCKS))
    _binary_grad_hess_kernel[blocks, threads](
        d_x, as_device(target), d_weight, has_weight, float(hessian_scale), float(min_hessian),
        out_grad.device, out_hess.device)
    out_grad.finish()
    out_hess.finish()
