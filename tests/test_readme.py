"""The README's examples that are not doctests (the ```python blocks without ``>>>``: the
PyTorch, JAX, XGBoost and GPU sections) run, each where what it needs is there (the ``>>>``
examples are doctests: pytest.ini collects README.md).  A block whose library is missing is
skipped with its name (an optional extra not installed), the GPU one without a GPU."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        code = match.group(1)
        if ">>>" in code:
            continue
        section = re.findall(r"^## (.+)$", text[: match.start()], flags=re.M)[-1]
        blocks.append(pytest.param(code, id=section))
    return blocks


def _imported_modules(code: str) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module.split(".")[0])
    return modules


BLOCKS = _blocks()


def test_the_readme_has_the_framework_examples():
    assert {p.id for p in BLOCKS} >= {"In PyTorch", "In JAX", "Gradient boosting"}


@pytest.mark.parametrize("code", BLOCKS)
def test_readme_example_runs(code):
    missing = [m for m in _imported_modules(code) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed)")
    if "cuda.to_device" in code:
        from numba import cuda

        if not cuda.is_available():
            pytest.skip("needs a CUDA GPU")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    # what each example promises, checked against the framework's own computation
    if "torch" in namespace and "logits" in namespace:
        torch = namespace["torch"]
        logits, target = namespace["logits"], namespace["target"]
        expected = logits.detach().clone().requires_grad_()
        torch.nn.functional.cross_entropy(expected, target, label_smoothing=0.1).backward()
        # the example's loss adds a z-loss of 1e-4: its gradient differs by less than 1e-3
        assert logits.grad is not None and logits.grad.shape == logits.shape
        torch.testing.assert_close(logits.grad, expected.grad, rtol=0, atol=1e-3)
    if "jax" in namespace and "grad" in namespace:
        import optax

        logits, labels = namespace["logits"], namespace["labels"]
        want = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        np.testing.assert_allclose(float(namespace["loss"]), float(want), rtol=1e-5)
        assert namespace["grad"].shape == logits.shape
    if "booster" in namespace:
        assert namespace["booster"].num_boosted_rounds() == 20
    if "cuda" in namespace:
        import fastloss

        grad = namespace["grad"]
        assert not isinstance(grad, np.ndarray)  # on the device
        logits = namespace["logits"].copy_to_host()
        want = fastloss.cross_entropy(logits, namespace["target"], backend="numpy")
        np.testing.assert_allclose(float(namespace["loss"]), float(want), rtol=1e-5)
