"""Problems run on 1 and on 4 devices by tests/test_sharding.py (the 4-device runs in a subprocess:
``python tests/sharding_cases.py CASE FOLDER`` with 4 forced CPU devices prints the case's JSON).

Each case returns the upper value and hypergradient at θ₀ (solves to 1e-11), a short run's
learned hypers and upper values (``tasks``: the value, and under ``grad2`` the hypergradient,
at λ = 2 instead), the lower solution, how many devices it lies on, and the jit cache
sizes after the run's first iteration and at its end (equal: nothing recompiled)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

TV = """problem tv_small
data clean = load("tv.npz", "clean") per sample
data noisy = load("tv.npz", "noisy") per sample
hyper alpha : positive = 0.05
hyper nu : positive = 0.05
def tv(u, eps) = sum(sqrt(dx(u)^2 + dy(u)^2 + eps^2))
lower {
    x = noisy
    minimize 0.5 * sumsq(x - noisy) + alpha * tv(x, nu)
    solver: fista(mu=1)
    tol: 1e-11
}
upper minimize 0.5 * sumsq(x - clean)
solve {
    hypergradient: implicit(linear="cg")
    outer: maid(max_iter=3)
}
"""

#: the cheap per-sample case (default test run): 8 ridge tasks, a CG lower solve
TASKS = """problem tasks
data Xtr = randn(8, 6, 4, seed=1) per sample
data ytr = randn(8, 6, seed=2) per sample
data Xval = randn(8, 5, 4, seed=3) per sample
data yval = randn(8, 5, seed=4) per sample
hyper lam : positive = 1.0
lower {
    w : real[ncols(Xtr)] = 0
    minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * lam * sumsq(w)
    solver: cg()
    tol: 1e-11
}
upper minimize 0.5 * mean((Xval @ w - yval)^2)
"""

RIDGE = """problem ridge_rows
data X = load("ridge.npz", "X")
data y = load("ridge.npz", "y")
data Xv = load("ridge.npz", "Xv")
data yv = load("ridge.npz", "yv")
hyper lam : positive = 1.0
lower {
    w : real[ncols(X)] = 0
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
    solver: cg()
    tol: 1e-9
}
upper minimize 0.5 * mean((Xv @ w - yv)^2)
solve { outer: maid(max_iter=3) }
"""


def _write(case: str, folder: str) -> str:
    rng = np.random.default_rng(0)
    if case == "tasks":
        return TASKS
    if case.startswith("tv"):
        n = int(case[2:])
        clean = rng.random((n, 8, 8))
        np.savez(os.path.join(folder, "tv.npz"), clean=clean, noisy=clean + 0.1 * rng.standard_normal(clean.shape))
        return TV
    X = rng.standard_normal((16384, 16))
    y = X @ rng.standard_normal(16) + rng.standard_normal(16384)
    np.savez(os.path.join(folder, "ridge.npz"), X=X, y=y, Xv=X[:512] + 0.1, yv=y[:512])
    return RIDGE


def run_case(case: str, folder: str) -> dict:
    """``tasks`` (8 ridge tasks, per sample), ``tvN`` (N 8×8 images, per sample) or ``ridge``
    (16384 × 16 rows): the numbers compared."""
    import bil

    prog = bil.compile(_write(case, folder), base_dir=folder)
    v, g = prog.value_and_hypergrad(tol=1e-11)
    eng = prog.engine
    sizes: dict = {}

    def count():
        jitted = {**eng._jitted, **{("public", k): f for k, f in prog._public_call._fns.items()}}
        return {str(k): f._cache_size() for k, f in jitted.items()}

    if case == "tasks":   # (cheap: no outer run) a second hypergradient at other hypers
        sizes["first"] = count()
        v2, g2 = prog.value_and_hypergrad({"lam": 2.0}, tol=1e-11)
        sizes["last"] = count()
        history, hypers, upper = [v2], {"lam": 2.0}, v2
        extra = {"grad2": {k: np.asarray(a).tolist() for k, a in g2.items()}}
    else:
        res = prog.run(callback=lambda record, state: sizes.setdefault("first", count()) and None)
        sizes["last"] = count()
        history, hypers, upper = [r["upper"] for r in res.history], res.hypers, res.upper
        extra = {}
    theta = {k: np.asarray(a) for k, a in prog.lowered.theta0.items()}
    x = next(iter(eng.solve_lower(theta, eng.init_lower_user(theta), 1e-11).x.values()))
    layout = prog.lowered.layout
    return {"value": v, "grad": {k: np.asarray(a).tolist() for k, a in g.items()},
            "hypers": {k: np.asarray(a).tolist() for k, a in hypers.items()}, "upper": upper,
            "history": history, "x": np.asarray(x).ravel().tolist(),
            "x_devices": len(x.sharding.device_set),
            "data_split": sorted(k for k, a in prog.lowered.data["names"].items()
                                 if len(getattr(a.sharding, "spec", ()))),
            "note": None if layout is None else layout.note, "sizes": sizes, **extra}


if __name__ == "__main__":
    print(json.dumps(run_case(sys.argv[1], sys.argv[2])))
