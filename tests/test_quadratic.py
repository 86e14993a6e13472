"""The `direct` and `cg` lower solvers for quadratic lower problems (bil/runtime/quadratic.py),
their default choice (bil/compiler/passes/solver_choice.py) and the adjoint reusing
direct's factorisation."""

import bil  # noqa: F401  (float64 before any array is created)

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bil.runtime import quadratic
from bil.runtime.solvers import solve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ------------------------------------------------------------------ solvers vs numpy
def _ill_conditioned(n, cond, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (Q * np.logspace(0, -np.log10(cond), n)) @ Q.T, rng.normal(size=n)


def _quad(x, p):
    z = jnp.concatenate([x["u"], x["v"].ravel()])
    return 0.5 * z @ p["A"] @ z - p["b"] @ z


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_quadratic_solvers_match_numpy(method):
    A, b = _ill_conditioned(12, 1e6)
    p = {"A": jnp.asarray(A), "b": jnp.asarray(b)}
    x0 = {"u": jnp.zeros(4), "v": jnp.ones((2, 4))}
    r = jax.jit(lambda x0, tol: solve(method, _quad, x0, p, tol, 500))(x0, 1e-10)
    assert int(r.status) == 0 and float(r.grad_norm) <= 1e-10
    z = np.concatenate([r.x["u"], np.ravel(r.x["v"])])
    ref = np.linalg.solve(A, b)
    # ‖x − x*‖ ≤ ‖∇g‖/λmin = 1e-10·1e6
    assert np.linalg.norm(z - ref) <= 1e-4 * 1.01
    assert r.x["v"].shape == (2, 4)
    # an accurate warm start costs nothing
    again = solve(method, _quad, r.x, p, 1e-10, 500)
    assert int(again.iters) == 0


def test_factor_falls_back_to_lu_where_cholesky_breaks_down():
    H = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # symmetric, indefinite
    F = quadratic.factor(H)
    assert not bool(F.chol)
    b = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(quadratic.factor_solve(F, b), np.linalg.solve(np.asarray(H), b), rtol=1e-14)
    F = quadratic.factor(jnp.eye(3) * 2.0)
    assert bool(F.chol)
    np.testing.assert_allclose(quadratic.factor_solve(F, b), b / 2.0, rtol=1e-15)


def test_quadratic_solvers_reject_bounds():
    p = {"A": jnp.eye(12), "b": jnp.zeros(12)}
    x0 = {"u": jnp.zeros(4), "v": jnp.zeros((2, 4))}
    for method in ("direct", "cg"):
        with pytest.raises(ValueError, match="does not support bounded"):
            solve(method, _quad, x0, p, 1e-6, 10, bounds=(x0, x0))


# ------------------------------------------------------------- kernel ridge, nearly singular
def _kernel_data():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 1, 60))
    tv = rng.uniform(0, 1, 30)
    y, yv = np.sin(6 * t) + 0.1 * rng.normal(size=60), np.sin(6 * tv)
    return dict(D2=(t[:, None] - t[None, :]) ** 2, D2v=(tv[:, None] - t[None, :]) ** 2, y=y, yv=yv)


KERNEL_RIDGE = """
problem kernel_ridge
hyper gamma : positive = 10.0
hyper lam : positive = 1e-6
lower {
    a : real[60] = 0
    minimize 0.5 * dot(a, exp(-gamma * D2) @ a) + 0.5 * lam * sumsq(a) - dot(a, y)
}
upper minimize 0.5 * sumsq(exp(-gamma * D2v) @ a - yv)
"""


