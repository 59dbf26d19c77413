"""Every argument check and normalisation of the public API, in one place.

The checks run once, before any kernel, and never modify their inputs.  Each error names the
argument, the offending value and, where it has one, its position.  Kernels trust what comes
out of here and check nothing.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def is_bfloat16(dtype) -> bool:
    """``ml_dtypes.bfloat16`` (what JAX and PyTorch interop give NumPy), recognised without
    importing ml_dtypes: an array of it exists only if the caller imported it."""
    return isinstance(dtype, np.dtype) and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_float_dtype(dtype) -> bool:
    """float16, bfloat16, float32 or float64 (either byte order)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" and dtype.newbyteorder("=") in FLOAT_DTYPES or is_bfloat16(dtype)


def is_half(dtype) -> bool:
    """The 16-bit floats, computed in float32 and returned in their own dtype."""
    return dtype == np.float16 or is_bfloat16(dtype)
REDUCTIONS = ("mean", "sum", "none")


def _describe(value) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        if isinstance(dtype, np.dtype) and not dtype.isnative:
            return (f"an array of dtype {dtype} "
                    f"({dtype.newbyteorder('=')} in non-native byte order)")
        return f"an array of dtype {dtype}"
    return f"{type(value).__name__} {value!r}"


def _as_array(value, name: str) -> np.ndarray:
    """A host array with the native byte order (a copy when ``value`` had the other one, so
    the caller's array is never modified), or a GPU array viewed in place.

    Masked arrays are refused: ``np.asarray`` would silently drop the mask.
    """
    if is_device_array(value):
        try:
            from numba import cuda  # noqa: F401  (GPU arrays need numba-cuda)
        except ImportError:
            raise TypeError(f"{name} is a GPU array, which needs numba-cuda: "
                            "pip install 'fastloss[cuda]'") from None
        arr = as_device_array(value)  # no copy: a view with NumPy-style dtype and shape
        if isinstance(arr.dtype, np.dtype) and not arr.dtype.isnative:
            raise TypeError(f"{name} is a GPU array in non-native byte order "
                            f"({arr.dtype}), which fastloss cannot read; convert it to "
                            f"{arr.dtype.newbyteorder('=')} first")
        return arr
    # np.ma is imported lazily by NumPy: only look at it for ndarray subclasses
    if (isinstance(value, np.ndarray) and type(value) is not np.ndarray
            and isinstance(value, np.ma.MaskedArray)):
        raise TypeError(
            f"{name} is a masked array; masked arrays are not supported: the mask would be "
            f"ignored; pass arr.filled(...) or select the valid rows, or use ignore_index "
            f"for targets"
        )
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. ragged lists
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {exc}") from None
    if arr.dtype.kind in "OVSUMm" and not is_bfloat16(arr.dtype):
        raise TypeError(f"{name} must be a numeric array, got {_describe(arr)}")
    if not arr.dtype.isnative:  # e.g. ">f4" read from a file: same values, native copy
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def is_device_array(value) -> bool:
    """True for GPU arrays: anything with ``__cuda_array_interface__``, and Numba device
    arrays (including those of its CUDA simulator, which have no such interface)."""
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "__cuda_array_interface__") or (
        hasattr(value, "copy_to_host") and hasattr(value, "is_c_contiguous"))


def as_device_array(value):
    """A Numba device array viewing a GPU array (no copy)."""
    from numba import cuda

    if hasattr(cuda, "as_cuda_array") and hasattr(value, "__cuda_array_interface__"):
        return cuda.as_cuda_array(value)
    return value  # already a Numba device array (or a simulator one)


def floating(value, name: str, *, min_ndim: int = 0):
    """A float16/bfloat16/32/64 array; integer, bool, complex or object arrays are a
    TypeError."""
    arr = _as_array(value, name)  # host arrays come back in native byte order
    if not is_float_dtype(arr.dtype):
        raise TypeError(
            f"{name} must be a floating array (float16, bfloat16, float32 or float64), got "
            f"{_describe(arr)}"
        )
    shape = tuple(arr.shape)
    if len(shape) < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s) with classes on the last axis, "
            f"got shape {shape}"
        )
    if min_ndim and shape[-1] == 0:
        raise ValueError(f"{name} must have at least one class, got shape {tuple(arr.shape)}")
    return arr


