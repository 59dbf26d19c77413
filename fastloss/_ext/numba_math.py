"""Vectorisable math for the Numba kernels.

PyPI's llvmlite has no SVML, so ``np.exp`` / ``np.log`` inside a Numba loop become one scalar
libm call per element and the loop does not vectorise.  :func:`vexp` is plain arithmetic
instead (range reduction + polynomial, exponent set through a bit cast), which LLVM turns into
AVX2 / AVX-512 code.  It only has to serve ``exp(z)`` for ``z <= 0`` (every softmax-shifted
logit), including ``z = -inf`` -> 0; :func:`vexp_any` takes any ``z``.  :func:`vlog` and
:func:`vlog1p` are built the same way (exponent and mantissa from the bits, a polynomial,
special values by selects); :func:`vlog1p_unit` serves ``log1p(e)`` for ``e`` in [0, 1] with
one series.  The loss hooks get them through ``compile_hooks`` below: the BCE's softplus
(``vlog1p_unit``) and sigmoid, the KL divergence's ``t log t`` and log targets.

Fast-math flags: everything except ``nnan`` and ``ninf``, which would let LLVM assume that no
``-inf`` exists -- and ``-inf`` logits mean "impossible class" here.

This module also compiles the loss math of :mod:`fastloss._ext.numba_hooks` for the CPU
(:data:`hooks`), and makes Numba's on-disk cache of the kernels depend on this file and on
numba_hooks.py (:func:`_cache_follows_dependencies`).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import numba_hooks

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# vexp drops "reassoc": it would let LLVM fold the two-part range reduction
# (z - n ln2_hi) - n ln2_lo into z - n ln2, losing up to 4.5 ulp (float32) and 213 ulp
# (float64) for large |z| (tests/test_numba_math.py).  The exp has no reduction to reorder.
EXP_FASTMATH = FASTMATH - {"reassoc"}
JIT = dict(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy")
# The range kernels (numba_cpu) run without Numba's reference counting: every row and block
# view (``x[i]``, ``row[start:stop]``) would otherwise pay an atomic incref/decref, which
# costs 25% at 32k classes a row.
KERNEL = dict(JIT, _nrt=False)
# Every helper below ends up inlined into the kernels: as a separate function each call
# costs a few ns, which at 10 classes a row is most of the time.  Two ways:
# - INLINE (the row helpers of this file): compiled once per argument types, marked
#   ``alwaysinline`` for LLVM (Numba's ``forceinline``).  Numba's IR inlining re-typed and
#   re-lowered each helper at every call site (the cross-entropy kernels compile in about
#   half the time without it).
#   Built on KERNEL (``_nrt=False``): compiled on their own, they would otherwise take
#   Numba's default (reference counting on every block view), whichever caller compiled
#   them first.
# - IR_INLINE (numba_cpu's per-loss row functions): Numba IR inlining, so that the constant
#   flags of each call (``sparse``, ``dense``, ...) fold before LLVM sees the loops.
#   Compiled on its own, a helper is optimised for every flag value first, and a vector
#   loop guarded by a run-time overlap check stays guarded after inlining (the grad + Hessian
#   row, whose exp buffer is its gradient row, ran the scalar loop: 1.3x slower at 32k
#   classes).
INLINE = dict(KERNEL, forceinline=True)
IR_INLINE = dict(JIT, inline="always")


def _vector_width():
    """The ``prefer-vector-width`` of the kernels (see :func:`wide_vectors`): 256 when
    ``FASTLOSS_NO_AVX512`` is set to anything but ``""`` or ``"0"`` (as the C backend reads
    it), else 512."""
    off = os.environ.get("FASTLOSS_NO_AVX512", "")
    return "256" if off not in ("", "0") else "512"


VECTOR_WIDTH = _vector_width()  # read once, at import: the compiled kernels keep it



def _cache_follows_dependencies():
    """Numba checks a cached kernel against its own source file only: a kernel of numba_cpu.py
    would survive an edit of the math it inlines from this file or numba_hooks.py (and a
    reinstall: the cache files are not part of the package) and silently run the old math.
    For functions defined in this directory, Numba's cache locators are extended so that the
    source stamp also holds a hash of those two files.  Functions elsewhere are untouched."""
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in 0.6x
        bases = list(impl._locator_classes)
    except (ImportError, AttributeError):  # pragma: no cover - another Numba: plain caching
        return
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in ("numba_math.py", "numba_hooks.py"):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    digest.update(VECTOR_WIDTH.encode())  # the kernels' vector width (wide_vectors)
    dependencies = digest.hexdigest()

    class _FollowsDependencies:
        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != here:
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return super().get_source_stamp(), dependencies

    if any(getattr(c, "_fastloss", False) for c in bases):
        return
    impl._locator_classes = [
        type(f"Fastloss{base.__name__}", (_FollowsDependencies, base),
             {"_fastloss": True, "__module__": __name__})
        for base in bases] + bases


_cache_follows_dependencies()


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling function's loops with 512-bit vectors where the CPU
    has them (the first statement of every KERNEL and INLINE function).

    Numba compiles for the host CPU with LLVM's tuning for it, and that tuning prefers
    256-bit vectors on most AVX-512 CPUs (Intel's, from Skylake-SP on; not AMD's Zen 4): the
    kernels then used no 512-bit register at all unless the user set ``NUMBA_CPU_FEATURES``
    for the whole process.  This sets the function's own ``"prefer-vector-width"``
    attribute, which overrides that tuning for this function alone (the user's other Numba
    functions keep theirs), to :data:`VECTOR_WIDTH`.  Each function whose loops LLVM
    vectorises needs it: an INLINE helper's loops are vectorised in its own module, before
    it is inlined into a kernel.  On a CPU without AVX-512 it changes nothing."""
    def codegen(context, builder, signature, args):
        # llvmlite's FunctionAttributes.add takes only the attributes without a value
        set.add(builder.function.attributes, f'"prefer-vector-width"="{VECTOR_WIDTH}"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (no conversion).

    Numba widens int32 arithmetic to int64, hence the truncation.
    """
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64 (no conversion)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bits(typingctx, value):
    """The bits of a float32 / float64 as an int32 / int64 (no conversion)."""
    if value == types.float32:
        int_type, llvm_type = types.int32, ir.IntType(32)
    elif value == types.float64:
        int_type, llvm_type = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return int_type(value), codegen


# float32: exp(z) = 2^n * exp(r), n = round(z / ln 2), |r| <= ln(2)/2.  ln 2 is split in a
# high part with few mantissa bits (n * LN2_HI is exact) and a low correction (Cody-Waite).
# exp(r) = 1 + r + c2 r^2 + ... + c6 r^6, the c_k fitted by least squares for relative error
# on 4000 Chebyshev nodes of [-ln2/2, ln2/2] (3.6e-9 in exact arithmetic): as good as Taylor
# to degree 7, one FMA less.  The whole vexp is within 0.86 ulp (tests/test_numba_math.py).
_F32_LOG2E = np.float32(1.4426950408889634)
_F32_LN2_HI = np.float32(0.693359375)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_MIN_Z = np.float32(-87.33654)  # log of the smallest normal float32; below: 0
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)
_F32_C = tuple(np.float32(c) for c in (0.49999988595112776, 0.16666518459980356,
                                        0.04166953310922312, 0.008368916341375321,
                                        0.0013751407895834938))


@njit(fastmath=EXP_FASTMATH, inline="always", cache=True)
def _exp_reduce_f32(zc):
    """``(n, p)`` with ``exp(zc) = 2^n p``, ``p = exp(r)``, for a finite ``zc`` (or NaN)."""
    n = np.floor(zc * _F32_LOG2E + _F32_HALF)
    r = (zc - n * _F32_LN2_HI) - n * _F32_LN2_LO
    p = _F32_C[4]
    p = p * r + _F32_C[3]
    p = p * r + _F32_C[2]
    p = p * r + _F32_C[1]
    p = p * r + _F32_C[0]
    p = p * r + _F32_ONE
    p = p * r + _F32_ONE
    return n, p


def _exp_f32(z):
    # the clamp maps -inf to a finite value and lets NaN through (NaN < x is false)
    zc = _F32_MIN_Z if z < _F32_MIN_Z else z
    n, p = _exp_reduce_f32(zc)
    scaled = p * _f32_from_bits((np.int32(n) + 127) << 23)
    return _F32_ZERO if z < _F32_MIN_Z else scaled


# float64: the same scheme; Taylor to degree 13 (r^14/14! <= 4.2e-18, below half an ulp).
_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 6.93147180369123816490e-01
_F64_LN2_LO = 1.90821492927058770002e-10
_F64_MIN_Z = -708.3964185322641  # log of the smallest normal float64
_F64_C = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(13, 1, -1))


@njit(fastmath=EXP_FASTMATH, inline="always", cache=True)
def _exp_reduce_f64(zc):
    """``(n, p)`` with ``exp(zc) = 2^n p``, ``p = exp(r)``, for a finite ``zc`` (or NaN)."""
    n = np.floor(zc * _F64_LOG2E + 0.5)
    r = (zc - n * _F64_LN2_HI) - n * _F64_LN2_LO
    p = _F64_C[0]
    p = p * r + _F64_C[1]
    p = p * r + _F64_C[2]
    p = p * r + _F64_C[3]
    p = p * r + _F64_C[4]
    p = p * r + _F64_C[5]
    p = p * r + _F64_C[6]
    p = p * r + _F64_C[7]
    p = p * r + _F64_C[8]
    p = p * r + _F64_C[9]
    p = p * r + _F64_C[10]
    p = p * r + _F64_C[11]
    p = p * r + 1.0
    p = p * r + 1.0
    return n, p


def _exp_f64(z):
    zc = _F64_MIN_Z if z < _F64_MIN_Z else z
    n, p = _exp_reduce_f64(zc)
    scaled = p * _f64_from_bits((np.int64(n) + np.int64(1023)) << np.int64(52))
    return 0.0 if z < _F64_MIN_Z else scaled


def vexp(z):
    """``exp(z)`` for ``z <= 0`` in the precision of ``z``; vectorisable.

    ``-inf`` gives 0 and NaN gives NaN.
    """
    return np.exp(z)


@overload(vexp, jit_options=dict(fastmath=EXP_FASTMATH))
def _vexp_overload(z):
    if z == types.float32:
        return _exp_f32
    if z == types.float64:
        return _exp_f64
    return None


# exp over the whole range (KL divergence's log targets may be > 0): the same reduction, the
# argument clamped on both sides and 2^n applied in two factors 2^(n//2) 2^(n - n//2), so that
# n up to 128 (float32) / 1024 (float64) needs no infinite or subnormal power of two.
_F32_MAX_Z = np.float32(88.72283)  # the largest float32 whose exp is finite
_F64_MAX_Z = 709.782712893384  # the largest float64 whose exp is finite
_F32_INF = np.float32(np.inf)


def _exp_any_f32(z):
    zc = _F32_MIN_Z if z < _F32_MIN_Z else z
    zc = _F32_MAX_Z if zc > _F32_MAX_Z else zc
    n, p = _exp_reduce_f32(zc)
    half = np.int32(n) >> 1
    scaled = (p * _f32_from_bits((half + 127) << 23)) * _f32_from_bits(
        (np.int32(n) - half + 127) << 23)
    scaled = _F32_INF if z > _F32_MAX_Z else scaled
    return _F32_ZERO if z < _F32_MIN_Z else scaled


def _exp_any_f64(z):
    zc = _F64_MIN_Z if z < _F64_MIN_Z else z
    zc = _F64_MAX_Z if zc > _F64_MAX_Z else zc
    n, p = _exp_reduce_f64(zc)
    half = np.int64(n) >> np.int64(1)
    scaled = (p * _f64_from_bits((half + np.int64(1023)) << np.int64(52))) * _f64_from_bits(
        (np.int64(n) - half + np.int64(1023)) << np.int64(52))
    scaled = np.inf if z > _F64_MAX_Z else scaled
    return 0.0 if z < _F64_MIN_Z else scaled


def vexp_any(z):
    """``exp(z)`` for any ``z`` in the precision of ``z``; vectorisable (:func:`vexp` with a
    clamp and a split scale: a few instructions more).  Within 0.88 ulp (float32) / 0.86 ulp
    (float64) where the result is normal; 0 below the smallest normal result, ``+inf`` above
    the largest finite one; NaN gives NaN."""
    return np.exp(z)


@overload(vexp_any, jit_options=dict(fastmath=EXP_FASTMATH))
def _vexp_any_overload(z):
    if z == types.float32:
        return _exp_any_f32
    if z == types.float64:
        return _exp_any_f64
    return None


# ---------------------------------------------------------------------------- log and log1p
#
# log(x) = k ln 2 + log(m), x = 2^k m with m in [sqrt(1/2), sqrt(2)), taken from the bits of x:
# subtracting the bits of sqrt(1/2) puts the exponent k in the high bits and m's offset in the
# mantissa.  With f = m - 1 (exact) and s = f / (2 + f), |s| <= 0.1716,
#     log(1 + f) = 2 atanh(s) = 2s + s R(s^2),  R = 2 s^2/3 + 2 s^4/5 + 2 s^6/7 + ...
# (Taylor: the next term is below 2e-9 relative in float32 with 4 terms, 6e-19 in float64
# with 10; R in Estrin's scheme -- pairs, then powers z^2, z^4, z^8 -- whose dependency chain
# is 4 FMAs deep instead of Horner's 10: a loop that also takes an exp and a division per
# element, as the BCE's, is bound by that latency, not by throughput), evaluated as
# f - (f^2/2 - s (f^2/2 + R)): 2s = f - s f, so the big part f is
# exact and only a correction of at most 0.2 f carries rounding error.  ln 2 is split as in
# vexp (k ln2_hi exact).  No "reassoc": it would undo that order.

# error_model "numpy": with Python's, each division checks for 0 and the loop stays scalar.
_LOG_OPTIONS = dict(fastmath=EXP_FASTMATH, error_model="numpy")
_F32_SQRT_HALF_BITS = 0x3F3504F3  # the bits of float32(sqrt(1/2))
_F32_MANT = 0x7FFFFF
_F32_MIN_NORMAL = np.float32(np.finfo(np.float32).tiny)
_F32_TWO_25 = np.float32(2.0 ** 25)  # scales a subnormal into the normal range
_F32_TWO = np.float32(2.0)
_F32_NAN = np.float32(np.nan)
_F32_LOG_C = tuple(np.float32(2.0 / k) for k in (3, 5, 7, 9))

_F64_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD
_F64_MANT = 0x000FFFFFFFFFFFFF
_F64_MIN_NORMAL = np.finfo(np.float64).tiny
_F64_TWO_54 = 2.0 ** 54
_F64_LOG_C = tuple(2.0 / k for k in (3, 5, 7, 9, 11, 13, 15, 17, 19, 21))


@njit(fastmath=EXP_FASTMATH, error_model="numpy", inline="always", cache=True)
def _log_reduced_f32(k, f, lo):
    """``k ln 2 + log(1 + f) + lo`` for ``1 + f`` in ``[sqrt(1/2), sqrt(2)]``, ``k`` a float32
    and ``lo`` a correction far below an ulp of ``f``."""
    s = f / (_F32_TWO + f)
    z = s * s
    z2 = z * z
    r = (_F32_LOG_C[0] + _F32_LOG_C[1] * z) + (_F32_LOG_C[2] + _F32_LOG_C[3] * z) * z2
    r = r * z
    hfsq = _F32_HALF * f * f
    return k * _F32_LN2_HI + (f - (hfsq - (s * (hfsq + r) + (k * _F32_LN2_LO + lo))))


@njit(fastmath=EXP_FASTMATH, error_model="numpy", inline="always", cache=True)
def _log_reduced_f64(k, f, lo):
    """:func:`_log_reduced_f32` in float64."""
    s = f / (2.0 + f)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    c = _F64_LOG_C
    low = (c[0] + c[1] * z) + (c[2] + c[3] * z) * z2
    high = (c[4] + c[5] * z) + (c[6] + c[7] * z) * z2
    r = (low + high * z4 + (c[8] + c[9] * z) * (z4 * z4)) * z
    hfsq = 0.5 * f * f
    return k * _F64_LN2_HI + (f - (hfsq - (s * (hfsq + r) + (k * _F64_LN2_LO + lo))))


def _log_f32(x):
    tiny = x < _F32_MIN_NORMAL
    xs = x * _F32_TWO_25 if tiny else x
    u = np.int64(_bits(xs)) - _F32_SQRT_HALF_BITS  # garbage for x <= 0, inf, NaN: replaced
    k = (u >> 23) - (25 if tiny else 0)
    m = _f32_from_bits((u & _F32_MANT) + _F32_SQRT_HALF_BITS)
    y = _log_reduced_f32(np.float32(k), m - _F32_ONE, _F32_ZERO)
    y = y if x < _F32_INF else x  # +inf and NaN are their own log
    y = -_F32_INF if x == _F32_ZERO else y
    return _F32_NAN if x < _F32_ZERO else y


def _log_f64(x):
    tiny = x < _F64_MIN_NORMAL
    xs = x * _F64_TWO_54 if tiny else x
    u = _bits(xs) - np.int64(_F64_SQRT_HALF_BITS)
    k = (u >> np.int64(52)) - np.int64(54 if tiny else 0)
    m = _f64_from_bits((u & np.int64(_F64_MANT)) + np.int64(_F64_SQRT_HALF_BITS))
    y = _log_reduced_f64(np.float64(k), m - 1.0, 0.0)
    y = y if x < np.inf else x
    y = -np.inf if x == 0.0 else y
    return np.nan if x < 0.0 else y


def vlog(x):
    """``log(x)`` in the precision of ``x``, any ``x``; vectorisable (branch-free: the
    special cases are selects).  Within 0.85 ulp (float32 and float64, subnormals included;
    tests/test_numba_math.py).  ``log(0) = -inf``, ``log(+inf) = +inf``, negative and NaN
    give NaN."""
    return np.log(x)


@overload(vlog, jit_options=_LOG_OPTIONS)
def _vlog_overload(x):
    if x == types.float32:
        return _log_f32
    if x == types.float64:
        return _log_f64
    return None


# log1p(x): u = 1 + x rounded, c = (1 + x) - u exactly (Fast2Sum, taking the larger of 1 and
# x first), u = 2^k m as in log, f = m - 1; then
#     log(1 + x) = k ln 2 + log(m + c 2^-k) = k ln 2 + log(1 + f) + c 2^-k / m + O(c^2),
# 1 / m = 1 / (1 + f) taken as 1 - f + f^2 (c 2^-k is below an ulp of m: the f^3 left out
# costs < 0.06 ulp).  For |x| < 2^-24 (float32), u = 1 and the result is c = x.  2^-k with k
# clamped to 64: beyond, c 2^-k is far below an ulp of k ln 2.


def _log1p_f32(x):
    u = _F32_ONE + x
    c = (_F32_ONE - (u - x)) if x > _F32_ONE else (x - (u - _F32_ONE))
    b = np.int64(_bits(u)) - _F32_SQRT_HALF_BITS
    k = b >> 23
    m = _f32_from_bits((b & _F32_MANT) + _F32_SQRT_HALF_BITS)
    inv_scale = _f32_from_bits((127 - (k if k < 64 else 64)) << 23)
    f = m - _F32_ONE
    y = _log_reduced_f32(np.float32(k), f, (c * inv_scale) * ((_F32_ONE - f) + f * f))
    y = y if x < _F32_INF else x
    y = -_F32_INF if x == -_F32_ONE else y
    return _F32_NAN if x < -_F32_ONE else y


def _log1p_f64(x):
    u = 1.0 + x
    c = (1.0 - (u - x)) if x > 1.0 else (x - (u - 1.0))
    b = _bits(u) - np.int64(_F64_SQRT_HALF_BITS)
    k = b >> np.int64(52)
    m = _f64_from_bits((b & np.int64(_F64_MANT)) + np.int64(_F64_SQRT_HALF_BITS))
    inv_scale = _f64_from_bits((np.int64(1023) - (k if k < 64 else np.int64(64)))
                               << np.int64(52))
    f = m - 1.0
    y = _log_reduced_f64(np.float64(k), f, (c * inv_scale) * ((1.0 - f) + f * f))
    y = y if x < np.inf else x
    y = -np.inf if x == -1.0 else y
    return np.nan if x < -1.0 else y


def vlog1p(x):
    """``log(1 + x)`` in the precision of ``x``, any ``x``, to full relative accuracy near 0;
    vectorisable (branch-free).  Within 0.88 ulp (tests/test_numba_math.py).
    ``log1p(-1) = -inf``, ``log1p(+inf) = +inf``, ``x < -1`` and NaN give NaN; the sign of
    ``-0.0`` is not kept (the kernels run with "nsz")."""
    return np.log1p(x)


@overload(vlog1p, jit_options=_LOG_OPTIONS)
def _vlog1p_overload(x):
    if x == types.float32:
        return _log1p_f32
    if x == types.float64:
        return _log1p_f64
    return None


# log1p(e) for e in [0, 1] only (log1p(exp(-|v|)): the BCE's and softplus's): 2 atanh(s) with
# s = e / (2 + e) <= 1/3, one odd series and no exponent split, as fl_log1p_unit_f32 / _f64
# in C (fl_math.h).  The general vlog1p costs twice the arithmetic, and the BCE's loop is
# bound by it.
_F32_L1P_C = tuple(np.float32(2.0 / k) for k in (15, 13, 11, 9, 7, 5, 3))
_F64_L1P_C = tuple(2.0 / k for k in range(33, 1, -2))


def _log1p_unit_f32(e):
    s = e / (_F32_TWO + e)
    z = s * s
    r = _F32_L1P_C[0]
    for c in _F32_L1P_C[1:]:
        r = r * z + c
    return e - s * (e - r * z)


def _log1p_unit_f64(e):
    s = e / (2.0 + e)
    z = s * s
    r = _F64_L1P_C[0]
    for c in _F64_L1P_C[1:]:
        r = r * z + c
    return e - s * (e - r * z)


def vlog1p_unit(e):
    """``log(1 + e)`` for ``0 <= e <= 1`` (and NaN, which stays NaN) in the precision of
    ``e``; vectorisable.  Within 1.05 ulp (tests/test_numba_math.py); other ``e`` are not
    served."""
    return np.log1p(e)


@overload(vlog1p_unit, jit_options=_LOG_OPTIONS)
def _vlog1p_unit_overload(e):
    if e == types.float32:
        return _log1p_unit_f32
    if e == types.float64:
        return _log1p_unit_f64
    return None


@njit(**INLINE)
def vtanh(u):
    """``tanh(u)`` of a float64 from :func:`vexp`: ``(1 - e) / (1 + e)``, ``e = exp(-2|u|)``;
    vectorisable (a libm ``tanh`` is a call per element: 10x slower on the softcap path).
    Within 2.5e-16 absolutely, which is what the softcap needs: ``softcap * tanh`` is a
    logit, and a softmax sees its absolute error (tests/test_numba_math.py)."""
    wide_vectors()
    e = vexp(-2.0 * abs(u))
    t = (1.0 - e) / (1.0 + e)
    return t if u >= 0.0 else -t


# The loss math of numba_hooks, compiled for the CPU: kernels call ``hooks.name(...)``.  The
# hooks are small and loop-free: LLVM inlines every call (the kernels' machine code has no
# call to them), so they skip Numba's IR inlining (IR_INLINE), which re-ran each hook's passes
# at every call site and took half of each kernel's compile time.
hooks = numba_hooks.compile_hooks(njit(**JIT), "fastloss._ext.numba_math.hooks",
                                  tanh=vtanh, exp_neg=vexp, exp=vexp_any, log=vlog,
                                  log1p_unit=vlog1p_unit)


# Loops below index blocks taken as slices (``row[start:stop]``, then ``range(len)``): Numba
# wraps negative indices, so an index that LLVM cannot prove non-negative (``range(a, b)``,
# ``j + offset``) turns every load into a gather -- 2x slower.

BLOCK = 1024


def order_key(v):
    """An integer that sorts as the float ``v`` does (NaN with a clear sign bit above +inf)."""
    raise NotImplementedError


@overload(order_key, jit_options=dict(fastmath=FASTMATH))
def _order_key_overload(v):
    # IEEE floats sort like their bits when positive and in reverse when negative: flipping
    # every bit but the sign of the negative ones gives a signed integer of the same order.
    if v == types.float32:
        return lambda v: np.int32(_bits(v) ^ ((_bits(v) >> 31) & 0x7FFFFFFF))
    if v == types.float64:
        return lambda v: np.int64(_bits(v) ^ ((_bits(v) >> 63) & 0x7FFFFFFFFFFFFFFF))
    return None


def from_order_key(k, like_value):
    raise NotImplementedError


@overload(from_order_key, jit_options=dict(fastmath=FASTMATH))
def _from_order_key_overload(k, like_value):
    if like_value == types.float32:
        return lambda k, like_value: _f32_from_bits(np.int32(k ^ ((k >> 31) & 0x7FFFFFFF)))
    if like_value == types.float64:
        return lambda k, like_value: _f64_from_bits(
            np.int64(k ^ ((k >> 63) & 0x7FFFFFFFFFFFFFFF)))
    return None


@njit(**INLINE)
def row_max(row):
    """The row's maximum, taken on integer order keys.

    A float max loop is one dependency chain that LLVM does not vectorise without ``nnan``;
    the integer max vectorises: 20x faster than that loop on a 32768-class row
    (benches/test_kernel_parts.py).  A NaN with a clear sign bit comes out as the max; one with
    the sign bit set is skipped, and the sums of :func:`sum_exp` catch it (see
    :func:`poisoned`).
    """
    wide_vectors()
    k = order_key(row[0])
    for j in range(row.shape[0]):
        kj = order_key(row[j])
        k = kj if kj > k else k
    return from_order_key(k, row[0])


# A NaN row gives s or m NaN: row_max lets a NaN with a clear sign bit through, sum_exp
# (and exp_blocks) the others.
poisoned = hooks.poisoned


@njit(**INLINE)
def poisoned_lse(row):
    """``logsumexp`` of a poisoned row (rare: a scan of the row)."""
    wide_vectors()
    any_nan = False
    any_pos_inf = False
    for j in range(row.shape[0]):
        v = row[j]
        any_nan |= v != v
        any_pos_inf |= v == np.inf
    return hooks.poisoned_lse(any_nan, any_pos_inf)


@njit(**INLINE)
def sum_exp(row, m, skip, tmp):
    """``sum_c exp(row_c - m)`` without the term ``c = skip`` (none where ``skip`` is not a
    column: cross-entropy's class y, so that ``1 - p_y = rest / s`` comes without
    cancellation, see ``_linear_row``): float64 across blocks, the row's dtype within a block.

    Keeping the inner loop in one dtype lets LLVM run the exp 8 (float32) lanes wide; a
    float64 accumulator would make it pick 4.  A block of 512 in float32, split over
    LLVM's vector accumulators, adds at most ~16 terms per partial sum.  The block holding
    ``skip`` goes through :func:`store_exp` into ``tmp`` (at least that block's length, of
    the row's dtype): the fused pass sums that block the same way, and a select in this loop
    kept LLVM from vectorising it (1.6x the time of the block).
    """
    wide_vectors()
    s = 0.0
    for start in range(0, row.shape[0], BLOCK):
        block = row[start:start + BLOCK]
        n = block.shape[0]
        if 0 <= skip - start < n:
            s += store_exp(block, m, tmp[:n], skip - start)
            continue
        b = like(0.0, row)
        for k in range(n):
            b += vexp(block[k] - m)
        s += b
    return s


@njit(**INLINE)
def _sum_without(out, skip):
    """``sum_j out_j`` over ``j != skip`` in the array's dtype (every j where ``skip`` is not
    an index of ``out``): ``out[skip]`` is 0 for the loop, then put back (a select in the
    loop kept LLVM from vectorising it)."""
    wide_vectors()
    has_skip = 0 <= skip < out.shape[0]
    e = out[skip] if has_skip else like(0.0, out)
    if has_skip:
        out[skip] = 0
    b = like(0.0, out)
    for j in range(out.shape[0]):
        b += out[j]
    if has_skip:
        out[skip] = e
    return b


@njit(**INLINE)
def store_exp(row, m, out, skip):
    """``out_c = exp(row_c - m)`` for one block (at most BLOCK classes); returns their sum,
    accumulated in the row's dtype (see :func:`sum_exp`) and returned as float64, without
    the term ``skip`` (as :func:`sum_exp`).

    ``out`` must not overlap ``row``: for ``out=logits`` use :func:`store_exp_in_place`.
    The sum is a loop of its own over ``out``.  In one loop with the stores, LLVM guards the
    vector loop with a check that ``out`` does not start less than a vector span after
    ``row`` -- true of distinct arrays that merely lie close together in memory, as small
    ones often do -- and sends such calls to the scalar loop, whose sum rounds differently:
    the result depended on where the arrays were allocated.  The stores alone round the same
    either way; the sum reads one array, so it has no such check.
    """
    wide_vectors()
    for j in range(row.shape[0]):
        out[j] = vexp(row[j] - m)
    return np.float64(_sum_without(out, skip))


@njit(**INLINE)
def store_exp_in_place(row, m, skip):
    """:func:`store_exp` with ``out = row``, written with one array: LLVM then sees no
    possible overlap (an overlap check would send the loop to its scalar version, which
    also rounds differently).  With ``skip``, the stores and then the sum, as
    :func:`store_exp`."""
    wide_vectors()
    if 0 <= skip < row.shape[0]:
        for j in range(row.shape[0]):
            row[j] = vexp(row[j] - m)
        return np.float64(_sum_without(row, skip))
    b = like(0.0, row)
    for j in range(row.shape[0]):
        e = vexp(row[j] - m)
        row[j] = e
        b += e
    return np.float64(b)


@njit(**INLINE)
def scale_row(out, k):
    """``out *= k`` in ``out``'s own precision."""
    wide_vectors()
    k = like(k, out)
    for j in range(out.shape[0]):
        out[j] *= k


@njit(**INLINE)
def fill_row(out, value):
    wide_vectors()
    for j in range(out.shape[0]):
        out[j] = value


def like(value, arr):
    """``value`` converted to the dtype of ``arr`` (so a vector loop stays in that dtype)."""
    return arr.dtype.type(value)


@overload(like, jit_options=dict(fastmath=FASTMATH))
def _like_overload(value, arr):
    if arr.dtype == types.float32:
        return lambda value, arr: np.float32(value)
    return lambda value, arr: np.float64(value)


# ----------------------------------------------------------------------- blocked, online softmax
#
# A row is cut in blocks of BLOCK classes.  Pass 1 streams the row from memory once: for each
# block it takes the block max m_b, stores e_c = exp(x_c - m_b) into the output and folds the
# block sum into a running (m, s) -- the online softmax of Milakov & Gimelshein,
# arXiv:1805.02867 -- so the exp overlaps the memory traffic.  Pass 2 finds the row in cache
# and multiplies each block by exp(m_b - m) times the caller's factor.  The exp of every logit
# is computed once.


@njit(**INLINE)
def exp_blocks(row, out, block_max, in_place, skip):
    """Pass 1 into ``out``; ``in_place`` says that ``out`` is ``row``.  Returns ``(m, s)``,
    ``s`` without the term ``skip`` (see :func:`sum_exp`); ``poisoned(m, s)`` tells a row
    with NaN, ``+inf`` or only ``-inf``."""
    wide_vectors()
    m = -np.inf
    s = 0.0
    for b in range(block_max.shape[0]):
        start = b * BLOCK
        block = row[start:start + BLOCK]
        m_b = row_max(block)
        block_max[b] = m_b
        target = out[start:start + BLOCK]
        if m_b == -np.inf:
            fill_row(target, 0.0)
            continue
        if m_b != m_b or m_b == np.inf:
            return m_b, np.nan
        if in_place:
            s_b = store_exp_in_place(target, m_b, skip - start)
        else:
            s_b = store_exp(block, m_b, target, skip - start)
        m, s = hooks.fold(m, s, m_b, s_b)
    return m, s


@njit(**INLINE)
def online_sum_exp(row, skip, tmp):
    """``(m, s)`` of pass 1 without storing anything but the block of ``skip`` into ``tmp``:
    the forward-only pass (``s`` without the term ``skip``, as :func:`exp_blocks`)."""
    wide_vectors()
    if row.shape[0] <= BLOCK:  # one block: max, then sum (no loop machinery: 20% at C = 10)
        m = row_max(row)
        return m, sum_exp(row, m, skip, tmp)
    m = -np.inf
    s = 0.0
    for start in range(0, row.shape[0], BLOCK):
        block = row[start:start + BLOCK]
        m_b = row_max(block)
        if m_b == -np.inf:
            continue
        if m_b != m_b or m_b == np.inf:
            return m_b, np.nan
        m, s = hooks.fold(m, s, m_b, sum_exp(block, m_b, skip - start, tmp))
    return m, s


@njit(**INLINE)
def scale_blocks(out, block_max, m, k):
    """Pass 2: ``out_c *= k * exp(m_b - m)`` -- turns every e_c into ``k * p_c * s``."""
    wide_vectors()
    for b in range(block_max.shape[0]):
        start = b * BLOCK
        m_b = block_max[b]
        if m_b == m:  # the block holding the max (the only one, for C <= BLOCK)
            factor = k
        else:
            factor = k * math.exp(m_b - m) if m_b != -np.inf else 0.0
        scale_row(out[start:start + BLOCK], factor)
