"""Hypergradients against closed forms, finite differences and each other.

These are the project's correctness tests: never skip or mark them slow.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bil


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture(scope="module")
def ridge_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8))
    w_true = rng.normal(size=8)
    y = X @ w_true + 0.5 * rng.normal(size=60)
    Xv = rng.normal(size=(40, 8))
    yv = Xv @ w_true + 0.5 * rng.normal(size=40)
    return X, y, Xv, yv


RIDGE = """
    data Xtr = load("ridge.npz", "X")
    data ytr = load("ridge.npz", "y")
    data Xval = load("ridge.npz", "Xv")
    data yval = load("ridge.npz", "yv")
    hyper lam : positive = 2.0
    lower {
        w : real[ncols(Xtr)] = 0
        minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * lam * sumsq(w)
    }
    upper minimize 0.5 * mean((Xval @ w - yval)^2)
"""


def ridge_closed_form(X, y, Xv, yv, lam):
    A = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(A, X.T @ y)
    dw = -np.linalg.solve(A, w)
    r = Xv @ w - yv
    return 0.5 * np.mean(r**2), np.mean(r * (Xv @ dw))


@pytest.fixture(scope="module")
def ridge_prog(tmp_path_factory, ridge_data):
    d = tmp_path_factory.mktemp("ridge")
    X, y, Xv, yv = ridge_data
    np.savez(d / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    return bil.compile(_write(d, "ridge.bil", RIDGE))


@pytest.mark.parametrize("lam", [0.1, 2.0, 30.0])
def test_ridge_matches_closed_form(ridge_prog, ridge_data, lam):
    value, grads = ridge_prog.value_and_hypergrad({"lam": lam}, tol=1e-11)
    v_ref, g_ref = ridge_closed_form(*ridge_data, lam)
    assert value == pytest.approx(v_ref, rel=1e-10)
    assert float(grads["lam"]) == pytest.approx(g_ref, rel=1e-8)


def test_ridge_direct_matches_closed_form(ridge_prog, ridge_data):
    _, grads = ridge_prog.value_and_hypergrad({"lam": 2.0}, tol=1e-11, method="direct")
    assert float(grads["lam"]) == pytest.approx(ridge_closed_form(*ridge_data, 2.0)[1], rel=1e-8)


def test_ridge_lower_solution(ridge_prog, ridge_data):
    X, y, _, _ = ridge_data
    w = ridge_prog.solve_lower({"lam": 2.0}, tol=1e-11)["w"]
    np.testing.assert_allclose(w, np.linalg.solve(X.T @ X + 2.0 * np.eye(8), X.T @ y), rtol=1e-9)


QUAD = """
    # Both levels quadratic: x*(θ) = A⁻¹(Bθ + c).
    data A = load("q.npz", "A")
    data B = load("q.npz", "B")
    data c = load("q.npz", "c")
    data C = load("q.npz", "C")
    data e = load("q.npz", "e")
    hyper theta : real[3] = 0.5
    lower {
        x : real[5] = 0
        minimize 0.5 * sum(x * (A @ x)) - sum(x * (B @ theta + c))
        solver: newton_cg
    }
    upper minimize 0.5 * sumsq(C @ x - e) + 0.05 * sumsq(theta)
"""


def test_quadratic_bilevel_closed_form(tmp_path):
    rng = np.random.default_rng(1)
    M = rng.normal(size=(5, 5))
    A = M @ M.T + 2 * np.eye(5)
    B, c, C, e = rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=(4, 5)), rng.normal(size=4)
    np.savez(tmp_path / "q.npz", A=A, B=B, c=c, C=C, e=e)
    prog = bil.compile(_write(tmp_path, "q.bil", QUAD))
    assert prog.state.structure["lower_quadratic"]
    theta = np.array([0.3, -1.0, 2.0])
    value, grads = prog.value_and_hypergrad({"theta": theta}, tol=1e-12)
    x = np.linalg.solve(A, B @ theta + c)
    ref = B.T @ np.linalg.solve(A, C.T @ (C @ x - e)) + 0.1 * theta
    assert value == pytest.approx(0.5 * np.sum((C @ x - e) ** 2) + 0.05 * theta @ theta, rel=1e-12)
    np.testing.assert_allclose(grads["theta"], ref, rtol=1e-9)


def central_fd(prog, name, index, h, tol=1e-12):
    base = prog.hypers
    out = []
    for s in (+1, -1):
        hyp = {k: np.array(v, dtype=float) for k, v in base.items()}
        hyp[name][index] += s * h
        out.append(prog.value_and_hypergrad(hyp, tol=tol)[0])
    return (out[0] - out[1]) / (2 * h)


TV = """
    data clean, noisy = denoising_pairs(["camera", "coins"], size=24, sigma=0.1, seed=0) per sample
    hyper alpha : positive = 0.02
    hyper nu    : positive = 0.05
    lower {
        x = noisy
        minimize 0.5 * sumsq(x - noisy) + alpha * tv(x, nu)
        solver: fista(mu=1)
    }
    upper minimize 0.5 * sumsq(x - clean)
