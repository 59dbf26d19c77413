"""The C API: from a C program (no Python in it), from another Cython module, through ctypes
(options structs, ABI forward compatibility, error codes, version), and fastloss.pxd checked
against fastloss.h (docs/design.md section 6)."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss import reference

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
EXT = os.path.join(os.path.dirname(os.path.abspath(fastloss.__file__)), "_ext")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
LIBRARY = os.path.join(fastloss.get_lib_dir(),
                       "libfastloss.dylib" if sys.platform == "darwin" else "libfastloss.so")

built = pytest.mark.skipif(
    fastloss.backends()["cython"] != "available" or not os.path.exists(LIBRARY),
    reason="the C extension is not built: " + fastloss.backends()["cython"])
compiler = pytest.mark.skipif(CC is None, reason="no C compiler")

TOLERANCES = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-12)}


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=atol * scale)


# ------------------------------------------------------------------ declarations: parsing

def _strip_c(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _type(decl):
    """'const double *weight' -> ('const double*', 'weight'); spacing normalised."""
    decl = " ".join(decl.replace("*", " * ").split())
    m = re.fullmatch(r"(.*?)\s*(\w+)", decl)
    return m.group(1).replace(" *", "*"), m.group(2)


def _params(text):
    text = " ".join(text.split())
    if text in ("", "void"):
        return []
    return [_type(p)[0] for p in text.split(",")]


def parse_header(path):
    """{'functions': {name: (return, [param types])}, 'structs': {name: [(type, member)]},
    'constants': {name: int}} of a C header."""
    with open(path) as f:
        raw = f.read()
    constants = {name: int(value) for name, value in
                 re.findall(r"#define (FASTLOSS_\w+) \(?(-?\d+)\)?\s", raw)}
    text = _strip_c(raw)
    text = re.sub(r"^\s*#.*?(?<!\\)$", " ", text, flags=re.M | re.S)  # preprocessor lines
    text = re.sub(r'extern "C" \{|\bFL_PRIVATE\b', " ", text)
    structs = {}
    for body, name in re.findall(r"typedef struct \w*\s*\{(.*?)\}\s*(\w+);", text, flags=re.S):
        structs[name] = [_type(m) for m in body.split(";") if m.strip()]
    text = re.sub(r"typedef struct \w*\s*\{.*?\}\s*\w+;", " ", text, flags=re.S)
    text = re.sub(r"typedef [^;]*;", " ", text)
    functions = {}
    for decl in text.split(";"):
        m = re.fullmatch(r"\s*(.*?\W)(\w+)\s*\((.*)\)\s*", decl.replace("}", " "), flags=re.S)
        if m:
            functions[m.group(2)] = (_type(m.group(1) + " x")[0], _params(m.group(3)))
    return {"functions": functions, "structs": structs, "constants": constants}


def parse_cython_extern(path, header):
    """The same for the `cdef extern from "<header>"` block of a .pxd or .pyx."""
    with open(path) as f:
        lines = f.read().split("\n")
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f'cdef extern from "{header}"'))
    block = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(re.sub(r"#.*", "", line))
    functions, structs, constants = {}, {}, set()
    section, pending = None, ""
    for line in block:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent > 4 and section:  # a member of the enum or struct above
            if section == "enum":
                constants.add(text)
            else:
                structs[section].append(_type(text))
            continue
        section = None
        if text == "enum:":
            section = "enum"
        elif text.startswith("ctypedef struct "):
            section = text[len("ctypedef struct "):].rstrip(":")
            structs[section] = []
        else:
            pending += " " + text
            if pending.count("(") == pending.count(")"):
                m = re.fullmatch(r"\s*(.*?\W)(\w+)\s*\((.*)\)\s*", pending, flags=re.S)
                if m:
                    functions[m.group(2)] = (_type(m.group(1) + " x")[0], _params(m.group(3)))
                pending = ""
    return {"functions": functions, "structs": structs, "constants": constants}


HEADER = parse_header(os.path.join(EXT, "include", "fastloss.h"))


def test_pxd_declares_exactly_the_header():
    pxd = parse_cython_extern(os.path.join(EXT, "fastloss.pxd"), "fastloss.h")
    assert pxd["functions"] == HEADER["functions"]
    assert pxd["structs"] == HEADER["structs"]
    assert pxd["constants"] == set(HEADER["constants"])
    # the parser sees what it should
    assert len(HEADER["functions"]) == 33 and len(HEADER["structs"]) == 7
    assert HEADER["functions"]["fastloss_cross_entropy_f32"] == (
        "int", ["int64_t", "int64_t", "const float*", "const int64_t*",
                "const fastloss_cross_entropy_options*", "float*", "float*"])


def test_cython_backend_declares_exactly_the_private_header():
    rows = parse_header(os.path.join(EXT, "src", "rows.h"))["functions"]
    del rows["fl_parallel_rows"]  # threads.c's, not the backend's
    pyx = parse_cython_extern(os.path.join(EXT, "_cython.pyx"), "rows.h")["functions"]
    assert pyx == rows and len(rows) == 30


# ------------------------------------------------------------------ ctypes: the library

CTYPES = {"size_t": ctypes.c_size_t, "int": ctypes.c_int, "int64_t": ctypes.c_int64,
          "double": ctypes.c_double}


def _ctype(c_type):
    return ctypes.c_void_p if c_type.endswith("*") else CTYPES[c_type]


# The options structs, built from fastloss.h (not a second hand-kept copy).
OPTIONS = {name: type(name, (ctypes.Structure,),
                      {"_fields_": [(member, _ctype(t)) for t, member in members]})
           for name, members in HEADER["structs"].items()}
CE = OPTIONS["fastloss_cross_entropy_options"]
GH = OPTIONS["fastloss_grad_hess_options"]


@pytest.fixture(scope="module")
def lib():
    if not os.path.exists(LIBRARY):
        pytest.skip("libfastloss is not built")
    lib = ctypes.CDLL(LIBRARY)
    for name, (ret, params) in HEADER["functions"].items():
        fn = getattr(lib, name)
        fn.restype = None if ret == "void" else (ctypes.c_char_p if ret == "const char*"
                                                 else _ctype(ret))
        fn.argtypes = [_ctype(p) for p in params]
    return lib


def ptr(a):
    return None if a is None else a.ctypes.data


def ce_options(lib, **values):
    opts = CE()
    lib.fastloss_cross_entropy_options_init(ctypes.byref(opts))
    for name, value in values.items():
        setattr(opts, name, value)
    return opts


def gh_options(lib, **values):
    opts = GH()
    lib.fastloss_grad_hess_options_init(ctypes.byref(opts))
    for name, value in values.items():
        setattr(opts, name, value)
    return opts


def call_ce(lib, x, target, opts, *, loss=True, grad=True):
    n, c = x.shape
    suffix = "f32" if x.dtype == np.float32 else "f64"
    probs = target.ndim == 2
    fn = getattr(lib, f"fastloss_cross_entropy{'_probs' if probs else ''}_{suffix}")
    out_loss = np.full(n, 7, x.dtype) if loss else None
    out_grad = np.full((n, c), 7, x.dtype) if grad else None
    status = fn(n, c, ptr(x), ptr(target), None if opts is None else ctypes.byref(opts),
                ptr(out_loss), ptr(out_grad))
    return status, out_loss, out_grad


def test_version_is_written_once(lib):
    c = HEADER["constants"]
    version = f"{c['FASTLOSS_VERSION_MAJOR']}.{c['FASTLOSS_VERSION_MINOR']}." \
              f"{c['FASTLOSS_VERSION_PATCH']}"
    assert lib.fastloss_version().decode() == version == fastloss.__version__


def test_options_init_sets_size_and_defaults(lib):
    opts = ce_options(lib)
    assert opts.size == ctypes.sizeof(CE)
    assert (opts.n_threads, opts.weight, opts.ignore_index, opts.label_smoothing, opts.z_loss,
            opts.softcap, opts.temperature, opts.grad_scale) == \
        (0, None, -100, 0.0, 0.0, 0.0, 1.0, 1.0)
    gh = gh_options(lib)
    assert (gh.size, gh.n_threads, gh.sample_weight, gh.label_smoothing, gh.hessian_scale,
            gh.min_hessian) == (ctypes.sizeof(GH), 0, None, 0.0, 1.0, 0.0)
    for name, struct in OPTIONS.items():
        o = struct()
        getattr(lib, name + "_init")(ctypes.byref(o))
        assert o.size == ctypes.sizeof(struct) and o.n_threads == 0


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_null_options_are_the_defaults(lib, dtype, rng):
    x = (rng.standard_normal((6, 9)) * 3).astype(dtype)
    y = np.array([0, 8, -100, 3, 4, 4])
    status, loss, grad = call_ce(lib, x, y, None)
    assert status == 0
    assert_close(loss, reference.cross_entropy(x, y)[0], dtype)
    assert_close(grad, reference.cross_entropy(x, y)[1], dtype)
    status, loss2, grad2 = call_ce(lib, x, y, ce_options(lib))
    assert status == 0 and np.array_equal(loss, loss2) and np.array_equal(grad, grad2)


@built
def test_an_older_smaller_options_struct_gets_defaults_for_the_rest(lib, rng):
    """A program built when the struct ended before z_loss: the library must not read on."""
    x = rng.standard_normal((5, 7))
    y = np.array([0, 6, 2, 3, 1])
    # the members past the old size hold garbage that would be errors if read
    opts = ce_options(lib, label_smoothing=0.25, z_loss=np.nan, softcap=-1.0, temperature=0.0)
    opts.size = CE.z_loss.offset
    status, loss, grad = call_ce(lib, x, y, opts)
    assert status == 0
    el, eg = reference.cross_entropy(x, y, None, -100, 0.25)
    assert_close(loss, el, np.float64)
    assert_close(grad, eg, np.float64)
    opts.size = CE.label_smoothing.offset  # older still: label_smoothing is a default too
    status, loss, grad = call_ce(lib, x, y, opts)
    assert status == 0
    assert_close(loss, reference.cross_entropy(x, y)[0], np.float64)


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("probs", [False, True, "plain"])
def test_grad_scale_multiplies_the_gradient_only(lib, dtype, probs, rng):
    """grad_scale (e.g. 1/N for a mean, as the JAX handler uses it) scales the whole gradient,
    z-loss term included, and leaves the per-row losses alone.  "plain": class indices and
    no options, 10 classes and 37 rows (the short-row tiles, the last one partly filled)."""
    n, c = (37, 10) if probs == "plain" else (9, 13)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    if probs is True:
        target = rng.random((n, c)).astype(dtype)
        target /= target.sum(1, keepdims=True)
    else:
        target = rng.integers(0, c, n)
        target[4] = -100
    options = {"z_loss": 1e-2, "softcap": 6.0, "temperature": 1.3, "label_smoothing": 0.1}
    if probs == "plain":
        options = {}
        el, eg = reference.cross_entropy(x, target, None, -100, 0.0)
    else:
        el, eg = reference.cross_entropy(x, target, None, -100, 0.1, softcap=6.0,
                                         temperature=1.3, z_loss=1e-2)
    for scale in (0.25, -3.0, 0.0):
        status, loss, grad = call_ce(lib, x, target, ce_options(lib, grad_scale=scale,
                                                                **options))
        assert status == 0
        assert_close(loss, el, dtype)
        assert_close(grad, scale * eg, dtype)


@built
def test_an_options_struct_ending_before_grad_scale_gives_the_unscaled_gradient(lib, rng):
    """A program built against the header before grad_scale was appended passes a struct
    that ends at temperature: the library must not read grad_scale (1 is its default)."""
    x = rng.standard_normal((6, 8))
    y = np.array([0, 7, 2, -100, 1, 5])
    opts = ce_options(lib, label_smoothing=0.2, temperature=0.8, grad_scale=0.125)
    status, loss_new, grad_new = call_ce(lib, x, y, opts)
    assert status == 0
    opts.size = CE.grad_scale.offset  # == the old sizeof: temperature is the last member
    assert opts.size == CE.temperature.offset + ctypes.sizeof(ctypes.c_double)
    status, loss_old, grad_old = call_ce(lib, x, y, opts)
    assert status == 0
    el, eg = reference.cross_entropy(x, y, None, -100, 0.2, temperature=0.8)
    assert_close(loss_old, el, np.float64)
    assert_close(grad_old, eg, np.float64)
    np.testing.assert_array_equal(loss_new, loss_old)
    assert_close(grad_new, 0.125 * eg, np.float64)
    opts.grad_scale = np.nan  # past the size: never read, so not an error either
    assert call_ce(lib, x, y, opts)[0] == 0


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_options_are_error_codes_and_leave_outputs_untouched(lib, dtype, rng):
    x = rng.standard_normal((3, 4)).astype(dtype)
    y = np.array([0, 1, 2])
    cases = [
        ({"size": 0}, "FASTLOSS_E_OPTIONS"),
        ({"size": ctypes.sizeof(CE) + 8}, "FASTLOSS_E_OPTIONS"),
        ({"size": 4}, "FASTLOSS_E_OPTIONS"),
        ({"label_smoothing": 1.5}, "FASTLOSS_E_SMOOTHING"),
        ({"label_smoothing": np.nan}, "FASTLOSS_E_SMOOTHING"),
        ({"z_loss": -1e-4}, "FASTLOSS_E_Z_LOSS"),
        ({"z_loss": np.inf}, "FASTLOSS_E_Z_LOSS"),
        ({"softcap": -1.0}, "FASTLOSS_E_SOFTCAP"),
        ({"softcap": np.inf}, "FASTLOSS_E_SOFTCAP"),
        ({"temperature": 0.0}, "FASTLOSS_E_TEMPERATURE"),
        ({"temperature": np.nan}, "FASTLOSS_E_TEMPERATURE"),
        ({"temperature": np.inf}, "FASTLOSS_E_TEMPERATURE"),
        ({"n_threads": -1}, "FASTLOSS_E_THREADS"),
        ({"grad_scale": np.nan}, "FASTLOSS_E_GRAD_SCALE"),
        ({"grad_scale": -np.inf}, "FASTLOSS_E_GRAD_SCALE"),
    ]
    for values, code in cases:
        for probs in (False, True):
            target = np.full((3, 4), 0.25, dtype) if probs else y
            status, loss, grad = call_ce(lib, x, target, ce_options(lib, **values))
            assert status == HEADER["constants"][code], (values, probs)
            assert np.all(loss == 7) and np.all(grad == 7)
    status, loss, grad = call_ce(lib, x, np.array([0, 4, 1]), None)
    assert status == HEADER["constants"]["FASTLOSS_E_TARGET"]
    assert np.all(loss == 7) and np.all(grad == 7)
    assert call_ce(lib, x[:0].reshape(0, 4), y[:0], None)[0] == 0
    assert lib.fastloss_cross_entropy_f64(-1, 4, None, None, None, None, None) == -2
    assert lib.fastloss_cross_entropy_f64(3, 4, None, ptr(y), None, None, None) == -1
    assert lib.fastloss_strerror(-2) == b"invalid shape: n must be >= 0 and c >= 1"
    assert lib.fastloss_strerror(-9) == b"temperature must be finite and > 0"
    for code in HEADER["constants"]:
        if code.startswith("FASTLOSS_E_"):
            text = lib.fastloss_strerror(HEADER["constants"][code])
            assert text != b"unknown fastloss error code"


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("options", [
    {"z_loss": 1e-3},
    {"softcap": 5.0},
    {"temperature": 0.7},
    {"softcap": 3.0, "temperature": 2.0, "z_loss": 0.01, "label_smoothing": 0.1},
])
def test_cross_entropy_options_match_the_reference(lib, dtype, probs, options, rng):
    n, c = 40, 33
    x = (rng.standard_normal((n, c)) * 4).astype(dtype)
    x[0, 3] = -np.inf
    if probs:
        target = rng.random((n, c)).astype(dtype)
        target /= target.sum(1, keepdims=True)
    else:
        target = rng.integers(0, c, n)
        target[2] = -100
    weight = rng.random(c) + 0.5
    opts = ce_options(lib, weight=weight.ctypes.data, **options)
    status, loss, grad = call_ce(lib, x, target, opts)
    assert status == 0
    el, eg = reference.cross_entropy(
        x, target, weight, -100, options.get("label_smoothing", 0.0),
        softcap=options.get("softcap"), temperature=options.get("temperature", 1.0),
        z_loss=options.get("z_loss", 0.0))
    assert_close(loss, el, dtype)
    assert_close(grad, eg, dtype)


@built
def test_results_do_not_depend_on_the_thread_count(lib, rng):
    x = rng.standard_normal((300, 700)).astype(np.float32)  # above the one-thread size
    y = rng.integers(0, 700, 300)
    runs = [call_ce(lib, x, y, ce_options(lib, n_threads=t, z_loss=1e-3, softcap=20.0))
            for t in (1, 2, 3, 0)]
    for status, loss, grad in runs:
        assert status == 0
        assert np.array_equal(loss, runs[0][1]) and np.array_equal(grad, runs[0][2])
    assert lib.fastloss_max_threads() >= 1 and lib.fastloss_has_threads() in (0, 1)


@built
def test_the_default_thread_count_follows_the_affinity_mask():
    """n_threads = 0 means the CPUs this process may run on (taskset, a container's cpuset),
    as fastloss's Python default does, not every online CPU."""
    if not hasattr(os, "sched_getaffinity") or not sys.platform.startswith("linux"):
        pytest.skip("no affinity mask here")
    script = (
        "import ctypes, os\n"
        f"lib = ctypes.CDLL({LIBRARY!r})\n"
        "print(lib.fastloss_max_threads(), len(os.sched_getaffinity(0)),"
        " lib.fastloss_has_threads())\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "print(lib.fastloss_max_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    lines = out.stdout.split("\n")
    seen, allowed, threaded = map(int, lines[0].split())
    assert seen == (min(allowed, 1024) if threaded else 1), out.stderr
    assert int(lines[1]) == 1, out.stderr


# What the fork scripts below start with: the library, and ce(x, y, g), its float64
# cross-entropy with default options (x (N, C), y (N,) int64, the gradient into g).
_SCRIPT_HEAD = (
    "import ctypes, os, threading, numpy as np\n"
    f"lib = ctypes.CDLL({LIBRARY!r})\n"
    "def ce(x, y, g):\n"
    "    return lib.fastloss_cross_entropy_f64(ctypes.c_int64(x.shape[0]),\n"
    "        ctypes.c_int64(x.shape[1]), ctypes.c_void_p(x.ctypes.data),\n"
    "        ctypes.c_void_p(y.ctypes.data), None, None, ctypes.c_void_p(g.ctypes.data))\n"
)


def _run_script(body, timeout):
    return subprocess.run([sys.executable, "-c", _SCRIPT_HEAD + body], capture_output=True,
                          text=True, timeout=timeout)


@built
def test_fork_after_a_threaded_call(tmp_path):
    """The pool's workers stay behind in the parent: a forked child starts its own and can
    call at once (it would hang waiting for workers that do not exist there)."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    out = _run_script(
        "x = np.random.default_rng(0).standard_normal((512, 512))\n"
        "y = np.zeros(512, np.int64); g = np.empty_like(x)\n"
        "assert ce(x, y, g) == 0\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(ce(x, y, g))\n"
        "assert os.waitpid(pid, 0)[1] == 0\n"
        "print('ok')\n", timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


@built
def test_fork_while_another_thread_calls(tmp_path):
    """fork() while another thread holds the pool, in the middle of a parallel call: the
    child's pool starts empty and free, its parallel calls finish with the parent's results,
    and the parent's calls go on."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    out = _run_script(
        "x = np.random.default_rng(0).standard_normal((2048, 300))\n"
        "y = np.arange(2048, dtype=np.int64) % 300\n"
        "want = np.empty_like(x); assert ce(x, y, want) == 0\n"
        "stop = threading.Event(); bad = []\n"
        "def busy():\n"
        "    g = np.empty_like(x)\n"
        "    while not stop.is_set():\n"
        "        if ce(x, y, g) != 0 or not np.array_equal(g, want): bad.append(1)\n"
        "t = threading.Thread(target=busy); t.start()\n"
        "for _ in range(20):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        g = np.empty_like(x)\n"
        "        ok = all(ce(x, y, g) == 0 and np.array_equal(g, want) for _ in range(3))\n"
        "        os._exit(0 if ok else 1)\n"
        "    assert os.waitpid(pid, 0)[1] == 0\n"
        "stop.set(); t.join()\n"
        "assert not bad\n"
        "print('ok')\n", timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_loss_through_the_c_api(lib, dtype, rng):
    n, c = 6, 11
    s = "f32" if dtype == np.float32 else "f64"
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    probs = rng.random((n, c)).astype(dtype)
    probs /= probs.sum(1, keepdims=True)
    y = rng.integers(0, c, n)
    bits = rng.random((n, c)).astype(dtype)
    weight, pos_weight = rng.random((n, c)), rng.random(c) + 0.5

    def call(name, inputs, options, loss_shape):
        loss, grad = np.empty(loss_shape, dtype), np.empty((n, c), dtype)
        opts = None
        if options is not None:
            opts = OPTIONS[options[0]]()
            getattr(lib, options[0] + "_init")(ctypes.byref(opts))
            for key, value in options[1].items():
                setattr(opts, key, value)
            opts = ctypes.byref(opts)
        status = getattr(lib, f"fastloss_{name}_{s}")(n, c, *map(ptr, inputs), opts, ptr(loss),
                                                     ptr(grad))
        assert status == 0, name
        return loss, grad

    bce = "fastloss_binary_cross_entropy_options"
    for (name, inputs, options, loss_shape, expected) in [
        ("binary_cross_entropy_with_logits", (x, bits), None, (n, c),
         reference.binary_cross_entropy_with_logits(x, bits)),
        ("binary_cross_entropy_with_logits", (x, bits),
         (bce, {"weight": weight.ctypes.data, "pos_weight": pos_weight.ctypes.data}), (n, c),
         reference.binary_cross_entropy_with_logits(x, bits, weight, pos_weight)),
        ("softmax_mse", (x, y), None, n, reference.softmax_mse(x, y)),
        ("softmax_mse_probs", (x, probs), ("fastloss_softmax_mse_options", {"n_threads": 1}),
         n, reference.softmax_mse(x, probs)),
        ("kl_divergence", (x, probs), None, n, reference.kl_divergence(x, probs)),
        ("kl_divergence", (x, np.log(probs)),
         ("fastloss_kl_divergence_options", {"log_target": 1}), n,
         reference.kl_divergence(x, np.log(probs), True)),
        ("entropy", (x,), None, n, reference.entropy(x)),
        ("mse_loss", (x, bits), ("fastloss_mse_loss_options", {}), (n, c),
         reference.mse_loss(x, bits)),
    ]:
        loss, grad = call(name, inputs, options, loss_shape)
        assert_close(loss, expected[0], dtype)
        assert_close(grad, expected[1], dtype)
    x64, bad = x.astype(np.float64), y + c
    assert lib.fastloss_softmax_mse_f64(n, c, ptr(x64), ptr(bad), None, None,
                                        None) == HEADER["constants"]["FASTLOSS_E_TARGET"]


# ------------------------------------------------------------------ gradient boosting

def call_grad_hess(lib, x, target, opts):
    """fastloss_{,binary_}cross_entropy_grad_hess{,_probs}_{f32,f64}: (status, grad, hess)."""
    suffix = "f32" if x.dtype == np.float32 else "f64"
    ref = None if opts is None else ctypes.byref(opts)
    grad, hess = np.full(x.shape, 7, x.dtype), np.full(x.shape, 7, x.dtype)
    if x.ndim == 1:
        status = getattr(lib, f"fastloss_binary_cross_entropy_grad_hess_{suffix}")(
            x.shape[0], ptr(x), ptr(target), ref, ptr(grad), ptr(hess))
    else:
        name = "_probs" if target.ndim == 2 else ""
        status = getattr(lib, f"fastloss_cross_entropy_grad_hess{name}_{suffix}")(
            x.shape[0], x.shape[1], ptr(x), ptr(target), ref, ptr(grad), ptr(hess))
    return status, grad, hess


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["index", "probs", "unnormalised"])
@pytest.mark.parametrize("options", [
    {},
    {"label_smoothing": 0.15},
    {"weighted": True, "hessian_scale": 2.0, "min_hessian": 1e-3},
    {"weighted": True, "label_smoothing": 0.3, "hessian_scale": 10 / 9, "n_threads": 2},
])
@pytest.mark.parametrize("k", [7, 1500])  # 1500: two blocks of the online softmax
def test_cross_entropy_grad_hess_matches_the_reference(lib, dtype, kind, options, k, rng):
    options = dict(options)
    n = 40
    x = (rng.standard_normal((n, k)) * 4).astype(dtype)
    x[0, 3] = -np.inf  # an impossible class
    x[1, :1024 if k > 1024 else 2] = -np.inf  # a block of -inf
    if kind == "index":
        target = rng.integers(0, k, n)
    else:
        target = rng.random((n, k))
        target = (target / target.sum(1, keepdims=True) * (0.6 if kind == "unnormalised"
                                                            else 1.0)).astype(dtype)
    weight = rng.uniform(0.1, 2.0, n) if options.pop("weighted", False) else None
    opts = gh_options(lib, **options, **({} if weight is None
                                          else {"sample_weight": weight.ctypes.data}))
    status, grad, hess = call_grad_hess(lib, x, target, opts)
    assert status == 0
    eg, eh = reference.cross_entropy_grad_hess(
        x, target, weight, options.get("label_smoothing", 0.0),
        options.get("hessian_scale", 1.0), options.get("min_hessian", 0.0))
    # p (1 - p) for p near 1 is as exact as p: its absolute error is that of p, times the
    # factor in front of it (float32's sum of exp differs by a few ulps with the vector
    # width, so 1 - p = 0.0025 may be off by 2e-4 relative; the absolute bound holds)
    w_max = 1.0 if weight is None else weight.max()
    assert_close(grad, eg, dtype, scale=w_max)
    assert_close(hess, eh, dtype, scale=w_max * options.get("hessian_scale", 1.0))


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_hess_special_values_through_the_c_api(lib, dtype):
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, nan, 1.0], [0.0, inf, 1.0], [0.0, -inf, 0.0], [-inf, -inf, -inf],
                  [1e30, 1e30, -1e30]], dtype=dtype)
    y = np.array([0, 0, 1, 0, 2])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    status, grad, hess = call_grad_hess(
        lib, x, y, gh_options(lib, sample_weight=w.ctypes.data, min_hessian=1e-3))
    assert status == 0
    assert np.isnan(grad[[0, 1, 3]]).all() and np.isnan(hess[[0, 1, 3]]).all()
    assert_close(grad[[2, 4]], [[1.0, -2.0, 1.0], [0.5, 0.5, -1.0]], dtype)
    assert_close(hess[[2, 4]], [[0.5, 1e-3, 0.5], [0.25, 0.25, 1e-3]], dtype)

    xb = np.array([inf, -inf, nan, 0.0, 800.0, -800.0], dtype=dtype)
    tb = np.array([0.25, 0.25, 1.0, 0.0, 1.0, 0.0], dtype=dtype)
    status, grad, hess = call_grad_hess(lib, xb, tb, gh_options(lib, min_hessian=1e-3))
    assert status == 0
    np.testing.assert_array_equal(grad[[0, 1, 3, 4, 5]], [0.75, -0.25, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(hess[[0, 1, 3, 4, 5]], np.array([1e-3, 1e-3, 0.25, 1e-3,
                                                                    1e-3], dtype))
    assert np.isnan(grad[2]) and np.isnan(hess[2])


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, 4096, 4096 * 3 + 17])  # rows of 4096 and a shorter one
def test_binary_grad_hess_matches_the_reference(lib, dtype, n, rng):
    x = (rng.standard_normal(n) * 6).astype(dtype)
    t = rng.uniform(0, 1, n).astype(dtype)
    w = rng.uniform(0.1, 2.0, n)
    for opts, args in [(None, (None, 1.0, 0.0)),
                       (gh_options(lib, sample_weight=w.ctypes.data, hessian_scale=1.5,
                                   min_hessian=1e-4, n_threads=3), (w, 1.5, 1e-4))]:
        status, grad, hess = call_grad_hess(lib, x, t, opts)
        assert status == 0
        eg, eh = reference.binary_cross_entropy_grad_hess(x, t, *args)
        assert_close(grad, eg, dtype)
        assert_close(hess, eh, dtype)


