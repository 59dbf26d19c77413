"""fastloss.torch against torch.nn.functional: values, gradients, gradcheck, opcheck, compile."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastloss

torch = pytest.importorskip("torch")
F = torch.nn.functional
ft = pytest.importorskip("fastloss.torch")

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6),
       torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)}
N, C = 12, 7


def _close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def _compare(ours, theirs, x, dtype, reduction, *go_shape):
    """Loss and gradient of ``ours(x)`` vs ``theirs(x)``; half dtypes are compared with the
    float32 computation (fastloss computes them in float32), rounded to the dtype."""
    ref_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    a = x.detach().to(dtype).requires_grad_()
    b = x.detach().to(dtype).to(ref_dtype).requires_grad_()
    la, lb = ours(a), theirs(b)
    assert la.dtype == dtype and la.shape == lb.shape
    _close(la, lb.to(dtype), dtype)
    go = torch.rand(lb.shape, dtype=torch.float64) + 0.5 if reduction == "none" else 1.7
    go_a = go.to(dtype) if reduction == "none" else go
    go_b = go_a.to(ref_dtype) if reduction == "none" else go
    (la * go_a).sum().backward()
    (lb * go_b).sum().backward()
    assert a.grad.dtype == dtype
    _close(a.grad, b.grad.to(dtype), dtype)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(20261122)


def _logits(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * 3


# --------------------------------------------------------------------------------------------
# values and gradients vs torch


CE_CASES = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index": {"ignore_index": 2},
    "smoothing": {"label_smoothing": 0.15},
    "all": {"weight": True, "ignore_index": 2, "label_smoothing": 0.3},
    "probabilities": {"soft": True},
    "probabilities_weight_smoothing": {"soft": True, "weight": True, "label_smoothing": 0.2},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_matches_torch(case, reduction, dtype, gen):
    opts = dict(CE_CASES[case])
    x = _logits(gen, N, C)
    if opts.pop("soft", False):
        target = torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64), -1)
    else:
        target = torch.randint(0, C, (N,), generator=gen)
        target[::4] = 2  # some ignored rows when ignore_index=2
    if opts.pop("weight", False):
        opts["weight"] = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5

    def call(fn):
        def f(x):
            t = target.to(x.dtype) if target.is_floating_point() else target
            w = opts.get("weight")
            kw = dict(opts, weight=None if w is None else w.to(x.dtype))
            return fn(x, t, reduction=reduction, **kw)
        return f

    _compare(call(ft.cross_entropy), call(F.cross_entropy), x, dtype, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_1d_input(reduction, gen):
    x = _logits(gen, C)
    t = torch.tensor(3)
    _compare(lambda x: ft.cross_entropy(x, t, reduction=reduction),
             lambda x: F.cross_entropy(x, t, reduction=reduction), x, torch.float64, reduction)


def test_cross_entropy_float16_and_noncontiguous(gen):
    x = _logits(gen, C, N).t()  # non-contiguous view
    t = torch.randint(0, C, (N,), generator=gen)
    _compare(lambda x: ft.cross_entropy(x, t), lambda x: F.cross_entropy(x, t), x,
             torch.float16, "mean")
    _compare(lambda x: ft.cross_entropy(x, t), lambda x: F.cross_entropy(x, t), x,
             torch.float32, "mean")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "weight", "pos_weight", "both"])
def test_bce_matches_torch(case, reduction, dtype, gen):
    x = _logits(gen, N, C)
    t = torch.rand(N, C, generator=gen, dtype=torch.float64)
    w = pw = None
    if case in ("weight", "both"):
        w = torch.rand(1, C, generator=gen, dtype=torch.float64) + 0.5
    if case in ("pos_weight", "both"):
        pw = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5

    def call(fn):
        return lambda x: fn(x, t.to(x.dtype), None if w is None else w.to(x.dtype),
                            reduction=reduction, pos_weight=None if pw is None else pw.to(x.dtype))

    _compare(call(ft.binary_cross_entropy_with_logits), call(F.binary_cross_entropy_with_logits),
             x, dtype, reduction)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_with_logits_matches_torch(log_target, reduction, dtype, gen):
    x = _logits(gen, N, C)
    t = torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64), -1)
    if log_target:
        t = t.log()
    else:
        t[0, 1] = 0.0  # 0 log 0 = 0 (with log_target, torch gives NaN for a -inf target)

    def theirs(x):
        lp = F.log_softmax(x, -1)
        if reduction == "none":  # fastloss: one value per row
            return F.kl_div(lp, t.to(x.dtype), reduction="none", log_target=log_target).sum(-1)
        return F.kl_div(lp, t.to(x.dtype), reduction=reduction, log_target=log_target)

    _compare(lambda x: ft.kl_div_with_logits(x, t.to(x.dtype), reduction, log_target), theirs,
             x, dtype, reduction)


def test_kl_div_batchmean_1d(gen):
    x = _logits(gen, C)
    t = torch.softmax(torch.randn(C, generator=gen, dtype=torch.float64), -1)
    _compare(lambda x: ft.kl_div_with_logits(x, t, "batchmean"),
             lambda x: F.kl_div(F.log_softmax(x, -1), t, reduction="batchmean"), x,
             torch.float64, "mean")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_torch(reduction, dtype, gen):
    x = _logits(gen, N, C)
    t = torch.randn(N, C, generator=gen, dtype=torch.float64)
    _compare(lambda x: ft.mse_loss(x, t.to(x.dtype), reduction=reduction),
             lambda x: F.mse_loss(x, t.to(x.dtype), reduction=reduction), x, dtype, reduction)


def _reduce(rows, reduction):
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_softmax_mse_and_entropy_match_torch(soft, reduction, dtype, gen):
    x = _logits(gen, N, C)
    t = (torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64), -1) if soft
         else torch.randint(0, C, (N,), generator=gen))

    def theirs(x):
        dense = t.to(x.dtype) if soft else F.one_hot(t, C).to(x.dtype)
        return _reduce(((torch.softmax(x, -1) - dense) ** 2).sum(-1), reduction)

    _compare(lambda x: ft.softmax_mse(x, t.to(x.dtype) if soft else t, reduction), theirs, x,
             dtype, reduction)
    if soft:
        _compare(lambda x: ft.entropy(x, reduction),
                 lambda x: _reduce(-(torch.softmax(x, -1) * torch.log_softmax(x, -1)).sum(-1),
                                   reduction), x, dtype, reduction)


def _ce_with_options(x, t, weight, ignore_index, smoothing, reduction, z_loss, softcap,
                     temperature):
    """The reference of fastloss's cross-entropy options, in torch."""
    z = softcap * torch.tanh(x / softcap) if softcap else x
    z = z / temperature
    ce = F.cross_entropy(z, t, weight=weight, ignore_index=ignore_index,
                         label_smoothing=smoothing, reduction=reduction)
    counted = (t != ignore_index).to(z.dtype)
    zterm = z_loss * torch.logsumexp(z, -1) ** 2 * counted
    return ce + {"mean": zterm.sum() / counted.sum(), "sum": zterm.sum(), "none": zterm}[reduction]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("z_loss,softcap,temperature",
                         [(1e-3, None, 1.0), (0.0, 5.0, 1.0), (0.0, None, 0.7), (1e-2, 4.0, 1.5)])
