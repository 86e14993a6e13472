"""Runs end where the achievable accuracy ends (exit 0, a reason that names ε), not in an error.

MAID and HOAG tighten the lower accuracy ε (and the adjoint residual δ) as they converge.
Where the lower solver cannot deliver what they ask (its iteration cap at a tightened ε),
a run that has certified a point stops there with a "accuracy floor reached at ε = ..."
reason; its result is as good as an independent grid search.  NaN and a failing first
solve stay failures (exit 1), and their message names the hypers.
"""

from __future__ import annotations

import math

import bil  # noqa: F401  (float64)
import numpy as np
import pytest

from quadratic_oracles import QuadraticOracles

from bil.cli import main
from bil.runtime.outer import run_outer
from bil.runtime.outer.floor import AUTO, auto_floors, floor_reason, hypers_text, is_floor_stop, resolve_floors


class FlooredSolver(QuadraticOracles):
    """A lower solver that cannot certify ε below ``floor``: asked for less, it runs to
    its cap (status 1), as an L-BFGS whose line search stagnates at roundoff does."""

    def __init__(self, floor: float, **kw):
        super().__init__(**kw)
        self.floor = float(floor)
        self.capped_calls = 0

    def _capped(self, res, eps):
        if eps >= self.floor:
            return res
        self.capped_calls += 1
        return res._replace(lower_status=np.int32(1), lower_iters=np.int32(self.lower_max_iter))

    def value(self, u, x0, eps, cap=None):
        return self._capped(super().value(u, x0, max(eps, self.floor), cap), eps)

    def hypergrad(self, u, x0, q0, eps, delta, cap=None):
        return self._capped(super().hypergrad(u, x0, q0, max(eps, self.floor), delta, cap), eps)


# ------------------------------------------------------------------ pieces
def test_floor_reason_and_helpers():
    r = floor_reason(3e-13, "the lower solve did not reach ε = 1.5e-13 within its iteration cap")
    assert is_floor_stop(r) and "ε = 3e-13" in r and "cannot be decreased further" in r
    assert not is_floor_stop("lower solve hit its iteration cap") and not is_floor_stop(None)
    x = {"w": np.full(4, 2.0)}                      # ‖x‖ = 4
    e, d = auto_floors(x, (1e-20, 1e-20), gx_norm=10.0)
    eps64 = float(np.finfo(np.float64).eps)
    assert e == pytest.approx(100 * eps64 * 4) and d == pytest.approx(100 * eps64 * 10)
    e32, _ = auto_floors({"w": np.full(4, 2.0, np.float32)}, (0.0, 0.0))
    assert e32 == pytest.approx(float(np.finfo(np.float32).eps) * 4)     # (float32's arithmetic floor has ‖H‖)
    # the arithmetic floor wins where it is larger; explicit numbers are kept above it
    assert auto_floors(x, (1.0, 2.0))[:2] == (1.0, 2.0)
    assert resolve_floors(1e-6, AUTO, x, (1e-9, 0.0), 10.0) == (1e-6, pytest.approx(100 * eps64 * 10))
    assert resolve_floors(1e-14, 1e-14, x, (1e-9, 1e-8)) == (1e-9, 1e-8)
    assert hypers_text({"lam": np.float64(0.5), "cw": np.arange(8.0)}) == \
        "lam = 0.5, cw = [0, 1, 2, 3, 4, 5, ...]"


