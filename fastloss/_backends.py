"""The registry of backends: which exist, which are available here and why not, and "auto".

A backend is a module implementing the kernel protocol of :mod:`fastloss._protocol`
(:mod:`fastloss._numpy_kernels` is the NumPy reference behind it).  Backends are imported
lazily, on first use, so ``import fastloss`` stays light.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENV_VAR = "FASTLOSS_BACKEND"

# name -> module implementing the kernel protocol
_MODULES = {
    "numpy": "fastloss._numpy_kernels",
    "numba": "fastloss._ext.numba_cpu",
    "cython": "fastloss._ext._cython",
    "cuda": "fastloss._ext.numba_cuda",
}
NAMES = tuple(_MODULES)

# "auto" on the CPU: the fastest available first (see `python -m fastloss bench`).
CPU_PREFERENCE = ("cython", "numba", "numpy")

_cache: dict[str, tuple[ModuleType | None, str]] = {}

# os.environ keeps its variables in a dict with encoded keys, updated by every assignment
# through os.environ: looking ENV_VAR up there directly takes 0.05 us instead of the 1 us of
# `in os.environ` (which encodes the key first), on the short path of every small call
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None else None
except AttributeError:  # pragma: no cover - an os.environ without encodekey
    _ENV_KEY = _ENV_DATA = None


def env_backend_set() -> bool:
    """Whether ``$FASTLOSS_BACKEND`` is set (to anything, even empty)."""
    if _ENV_KEY is not None and os.environ._data is _ENV_DATA:
        return _ENV_KEY in _ENV_DATA
    return ENV_VAR in os.environ


def _load(name: str) -> tuple[ModuleType | None, str]:
    if name not in _cache:
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            _cache[name] = (None, f"cannot be imported: {exc}")
        else:
            reason = getattr(module, "unavailable_reason", lambda: None)()
            _cache[name] = (None, reason) if reason else (module, "available")
    return _cache[name]


def backends() -> dict[str, str]:
    """Every backend and ``"available"`` or the reason it is not.

    Examples
    --------
    >>> import fastloss
    >>> fastloss.backends()["numpy"]
    'available'
    """
    return {name: _load(name)[1] for name in NAMES}


def available(name: str) -> bool:
    return _load(name)[0] is not None


def _check_name(name, source: str) -> str:
    if not isinstance(name, str) or (name not in NAMES and name != "auto"):
        raise ValueError(
            f"{source} must be 'auto' or one of {', '.join(map(repr, NAMES))}; got {name!r}"
        )
    return name


def default_threads() -> int:
    """``n_threads=None``: every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


_auto_cpu: str | None = None


def auto_cpu() -> str:
    """The CPU backend ``"auto"`` picks (``$FASTLOSS_BACKEND`` aside): the fastest available.
    Worked out once (which backends import does not change in a process)."""
    global _auto_cpu
    if _auto_cpu is None:
        for name in CPU_PREFERENCE:
            if available(name):
                _auto_cpu = name
                break
        else:  # pragma: no cover - numpy always is
            raise RuntimeError("no CPU backend is available")
    return _auto_cpu


def auto_cpu_module() -> ModuleType:
    """The module of :func:`auto_cpu`'s backend."""
    return _cache[auto_cpu()][0]


def resolve(backend, *, device: bool = False) -> tuple[str, ModuleType]:
    """The name and module of the backend a call runs on.

    ``backend="auto"`` takes ``$FASTLOSS_BACKEND`` when it is set, else ``"cuda"`` for GPU
    arrays and the fastest available CPU backend otherwise.
    """
    name = _check_name(backend, "backend")
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            name = _check_name(env, f"${ENV_VAR}")
    if name == "auto":
        if device:
            name = "cuda"
        else:
            name = auto_cpu()
    module, reason = _load(name)
    if module is None:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    if device and not getattr(module, "ACCEPTS_DEVICE_ARRAYS", False):
        raise TypeError(
            f"logits is a GPU array, which backend {name!r} cannot read; "
            "use backend='cuda' or copy the array to the host"
        )
    return name, module