def test_cross_entropy_options_match_reference(z_loss, softcap, temperature, reduction, dtype,
                                               gen):
    x = _logits(gen, N, C)
    t = torch.randint(0, C, (N,), generator=gen)
    t[::4] = 2
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    opts = dict(ignore_index=2, label_smoothing=0.1, z_loss=z_loss, softcap=softcap,
                temperature=temperature)
    _compare(lambda x: ft.cross_entropy(x, t, w.to(x.dtype), reduction=reduction, **opts),
             lambda x: _ce_with_options(x, t, w.to(x.dtype), 2, 0.1, reduction, z_loss, softcap,
                                        temperature), x, dtype, reduction)


def test_cpu_tensors_reach_the_kernels_without_a_copy(monkeypatch, gen):
    x = torch.randn(N, C, generator=gen, requires_grad=True)
    t = torch.randint(0, C, (N,), generator=gen)
    shared = []
    real = fastloss.cross_entropy_with_grad

    def spy(logits, target, **kw):
        shared.append((np.shares_memory(logits, x.detach().numpy()),
                       np.shares_memory(target, t.numpy())))
        loss, grad = real(logits, target, **kw)
        shared.append(grad)
        return loss, grad

    monkeypatch.setattr(fastloss, "cross_entropy_with_grad", spy)
    ft.cross_entropy(x, t, label_smoothing=0.1).backward()
    assert shared[0] == (True, True)
    assert np.shares_memory(x.grad.numpy(), shared[1])  # the kernel's output is the .grad

    # the common call (default options) has its own short path: the same holds there
    shared.clear()
    fast = fastloss._api._fast_cross_entropy_run

    def fast_spy(logits, target, reduction, threads, grad):
        shared.append((np.shares_memory(logits, x.detach().numpy()),
                       np.shares_memory(target, t.numpy())))
        shared.append(grad)
        return fast(logits, target, reduction, threads, grad)

    monkeypatch.setattr(fastloss._api, "_fast_cross_entropy_run", fast_spy)
    x.grad = None
    ft.cross_entropy(x, t).backward()
    assert shared[0] == (True, True)
    assert np.shares_memory(x.grad.numpy(), shared[1])


