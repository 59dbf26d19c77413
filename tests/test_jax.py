"""fastloss.jax against optax under jit / grad / value_and_grad / vmap; the XLA FFI handler."""

from __future__ import annotations

import ctypes
import inspect
import os
import warnings

import numpy as np
import pytest

import fastloss

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")
fj = pytest.importorskip("fastloss.jax")

NEW_OPTIONS = {"z_loss", "softcap", "temperature"}
has_new_options = pytest.mark.skipif(
    not NEW_OPTIONS <= set(inspect.signature(fastloss.cross_entropy).parameters),
    reason="this fastloss's NumPy API has no z_loss / softcap / temperature yet")
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-11, atol=1e-12)}
N, C = 10, 6


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """float64 needs jax_enable_x64, switched on for the test and restored after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    yield request.param
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def _check(ours, theirs, logits, dtype, *, per_row=True):
    """Values and gradients of ``ours`` vs ``theirs`` (functions of the logits returning
    per-example losses): eager, jit, grad, value_and_grad (jit) and vmap."""
    tol = TOL[dtype]
    x = jnp.asarray(logits, dtype=dtype)
    expected = theirs(x)
    got = ours(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tol)
    np.testing.assert_allclose(jax.jit(ours)(x), expected, **tol)

    w = jnp.asarray(np.linspace(0.5, 1.5, expected.size).reshape(expected.shape), dtype=dtype)

    def weighted(f):
        return lambda x: jnp.sum(f(x) * w)

    g_expected = jax.grad(weighted(theirs))(x)
    np.testing.assert_allclose(jax.grad(weighted(ours))(x), g_expected, **tol)
    v, g = jax.jit(jax.value_and_grad(weighted(ours)))(x)
    np.testing.assert_allclose(v, weighted(theirs)(x), **tol)
    np.testing.assert_allclose(g, g_expected, **tol)

    xb = jnp.stack([x, 0.5 * x[::-1]])
    vb, gb = jax.jit(jax.vmap(jax.value_and_grad(lambda x: jnp.mean(ours(x)))))(xb)
    vt, gt = jax.vmap(jax.value_and_grad(lambda x: jnp.mean(theirs(x))))(xb)
    np.testing.assert_allclose(vb, vt, **tol)
    np.testing.assert_allclose(gb, gt, **tol)


def _logits(rng, *shape):
    return rng.normal(size=shape) * 3


# --------------------------------------------------------------------------------------------
# values and gradients vs optax


@pytest.mark.parametrize("implementation", ["ffi", "callback"])
@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
def test_integer_labels_match_optax(implementation, label_dtype, dtype, rng):
    if label_dtype == "int64" and dtype == "float32":
        pytest.skip("int64 needs jax_enable_x64")
    labels = jnp.asarray(rng.integers(0, C, N), dtype=label_dtype)
    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, labels, implementation=implementation),
           lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels),
           _logits(rng, N, C), dtype)


@pytest.mark.parametrize("implementation", ["ffi", "callback"])
def test_integer_labels_smoothing_where_ignore(implementation, dtype, rng):
    labels = jnp.asarray(rng.integers(0, C, N))
    where = jnp.asarray(np.arange(N) % 3 != 0)
    eps = 0.2

    def theirs(x):
        soft = optax.smooth_labels(jax.nn.one_hot(labels, C, dtype=x.dtype), eps)
        return jnp.where(where, optax.softmax_cross_entropy(x, soft), 0.0)

    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, labels, where=where, label_smoothing=eps, implementation=implementation),
           theirs, _logits(rng, N, C), dtype)
    # ignore_index: the same rows, marked in the labels
    ignored = jnp.where(where, labels, 3 * C)
    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, ignored, ignore_index=3 * C, label_smoothing=eps,
               implementation=implementation), theirs, _logits(rng, N, C), dtype)


def test_integer_labels_batch_shapes_and_1d(dtype, rng):
    labels = jnp.asarray(rng.integers(0, C, (2, 3, N)))
    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(x, labels),
           lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels),
           _logits(rng, 2, 3, N, C), dtype)
    label = jnp.asarray(2)
    x = jnp.asarray(_logits(rng, C), dtype=dtype)
    np.testing.assert_allclose(fj.softmax_cross_entropy_with_integer_labels(x, label),
                               optax.softmax_cross_entropy_with_integer_labels(x, label),
                               **TOL[dtype])


@pytest.mark.parametrize("implementation", ["ffi", "callback"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_integer_labels_reduced(reduction, implementation, dtype, rng):
    """reduction="mean" averages over the examples that are not ignored (PyTorch's rule);
    under vmap each stacked batch is reduced on its own."""
    labels = jnp.asarray(rng.integers(0, C, N)).at[::3].set(-100)
    kept = labels != -100

    def theirs(x):
        per = jnp.where(kept, optax.softmax_cross_entropy_with_integer_labels(
            x, jnp.where(kept, labels, 0)), 0.0)
        return per.sum() if reduction == "sum" else per.sum() / kept.sum()

    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, labels, reduction=reduction, label_smoothing=0.0,
               implementation=implementation), theirs, _logits(rng, N, C), dtype)


@pytest.mark.parametrize("name", ["ce_prob", "bce", "mse", "kl", "softmax_mse", "entropy"])
def test_other_losses_reduced(name, dtype, rng):
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    cases = {
        "ce_prob": (fj.softmax_cross_entropy, optax.softmax_cross_entropy, "mean", jnp.mean),
        "bce": (fj.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy, "mean",
                jnp.mean),
        "mse": (fj.squared_error, optax.squared_error, "sum", jnp.sum),
        "kl": (fj.kl_divergence_with_logits,
               lambda x, t: optax.losses.kl_divergence(jax.nn.log_softmax(x), t), "batchmean",
               lambda v: v.sum() / N),
        "softmax_mse": (fj.softmax_mse, lambda x, t: jnp.sum((jax.nn.softmax(x) - t) ** 2, -1),
                        "mean", jnp.mean),
        "entropy": (lambda x, t, **kw: fj.entropy(x, **kw),
                    lambda x, t: -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), -1),
                    "sum", jnp.sum),
    }
    ours, theirs, reduction, reduce = cases[name]
    _check(lambda x: ours(x, probs, reduction=reduction), lambda x: reduce(theirs(x, probs)),
           _logits(rng, N, C), dtype)


def test_probability_labels_match_optax(dtype, rng):
    labels = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    where = jnp.asarray(np.arange(N) % 4 != 1)
    _check(lambda x: fj.softmax_cross_entropy(x, labels, where=where),
           lambda x: jnp.where(where, optax.softmax_cross_entropy(x, labels), 0.0),
           _logits(rng, N, C), dtype)
    _check(lambda x: fj.softmax_cross_entropy(x, labels, label_smoothing=0.1),
           lambda x: optax.softmax_cross_entropy(x, optax.smooth_labels(labels, 0.1)),
           _logits(rng, N, C), dtype)


def test_sigmoid_bce_and_squared_error_match_optax(dtype, rng):
    labels = jnp.asarray(rng.uniform(size=(N, C)), dtype=dtype)
    _check(lambda x: fj.sigmoid_binary_cross_entropy(x, labels),
           lambda x: optax.sigmoid_binary_cross_entropy(x, labels), _logits(rng, N, C), dtype)
    _check(lambda x: fj.squared_error(x, labels), lambda x: optax.squared_error(x, labels),
           _logits(rng, N, C), dtype)
    _check(fj.squared_error, optax.squared_error, _logits(rng, 3, C), dtype)


@pytest.mark.parametrize("log_targets", [False, True])
def test_kl_divergence_with_logits_matches_optax(log_targets, dtype, rng):
    targets = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    if log_targets:
        targets = jnp.log(targets)
        theirs = optax.losses.kl_divergence_with_log_targets
    else:
        targets = targets.at[0, 1].set(0.0)  # 0 log 0 = 0
        theirs = optax.losses.kl_divergence
    _check(lambda x: fj.kl_divergence_with_logits(x, targets, log_targets=log_targets),
           lambda x: theirs(jax.nn.log_softmax(x), targets), _logits(rng, N, C), dtype)


def test_softmax_mse_and_entropy(dtype, rng):
    labels = jnp.asarray(rng.integers(0, C, N))
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    _check(lambda x: fj.softmax_mse(x, labels),
           lambda x: jnp.sum((jax.nn.softmax(x) - jax.nn.one_hot(labels, C, dtype=x.dtype)) ** 2,
                             -1),
           _logits(rng, N, C), dtype)
    _check(lambda x: fj.softmax_mse(x, probs),
           lambda x: jnp.sum((jax.nn.softmax(x) - probs) ** 2, -1), _logits(rng, N, C), dtype)
    _check(fj.entropy, lambda x: -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), -1),
           _logits(rng, N, C), dtype)


def test_gradient_with_respect_to_float_labels(dtype, rng):
    """Rarely wanted, but not silently zero: float labels get their cotangent too."""
    x = jnp.asarray(_logits(rng, N, C), dtype=dtype)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    pairs = [(fj.softmax_cross_entropy, optax.softmax_cross_entropy),
             (fj.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy),
             (fj.squared_error, optax.squared_error),
             (fj.kl_divergence_with_logits,
              lambda x, t: optax.kl_divergence(jax.nn.log_softmax(x), t)),
             (lambda x, t: fj.softmax_cross_entropy(x, t, reduction="mean"),
              lambda x, t: optax.softmax_cross_entropy(x, t).mean())]
    for ours, theirs in pairs:
        g_ours = jax.jit(jax.grad(lambda x, t, f=ours: f(x, t).sum(), argnums=(0, 1)))(x, p)
        g_theirs = jax.grad(lambda x, t, f=theirs: f(x, t).sum(), argnums=(0, 1))(x, p)
        for a, b in zip(g_ours, g_theirs):
            np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_precision_computed_in_float32(half, rng):
    x32 = jnp.asarray(_logits(rng, N, C), dtype=jnp.float32).astype(half).astype(jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, N))
    f = jax.value_and_grad(lambda x: fj.softmax_cross_entropy_with_integer_labels(x, labels).mean())
    v, g = jax.jit(f)(x32.astype(half))
    v32, g32 = f(x32)
    assert v.dtype == g.dtype == jnp.dtype(half)
    np.testing.assert_allclose(v.astype(np.float32), v32, rtol=1e-2)
    np.testing.assert_allclose(g.astype(np.float32), g32, rtol=1e-2, atol=1e-3)


def _transformed(x, softcap, temperature):
    """The logits the softmax sees: softcap * tanh(x / softcap), then / temperature."""
    z = softcap * jnp.tanh(x / softcap) if softcap else x
    return z / temperature


@has_new_options
@pytest.mark.parametrize("implementation", ["ffi", "callback"])
@pytest.mark.parametrize("z_loss,softcap,temperature",
                         [(1e-3, None, 1.0), (0.0, 5.0, 1.0), (0.0, None, 0.7), (1e-2, 4.0, 1.5)])
def test_cross_entropy_options_match_reference(implementation, z_loss, softcap, temperature,
                                               dtype, rng):
    labels = jnp.asarray(rng.integers(0, C, N))

    def theirs(x):
        z = _transformed(x, softcap, temperature)
        return (optax.softmax_cross_entropy_with_integer_labels(z, labels)
                + z_loss * jax.nn.logsumexp(z, -1) ** 2)

    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, labels, z_loss=z_loss, softcap=softcap, temperature=temperature,
               implementation=implementation),
           theirs, _logits(rng, N, C), dtype)


@has_new_options
@pytest.mark.parametrize("implementation", ["ffi", "callback"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_all_options_with_ignored_rows(implementation, reduction, dtype, rng):
    """Every option at once, with ignored rows: "mean" averages the CE and z-loss terms over
    the counted rows, and the gradient is scaled inside the kernel (grad_scale on the FFI
    path, per vmapped group)."""
    z_loss, softcap, temperature, eps = 2e-2, 4.0, 1.3, 0.15
    labels = jnp.asarray(rng.integers(0, C, N)).at[1::4].set(-100)
    kept = labels != -100

    def theirs(x):
        z = _transformed(x, softcap, temperature)
        soft = optax.smooth_labels(jax.nn.one_hot(jnp.where(kept, labels, 0), C,
                                                  dtype=x.dtype), eps)
        per = optax.softmax_cross_entropy(z, soft) + z_loss * jax.nn.logsumexp(z, -1) ** 2
        per = jnp.where(kept, per, 0.0)
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.sum() / kept.sum()

    _check(lambda x: fj.softmax_cross_entropy_with_integer_labels(
               x, labels, z_loss=z_loss, softcap=softcap, temperature=temperature,
               label_smoothing=eps, reduction=reduction, implementation=implementation),
           theirs, _logits(rng, N, C), dtype)


# --------------------------------------------------------------------------------------------
# errors


def test_errors(rng):
    x = jnp.asarray(_logits(rng, N, C), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, N))
    with pytest.raises(ValueError, match="last axis"):
        fj.softmax_cross_entropy_with_integer_labels(x, labels[:C], axis=0)
    with pytest.raises(NotImplementedError, match="batch shape"):
        fj.softmax_cross_entropy_with_integer_labels(x, labels, where=jnp.ones((N, C), bool))
    with pytest.raises(TypeError, match="integers"):
        fj.softmax_cross_entropy_with_integer_labels(x, labels.astype(jnp.float32))
    bad = labels.at[3].set(C)
    for implementation in ("ffi", "callback"):
        with pytest.raises(Exception, match="out of range"):
            jax.block_until_ready(jax.jit(lambda x, i=implementation:
                                          fj.softmax_cross_entropy_with_integer_labels(
                                              x, bad, implementation=i))(x))
    for bad_threads in (0, -1):  # as in the NumPy API
        for call in (fj.softmax_cross_entropy_with_integer_labels, fj.softmax_mse):
            with pytest.raises(ValueError, match="n_threads must be a positive integer"):
                call(x, labels, n_threads=bad_threads)
        with pytest.raises(ValueError, match="n_threads must be a positive integer"):
            fj.entropy(x, n_threads=bad_threads)
    with pytest.raises(TypeError, match="n_threads"):
        fj.softmax_cross_entropy(x, jax.nn.softmax(x), n_threads=1.5)
    with pytest.raises(RuntimeError, match="implementation='ffi'"):
        fj.softmax_cross_entropy_with_integer_labels(x, labels, backend="numba",
                                                     implementation="ffi")
    # an option the C API refuses is an error of the FFI call, with the C API's message
    if fj.ffi_status() == "available":
        for kw, match in [({"temperature": -1.0}, "temperature must be finite and > 0"),
                          ({"softcap": np.inf}, "softcap must be finite"),
                          ({"z_loss": -1.0}, "z_loss must be finite and >= 0")]:
            with pytest.raises(Exception, match=match):
                jax.block_until_ready(fj.softmax_cross_entropy_with_integer_labels(
                    x, labels, implementation="ffi", **kw))
    if not NEW_OPTIONS <= set(inspect.signature(fastloss.cross_entropy).parameters):
        with pytest.raises(TypeError, match="z_loss"):
            fj.softmax_cross_entropy_with_integer_labels(x, labels, z_loss=1e-4)


# --------------------------------------------------------------------------------------------
# the XLA FFI handler: the ABI it relies on, its build, the fallback


def test_ffi_handler_is_used_and_its_abi_is_the_tested_one():
    assert fj.ffi_status() == "available"
    assert fj._FFI.api_version[0] == fj.FFI_API_TESTED[0] == 0
    header = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
    text = open(header).read()
    assert "#define XLA_FFI_API_MAJOR 0" in text
    assert f"#define XLA_FFI_API_MINOR {fj.FFI_API_TESTED[1]}" in text, (
        "jaxlib's XLA FFI minor version changed: re-run these tests and update FFI_API_TESTED")
    # the lowered program calls the FFI target (not a Python callback)
    x = jnp.ones((4, 3), jnp.float32)
    f = jax.value_and_grad(lambda x: fj.softmax_cross_entropy_with_integer_labels(
        x, jnp.arange(4) % 3).sum())
    text = jax.jit(f).lower(x).as_text()
    assert fj.FFI_TARGET in text and "callback" not in text
    # ... with fastloss's options too (passed as attributes of the FFI call)
    f = jax.value_and_grad(lambda x: fj.softmax_cross_entropy_with_integer_labels(
        x, jnp.arange(4) % 3, z_loss=1e-4, softcap=30.0, temperature=0.9,
        reduction="mean"))
    text = jax.jit(f).lower(x).as_text()
    assert fj.FFI_TARGET in text and "callback" not in text
    assert "softcap" in text and "temperature" in text and "z_loss" in text


class _ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _CallFramePrefix(ctypes.Structure):  # XLA_FFI_CallFrame up to `stage`
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("extension_start", ctypes.POINTER(_MetadataExtension)),
                ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("rest", ctypes.c_byte * 256)]


def test_ffi_handler_answers_the_metadata_query():
    """XLA asks a handler for the FFI version it was built with through a call frame whose
    first extension is XLA_FFI_Extension_Metadata (= 1); layouts as in c_api.h 0.x."""
    assert fj.ffi_status() == "available"
    # struct_size as XLA_FFI_Metadata_STRUCT_SIZE: up to and including `traits`
    metadata = _Metadata(struct_size=_Metadata.traits.offset + 4)
    ext = _MetadataExtension(_ExtensionBase(ctypes.sizeof(_MetadataExtension), 1, None),
                             ctypes.pointer(metadata))
    frame = _CallFramePrefix(struct_size=0, extension_start=ctypes.pointer(ext))
    handler = fj._FFI.library.fastloss_jax_ce_index
    handler.restype = ctypes.c_void_p
    handler.argtypes = [ctypes.c_void_p]
    assert handler(ctypes.addressof(frame)) is None  # NULL: success
    assert (metadata.api_version.major_version, metadata.api_version.minor_version) == \
        fj._FFI.api_version
    assert metadata.api_version.struct_size == ctypes.sizeof(_ApiVersion)
    assert metadata.traits == 0


def test_ffi_handler_builds_into_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(fj.ENV_CACHE, str(tmp_path))
    path = fj._build()
    assert os.path.dirname(path) == str(tmp_path) and os.path.exists(path)
    assert fj._build() == path  # cached
    lib = ctypes.CDLL(path)
    assert (lib.fastloss_jax_ffi_api_major(), lib.fastloss_jax_ffi_api_minor()) == \
        fj._FFI.api_version


def test_falls_back_to_pure_callback_with_a_warning(tmp_path, monkeypatch, rng):
    monkeypatch.setenv(fj.ENV_CACHE, str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(fj._FFI, "state", None)
    with pytest.warns(RuntimeWarning, match="pure_callback"):
        assert "compiler" in fj.ffi_status()
    x = jnp.asarray(_logits(rng, N, C), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, N))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        loss = jax.jit(fj.softmax_cross_entropy_with_integer_labels)(x, labels)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(x, labels),
                               rtol=2e-5)
    monkeypatch.setenv(fj.ENV_FFI, "0")
    monkeypatch.setattr(fj._FFI, "state", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # disabling it on purpose does not warn
        assert "disabled" in fj.ffi_status()


def test_import_fastloss_jax_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fastloss.jax; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False"]


OTHER_LOSSES = {
    "ce_prob": lambda x, p, i, **kw: fj.softmax_cross_entropy(
        x, p, label_smoothing=0.1, z_loss=1e-3, softcap=5.0, temperature=0.8, **kw),
    "bce": lambda x, p, i, **kw: fj.sigmoid_binary_cross_entropy(x, p, **kw),
    "mse": lambda x, p, i, **kw: fj.squared_error(x, p, **kw),
    "kl": lambda x, p, i, **kw: fj.kl_divergence_with_logits(x, p, **kw),
    "kl_log": lambda x, p, i, **kw: fj.kl_divergence_with_logits(x, jnp.log(p),
                                                                 log_targets=True, **kw),
    "softmax_mse_index": lambda x, p, i, **kw: fj.softmax_mse(x, i, **kw),
    "softmax_mse_prob": lambda x, p, i, **kw: fj.softmax_mse(x, p, **kw),
    "entropy": lambda x, p, i, **kw: fj.entropy(x, **kw),
}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", OTHER_LOSSES)
def test_other_losses_through_the_ffi_match_the_callback(name, reduction, dtype, rng,
                                                         monkeypatch):
    """Every loss lowers to the FFI rows handler (no Python callback) and gives the values
    and gradients of the pure_callback path, under jit, value_and_grad and vmap."""
    assert fj.ffi_status() == "available"
    loss = OTHER_LOSSES[name]
    x = jnp.asarray(_logits(rng, N, C), dtype=dtype)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(N, C)), dtype=dtype))
    i = jnp.asarray(rng.integers(0, C, N))

    def total(x):
        return jnp.sum(loss(x, p, i, reduction=reduction) * 1.5)

    step = jax.jit(jax.value_and_grad(total))
    text = step.lower(x).as_text()
    assert fj.FFI_ROWS_TARGET in text and "callback" not in text
    xb = jnp.stack([x, 0.5 * x[::-1]])
    batched = jax.jit(jax.vmap(jax.value_and_grad(total)))
    ffi = (step(x), batched(xb))
    monkeypatch.setattr(fj, "_use_ffi", lambda *args: False)
    step = jax.jit(jax.value_and_grad(total))
    assert "callback" in step.lower(x).as_text()
    callback = (step(x), jax.jit(jax.vmap(jax.value_and_grad(total)))(xb))
    for a, b in zip(jax.tree_util.tree_leaves(ffi), jax.tree_util.tree_leaves(callback)):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_rows_handler_refuses_out_of_range_class_indices(rng):
    x = jnp.asarray(_logits(rng, 4, 3), dtype=jnp.float32)
    with pytest.raises(Exception, match="out of range"):
        jax.block_until_ready(jax.jit(lambda x: fj.softmax_mse(x, jnp.array([0, 1, 3, 2])))(x))
