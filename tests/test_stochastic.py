"""`sampled` data, the finite-sum proof, SOBA/SABA and the sample-gradient cost axis (issue 16).

The quadratic problem has a closed form: the lower solution w*(θ) = H⁻¹(c + θ) reaches every
w, so min_θ F(θ) = min_w ½ mean((Xv w − yv)²), a least-squares value.
"""

import math

import numpy as np
import pytest

import bil
from bil.runtime.outer import run_outer

SPEC = """problem quad
data X, y = (randn((200, 5), seed=0), randn((200,), seed=1)) SAMPLED
data Xv, yv = (randn((100, 5), seed=2), randn((100,), seed=3)) SAMPLED
hyper theta : real[5] = 0
lower {
    w : real[5] = 0
    minimize 0.5 * mean((X @ w - y)^2) + 0.05 * sumsq(w) - theta @ w
}
upper minimize 0.5 * mean((Xv @ w - yv)^2)
solve { outer: OUTER }
"""


def spec(outer: str, sampled: bool = True) -> str:
    return SPEC.replace("SAMPLED", "sampled" if sampled else "").replace("OUTER", outer)


@pytest.fixture(scope="module")
def twins() -> dict:
    """The spec with `sampled` (outer: a short SABA run) and its full-batch twin, compiled once:
    the tests run several methods on their engines (their compiled oracles are shared)."""
    return {True: bil.compile(spec("saba(batch=10, rho=0.1, gamma=0.01, max_iter=600, chunk=300, seed=3)")),
            False: bil.compile(spec("maid()", sampled=False))}


@pytest.fixture(scope="module")
def f_star(twins) -> float:
    d = twins[True].state.data
    w = np.linalg.lstsq(d["Xv"], d["yv"], rcond=None)[0]
    return float(0.5 * np.mean((d["Xv"] @ w - d["yv"]) ** 2))


def gap(res, f_star: float) -> float:
    return (res.upper - f_star) / f_star


# ------------------------------------------------------------------ methods
@pytest.mark.slow
def test_saba_reaches_the_closed_form_optimum(f_star):
    """SABA and full-batch MAID on specs differing only in `solve` reach the same F*."""
    res = bil.compile(spec("saba(batch=10, rho=0.1, gamma=0.01, max_iter=4000, chunk=1000)")).run()
    full = bil.compile(spec("maid()")).run()
    assert res.reason == "max_iter reached" and 0 <= gap(res, f_star) < 1e-8
    assert abs(full.upper - f_star) < 1e-10 and abs(res.upper - full.upper) < 1e-3 * full.upper


@pytest.mark.slow
def test_soba_with_decaying_steps_approaches_the_optimum(f_star):
    res = bil.compile(spec("soba(batch=10, rho=0.1, gamma=0.1, max_iter=4000, chunk=1000)")).run()
    assert 0 <= gap(res, f_star) < 1e-3


def test_saba_short_run_same_seed_same_result_and_resume(twins, f_star):
    """Cheap sibling of the convergence tests: 600 iterations already cut F's gap at θ₀ by 100x;
    the same seed gives the same run; a run stopped after its first record and resumed from
    its state is bit-identical to an uninterrupted one."""
    prog = twins[True]
    a, b = prog.run(), prog.run()
    first = prog.run(callback=lambda rec, state: True)
    resumed = prog.run(state=first.state)
    assert np.array_equal(a.hypers["theta"], b.hypers["theta"])
    assert np.array_equal(a.hypers["theta"], resumed.hypers["theta"])
    assert [r["upper"] for r in a.history] == [r["upper"] for r in resumed.history]
    start, _ = prog.value_and_hypergrad()
    assert gap(a, f_star) < 0.01 * (float(start) - f_star) / f_star
    other = prog.run(seed=4)
    assert not np.array_equal(a.hypers["theta"], other.hypers["theta"])
    # cost: SABA's full pass 3·200 + 100, 300 iterations of 3·10 + 10, the record's upper value 100
    assert first.history[0]["sample_grads"] == 700 + 300 * 40 + 100 == a.history[0]["sample_grads"]
    capped = prog.run(budget=12800)       # exactly one chunk fits: the run stops there, never above
    assert capped.reason == "budget exhausted" and [r["sample_grads"] for r in capped.history] == [12800]


def test_sampled_is_ignored_by_full_batch_methods(twins):
    """A spec with `sampled` and its twin without give identical full-batch runs; only the cost
    axis differs: without sampled data each evaluation counts 1."""
    runs = [run_outer(twins[s].engine, "gd", {"lr": 0.5, "max_iter": 3}) for s in (True, False)]
    assert np.array_equal(runs[0].hypers["theta"], runs[1].hypers["theta"])
    assert [r["upper"] for r in runs[0].history] == [r["upper"] for r in runs[1].history]
    last = runs[1].history[-1]
    hypergrads = len(runs[1].history) + 1          # one per iteration and one at θ₀
    n_x = twins[False].engine.factor_cost()        # a direct() solve forms the 5×5 Hessian: 5 HVPs
    assert n_x == 5
    assert last["sample_grads"] == last["lower_iters_total"] + last["cg_iters_total"] + (2 + n_x) * hypergrads