# --------------------------------------------------------------------------------------------
# gradcheck, opcheck


GRADCHECK = {
    "cross_entropy": lambda x, t, p: ft.cross_entropy(x, t, label_smoothing=0.1),
    "cross_entropy_none": lambda x, t, p: ft.cross_entropy(x, t, reduction="none"),
    "cross_entropy_prob": lambda x, t, p: ft.cross_entropy(x, p, reduction="sum"),
    "bce": lambda x, t, p: ft.binary_cross_entropy_with_logits(x, p, reduction="none"),
    "kl": lambda x, t, p: ft.kl_div_with_logits(x, p, "batchmean"),
    "softmax_mse": lambda x, t, p: ft.softmax_mse(x, t, "none"),
    "entropy": lambda x, t, p: ft.entropy(x, "sum"),
    "mse": lambda x, t, p: ft.mse_loss(x, p),
}


@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck(name, gen):
    x = _logits(gen, 5, 4).requires_grad_()
    t = torch.randint(0, 4, (5,), generator=gen)
    p = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda x: GRADCHECK[name](x, t, p), (x,))


def _op_cases(gen):
    x = _logits(gen, 5, 4)
    t = torch.randint(0, 4, (5,), generator=gen)
    p = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), -1)
    w = torch.rand(4, generator=gen, dtype=torch.float64)
    ops = torch.ops.fastloss
    ce = (-100, 0.0)  # ignore_index, label_smoothing
    new = (0.0, 0.0, 1.0)  # z_loss, softcap, temperature
    return [
        (ops.cross_entropy, (x, t, w, -100, 0.1, "mean", *new, True, "auto", 0)),
        (ops.cross_entropy, (x, p, None, *ce, "none", *new, True, "auto", 0)),
        (ops.cross_entropy, (x.float(), t, None, *ce, "sum", *new, False, "auto", 0)),
        (ops.binary_cross_entropy_with_logits, (x, p, w, w, "none", True, "auto", 0)),
        (ops.softmax_mse, (x, t, "mean", True, "auto", 0)),
        (ops.kl_div_with_logits, (x, p, False, "batchmean", True, "auto", 0)),
        (ops.entropy, (x, "none", True, "auto", 0)),
        (ops.mse_loss, (x, p, "sum", True, "auto", 0)),
        (ops.cross_entropy_overwrite, (x.clone(), t, None, *ce, "mean", *new, "auto", 0)),
        (ops.binary_cross_entropy_with_logits_overwrite,
         (x.clone(), p, None, None, "sum", "auto", 0)),
    ]


@pytest.mark.parametrize("index", range(10))
def test_opcheck(index, gen):
    op, args = _op_cases(gen)[index]
    want_grad = "overwrite" not in str(op) and args[-3]
    if want_grad:  # the functional ops computing a gradient: autograd is checked too
        args = (args[0].clone().requires_grad_(),) + args[1:]
    torch.library.opcheck(op, args)


# --------------------------------------------------------------------------------------------
# grad_output, in-place backward, modules, errors


def test_backward_scales_by_grad_output_and_skips_one(gen):
    x = _logits(gen, N, C).requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    (g1,) = torch.autograd.grad(ft.cross_entropy(x, t), x)
    (g3,) = torch.autograd.grad(ft.cross_entropy(x, t) * 3, x)
    torch.testing.assert_close(g3, 3 * g1)
    loss, grad = torch.ops.fastloss.cross_entropy(x, t, None, -100, 0.0, "mean", 0.0, 0.0, 1.0,
                                                  True, "auto", 0)
    assert not grad.requires_grad
    (g,) = torch.autograd.grad(loss, x)
    assert g.data_ptr() == grad.data_ptr()  # grad_output == 1: no multiplication, no copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_backward_consumes_logits(dtype, gen):
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, C).to(dtype)
    inp = torch.randn(N, 6, generator=gen).to(dtype)
    t = torch.randint(0, C, (N,), generator=gen)
    logits = lin(inp)
    loss = ft.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=True)
    expected_grad = torch.autograd.grad(F.cross_entropy(lin(inp).float(), t, label_smoothing=0.1),
                                        lin.weight)[0]
    loss.backward()
    _close(loss, F.cross_entropy(lin(inp).float(), t, label_smoothing=0.1).to(dtype), dtype)
    _close(lin.weight.grad, expected_grad.to(dtype), dtype)
    # the logits now hold d loss / d logits: each row sums to 0
    assert not torch.allclose(logits.detach().float(), lin(inp).detach().float())
    assert logits.detach().float().sum(-1).abs().max() < 1e-2