def test_kernel_ridge_nearly_singular_is_solved_to_its_tolerance():
    """RBF kernel of 60 points, γ = 10, λ = 1e-6: K + λI has condition number 3e7 (L-BFGS
    stops at ‖∇g‖ ≈ 3e-6 after 10000 iterations).  The default solver is direct, which
    reaches ‖∇g‖ ≤ 1e-8 and the hypergradient of the closed form."""
    d = _kernel_data()
    prog = bil.compile(KERNEL_RIDGE, data=d)
    assert prog.state.options["lower"]["solver"].name == "direct"
    a = prog.solve_lower(tol=1e-8)["a"]
    g_, l_ = 10.0, 1e-6
    K, Kv = np.exp(-g_ * d["D2"]), np.exp(-g_ * d["D2v"])
    A = K + l_ * np.eye(60)
    ref = np.linalg.solve(A, d["y"])
    # ‖a − a*‖ ≤ ‖∇g‖/λmin(A) = 1e-8/1e-6 (‖a*‖ ≈ 6e5)
    assert np.linalg.norm(a - ref) <= 1e-2
    value, grads = prog.value_and_hypergrad(tol=1e-8)
    r = Kv @ ref - d["yv"]
    dl = -(r @ Kv) @ np.linalg.solve(A, ref)
    dg = r @ ((-d["D2v"] * Kv) @ ref) - (r @ Kv) @ np.linalg.solve(A, (-d["D2"] * K) @ ref)
    assert value == pytest.approx(0.5 * r @ r, rel=1e-8)
    # the closed form's own accuracy: cond(A)·eps ≈ 6e-9
    assert grads["lam"] == pytest.approx(dl, rel=1e-6)
    assert grads["gamma"] == pytest.approx(dg, rel=1e-6)


