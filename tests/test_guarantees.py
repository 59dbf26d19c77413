"""Machine-checked guarantees: safe wherever real programs call fastloss (docs/design.md §4).

* fork: a parallel kernel in the parent, then fork / forkserver / spawn pools and a bare
  ``os.fork()``: the children compute bit-identical results and nothing hangs;
* threads: 16 Python threads with mixed ``n_threads`` calling at once give bit-identical
  results, and leave no thread setting behind;
* more than 2**31 elements (``slow``), and no memory growth over 20 000 small calls;
* non-native byte order is accepted with the same results; masked arrays are refused;
* results do not depend on where the output lies in memory relative to the input.

Anything that could hang runs under a timeout: the fork scenarios in a fresh interpreter,
in its own session, whose whole process group (pool workers, forked children, the
forkserver) is killed when it overruns; the in-process checks in a watchdog thread.
``FASTLOSS_HANG_TIMEOUT`` (seconds, default 30) is how long a fork scenario may take once
the parent has computed its result.
"""

from __future__ import annotations

import gc
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastloss as fl
from conftest import BACKENDS, TOLERANCES
from fastloss._registry import CASES

CPU_BACKENDS = [b for b in BACKENDS if b != "cuda"]
HANG_TIMEOUT = float(os.environ.get("FASTLOSS_HANG_TIMEOUT", "30"))
START_TIMEOUT = 300.0  # import + first call in a fresh interpreter (a cold Numba compile)
GiB = 1 << 30


@pytest.fixture(params=CPU_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no CPU backend is available here"))])
def cpu_backend(request):
    return request.param


# --------------------------------------------------------------------------------------------
# running things that may hang


class _Overrun(Exception):
    pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_python(source: str, tmp_path, *, timeout: float, start_timeout: float = 0.0) -> str:
    """Run ``source`` as a script in a fresh interpreter and return its output.

    The script may print a line ``READY``: it gets ``start_timeout`` seconds up to that line
    and ``timeout`` seconds after it.  It runs in its own session; on an overrun its whole
    process group is killed (so hung pool workers or forked children cannot outlive the
    test) and the test fails, saying so.
    """
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(source))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    fd = proc.stdout.fileno()
    output = bytearray()
    ready = not start_timeout
    deadline = time.monotonic() + (start_timeout or timeout)
    exited_at = None
    overrun = False
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now  # stragglers of its group may still hold the pipe a moment
                deadline = min(deadline, now + 10.0)
            if now >= deadline:
                if exited_at is not None:
                    break  # the script itself finished: only stragglers are left
                raise _Overrun
            readable, _, _ = select.select([fd], [], [], min(deadline - now, 0.5))
            if not readable:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                break  # every process of the group closed its output
            output += data
            if not ready and b"READY\n" in output:
                ready = True
                deadline = time.monotonic() + timeout
    except _Overrun:
        overrun = True
    finally:
        _kill_group(proc)
        proc.stdout.close()
    proc.wait()
    text = output.decode(errors="replace")
    if overrun:
        stage = (f"{timeout:.0f} s after READY" if ready and start_timeout
                 else f"{timeout:.0f} s" if ready else f"{start_timeout:.0f} s before READY")
        pytest.fail(f"no answer {stage}: a hang (its process group was killed).  "
                    f"Output:\n{text[-3000:]}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"the script exited with {proc.returncode}.  Output:\n{text[-6000:]}",
                    pytrace=False)
    return text