def test_inplace_backward_detects_saved_logits(gen):
    x = torch.randn(N, C, generator=gen).requires_grad_()
    logits = torch.exp(x)  # exp saves its output for backward
    loss = ft.cross_entropy(logits, torch.randint(0, C, (N,), generator=gen),
                            inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_modules_match_torch(gen):
    x = _logits(gen, N, C)
    t = torch.randint(0, C, (N,), generator=gen)
    w = torch.rand(C, generator=gen, dtype=torch.float64)
    pairs = [
        (ft.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.1), t),
        (ft.BCEWithLogitsLoss(pos_weight=w, reduction="sum"),
         torch.nn.BCEWithLogitsLoss(pos_weight=w, reduction="sum"),
         torch.rand(N, C, dtype=torch.float64)),
        (ft.MSELoss(reduction="none"), torch.nn.MSELoss(reduction="none"), x.flip(0)),
    ]
    for ours, theirs, target in pairs:
        _compare(lambda x, f=ours, y=target: f(x, y), lambda x, f=theirs, y=target: f(x, y),
                 x, torch.float64, ours.reduction)
    assert "weight" in dict(ft.CrossEntropyLoss(w).named_buffers())
    kl = ft.KLDivWithLogitsLoss(reduction="batchmean")
    p = torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64), -1)
    torch.testing.assert_close(kl(x, p), F.kl_div(F.log_softmax(x, -1), p, reduction="batchmean"))
    torch.testing.assert_close(ft.EntropyLoss()(x), ft.entropy(x))
    torch.testing.assert_close(ft.SoftmaxMSELoss()(x, t), ft.softmax_mse(x, t))


def test_errors(gen):
    x = torch.randn(4, C, 3, generator=gen)
    with pytest.raises(ValueError, match="move the class axis last"):
        ft.cross_entropy(x, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="move the class axis last"):
        ft.entropy(x)
    x = torch.randn(4, C, generator=gen, requires_grad=True)
    p = torch.softmax(torch.randn(4, C, generator=gen), -1).requires_grad_()
    with pytest.raises(ValueError, match="target.detach"):
        ft.cross_entropy(x, p)
    with pytest.raises(IndexError, match="out of range"):
        ft.cross_entropy(x, torch.tensor([0, 1, 2, C]))
    # create_graph=True must not silently give a constant gradient
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ft.cross_entropy(x, torch.tensor([0, 1, 2, 3])), x,
                            create_graph=True)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0, got -0.0001"):
        ft.cross_entropy(x, torch.tensor([0, 1, 2, 3]), z_loss=-1e-4)
    with pytest.raises(ValueError, match="softcap must be None or a finite number > 0"):
        ft.cross_entropy(x, torch.tensor([0, 1, 2, 3]), softcap=0.0)


def test_import_fastloss_does_not_import_torch():
    code = "import sys, fastloss; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------
# torch.compile (few: compiling is slow)


