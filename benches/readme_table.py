"""The README's performance tables, from one ``python -m fastloss bench --json FILE`` run.

    python -m fastloss bench --all --shapes 65536x10,2048x32768 --threads 2 --json bench.json
    python benches/readme_table.py bench.json

prints a Markdown table with a row per (loss, shape, mode): the memory limit (the parallel
copy or read of the logits, and the loss's own limit where it also reads a target of the
logits' shape), each compiled backend's time with its ratio to the loss's own limit, plain
NumPy, PyTorch and JAX, and the faster compiled backend against NumPy and against the faster
peer.  A peer whose result missed the reference's tolerance is marked with a dagger; a
backend or peer missing from the run gets a dash.  Then the run's command, machine and
per-call line, to quote beside the table.
"""

from __future__ import annotations

import argparse
import json
import math

PEERS = ("torch", "jax")
BACKENDS = ("numba", "cython")


def _ms(seconds):
    return f"{seconds * 1e3:.2f}"


def _rows(results):
    """{(loss, shape, mode): {impl: result}} in the run's order."""
    table = {}
    for r in results:
        key = (r["loss"], "×".join(map(str, r["shape"])), r["mode"])
        table.setdefault(key, {})[r["impl"]] = r
    return table


def markdown(run, backends=BACKENDS) -> str:
    table = _rows(run["results"])
    backends = [b for b in backends if any(b in impls for impls in table.values())]
    head = ["loss", "shape", "mode", "limit ms", "own limit ms"]
    head += [f"{b} ms (× own)" for b in backends]
    head += ["NumPy ms", "PyTorch ms", "JAX ms", "best vs NumPy", "best vs best peer"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for (loss, shape, mode), impls in table.items():
        limit = impls.get("limit")
        own = impls.get("limit+target", limit)
        if limit is None:
            continue
        kind = "read" if mode == "forward" else "copy"
        cells = [loss, shape, mode, f"{kind} {_ms(limit['seconds'])}",
                 _ms(own["seconds"]) if own is not limit else "="]
        ours = [impls[b] for b in backends if b in impls]
        for b in backends:
            r = impls.get(b)
            cells.append("-" if r is None else
                         f"**{_ms(r['seconds'])}** ({r['seconds'] / own['seconds']:.2f})")
        for name in ("numpy",) + PEERS:
            r = impls.get(name)
            if r is None:
                cells.append("-")
                continue
            mark = "" if r["check"] in ("ok", "-", "reference") else "†"
            cells.append(_ms(r["seconds"]) + mark)
        best = min((r["seconds"] for r in ours), default=math.nan)
        numpy = impls.get("numpy")
        cells.append(f"{numpy['seconds'] / best:.1f}×" if numpy else "-")
        peers = [impls[p]["seconds"] for p in PEERS if p in impls]
        cells.append(f"{min(peers) / best:.1f}×" if peers else "-")
        lines.append("| " + " | ".join(cells) + " |")
    m = run["machine"]
    lines += ["", f"`{m['command']}`, {m['date'][:10]}, {m['cpu']['model']} "
              f"({m['cpu']['cores']} cores; {', '.join(m['cpu']['features'])}), "
              f"numba {m.get('numba')}, torch {m.get('torch')}, jax {m.get('jax')}"]
    per_call = run.get("per_call_us")
    if per_call:
        lines.append("per call at 64x10 (us): " + ", ".join(
            f"{name} {us:.2f}" for name, us in per_call.items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="the file of python -m fastloss bench --json FILE")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="the compiled backends to show (default: %(default)s)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        print(markdown(json.load(f), tuple(args.backends.split(","))))


if __name__ == "__main__":
    main()
