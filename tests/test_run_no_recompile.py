"""A real program's outer loop traces each oracle once, whatever ε, δ and the step do."""

from __future__ import annotations

from pathlib import Path

import bil
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_maid_run_never_recompiles_after_first_iteration():
    prog = bil.compile(EXAMPLES / "ridge.bil")
    eng = prog.engine
    sizes = []

    def record(rec, state):
        sizes.append({k: f._cache_size() for k, f in eng._jitted.items()})

    result = prog.run(max_iter=6, callback=record)
    assert len(result.history) >= 3
    # ε and δ moved during the run ...
    assert len({r["eps"] for r in result.history}) > 1
    # ... yet after the first iteration no oracle was traced again, and each once.
    first = sizes[0]
    assert all(s == first for s in sizes[1:])
    assert set(first.values()) == {1}
    # A second run with other accuracies reuses the same executables.
    prog.run(max_iter=2, eps0=1e-3, delta0=1e-2)
    assert {k: f._cache_size() for k, f in eng._jitted.items() if k in first} == first


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_budget_is_strict_and_traced_on_a_per_sample_program():
    """``budget`` caps each oracle call by what is left (split over the samples), so a run
    never spends more than its budget; the cap is traced, so it compiles nothing new."""
    from bil.runtime.outer import run_outer

    prog = bil.compile(EXAMPLES / "tv_denoise.bil")
    eng = prog.engine
    run_outer(eng, "maid", dict(max_iter=1))
    sizes = {k: f._cache_size() for k, f in eng._jitted.items()}
    for method, opts in [("maid", {}), ("hoag", {"schedule": "exponential"})]:
        for budget in (40, 137):
            r = run_outer(eng, method, dict(opts, max_iter=1000, budget=budget))
            last = r.history[-1]
            assert r.reason == "budget exhausted"
            assert last["lower_iters_total"] + last["cg_iters_total"] <= budget
            assert r.upper == r.upper  # a number, not NaN: the cut-short solve was not used
    assert {k: f._cache_size() for k, f in eng._jitted.items() if k in sizes} == sizes


def test_float32_run_stops_at_the_arithmetic_floor():
    """In float32 MAID used to tighten ε to 2e-6 on ridge, where the lower solver cannot
    certify it: 30000 iterations, then a failed run.  Accuracies are floored at the roundoff
    of ‖∇ₓg‖ (oracles.accuracy_floor), so it stops cleanly near the float64 answer."""
    # ridge.bil on its two-way split (validation: the other half), where float64's λ is 38.725
    two_way = (EXAMPLES / "ridge.bil").read_text().replace("Xval, yval, Xte, yte", "Xval, yval").replace(
        "split=(0.5, 0.25)", "split=0.5")
    prog = bil.compile(two_way, overrides={"solve.precision": "float32"})
    eng = prog.engine
    r = prog.run(max_iter=40)
    last = r.history[-1]
    assert r.error is None and (r.reason.startswith("accuracy floor reached") or r.reason == "gradient norm below tol")
    assert last["lower_iters_total"] + last["cg_iters_total"] < 2000
    assert float(r.hypers["lam"]) == pytest.approx(38.725, rel=2e-3)
    floor_eps, _ = eng.accuracy_floor(eng.u0, eng.init_lower(eng.u0))   # with the last μ
    assert 1e-7 < floor_eps < 1e-4
    assert min(rec["eps"] for rec in r.history) >= floor_eps * (1 - 1e-6)


def test_result_upper_is_the_true_value_at_the_learned_hypers():
    """HOAG records f(x̃) at its loose early accuracies (ridge: 0.2585 where F = 0.2626);
    the Result (and result.json) reports the upper objective at the lower solution."""
    # lbfgs: an iterative solve stopped at HOAG's loose tolerances (direct is exact at any)
    prog = bil.compile(EXAMPLES / "ridge.bil", overrides={"solve.outer": 'hoag(schedule="exponential")',
                                                          "lower.solver": "lbfgs"})
    r = prog.run(max_iter=8)
    true_f, _ = prog.value_and_hypergrad(r.hypers, tol=1e-11)
    assert abs(r.history[-1]["upper"] - true_f) > 1e-3 * true_f     # the record is loose
    assert r.upper == pytest.approx(true_f, rel=1e-9)


