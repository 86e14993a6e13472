"""The `bil` command: check, graph, show (--latex), emit --stage ir, exit codes."""

import subprocess
import sys
from pathlib import Path

import bil  # noqa: F401
import pytest

import bil.cli
from bil.cli import COMMANDS, STAGES, main
from bil.compiler.render.latex import standard_form_latex

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
RIDGE = str(ROOT / "examples" / "ridge.bil")
TV = str(ROOT / "examples" / "tv_denoise.bil")
LR = str(ROOT / "examples" / "learned_lr.bil")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"bil {bil.__version__}"


def test_python_dash_m_version():
    r = subprocess.run([sys.executable, "-m", "bil", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"bil {bil.__version__}"


def test_help_shows_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "examples:" in out and "bil check examples/ridge.bil" in out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_shows_examples(capsys, name):
    code, out, _ = run(capsys, name, "--help")
    assert code == 0
    assert f"usage: bil {name}" in out and "examples:" in out and f"bil {name} " in out


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "usage:" in err


def test_unknown_stage_is_a_usage_error(capsys):
    code, _, err = run(capsys, "emit", RIDGE, "--stage", "nope")
    assert code == 2 and "invalid choice" in err


def test_check_ok(capsys):
    code, out, err = run(capsys, "check", RIDGE)
    assert code == 0 and out == f"{RIDGE}: ok\n" and err == ""


def test_check_several_files_exits_2_if_any_fails(capsys, tmp_path):
    bad = tmp_path / "bad.bil"
    bad.write_text("hyper lam = 1\nlower { w = 0 minimize (w - lam)^2 }\nupper minimize sumq(w)\n")
    code, out, err = run(capsys, "check", RIDGE, str(bad))
    assert code == 2
    assert f"{RIDGE}: ok" in out
    assert err.startswith(f"{bad}:3:16: error: unknown function `sumq`")
    assert "^^^^" in err and "hint: did you mean `sumsq`?" in err


def test_check_prints_warnings_and_exits_0(capsys):
    spec = GOLDEN / "train_adam.bil"
    code, out, err = run(capsys, "check", str(spec))
    assert code == 0 and "ok (1 warning)" in out
    assert f"{spec}:9:7: warning: hyper `unused` does not affect the upper objective" in err


def test_check_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "check", str(tmp_path / "nope.bil"))
    assert code == 2 and err.startswith("bil: error: no such file") and len(err.splitlines()) == 1


def test_check_directory_and_binary_file(capsys, tmp_path):
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 2 and "is a directory" in err
    binary = tmp_path / "x.bil"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run(capsys, "check", str(binary))
    assert code == 2 and "not UTF-8" in err


def test_internal_error_is_one_line_and_exit_3(capsys, monkeypatch):
    def boom(path, stderr=None, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(bil.cli, "load", boom)
    monkeypatch.delenv("BIL_TRACEBACK", raising=False)
    code, _, err = run(capsys, "check", RIDGE)
    assert code == 3
    assert err.startswith("bil: internal error: KeyError") and "report" in err and "BIL_TRACEBACK=1" in err
    assert len(err.strip().splitlines()) == 1


def test_internal_error_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setattr(bil.cli, "load", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("BIL_TRACEBACK", "1")
    code = main(["show", RIDGE])
    _, err = capsys.readouterr()
    assert code == 3 and "Traceback" in err and "ZeroDivisionError" in err


def test_graph_text(capsys):
    code, out, _ = run(capsys, "graph", RIDGE)
    assert code == 0
    assert "lam [hyper, theta] <- -" in out
    assert "w [lower_var, lower] <- <lower>" in out
    assert "<lower> [lower, theta] <- Xtr, lam, ytr" in out


def test_graph_dot(capsys):
    code, out, _ = run(capsys, "graph", RIDGE, "--format", "dot")
    assert code == 0
    assert out.startswith('digraph "ridge" {') and out.rstrip().endswith("}")
    assert '"lam" -> "<lower>";' in out


def test_graph_to_file(capsys, tmp_path):
    target = tmp_path / "g.dot"
    code, out, _ = run(capsys, "graph", RIDGE, "--format", "dot", "-o", str(target))
    assert code == 0 and out == "" and target.read_text().startswith("digraph")


def test_emit_ir_matches_golden(capsys):
    # the golden copy of ridge (examples/ridge.bil now also binds a test part)
    code, out, _ = run(capsys, "emit", str(GOLDEN / "ridge.bil"), "--stage", "ir")
    assert code == 0 and out == (GOLDEN / "ridge.ir").read_text()
    assert main(["emit", str(GOLDEN / "ridge.bil")]) == 0  # ir is the default stage
    assert capsys.readouterr().out == out


def test_emit_unwritable_output(capsys, tmp_path):
    code, _, err = run(capsys, "emit", RIDGE, "-o", str(tmp_path / "no" / "such" / "dir.ir"))
    assert code == 2 and err.startswith("bil: error: cannot write")


def test_stages_are_one_function_each():
    assert "ir" in STAGES and callable(STAGES["ir"].render)


def test_show_ridge(capsys):
    code, out, _ = run(capsys, "show", RIDGE)
    assert code == 0
    assert "minimize over lam > 0" in out
    assert "0.5 * mean((Xval @ w* - yval) ^ 2)" in out
    assert "w*(lam) ∈ argmin_w  0.5 * sumsq(Xtr @ w - ytr) + 0.5 * lam * sumsq(w)" in out
    assert "Xtr        float64[221, 10]" in out
    assert "w          real[10]" in out
    assert "samples: 1" in out
    assert "lower objective is quadratic in w (proved: degree ≤ 2)" in out
    assert "solved by direct(): one factorisation of the 10×10 Hessian is exact" in out
    assert "lower.solver" in out and "direct()  *" in out  # defaults are marked


def test_show_per_sample(capsys):
    code, out, _ = run(capsys, "show", TV)
    assert code == 0
    assert "minimize over alpha > 0, nu > 0" in out
    assert "mean over 3 samples of" in out
    assert "x*(alpha, nu) ∈ argmin_x" in out and "for each sample" in out
    assert "samples: 3" in out
    assert "lower.solver            fista(mu=1, L0=1.0)\n" in out  # given, so not marked as default


def test_show_train(capsys):
    code, out, _ = run(capsys, "show", LR)
    assert code == 0
    assert "w(lr, wd) = 100 steps of sgd(lr=lr, momentum=0.9) on  logistic_loss(Xtr @ w, ytr)" in out
    assert "training procedure" in out


def test_show_bounds_and_hoisted(capsys):
    code, out, _ = run(capsys, "show", str(GOLDEN / "defs_bounds.bil"))
    assert code == 0
    assert "weights ∈ (0, ∞)^(4)" in out and "0 < mix < 1" in out
    assert "real[4] in [-1, 1]" in out
    code, out, _ = run(capsys, "show", str(GOLDEN / "hoisted.bil"))
    assert "hoisted constants" in out and "transpose(X) @ X" in out


def test_show_latex_ridge(capsys):
    code, out, _ = run(capsys, "show", RIDGE, "--latex")
    assert code == 0
    assert out.startswith(r"\min_{\lambda > 0}")
    assert r"\quad \text{s.t.}\quad w^*\left(\lambda\right) \in \arg\min_{w}" in out
    assert r"\left\|\mathrm{Xtr} w - \mathrm{ytr}\right\|_2^{2}" in out   # one symbol, not X·t·r
    assert r"0.5 \lambda \left\|w\right\|_2^{2}" in out


@pytest.mark.parametrize("spec", sorted(GOLDEN.glob("*.bil")), ids=lambda p: p.stem)
def test_show_and_latex_work_on_every_golden_spec(capsys, spec):
    assert main(["show", str(spec)]) == 0
    assert main(["show", str(spec), "--latex"]) == 0
    out, err = capsys.readouterr()
    assert r"\min_{" in out and r"\text{s.t.}" in out
    assert "Traceback" not in err


def test_show_latex_compiles_as_math():
    """The LaTeX is balanced (braces and \\left/\\right pairs)."""
    for spec in sorted(GOLDEN.glob("*.bil")):
        tex = standard_form_latex(bil.compile(spec).state)
        assert tex.count("{") == tex.count("}"), spec
        assert tex.count(r"\left") == tex.count(r"\right"), spec


def test_implicit_on_a_train_goal_warns_at_the_option(capsys, tmp_path):
    """Allowed by docs/LANGUAGE.md ("treating the end point as a minimiser"), but its derivative is
    not that of the training steps: on learned_lr it was [0, -4.8] against FD [0.088, -0.78]."""
    src = (ROOT / "examples" / "learned_lr.bil").read_text()
    assert "unroll(truncate=20)" in src
    spec = tmp_path / "lr.bil"
    spec.write_text(src.replace("unroll(truncate=20)", "implicit"))
    code, out, err = run(capsys, "check", str(spec))
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if "hypergradient: implicit" in t)
    assert code == 0 and "ok (1 warning)" in out
    assert f"{spec}:{line}:20: warning: `implicit` differentiates the argmin of the training loss" in err
    assert "hint:" in err and "unroll" in err
