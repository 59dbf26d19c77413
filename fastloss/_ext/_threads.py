"""fastloss's thread pool for the Numba CPU kernels (docs/design.md section 4).

A kernel is a serial, ``nogil`` function over a range of rows, ``fn(lo, hi, *args)``.
:func:`run_ranges` cuts the rows in ``n_threads`` equal contiguous ranges, runs the first in
the calling thread and the others on a small pool of worker threads, and waits for all of them.
Every row is computed by one thread whatever the split, so results are bit-identical for any
``n_threads``.

Numba's own threading layer is not used: no process-wide setting (``numba.set_num_threads``)
is touched, two Python threads calling at once with different ``n_threads`` do not see each
other, and no OpenMP / TBB runtime is started.  The pool is created on first use and discarded
in a forked child (``os.register_at_fork``), which starts its own on its first call; the
pool's threads do not survive a fork, and a child must not wait for them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Below this many elements a call runs in one range: a worker's wake-up (~10-50 us) would
# cost more than it saves.
MIN_PARALLEL_ELEMENTS = 32768

_lock = threading.Lock()
_pool = None


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                           thread_name_prefix="fastloss")
            pool = _pool
    return pool


def _forget_pool_in_child():
    """After fork(): the parent's workers do not exist here; start afresh (and with a fresh
    lock: another thread of the parent may have held it at the fork)."""
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def split(n_rows: int, n_cols: int, n_threads: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` row ranges: ``n_threads`` equal contiguous ones (sizes differ by at most
    one row), a single one for small work, and never more ranges than rows."""
    n = max(1, min(int(n_threads), n_rows))
    if n_rows * n_cols < MIN_PARALLEL_ELEMENTS:
        n = 1
    base, extra = divmod(n_rows, n)
    bounds = []
    lo = 0
    for k in range(n):
        hi = lo + base + (1 if k < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def run_ranges(fn, n_rows: int, n_cols: int, n_threads: int, *args) -> None:
    """Run ``fn(lo, hi, *args)`` over the ranges of :func:`split`: the first in this thread,
    the others on the pool.  Waits for every range, then re-raises the first exception (in
    range order)."""
    bounds = split(n_rows, n_cols, n_threads)
    if len(bounds) == 1:
        fn(0, n_rows, *args)
        return
    pool = _get_pool()
    futures = [pool.submit(fn, lo, hi, *args) for lo, hi in bounds[1:]]
    error = None
    try:
        fn(bounds[0][0], bounds[0][1], *args)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finish
        error = exc
    for future in futures:
        try:
            future.result()
        except BaseException as exc:  # noqa: BLE001
            if error is None:
                error = exc
    if error is not None:
        raise error