"""


def test_tv_denoising_against_finite_differences():
    prog = bil.compile(TV)
    _, grads = prog.value_and_hypergrad(tol=1e-11)
    for name in ("alpha", "nu"):
        h = 1e-4 * float(prog.hypers[name])
        fd = central_fd(prog, name, (), h)
        assert float(grads[name]) == pytest.approx(fd, rel=1e-5), name


DIGITS = """
    data Xtr, ytr, Xval, yval = dataset("digits", split=0.5, seed=0, standardize=true)
    hyper theta : real[ncols(Xtr), nclasses(ytr)] = -3
    lower {
        W : real[ncols(Xtr), nclasses(ytr)] = 0
        minimize cross_entropy(Xtr @ W, ytr) + 0.5 * sum(exp(theta) * W^2)
    }
    upper minimize cross_entropy(Xval @ W, yval)
"""


def test_multinomial_logistic_against_finite_differences():
    prog = bil.compile(DIGITS)
    _, grads = prog.value_and_hypergrad(tol=1e-11)
    g = grads["theta"]
    # Check the entries with the largest gradients (FD on tiny ones is noise).
    for idx in np.argsort(-np.abs(g).ravel())[:3]:
        index = np.unravel_index(idx, g.shape)
        fd = central_fd(prog, "theta", index, 1e-4, tol=1e-12)
        assert g[index] == pytest.approx(fd, rel=1e-5), index


WELL_CONDITIONED = RIDGE.replace("hyper lam : positive = 2.0", "hyper lam : positive = 40.0")


def test_implicit_matches_unroll_to_convergence(tmp_path, ridge_data):
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    prog = bil.compile(_write(tmp_path, "r.bil", WELL_CONDITIONED))
    _, g_imp = prog.value_and_hypergrad(tol=1e-12)
    _, g_unr = prog.value_and_hypergrad(tol=1e-12, method="unroll(steps=3000)")
    assert float(g_unr["lam"]) == pytest.approx(float(g_imp["lam"]), rel=1e-6)
    # Truncated unrolling approaches the implicit value as K grows.
    errs = []
    for K in (1, 3, 30, 300, 3000):
        _, g = prog.value_and_hypergrad(tol=1e-12, method=f"unroll(steps=3000, truncate={K})")
        errs.append(abs(float(g["lam"]) - float(g_imp["lam"])))
    assert all(b <= a * 1.0001 for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6 * abs(float(g_imp["lam"])) < errs[0]


def test_neumann_approaches_implicit(ridge_prog):
    _, g_imp = ridge_prog.value_and_hypergrad({"lam": 30.0}, tol=1e-12)
    _, g_neu = ridge_prog.value_and_hypergrad({"lam": 30.0}, tol=1e-12, method="neumann(k=2000)")
    assert float(g_neu["lam"]) == pytest.approx(float(g_imp["lam"]), rel=1e-6)


def test_unroll_matches_implicit_on_tv_where_curvature_grows_along_the_path():
    """Smoothed TV is most curved near its solution (flat image regions), far more than at
    the noisy start: a step 1/L safe only at the start made the unrolled derivatives blow up
    (about 1e18 at 300 steps) while the values looked plausible."""
    from pathlib import Path

    prog = bil.compile(Path(__file__).resolve().parent.parent / "examples" / "tv_denoise.bil")
    theta = {"alpha": 0.08, "nu": 0.004}
    f_imp, g_imp = prog.value_and_hypergrad(theta, tol=1e-10)
    f_unr, g_unr = prog.value_and_hypergrad(theta, tol=1e-10, method="unroll(steps=400)")
    assert f_unr == pytest.approx(f_imp, rel=1e-9)
    for k in g_imp:
        assert float(g_unr[k]) == pytest.approx(float(g_imp[k]), rel=1e-6)


@pytest.mark.parametrize("method, products", [("neumann(k=7)", 7 + 30), ("neumann(k=7, alpha=0.001)", 7)])
def test_neumann_counts_every_hessian_product(ridge_prog, method, products):
    """Neumann's cost (cg_iters) includes the power iteration that estimates 1/L when
    alpha is not given: every method is compared on the same cost axis."""
    eng = ridge_prog.engine
    theta = ridge_prog._theta({"lam": 30.0})
    X0 = eng.init_lower_user(theta)
    hg, _ = eng.hypergradient(theta, X0, eng.init_adjoint(X0), 1e-10, 1e-10, coords="theta",
                              method=ridge_prog._method(method))
    assert int(hg.cg_iters) == products


def test_objective_is_a_differentiable_jax_function(ridge_prog, ridge_data):
    lam = 2.0
    ref_v, ref_g = ridge_closed_form(*ridge_data, lam)
    obj = ridge_prog.objective
    theta = {"lam": jnp.asarray(lam)}
    assert float(obj(theta)) == pytest.approx(ref_v, rel=1e-8)
    g = jax.grad(obj)(theta)
    assert float(g["lam"]) == pytest.approx(ref_g, rel=1e-7)
    g_jit = jax.jit(jax.grad(obj))(theta)
    assert float(g_jit["lam"]) == pytest.approx(ref_g, rel=1e-7)
    lams = jnp.array([0.5, 2.0, 8.0])
    g_vm = jax.vmap(jax.grad(obj))({"lam": lams})
    for i, l in enumerate([0.5, 2.0, 8.0]):
        _, g_ref = ridge_prog.value_and_hypergrad({"lam": l}, tol=1e-10)
        assert float(g_vm["lam"][i]) == pytest.approx(float(g_ref["lam"]), rel=1e-6)


def test_tolerances_are_traced_no_recompilation(ridge_prog):
    eng = ridge_prog.engine
    ridge_prog.value_and_hypergrad({"lam": 2.0}, tol=1e-6)
    fns = list(eng._jitted.values())
    sizes = [f._cache_size() for f in fns]
    for tol in (1e-4, 1e-8, 1e-10):
        ridge_prog.value_and_hypergrad({"lam": 3.0}, tol=tol)
    assert [f._cache_size() for f in fns] == sizes
    # and the outer-loop oracles (u coordinates, eps and delta separately)
    u = eng.u0
    x = eng.init_lower(u)
    q = eng.init_adjoint(x)
    eng.hypergrad(u, x, q, 1e-3, 1e-3)
    key_sizes = {k: f._cache_size() for k, f in eng._jitted.items()}
    for eps, delta in ((1e-5, 1e-2), (1e-9, 1e-9)):
        eng.hypergrad(u, x, q, eps, delta)
        eng.value(u, x, eps)
    assert all(eng._jitted[k]._cache_size() == s for k, s in key_sizes.items())


def test_unroll_does_not_depend_on_the_mu_estimate(ridge_prog, tmp_path, ridge_data):
    """Unrolled AGD uses a μ only when the spec gives one; estimating μ (MAID and
    HOAG ask for it) must not change the momentum of the unrolled iterations."""
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    fresh = bil.compile(_write(tmp_path, "r.bil", RIDGE))
    fresh.engine.mu()  # estimated before the unrolled map is traced
    m = "unroll(steps=40)"
    f_ref, g_ref = ridge_prog.value_and_hypergrad({"lam": 2.0}, method=m)
    f, g = fresh.value_and_hypergrad({"lam": 2.0}, method=m)
    assert f == f_ref and float(g["lam"]) == float(g_ref["lam"])


def test_unrolled_objective_is_differentiable(tmp_path, ridge_data):
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    prog = bil.compile(_write(tmp_path, "r.bil", WELL_CONDITIONED + "solve { hypergradient: unroll(steps=200) }\n"))
    theta = {"lam": jnp.asarray(40.0)}
    f_ref, g_ref = prog.value_and_hypergrad({"lam": 40.0})
    f, g = jax.value_and_grad(prog.objective)(theta)
    assert float(f) == pytest.approx(f_ref, rel=1e-12)
    assert float(g["lam"]) == pytest.approx(float(g_ref["lam"]), rel=1e-10)


def test_training_oracles_do_not_estimate_mu():
    """A train goal ignores the lower tolerance: no Lanczos estimate is compiled for it."""
    prog = bil.compile("""
        data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
        hyper lam : positive = 1.0
        lower {
            w : real[3] = 0
            train 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w) with sgd(lr=0.01) for 20 steps
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    eng = prog.engine
    x = eng.init_lower(eng.u0)
    eng.value(eng.u0, x, 1e-3)
    hg = eng.hypergrad(eng.u0, x, eng.init_adjoint(x), 1e-3, 1e-3)
    assert "mu" not in eng._jitted and eng._mu is None
    _, g = prog.value_and_hypergrad()
    assert float(hg.z["lam"]) == pytest.approx(float(g["lam"]) * 1.0, rel=1e-12)  # d/d log(lam) at lam = 1


