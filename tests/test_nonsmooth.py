"""Non-smooth lower problems (l1, weighted l1, group lasso): proximal solves and
hypergradients on the support, against closed forms and finite differences.

On the support S of the lasso solution with signs s (strict complementarity),
w_S = (X_Sᵀ X_S + diag(b_S))⁻¹ (X_Sᵀ y − a_S ⊙ s) and w = 0 off S: a smooth function
of the penalties a (l1) and b (l2), which is what the implicit derivative must match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bil
from bil.cli import main
from bil.core.errors import BilError
from bil.compiler.passes.nonsmooth import _value_at_start

DATA = 'data Xtr, ytr, Xval, yval = dataset("diabetes", split=0.5, seed=0, standardize=true)\n'
UPPER = "upper minimize 0.5 * mean((Xval @ w - yval)^2)\n"


def _spec(hypers: str, objective: str, extra: str = "", options: str = "") -> str:
    return (f"problem ns\n{DATA}{extra}{hypers}\nlower {{\n    w : real[ncols(Xtr)] = 0\n"
            f"    minimize 0.5 * sumsq(Xtr @ w - ytr) + {objective}\n{options}}}\n{UPPER}")


def _arrays(prog):
    return tuple(np.asarray(prog.state.data[k]) for k in ("Xtr", "ytr", "Xval", "yval"))


def _support_solution(prog, w, a, b):
    """w(a, b) on the support of ``w`` with its signs fixed: the closed form, as a JAX function."""
    X, y, _, _ = _arrays(prog)
    S = np.flatnonzero(w)
    s = np.sign(w[S])
    XS = X[:, S]

    def sol(a, b):
        a_s = jnp.broadcast_to(a, w.shape)[S]
        b_s = jnp.broadcast_to(b, w.shape)[S]
        wS = jnp.linalg.solve(XS.T @ XS + jnp.diag(b_s), XS.T @ y - a_s * s)
        return jnp.zeros(w.shape).at[S].set(wS)

    return sol


def _solve(prog, theta):
    """(w, value, hypergradient) from one compiled oracle call (lower and adjoint solved to 1e-12):
    the lower solution and the hypergradient at the same point, one compilation per spec."""
    hg = prog._hypergrad(theta, 1e-12, prog.engine.method)
    return np.asarray(hg.x["w"]), float(hg.f), {k: np.asarray(v) for k, v in hg.z.items()}


def _upper(prog, w):
    _, _, Xv, yv = _arrays(prog)
    return 0.5 * jnp.mean((Xv @ w - yv) ** 2)


@pytest.fixture(scope="module")
def lasso():
    return bil.compile(_spec("hyper lam : positive = 3.0", "lam * l1(w)"))


@pytest.mark.parametrize("lam", [3.0, 20.0])
def test_lasso_hypergradient_matches_closed_form(lasso, lam):
    X, y, Xv, yv = _arrays(lasso)
    w, value, grads = _solve(lasso, {"lam": lam})
    S = np.abs(w) > 0
    assert 0 < S.sum() < w.size                       # a genuine lasso solution: some zeros, some not
    s = np.sign(w[S])
    A = X[:, S].T @ X[:, S]
    np.testing.assert_allclose(w[S], np.linalg.solve(A, X[:, S].T @ y - lam * s), rtol=1e-9)
    dw = np.zeros_like(w)
    dw[S] = -np.linalg.solve(A, s)                    # dw_S/dλ = −(X_SᵀX_S)⁻¹ s
    closed = (Xv.T @ (Xv @ w - yv) / len(yv)) @ dw
    assert abs(float(grads["lam"]) - closed) <= 1e-8 * abs(closed)
    assert abs(float(value) - 0.5 * np.mean((Xv @ w - yv) ** 2)) <= 1e-12


def test_lasso_hypergradient_matches_finite_differences(lasso):
    lam, h = 3.0, 1e-4
    values = [_solve(lasso, {"lam": lam + k * h})[1] for k in (1, -1)]
    fd = (values[0] - values[1]) / (2 * h)
    g = float(jax.grad(lasso.objective)({"lam": lam})["lam"])   # the JAX function, implicit JVP rule
    assert abs(g - fd) <= 1e-6 * abs(fd)


def test_lasso_unrolled_proximal_gradient_matches_implicit(lasso):
    _, g_imp = lasso.value_and_hypergrad({"lam": 3.0}, tol=1e-12)
    _, g_unr = lasso.value_and_hypergrad({"lam": 3.0}, method="unroll(steps=3000)")
    assert abs(float(g_unr["lam"]) - float(g_imp["lam"])) <= 1e-6 * abs(float(g_imp["lam"]))


def test_lasso_switches_to_fista_and_show_says_so(lasso, capsys, tmp_path):
    assert lasso.state.options["lower"]["solver"].name == "fista"
    spec = tmp_path / "lasso.bil"
    spec.write_text(_spec("hyper lam : positive = 3.0", "lam * l1(w)"))
    assert main(["show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "non-smooth: l1(w) weighted by lam" in out
    assert "proximal gradient (fista, chosen for the non-smooth terms)" in out


@pytest.mark.parametrize("hypers, objective, a_b", [
    # weighted l1 with data weights and a hyper: l1(c * w) = Σ |cᵢ| |wᵢ|
    ("hyper lam : positive = 2.0", "l1((lam * c) * w)", lambda th, c: (th["lam"] * np.abs(c), 0.0)),
    ("hyper lam : positive = 2.0", "lam * sum(c * abs(w))", lambda th, c: (th["lam"] * c, 0.0)),
    # weighted l1 through axes: row i of reshape(c * w, 2, 5) weighted by lam[i], column j of it by lam[j]
    ("hyper lam : positive[2] = [2.0, 1.5]", "sum(lam * l1(reshape(c * w, 2, 5), axis=1))",
     lambda th, c: (jnp.repeat(th["lam"], 5) * jnp.abs(c), 0.0)),
    ("hyper lam : positive[2] = [2.0, 1.5]", "lam @ sum(abs(transpose(reshape(c * w, 5, 2))), axis=1)",
     lambda th, c: (jnp.tile(th["lam"], 5) * jnp.abs(c), 0.0)),
    # elastic net
    ("hyper a : positive = 4.0\nhyper b : positive = 30.0", "a * l1(w) + 0.5 * b * sumsq(w)",
     lambda th, c: (th["a"], th["b"])),
])
def test_weighted_and_elastic_net_match_closed_form(hypers, objective, a_b):
    extra = "data c = [0.5, 1.0, 2.0, 1.0, 0.2, 1.5, 1.0, 0.7, 1.0, 3.0]\n"
    prog = bil.compile(_spec(hypers, objective, extra))
    theta = {k: np.asarray(v, float) for k, v in prog.hypers.items()}
    c = np.asarray(prog.state.data["c"])
    w, _, grads = _solve(prog, theta)
    assert 0 < np.count_nonzero(w) < w.size
    sol = _support_solution(prog, w, *a_b(theta, c))
    np.testing.assert_allclose(sol(*a_b(theta, c)), w, rtol=1e-9, atol=1e-12)
    closed = jax.grad(lambda th: _upper(prog, sol(*a_b(th, jnp.asarray(c)))))(theta)
    for k in theta:
        np.testing.assert_allclose(grads[k], closed[k], rtol=1e-8)


def test_nonnegative_lasso_matches_closed_form():
    """l1 on a `positive` lower variable: soft-thresholding, then the projection onto w ≥ 0."""
    prog = bil.compile(_spec("hyper lam : positive = 3.0", "lam * l1(w)").replace("w : real", "w : positive"))
    X, y, Xv, yv = _arrays(prog)
    w, _, grads = _solve(prog, {"lam": 3.0})
    S = w > 0
    assert np.all(w >= 0) and 0 < S.sum() < w.size
    dw = np.zeros_like(w)
    dw[S] = -np.linalg.solve(X[:, S].T @ X[:, S], np.ones(S.sum()))
    closed = (Xv.T @ (Xv @ w - yv) / len(yv)) @ dw
    assert abs(float(grads["lam"]) - closed) <= 1e-8 * abs(closed)


GROUP_ENET = dict(
    extra="data G = onehot([0, 0, 0, 0, 1, 1, 1, 2, 2, 2], 3)\n",
    hypers="hyper l1w : positive[3] = 1.0\nhyper l2w : positive[3] = 1.0",
    objective="l1((G @ l1w) * w) + 0.5 * sum((G @ l2w) * w^2)")


def test_per_group_elastic_net_matches_closed_form():
    prog = bil.compile(_spec(GROUP_ENET["hypers"], GROUP_ENET["objective"], GROUP_ENET["extra"]))
    G = np.asarray(prog.state.data["G"], float)
    theta = {"l1w": np.array([8.0, 0.5, 20.0]), "l2w": np.array([1.0, 5.0, 2.0])}
    w, _, grads = _solve(prog, theta)
    assert 0 < np.count_nonzero(w) < w.size
    sol = _support_solution(prog, w, G @ theta["l1w"], G @ theta["l2w"])
    closed = jax.grad(lambda th: _upper(prog, sol(G @ th["l1w"], G @ th["l2w"])))(theta)
    for k in theta:
        np.testing.assert_allclose(grads[k], closed[k], rtol=1e-8)


def test_group_lasso_hypergradient_matches_finite_differences():
    extra = "data G = onehot([0, 0, 0, 0, 1, 1, 1, 2, 2, 2], 3)\n"
    prog = bil.compile(_spec("hyper gw : positive[3] = 1.0", "group_l1(w, G, gw) + 0.5 * sumsq(w)", extra))
    theta = {"gw": np.array([250.0, 2.0, 2.0])}
    w, _, grads = _solve(prog, theta)
    norms = np.asarray([np.linalg.norm(w[:4]), np.linalg.norm(w[4:7]), np.linalg.norm(w[7:])])
    assert norms[0] == 0 and np.all(norms[1:] > 0)     # group 0 is switched off, the others are active
    for i in range(3):
        h = 1e-3 * theta["gw"][i]                      # relative steps: truncation ~1e-7, roundoff ~1e-11
        e = np.zeros(3)
        e[i] = h
        fp, fm = (_solve(prog, {"gw": theta["gw"] + k * e})[1] for k in (1, -1))
        fd = (fp - fm) / (2 * h)
        if i == 0:                                     # an inactive group's weight does not move x*
            assert float(grads["gw"][0]) == 0.0 and abs(fd) <= 1e-9
        else:
            assert abs(float(grads["gw"][i]) - fd) <= 1e-5 * abs(fd)


def test_per_sample_lasso_matches_closed_form():
    src = """problem ps