def test_mu_is_re_estimated_as_the_hypers_move():
    """n < d ridge from λ₀ = 1e-6: μ(θ₀) ≈ 5e-7 but μ ≈ λ later.  With μ estimated once at
    θ₀ the run stopped early ("eps floor reached") at λ = 8.9, 2% above the optimum; μ is
    now re-estimated with the other constants, and the run reaches the closed form."""
    import numpy as np

    src = """
data Xa, ya, Xval, yval = dataset("diabetes", split=0.5, seed=4, standardize=true)
data Xtr = Xa[0:7]
data ytr = ya[0:7]
hyper lam : positive = 1e-6
lower {
    w : real[ncols(Xtr)] = 0
    minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * mean((Xval @ w - yval)^2)
"""
    prog = bil.compile(src)
    r = prog.run(max_iter=40)
    d = prog.state.data
    X, y, Xv, yv = (np.asarray(d[k]) for k in ("Xtr", "ytr", "Xval", "yval"))

    def F(lam):
        w = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y)
        return 0.5 * np.mean((Xv @ w - yv) ** 2)

    grid = np.exp(np.linspace(np.log(1.0), np.log(100.0), 4001))
    Fs = np.array([F(g) for g in grid])
    assert r.reason == "gradient norm below tol"
    assert r.upper <= Fs.min() + 1e-9
    assert float(r.hypers["lam"]) == pytest.approx(grid[Fs.argmin()], rel=2e-3)


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_runs_are_repeatable_and_resume_exactly_with_a_moving_mu():
    """μ moves with θ (ridge: λ 1 -> 39): a second run on the same program must not start
    from the first run's μ, and a resumed run must continue with the saved one."""
    prog = bil.compile(EXAMPLES / "ridge.bil")
    a = prog.run(max_iter=20)
    b = prog.run(max_iter=20)
    assert [r["eps"] for r in a.history] == [r["eps"] for r in b.history]
    assert float(a.hypers["lam"]) == float(b.hypers["lam"])
    head = bil.compile(EXAMPLES / "ridge.bil").run(max_iter=3)
    tail = bil.compile(EXAMPLES / "ridge.bil").run(max_iter=20, state=head.state)
    assert float(tail.hypers["lam"]) == float(a.hypers["lam"])
    assert tail.history[-1]["lower_iters_total"] == a.history[-1]["lower_iters_total"]


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_a_zero_hypergradient_at_the_start_does_not_send_eps_to_its_floor():
    """Heavy penalties (c = 1e3) and W₀ = 0: the first loose solves do no iteration, so
    z = 0 exactly and no accuracy can pass the descent test by prediction.  ε used to
    jump to 1e-14 at once (every later solve needlessly tight: 37k iterations for 40
    outer ones); it is now halved until the solves move."""
    src = """
data Xa, ya, Xb, yb = dataset("digits", split=0.5, seed=0, standardize=true)
data Xtr = Xa[0:150, 0:24]
data ytr = ya[0:150]
data Xval = Xb[0:150, 0:24]
data yval = yb[0:150]
hyper c : positive[10] = 1000
lower {
    W : real[24, 10] = 0
    minimize cross_entropy(Xtr @ W, ytr) + 0.5 * sum(c * W^2)
}
upper minimize cross_entropy(Xval @ W, yval)
"""
    r = bil.compile(src).run(max_iter=3)
    assert min(rec["eps"] for rec in r.history) > 1e-6
    assert r.history[-1]["upper"] < r.history[0]["upper"]