def test_compiled_training_matches_eager(gen):
    """A small MLP trained 3 steps with the loss under torch.compile(fullgraph=True) (no
    graph break) ends where eager training ends; so does the in-place variant."""

    def train(compiled: bool, inplace: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, C))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        data = [(torch.randn(32, 8, generator=g), torch.randint(0, C, (32,), generator=g))
                for _ in range(3)]

        def loss_fn(inp, target):
            return ft.cross_entropy(model(inp), target, label_smoothing=0.1,
                                    inplace_backward=inplace)

        step = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn
        losses = []
        for inp, target in data:
            opt.zero_grad()
            loss = step(inp, target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    eager_losses, eager_params = train(False, False)
    for inplace in (False, True):
        losses, params = train(True, inplace)
        np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
        for p, q in zip(params, eager_params):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# plain eager mode calls the ops' implementations directly (no dispatcher); elsewhere the ops


EAGER_CALLS = {
    "cross_entropy": lambda x, t: ft.cross_entropy(x, t.argmax(-1), label_smoothing=0.1),
    "cross_entropy_none": lambda x, t: ft.cross_entropy(x, t.argmax(-1), reduction="none"),
    "bce": lambda x, t: ft.binary_cross_entropy_with_logits(x, t.sigmoid()),
    "kl": lambda x, t: ft.kl_div_with_logits(x, t.softmax(-1), reduction="batchmean"),
    "softmax_mse": lambda x, t: ft.softmax_mse(x, t.softmax(-1), reduction="none"),
    "entropy": lambda x, t: ft.entropy(x),
    "mse": lambda x, t: ft.mse_loss(x, t, reduction="sum"),
}


def _loss_and_grad(call, x, t, go):
    a = x.detach().clone().requires_grad_()
    loss = call(a, t)
    (loss * go(loss)).sum().backward()
    return loss.detach(), a.grad, loss.grad_fn


@pytest.mark.parametrize("name", EAGER_CALLS)
def test_eager_path_is_bit_identical_to_the_op(name, gen, monkeypatch):
    call = EAGER_CALLS[name]
    x, t = _logits(gen, N, C).float(), _logits(gen, N, C).float()

    def go(loss):
        return torch.linspace(0.5, 2.0, loss.numel()).reshape(loss.shape)

    loss, grad, fn = _loss_and_grad(call, x, t, go)
    assert type(fn).__name__ == ("_CommonCrossEntropyBackward" if name == "cross_entropy_none"
                                 else "_EagerBackward")
    monkeypatch.setattr(ft, "_plain_eager", lambda *tensors: False)
    loss_op, grad_op, fn_op = _loss_and_grad(call, x, t, go)
    assert type(fn_op).__name__ != "_EagerBackward"
    torch.testing.assert_close(loss, loss_op, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_op, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_common_cross_entropy_is_bit_identical_to_the_op(reduction, dtype, gen, monkeypatch):
    """The common call (default options, class indices) takes its own short path; it gives
    the op's loss and gradient bit for bit, for a grad_output of 1 and per row."""
    x = _logits(gen, 300, 40).to(dtype)
    t = torch.randint(0, 40, (300,), generator=gen)
    for go in (lambda loss: torch.ones_like(loss), lambda loss: torch.linspace(
            0.5, 2.0, loss.numel(), dtype=dtype).reshape(loss.shape)):
        results = []
        for path in ("common", "eager", "op"):
            if path == "eager":
                monkeypatch.setattr(ft, "_common_cross_entropy", lambda *args: None)
            if path == "op":
                monkeypatch.setattr(ft, "_plain_eager", lambda *tensors: False)
            results.append(_loss_and_grad(
                lambda x_, t_: ft.cross_entropy(x_, t_, reduction=reduction), x, t, go))
        monkeypatch.undo()
        names = [type(fn).__name__ for _, _, fn in results]
        assert names[:2] == ["_CommonCrossEntropyBackward", "_EagerBackward"]
        assert names[2] not in names[:2]
        for loss, grad, _ in results[1:]:
            assert loss.dtype == results[0][0].dtype == dtype
            torch.testing.assert_close(results[0][0], loss, rtol=0, atol=0)
            torch.testing.assert_close(results[0][1], grad, rtol=0, atol=0)
    with torch.no_grad():  # no graph: the forward alone, the same loss
        torch.testing.assert_close(ft.cross_entropy(x, t, reduction=reduction),
                                   results[0][0], rtol=0, atol=0)


def test_common_cross_entropy_leaves_other_calls_to_the_general_path(gen):
    """Anything but the common case gets the general path's result and errors."""
    x = _logits(gen, N, C).float().requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    bad = t.clone()
    bad[3] = C
    with pytest.raises(IndexError, match="target 7 at position 3 is out of range"):
        ft.cross_entropy(x, bad)
    with pytest.raises(ValueError, match="reduction"):
        ft.cross_entropy(x, t, reduction="max")
    assert x.grad is None
    with pytest.raises(ValueError, match="n_threads"):
        ft.cross_entropy(x, t, n_threads=-1)
    with pytest.raises(TypeError, match="n_threads"):
        ft.cross_entropy(x, t, n_threads=1.5)
    with pytest.raises(ValueError, match="target"):
        ft.cross_entropy(x, t[:-1])
    assert x.grad is None
    for call in (lambda: ft.cross_entropy(x.t().contiguous().t(), t),  # not C-contiguous
                 lambda: ft.cross_entropy(x, t.int()),
                 lambda: ft.cross_entropy(x, t, ignore_index=1),
                 lambda: ft.cross_entropy(x, t, label_smoothing=0.1)):
        assert type(call().grad_fn).__name__ == "_EagerBackward"
    assert type(ft.cross_entropy(x, t, n_threads=1).grad_fn).__name__ == (
        "_CommonCrossEntropyBackward")
    empty = torch.zeros(0, C, requires_grad=True)
    assert type(ft.cross_entropy(empty, t[:0]).grad_fn).__name__ == "_EagerBackward"


@pytest.mark.parametrize("bad", [0, -1])
def test_a_bad_thread_count_is_refused_by_every_loss(bad, gen):
    """As in the NumPy API: n_threads is None or a positive integer."""
    x = _logits(gen, N, C).float()
    t = torch.randint(0, C, (N,), generator=gen)
    p = torch.softmax(_logits(gen, N, C).float(), -1)
    w = torch.randn(C, 5, generator=gen)
    calls = [lambda: ft.cross_entropy(x, t, n_threads=bad),
             lambda: ft.cross_entropy(x, t, label_smoothing=0.1, n_threads=bad),
             lambda: ft.binary_cross_entropy_with_logits(x, p, n_threads=bad),
             lambda: ft.kl_div_with_logits(x, p, n_threads=bad),
             lambda: ft.softmax_mse(x, t, n_threads=bad),
             lambda: ft.entropy(x, n_threads=bad),
             lambda: ft.mse_loss(x, p, n_threads=bad),
             lambda: ft.linear_cross_entropy(x[:, :5], w, t, n_threads=bad)]
    for call in calls:
        with pytest.raises(ValueError, match="n_threads must be a positive integer"):
            call()


def test_common_cross_entropy_follows_the_backend_variable(gen, monkeypatch):
    """With $FASTLOSS_BACKEND set, the call goes through the general path, which reads it."""
    x = _logits(gen, N, C).float().requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    want = ft.cross_entropy(x, t)
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    got = ft.cross_entropy(x, t)
    assert type(got.grad_fn).__name__ == "_EagerBackward"
    torch.testing.assert_close(got, want)


def test_the_kept_gradient_buffer_is_reused_only_when_unused(gen):
    """CPU losses keep one gradient buffer (>= 4 MiB) for the next call: reused once no
    tensor uses it, never while a gradient (or a view of it) lives; also for many threads
    at once; empty_cache drops it."""
    import threading

    ft.empty_cache()
    n, c = 512, 4096  # 8 MiB of float32
    x = _logits(gen, n, c).float().requires_grad_()
    t = torch.randint(0, c, (n,), generator=gen)
    expected = F.cross_entropy(x.detach().double().requires_grad_(), t)
    ft.cross_entropy(x, t).backward()
    first = x.grad
    kept = ft._SPARE._buffer.ctypes.data  # (holding the buffer itself would keep it busy)
    assert first.data_ptr() == kept
    first_values = first.clone()
    view = first[::2]
    x.grad = None
    del first
    y = (x.detach() * 2).requires_grad_()  # another gradient: an overwrite would show
    ft.cross_entropy(y, t).backward()  # the view keeps the first gradient alive
    assert y.grad.data_ptr() != kept
    torch.testing.assert_close(view, first_values[::2], rtol=0, atol=0)  # the old one intact
    del view
    y.grad = None
    # now free again: reused by the general path (options) and by another loss
    ft.cross_entropy(x, t, label_smoothing=0.1, reduction="sum").backward()
    assert x.grad.data_ptr() == kept
    expected_ls = x.detach().double().requires_grad_()
    F.cross_entropy(expected_ls, t, label_smoothing=0.1, reduction="sum").backward()
    torch.testing.assert_close(x.grad.double(), expected_ls.grad, rtol=1e-5, atol=1e-7)
    x.grad = None
    p = torch.softmax(y.detach(), -1)
    ft.kl_div_with_logits(x, p, reduction="batchmean").backward()
    assert x.grad.data_ptr() == kept
    x.grad = None

    grads = {}

    def worker(k):
        xk = (x.detach() * (1 + k / 8)).requires_grad_()
        for _ in range(3):
            ft.cross_entropy(xk, t).backward()
            grads[k] = xk.grad
            xk.grad = None

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({g.data_ptr() for g in grads.values()}) == 4
    for k, g in grads.items():
        xk = (x.detach().double() * (1 + k / 8)).requires_grad_()
        F.cross_entropy(xk, t).backward()
        torch.testing.assert_close(g.double(), xk.grad, rtol=1e-5, atol=1e-9)
    grads.clear()
    x.grad = None
    loss = ft.cross_entropy(x, t)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    ft.empty_cache()
    assert ft._SPARE._buffer is None
    small = _logits(gen, N, C).float().requires_grad_()
    ft.cross_entropy(small, t[:N] % C).backward()
    assert ft._SPARE._buffer is None  # small gradients are not kept


def test_eager_path_only_in_plain_eager_mode(gen):
    x = _logits(gen, N, C).float()
    t = torch.randint(0, C, (N,), generator=gen)
    assert ft._plain_eager(x, t, None)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x).requires_grad_()
        assert not ft._plain_eager(fake, mode.from_tensor(t))
        loss = ft.cross_entropy(fake, mode.from_tensor(t))  # the op's fake implementation
        assert loss.shape == ()
    with torch.overrides.TorchFunctionMode():
        assert not ft._plain_eager(x, t)

    def inside_grad(y):
        assert not ft._plain_eager(y, t)
        return y.sum()

    torch.func.grad(inside_grad)(x)


def test_eager_path_without_grad_and_with_retained_graph(gen):
    x = _logits(gen, N, C).float()
    t = torch.randint(0, C, (N,), generator=gen)
    with torch.no_grad():
        loss = ft.cross_entropy(x.requires_grad_(), t)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), t))
    x.grad = None
    loss = ft.cross_entropy(x, t, reduction="sum")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="double backward"):
        y = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(ft.cross_entropy(y, t), y, create_graph=True)