@built
def test_grad_hess_results_do_not_depend_on_the_thread_count(lib, rng):
    x = rng.standard_normal((3000, 40)).astype(np.float32)  # above the one-thread size
    y = rng.integers(0, 40, 3000)
    flat = x.reshape(-1)
    for inputs in [(x, y), (flat, (flat > 0).astype(np.float32))]:
        w = rng.uniform(0.5, 2.0, len(inputs[0]))
        runs = [call_grad_hess(lib, *inputs, gh_options(lib, n_threads=t, label_smoothing=0.1,
                                                        sample_weight=w.ctypes.data))
                for t in (1, 2, 3, 0)]
        for status, grad, hess in runs:
            assert status == 0
            assert np.array_equal(grad, runs[0][1]) and np.array_equal(hess, runs[0][2])


@built
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_hess_errors_leave_outputs_untouched(lib, dtype, rng):
    x = rng.standard_normal((3, 4)).astype(dtype)
    y = np.array([0, 1, 2])
    probs = np.full((3, 4), 0.25, dtype)
    xb, tb = x[:, 0].copy(), np.ones(3, dtype)
    code = HEADER["constants"]
    cases = [
        ({"size": 0}, "FASTLOSS_E_OPTIONS"),
        ({"size": ctypes.sizeof(GH) + 8}, "FASTLOSS_E_OPTIONS"),
        ({"label_smoothing": -0.1}, "FASTLOSS_E_SMOOTHING"),
        ({"hessian_scale": 0.0}, "FASTLOSS_E_HESSIAN_SCALE"),
        ({"hessian_scale": np.inf}, "FASTLOSS_E_HESSIAN_SCALE"),
        ({"hessian_scale": np.nan}, "FASTLOSS_E_HESSIAN_SCALE"),
        ({"min_hessian": -1e-9}, "FASTLOSS_E_MIN_HESSIAN"),
        ({"min_hessian": np.nan}, "FASTLOSS_E_MIN_HESSIAN"),
        ({"n_threads": -2}, "FASTLOSS_E_THREADS"),
    ]
    for values, name in cases:
        for inputs in [(x, y), (x, probs), (xb, tb)]:
            status, grad, hess = call_grad_hess(lib, *inputs, gh_options(lib, **values))
            assert status == code[name], (values, inputs[1].shape)
            assert np.all(grad == 7) and np.all(hess == 7)
    status, grad, hess = call_grad_hess(lib, x, np.array([0, 4, 1]), None)
    assert status == code["FASTLOSS_E_TARGET"]
    assert np.all(grad == 7) and np.all(hess == 7)
    status, grad, hess = call_grad_hess(lib, x, np.array([0, -100, 1]), None)  # no ignore
    assert status == code["FASTLOSS_E_TARGET"]
    s = "f32" if dtype == np.float32 else "f64"
    fn = getattr(lib, f"fastloss_cross_entropy_grad_hess_{s}")
    out = np.empty((3, 4), dtype)
    assert fn(3, 4, ptr(x), ptr(y), None, ptr(out), None) == code["FASTLOSS_E_NULL"]
    assert fn(3, 0, ptr(x), ptr(y), None, ptr(out), ptr(out)) == code["FASTLOSS_E_SHAPE"]
    assert fn(0, 4, None, None, None, None, None) == 0
    binary = getattr(lib, f"fastloss_binary_cross_entropy_grad_hess_{s}")
    assert binary(-1, None, None, None, None, None) == code["FASTLOSS_E_SHAPE"]
    assert binary(3, ptr(xb), None, None, ptr(out), ptr(out)) == code["FASTLOSS_E_NULL"]


