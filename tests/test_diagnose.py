"""Diagnoses that name the right place (issue 18): a compiler pass that runs out of stack,
Inf/NaN located at the objective (and sub-expression) that produced it, and a warning for a
lower problem with negative curvature at its solution.

Each spec is small: every test runs in a couple of seconds.
"""

import bil
import numpy as np
import pytest

BASE = """data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
hyper lam : positive = 1.0
lower {{
    w = zeros(3)
    minimize sumsq(X @ w - y) + lam * sumsq(w){extra}
}}
upper minimize {upper}
"""


def spec(extra="", upper="sumsq(X @ w - y)") -> str:
    return BASE.format(extra=extra, upper=upper)


def error_of(text) -> bil.BilError:
    with pytest.raises(bil.BilError) as info:
        bil.compile(text)
    return info.value


def _chain(n: int) -> str:
    """n defs, each calling the one before: shallow text that inlines into one deep expression."""
    return "".join(f"def f{i}(a) = f{i - 1}(a) + 1\n" if i else "def f0(a) = a\n" for i in range(n))


# ------------------------------------------------------- compiler recursion
def test_a_def_chain_too_deep_for_the_inliner_is_reported_at_the_call_that_starts_it():
    err = error_of(_chain(300) + spec(" + sum(f299(w))"))
    assert (err.line, err.column) == (306, 54), str(err)        # `f299(w)` in the lower objective
    assert "nests too deeply" in err.message and "reached line" in err.hint, str(err)


def test_a_def_chain_in_a_data_statement_is_reported_at_that_statement():
    err = error_of(_chain(300) + "data Z = f299(randn(3))\n" + spec())
    assert (err.line, err.column) == (301, 10), str(err)
    assert "^^^" in str(err) and err.hint


# ------------------------------------------------------- data, compile time
def test_division_by_zero_in_data_is_a_located_compile_time_error():
    err = error_of("data s = randn(20, seed=1) / 0\n" + spec())
    assert (err.line, err.column) == (1, 10) and "division by zero in `/` (20 of 20 entries)" in err.message
    assert "evaluated at compile time" in err.hint


def test_nan_in_a_loaded_npy_file_is_an_error_at_its_data_line(tmp_path):
    import numpy as np

    a = np.ones(20)
    a[2] = np.nan
    np.save(tmp_path / "y.npy", a)
    with pytest.raises(bil.BilError) as info:
        bil.compile(spec().replace("randn(20, seed=1)", 'load("y.npy")'), base_dir=tmp_path)
    err = info.value
    assert (err.line, err.column) == (2, 10) and "data `y` contains NaN at index (2,)" in err.message, str(err)
    assert "clean the data" in err.hint


# -------------------------------------------------------- Inf/NaN located
# The cheap tests call the diagnosis at the hypers a run would fail at (one lower solve,
# a few eager probes); the end-to-end runs that fail there are marked slow (each compiles
# the whole hypergradient oracle).
LAM = {"lam": 1.0}


def located(text, line, col, *fragments, hint=None) -> bil.BilError:
    from bil.diagnosis.numerics import locate_nonfinite

    err = locate_nonfinite(bil.compile(text), LAM)
    assert err is not None and (err.line, err.column) == (line, col), str(err)
    assert all(f in err.message for f in fragments), str(err)
    assert hint is None or hint in err.hint, str(err)
    return err


def test_an_upper_overflow_is_located_in_the_upper_objective_not_blamed_on_the_lower_hessian():
    # before: "the adjoint (CG) solve produced NaN or Inf" at `lower {`, "the lower Hessian may be singular"
    err = located(spec(upper="sum(exp(100000 * w))"), 8, 20,
                  "the upper objective (line 8) is Inf at the lower solution: `exp` gives Inf",
                  "its argument is [-8.36e+03, 5.71e+03]", hint="exp overflows")
    assert "Hessian" not in str(err)


