"""`bil gradcheck` and `bil emit --stage jaxpr|hlo`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bil.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _gradcheck(tmp_path, capsys, text: str, name: str = "spec.bil"):
    """Write ``text`` as a spec and gradcheck it: (exit code, stdout, stderr, spec path)."""
    spec = tmp_path / name
    spec.write_text(text)
    code = main(["gradcheck", str(spec)])
    out, err = capsys.readouterr()
    return code, out, err, spec


def test_gradcheck_ridge_agrees(capsys):
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil"), "--set", "hyper.lam=3"]) == 0
    out = capsys.readouterr().out
    assert "implicit" in out and "direct" in out and "finite-diff" in out and "OK" in out
    rel = [float(line.split(":")[-1]) for line in out.splitlines() if line.startswith("max relative difference implicit")]
    assert rel and rel[0] < 1e-6


def _rel(out, method):
    return float(next(line for line in out.splitlines()
                      if line.startswith(f"max relative difference {method} vs")).split(":")[-1])


ILL_CONDITIONED = """
data Xtr, ytr, Xval, yval = dataset("diabetes", split=0.5, seed=0, standardize=true)
hyper lam : real in [0.01, 5] = 0.02
hyper c : real[ncols(Xtr)] in [0, 1] = 0.01
lower {
    w : real[ncols(Xtr)] = 0
    minimize 0.5 * mean((Xtr @ w - ytr)^2) + 0.5 * lam * sum(c * w^2)
}
upper minimize 0.5 * mean((Xval @ w - yval)^2)
"""


def test_gradcheck_on_an_ill_conditioned_lower_problem(tmp_path, capsys):
    """Lower strong convexity ~1e-4: finite differences of f(x̃) carried the solve's
    first-order error (1.4e-5 relative: a false MISMATCH), and the default unroll (1000 AGD
    steps with k/(k+3) momentum) was 13% off.  With the adjoint-corrected values and a
    restarted, curvature-safe unroll all three agree."""
    spec = tmp_path / "ill.bil"
    spec.write_text(ILL_CONDITIONED)
    assert main(["gradcheck", str(spec)]) == 0
    out = capsys.readouterr().out
    assert _rel(out, "implicit") < 1e-6 and _rel(out, "unroll") < 1e-6
    # 11 hyper entries, 8 checked by default: said, not silent
    assert "finite differences on 8 of 11 hyper entries" in out and "--entries 11" in out


def test_gradcheck_default_unroll_converges_on_ridge(capsys):
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil")]) == 0
    assert _rel(capsys.readouterr().out, "unroll") < 1e-6   # was 1.1e-2 without restarts


def test_gradcheck_exits_1_on_mismatch(capsys, monkeypatch):
    # Coarse finite differences (step 0.3 in log λ: a truncation error of ~1e-2) against a tight
    # tolerance: a genuine disagreement, far above the differences' roundoff.
    import bil.runtime.gradcheck as gc

    real = gc.gradcheck
    monkeypatch.setattr(gc, "gradcheck", lambda *a, **k: real(*a, **{**k, "rel_step": 0.3}))
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil"), "--tol", "1e-6"]) == 1
    assert "MISMATCH: implicit" in capsys.readouterr().out


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_gradcheck_near_a_domain_boundary(tmp_path, capsys):
    """A positive hyper at 1e-8 and a bounded one at 1 - 1e-8: the differences used to step
    outside the domain ("got a value <= 0"); F is flat to float64 over any step there, which a
    note says, and a difference within that roundoff is not a mismatch."""
    spec = tmp_path / "edge.bil"
    spec.write_text("""data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
