"""Peer libraries for ``benchmarks/hypergrad.py``: the same hypergradients with jaxopt and optimistix.

Both are benchmark extras (``pip install -e .[bench]``), never imported by ``bil/``.  Each
peer gets the problem bil solves (the arrays of the compiled spec), the same tolerances and
the same solver family, and differentiates the lower solution implicitly with CG on
Hessian-vector products for the adjoint (absolute residual δ, per sample δ/√N):

* ridge (``direct()`` in bil): jaxopt ``custom_root`` around ``jnp.linalg.solve``, adjoint by
  ``jaxopt.linear_solve.solve_cg``; lineax ``linear_solve`` with ``Cholesky`` (optimistix's
  linear algebra; its own implicit rule, an exact adjoint);
* digits (``lbfgs`` in bil): ``jaxopt.LBFGS`` (zoom line search, history 10, stop at
  ‖∇g‖ ≤ ε); ``optimistix.LBFGS`` (history 10, Armijo backtracking, its Cauchy stop on the
  changes of x and g tightened until ‖∇g‖ ≤ ε);
* TV (``fista(mu=1)`` in bil): ``jaxopt.ProximalGradient(acceleration=True)`` (FISTA with
  backtracking, no prox), vmapped over images; optimistix has no FISTA: its row is
  ``optimistix.NonlinearCG`` (the nearest first-order method it has).

Every builder returns ``call(theta) -> (f, z)`` (jitted, theta in user coordinates) or None
when the library is not installed.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

CG_MAX_ITER = 1_000


def _jaxopt():
    try:
        import jaxopt
    except ImportError:
        return None
    return jaxopt


def _optx():
    try:
        import lineax as lx
        import optimistix as optx
    except ImportError:
        return None
    return optx, lx


def _cg_jaxopt(jaxopt, delta):
    return partial(jaxopt.linear_solve.solve_cg, tol=0.0, atol=delta, maxiter=CG_MAX_ITER)


def _adjoint_optx(optx, lx, delta):
    cg = lx.CG(rtol=0.0, atol=delta, norm=optx.two_norm, max_steps=CG_MAX_ITER)
    return optx.ImplicitAdjoint(linear_solver=cg)



def _tags(lx):
    return frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


# ------------------------------------------------------------------ ridge
def ridge(kind, d, eps, delta):
    """0.5‖Xw − y‖² + 0.5λ‖w‖², upper 0.5·mean((X_val w − y_val)²)."""
    X, y, Xv, yv = d["Xtr"], d["ytr"], d["Xval"], d["yval"]
    n = X.shape[1]

    def upper(w):
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2)

    if kind == "jaxopt":
        jaxopt = _jaxopt()
        if jaxopt is None:
            return None

        def optimality(w, lam):
            return X.T @ (X @ w - y) + lam * w

        @jaxopt.implicit_diff.custom_root(optimality, solve=_cg_jaxopt(jaxopt, delta))
        def inner(init, lam):
            return jnp.linalg.solve(X.T @ X + lam * jnp.eye(n), X.T @ y)

        w0 = jnp.zeros(n, X.dtype)
        vg = jax.jit(jax.value_and_grad(lambda th: upper(inner(w0, th["lam"]))))
        return vg
    got = _optx()
    if got is None:
        return None
    optx, lx = got

    def solve(lam):
        A = lx.MatrixLinearOperator(X.T @ X + lam * jnp.eye(n), lx.positive_semidefinite_tag)
        return lx.linear_solve(A, X.T @ y, lx.Cholesky()).value

    return jax.jit(jax.value_and_grad(lambda th: upper(solve(th["lam"]))))


# ----------------------------------------------------------------- digits
def _xent(logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def digits(kind, d, W0, eps, delta, max_iter):
    """Multinomial logistic regression with one l2 penalty exp(θ) per weight."""
    Xtr, ytr, Xval, yval = d["Xtr"], d["ytr"], d["Xval"], d["yval"]

    def g(W, theta):
        return _xent(Xtr @ W, ytr) + 0.5 * jnp.sum(jnp.exp(theta) * W * W)

    if kind == "jaxopt":
        jaxopt = _jaxopt()
        if jaxopt is None:
            return None
        solver = jaxopt.LBFGS(g, maxiter=max_iter, tol=eps, history_size=10, linesearch="zoom",
                              implicit_diff_solve=_cg_jaxopt(jaxopt, delta))

        def f(th):
            return _xent(Xval @ solver.run(W0, th["theta"]).params, yval)
    else:
        got = _optx()
        if got is None:
            return None
        optx, lx = got
        solver = optx.LBFGS(rtol=0.0, atol=_OPTX_ATOL, history_length=10)

        def f(th):
            sol = optx.minimise(g, solver, W0, th["theta"], max_steps=max_iter, throw=False,
                                adjoint=_adjoint_optx(optx, lx, delta), tags=_tags(lx))
            return _xent(Xval @ sol.value, yval)

    return jax.jit(jax.value_and_grad(f))


#: optimistix stops on the changes of x and f (not on ‖∇g‖): this atol brings ‖∇g‖ below
#: 1e-6 on digits and TV (the script prints every side's hypergradient error)
_OPTX_ATOL = 1e-10


# --------------------------------------------------------------------- TV
def tv(kind, d, X0, eps, delta, max_iter):
    """Smoothed TV denoising of each image; upper mean of 0.5‖x − clean‖²."""
    noisy, clean = d["noisy"], d["clean"]
    n = noisy.shape[0]
    eps_i, delta_i = eps / math.sqrt(n), delta / math.sqrt(n)

    def g(x, theta, y):
        dx = jnp.diff(x, axis=1, append=x[:, -1:])
        dy = jnp.diff(x, axis=0, append=x[-1:, :])
        return 0.5 * jnp.sum((x - y) ** 2) + theta["alpha"] * jnp.sum(jnp.sqrt(dx * dx + dy * dy + theta["nu"] ** 2))

    def upper(X):
        return jnp.mean(0.5 * jnp.sum((X - clean) ** 2, axis=(1, 2)))

    if kind == "jaxopt":
        jaxopt = _jaxopt()
        if jaxopt is None:
            return None
        solver = jaxopt.ProximalGradient(g, maxiter=max_iter, tol=eps_i, acceleration=True,
                                         implicit_diff_solve=_cg_jaxopt(jaxopt, delta_i))

        def one(x0, y, th):
            return solver.run(x0, None, th, y).params
    else:
        got = _optx()
        if got is None:
            return None
        optx, lx = got
        solver = optx.NonlinearCG(rtol=0.0, atol=_OPTX_ATOL)

        def one(x0, y, th):
            return optx.minimise(lambda x, a: g(x, a[0], a[1]), solver, x0, (th, y), max_steps=max_iter,
                                 throw=False, adjoint=_adjoint_optx(optx, lx, delta_i), tags=_tags(lx)).value

    return jax.jit(jax.value_and_grad(lambda th: upper(jax.vmap(one, (0, 0, None))(X0, noisy, th))))


def lbfgs_evaluations(d, W0, theta, eps, max_iter):
    """Iterations and value-and-gradient evaluations of digits' lower solve to ‖∇g‖ ≤ ε:
    optax's L-BFGS (bil's ``lbfgs``, counted from its line search's state) and jaxopt's
    (its own counters); None for jaxopt when it is not installed."""
    import optax
    import optax.tree_utils as otu

    def g(W):
        return _xent(d["Xtr"] @ W, d["ytr"]) + 0.5 * jnp.sum(jnp.exp(theta) * W * W)

    opt = optax.lbfgs(memory_size=10)

    @jax.jit
    def run_optax():
        f0, g0 = jax.value_and_grad(g)(W0)

        def cond(c):
            return (jnp.linalg.norm(c[2]) > eps) & (c[4] < max_iter)

        def body(c):
            x, f, gr, st, k, n = c
            u, st = opt.update(gr, st, x, value=f, grad=gr, value_fn=g)
            n = n + otu.tree_get(st, "num_linesearch_steps")
            return optax.apply_updates(x, u), otu.tree_get(st, "value"), otu.tree_get(st, "grad"), st, k + 1, n

        c = jax.lax.while_loop(cond, body, (W0, f0, g0, opt.init(W0), 0, 1))
        return c[4], c[5]

    out = {"optax (bil)": tuple(int(v) for v in run_optax())}
    jaxopt = _jaxopt()
    if jaxopt is not None:
        s = jax.jit(jaxopt.LBFGS(g, maxiter=max_iter, tol=eps, history_size=10, linesearch="zoom").run)(W0).state
        out["jaxopt"] = int(s.iter_num), int(s.num_fun_eval)
    return out


def print_peers(rows, peers, eps):
    """The peers table: ms per hypergradient and bil / best peer; each side's error vs the reference.

    Two comparisons of like with like: bil as an ordinary JAX function
    (``jax.jit(jax.value_and_grad(prog.objective))``) against each peer's jitted call, both
    leaving device arrays; and the public ``value_and_hypergrad``, which returns numbers on the
    host (it reads the solves' statuses), against each peer's call with its result read as
    numbers (``float(f)``, ``np.asarray``)."""
    names = sorted({k for r in rows for k in r["peers"]}, key=peers.index)
    print(f"| problem | size | bil engine ms | bil jit(value_and_grad(objective)) ms "
          f"| {' | '.join(k + ' ms' for k in names)} | objective / best peer "
          f"| bil API ms | {' | '.join(k + ' read ms' for k in names)} | API / best peer read |")
    print("|" + " --- |" * (7 + 2 * len(names)))
    for r in rows:
        ms = [r["peers"][k]["ms"] if k in r["peers"] else math.nan for k in names]
        rd = [r["peers"][k]["read_ms"] if k in r["peers"] else math.nan for k in names]
        best = min((m for m in ms if m == m), default=math.nan)
        best_rd = min((m for m in rd if m == m), default=math.nan)
        print(f"| {r['problem']} | {r['size']} | {r['bil_ms']:.3f} | {r['objective_ms']:.3f} | "
              + " | ".join(f"{m:.3f}" for m in ms) + f" | {r['objective_ms'] / best:.2f} | {r['api_ms']:.3f} | "
              + " | ".join(f"{m:.3f}" for m in rd) + f" | {r['api_ms'] / best_rd:.2f} |")
    print(f"\nmedian of {rows[0]['repeats']} samples each (a call, or the mean of a block of calls "
          f"≥ 2 ms for shorter ones), compile excluded, ε = δ = {eps:g}; "
          "hypergradient error relative to bil at 1e-10:")
    for r in rows:
        errs = "; ".join(f"{k} {v['err']:.1e}" for k, v in r["peers"].items())
        print(f"  {r['problem']} {r['size']}: bil {r['bil_err']:.1e} (API {r['api_err']:.1e}, objective {r['objective_err']:.1e}); {errs}")
