"""The command line: info, bench (quick, JSON, plot), demo and config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fastloss
from fastloss._losses import LOSSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=600):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "fastloss", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_info_lists_every_backend_and_why():
    out = run_cli("info")
    assert f"fastloss {fastloss.__version__}" in out
    for name, state in fastloss.backends().items():
        assert f"{name}" in out and state.split(":")[0] in out
    assert "threads" in out and "features" in out


def test_bench_quick_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    report, figure = tmp_path / "bench.json", tmp_path / "bench.png"
    out = run_cli("bench", "--quick", "--json", str(report), "--plot", str(figure))
    data = json.loads(report.read_text())
    results = data["results"]
    impls = {r["impl"] for r in results}
    assert {"limit", "reference", "numpy"} <= impls
    for backend, state in fastloss.backends().items():
        if state == "available" and backend != "cuda":
            assert backend in impls
    for r in results:
        assert r["seconds"] > 0 and r["gbps"] > 0 and r["runs"] >= 1
        assert not r["check"].startswith("WRONG"), r
        if r["impl"] not in ("limit", "reference"):
            assert r["check"] == "ok"
            assert r["ratio_limit"] > 0 and r["speedup_numpy"] > 0
    modes = {(r["loss"], r["mode"]) for r in results}
    assert modes == {("cross_entropy", "forward"), ("cross_entropy", "fused")}
    assert data["machine"]["cpu"]["cores"] >= 1 and "numpy" in data["machine"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cross_entropy" in out and "x limit" in out and "x own" in out
    # benches/readme_table.py turns the run into the README's table: a row per mode
    table = subprocess.run([sys.executable, os.path.join(ROOT, "benches", "readme_table.py"),
                            str(report)], capture_output=True, text=True, check=True).stdout
    for r in results:
        if r["impl"] in ("cython", "numba"):
            key = (r["mode"], r["shape"])
            own = next(o for o in results if (o["mode"], o["shape"], o["impl"]) == (*key, "limit"))
            shape = "×".join(map(str, r["shape"]))
            row = next(line for line in table.splitlines()
                       if line.startswith(f"| cross_entropy | {shape} | {r['mode']} |"))
            assert f"**{r['seconds'] * 1e3:.2f}** ({r['seconds'] / own['seconds']:.2f})" in row
    assert data["machine"]["command"] in table


def test_bench_all_losses_and_options(tmp_path):
    report = tmp_path / "all.json"
    run_cli("bench", "--quick", "--all", "--dtype", "float64", "--threads", "1",
            "--backends", "numpy", "--no-peers", "--json", str(report))
    results = json.loads(report.read_text())["results"]
    assert {r["loss"] for r in results} == set(LOSSES)
    assert {r["dtype"] for r in results} == {"float64"}
    assert {r["impl"] for r in results} == {"limit", "limit+target", "reference", "numpy"}
    groups = {}
    for r in results:
        groups.setdefault((r["loss"], r["mode"], tuple(r["shape"])), {})[r["impl"]] = r
    # a loss's own limit also reads its target when that has the logits' shape, and every
    # row's "x own" is its time over that limit (the copy or read of the logits otherwise)
    with_target = {loss for (loss, _, _), g in groups.items() if "limit+target" in g}
    assert {"binary_cross_entropy_with_logits", "kl_divergence", "mse_loss"} <= with_target
    assert "cross_entropy" not in with_target and "entropy" not in with_target
    for g in groups.values():
        limit = g["limit"]
        own = g.get("limit+target", limit)
        if own is not limit:
            assert own["bytes_moved"] == limit["bytes_moved"] * (1.5 if limit["mode"] ==
                                                                 "fused" else 2)
        for r in g.values():
            assert r["ratio_own"] == pytest.approx(r["seconds"] / own["seconds"])
            assert r["ratio_limit"] == pytest.approx(r["seconds"] / limit["seconds"])


def test_bench_selects_losses_and_compares_with_an_earlier_run(tmp_path):
    old = tmp_path / "old.json"
    args = ("bench", "--quick", "--loss", "kl_divergence,mse_loss", "--threads", "1",
            "--no-peers")
    run_cli(*args, "--json", str(old))
    results = json.loads(old.read_text())["results"]
    assert {r["loss"] for r in results} == {"kl_divergence", "mse_loss"}
    out = run_cli(*args, "--compare", str(old))
    lines = [line for line in out.splitlines() if line.startswith(("kl_divergence", "mse_loss"))
             and " / " in line]
    # every timed implementation of every workload, beside its old figures
    assert len(lines) == len([r for r in results if not r["impl"].startswith("limit")])


def test_bench_unknown_loss_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "fastloss", "bench", "--loss", "focal"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown loss 'focal'" in proc.stderr


def test_bench_linear_workload():
    out = run_cli("bench", "--workload", "linear", "--shapes", "64x16x300", "--repeats", "1",
                  "--threads", "1")
    assert "fastloss" in out and "WRONG" not in out


def test_bench_adapters_workload_times_every_shape(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    path = tmp_path / "adapters.json"
    out = run_cli("bench", "--workload", "adapters", "--shapes", "64x10,32x7", "--threads", "1",
                  "--json", str(path))
    assert "(64, 10)" in out and "(32, 7)" in out
    rows = json.loads(path.read_text())
    assert [r["shape"] for r in rows] == [[64, 10], [32, 7]]
    assert all(r["torch_adapter_ms"] > 0 and r["jax_optax_ms"] > 0 for r in rows)


def test_demo_trains_and_writes_the_figure(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    figure = tmp_path / "demo.png"
    out = run_cli("demo", "--epochs", "25", "--seed", "1", "--out", str(figure))
    last = out.strip().splitlines()[-1]
    assert last.startswith("final test accuracy after 25 epochs: cross-entropy ")
    accuracies = [float(w.strip("(),")) for w in last.split() if w.strip("(),")[:2] == "0."]
    assert len(accuracies) == 4 and all(0.5 < a <= 1.0 for a in accuracies)
    ce_mlp, ce_linear, mse_mlp, mse_linear = accuracies
    assert ce_mlp >= mse_mlp and ce_linear >= mse_linear  # the point of the demo
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_true_class_gradient_vanishes_only_for_mse():
    import numpy as np

    from fastloss._demo import true_class_gradient

    g = true_class_gradient(np.array([1e-3, 0.5, 0.999]), backend="numpy")
    np.testing.assert_allclose(g["cross-entropy"], [1 - 1e-3, 0.5, 1e-3], rtol=1e-9)
    assert g["softmax MSE"][0] < 0.01 and g["softmax MSE"][1] > 0.1


def test_the_bench_limit_is_the_fastest_way_to_move_the_bytes():
    """The limit is the fastest of its candidates (a parallel copy, one on the calling
    thread, NumPy's), so no slow way of moving the bytes flatters the ratios."""
    import time

    from fastloss._bench import _limit_time, _limits

    def slow():
        time.sleep(0.01)
        return "slow"

    seconds, _, _, which = _limit_time([slow, lambda: "fast", slow], budget=0.0)
    assert which == "fast" and seconds < 0.01
    assert len(_limits(2)) == (3 if fastloss.backends()["numba"] == "available" else 1)