def test_objective_takes_a_subset_of_the_hypers():
    prog = bil.compile("""
        data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
        hyper lam : positive = 1.0
        hyper c = 0.5
        lower {
            w : real[3] = 0
            minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w - c)
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    _, g_ref = prog.value_and_hypergrad({"lam": 2.0}, tol=1e-10)
    g = jax.grad(prog.objective)({"lam": jnp.asarray(2.0)})
    assert set(g) == {"lam"}
    assert float(g["lam"]) == pytest.approx(float(g_ref["lam"]), rel=1e-6)
    with pytest.raises(bil.BilError, match="lamb") as e:
        prog.objective({"lamb": 1.0})
    assert "did you mean `lam`" in e.value.hint


def test_hypers_outside_their_domain_are_rejected(ridge_prog):
    with pytest.raises(ValueError, match="positive") as e:    # a BilError and a ValueError
        ridge_prog.value_and_hypergrad({"lam": -1.0})
    assert isinstance(e.value, bil.BilError) and e.value.line is not None and e.value.hint
    for bad in (float("nan"), "x", np.ones(3)):
        with pytest.raises(bil.BilError):
            ridge_prog.value_and_hypergrad({"lam": bad})
    with pytest.raises(bil.BilError, match="max_iter"):
        ridge_prog.run(max_iter=0)


def test_traced_hypers_outside_their_domain_give_nan_not_a_plausible_value():
    """Under jit (or grad) the hypers are traced and cannot be refused: a negative `lam`, or `b`
    outside its bounds, gives NaN, value and gradient (it used to give finite numbers)."""
    prog = bil.compile("""
        data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
        hyper lam : positive[3] = 1.0
        hyper b : real in [-1, 1] = 0.2
        lower {
            w : real[3] = 0
            minimize 0.5 * sumsq(X @ w - y) + 0.5 * sum(lam * w^2) - b * sum(w)
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    vg = jax.jit(jax.value_and_grad(prog.objective))
    f, g = vg({"lam": jnp.array([1.0, 2.0, 0.5]), "b": jnp.asarray(0.3)})
    assert np.isfinite(float(f)) and np.all(np.isfinite(np.asarray(g["lam"])))
    for bad in ({"lam": jnp.array([-1.0, 1.0, 1.0])}, {"b": jnp.asarray(1.5)}, {"lam": jnp.array([1.0, jnp.nan, 1.0])}):
        f, g = vg({"lam": jnp.ones(3), "b": jnp.asarray(0.0), **bad})
        assert np.isnan(float(f)) and np.all(np.isnan(np.asarray(g["lam"])))
    assert np.isnan(float(jax.grad(prog.objective)({"b": jnp.asarray(-2.0)})["b"]))   # traced by grad alone
    with pytest.raises(bil.BilError, match="positive"):                               # concrete: refused
        prog.objective({"lam": [-1.0, 1.0, 1.0]})


def test_objective_is_nan_where_the_lower_solve_fails():
    """With max_iter 1 an iterative lower solve stops far from x*: the objective used to return a
    plausible wrong value (0.301 for 0.262) and a gradient of the wrong sign.  (lbfgs: the
    default for ridge, direct, is exact after its one step.)"""
    bad = bil.compile(Path(__file__).resolve().parent.parent / "examples" / "ridge.bil",
                      overrides={"lower.max_iter": 1, "lower.solver": "lbfgs"})
    assert np.isnan(float(bad.objective({"lam": 2.0})))
    assert np.isnan(float(jax.grad(bad.objective)({"lam": 2.0})["lam"]))


def ridge_second_derivative(X, y, Xv, yv, lam):
    """d²F/dλ² for ridge: w'' = 2 A⁻² w, F'' = mean((Xv w')²) + mean(r · Xv w'')."""
    A = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(A, X.T @ y)
    dw = -np.linalg.solve(A, w)
    d2w = 2 * np.linalg.solve(A, np.linalg.solve(A, w))
    r = Xv @ w - yv
    return np.mean((Xv @ dw) ** 2) + np.mean(r * (Xv @ d2w))


def test_objective_has_forward_mode_and_second_derivatives(tmp_path, ridge_data):
    """prog.objective is an ordinary JAX function: jvp, jacfwd, hessian and grad of grad
    (they used to raise or, for second derivatives, silently return 0); with CG and with the
    direct linear solve in the tangent systems."""
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    lam = 2.0
    _, g_ref = ridge_closed_form(*ridge_data, lam)
    h_ref = ridge_second_derivative(*ridge_data, lam)
    theta = {"lam": jnp.asarray(lam)}
    direct = bil.compile(_write(tmp_path, "d.bil", RIDGE + 'solve { hypergradient: implicit(linear="direct") }\n'))
    assert float(jax.hessian(direct.objective)(theta)["lam"]["lam"]) == pytest.approx(h_ref, rel=1e-8)
    obj = bil.compile(_write(tmp_path, "r.bil", RIDGE)).objective
    _, t = jax.jvp(obj, (theta,), ({"lam": jnp.asarray(1.0)},))
    assert float(t) == pytest.approx(g_ref, rel=1e-8)
    assert float(jax.jacfwd(obj)(theta)["lam"]) == pytest.approx(g_ref, rel=1e-8)
    assert float(jax.hessian(obj)(theta)["lam"]["lam"]) == pytest.approx(h_ref, rel=1e-8)
    gg = jax.grad(lambda th: jax.grad(obj)(th)["lam"])(theta)
    assert float(gg["lam"]) == pytest.approx(h_ref, rel=1e-8)
    hv = jax.vmap(jax.hessian(obj))({"lam": jnp.array([0.5, 2.0])})
    assert float(hv["lam"]["lam"][1]) == pytest.approx(h_ref, rel=1e-8)
    assert float(hv["lam"]["lam"][0]) == pytest.approx(ridge_second_derivative(*ridge_data, 0.5), rel=1e-8)


def _fd_hessian(prog, theta: dict, h=1e-4):
    """Central differences of tightly solved hypergradients."""
    names = list(theta)
    H = np.zeros((len(names), len(names)))
    for j, n in enumerate(names):
        g = [prog.value_and_hypergrad({**theta, n: theta[n] + s * h}, tol=1e-12)[1] for s in (1, -1)]
        for i, m in enumerate(names):
            H[i, j] = (float(g[0][m]) - float(g[1][m])) / (2 * h)
    return H


@pytest.mark.parametrize("spec, theta", [
    # active bounds: the tangent system is the reduced one, ẋ = 0 at the bound
    ("""
     data X, y = (randn(30, 6, seed=0), randn(30, seed=1))
     hyper lam : positive = 0.5
     hyper c = 0.3
     lower {
         w : real[6] in [0, 10] = 0
         minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w - c)
     }
     upper minimize 0.5 * sumsq(X @ w - y) + sum(w)
     """, {"lam": 0.5, "c": 0.3}),
    # per sample, non-quadratic lower problem (third derivatives enter the Hessian)
    ("""
     data A = randn(4, 5, 5, seed=2) per sample
     data b = randn(4, 5, seed=3) per sample
     hyper lam : positive = 1.0
     hyper s = 0.1
     lower {
         x : real[5] = 0
         minimize 0.5 * sumsq(A @ x - b) + 0.5 * lam * sumsq(x) + s * sum(x^4)
     }
     upper minimize 0.5 * sumsq(x - 0.2)
     """, {"lam": 1.0, "s": 0.1}),
], ids=["active-bounds", "per-sample-quartic"])
def test_objective_hessian_matches_finite_differences(spec, theta):
    prog = bil.compile(textwrap.dedent(spec))
    H = jax.hessian(prog.objective)({k: jnp.asarray(v) for k, v in theta.items()})
    Hm = np.array([[float(H[a][b]) for b in theta] for a in theta])
    np.testing.assert_allclose(Hm, _fd_hessian(prog, theta), rtol=1e-6, atol=1e-9)
    if "in [0, 10]" in spec:  # the case is only meaningful with bounds active at the solution
        w = np.asarray(prog.solve_lower(theta)["w"])
        assert np.any(w <= 1e-12) and np.any(w > 1e-3)


def test_second_derivatives_are_nan_where_the_lower_solve_fails():
    # lbfgs: the default for ridge, direct, is exact after its one step
    bad = bil.compile(Path(__file__).resolve().parent.parent / "examples" / "ridge.bil",
                      overrides={"lower.max_iter": 1, "lower.solver": "lbfgs"})
    assert np.isnan(float(jax.hessian(bad.objective)({"lam": jnp.asarray(2.0)})["lam"]["lam"]))
    assert np.isnan(float(jax.jvp(bad.objective, ({"lam": 2.0},), ({"lam": 1.0},))[1]))


def test_objective_normalises_its_inputs_and_compiles_once(ridge_prog):
    """Every input form of a hyper (Python float or int, numpy scalar of either precision,
    jax array, left out) reaches one compiled function, cast to the program's dtype."""
    obj = ridge_prog.objective
    ref = float(obj({"lam": jnp.asarray(2.0)}))
    for v in (2.0, 2, np.float32(2.0), np.float64(2.0), np.array(2.0)):
        assert float(obj({"lam": v})) == ref
    obj({})
    assert obj._jitted._cache_size() == 1
    with pytest.raises(bil.BilUsageError, match="broadcastable to shape"):
        obj({"lam": np.array([2.0])})
    with pytest.raises(bil.BilUsageError, match="positive"):
        obj({"lam": -1.0})
    with pytest.raises(bil.BilUsageError, match="dict"):
        obj(2.0)


def test_array_hypers_reach_the_objective_in_their_declared_shape():
    """A (5, 1) value for a positive[5] hyper used to broadcast silently to 5×5 inside the
    objective (a wrong value); a list is an array like in value_and_hypergrad."""
    prog = bil.compile("""
        data X, y = (randn(20, 5, seed=0), randn(20, seed=1))
        hyper c : positive[5] = 1.0
        lower {
            w : real[5] = 0
            minimize 0.5 * sumsq(X @ w - y) + 0.5 * sum(c * w^2)
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    c = [0.5, 1.0, 2.0, 0.3, 1.5]
    f_ref, g_ref = prog.value_and_hypergrad({"c": c})
    assert float(prog.objective({"c": c})) == pytest.approx(f_ref, rel=1e-10)
    g = jax.grad(prog.objective)({"c": jnp.asarray(c)})["c"]
    np.testing.assert_allclose(np.asarray(g), g_ref["c"], rtol=1e-6)
    with pytest.raises(bil.BilUsageError, match=r"shape \(5,\)"):
        prog.objective({"c": jnp.ones((5, 1))})


def test_derivatives_do_not_depend_on_the_scale_of_tangent_or_objective(tmp_path, ridge_data):
    """The tangent systems are solved to a residual relative to their right-hand side: an
    absolute 1e-8 made the JVP with a 1e8 tangent, and the gradient of a 1e10-scaled upper
    objective, NaN."""
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    _, g_ref = ridge_closed_form(*ridge_data, 2.0)
    prog = bil.compile(_write(tmp_path, "r.bil", RIDGE))
    for scale in (1.0, 1e8):
        _, t = jax.jvp(prog.objective, ({"lam": 2.0},), ({"lam": scale},))
        assert float(t) == pytest.approx(scale * g_ref, rel=1e-7)
    big = bil.compile(_write(tmp_path, "big.bil", RIDGE.replace("upper minimize 0.5 *", "upper minimize 1e10 * 0.5 *")))
    assert float(jax.grad(big.objective)({"lam": 2.0})["lam"]) == pytest.approx(1e10 * g_ref, rel=1e-7)


def test_float32_objective_and_api_defaults_are_usable(tmp_path, ridge_data):
    """The lower `tol:` default 1e-8 (and the API's 1e-10) is below what float32 resolves:
    the objective was always NaN and value_and_hypergrad raised.  float32 defaults to 1e-4."""
    X, y, Xv, yv = ridge_data
    np.savez(tmp_path / "ridge.npz", X=X, y=y, Xv=Xv, yv=yv)
    prog = bil.compile(_write(tmp_path, "r.bil", RIDGE + 'solve { precision: "float32" }\n'))
    assert prog.state.options["lower"]["tol"] == 1e-4
    v_ref, g_ref = ridge_closed_form(*ridge_data, 2.0)
    assert float(prog.objective({"lam": 2.0})) == pytest.approx(v_ref, rel=1e-4)
    assert float(jax.grad(prog.objective)({"lam": 2.0})["lam"]) == pytest.approx(g_ref, rel=1e-3)
    f, g = prog.value_and_hypergrad({"lam": 2.0})
    assert f == pytest.approx(v_ref, rel=1e-4) and float(g["lam"]) == pytest.approx(g_ref, rel=1e-3)
    assert prog.solve_lower({"lam": 2.0})["w"].dtype == np.float32
