"""fastloss's thread pool for the Numba CPU kernels (docs/design.md section 4).

A kernel is a serial, ``nogil`` function over a range of rows, ``fn(lo, hi, *args)``.
:func:`run_ranges` cuts the rows in contiguous chunks, more than threads, large ones first
(:func:`split`), and ``n_threads`` workers -- the calling thread and pool threads -- take the
chunks in order from a counter shared by that call until none is left; then the caller waits
for all of them.  A thread slowed down by a busy core then takes fewer chunks instead of
holding everyone up (with one fixed range per thread, a call lasts as long as its slowest
thread).  Every row is computed by one thread with the same arithmetic whatever the split, so
results are bit-identical for any ``n_threads``.

A kernel's scratch arrays are made by ``scratch()`` once per worker (on its first chunk), not
once per chunk.

Numba's own threading layer is not used: no process-wide setting (``numba.set_num_threads``)
is touched, two Python threads calling at once with different ``n_threads`` do not see each
other (each call has its own counter; pool threads busy with another call leave more chunks to
the caller, and a helper that has not started when the chunks run out is cancelled), and no
OpenMP / TBB runtime is started.  The pool is created on first use and discarded in a forked
child (``os.register_at_fork``), which starts its own on its first call; the pool's threads do
not survive a fork, and a child must not wait for them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import MIN_PARALLEL_ELEMENTS  # below it, a call runs in one range

# Chunks (guided scheduling): each is 1/(2 n_threads) of the rows not yet cut, but at least
# MIN_CHUNK_ELEMENTS elements (a chunk costs a kernel call, ~1-3 us), so they shrink from
# 1/(2 n_threads) of the call to that size (about 2 ln(rows) chunks per thread at most).
# Large first chunks keep the calls few; small last ones leave the threads little to wait for
# at the end: uniform chunks of 1/16 of the rows were 1-2% slower at 65536 x 10, a smallest
# chunk of 1/64 of the rows 1-2% slower at 2048 x 32768 (the last chunks are what a thread
# can be left waiting for).
MIN_CHUNK_ELEMENTS = 16384

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
    """``(lo, hi)`` row chunks, in order, contiguous, shrinking (see MIN_CHUNK_ELEMENTS; only
    the last one may be smaller): a single one for small work or one thread, and never more
    chunks than rows."""
    n_threads = max(1, int(n_threads))
    if n_threads == 1 or n_rows < 2 or n_rows * n_cols < MIN_PARALLEL_ELEMENTS:
        return [(0, n_rows)]
    smallest = -(-MIN_CHUNK_ELEMENTS // n_cols)
    bounds = []
    lo = 0
    while lo < n_rows:
        hi = min(n_rows, lo + max(smallest, -(-(n_rows - lo) // (2 * n_threads))))
        bounds.append((lo, hi))
        lo = hi
    return bounds


class _Call:
    """One call of :func:`run_ranges`: its chunks, their counter and the errors seen."""

    __slots__ = ("fn", "args", "scratch", "chunks", "next", "lock", "errors")

    def __init__(self, fn, args, scratch, chunks):
        self.fn = fn
        self.args = args
        self.scratch = scratch
        self.chunks = chunks
        self.next = 0
        self.lock = threading.Lock()
        self.errors = []  # (chunk index, exception)

    def work(self):
        """Take chunks until none is left (run by every worker of the call)."""
        fn, args, chunks = self.fn, self.args, self.chunks
        n = len(chunks)
        extra = None
        while True:
            with self.lock:
                k = self.next
                self.next = k + 1
            if k >= n:
                return
            lo, hi = chunks[k]
            try:
                if extra is None:
                    extra = tuple(self.scratch()) if self.scratch is not None else ()
                fn(lo, hi, *args, *extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised by run_ranges
                self.errors.append((k, exc))  # list.append is atomic


def run_ranges(fn, n_rows: int, n_cols: int, n_threads: int, *args, scratch=None) -> None:
    """Run ``fn(lo, hi, *args, *scratch())`` over the chunks of :func:`split` on ``n_threads``
    workers (this thread and pool threads; ``scratch()``, when given, is called once per
    worker).  Every chunk runs, even after an error; then the error of the first chunk that
    raised is re-raised."""
    chunks = split(n_rows, n_cols, n_threads)
    if len(chunks) == 1:
        fn(0, n_rows, *args, *(tuple(scratch()) if scratch is not None else ()))
        return
    call = _Call(fn, args, scratch, chunks)
    n_workers = min(max(1, int(n_threads)), len(chunks))
    pool = _get_pool()
    helpers = [pool.submit(call.work) for _ in range(n_workers - 1)]
    call.work()
    # every chunk has been taken: a helper that has not started yet would find none left
    for future in helpers:
        if not future.cancel():
            future.result()  # work() catches everything; this waits for its last chunk
    if call.errors:
        raise min(call.errors, key=lambda e: e[0])[1]