data A = randn(3, 30, 6, seed=2) per sample
data b = randn(3, 30, seed=3) per sample
hyper lam : positive = 4.0
lower {
    w : real[6] = 0
    minimize 0.5 * sumsq(A @ w - b) + lam * l1(w)
}
upper minimize sumsq(w - 0.1)
"""
    prog = bil.compile(src)
    A, B = np.asarray(prog.state.data["A"]), np.asarray(prog.state.data["b"])
    W, _, grads = _solve(prog, {"lam": 4.0})
    assert W.shape == (3, 6) and 0 < np.count_nonzero(W) < W.size
    closed = 0.0
    for Ai, bi, wi in zip(A, B, W):
        S = np.flatnonzero(wi)
        dw = np.zeros(6)
        dw[S] = -np.linalg.solve(Ai[:, S].T @ Ai[:, S], np.sign(wi[S]))
        closed += 2 * (wi - 0.1) @ dw / 3                # the upper objective is the mean over samples
    assert abs(float(grads["lam"]) - closed) <= 1e-8 * abs(closed)


@pytest.mark.parametrize("objective, options, message, column", [
    ("lam * sum(abs(Xtr @ w))", "", "is non-smooth, and its argument is not a lower variable", 53),
    ("lam * l1(w) * l1(w)", "", "must be added to the objective", 57),
    ("- lam * l1(w)", "", "is subtracted from the objective", 51),
    ("lam * l1(w)", "    solver: lbfgs\n", "`lbfgs` needs a smooth lower objective", 13),
    ("lam * l1(w)", "    solver: newton_cg()\n", "`newton_cg` needs a smooth lower objective", 13),
])
def test_unsupported_non_smooth_forms_are_located_errors(objective, options, message, column):
    with pytest.raises(BilError) as err:
        bil.compile(_spec("hyper lam : positive = 1.0", objective, options=options))
    assert message in err.value.message and err.value.hint
    assert err.value.column == column


def test_a_weight_that_may_turn_negative_is_an_error():
    with pytest.raises(BilError) as err:
        bil.compile(_spec("hyper lam = 1.0", "lam * l1(w)"))
    assert "may become negative" in err.value.message and "positive" in err.value.hint


def test_bil_check_reports_an_unsupported_form_at_its_line(tmp_path, capsys):
    spec = tmp_path / "bad.bil"
    spec.write_text(_spec("hyper lam : positive = 1.0", "lam * sum(abs(Xtr @ w))"))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:6:53: error: `abs(Xtr @ w)` is non-smooth" in err
    assert "smooth_abs" in err and "huber" in err


def test_smooth_uses_of_kinked_functions_are_left_alone():
    prog = bil.compile(_spec("hyper lam : positive = 1.0", "lam * l1(w)^2 + huber(w, 0.1)"))
    assert "nonsmooth" not in prog.state.structure
    assert prog.state.options["lower"]["solver"].name == "lbfgs"


@pytest.mark.slow
def test_per_group_elastic_net_learns_its_penalties_with_bil_run(tmp_path):
    """`bil run` on the per-group elastic net: exit 0, validation loss below its start and at least
    as good as the best scalar elastic net of an ElasticNetCV-like grid on the same split."""
    from sklearn.linear_model import ElasticNet

    spec = tmp_path / "enet.bil"
    spec.write_text(_spec(GROUP_ENET["hypers"], GROUP_ENET["objective"], GROUP_ENET["extra"]))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    import json

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    prog = bil.compile(spec)
    start = float(prog.value_and_hypergrad(tol=1e-10)[0])
    X, y, Xv, yv = _arrays(prog)
    grid = []
    for rho in (0.1, 0.5, 0.9, 0.99, 1.0):
        for alpha in np.logspace(-3, 0.5, 30):
            # sklearn's objective is ours divided by n: l1 = n·α·ρ, l2 = n·α·(1 − ρ)
            coef = ElasticNet(alpha=alpha, l1_ratio=rho, fit_intercept=False, tol=1e-10,
                              max_iter=100000).fit(X, y).coef_
            grid.append(0.5 * np.mean((Xv @ coef - yv) ** 2))
    assert result["upper"] < start
    assert result["upper"] <= min(grid)


# ------------------------------------------------------- l1 and group norms written through axes
AXES = dict(extra="data c = [0.5, 1.0, 2.0, 1.0, 0.2, 1.5, 1.0, 0.7, 1.0, 3.0]\n"
                  "data G = onehot([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 5)\n",
            hypers="hyper l1w : positive[5] = [1.0, 2.0, 3.0, 4.0, 5.0]")
ROWS = np.repeat(np.arange(1.0, 6.0), 2)                # l1w[i] on the entries of row i of reshape(w, 5, 2)
C = np.array([0.5, 1.0, 2.0, 1.0, 0.2, 1.5, 1.0, 0.7, 1.0, 3.0])


@pytest.mark.parametrize("objective, weights", [
    ("sum(l1w * l1(reshape(w, 5, 2), axis=1))", ROWS),
    ("l1w @ l1(reshape(w, 5, 2), axis=1)", ROWS),
    ("sum(l1w * sum(abs(reshape(w, 5, 2)), axis=1))", ROWS),
    ("sum(l1(reshape(w, 5, 2), axis=-1, keepdims=true) * reshape(l1w, 5, 1))", ROWS),
    ("sum(l1w * l1(transpose(reshape(w, 5, 2)), axis=0))", ROWS),
    ("sum(l1w * l1(reshape(w, 2, 5), axis=0))", np.tile(np.arange(1.0, 6.0), 2)),
    ("sum(l1w * l1(reshape(c * w, 5, 2), axis=1))", ROWS * C),
    ("2 * sum(reshape(G @ l1w, 5, 2) * abs(reshape(-c * w, 5, 2)))", 2 * ROWS * C),
])
def test_l1_through_axes_and_reshapes_gets_its_per_entry_weights(objective, weights):
    prog = bil.compile(_spec(AXES["hypers"], objective, AXES["extra"]))
    (pen,) = prog.state.structure["nonsmooth"].penalties
    assert pen.var == "w" and pen.group_weight is None
    a = np.broadcast_to(_value_at_start(prog.state, pen.l1), (10,))
    np.testing.assert_allclose(a, weights, rtol=1e-15)


def _same_solution_and_hypergradient(spec_a, spec_b, theta):
    (wa, _, ga), (wb, _, gb) = (_solve(bil.compile(s), theta) for s in (spec_a, spec_b))
    assert 0 < np.count_nonzero(wa) < wa.size
    np.testing.assert_array_equal(wa == 0, wb == 0)
    np.testing.assert_allclose(wa, wb, rtol=1e-8)
    for k in theta:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-8)


def test_per_group_elastic_net_written_with_axes_matches_the_onehot_form():
    """The spec of tests/problems/group_elastic_net.bil against `l1((G @ l1w) * w)` on diabetes."""
    hypers = "hyper l1w : positive[5] = 1.0\nhyper l2w : positive[5] = 1.0"
    natural = _spec(hypers, "sum(l1w * l1(reshape(w, 5, 2), axis=1))\n"
                    "             + 0.5 * sum(l2w * sumsq(reshape(w, 5, 2), axis=1))", AXES["extra"])
    onehot = _spec(hypers, "l1((G @ l1w) * w) + 0.5 * sum((G @ l2w) * w^2)", AXES["extra"])
    theta = {"l1w": np.array([30.0, 2.0, 60.0, 5.0, 10.0]), "l2w": np.array([1.0, 5.0, 2.0, 1.0, 3.0])}
    _same_solution_and_hypergradient(natural, onehot, theta)


def test_row_group_lasso_matches_group_l1():
    """`sum(gw * norm(reshape(w, 5, 2), axis=1))` is group_l1 with the rows of the reshape as groups."""
    hypers = "hyper gw : positive[5] = 1.0"
    rows = _spec(hypers, "sum(gw * norm(reshape(w, 5, 2), axis=1)) + 0.5 * sumsq(w)", AXES["extra"])
    onehot = _spec(hypers, "group_l1(w, G, gw) + 0.5 * sumsq(w)", AXES["extra"])
    _same_solution_and_hypergradient(rows, onehot, {"gw": np.array([250.0, 2.0, 40.0, 2.0, 300.0])})


@pytest.mark.parametrize("extra, hypers, objective, message", [
    ("data s = [1, -1, 1, 1, 1]\n", AXES["hypers"], "sum(s * l1w * l1(reshape(w, 5, 2), axis=1))", "is negative"),
    ("", "hyper l1w : real[5] = 0.01", "sum(l1w * l1(reshape(w, 5, 2), axis=1))", "may become negative"),
    ("", AXES["hypers"], "sum(l1w * l1(reshape(Xtr[1:11, :] @ w, 5, 2), axis=1))",
     "its argument is not a lower variable"),
    ("", AXES["hypers"], "sum(reshape(l1w, 5, 1) * l1(reshape(w, 5, 2), axis=0))", "enlarges"),
    ("", AXES["hypers"], "sum(l1w * norm(transpose(reshape(w, 5, 2)), axis=0))", "is a group penalty only"),
])
def test_unsupported_or_negative_axis_forms_are_located_errors(extra, hypers, objective, message):
    src = _spec(hypers, objective, extra)
    with pytest.raises(BilError) as err:
        bil.compile(src)
    assert message in err.value.message and err.value.hint
    assert err.value.line == 1 + src.splitlines().index(next(ln for ln in src.splitlines() if "minimize" in ln))


def test_norms_over_an_axis_of_other_expressions_stay_smooth():
    prog = bil.compile(_spec("hyper lam : positive = 1.0", "lam * sum(norm(reshape(Xtr @ w - ytr, 13, 17), axis=1))"))
    assert "nonsmooth" not in prog.state.structure


def test_an_empty_support_at_the_learned_hypers_is_a_warning(lasso):
    """A penalty so large that w = 0: the hypergradient is exactly 0 there (the run stops where it
    started), and the result warns at the lower objective with a hint to start smaller; a solution
    with a nonempty support gets no such warning."""
    from bil.diagnosis.support import empty_support_warnings

    res = bil.compile(_spec("hyper lam : positive = 1e5", "lam * l1(w)")).run()
    assert res.error is None and np.all(res.lower["w"] == 0) and float(res.hypers["lam"]) == pytest.approx(1e5, rel=1e-9)
    texts = [str(w) for w in res.warnings]
    assert any("every entry of w at 0" in t and "l1(w) weighted by lam" in t and "smaller" in t for t in texts)
    w, _, _ = _solve(lasso, {"lam": 3.0})
    assert np.any(w != 0) and empty_support_warnings(lasso, {"lam": 3.0}, {"w": w}) == []