# ------------------------------------------------------ MAID / HOAG on a floor
def test_maid_stops_at_the_solvers_floor_with_its_best_point():
    """tol is out of reach: MAID tightens ε until the solver caps, then stops (no error
    reason) at a point whose F is within roundoff-free distance of the optimum."""
    o = FlooredSolver(1e-7, lower_max_iter=500)
    r = run_outer(o, "maid", dict(tol=1e-14, max_iter=60))
    assert is_floor_stop(r.reason), r.reason
    assert not r.converged and o.capped_calls >= 1
    F_end, F_star = o.F(o.theta_of(r.u)), o.F(o.theta_star())
    F0 = o.F(o.theta_of(o.u0))
    assert F_end - F_star <= 1e-6 * (F0 - F_star)
    # the run stayed at its last accepted point, and the work past the floor is bounded
    last_step = max(i for i, rec in enumerate(r.history) if rec["step"] > 0)
    assert all(rec["step"] == 0 for rec in r.history[last_step + 1:])
    np.testing.assert_allclose(o.theta_of(r.u), [r.history[last_step][k] for k in ("hyper.a", "hyper.b[0]",
                                                                                   "hyper.b[1]", "hyper.b[2]")])
    assert o.capped_calls <= 2 * (8 + 1) + 2


def test_maid_capped_first_solve_is_still_a_failure():
    """No point certified yet (the solver cannot reach even ε₀): a failure, not a floor."""
    o = FlooredSolver(1.0)
    r = run_outer(o, "maid", dict(eps0=0.1, max_iter=5))
    assert r.reason == "lower solve hit its iteration cap"


def test_hoag_stops_at_the_solvers_floor():
    o = FlooredSolver(1e-6)
    r = run_outer(o, "hoag", dict(schedule="exponential", max_iter=400, tol=1e-14))
    assert is_floor_stop(r.reason) and "schedule's next tolerance" in r.reason
    assert r.failed_at is not None and r.history[-1]["step"] == 0.0
    assert math.isfinite(r.upper)


class EndlessRounds(QuadraticOracles):
    """Upper values with a fixed offset at every trial point: no decrease is ever certified."""

    def value(self, u, x0, eps, cap=None):
        v = super().value(u, x0, eps, cap)
        return v._replace(f=v.f + 1e6)


def test_maid_bounds_fruitless_rounds_in_one_iteration():
    """Rounds that never certify a decrease used to repeat (one more trial each) until ε hit
    1e-14; now at most _MAX_RETRIES rounds, then a floor stop at the point it has."""
    from bil.runtime.outer.accuracy import MAX_RETRIES as _MAX_RETRIES

    o = EndlessRounds()
    r = run_outer(o, "maid", dict(max_iter=3, screen=False, bracket="value", eps_min=1e-300, delta_min=1e-300))
    assert is_floor_stop(r.reason) and f"after {_MAX_RETRIES + 1} rounds" in r.reason
    assert len(r.history) == 1 and r.history[0]["backtracks"] <= sum(9 + k for k in range(_MAX_RETRIES + 1))


# ----------------------------------------------------------- specs (API, CLI)
KRR = """
problem krr
data D = load("krr.npz", "D")
data Dv = load("krr.npz", "Dv")
data y = load("krr.npz", "y")
data yv = load("krr.npz", "yv")
hyper gamma : positive = 1.0
hyper lam : positive = 0.01
lower {
    a : real[ncols(D)] = 0
    minimize 0.5 * a @ (exp(-gamma * D) @ a) + 0.5 * lam * sumsq(a) - y @ a
    max_iter: 200
}
upper minimize 0.5 * mean((exp(-gamma * Dv) @ a - yv)^2)
solve { outer: maid(tol=1e-12, max_iter=60) }
"""


def _krr_data(path, n=30):
    rng = np.random.default_rng(0)
    X, Xv = np.sort(rng.uniform(-3, 3, n)), np.sort(rng.uniform(-3, 3, n))
    f = lambda t: np.sin(2 * t) + 0.3 * t  # noqa: E731
    y, yv = f(X) + 0.1 * rng.normal(size=n), f(Xv) + 0.1 * rng.normal(size=n)
    D, Dv = (X[:, None] - X[None, :]) ** 2, (Xv[:, None] - X[None, :]) ** 2
    np.savez(path / "krr.npz", D=D, Dv=Dv, y=y, yv=yv)
    return D, Dv, y, yv


