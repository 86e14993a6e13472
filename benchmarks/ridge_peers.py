"""Time per hypergradient on ridge (diabetes): bil against jaxopt and a hand-written JAX solve.

    pip install -e .[bench]                   # jaxopt (a benchmark extra, never a runtime dependency)
    python benchmarks/ridge_peers.py          # 300 warm calls per contestant
    python benchmarks/ridge_peers.py --quick  # CI smoke: 30

Problem: ``examples/ridge.bil``, lower 0.5‖Xw − y‖² + 0.5λ‖w‖² (221×10), upper
0.5·mean((X_val w − y_val)²), value and d/dλ at λ = 1 in user coordinates.
Contestants, all in this process, all jitted, compile excluded (the first call
of each is discarded), each call blocked on its result:

* ``bil value_and_hypergrad``: the public API, ``prog.value_and_hypergrad({"lam": 1.0})``
  (hypers checked, lower and adjoint to 1e-10, statuses checked, results as numpy);
* ``bil engine.hypergradient``: the lowest-overhead internal path, the jitted oracle
  called with prepared arguments (what the outer loops call);
* ``bil jax.grad(objective)``: ``jax.jit(jax.value_and_grad(f))`` of the jitted
  ``prog.objective`` on the full hyper dict (implicit-function rule);
* ``jaxopt custom_root + CG``: the inner solve by ``jnp.linalg.solve`` decorated
  with ``jaxopt.implicit_diff.custom_root`` (optimality condition ∇ₓg = 0), the
  adjoint by ``jaxopt.linear_solve.solve_cg`` (tol 1e-10);
* ``hand-written jnp.linalg.solve``: w = (XᵀX + λI)⁻¹Xᵀy differentiated by JAX's own
  rule for ``solve`` (the floor: no solver loop, no tolerance).

Runs alternate between contestants (load drift on a shared machine hits all alike);
the table reports medians of the warm calls and ratios to the hand-written solve.
Every contestant's d/dλ is checked against the closed form (relative 1e-8).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bil  # noqa: E402  (enables float64)

LAM = 1.0
TOL = 1e-10
AGREE = 1e-8


def contestants(prog):
    """name -> zero-argument callable returning (value, d/dλ) as floats after blocking."""
    d = prog.state.data
    X, y, Xv, yv = (jnp.asarray(d[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    out = {}

    out["bil value_and_hypergrad"] = lambda: _pub(prog)

    eng = prog.engine
    theta = {"lam": jnp.asarray(LAM)}
    X0 = eng.init_lower_user(theta)
    Q0 = eng.init_adjoint(X0)

    def internal():
        hg, _ = eng.hypergradient(theta, X0, Q0, TOL, TOL, coords="theta")
        return hg.f.block_until_ready(), hg.z["lam"].block_until_ready()

    out["bil engine.hypergradient"] = internal

    vg_obj = jax.jit(jax.value_and_grad(prog.objective._jitted))
    data = prog.lowered.data

    def objective():
        v, g = vg_obj(theta, data)
        return v.block_until_ready(), g["lam"].block_until_ready()

    out["bil jax.grad(objective)"] = objective

    def upper(w):
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2)

    try:
        from functools import partial

        from jaxopt import implicit_diff, linear_solve
    except ImportError:
        print("jaxopt not installed (pip install -e .[bench]): its row is skipped")
    else:
        def optimality(w, lam):
            return X.T @ (X @ w - y) + lam * w

        @implicit_diff.custom_root(optimality, solve=partial(linear_solve.solve_cg, tol=TOL))
        def inner(init, lam):
            return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)

        w0 = jnp.zeros(X.shape[1])
        jo = jax.jit(jax.value_and_grad(lambda lam: upper(inner(w0, lam))))
        lam_ = jnp.asarray(LAM)
        out["jaxopt custom_root + CG"] = lambda: tuple(a.block_until_ready() for a in jo(lam_))

    hand = jax.jit(jax.value_and_grad(
        lambda lam: upper(jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y))))
    lam_h = jnp.asarray(LAM)
    out["hand-written jnp.linalg.solve"] = lambda: tuple(a.block_until_ready() for a in hand(lam_h))
    return out


def _pub(prog):
    v, g = prog.value_and_hypergrad({"lam": LAM}, tol=TOL)
    return v, g["lam"]


def closed_form(prog):
    d = prog.state.data
    X, y, Xv, yv = (np.asarray(d[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    A = X.T @ X + LAM * np.eye(X.shape[1])
    w = np.linalg.solve(A, X.T @ y)
    r = Xv @ w - yv
    return 0.5 * np.mean(r ** 2), r @ (Xv @ -np.linalg.solve(A, w)) / len(yv)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 warm calls instead of 300")
    ap.add_argument("--solver", default=None, help="override the spec's lower solver (e.g. lbfgs)")
    args = ap.parse_args(argv)
    reps = 30 if args.quick else 300
    overrides = {"lower.solver": args.solver} if args.solver else None
    prog = bil.compile(ROOT / "examples" / "ridge.bil", overrides=overrides)
    print(f"ridge (diabetes 221×10), lower solver {prog.state.options['lower']['solver'].show()}, "
          f"tol {TOL:g}, {reps} warm calls, jax {jax.__version__} on {jax.devices()[0].platform}")
    runs = contestants(prog)
    f_ref, g_ref = closed_form(prog)
    times = {k: [] for k in runs}
    for name, fn in runs.items():  # compile, and check against the closed form
        v, g = fn()
        rel = abs(float(g) - g_ref) / abs(g_ref)
        if rel > AGREE or abs(float(v) - f_ref) > AGREE * abs(f_ref):
            raise SystemExit(f"{name}: d/dλ {float(g):.12g} vs closed form {g_ref:.12g} (rel {rel:.2e})")
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = np.median(times["hand-written jnp.linalg.solve"])
    print(f"\n| {'contestant':32s} | median ms | × hand-written |")
    print(f"|{'-' * 34}|-----------|----------------|")
    for name, ts in times.items():
        m = np.median(ts)
        print(f"| {name:32s} | {1e3 * m:9.3f} | {m / base:14.1f} |")
    return times


if __name__ == "__main__":
    main()