# ---------------------------------------------------------------- cost axis
@pytest.mark.parametrize("method", ["gd", "hoag", "maid"])
def test_sample_grads_count_rows_for_full_batch_methods(twins, method):
    """Each lower or CG iteration and each cross product costs the 200 lower rows; each upper
    value or gradient the 100 upper rows."""
    n_lower, n_upper = 200, 100
    h = run_outer(twins[True].engine, method, {"max_iter": 3}).history
    grads = [r["sample_grads"] for r in h]
    assert grads == sorted(grads) and grads[0] > 0
    iters = h[-1]["lower_iters_total"] + h[-1]["cg_iters_total"]
    if method == "gd":   # one hypergradient (an upper gradient, a cross product and the direct solve's
        n_x = 5          # 5 Hessian columns) per iteration and at θ₀
        assert grads[-1] == iters * n_lower + (len(h) + 1) * ((1 + n_x) * n_lower + n_upper)
    else:                # at least the iterations and one upper value; every count a whole number of rows
        assert grads[-1] >= iters * n_lower + n_upper and grads[-1] % 100 == 0


# ------------------------------------------------------------------- errors
LOWER = """data X, y = (randn((20, 3), seed=0), randn((20,), seed=1)) sampled
data Z = randn((20, 3), seed=2) sampled
hyper lam : positive = 1
lower {
    w : real[3] = 0
    minimize GOAL
}
upper minimize sumsq(w - 1)
"""


@pytest.mark.parametrize("goal, shown, start, words", [
    ("mean(X @ w - y)^2 + lam * sumsq(w)", "mean(X @ w - y) ^ 2", "mean(X", "not linear in a mean"),
    ("log(mean((X @ w - y)^2)) + lam * sumsq(w)", "log(mean((X @ w - y) ^ 2))", "log(", "nonlinear function of a mean"),
    ("mean((X @ w - mean(y))^2) + lam * sumsq(w)", "X @ w - mean(y)", "X @ w - mean", "inside a row-wise term"),
    ("logsumexp(X @ w) + lam * sumsq(w)", "logsumexp(X @ w)", "logsumexp", "not known to act row by row"),
    ("sumsq(transpose(X) @ y - w) + lam * sumsq(w)", "transpose(X)", "transpose", "not known to act row by row"),
    ("mean((X @ w) * (Z @ w)) + lam * sumsq(w)", "X @ w * (Z @ w)", "(X @ w) *", "different `sampled` statements"),
    ("sumsq(mean(X, axis=0) - w) + lam * sumsq(w)", "mean(X, axis=0)", "mean(X, axis", "keeps other axes"),
    ("mean(w * mse(X @ w, y)) + lam * sumsq(w)", "mean(w * mse(X @ w, y))", "mean(w", "already a mean over the rows"),
])
def test_an_objective_that_is_not_a_mean_over_rows_is_located(goal, shown, start, words):
    """The error names the offending subexpression and points at it, with a hint."""
    text = LOWER.replace("GOAL", goal)
    with pytest.raises(bil.BilError) as info:
        bil.compile(text)
    err = info.value
    line = text.splitlines()[err.line - 1]
    assert err.line == 6 and words in err.message and f"`{shown}`" in err.message and err.hint
    assert line[err.column - 1:].startswith(start)


def test_a_stochastic_method_without_sampled_data_is_located():
    text = spec("soba(batch=10)", sampled=False)
    with pytest.raises(bil.BilError) as info:
        bil.compile(text)
    err = info.value
    assert err.line == 10 and "no data is `sampled`" in err.message and "sampled" in err.hint


def test_rows_of_a_sampled_statement_must_agree():
    with pytest.raises(bil.BilError) as info:
        bil.compile(LOWER.replace("GOAL", "sumsq(w)").replace("randn((20,), seed=1)", "randn((21,), seed=1)"))
    assert info.value.line == 1 and "21 rows" in info.value.message


def test_the_minibatch_form_scales_sums_and_fixes_sizes():
    """sum over rows → (N/B)·sum over the batch; rows(X) stays N; a hyper with one entry per row is
    read at the batch's rows; on every row once, the minibatch objective equals the objective."""
    text = """data X, y = (randn((20, 3), seed=0), randn((20,), seed=1)) sampled
hyper c : real[rows(X)] = 1
lower {
    w : real[3] = 0
    minimize sum(c * (X @ w - y)^2) / rows(X) + sumsq(w)
}
upper minimize sumsq(w - 1)
"""
    prog = bil.compile(text)
    low = prog.lowered
    x, theta = {"w": np.ones(3)}, {"c": np.linspace(0.5, 1.5, 20)}
    full = low.g(x, theta, low.data)
    assert math.isclose(float(low.rows.g(x, theta, low.data, {"X": np.arange(20)})), float(full), rel_tol=1e-12)
    rows = np.array([3, 7])
    r = (low.data["names"]["X"][rows] @ x["w"] - low.data["names"]["y"][rows]) ** 2
    want = 20 / 2 * np.sum(theta["c"][rows] * r) / 20 + 3.0
    assert math.isclose(float(low.rows.g(x, theta, low.data, {"X": rows})), want, rel_tol=1e-12)


def test_the_mean_of_a_closed_loss_is_that_loss():
    """`mean(mse(...))` (a mean of one number, as users write around a loss) is accepted and is the
    loss itself, while `sumsq` of it stays a located error (a square of a mean)."""
    goal = "mean(mse(X @ w, y)) + lam * sumsq(w)"
    prog = bil.compile(LOWER.replace("GOAL", goal))
    low = prog.lowered
    x, theta = {"w": np.array([0.3, -0.1, 0.2])}, {"lam": np.asarray(1.0)}
    full = low.g(x, theta, low.data)
    every = {"X": np.arange(20)}
    assert math.isclose(float(low.rows.g(x, theta, low.data, every)), float(full), rel_tol=1e-12)
    with pytest.raises(bil.BilError) as info:
        bil.compile(LOWER.replace("GOAL", "sumsq(mse(X @ w, y)) + lam * sumsq(w)"))
    assert "nonlinear function of a mean" in info.value.message