def _krr_grid(D, Dv, y, yv) -> float:
    best = math.inf
    for g in np.logspace(-2, 1, 13):
        K, Kv = np.exp(-g * D), np.exp(-g * Dv)
        for lam in np.logspace(-5, 0, 11):
            a = np.linalg.solve(K + lam * np.eye(len(y)), y)
            best = min(best, 0.5 * float(np.mean((Kv @ a - yv) ** 2)))
    return best


@pytest.mark.slow   # (~50 s on a loaded machine; the FlooredSolver tests above are its fast siblings)
def test_kernel_ridge_reaches_the_floor_via_the_cli(tmp_path, capsys):
    """RBF kernel ridge learning (γ, λ), an ill-conditioned kernel: the lower solver's cap
    (200 iterations) is the accuracy floor.  Exit 0, the floor in result.json, and an
    upper value at least as good as a 13 × 11 grid of closed-form solves."""
    import json

    data = _krr_data(tmp_path)
    (tmp_path / "krr.bil").write_text(KRR)
    code = main(["run", str(tmp_path / "krr.bil"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert code == 0, err
    assert is_floor_stop(res["reason"]), res["reason"]
    assert res["upper"] <= _krr_grid(*data)


def test_nan_in_the_lower_objective_still_fails_and_names_the_hypers(tmp_path, capsys):
    (tmp_path / "nan.bil").write_text("""
data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
hyper lam : positive = 1.5
lower {
    w : real[3] = 0
    minimize 0.5 * sumsq(X @ w - y) + log(lam - 2) * sumsq(w)
}
upper minimize 0.5 * sumsq(X @ w - y)
""")
    code = main(["run", str(tmp_path / "nan.bil"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "at lam = 1.5" in err and "NaN" in err


WINE = """
problem wine_cw
data Xtr, ytr, Xval, yval = dataset("wine", split=0.5, seed=0, standardize=true)
hyper cw : positive[3] = 1
lower {
    W : real[ncols(Xtr), 3] = 0
    b : real[3] = 0
    minimize mean((onehot(ytr, 3) @ cw) * -sum(onehot(ytr, 3) * log_softmax(Xtr @ W + b), axis=1))
             + 1e-3 * sumsq(W)
    max_iter: 300
}
upper minimize cross_entropy(Xval @ W + b, yval)
solve { outer: maid(tol=1e-12, max_iter=60) }
"""


@pytest.mark.slow
def test_class_weighted_wine_reaches_the_floor():
    """Class-weighted multinomial logistic regression (one weight per class): the run that
    used to spend ~60 s in backtracks and end with exit 1 stops at the floor; its validation
    cross-entropy is at least as good as sklearn's on a 4³ grid of class weights."""
    from itertools import product

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    prog = bil.compile(WINE)
    res = prog.run()
    assert res.error is None and is_floor_stop(res.reason), res.reason
    d = prog.state.data
    X, y, Xv, yv = (np.asarray(d[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    best = math.inf
    for cw in product([0.5, 1.0, 2.0, 4.0], repeat=3):
        # mean(cw_y·CE) + 1e-3‖W‖² is C·Σ cw_y·CE + ½‖W‖² with C = 1/(2e-3·N)
        m = LogisticRegression(C=1.0 / (2e-3 * len(y)), class_weight=dict(enumerate(cw)), tol=1e-10,
                               max_iter=10000).fit(X, y)
        best = min(best, log_loss(yv, m.predict_proba(Xv), labels=[0, 1, 2]))
    assert res.upper <= best


DEBLUR = """
problem deblur
data clean = load("img.npz", "clean")
data noisy = load("img.npz", "noisy")
data k = load("img.npz", "k")
hyper alpha : positive = 0.01
lower {
    x : real[12, 12] = noisy
    minimize 0.5 * sumsq(conv2d(x, k) - noisy) + alpha * (huber(dx(x), 0.05) + huber(dy(x), 0.05))
             + 1e-4 * sumsq(x)
    max_iter: 300
}
upper minimize 0.5 * sumsq(x - clean)
solve { outer: maid(tol=1e-12, max_iter=60) }
"""


@pytest.mark.slow
def test_huber_tv_deblurring_reaches_the_floor(tmp_path):
    """Huber-TV deblurring through a fixed conv2d blur, learning the weight: the floor, not
    an error, and an upper value at least as good as 16 weights solved by SciPy's L-BFGS."""
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize
    from scipy.signal import correlate2d

    rng = np.random.default_rng(0)
    clean = np.zeros((12, 12))
    clean[3:9, 4:10] = 1.0
    g = np.exp(-0.5 * np.arange(-1, 2) ** 2)
    k = np.outer(g, g) / np.outer(g, g).sum()
    noisy = correlate2d(clean, k, mode="same") + 0.05 * rng.normal(size=clean.shape)
    np.savez(tmp_path / "img.npz", clean=clean, noisy=noisy, k=k)
    (tmp_path / "deblur.bil").write_text(DEBLUR)
    res = bil.compile(tmp_path / "deblur.bil").run()
    assert res.error is None and is_floor_stop(res.reason), res.reason

    def hub(r):
        a = jnp.abs(r)
        return jnp.sum(jnp.where(a <= 0.05, 0.5 * r * r, 0.05 * (a - 0.025)))

    def g_low(x, alpha):
        x = x.reshape(12, 12)
        blur = jax.scipy.signal.correlate2d(x, jnp.asarray(k), mode="same")
        ddx = jnp.diff(x, axis=1, append=x[:, -1:])
        ddy = jnp.diff(x, axis=0, append=x[-1:, :])
        return 0.5 * jnp.sum((blur - noisy) ** 2) + alpha * (hub(ddx) + hub(ddy)) + 1e-4 * jnp.sum(x * x)

    vg = jax.jit(jax.value_and_grad(g_low))
    best = math.inf
    for alpha in np.logspace(-4, 0, 16):
        sol = minimize(lambda v: tuple(np.asarray(t, np.float64) for t in vg(jnp.asarray(v), alpha)),
                       noisy.ravel(), jac=True, method="L-BFGS-B", options=dict(maxiter=5000, gtol=1e-12))
        best = min(best, 0.5 * float(np.sum((sol.x - clean.ravel()) ** 2)))
    assert res.upper <= best


class NotStronglyConvex(QuadraticOracles):
    def constants(self, u, x):
        return super().constants(u, x)._replace(mu=0.0)


def test_a_lower_problem_that_is_not_strongly_convex_is_a_failure():
    """MAID needs μ > 0; that stop was exit 0 (it was not among the failed solves)."""
    r = run_outer(NotStronglyConvex(), "maid", dict(max_iter=3))
    assert r.reason.startswith("invalid strong-convexity estimate")
    prog = bil.compile("""
data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
hyper lam : positive = 1.0
lower {
    w : real[3] = 0
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * sumsq(X @ w - y)
""")
    err = prog._failure(r.reason, hypers={"lam": 1.0})
    assert err is not None and "not strongly convex" in err.message and "at lam = 1" in err.message
    assert "sumsq" in err.hint


@pytest.mark.parametrize("opts,ok", [('eps_min="auto", delta_min=1e-9', True), ("eps_min=1e-9", True),
                                     ('eps_min="tiny"', False), ("delta_min=0", False)])
def test_floor_options_take_auto_or_a_positive_number(opts, ok):
    src = f"""
data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
hyper lam : positive = 1.0
lower {{
    w : real[3] = 0
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
}}
upper minimize 0.5 * sumsq(X @ w - y)
solve {{ outer: maid({opts}) }}
"""
    if ok:
        kw = bil.compile(src).state.options["solve"]["outer"].kwargs
        assert kw["eps_min"] in ("auto", 1e-9)
    else:
        with pytest.raises(bil.BilError, match="must be > 0"):
            bil.compile(src)