# --------------------------------------------------------------- ridge: closed form, FD
def _ridge_closed_form(prog, lam):
    X, y, Xv, yv = (np.asarray(prog.state.data[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    A = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(A, X.T @ y)
    r = Xv @ w - yv
    return 0.5 * np.mean(r ** 2), r @ (Xv @ -np.linalg.solve(A, w)) / len(yv)


@pytest.fixture(scope="module")
def ridge():
    return bil.compile(EXAMPLES / "ridge.bil")


def test_ridge_defaults_to_direct_and_matches_the_closed_form(ridge):
    assert ridge.state.options["lower"]["solver"].name == "direct"
    for lam in (1.0, 1e-2):
        value, grads = ridge.value_and_hypergrad({"lam": lam})
        f, df = _ridge_closed_form(ridge, lam)
        assert value == pytest.approx(f, rel=1e-10)
        assert grads["lam"] == pytest.approx(df, rel=1e-8)


def test_ridge_direct_matches_finite_differences_and_prog_objective(ridge):
    lam, h = 0.3, 1e-4
    _, grads = ridge.value_and_hypergrad({"lam": lam})
    fd = (ridge.value_and_hypergrad({"lam": lam + h})[0] - ridge.value_and_hypergrad({"lam": lam - h})[0]) / (2 * h)
    # central differences: error O(h²·F''') ≈ 1e-9 of a derivative ≈ 1e-3
    assert grads["lam"] == pytest.approx(fd, rel=1e-5)
    # jax.grad / jax.jvp of prog.objective: the implicit rule factors the Hessian itself
    g = jax.grad(ridge.objective)({"lam": lam})["lam"]
    _, t = jax.jvp(ridge.objective, ({"lam": jnp.asarray(lam)},), ({"lam": jnp.asarray(1.0)},))
    assert float(g) == pytest.approx(grads["lam"], rel=1e-8)
    assert float(t) == pytest.approx(grads["lam"], rel=1e-8)
    # second derivative against differences of the closed-form first derivative
    hess = jax.hessian(ridge.objective)({"lam": jnp.asarray(lam)})["lam"]["lam"]
    d2 = (_ridge_closed_form(ridge, lam + h)[1] - _ridge_closed_form(ridge, lam - h)[1]) / (2 * h)
    assert float(hess) == pytest.approx(d2, rel=1e-5)


def test_direct_adjoint_reuses_the_lower_factor(ridge):
    """With the direct lower solver the adjoint is one solve with the lower factor: no CG."""
    eng = ridge.engine
    theta = dict(ridge.lowered.theta0)
    X0 = eng.init_lower_user(theta)
    hg, (gn, res) = eng.hypergradient(theta, X0, eng.init_adjoint(X0), 1e-10, 1e-10, coords="theta")
    assert int(hg.lower_status) == 0 and int(hg.cg_status) == 0
    assert float(gn) <= 1e-10 and float(res) <= 1e-10
    assert int(hg.lower_iters) <= 2 and int(hg.cg_iters) <= 2  # one solve, at most one refinement


# ------------------------------------------------------------------ the default choice
CHOICE = """
data y = randn(%d, seed=0)
hyper lam : positive = 1.0
lower {
    w : %s[%d] = 1
    minimize 0.5 * sumsq(w - y) + lam * sumsq(w[1:] - w[:-1])
    %s
}
upper minimize sumsq(w)
"""


@pytest.mark.parametrize("n, kind, option, expected", [
    (50, "real", "", "direct"),
    (2001, "real", "", "cg"),           # above DIRECT_MAX_N: matrix-free
    (50, "positive", "", "fista"),      # bounds need a projected method
    (50, "real", "solver: lbfgs", "lbfgs"),  # an explicit choice is kept
    (2001, "real", "solver: direct()", "direct"),
])
def test_default_solver_choice(n, kind, option, expected):
    from bil.compiler.render.text import structure_lines as _structure_lines

    st = bil.compile(CHOICE % (n, kind, n, option)).state
    assert st.options["lower"]["solver"].name == expected
    lines = "\n".join(_structure_lines(st))
    assert f"solved by {expected}" in lines or f"by {expected}(" in lines, lines


def test_cg_default_solves_a_large_quadratic():
    prog = bil.compile(CHOICE % (2001, "real", 2001, ""))
    w = prog.solve_lower({"lam": 0.5})["w"]
    y = np.asarray(prog.state.data["y"])
    n = len(y)
    # (I + 2·lam·DᵀD) w = y, D the forward difference
    D = np.diff(np.eye(n), axis=0)
    np.testing.assert_allclose(w, np.linalg.solve(np.eye(n) + D.T @ D, y), atol=1e-9)


def test_one_pass_direct_certifies_its_single_solve():
    """Inside ``quadratic.one_pass()`` direct takes one Cholesky solve and reports status 0 only
    where ‖∇g‖ ≤ tol (1 above it, 2 where H is indefinite); the adjoint likewise."""
    A, b = _ill_conditioned(12, 1e6)
    p = {"A": jnp.asarray(A), "b": jnp.asarray(b)}
    x0 = {"u": jnp.zeros(4), "v": jnp.zeros((2, 4))}
    with quadratic.one_pass():
        ok = solve("direct", _quad, x0, p, 1e-6, 10)
        tight = solve("direct", _quad, x0, p, 1e-30, 10)
        bad = solve("direct", _quad, x0, {"A": -p["A"], "b": p["b"]}, 1e-6, 10)
    assert (int(ok.status), int(ok.iters)) == (0, 1) and float(ok.grad_norm) <= 1e-6
    assert int(tight.status) == 1 and int(bad.status) == 2
    x = np.concatenate([np.asarray(ok.x["u"]), np.asarray(ok.x["v"]).ravel()])
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-6)
    hv = lambda v: {"u": v["u"] * 2.0, "v": v["v"] * 2.0}   # noqa: E731
    F = quadratic.Factor(jnp.sqrt(2.0) * jnp.eye(12), jnp.arange(12, dtype=jnp.int32), jnp.bool_(True))
    with quadratic.one_pass():
        q, k, res, st = quadratic.factor_adjoint(F, hv, {"u": jnp.ones(4), "v": jnp.ones((2, 4))}, 1e-12)
    assert int(st) == 0 and float(res) <= 1e-12
    np.testing.assert_allclose(np.asarray(q["u"]), 0.5, rtol=1e-14)
