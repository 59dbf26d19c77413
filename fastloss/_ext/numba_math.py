"""Vectorisable math for the Numba kernels.

PyPI's llvmlite has no SVML, so ``np.exp`` inside a Numba loop becomes one scalar libm call
per element and the loop does not vectorise.  :func:`vexp` is plain arithmetic instead
(range reduction + polynomial, exponent set through a bit cast), which LLVM turns into AVX2 /
AVX-512 code.  It only has to serve ``exp(z)`` for ``z <= 0`` (every softmax-shifted logit),
including ``z = -inf`` -> 0.

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
# Row helpers are inlined into the kernels (Numba IR inlining): as separate functions each
# call costs a few ns, which at 10 classes a row is most of the time.
INLINE = dict(JIT, inline="always")



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


def _exp_f32(z):
    # the clamp maps -inf to a finite value and lets NaN through (NaN < x is false)
    zc = _F32_MIN_Z if z < _F32_MIN_Z else z
    n = np.floor(zc * _F32_LOG2E + _F32_HALF)
    r = (zc - n * _F32_LN2_HI) - n * _F32_LN2_LO
    p = _F32_C[4]
    p = p * r + _F32_C[3]
    p = p * r + _F32_C[2]
    p = p * r + _F32_C[1]
    p = p * r + _F32_C[0]
    p = p * r + _F32_ONE
    p = p * r + _F32_ONE
    scaled = p * _f32_from_bits((np.int32(n) + 127) << 23)
    return _F32_ZERO if z < _F32_MIN_Z else scaled


# float64: the same scheme; Taylor to degree 13 (r^14/14! <= 4.2e-18, below half an ulp).
_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 6.93147180369123816490e-01
_F64_LN2_LO = 1.90821492927058770002e-10
_F64_MIN_Z = -708.3964185322641  # log of the smallest normal float64
_F64_C = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(13, 1, -1))


def _exp_f64(z):
    zc = _F64_MIN_Z if z < _F64_MIN_Z else z
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


@njit(**INLINE)
def vtanh(u):
    """``tanh(u)`` of a float64 from :func:`vexp`: ``(1 - e) / (1 + e)``, ``e = exp(-2|u|)``;
    vectorisable (a libm ``tanh`` is a call per element: 10x slower on the softcap path).
    Within 2.5e-16 absolutely, which is what the softcap needs: ``softcap * tanh`` is a
    logit, and a softmax sees its absolute error (tests/test_numba_math.py)."""
    e = vexp(-2.0 * abs(u))
    t = (1.0 - e) / (1.0 + e)
    return t if u >= 0.0 else -t


# The loss math of numba_hooks, compiled for the CPU: kernels call ``hooks.name(...)``.
hooks = numba_hooks.compile_hooks(njit(**INLINE), "fastloss._ext.numba_math.hooks",
                                  tanh=vtanh, exp_neg=vexp)


# Loops below index blocks taken as slices (``row[start:stop]``, then ``range(len)``): Numba
# wraps negative indices, so an index that LLVM cannot prove non-negative (``range(a, b)``,
# ``j + offset``) turns every load into a gather -- 2x slower.

BLOCK = 1024


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
    any_nan = False
    any_pos_inf = False
    for j in range(row.shape[0]):
        v = row[j]
        any_nan |= v != v
        any_pos_inf |= v == np.inf
    return hooks.poisoned_lse(any_nan, any_pos_inf)


@njit(**INLINE)
def sum_exp(row, m):
    """``sum_c exp(row_c - m)``: float64 across blocks, the row's dtype within a block.

    Keeping the inner loop in one dtype lets LLVM run the exp 8 (float32) lanes wide; a
    float64 accumulator would make it pick 4.  A block of 512 in float32, split over
    LLVM's vector accumulators, adds at most ~16 terms per partial sum.
    """
    s = 0.0
    for start in range(0, row.shape[0], BLOCK):
        block = row[start:start + BLOCK]
        b = like(0.0, row)
        for k in range(block.shape[0]):
            b += vexp(block[k] - m)
        s += b
    return s


@njit(**INLINE)
def store_exp(row, m, out):
    """``out_c = exp(row_c - m)`` for one block (at most BLOCK classes); returns their sum,
    accumulated in the row's dtype (see :func:`sum_exp`) and returned as float64.

    ``out`` must not overlap ``row``: for ``out=logits`` use :func:`store_exp_in_place`.
    """
    b = like(0.0, row)
    for j in range(row.shape[0]):
        e = vexp(row[j] - m)
        out[j] = e
        b += e
    return np.float64(b)


@njit(**INLINE)
def store_exp_in_place(row, m):
    """:func:`store_exp` with ``out = row``, written with one array: LLVM then sees no
    possible overlap (an overlap check would send the loop to its scalar version, which
    also rounds differently)."""
    b = like(0.0, row)
    for j in range(row.shape[0]):
        e = vexp(row[j] - m)
        row[j] = e
        b += e
    return np.float64(b)


@njit(**INLINE)
def scale_row(out, k):
    """``out *= k`` in ``out``'s own precision."""
    k = like(k, out)
    for j in range(out.shape[0]):
        out[j] *= k


@njit(**INLINE)
def fill_row(out, value):
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
def exp_blocks(row, out, block_max, in_place):
    """Pass 1 into ``out``; ``in_place`` says that ``out`` is ``row``.  Returns ``(m, s)``;
    ``poisoned(m, s)`` tells a row with NaN, ``+inf`` or only ``-inf``."""
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
            s_b = store_exp_in_place(target, m_b)
        else:
            s_b = store_exp(block, m_b, target)
        m, s = hooks.fold(m, s, m_b, s_b)
    return m, s


@njit(**INLINE)
def online_sum_exp(row):
    """``(m, s)`` of pass 1 without storing anything: the forward-only pass."""
    if row.shape[0] <= BLOCK:  # one block: max, then sum (no loop machinery: 20% at C = 10)
        m = row_max(row)
        return m, sum_exp(row, m)
    m = -np.inf
    s = 0.0
    for start in range(0, row.shape[0], BLOCK):
        block = row[start:start + BLOCK]
        m_b = row_max(block)
        if m_b == -np.inf:
            continue
        if m_b != m_b or m_b == np.inf:
            return m_b, np.nan
        m, s = hooks.fold(m, s, m_b, sum_exp(block, m_b))
    return m, s


@njit(**INLINE)
def scale_blocks(out, block_max, m, k):
    """Pass 2: ``out_c *= k * exp(m_b - m)`` -- turns every e_c into ``k * p_c * s``."""
    for b in range(block_max.shape[0]):
        start = b * BLOCK
        m_b = block_max[b]
        if m_b == m:  # the block holding the max (the only one, for C <= BLOCK)
            factor = k
        else:
            factor = k * math.exp(m_b - m) if m_b != -np.inf else 0.0
        scale_row(out[start:start + BLOCK], factor)