def _result(text: str):
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in the output:\n{text[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread; a hang fails the test instead of stalling the run."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test's thread)
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="fastloss-guarantee", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"no answer after {seconds:.0f} s: a hang", pytrace=False)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# --------------------------------------------------------------------------------------------
# fork, forkserver, spawn

_FORK_SCRIPT = """
import hashlib, json, multiprocessing, os, sys, traceback
import numpy as np
import fastloss

BACKEND = {backend!r}
SCENARIO = {scenario!r}
SHAPE = (4096, 1000)


def compute(_=None):
    rng = np.random.default_rng(12345)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    y = rng.integers(0, SHAPE[1], SHAPE[0])
    loss, grad = fastloss.cross_entropy_with_grad(x, y, backend=BACKEND, n_threads=2)
    return np.asarray(loss).tobytes().hex() + ":" + hashlib.sha256(grad.tobytes()).hexdigest()


def pool(method):
    with multiprocessing.get_context(method).Pool(2) as workers:
        return workers.map(compute, range(4))


def bare_fork():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, compute().encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code == 0, f"the forked child exited with {{code}}"
    return [data.decode()]


if __name__ == "__main__":
    parent = compute()
    print("READY", flush=True)
    children = bare_fork() if SCENARIO == "bare fork" else pool(SCENARIO)
    after = compute()
    print("RESULT " + json.dumps(dict(parent=parent, children=children, after=after)),
          flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scenario", ["fork", "bare fork", "forkserver", "spawn"])
def test_children_after_a_parallel_kernel(cpu_backend, scenario, tmp_path):
    """The parent runs a 2-thread kernel, then its children (fork pool, bare fork with a pipe,
    forkserver and spawn pools) compute the same call: bit-identical, no hang, and the parent
    still works afterwards."""
    # forkserver and spawn children are fresh interpreters: they import fastloss (and load
    # Numba's cache) first, so they get longer; a forked child computes at once
    timeout = HANG_TIMEOUT if scenario in ("fork", "bare fork") else max(HANG_TIMEOUT, 180.0)
    text = _run_python(_FORK_SCRIPT.format(backend=cpu_backend, scenario=scenario), tmp_path,
                       timeout=timeout, start_timeout=START_TIMEOUT)
    result = _result(text)
    assert result["children"] == [result["parent"]] * len(result["children"])
    assert len(result["children"]) == (1 if scenario == "bare fork" else 4)
    assert result["after"] == result["parent"]


# --------------------------------------------------------------------------------------------
# threads


def _fingerprint(result) -> bytes:
    loss, grad = result
    return np.asarray(loss).tobytes() + np.asarray(grad).tobytes()


def _thread_settings(backend: str) -> dict:
    """The process-wide thread settings a backend lets us observe (a call changes none)."""
    from fastloss import _backends

    module = _backends._load(backend)[0]
    seen = {}
    if hasattr(_backends, "default_threads"):
        seen["default_threads()"] = _backends.default_threads()
    if "numba" in sys.modules:
        import numba

        seen["numba.get_num_threads()"] = numba.get_num_threads()
    for name in ("openmp", "max_threads", "default_threads", "default_n_threads"):
        probe = getattr(module, name, None)
        if callable(probe):
            seen[f"{backend}.{name}()"] = probe()
    return seen


def _n_threads_given_to_the_kernel(backend: str, kernel: str, call) -> list:
    """The ``n_threads`` (the last argument of the kernel protocol, docs/design.md §2) that
    ``call()`` passes to ``kernel`` of ``backend``; empty where the backend has no such
    kernel."""
    from fastloss import _backends

    module = _backends._load(backend)[0]
    original = getattr(module, kernel, None)
    if original is None:
        return []
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["n_threads"] if "n_threads" in kwargs else args[-1])
        return original(*args, **kwargs)

    setattr(module, kernel, spy)
    try:
        call()
    finally:
        setattr(module, kernel, original)
    return seen


def _thread_storm(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 1500)).astype(np.float32)
    y = rng.integers(0, 1500, 300)
    y[::7] = -100
    t = (rng.random(x.shape) < 0.3).astype(np.float32)
    calls = {
        "cross_entropy": lambda nt: fl.cross_entropy_with_grad(
            x, y, label_smoothing=0.1, backend=backend, n_threads=nt),
        "binary_cross_entropy": lambda nt: fl.binary_cross_entropy_with_logits_with_grad(
            x, t, backend=backend, n_threads=nt),
    }
    expected = {name: _fingerprint(call(1)) for name, call in calls.items()}
    settings_before = _thread_settings(backend)

    n_python_threads, rounds = 16, 3
    choices = (1, 2, 3, None)
    barrier = threading.Barrier(n_python_threads)
    problems = []

    def worker(i):
        try:
            barrier.wait(timeout=60)
            for r in range(rounds):
                for name, call in calls.items():
                    nt = choices[(i + r) % len(choices)]
                    if _fingerprint(call(nt)) != expected[name]:
                        problems.append(f"{name} with n_threads={nt} in thread {i} differs")
        except BaseException as exc:  # noqa: BLE001
            problems.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(n_python_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not problems, problems

    # afterwards: the default is still the default
    for name, call in calls.items():
        assert _fingerprint(call(None)) == expected[name], name
    assert _thread_settings(backend) == settings_before
    from fastloss import _backends

    if hasattr(_backends, "default_threads"):
        default = _backends.default_threads()
        for nt, expected_nt in ((None, default), (3, 3), (None, default)):
            seen = _n_threads_given_to_the_kernel(backend, "cross_entropy",
                                                  lambda nt=nt: calls["cross_entropy"](nt))
            assert seen in ([], [expected_nt]), (nt, seen)


def test_concurrent_calls_from_16_threads_are_bit_identical(cpu_backend):
    _within(300, _thread_storm, cpu_backend)


def test_python_and_c_run_the_same_calls_on_one_thread():
    from fastloss._ext import MIN_PARALLEL_ELEMENTS

    source = os.path.join(os.path.dirname(fl.__file__), "_ext", "src", "threads.c")
    with open(source) as f:
        defined = re.search(r"#define FL_MIN_PARALLEL_ELEMENTS (\d+)", f.read())
    assert defined and int(defined.group(1)) == MIN_PARALLEL_ELEMENTS


# --------------------------------------------------------------------------------------------
# memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _many_small_calls(backend, n_calls):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    for _ in range(500):  # warm up: compiled code, caches, allocator arenas
        fl.cross_entropy_with_grad(x, y, backend=backend)
    gc.collect()
    before = _rss()
    for _ in range(n_calls):
        fl.cross_entropy_with_grad(x, y, backend=backend)
    gc.collect()
    return _rss() - before


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_small_calls_do_not_grow_memory(cpu_backend):
    growth = _within(300, _many_small_calls, cpu_backend, 20_000)
    assert growth < 4 * (1 << 20), f"resident memory grew by {growth / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------------------------
# more than 2**31 elements

_BIG_SCRIPT = """
import json
import numpy as np
import fastloss

BACKEND = {backend!r}
N, C, BLOCK = 65540, 32768, 250  # 65540 * 32768 = 2**31 + 131072 elements (8.6 GB float32)
RTOL, ATOL = {rtol!r}, {atol!r}
assert N * C > 2**31

# a cheap pattern: BLOCK random rows repeated; BLOCK does not divide 65536, so a row index
# that wrapped at 2**31 elements would read different values
block = np.random.default_rng(0).standard_normal((BLOCK, C), dtype=np.float32) * 4
x = np.empty((N, C), dtype=np.float32)
for start in range(0, N, BLOCK):
    x[start:start + BLOCK] = block[:N - start]
y = (np.arange(N) * 7919) % C
rows = np.array([0, 1, 65535, 65536, 65537, N - 1])
print("READY", flush=True)

loss, grad = fastloss.cross_entropy_with_grad(x, y, reduction="none", out=x, backend=BACKEND)
assert grad is x
ref_loss, ref_grad = fastloss.cross_entropy_with_grad(
    block[rows % BLOCK].astype(np.float64), y[rows], reduction="none", backend="numpy")
np.testing.assert_allclose(loss[rows].astype(np.float64), ref_loss, rtol=RTOL, atol=ATOL)
np.testing.assert_allclose(grad[rows].astype(np.float64), ref_grad, rtol=RTOL, atol=ATOL)
assert np.all(np.isfinite(loss))
print("RESULT " + json.dumps(dict(rows=rows.tolist(), loss=loss[rows].tolist())), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "numpy"] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no compiled CPU backend here"))])
def test_more_than_2_to_the_31_elements_in_place(backend, tmp_path):
    """65540 x 32768 float32 logits (2**31 + 131072 elements) with out=logits: rows past the
    2**31st element match the reference.  (The numpy backend is the float64 reference: its
    temporaries need several times the input, so it is left out.)"""
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if free < 12 * GiB:
        pytest.skip(f"needs 12 GiB of free memory, {free / GiB:.1f} GiB free")
    rtol, atol = TOLERANCES[np.dtype(np.float32)]
    text = _run_python(_BIG_SCRIPT.format(backend=backend, rtol=rtol, atol=atol), tmp_path,
                       timeout=600, start_timeout=600)
    assert _result(text)["rows"][-1] == 65539


# --------------------------------------------------------------------------------------------
# byte order


def _swapped(value):
    """The same values in the other byte order (bools and bytes have none)."""
    if isinstance(value, np.ndarray) and value.dtype.itemsize > 1:
        return value.astype(value.dtype.newbyteorder("S"))
    return value


def _snapshot(value):
    return (value.dtype, value.copy()) if isinstance(value, np.ndarray) else None


def _unchanged(value, snapshot) -> bool:
    if snapshot is None:
        return True
    dtype, copy = snapshot
    return value.dtype == dtype and np.array_equal(value, copy, equal_nan=True)


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.dtype.isnative and a.shape == b.shape and (
        a.tobytes() == b.tobytes())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_native_byte_order_gives_the_same_results(case, backend, dtype):
    rng = np.random.default_rng(11)
    x, args, kwargs = case.inputs(rng, (5, 7), dtype)
    for reduction in case.reductions:
        loss_shape = x.shape if case.elementwise else x.shape[:-1]
        grad_output = (rng.standard_normal(loss_shape) if reduction == "none"
                       else np.array(0.75))
        native = dict(kwargs, reduction=reduction, backend=backend)
        swapped_x, swapped_args = _swapped(x), tuple(_swapped(a) for a in args)
        swapped = {k: _swapped(v) for k, v in native.items()}
        swapped_go = _swapped(grad_output)
        inputs = [swapped_x, *swapped_args, *swapped.values(), swapped_go]
        before = [_snapshot(v) for v in inputs]
        assert not swapped_x.dtype.isnative

        expected = case.with_grad(x, *args, **native, grad_output=grad_output)
        got = case.with_grad(swapped_x, *swapped_args, **swapped, grad_output=swapped_go)
        assert _same_bits(got[0], expected[0]) and _same_bits(got[1], expected[1]), reduction
        assert _same_bits(case.forward(swapped_x, *swapped_args, **swapped),
                          case.forward(x, *args, **native)), reduction
        assert all(_unchanged(v, s) for v, s in zip(inputs, before)), "an input was modified"


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8", "<f4", "<f8"])
@pytest.mark.parametrize("target_dtype", [">i8", "<i8", ">i4", ">u2"])
def test_cross_entropy_in_any_byte_order(backend, dtype, target_dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 5)).astype(dtype)
    y = rng.integers(0, 5, 6).astype(target_dtype)
    expected = fl.cross_entropy_with_grad(x.astype(np.dtype(dtype).newbyteorder("=")),
                                          y.astype(np.int64), backend=backend)
    got = fl.cross_entropy_with_grad(x, y, backend=backend)
    assert _same_bits(got[0], expected[0]) and _same_bits(got[1], expected[1])


