"""Runtime failures are reported at the spec line responsible (the lower objective, the sub-expression
where an Inf/NaN starts; the `lower` block otherwise), with a hint."""

from __future__ import annotations

import pytest

import bil
from bil import BilRuntimeError

HEAD = """data y = randn(5, seed=1)
hyper lam : positive = 1.0
"""


def _err(src):
    prog = bil.compile(HEAD + src, data=None)
    with pytest.raises(BilRuntimeError) as info:
        prog.value_and_hypergrad(tol=1e-8)
    return info.value


def test_singular_hessian_is_reported_at_lower_block():
    # x = 0 is stationary (the solver stops there) but a saddle: H = -2·lam·I.
    # located at the lower objective's line (the `lower {` block before the curvature diagnosis)
    e = _err("lower {\n  x : real[5] = 0\n  minimize sum(x^4) - lam * sumsq(x)\n}\nupper minimize sumsq(x - y)\n")
    assert e.line == 5 and e.column == 3
    assert "not positive definite" in e.message and "negative eigenvalue (about -2)" in e.message
    assert "unroll" in e.hint and str(e).startswith("<string>:5:3: error:")


def test_nan_in_lower_solve():
    # located at `log(x)` (the `lower {` block, "NaN or Inf", before the Inf/NaN diagnosis)
    e = _err("lower {\n  x : real[5] = 0\n  minimize sum(log(x)) + lam * sumsq(x)\n  solver: gd\n}\nupper minimize sumsq(x)\n")
    assert (e.line, e.column) == (5, 16) and "is -Inf at the lower variables' initial values" in e.message


def test_iteration_cap():
    e = _err("lower {\n  x : real[5] = 0\n  minimize sumsq(x - y) + lam * sum(exp(x))\n  solver: gd(lr=1e-4)\n  max_iter: 3\n}\n"
             "upper minimize sumsq(x)\n")
    assert e.line == 3 and "max_iter=3" in e.message and "max_iter" in e.hint


def test_float32_tolerance_out_of_reach_says_so():
    src = ("lower {\n  x : real[5] = 0\n  minimize sumsq(x - y) + lam * sum(exp(x))\n}\nupper minimize sumsq(x)\n"
           'solve { precision: "float32" }\n')
    prog = bil.compile(HEAD + src)
    with pytest.raises(BilRuntimeError) as info:
        prog.value_and_hypergrad(tol=1e-12)
    e = info.value
    assert e.line == 3 and "float32" in e.hint and "float64" in e.hint


SADDLE = HEAD + "lower {\n  x : real[5] = 0\n  minimize sum(x^4) - lam * sumsq(x)\n}\nupper minimize sumsq(x - y)\n"


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_failed_run_reports_the_lower_block(tmp_path, capsys):
    from bil.cli import main

    prog = bil.compile(SADDLE)
    result = prog.run(max_iter=3)
    assert result.error is not None and result.error.line == 5   # the lower objective's line
    assert "not positive definite" in result.error.message

    spec = tmp_path / "saddle.bil"
    spec.write_text(SADDLE)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:5:3: error: the run stopped" in err and "Traceback" not in err
    assert (tmp_path / "out" / "result.json").exists()


def test_successful_run_has_no_error():
    prog = bil.compile(HEAD + "lower {\n  x : real[5] = 0\n  minimize sumsq(x - y) + lam * sumsq(x)\n}\n"
                       "upper minimize sumsq(x - 0.5 * y)\n")
    assert prog.run(max_iter=3).error is None


def test_nan_in_the_upper_objective_points_at_upper():
    """The lower solve is fine; the upper objective is log of negative values.  The run's
    error used to blame the lower solve and point at the `lower` block."""
    prog = bil.compile(HEAD + "lower {\n  x : real[5] = 0\n  minimize sumsq(x - y) + lam * sumsq(x)\n}\n"
                              "upper minimize sum(log(x - 10))\n")
    r = prog.run(max_iter=3)
    assert r.reason == "non-finite hypergradient"
    e = r.error
    assert isinstance(e, BilRuntimeError) and e.line == 7 and "upper objective" in e.message
    assert "upper objective's domain" in e.hint