hyper lam : positive = 1e-8
hyper p : real in [0, 1] = 0.99999999
lower {
    w = zeros(3)
    minimize sumsq(X @ w - y) + lam * sumsq(w) + p * sum(w)
}
upper minimize sumsq(X @ w - y - 0.1)
""")
    assert main(["gradcheck", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "roundoff" in out
    # away from the boundary the same spec checks to the usual accuracy
    assert main(["gradcheck", str(spec), "--set", "hyper.lam=0.5", "--set", "hyper.p=0.3"]) == 0
    out = capsys.readouterr().out
    assert "roundoff" not in out and "OK" in out


def test_gradcheck_bad_set_is_a_diagnostic(capsys):
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil"), "--set", "hyper.lamb=3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "lam" in err


@pytest.mark.parametrize("stage,marker", [("jaxpr", "lambda"), ("hlo", "func.func")])
def test_emit_lowered_stages(capsys, stage, marker):
    assert main(["emit", str(EXAMPLES / "ridge.bil"), "--stage", stage]) == 0
    assert marker in capsys.readouterr().out


RIDGE_SMALL = """
data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
hyper lam : positive = 1.0
hyper a = 0.5
lower {
    w : real[3] = a
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * sumsq(X @ w - y)
"""


@pytest.mark.parametrize("solve", [
    "",                                            # `a` only sets the initial value: a zero hypergradient
    'solve { precision: "float32" }',              # computed in float64 all the same
    "solve { hypergradient: unroll(steps=3) }",    # the implicit column is implicit, not the spec's method
])
def test_gradcheck_agrees_on_awkward_specs(tmp_path, capsys, solve):
    spec = tmp_path / "r.bil"
    spec.write_text(RIDGE_SMALL + solve + "\n")
    assert main(["gradcheck", str(spec)]) == 0, capsys.readouterr()
    out, err = capsys.readouterr()
    assert "OK" in out
    assert ("float64" in err) == ("float32" in solve)


def test_gradcheck_entries_must_be_positive(capsys):
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil"), "--entries", "-1"]) == 2
    assert "--entries" in capsys.readouterr().err
    assert main(["gradcheck", str(EXAMPLES / "ridge.bil"), "--tol", "-1"]) == 2
    assert "--tol must be a positive" in capsys.readouterr().err


def test_gradcheck_checks_full_unroll_when_the_spec_truncates(capsys):
    """learned_lr.bil trains with `unroll(truncate=20)`: truncated backpropagation is biased by
    design (0.0093 against 0.0876 for lr), so the verdict is on the full unroll, and the
    truncated one is shown beside it with a note."""
    assert main(["gradcheck", str(EXAMPLES / "learned_lr.bil")]) == 0
    out = capsys.readouterr().out
    assert "unroll(truncate=20)" in out and "not checked" in out
    assert "max relative difference unroll vs finite differences" in out
    assert out.rstrip().endswith("OK")


def test_gradcheck_shows_the_specs_implicit_column_on_a_train_goal(tmp_path, capsys):
    code, out, _, _ = _gradcheck(tmp_path, capsys, (EXAMPLES / "learned_lr.bil").read_text()
                                 .replace("unroll(truncate=20)", "implicit"))
    assert code == 0
    assert "max relative difference implicit vs finite differences" in out
    assert "implicit on a train goal differentiates the argmin" in out and out.rstrip().endswith("OK")


def test_gradcheck_reports_a_nan_upper_objective_at_its_line(tmp_path, capsys):
    """It printed finite hypergradients beside a NaN finite difference and said MISMATCH."""
    code, _, err, spec = _gradcheck(tmp_path, capsys,
                                    "data X, y = (randn(20, 3, seed=0), randn(20, seed=1))\n"
                                    "hyper lam : positive = 1.0\n"
                                    "lower {\n    w : real[3] = 0\n"
                                    "    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)\n}\n"
                                    "upper minimize log(sum(w) - 100)\n")
    assert code == 1        # a failed evaluation, as `bil run` exits on one (2 is for spec errors)
    assert f"{spec}:7:1: error: the upper objective or its gradient is NaN or Inf" in err and "hint:" in err


def test_gradcheck_survives_a_failing_information_column(tmp_path, capsys):
    """Implicit differentiation at a training end point whose Hessian is not positive
    definite fails; that column is informational, so the check goes on (it used to abort)."""
    code, out, _, _ = _gradcheck(
        tmp_path, capsys,
        "data X, y = (randn(20, 3, seed=0), randn(20, seed=1))\n"
        "hyper lr : positive = 0.05\nhyper wd : positive = 1.0\n"
        "lower {\n    w : real[3] = 0\n"
        "    train 0.5 * mean((X @ w - y)^2) + wd * sum(cos(3 * w)) with sgd(lr=lr) for 5 steps\n}\n"
        "upper minimize 0.5 * mean((X @ w - y)^2)\n"
        "solve { hypergradient: implicit }\n")
    assert code == 0
    assert "implicit failed:" in out and out.rstrip().endswith("OK")


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_gradcheck_with_active_bounds_and_zero_entries(tmp_path, capsys):
    """Hyper entries whose hypergradient is exactly 0 (they scale lower entries held at a bound)
    gave a false MISMATCH: the finite differences used f(x̃) without the adjoint correction,
    which with box bounds is still available on the free coordinates."""
    code, out, _, _ = _gradcheck(
        tmp_path, capsys,
        'data Xtr, ytr, Xval, yval = dataset("diabetes", split=0.5, seed=0, standardize=true)\n'
        "hyper c : positive[10] = 1.0\nhyper b : real in [0, 2] = 0.5\n"
        "lower {\n    w : real[10] in [0, 1] = 0\n"
        "    minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * sum(c * w^2) + b * sum(w)\n}\n"
        "upper minimize 0.5 * mean((Xval @ w - yval)^2)\n")
    assert code == 0
    assert out.rstrip().endswith("OK")
    assert any(line.split()[1] == "0" for line in out.splitlines() if line.startswith("c["))  # exact zeros checked
