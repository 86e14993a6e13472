"""Stochastic bilevel methods against full-batch MAID (issue 16, "Measured").

    python benchmarks/stochastic.py            # full sizes (quadratic 32768 rows, logreg 200 000, cleaning 20 000)
    python benchmarks/stochastic.py --quick    # small sizes, short runs (a smoke run of the same pipeline)
    python benchmarks/stochastic.py --problems logreg --quick

For each problem (benchmarks/stochastic_problems.py: (a) quadratic, (b) logreg, (c)
cleaning) the data go to a temporary folder as ``data.npz`` and the problem to a ``.bil``
spec whose training and validation rows are ``sampled``; the spec is compiled once, and
every method runs on that one program through ``bil.runtime.outer.run_outer``:

* full-batch ``maid`` (defaults; the ``sampled`` declaration changes nothing for it);
* ``soba`` and ``saba`` on the 3×3 grid ``rho`` × ``gamma`` printed with the table; "best"
  is the configuration that reaches the tighter level with the fewest sample gradients
  (the looser level when none reaches it, else the smallest final F);
* ``adaptive`` with its defaults (``seed=0``).

At every history record the callback evaluates the true F(θ) = f(x*(θ), θ) at the record's
hypers (closed form for the quadratic, a 1e-10 full-batch solve otherwise; the time is
excluded from ``wall_s`` by the driver).  F* is the closed form (quadratic) or the smallest
true F any run reaches (the others).  The table gives, per method and level 1e-2 / 1e-3
of (F − F*)/|F*|, the sample gradients (history column ``sample_grads``) and ``wall_s`` of
the first record at that level.  Every timed run is the second of its configuration in the
process (compiled: the time a user's later runs take); the first run's wall time, with its
compilation (or loading from JAX's persistent compilation cache, which is on), is given in
parentheses (for SOBA/SABA, the grid run of that configuration).
A plot of F − F* against sample gradients goes to ``benchmarks/out/stochastic_NAME.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bil  # noqa: E402
import stochastic_problems as sp  # noqa: E402
from bil.runtime import compile_cache  # noqa: E402
from bil.runtime.outer import run_outer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
LEVELS = (1e-2, 1e-3)

FULL = {"quadratic": dict(n=32768, m=1024), "logreg": dict(n=200_000, m=50_000), "cleaning": dict(n=20_000, m=5_000)}
QUICK = {"quadratic": dict(n=4096, m=512), "logreg": dict(n=20_000, m=5_000), "cleaning": dict(n=2_000, m=1_000)}
#: SOBA/SABA: (batch, rho grid, gamma grid, iterations, chunk)
GRID = {"quadratic": (64, (0.3, 1.0, 3.0), (0.01, 0.1, 1.0)),
        "logreg": (64, (0.3, 1.0, 3.0), (0.01, 0.1, 1.0)),
        "cleaning": (64, (0.3, 1.0, 3.0), (1.0, 10.0, 100.0))}


def user_theta(state: dict) -> np.ndarray:
    """The hypers ``theta`` of a checkpoint (every problem's one hyper is an unconstrained real)."""
    keys = sorted((k for k in state if k.startswith("u/")), key=lambda k: int(k.split("/")[1]))
    return np.concatenate([np.ravel(state[k]) for k in keys])


def run_method(prog, problem, method: str, options: dict) -> dict:
    """One run; per record: sample gradients, wall time, true F."""
    trace = {"samples": [], "wall": [], "F": []}

    def cb(rec, state):
        trace["samples"].append(int(rec["sample_grads"]))
        trace["wall"].append(float(rec["wall_s"]))
        trace["F"].append(problem.true_F({"theta": user_theta(state)}))
        return False

    t = time.perf_counter()
    res = run_outer(prog.engine, method, options, callback=cb)
    trace["reason"], trace["elapsed"] = str(res.reason), time.perf_counter() - t
    return trace


def first_at(trace: dict, fstar: float, level: float):
    for s, w, f in zip(trace["samples"], trace["wall"], trace["F"]):
        if (f - fstar) / abs(fstar) <= level:
            return s, w
    return None


def best_of(traces: dict, fstar: float):
    """The grid configuration that reaches the tightest level with the fewest sample gradients."""
    for level in sorted(LEVELS):
        hits = {k: first_at(t, fstar, level) for k, t in traces.items()}
        hits = {k: h for k, h in hits.items() if h is not None}
        if hits:
            return min(hits, key=lambda k: hits[k][0])
    return min(traces, key=lambda k: min(traces[k]["F"], default=math.inf))


def bench(name: str, quick: bool, iters: int, methods=("soba", "saba", "maid", "adaptive"), rhos=None,
          gammas=None) -> tuple[list, dict]:
    gen = getattr(sp, name)
    problem = gen(**(QUICK if quick else FULL)[name])
    folder = Path(tempfile.mkdtemp(prefix=f"bil_stoch_{name}_"))
    np.savez(folder / "data.npz", **problem.data)
    (folder / "spec.bil").write_text(problem.sampled_spec)
    prog = bil.compile((folder / "spec.bil").read_text(), base_dir=str(folder))
    n = problem.rows.n
    batch, grid_rhos, grid_gammas = GRID[name]
    rhos, gammas = rhos or grid_rhos, gammas or grid_gammas
    chunk = max(10, n // batch // 4)
    traces = {}
    print(f"\n== {name}: n={n}, m={problem.rows.m}; soba/saba batch {batch}, rho {rhos} x gamma {gammas}, "
          f"{iters} epochs", flush=True)
    grid = {}
    for method in [m for m in ("soba", "saba") if m in methods]:
        for rho in rhos:
            for gamma in gammas:
                opts = dict(batch=batch, rho=rho, gamma=gamma, max_iter=iters * n // batch, chunk=chunk)
                try:
                    tr = run_method(prog, problem, method, opts)
                except Exception as e:   # e.g. saba's memory limit on a hyper per row
                    print(f"  {method} rho={rho:g} gamma={gamma:g}: not run: {e}", flush=True)
                    continue
                grid[(method, rho, gamma)] = tr
                print(f"  {method} rho={rho:g} gamma={gamma:g}: final F {tr['F'][-1] if tr['F'] else math.nan:.6g} "
                      f"({tr['reason']}, {tr['elapsed']:.1f} s)", flush=True)
    cold = {}
    for method in [m for m in ("maid", "adaptive") if m in methods]:
        opts = dict(max_iter=200 if not quick else 60)
        cold[method] = run_method(prog, problem, method, opts)       # compiles (or loads from the disk cache)
        traces[method] = run_method(prog, problem, method, opts)     # the same run, compiled
        print(f"  {method}: final F {traces[method]['F'][-1]:.8g} ({traces[method]['reason']}, "
              f"{traces[method]['elapsed']:.1f} s)", flush=True)
    fstar = problem.F_star if problem.F_star is not None else min(
        min(t["F"]) for t in list(traces.values()) + list(grid.values()) if t["F"])
    for method in ("soba", "saba"):
        sub = {k: v for k, v in grid.items() if k[0] == method}
        if not sub:
            continue
        k = best_of(sub, fstar)
        label = f"{method} (rho={k[1]:g}, gamma={k[2]:g})"
        cold[label] = sub[k]
        opts = dict(batch=batch, rho=k[1], gamma=k[2], max_iter=iters * n // batch, chunk=chunk)
        traces[label] = run_method(prog, problem, method, opts)     # the best configuration again, compiled
    rows = []
    for label, tr in traces.items():
        cells = [first_at(tr, fstar, lv) for lv in LEVELS]
        cold_cells = [first_at(cold[label], fstar, lv) for lv in LEVELS]
        cells = [None if c is None else (c[0], c[1], cc[1] if cc else math.nan) for c, cc in zip(cells, cold_cells)]
        rows.append((name, label, cells, (min(tr["F"]) - fstar) / abs(fstar) if tr["F"] else math.nan))
    plot(name, traces, fstar)
    return rows, {"fstar": fstar, "grid": {f"{k[0]} rho={k[1]:g} gamma={k[2]:g}": v for k, v in grid.items()}}


def plot(name: str, traces: dict, fstar: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, tr in traces.items():
        gap = np.maximum((np.asarray(tr["F"]) - fstar) / abs(fstar), 1e-12)
        ax.loglog(np.maximum(tr["samples"], 1), gap, label=label)
    for lv in LEVELS:
        ax.axhline(lv, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("sample gradients")
    ax.set_ylabel("(F − F*) / |F*|")
    ax.set_title(name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"stochastic_{name}.png", dpi=120)
    plt.close(fig)


def table(rows: list) -> str:
    def cell(c):
        return "not reached" if c is None else f"{c[0]:.3g} / {c[1]:.2f} s ({c[2]:.1f} s)"

    out = ["| problem | method | to 1e-2: sample grads / wall compiled (first run) | to 1e-3 | best gap reached |",
           "| --- | --- | --- | --- | --- |"]
    for name, label, cells, best in rows:
        out.append(f"| {name} | {label} | {cell(cells[0])} | {cell(cells[1])} | {best:.1e} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and short runs")
    ap.add_argument("--problems", default="quadratic,logreg,cleaning")
    ap.add_argument("--epochs", type=int, default=None, help="soba/saba length in passes over the rows")
    ap.add_argument("--methods", default="soba,saba,maid,adaptive")
    ap.add_argument("--rho", default=None, help="soba/saba rho values instead of the grid's (comma-separated)")
    ap.add_argument("--gamma", default=None, help="soba/saba gamma values instead of the grid's")
    a = ap.parse_args(argv)
    compile_cache.enable()
    rows = []
    for name in a.problems.split(","):
        floats = (lambda t: tuple(float(v) for v in t.split(",")) if t else None)
        r, _ = bench(name, a.quick, a.epochs or (5 if a.quick else 30), tuple(a.methods.split(",")),
                     floats(a.rho), floats(a.gamma))
        rows += r
        print(table(r), flush=True)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