# --------------------------------------------------------------------------------------------
# fused linear + cross-entropy


def _lce_inputs(gen, dtype=torch.float64, n=11, h=6, v=9, bias=True):
    x = torch.randn(n, h, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, h, generator=gen, dtype=torch.float64) / 2).to(dtype)
    b = torch.randn(v, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    y = torch.randint(0, v, (n,), generator=gen)
    y[2] = -100
    return x, w, b, y


def _lce_grads(loss_fn, x, w, b, go):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None
                                                                     else ())]
    loss = loss_fn(*leaves)
    (loss * go(loss)).sum().backward()
    return loss.detach(), [t.grad for t in leaves]


LCE_OPTIONS = {
    "plain": {},
    "weight_smoothing": {"weight": True, "label_smoothing": 0.2},
    "z_loss_softcap_temperature": {"z_loss": 1e-2, "softcap": 3.0, "temperature": 0.7},
}


@pytest.fixture(params=["host", "cuda-path"])
def lce_path(request, monkeypatch):
    """host: CPU tensors as NumPy arrays (NumPy's BLAS).  cuda-path: the code CUDA tensors
    take (the products on torch, the results tensors), run on CPU tensors."""
    if request.param == "cuda-path":
        from fastloss import _linear

        monkeypatch.setattr(_linear, "_LIBRARY_PATH_ON_HOST", True)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", LCE_OPTIONS)
