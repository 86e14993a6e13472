"""Defaults chosen by measurement (issue 13, item 10).

Part A, the default outer loop of `train` goals: on three training procedures
(examples/learned_lr.bil, a one-hidden-layer MLP, softmax regression on wine
with learned lr / momentum / weight decay) every candidate outer loop runs on
one compiled engine per problem (compilation is paid once, before the clock).
A training procedure's value and hypergradient are exact for its fixed steps,
so the recorded upper values are the true F(θ).  Reported: final F, best F,
training steps (the cost) and wall time, and the cost / wall time to reach 90%
and 99% of the largest decrease F0 − F* any candidate achieved.

Part B, the outer iteration budget of many-hyper argmin problems: 30
per-feature ridge penalties of a logistic regression on breast_cancer
(standardized).  MAID runs up to 300 iterations; the true F (lower problem
re-solved to 1e-10) at chosen iterations is compared with the best single
penalty of a 30-point grid (scikit-learn's LogisticRegression, an independent
solver).

    python benchmarks/defaults.py            # both parts (about 4 minutes on 2 CPU cores)
    python benchmarks/defaults.py --parts A  # or B
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import bil  # noqa: F401  (float64 before jax is used)
from bil.runtime.outer import run_outer

ROOT = Path(__file__).resolve().parents[1]

MLP = """
problem mlp_wd_lr
data Xtr, ytr, Xval, yval = dataset("breast_cancer", split=0.5, seed=0, standardize=true)
hyper lr : positive = 0.05
hyper wd : positive = 1e-3
lower {
    W1 : real[ncols(Xtr), 8] = 0.3 * randn(ncols(Xtr), 8, seed=0)
    w2 : real[8] = 0.3 * randn(8, seed=1)
    train logistic_loss(tanh(Xtr @ W1) @ w2, ytr) + 0.5 * wd * (sumsq(W1) + sumsq(w2))
          with sgd(lr=lr, momentum=0.9) for 100 steps
}
upper minimize logistic_loss(tanh(Xval @ W1) @ w2, yval)
solve { hypergradient: unroll(truncate=20) }
"""

WINE = """
problem wine_sgd
data Xtr, ytr, Xval, yval = dataset("wine", split=0.5, seed=0, standardize=true)
hyper lr : positive = 0.01
hyper mom : real in [0, 0.99] = 0.5
hyper wd : positive = 1e-2
lower {
    W : real[ncols(Xtr), 3] = 0
    train cross_entropy(Xtr @ W, ytr) + 0.5 * wd * sumsq(W) with sgd(lr=lr, momentum=mom) for 50 steps
}
upper minimize cross_entropy(Xval @ W, yval)
solve { hypergradient: unroll }
"""

PENALTIES = """
problem per_feature_penalties
data Xtr, ytr, Xval, yval = dataset("breast_cancer", split=0.5, seed=0, standardize=true)
hyper lam : positive[ncols(Xtr)] = 1.0
lower {
    w : real[ncols(Xtr)] = 0
    minimize logistic_loss(Xtr @ w, ytr) + 0.5 * sum(lam * w^2)
}
upper minimize logistic_loss(Xval @ w, yval)
"""

TRAIN_PROBLEMS = {"learned_lr": ROOT / "examples" / "learned_lr.bil", "mlp": MLP, "wine_sgd": WINE}
CANDIDATES = [("adam", {"lr": lr, "steps": 100}) for lr in (0.02, 0.05, 0.1, 0.2, 0.5)] + [
    ("maid", {"max_iter": 30}), ("maid", {"max_iter": 100})]


def _label(method, opts):
    return f"{method}({', '.join(f'{k}={v}' for k, v in opts.items())})"


def _reach(hist, level):
    """(training steps, wall s) of the first record with upper <= level, or None."""
    for r in hist:
        if r["upper"] <= level:
            return int(r["lower_iters_total"]), float(r["wall_s"])
    return None


def part_a():
    rows = []
    for pname, src in TRAIN_PROBLEMS.items():
        prog = bil.compile(src)
        eng = prog.engine
        run_outer(eng, "adam", {"steps": 1})  # compile the oracles of both loops (not timed)
        run_outer(eng, "maid", {"max_iter": 1})
        f0 = float(prog.objective(prog.hypers))
        runs = []
        for method, opts in CANDIDATES:
            t = time.perf_counter()
            res = run_outer(eng, method, opts)
            wall = time.perf_counter() - t
            hist = list(res.history)
            runs.append((method, opts, hist, wall, str(res.reason)))
        fbest = min(min(r["upper"] for r in h) for _, _, h, _, _ in runs)
        for method, opts, hist, wall, reason in runs:
            def at(frac):
                got = _reach(hist, f0 - frac * (f0 - fbest))
                return "never" if got is None else f"{got[0]} / {got[1]:.2f}"
            rows.append([pname, _label(method, opts), f"{f0:.6f}", f"{hist[-1]['upper']:.6f}",
                         f"{min(r['upper'] for r in hist):.6f}", at(0.9), at(0.99),
                         str(int(hist[-1]["lower_iters_total"])), f"{wall:.2f}", reason])
    _table(["problem", "outer", "F0", "final F", "best F", "steps / s to 90%", "steps / s to 99%",
            "training steps", "wall s", "stopped"], rows)


def part_b():
    from sklearn.linear_model import LogisticRegression

    prog = bil.compile(PENALTIES)
    from bil.stdlib import sources

    Xtr, ytr, Xval, yval = sources.dataset("breast_cancer", split=0.5, seed=0, standardize=True)
    n = len(ytr)

    def val_loss(w):
        s = Xval @ w
        return float(np.mean(np.logaddexp(0, s) - yval * s))

    grid = []
    for lam in np.geomspace(1e-4, 1e2, 30):
        m = LogisticRegression(C=1.0 / (lam * n), fit_intercept=False, tol=1e-12, max_iter=100_000).fit(Xtr, ytr)
        grid.append((val_loss(m.coef_.ravel()), lam))
    gbest, glam = min(grid)
    print(f"(B) best single penalty (30-point grid, sklearn): F = {gbest:.6f} at lam = {glam:.4g}")
    F = lambda h: prog.value_and_hypergrad(h, tol=1e-10)[0]
    print(f"    check: bil's F at that single penalty = {F({'lam': np.full(Xtr.shape[1], glam)}):.6f}")
    run_outer(prog.engine, "maid", {"max_iter": 1})  # compile (not timed)
    rows, res, wall, first = [], None, 0.0, None
    for it in (10, 25, 50, 100, 150, 200, 300):  # one run, resumed at each milestone
        t = time.perf_counter()
        res = run_outer(prog.engine, "maid", {"max_iter": it}, state=None if res is None else res.state)
        wall += time.perf_counter() - t
        hist = list(res.history)
        first = first or next((r["iter"] for r in hist if r["upper"] <= gbest), None)
        r = hist[-1]
        rows.append([str(len(hist)), f"{r['upper']:.6f}", f"{F(res.hypers):.6f}", f"{r['grad_norm']:.2e}",
                     str(int(r["lower_iters_total"] + r["cg_iters_total"])), f"{wall:.2f}", str(res.reason)])
        if res.state.get("stop") is not None:
            break
    _table(["MAID iters", "recorded F", "true F", "|z|", "lower + CG", "wall s", "stopped"], rows)
    print(f"    first iteration with recorded F <= grid best: {first or 'never'}")


def _table(head, rows):
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))
    print()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="AB", help="A (train-goal outer loops), B (many-hyper budget)")
    args = ap.parse_args()
    if "A" in args.parts:
        part_a()
    if "B" in args.parts:
        part_b()