@pytest.mark.parametrize("outer", ["hoag", "gd"])
def test_nan_in_the_upper_objective_with_hoag_and_gd(outer):
    src = (HEAD + "lower {\n  x : real[5] = 0\n  minimize sumsq(x - y) + lam * sumsq(x)\n}\n"
           "upper minimize sum(log(x - 10))\n" + f"solve {{ outer: {outer} }}\n")
    r = bil.compile(src).run()
    assert r.reason == "non-finite hypergradient" and r.error.line == 7


def test_an_unbounded_lower_objective_is_reported_as_the_lower_solve_failing():
    """The adjoint at a lower iterate stopped by its cap said "Hessian not positive definite"
    for an objective unbounded below; the capped lower solve is what failed."""
    prog = bil.compile("""
        data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
        hyper lam : positive = 1.0
        lower {
            w : real[3] = 0
            minimize lam * sum(w)
            max_iter: 50
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    res = prog.run(max_iter=3)
    assert res.reason == "lower solve hit its iteration cap"
    assert "unbounded below" in res.error.hint


@pytest.mark.parametrize("outer", ["adam(lr=0.1, steps=5)", "gd(lr=0.1, steps=5)"])
def test_a_failed_first_solve_leaves_no_upper_value(outer):
    """With no good point the result's upper is NaN (adam wrote the capped solve's value,
    0.2585 for the true 0.2626).  (lbfgs: the default here, direct, is exact in one step.)"""
    prog = bil.compile(f"""
        data X, y = (randn(40, 5, seed=0), randn(40, seed=1))
        hyper lam : positive = 1.0
        lower {{
            w : real[5] = 0
            minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
            solver: lbfgs
            max_iter: 2
        }}
        upper minimize 0.5 * sumsq(X @ w - y)
        solve {{ outer: {outer} }}
    """)
    res = prog.run()
    assert res.reason == "lower solve hit its iteration cap" and res.error is not None
    assert res.upper != res.upper  # NaN


DIVERGING_TRAIN = """data X = randn(40, 3, seed=0)
data y = randn(40, seed=1)
hyper lr : positive = 0.05
lower {
    w : real[3] = 0
    train 0.5 * mean((X @ w - y)^2) with sgd(lr=lr, momentum=0.9) for 50 steps
}
upper minimize 0.5 * mean((X @ w - y)^2)
solve { outer: adam(lr=0.5, steps=3) }
"""


@pytest.mark.parametrize("outer", ["adam(lr=0.5, steps=3)", "hoag(max_iter=3)", "maid(max_iter=3)"])
def test_a_diverging_training_procedure_is_an_error_not_a_result(outer):
    """SGD past its stable learning rate blows the training loss up to ~1e200: finite, so it
    used to be recorded as the upper value with exit 0 (and an overflow warning)."""
    spec = DIVERGING_TRAIN.replace("adam(lr=0.5, steps=3)", outer)
    assert bil.compile(spec).run().error is None                    # lr = 0.05 trains fine
    result = bil.compile(spec.replace("= 0.05", "= 50.0")).run()
    e = result.error
    assert e is not None and e.line == 4 and "diverged" in e.message and "learning rate" in e.hint
    assert all(r["hyper.lr"] == pytest.approx(50.0, rel=1e-12) for r in result.history)   # no step taken


def test_a_diverging_neumann_series_is_named_as_such():
    """alpha = 1 > 2/L: the message blamed CG and a singular Hessian."""
    e = _err("lower {\n  x : real[5] = 0\n  minimize 20 * sumsq(x - y) + lam * sumsq(x)\n}\nupper minimize sumsq(x)\n"
             "solve { hypergradient: neumann(k=200, alpha=1.0) }\n")
    assert e.line == 3 and "Neumann series" in e.message and "alpha" in e.hint and "CG" not in e.message


def test_a_failed_direct_adjoint_is_not_called_cg():
    prog = bil.compile(HEAD + "lower {\n  x : real[5] = 0\n  minimize sum(x^4) - lam * sumsq(x) + sum(x)\n}\n"
                       "upper minimize sumsq(x - y)\n")
    from bil.stdlib.methods import Implicit

    err = prog.engine.failure(0, cg_status=2, method=Implicit(linear="direct"))
    assert "(direct)" in err.message and "CG" not in err.message