def test_linear_cross_entropy_matches_unfused(case, bias, reduction, dtype, gen, lce_path):
    """Against the adapter's own cross_entropy on ``x @ W.T + b`` (itself checked against
    torch above), autograd through the product: values and all three gradients."""
    x, w, b, y = _lce_inputs(gen, bias=bias)
    options = dict(LCE_OPTIONS[case])
    if options.pop("weight", False):
        options["weight"] = torch.rand(9, generator=gen, dtype=torch.float64) + 0.5
    ref_dtype = torch.float32 if dtype == torch.bfloat16 else dtype

    def go(loss):
        return torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)

    def fused(x_, w_, b_=None):
        return ft.linear_cross_entropy(x_, w_, y, linear_bias=b_, reduction=reduction,
                                       chunk_size=4, **options)

    def unfused(x_, w_, b_=None):
        logits = x_ @ w_.T + (b_ if b_ is not None else 0)
        return ft.cross_entropy(logits, y, reduction=reduction, **options)

    args = [t if t is None else t.to(dtype) for t in (x, w, b)]
    loss, grads = _lce_grads(fused, *args, go)
    ref_args = [t if t is None else t.to(ref_dtype) for t in args]
    ref_loss, ref_grads = _lce_grads(unfused, *ref_args, go)
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    _close(loss, ref_loss.to(dtype), dtype)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        _close(got, want.to(dtype), dtype)