def real(value, name: str) -> np.ndarray:
    """A real (bool, integer or floating) array, in native byte order (``dtype.kind`` does
    not depend on the byte order)."""
    arr = _as_array(value, name)
    if arr.dtype.kind not in "biuf" and not is_bfloat16(arr.dtype):
        raise TypeError(f"{name} must be a real numeric array, got {_describe(arr)}")
    return arr


def reduction(value, allowed=REDUCTIONS) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def label_smoothing(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number, got {_describe(value)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value!r}")
    return value


def integer(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(value)}") from None


def n_threads(value) -> int | None:
    if value is None:
        return None
    value = integer(value, "n_threads")
    if value < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {value}")
    return value


def boolean(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def _position(flat_index: int, shape: tuple) -> str:
    if len(shape) <= 1:
        return str(flat_index)
    return str(tuple(int(i) for i in np.unravel_index(flat_index, shape)))


def is_probability_target(target, logits) -> bool:
    """Soft (probability) targets are floating arrays of the logits' shape."""
    arr = _as_array(target, "target")
    return is_float_dtype(arr.dtype) and tuple(arr.shape) == tuple(logits.shape)


def indices_below(target: np.ndarray, n_classes: int) -> bool:
    """Whether every value of a non-empty int64 array is in ``[0, n_classes)`` (the short
    paths' check; negative values become huge unsigned ones, so one comparison checks both
    bounds)."""
    return int(target.view(np.uint64).max()) < n_classes


def class_target(target, logits, ignore_index: int | None) -> np.ndarray:
    """Integer class indices of shape ``logits.shape[:-1]``, returned flat as int64.

    Every index must be in ``[0, C)`` or equal ``ignore_index``.
    """
    arr = _as_array(target, "target")
    batch_shape = tuple(logits.shape)[:-1]
    n_classes = tuple(logits.shape)[-1]
    if arr.dtype.kind == "f" or is_bfloat16(arr.dtype):
        if tuple(arr.shape) == batch_shape:
            raise TypeError(
                f"target holds class indices of shape {batch_shape} and must be an integer "
                f"array, got {_describe(arr)}; probabilities must have the logits' shape "
                f"{tuple(logits.shape)}"
            )
        raise ValueError(
            f"target of shape {tuple(arr.shape)} matches neither class indices "
            f"{batch_shape} nor probabilities {tuple(logits.shape)} for logits of shape "
            f"{tuple(logits.shape)}"
        )
    if arr.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got {_describe(arr)}")
    if tuple(arr.shape) != batch_shape:
        raise ValueError(
            f"target of shape {tuple(arr.shape)} does not match the batch shape {batch_shape} "
            f"of logits of shape {tuple(logits.shape)}"
        )
    flat = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and flat.size:
        flat = np.where(arr.reshape(-1) > np.iinfo(np.int64).max, -1, flat)
    bad = (flat < 0) | (flat >= n_classes)
    if ignore_index is not None:
        bad &= flat != ignore_index
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        value = arr.reshape(-1)[first]
        raise IndexError(
            f"target {value} at position {_position(first, batch_shape)} is out of range for "
            f"{n_classes} classes (valid: 0 to {n_classes - 1}"
            + (f", or ignore_index={ignore_index})" if ignore_index is not None else ")")
        )
    return flat


def same_shape(value, logits, name: str, logits_name: str = "logits") -> np.ndarray:
    """A real array of exactly the logits' shape (no broadcasting)."""
    arr = real(value, name)
    if tuple(arr.shape) != tuple(logits.shape):
        raise ValueError(
            f"{name} of shape {tuple(arr.shape)} must have the shape of {logits_name} "
            f"{tuple(logits.shape)}"
        )
    return arr


def class_weight(weight, n_classes: int, name: str = "weight") -> np.ndarray | None:
    """``None`` or a float64 vector of shape ``(C,)``."""
    if weight is None:
        return None
    arr = real(weight, name)
    if tuple(arr.shape) != (n_classes,):
        raise ValueError(f"{name} must have shape ({n_classes},), got {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def broadcast_weight(weight, logits, name: str) -> np.ndarray | None:
    """``None``, or a float64 array that broadcasts to the logits' shape (as PyTorch allows)."""
    if weight is None:
        return None
    arr = real(weight, name)
    try:
        shape = np.broadcast_shapes(arr.shape, tuple(logits.shape))
    except ValueError:
        shape = None
    if shape != tuple(logits.shape):
        raise ValueError(
            f"{name} of shape {tuple(arr.shape)} does not broadcast to the logits' shape "
            f"{tuple(logits.shape)}"
        )
    return np.asarray(arr, dtype=np.float64)


def class_vector(value, n_classes: int, name: str) -> np.ndarray | None:
    """``None`` or one value per class (last axis), as float64 of shape ``(C,)``."""
    if value is None:
        return None
    arr = real(value, name)
    if arr.size not in (1, n_classes) or any(s != 1 for s in tuple(arr.shape)[:-1]):
        raise ValueError(
            f"{name} must have shape ({n_classes},), one value per class, "
            f"got {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(np.broadcast_to(arr.reshape(-1), (n_classes,)), dtype=np.float64)


def grad_output(value, reduction_: str, loss_shape: tuple) -> np.ndarray:
    """The upstream gradient as float64: a scalar for mean/sum, the loss's shape for none."""
    if value is None:
        return np.ones(loss_shape if reduction_ == "none" else ())
    arr = real(value, "grad_output")
    expected = tuple(loss_shape) if reduction_ == "none" else ()
    if tuple(arr.shape) != expected:
        what = "the loss's shape" if reduction_ == "none" else "a scalar"
        raise ValueError(
            f"grad_output for reduction={reduction_!r} must be {what} {expected}, "
            f"got shape {tuple(arr.shape)}"
        )
    return np.asarray(arr, dtype=np.float64)


def out_array(out, logits) -> np.ndarray | None:
    """``None`` or a writeable, C-contiguous array of the logits' shape and dtype (on the
    GPU when the logits are)."""
    if out is None:
        return None
    if is_device_array(logits):
        if not is_device_array(out):
            raise TypeError("out must be a GPU array when logits is one, got "
                            f"{type(out).__name__}")
        out = _as_array(out, "out")
        problems = []
        if tuple(out.shape) != tuple(logits.shape):
            problems.append(f"shape {tuple(out.shape)} (expected {tuple(logits.shape)})")
        if out.dtype != logits.dtype:
            problems.append(f"dtype {out.dtype} (expected {logits.dtype})")
        if not out.is_c_contiguous():
            problems.append("a non C-contiguous layout")
        if problems:
            raise ValueError("out has " + ", ".join(problems))
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    _as_array(out, "out")  # refuses masked arrays
    problems = []
    if tuple(out.shape) != tuple(logits.shape):
        problems.append(f"shape {out.shape} (expected {tuple(logits.shape)})")
    if out.dtype != logits.dtype:
        problems.append(f"dtype {out.dtype} (expected {logits.dtype})")
    if not out.flags.c_contiguous:
        problems.append("a non C-contiguous layout")
    if not out.flags.writeable:
        problems.append("a read-only buffer")
    if problems:
        raise ValueError("out has " + ", ".join(problems))
    if np.may_share_memory(out, logits) and not _same_buffer(out, logits):
        raise ValueError("out overlaps logits without being the same array; pass out=logits")
    return out


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
    )


def _real_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    return float(value)


def z_loss(value) -> float:
    """The z-loss coefficient: a finite number >= 0."""
    value = _real_number(value, "z_loss")
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"z_loss must be a finite number >= 0, got {value!r}")
    return value


def softcap(value) -> float | None:
    """``None`` (no cap) or a finite number > 0."""
    if value is None:
        return None
    value = _real_number(value, "softcap")
    if not (value > 0.0 and value != float("inf")):
        raise ValueError(f"softcap must be None or a finite number > 0, got {value!r}")
    return value


def temperature(value) -> float:
    """A finite number > 0."""
    value = _real_number(value, "temperature")
    if not (value > 0.0 and value != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}")
    return value


def supported_on_device(value, name: str) -> None:
    """GPU arrays are computed in their own dtype: 16-bit ones are refused."""
    if is_device_array(value) and is_half(np.dtype(value.dtype)):
        raise TypeError(f"{name} is a {value.dtype} GPU array, which is not supported; "
                        "use float32 or float64")