def test_a_huge_but_finite_upper_gradient_is_named_where_it_grows():
    from bil.diagnosis.numerics import gradient_too_large

    # exp(10000 * w) ~ 1e248 at the solution: finite, but its squared norm overflows in CG
    prog = bil.compile(spec(upper="sum(exp(10000 * w))"))
    err = gradient_too_large(prog, LAM, 1e-10)
    assert (err.line, err.column) == (8, 20) and "`exp` grows that large here" in err.message, str(err)
    assert "its square overflows float64" in err.message and "not the problem" in err.hint
    ridge = bil.compile(spec())
    assert gradient_too_large(ridge, LAM, 1e-10) is None                   # an ordinary scale
    from bil.diagnosis.curvature import curvature_warnings

    assert curvature_warnings(ridge, LAM, ridge.solve_lower()) == []       # convex: no warning


def test_log_of_a_negative_lower_solution_in_a_def_is_located_in_the_def_body():
    located("def risk(a) = sum(log(a))\n" + spec(upper="risk(w)"), 1, 19,        # `log(a)` in the def
            "the upper objective (line 9) is NaN at the lower solution: `log` gives NaN",
            "its argument is [-0.0836, 0.0571]", hint="log needs arguments > 0")


def test_a_lower_objective_infinite_at_its_start_is_located():
    # before: "the lower solve produced NaN or Inf" at `lower {` (the API: solve_lower)
    with pytest.raises(bil.BilRuntimeError) as info:
        bil.compile(spec(" + sum(log(w))")).solve_lower()
    err = info.value
    assert (err.line, err.column) == (6, 54), str(err)
    assert "the lower objective (line 6) is -Inf at the lower variables' initial values" in err.message
    assert "its argument is 0" in err.message and "log needs arguments > 0" in err.hint


def test_an_infinite_derivative_is_located_too():
    with pytest.raises(bil.BilRuntimeError) as info:
        bil.compile(spec(" + sum(sqrt(w^2))")).solve_lower()
    err = info.value
    assert (err.line, err.column) == (6, 54), str(err)
    assert "the first derivative of the lower objective (line 6) is NaN" in err.message


def test_the_culprit_search_descends_to_the_innermost_failing_node():
    from bil.core import ir
    from bil.diagnosis.numerics import culprit

    prog = bil.compile(spec(upper="sum(log(0 * w) + w)"))

    def probe(e):   # values only: -Inf at and above `log`, finite elsewhere
        bad = any(isinstance(n, ir.Call) and n.func == "log" for n in ir.walk(e))
        return (float("-inf") if bad else 1.0, 0.0, 0.0)

    node, order, what = culprit(prog.state.upper_expr, probe)   # not the `+` or the `sum` above it
    assert isinstance(node, ir.Call) and node.func == "log" and (order, what) == (0, "-Inf")


def test_a_run_stopped_at_its_start_reports_the_finite_upper_value_there():
    """The run fails at θ₀ (roundoff of a huge upper gradient), but F(θ₀) itself is finite: the
    result's upper value is that, not the NaN of the failed iteration's record."""
    res = bil.compile(spec(upper="sum(exp(1000 * w))")).run(max_iter=2)
    assert res.error is not None and float(res.hypers["lam"]) == 1.0
    assert np.isfinite(res.upper) and res.upper > 1e10, res.upper   # exp(1000 w) at the solution


@pytest.mark.slow
@pytest.mark.parametrize("upper, col, fragment", [
    ("sum(exp(100000 * w))", 20, "is Inf at the lower solution: `exp` gives Inf"),
    ("sum(exp(10000 * w))", 20, "`exp` grows that large here"),
    ("sum(exp(1000 * w))", 20, "its roundoff alone"),
    ("sum(log(w))", 20, "`log` gives NaN"),
])
def test_runs_that_fail_on_the_upper_objective_say_so(upper, col, fragment):
    res = bil.compile(spec(upper=upper)).run(max_iter=2)
    err = res.error
    assert err is not None and (err.line, err.column) == (8, col), res.reason
    assert err.message.startswith("the run stopped at lam = 1: ") and fragment in err.message, str(err)


