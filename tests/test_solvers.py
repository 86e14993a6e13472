"""Tests for the numerical kernels: lower solvers, CG/linear algebra, unrolled training."""

import bil  # noqa: F401  (enables float64 before any array is created)

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bil.runtime.linear import cg, direct_solve, hvp
from bil.runtime.solvers import SOLVERS, solve, strong_convexity_estimate
from bil.runtime.train import make_optimizer, train

# The suite is dominated by XLA compile time; cheaper LLVM codegen makes it
# about twice as fast and does not change what is being tested.
jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})

ALL = ["lbfgs", "fista", "gd", "newton_cg"]


# ----------------------------------------------------------------------------
# problems
#
# Compilation dominates the run time, so (almost) every solver test uses one
# objective family and one jitted solve per method, with tol and max_iter
# traced: obj(x, p) = 0.5 z^T A z - b^T z + a * mean(log(1 + exp(-y * F z))),
# z = concat(x["u"], x["v"]).  a = 0 gives a quadratic with known minimizer,
# A = lam*I, b = 0, a = 1 a ridge-regularized logistic regression, a = nan a
# NaN objective.

N = 12
TRACES = []  # one entry per trace of obj: a recompilation counter


def obj(x, p):
    TRACES.append(1)  # Python side effect: runs only while tracing
    z = jnp.concatenate([x["u"], x["v"]])
    m = p["y"] * (p["F"] @ z)
    return 0.5 * z @ p["A"] @ z - p["b"] @ z + p["a"] * jnp.mean(jnp.logaddexp(0.0, -m))


def split(z):
    z = jnp.asarray(z)
    return {"u": z[:5], "v": z[5:]}


def join(x):
    return jnp.concatenate([x["u"], x["v"]])


def _spd(n, seed, lam=0.1):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    return M @ M.T / n + lam * np.eye(n), rng.normal(size=n)


_rng = np.random.default_rng(1)
F_L = _rng.normal(size=(40, N))
Y_L = np.sign(F_L @ _rng.normal(size=N) + 0.5 * _rng.normal(size=40))
LAM = 0.1


def params(A, b, a):
    return {"A": jnp.asarray(A), "b": jnp.asarray(b), "a": jnp.asarray(a, float),
            "F": jnp.asarray(F_L), "y": jnp.asarray(Y_L)}


A_Q, B_Q = _spd(N, 0)
X_Q = np.linalg.solve(A_Q, B_Q)
P_Q = params(A_Q, B_Q, 0.0)
P_L = params(LAM * np.eye(N), np.zeros(N), 1.0)
P_NAN = params(A_Q, B_Q, np.nan)
X0 = split(np.zeros(N))


def _logistic_hessian(w):
    s = 1.0 / (1.0 + np.exp(Y_L * (F_L @ w)))       # sigma(-m)
    g = -(F_L.T @ (Y_L * s)) / len(Y_L) + LAM * w
    H = (F_L.T * (s * (1 - s))) @ F_L / len(Y_L) + LAM * np.eye(N)
    return g, H


def _logistic_reference():
    """Plain numpy Newton's method with the exact Hessian."""
    w = np.zeros(N)
    for _ in range(30):
        g, H = _logistic_hessian(w)
        w = w - np.linalg.solve(H, g)
    return w


W_L = _logistic_reference()


def solver_fn(method, options=(), bounded=False):
    opts = dict(options)
    if bounded:
        return lambda x0, p, tol, max_iter, lo, hi: solve(
            method, obj, x0, p, tol, max_iter, opts, bounds=(lo, hi))
    return lambda x0, p, tol, max_iter: solve(method, obj, x0, p, tol, max_iter, opts)


@functools.lru_cache(maxsize=None)
def jsolve(method, options=(), bounded=False):
    """One jitted solve per (method, options); x0, params, tol, max_iter traced."""
    return jit(solver_fn(method, options, bounded))


def run(method, x0, p, tol, max_iter=5000):
    return jsolve(method)(x0, p, tol, max_iter)


# ----------------------------------------------------------------------------
# lower solvers