def test_linear_cross_entropy_soft_targets_and_batch_shape(gen):
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    p = torch.softmax(torch.randn(2, 5, 9, generator=gen, dtype=torch.float64), -1)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = ft.linear_cross_entropy(xa, wa, p, chunk_size=3)
    loss.backward()
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.cross_entropy((xb @ wb.T).reshape(-1, 9), p.reshape(-1, 9))
    ref.backward()
    _close(loss, ref, torch.float64)
    _close(xa.grad, xb.grad, torch.float64)
    _close(wa.grad, wb.grad, torch.float64)


def test_linear_cross_entropy_gradcheck_and_opcheck(gen, lce_path):
    x, w, b, y = _lce_inputs(gen, n=5, h=3, v=4)
    for reduction in REDUCTIONS:
        def fn(x_, w_, b_, reduction=reduction):
            return ft.linear_cross_entropy(x_, w_, y, linear_bias=b_, reduction=reduction,
                                           chunk_size=2, z_loss=0.01)
        leaves = tuple(t.clone().requires_grad_() for t in (x, w, b))
        assert torch.autograd.gradcheck(fn, leaves)
    xl, wl, bl = (t.clone().requires_grad_() for t in (x, w, b))
    torch.library.opcheck(torch.ops.fastloss.linear_cross_entropy,
                          (xl, wl, y, bl, None, -100, 0.0, "mean", 0.0, 0.0, 1.0, 2, True,
                           "auto", 0))
    torch.library.opcheck(torch.ops.fastloss.linear_cross_entropy_backward,
                          (torch.rand(5, dtype=torch.float64), x, w, y, b, None, -100, 0.0,
                           0.0, 0.0, 1.0, 2, "auto", 0))


def test_linear_cross_entropy_compiled_matches_eager(gen, lce_path):
    x, w, b, y = _lce_inputs(gen, dtype=torch.float32)

    def step(x_, w_, b_):
        return ft.linear_cross_entropy(x_, w_, y, linear_bias=b_, chunk_size=4)

    eager_loss, eager_grads = _lce_grads(step, x, w, b, lambda loss: 1.0)
    compiled = torch.compile(step, fullgraph=True)
    loss, grads = _lce_grads(compiled, x, w, b, lambda loss: 1.0)
    torch.testing.assert_close(loss, eager_loss)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_linear_cross_entropy_errors(gen):
    x, w, b, y = _lce_inputs(gen)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ft.linear_cross_entropy(x, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="linear_weight of shape"):
        ft.linear_cross_entropy(x, w[:, :3], y)
    with pytest.raises(ValueError, match="gradients with respect to target"):
        ft.linear_cross_entropy(x, w, torch.rand(11, 9, dtype=torch.float64,
                                                 requires_grad=True))
    with pytest.raises(RuntimeError, match="double backward"):
        xa = x.clone().requires_grad_()
        torch.autograd.grad(ft.linear_cross_entropy(xa, w, y), xa, create_graph=True)
    with torch.no_grad():
        loss = ft.linear_cross_entropy(x.requires_grad_(), w, y)
    assert loss.grad_fn is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_tensors_reach_the_kernels_without_a_float32_copy(dtype, gen, monkeypatch):
    """CPU bfloat16 / float16 logits are handed to fastloss as 16-bit arrays viewing the
    tensor (the C kernels read them natively); the gradient comes back bit for bit as the
    NumPy API's.  Without ml_dtypes, bfloat16 is upcast and gives the same numbers."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = (torch.randn(40, 1500, generator=gen) * 3).to(dtype)
    y = torch.randint(0, 1500, (40,), generator=gen)
    seen = []
    original = fastloss.cross_entropy_with_grad

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(fastloss, "cross_entropy_with_grad", spy)
    leaf = x.clone().requires_grad_()
    ft.cross_entropy(leaf, y, reduction="sum").backward()
    half = np.dtype(ml_dtypes.bfloat16) if dtype == torch.bfloat16 else np.dtype(np.float16)
    assert seen == [half]
    as_array = ft._array(x)
    _, grad = original(as_array, y.numpy(), reduction="sum")
    assert leaf.grad.dtype == dtype
    np.testing.assert_array_equal(ft._array(leaf.grad).view(np.uint16), grad.view(np.uint16))
    if dtype == torch.bfloat16:
        monkeypatch.setattr(ft, "_bfloat16", lambda: None)
        upcast = x.clone().requires_grad_()
        ft.cross_entropy(upcast, y, reduction="sum").backward()
        torch.testing.assert_close(upcast.grad, leaf.grad, rtol=0, atol=0)