@pytest.mark.parametrize("transform", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transforms_in_non_native_byte_order(backend, transform, dtype):
    x = np.random.default_rng(13).standard_normal((4, 9)).astype(dtype)
    got = getattr(fl, transform)(_swapped(x), backend=backend)
    assert _same_bits(got, getattr(fl, transform)(x, backend=backend))


def _in_one_buffer(a: np.ndarray, gap: int):
    """A copy of ``a`` and an empty array of its shape and dtype in one buffer, the second
    starting ``gap`` bytes after the first one's end (``gap < 0``: ending ``-gap`` bytes
    before its start)."""
    nb = a.nbytes
    buf = np.zeros(4 * nb + 1024, np.uint8)
    start = 2 * nb + 512
    x = buf[start:start + nb].view(a.dtype).reshape(a.shape)
    x[...] = a
    o = start + nb + gap if gap >= 0 else start - nb + gap
    return x, buf[o:o + nb].view(a.dtype).reshape(a.shape)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_where_out_lies(case, cpu_backend, dtype):
    """The gradient into out= right after the logits, or right before them, gives the same
    bits as into an array elsewhere.  (A compiled loop that reads one array and writes
    another may check at run time whether the two lie within a vector span of each other
    and then take a scalar version that rounds differently: small arrays allocated one after
    the other do.)"""
    for shape in ((4, 9), (3, 40)):
        logits, args, kwargs = case.inputs(np.random.default_rng(0), shape, dtype)
        kwargs = dict(kwargs, reduction="none", backend=cpu_backend)
        far = np.empty_like(logits)
        loss = case.with_grad(logits, *args, out=far, **kwargs)[0]
        for gap in (0, 16, 64, -16):
            x, out = _in_one_buffer(logits, gap)
            got = case.with_grad(x, *args, out=out, **kwargs)[0]
            assert _same_bits(out, far), (shape, gap)
            assert _same_bits(got, loss), (shape, gap)


def test_out_in_non_native_byte_order_is_refused(backend):
    """The gradient is written into ``out``: one of the other byte order is refused rather
    than silently written in the wrong order (or copied and not written at all)."""
    x = np.random.default_rng(14).standard_normal((4, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    out = np.full(x.shape, 7.0, dtype=x.dtype.newbyteorder("S"))
    pattern = rf"out has dtype {re.escape(str(out.dtype))} \(expected float32\)"
    with pytest.raises(ValueError, match=pattern):
        fl.cross_entropy_with_grad(x, y, out=out, backend=backend)
    assert np.all(out == 7.0)
    # out=logits with non-native logits: the logits are copied to native order, so the
    # gradient could not land in them: refused, and the logits are untouched
    logits = _swapped(x)
    with pytest.raises(ValueError, match=pattern):
        fl.cross_entropy_with_grad(logits, y, out=logits, backend=backend)
    assert np.array_equal(logits, x) and not logits.dtype.isnative


def test_native_out_with_non_native_logits(backend):
    x = np.random.default_rng(15).standard_normal((4, 6))
    y = np.array([0, 1, 2, 3])
    out = np.empty_like(x)
    loss, grad = fl.cross_entropy_with_grad(_swapped(x), y, out=out, backend=backend)
    expected = fl.cross_entropy_with_grad(x, y, backend=backend)
    assert grad is out
    assert _same_bits(loss, expected[0]) and _same_bits(grad, expected[1])


# --------------------------------------------------------------------------------------------
# masked arrays

_rng = np.random.default_rng(16)
X = _rng.standard_normal((4, 6)).astype(np.float32)
Y = np.array([0, 1, 2, 3])
P = np.full((4, 6), 1 / 6, dtype=np.float32)
T = (X > 0).astype(np.float32)


def _m(a, mask=None):
    return np.ma.masked_array(a.copy(), mask=np.zeros(np.shape(a), bool) if mask is None
                              else mask)


def _m1(a):
    """Masked at its first element."""
    mask = np.zeros(np.shape(a), bool)
    mask.flat[0] = True
    return _m(a, mask)


# (id, function, args, kwargs, name of the masked argument)
MASKED = [
    ("logits", fl.cross_entropy, (_m1(X), Y), {}, "logits"),
    ("logits without a mask", fl.cross_entropy, (np.ma.masked_array(X.copy()), Y), {},
     "logits"),
    ("index target", fl.cross_entropy, (X, _m1(Y)), {}, "target"),
    ("probability target", fl.cross_entropy_with_grad, (X, _m1(P)), {}, "target"),
    ("class weight", fl.cross_entropy, (X, Y), {"weight": _m1(np.ones(6))}, "weight"),
    ("grad_output none", fl.cross_entropy_with_grad, (X, Y),
     {"reduction": "none", "grad_output": _m1(np.ones(4))}, "grad_output"),
    ("grad_output scalar", fl.entropy_with_grad, (X,),
     {"grad_output": np.ma.masked_array(1.0, mask=True)}, "grad_output"),
    ("bce target", fl.binary_cross_entropy_with_logits, (X, _m1(T)), {}, "target"),
    ("bce weight", fl.binary_cross_entropy_with_logits_with_grad, (X, T),
     {"weight": _m1(np.ones(6))}, "weight"),
    ("bce pos_weight", fl.binary_cross_entropy_with_logits, (X, T),
     {"pos_weight": _m1(np.ones(6))}, "pos_weight"),
    ("softmax_mse target", fl.softmax_mse_with_grad, (X, _m1(Y)), {}, "target"),
    ("kl target", fl.kl_divergence, (X, _m1(P)), {}, "target"),
    ("entropy logits", fl.entropy_with_grad, (_m1(X),), {}, "logits"),
    ("mse input", fl.mse_loss, (_m1(X), X), {}, "input"),
    ("mse target", fl.mse_loss_with_grad, (X, _m1(X)), {}, "target"),
    ("softmax", fl.softmax, (_m1(X),), {}, "logits"),
    ("log_softmax", fl.log_softmax, (_m1(X),), {}, "logits"),
    ("logsumexp", fl.logsumexp, (_m1(X),), {}, "logits"),
]

MASKED_MESSAGE = (r" is a masked array; masked arrays are not supported: the mask would be "
                  r"ignored; pass arr\.filled\(\.\.\.\) or select the valid rows, or use "
                  r"ignore_index for targets$")


def _masked_snapshot(value):
    if isinstance(value, np.ma.MaskedArray):
        return value.data.copy(), np.ma.getmaskarray(value).copy()
    return None


def _masked_unchanged(value, snapshot):
    if snapshot is None:
        return True
    data, mask = snapshot
    return (np.array_equal(value.data, data, equal_nan=True)
            and np.array_equal(np.ma.getmaskarray(value), mask))


@pytest.mark.parametrize("func, args, kwargs, name", [row[1:] for row in MASKED],
                         ids=[row[0] for row in MASKED])
def test_masked_arrays_are_refused(func, args, kwargs, name, backend):
    values = [*args, *kwargs.values()]
    before = [_masked_snapshot(v) for v in values]
    with pytest.raises(TypeError, match="^" + re.escape(name) + MASKED_MESSAGE):
        func(*args, **kwargs, backend=backend)
    assert all(_masked_unchanged(v, s) for v, s in zip(values, before))


def test_masked_out_is_refused(backend):
    out = _m(np.zeros_like(X))
    with pytest.raises(TypeError, match="^out" + MASKED_MESSAGE):
        fl.cross_entropy_with_grad(X, Y, out=out, backend=backend)