@built
def test_an_older_smaller_grad_hess_struct_gets_defaults_for_the_rest(lib, rng):
    x = rng.standard_normal((5, 6))
    y = rng.integers(0, 6, 5)
    opts = gh_options(lib, label_smoothing=0.2, hessian_scale=2.0, min_hessian=-1.0)
    opts.size = GH.min_hessian.offset  # min_hessian (garbage here) is not read
    status, grad, hess = call_grad_hess(lib, x, y, opts)
    assert status == 0
    eg, eh = reference.cross_entropy_grad_hess(x, y, None, 0.2, 2.0, 0.0)
    assert_close(grad, eg, np.float64)
    assert_close(hess, eh, np.float64)


# ------------------------------------------------------------------ a C program, a Cython one

def config(flag):
    out = subprocess.run([sys.executable, "-m", "fastloss", "config", flag], check=True,
                         capture_output=True, text=True).stdout.split()
    return out


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / "cross_entropy"
    cmd = [CC, os.path.join(EXAMPLES, "c", "cross_entropy.c"), *config("--cflags"),
           *config("--libs"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def run_c_program(exe, text, *args):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # rpath suffices
    return subprocess.run([str(exe), *args], input=text, capture_output=True, text=True,
                          env=env)


@built
def test_config_prints_include_and_library_flags():
    cflags, libs = config("--cflags"), config("--libs")
    assert cflags == [f"-I{fastloss.get_include()}"]
    assert f"-L{fastloss.get_lib_dir()}" in libs and "-lfastloss" in libs
    assert f"-Wl,-rpath,{fastloss.get_lib_dir()}" in libs
    assert os.path.exists(os.path.join(fastloss.get_include(), "fastloss.h"))


@built
@compiler
@pytest.mark.parametrize("args", [(), ("0.1", "0.001")])
def test_c_program_matches_the_reference(c_program, args):
    rng = np.random.default_rng(0)
    n, c = 7, 33
    logits = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    target = rng.integers(0, c, n)
    target[2] = -100  # ignored row
    text = f"{n} {c}\n" + " ".join(map(repr, logits.ravel().tolist())) + "\n" + \
        " ".join(map(str, target))
    proc = run_c_program(c_program, text, *args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    loss = np.array([float(v) for v in out[:n]])
    grad = np.array([[float(v) for v in line.split()] for line in out[n:2 * n]])
    smoothing, z_loss = (float(args[0]), float(args[1])) if args else (0.0, 0.0)
    expected_loss, expected_grad = reference.cross_entropy(logits, target, None, -100,
                                                           smoothing, z_loss=z_loss)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@built
@compiler
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libm is part of libc elsewhere")
def test_the_library_names_libm_itself(tmp_path):
    # a program that names only -lfastloss links: the library carries its own libm dependency
    exe = tmp_path / "cross_entropy"
    libs = [flag for flag in config("--libs") if flag != "-lm"]
    cmd = [CC, os.path.join(EXAMPLES, "c", "cross_entropy.c"), *config("--cflags"), *libs,
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert run_c_program(exe, "1 2\n0.5 -0.5\n0").returncode == 0


@built
@compiler
def test_c_program_has_no_python_in_it(c_program):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("no ldd")
    libraries = subprocess.run([ldd, str(c_program)], capture_output=True, text=True).stdout
    assert "libfastloss" in libraries
    assert "libpython" not in libraries


@built
@compiler
def test_c_program_reports_errors(c_program):
    proc = run_c_program(c_program, "2 3  0 1 2  1 1 1  0 5")
    assert proc.returncode == 2
    assert "class index is outside [0, c)" in proc.stderr
    proc = run_c_program(c_program, "2 3  0 1 2  1 1 1  0 1", "1.5")
    assert proc.returncode == 2
    assert "label_smoothing must be in [0, 1]" in proc.stderr


@built
def test_cython_consumer_cimports_the_pxd(tmp_path):
    pytest.importorskip("Cython")
    for name in ("consumer.pyx", "setup.py"):
        shutil.copy(os.path.join(EXAMPLES, "cython", name), tmp_path)
    # the fastloss under test, wherever it was imported from (installed or a source tree)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                   check=True, capture_output=True, text=True, env=env)
    script = (
        "import numpy as np, consumer, fastloss.reference as r\n"
        "x = np.random.default_rng(1).standard_normal((5, 9)) * 3\n"
        "y = np.array([0, 8, -100, 3, 4])\n"
        "loss, grad = consumer.cross_entropy_rows(x, y, 0.1, 1e-3)\n"
        "el, eg = r.cross_entropy(x, y, None, -100, 0.1, z_loss=1e-3)\n"
        "np.testing.assert_allclose(loss, el, rtol=1e-12, atol=1e-12)\n"
        "np.testing.assert_allclose(grad, eg, rtol=1e-12, atol=1e-12)\n"
        "try:\n"
        "    consumer.cross_entropy_rows(x, np.array([0, 9, 0, 0, 0]))\n"
        "except ValueError as e:\n"
        "    print('error:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env=env).stdout
    assert "error: a class index is outside [0, c)" in out