@pytest.mark.parametrize("method", ALL)
def test_quadratic_to_1e_10(method):
    r = run(method, X0, P_Q, 1e-10)
    assert int(r.status) == 0 and int(r.iters) > 0
    assert float(r.grad_norm) <= 1e-10
    # ||x - x*|| <= ||grad|| / lambda_min
    lmin = np.linalg.eigvalsh(A_Q)[0]
    assert np.linalg.norm(join(r.x) - X_Q) <= 1e-10 / lmin
    g = A_Q @ join(r.x) - B_Q
    np.testing.assert_allclose(float(r.grad_norm), np.linalg.norm(g), rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("method", ALL)
def test_logistic_regression(method):
    r = run(method, X0, P_L, 1e-10)
    assert int(r.status) == 0 and int(r.iters) > 0
    np.testing.assert_allclose(join(r.x), W_L, atol=1e-8)
    # warm start at the solution: 0 iterations
    r = run(method, split(W_L), P_L, 1e-8)
    assert int(r.iters) == 0 and int(r.status) == 0


@pytest.mark.parametrize("method", ALL)
def test_max_iter_and_nonfinite_status(method):
    r = run(method, X0, P_L, 1e-14, max_iter=2)  # compiles here unless an earlier test did
    n_traces = len(TRACES)
    r = run(method, X0, P_L, 1e-14, max_iter=2)
    assert int(r.status) == 1 and int(r.iters) == 2
    assert np.isfinite(float(r.grad_norm))
    r = run(method, X0, P_L, 1e-14, max_iter=0)
    assert int(r.status) == 1 and int(r.iters) == 0
    r = run(method, X0, P_NAN, 1e-8)
    assert int(r.status) == 2 and int(r.iters) == 0
    # traced max_iter and tol: none of these calls recompiled
    assert len(TRACES) == n_traces


def test_fixed_step_divergence_is_nonfinite():
    # gd with a fixed step far beyond 2/L overflows: status 2, last finite x kept
    p = params(1e3 * np.eye(N), np.ones(N), 0.0)
    inf = split(np.full(N, np.inf))
    r = jsolve("gd", (("lr", 0.2),), True)(split(np.ones(N)), p, 1e-8, 5000,
                                             jax.tree.map(lambda a: -a, inf), inf)
    assert int(r.status) == 2 and 10 < int(r.iters) < 1000
    assert np.all(np.isfinite(join(r.x)))


@pytest.mark.parametrize("method,options", [
    ("fista", ()), ("fista", (("mu", 0.1),)), ("gd", ()), ("gd", (("lr", 0.2),))])
def test_box_constrained_quadratic(method, options):
    f = jsolve(method, options, True)
    # separable quadratic: the constrained minimizer is the clipped one
    d = np.linspace(0.5, 4.0, N)
    c = np.random.default_rng(2).normal(scale=3.0, size=N)
    lo = np.where(np.arange(N) % 3 == 0, -np.inf, -1.0)
    hi = np.where(np.arange(N) % 4 == 0, np.inf, 1.0)
    r = f(X0, params(np.diag(d), d * c, 0.0), 1e-10, 5000, split(lo), split(hi))
    assert int(r.status) == 0
    np.testing.assert_allclose(join(r.x), np.clip(c, lo, hi), atol=1e-9)
    # general quadratic: check the KKT conditions
    r = f(X0, P_Q, 1e-10, 5000, split(np.full(N, -0.3)), split(np.full(N, 0.3)))
    assert int(r.status) == 0
    x = np.asarray(join(r.x))
    g = A_Q @ x - B_Q
    assert np.all(np.abs(x) <= 0.3 + 1e-15)
    free = np.abs(np.abs(x) - 0.3) > 1e-8
    assert np.all(np.abs(g[free]) <= 1e-9)          # interior: zero gradient
    assert np.all(g[~free] * np.sign(x[~free]) <= 1e-9)  # active: points outward
    assert np.any(~free)
    # warm start at the solution: 0 iterations
    r2 = f(r.x, P_Q, 1e-9, 5000, split(np.full(N, -0.3)), split(np.full(N, 0.3)))
    assert int(r2.iters) == 0


@pytest.mark.parametrize("method", ["lbfgs", "newton_cg"])
def test_unbounded_only_solvers_reject_bounds(method):
    with pytest.raises(ValueError, match="does not support bounded"):
        solve(method, obj, X0, P_Q, 1e-6, 10, bounds=(X0, X0))


def test_unknown_solver_and_option():
    with pytest.raises(ValueError):
        solve("bfgs", obj, X0, P_Q, 1e-6, 10)
    with pytest.raises(ValueError, match="unknown option"):
        solve("fista", obj, X0, P_Q, 1e-6, 10, {"memory": 3})
    assert set(SOLVERS) == set(ALL) | {"direct", "cg"}  # those two: tests/test_quadratic.py


@pytest.mark.parametrize("method", ["fista", "lbfgs"])
def test_no_recompilation_when_tol_changes(method):
    f = jsolve(method)
    r1 = f(X0, P_L, 1e-3, 5000)
    n_traces, n_cache = len(TRACES), f._cache_size()
    r2 = f(X0, P_L, 1e-10, 5000)
    r3 = f(X0, P_L, 1e-6, 5000)
    assert len(TRACES) == n_traces and f._cache_size() == n_cache
    assert int(r1.iters) < int(r3.iters) < int(r2.iters)


@pytest.mark.parametrize("method", ["fista", "lbfgs"])
def test_vmapped_solve(method):
    lams = jnp.array([0.01, 0.1, 1.0])
    pb = {**P_L, "A": lams[:, None, None] * jnp.eye(N)}
    axes = {k: (0 if k == "A" else None) for k in P_L}
    x0 = {"u": jnp.zeros((3, 5)), "v": jnp.zeros((3, 7))}
    rb = jit(jax.vmap(solver_fn(method), in_axes=(0, axes, None, None)))(x0, pb, 1e-10, 5000)
    assert np.all(np.asarray(rb.status) == 0)
    for i in range(3):
        ri = run(method, X0, {**P_L, "A": pb["A"][i]}, 1e-10)
        np.testing.assert_allclose(join(jax.tree.map(lambda a: a[i], rb.x)), join(ri.x),
                                   atol=1e-9)
        assert int(rb.iters[i]) == int(ri.iters)


def test_strong_convexity_estimate():
    est = jit(lambda x, p: strong_convexity_estimate(obj, x, p, iters=N))
    np.testing.assert_allclose(float(est(X0, P_Q)), np.linalg.eigvalsh(A_Q)[0], rtol=1e-8)
    H = _logistic_hessian(W_L)[1]
    np.testing.assert_allclose(float(est(split(W_L), P_L)), np.linalg.eigvalsh(H)[0],
                               rtol=1e-8)


# ----------------------------------------------------------------------------
# linear algebra


def _mv(A):
    return lambda x: split(A @ join(x))


@functools.lru_cache(maxsize=None)
def jcg():
    return jit(lambda A, b, x0, tol, max_iter: cg(_mv(A), b, x0, tol, max_iter))


def test_cg_exact_on_spd_and_warm_start():
    A, b = _spd(N, 3)
    f = jcg()
    r = f(A, split(b), X0, 1e-12, 100)
    assert int(r.status) == 0 and 0 < int(r.iters) <= 3 * N
    np.testing.assert_allclose(join(r.x), np.linalg.solve(A, b), atol=1e-10)
    # the reported residual is the true absolute residual, and respects tol
    # (both residuals are at roundoff level here, ~1e-14: compare them against the
    # roundoff of evaluating A x - b, not with a relative tolerance)
    x = join(r.x)
    true_res = np.linalg.norm(A @ x - b)
    roundoff = 64 * np.finfo(float).eps * (np.linalg.norm(A, 2) * np.linalg.norm(x) + np.linalg.norm(b))
    assert true_res <= 1e-12 + roundoff
    assert abs(float(r.residual) - true_res) <= roundoff
    # warm start at the solution: 0 iterations; near it: fewer iterations
    r0 = f(A, split(b), r.x, 1e-12, 100)
    assert int(r0.iters) == 0 and int(r0.status) == 0
    rw = f(A, split(b), split(np.linalg.solve(A, b) + 1e-6), 1e-12, 100)
    assert int(rw.status) == 0 and int(rw.iters) < int(r.iters)
    assert f._cache_size() == 1


def test_cg_absolute_residual_and_max_iter():
    f = jcg()
    A, b = _spd(N, 4, lam=1e-3)
    b = 1e3 * b  # large ||b||: a relative criterion would stop much earlier
    iters = []
    for tol in [1e-1, 1e-4, 1e-9]:
        r = f(A, split(b), X0, tol, 500)
        assert int(r.status) == 0
        assert np.linalg.norm(A @ join(r.x) - b) <= tol
        iters.append(int(r.iters))
    assert iters == sorted(iters) and iters[0] < iters[-1]
    r = f(A, split(b), X0, 1e-12, 3)
    assert int(r.status) == 1 and int(r.iters) == 3
    assert float(r.residual) > 1e-12


def test_cg_negative_curvature_flag():
    A = np.diag(np.linspace(-1.0, 3.0, N))
    r = jcg()(A, split(np.ones(N)), X0, 1e-10, 50)
    assert int(r.status) == 3
    assert np.all(np.isfinite(join(r.x)))
    r = jcg()(np.full((N, N), np.nan), split(np.ones(N)), X0, 1e-10, 50)
    assert int(r.status) == 2


def test_hvp_and_direct_solve():
    w = split(W_L + 0.1)
    H = _logistic_hessian(W_L + 0.1)[1]
    v = np.arange(N, dtype=float)
    A, b = _spd(N, 5)
    A[0, 1] += 0.3  # direct_solve does not need symmetry

    @jit
    def compute(w, v, A, b):
        return (hvp(obj, w, P_L, v),
                direct_solve(_mv(A), b),
                direct_solve(lambda u: hvp(obj, w, P_L, u), b))  # through an HVP operator

    hv, x_a, x_h = compute(w, split(v), A, split(b))
    np.testing.assert_allclose(join(hv), H @ v, rtol=1e-10)
    np.testing.assert_allclose(join(x_a), np.linalg.solve(A, b), rtol=1e-10)
    np.testing.assert_allclose(join(x_h), np.linalg.solve(H, b), rtol=1e-10)


# ----------------------------------------------------------------------------
# unrolled training

F_T = jnp.asarray(F_L[:, :6])
P_T = {"F": F_T, "y": jnp.asarray(F_L[:, :6] @ np.linspace(-1, 1, 6) + 0.3), "lam": 0.1}
X0_T = {"w": jnp.zeros(6), "b": jnp.zeros(())}


def ridge_loss(x, p):
    r = p["F"] @ x["w"] + x["b"] - p["y"]
    return 0.5 * jnp.mean(r ** 2) + 0.5 * p["lam"] * x["w"] @ x["w"]


@pytest.mark.parametrize("opt,kw", [
    ("sgd", {"lr": 0.1}), ("adam", {"lr": 0.05}), ("rmsprop", {"lr": 0.01}),
    ("adagrad", {"lr": 0.5}), ("momentum", {"learning_rate": 0.05, "nesterov": True})])
def test_train_reduces_loss(opt, kw):
    x, losses = jit(lambda p: train(ridge_loss, X0_T, p, opt, kw, 100))(P_T)
    assert losses.shape == (100,)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert float(ridge_loss(x, P_T)) < 0.2 * float(losses[0])


def test_make_optimizer_errors():
    with pytest.raises(ValueError):
        make_optimizer("lion", {"lr": 0.1})
    with pytest.raises(ValueError):
        make_optimizer("sgd", {"lr": 0.1, "beta": 3})


def _val_loss(x):
    return jnp.sum((x["w"] - 0.3) ** 2) + x["b"] ** 2


@functools.lru_cache(maxsize=None)
def hypergrad(opt, truncate=None, steps=60):
    """Jitted value and gradient of a validation loss after training, w.r.t. (lr, lam)."""
    def F(lr, lam):
        kw = {"lr": lr, **({"momentum": 0.5} if opt == "sgd" else {})}
        x, _ = train(ridge_loss, X0_T, {**P_T, "lam": lam}, opt, kw, steps, truncate)
        return _val_loss(x)
    return jit(jax.value_and_grad(F, argnums=(0, 1)))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_grad_wrt_learning_rate_matches_finite_differences(opt):
    F = hypergrad(opt)
    lr, lam, h = 0.05, 0.1, 1e-6
    _, g = F(lr, lam)
    fd_lr = (F(lr + h, lam)[0] - F(lr - h, lam)[0]) / (2 * h)
    fd_lam = (F(lr, lam + h)[0] - F(lr, lam - h)[0]) / (2 * h)
    np.testing.assert_allclose(float(g[0]), float(fd_lr), rtol=1e-6)
    np.testing.assert_allclose(float(g[1]), float(fd_lam), rtol=1e-6)


def test_truncated_backprop():
    vfull, gfull = hypergrad("sgd", None)(0.05, 0.1)
    vsame, gsame = hypergrad("sgd", 60)(0.05, 0.1)
    vtrunc, gtrunc = hypergrad("sgd", 10)(0.05, 0.1)
    np.testing.assert_allclose(np.asarray(gsame), np.asarray(gfull), rtol=1e-12)
    assert abs(float(gtrunc[0]) - float(gfull[0])) > 1e-6 * abs(float(gfull[0]))
    # the forward pass is unchanged by truncation
    np.testing.assert_allclose([float(vsame), float(vtrunc)], float(vfull), rtol=1e-12)


def test_bounded_train_variables_take_projected_steps():
    """A bounded lower variable under a `train` goal stays in its box (each optimizer step is
    projected); its bounds used to be ignored silently."""
    import bil

    prog = bil.compile("""
data X, y = (randn(30, 4, seed=0), 3 * randn(30, seed=1))
hyper lam : positive = 0.1
lower {
    w : real[4] in [-0.1, 0.1] = 0
    train 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w) with sgd(lr=0.01) for 20 steps
}
upper minimize sumsq(X @ w - y)
""")
    w = prog.solve_lower({"lam": 0.1})["w"]
    assert np.all(np.abs(w) <= 0.1 + 1e-15) and np.any(np.abs(w) == 0.1)