@pytest.mark.slow
def test_the_api_locates_an_infinite_upper_objective():
    with pytest.raises(bil.BilRuntimeError) as info:
        bil.compile(spec(upper="sum(exp(100000 * w))")).value_and_hypergrad()
    assert (info.value.line, info.value.column) == (8, 20), str(info.value)


# ------------------------------------------------------------- curvature
DOUBLE_WELL = """data y = randn(3, seed=1)
hyper t : real = {t}
lower {{
    x = zeros(3)
    minimize sum((x^2 - 1)^2) + t * sum(x)
}}
upper minimize sumsq(x - y)
"""


@pytest.fixture(scope="module")
def double_well():
    return bil.compile(DOUBLE_WELL.format(t=0.0))


def test_a_lower_solution_at_a_maximum_gets_a_warning_at_the_lower_objective(double_well):
    from bil.diagnosis.curvature import curvature_warnings, lower_curvature

    x = double_well.solve_lower({"t": 0.0})       # x = 0: stationary, a maximum (Hessian -4 I)
    lo, hi = lower_curvature(double_well, {"t": 0.0}, x)
    assert lo == pytest.approx(-4.0) and hi == pytest.approx(-4.0)
    (w,) = curvature_warnings(double_well, {"t": 0.0}, x)
    assert w.span.line == 5 and "not a minimum" in w.message and "implicit hypergradient" in w.message
    assert "* sumsq(x)` (any weight above 2)" in w.hint and str(w).startswith("<string>:5:5: warning: ")


def test_a_nonconvex_lower_problem_gets_a_milder_warning_when_its_solution_is_a_minimum(double_well):
    from bil.diagnosis.curvature import curvature_warnings

    x = double_well.solve_lower({"t": 0.3})       # the well near -1: a minimum; the start is not
    assert (x["x"] < -1).all()
    (w,) = curvature_warnings(double_well, {"t": 0.3}, x)
    assert "initial values" in w.message and "local minimum" in w.message


def test_active_bounds_are_not_curvature():
    from bil.diagnosis.curvature import lower_curvature

    prog = bil.compile(DOUBLE_WELL.format(t=0.3).replace("x = zeros(3)", "x : real[3] in [-1, 1] = 0")
                       .replace("sum((x^2 - 1)^2) + t * sum(x)", "-sumsq(x) + t * sum(x)"))
    x = prog.solve_lower()                       # every variable at its lower bound
    assert (x["x"] == -1).all()
    assert lower_curvature(prog, {"t": 0.3}, x) == (0.0, 0.0)


def test_negative_curvature_met_by_the_adjoint_is_reported_at_the_lower_objective(double_well):
    from bil.diagnosis.curvature import not_positive_definite

    # before: "the lower objective's Hessian is not positive definite" at `lower {`
    err = not_positive_definite(double_well, {"t": 0.0})
    assert (err.line, err.column) == (5, 5), str(err)
    assert "pᵀHp ≤ 0" in err.message and "not positive definite, it has a negative eigenvalue (about -4)" in err.message


@pytest.mark.slow
def test_a_run_whose_adjoint_meets_negative_curvature_says_so(double_well):
    res = double_well.run(max_iter=2)
    assert res.error is not None and (res.error.line, res.error.column) == (5, 5), res.reason
    assert "negative eigenvalue (about -4)" in res.error.message


@pytest.mark.slow
def test_bil_run_prints_the_curvature_warning(tmp_path, capsys):
    import bil.cli

    path = tmp_path / "dw.bil"
    path.write_text(DOUBLE_WELL.format(t=0.3) + "solve { outer: maid(max_iter=1) }\n")
    rc = bil.cli.main(["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and "dw.bil:5:5: warning: the lower problem is not convex" in err, err
