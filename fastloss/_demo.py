"""``python -m fastloss demo``: why cross-entropy and not squared error for classification.

Trains the same models on scikit-learn's bundled handwritten digits (no download) with plain
full-batch gradient descent, once with :func:`fastloss.cross_entropy_with_grad` and once with
:func:`fastloss.softmax_mse_with_grad` -- same initialisation, learning rate and epochs -- and
shows the reason for the difference: the gradient each loss sends to the logit of the true
class.  With cross-entropy it is ``p_y - 1``, largest when the model is confidently wrong;
through the softmax, the squared error's gradient vanishes there.
"""

from __future__ import annotations

import sys

import numpy as np

import fastloss

LOSSES = {
    "cross-entropy": fastloss.cross_entropy_with_grad,
    "softmax MSE": fastloss.softmax_mse_with_grad,
}


def load_digits(seed: int):
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("the demo needs scikit-learn: pip install 'fastloss[demo]'") from None
    data = sk_load_digits()
    x = data.data / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.25, random_state=seed, stratify=data.target)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def init_params(seed: int, n_in: int, n_hidden: int, n_out: int, scale: float = 1.0):
    """Weights large enough that some digits start confidently wrong."""
    rng = np.random.default_rng(seed)
    if n_hidden:
        return {"w1": rng.normal(0, scale * np.sqrt(2 / n_in), (n_in, n_hidden)),
                "b1": np.zeros(n_hidden),
                "w2": rng.normal(0, scale * np.sqrt(2 / n_hidden), (n_hidden, n_out)),
                "b2": np.zeros(n_out)}
    return {"w2": rng.normal(0, scale * np.sqrt(2 / n_in), (n_in, n_out)), "b2": np.zeros(n_out)}


def forward(params, x):
    if "w1" in params:
        h = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    else:
        h = x
    return h, h @ params["w2"] + params["b2"]


def step(params, x, y, loss_with_grad, lr, backend):
    h, logits = forward(params, x)
    loss, dlogits = loss_with_grad(logits, y, backend=backend)
    grads = {"w2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}
    if "w1" in params:
        dh = (dlogits @ params["w2"].T) * (h > 0)
        grads["w1"] = x.T @ dh
        grads["b1"] = dh.sum(axis=0)
    for name, g in grads.items():
        params[name] -= lr * g
    return float(loss)


def accuracy(params, x, y) -> float:
    return float(np.mean(np.argmax(forward(params, x)[1], axis=1) == y))


def train(data, hidden: int, epochs: int, lr: float, seed: int, backend: str):
    x_train, x_test, y_train, y_test = data
    history = {}
    for name, loss_with_grad in LOSSES.items():
        params = init_params(seed, x_train.shape[1], hidden, 10)
        rows = []
        for epoch in range(1, epochs + 1):
            loss = step(params, x_train, y_train, loss_with_grad, lr, backend)
            rows.append((epoch, loss, accuracy(params, x_test, y_test)))
        history[name] = rows
    return history


def true_class_gradient(p_true: np.ndarray, n_classes: int = 10, backend: str = "auto"):
    """|d loss / d logit of the true class| when the true class has probability ``p_true``
    and the other classes share the rest equally, for both losses."""
    others = (1.0 - p_true) / (n_classes - 1)
    logits = np.log(np.column_stack([p_true] + [others] * (n_classes - 1)))
    target = np.zeros(len(p_true), dtype=np.int64)
    out = {}
    for name, loss_with_grad in LOSSES.items():
        _, grad = loss_with_grad(logits, target, reduction="none", backend=backend)
        out[name] = np.abs(grad[:, 0])
    return out


def print_table(models: dict, epochs: int):
    names = list(LOSSES)
    marks = sorted({1, 2, 5, 10, 20, 40, epochs} | set(range(0, epochs + 1, max(1, epochs // 6))))
    marks = [e for e in marks if 1 <= e <= epochs]
    header = ["epoch"] + [f"{model} {name} {what}" for model in models for name in names
                          for what in ("loss", "acc")]
    lines = []
    for e in marks:
        cells = [str(e)]
        for history in models.values():
            for name in names:
                _, loss, acc = history[name][e - 1]
                cells += [f"{loss:.4f}", f"{acc:.3f}"]
        lines.append(cells)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), 7) for h in header]
        for row in [header, *lines]:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        return
    table = Table(title="training loss and test accuracy per epoch (handwritten digits)")
    for h in header:
        table.add_column(h, justify="right")
    for row in lines:
        table.add_row(*row)
    Console(width=160).print(table)


def plot(models: dict, curve: dict, p_true: np.ndarray, path: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'fastloss[demo]')")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    styles = {"cross-entropy": "-", "softmax MSE": "--"}
    for model, history in models.items():
        for name, rows in history.items():
            epochs = [r[0] for r in rows]
            ax.plot(epochs, [r[2] for r in rows], styles[name], label=f"{model}, {name}")
    ax.set_xlabel("epoch (full-batch gradient descent)")
    ax.set_ylabel("test accuracy")
    ax.set_title("learning curves, same init and learning rate")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, g in curve.items():
        ax.plot(p_true, g, styles[name], label=name)
    ax.set_xlabel("predicted probability of the true class")
    ax.set_ylabel("|d loss / d logit of the true class|")
    ax.set_title("confidently wrong (left): only cross-entropy pushes back")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(options) -> int:
    data = load_digits(options.seed)
    print(f"digits: {len(data[0])} training and {len(data[1])} test images, 64 pixels, "
          f"10 classes; backend {options.backend}")
    models = {
        "linear": train(data, 0, options.epochs, 0.5, options.seed, options.backend),
        "MLP-64": train(data, 64, options.epochs, 0.5, options.seed, options.backend),
    }
    print_table(models, options.epochs)
    p_true = np.linspace(0.001, 0.999, 400)
    curve = true_class_gradient(p_true, backend=options.backend)
    wrong = p_true < 0.05
    print(f"gradient on the true-class logit when its probability is below 0.05: "
          f"cross-entropy {curve['cross-entropy'][wrong].mean():.3f}, "
          f"softmax MSE {curve['softmax MSE'][wrong].mean():.3f}")
    if plot(models, curve, p_true, options.out):
        print(f"wrote {options.out}")
    final = {name: models["MLP-64"][name][-1][2] for name in LOSSES}
    linear = {name: models["linear"][name][-1][2] for name in LOSSES}
    print(f"final test accuracy after {options.epochs} epochs: "
          f"cross-entropy {final['cross-entropy']:.3f} (linear "
          f"{linear['cross-entropy']:.3f}), softmax MSE {final['softmax MSE']:.3f} "
          f"(linear {linear['softmax MSE']:.3f})")
    sys.stdout.flush()
    return 0
