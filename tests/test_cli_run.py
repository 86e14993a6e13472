"""`bil run` / `bil plot` end to end, checkpoints and resume after SIGKILL, `--set` overrides.

The runs use a tiny ridge problem on a `load()`ed npz (20 training and 20
validation rows, 3 features) with `maid(max_iter=6)` and `checkpoint_every: 2`,
in subprocesses (`python -m bil ...`) exactly as a user would run them.
"""

import bil  # noqa: F401  (float64)

import csv
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bil.core.errors import BilError
from bil.compiler.overrides import parse_assignment, valid_keys
from bil.runtime import checkpoint
from bil.runtime.outer.history import FIELDS
from bil.runtime.results import RESULT_KEYS, read_history_csv

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
# A tiny ridge problem for the CLI tests.
problem tiny_ridge

data Xtr = load("data.npz", "Xtr")
data ytr = load("data.npz", "ytr")
data Xval = load("data.npz", "Xval")
data yval = load("data.npz", "yval")
hyper lam : positive = 1.0
lower {
    w : real[3] = 0
    minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * mean((Xval @ w - yval)^2)
solve {
    outer: maid(max_iter=6)
    checkpoint_every: 2
}
"""

IMAGE_SPEC = """\
problem tiny_tv
data clean, noisy = denoising_pairs(["camera", "moon"], size=16, sigma=0.1, seed=0) per sample
hyper alpha : positive = 0.05
lower {
    x = noisy
    minimize 0.5 * sumsq(x - noisy) + alpha * tv(x, 0.01)
    solver: fista(mu=1)
}
upper minimize 0.5 * sumsq(x - clean)
solve { outer: maid(max_iter=2) }
"""


#: one JAX compilation cache for every subprocess of this module: the runs compile
#: the same oracles, and only the first pays for it (the executables, hence the
#: numbers, are the same either way)
_JAX_CACHE: dict[str, str] = {}


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("BIL_TEST_SLEEP_PER_ITER", None)
    env.update(_JAX_CACHE)
    env.update(extra)
    return env


def _tiny_in(spec_dir, folder, text: str = SPEC) -> None:
    """The tiny spec (or ``text``) and its data in ``folder``."""
    (folder / "data.npz").write_bytes((spec_dir / "data.npz").read_bytes())
    (folder / "tiny.bil").write_text(text)


def bil_cmd(*args, cwd, timeout=300, **env):
    """Run ``python -m bil ARGS``; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "bil", *map(str, args)], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def bil_main(capsys, *args):
    """Run the CLI in this process; ``(exit code, stdout, stderr)``."""
    from bil.cli import main

    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module", autouse=True)
def jax_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("jax_cache")
    _JAX_CACHE.update(JAX_COMPILATION_CACHE_DIR=str(d), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    yield d
    _JAX_CACHE.clear()


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.standard_normal(40)
    np.savez(d / "data.npz", Xtr=X[:20], ytr=y[:20], Xval=X[20:], yval=y[20:])
    (d / "tiny.bil").write_text(SPEC)
    return d


@pytest.fixture(scope="module")
def full_run(spec_dir):
    """One uninterrupted run (shared by the end-to-end and the resume tests)."""
    out = spec_dir / "full"
    r = bil_cmd("run", "tiny.bil", "--out", out, cwd=spec_dir)
    return r, out


def _history_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_wall(rows):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


# ------------------------------------------------------------ end to end
def test_run_end_to_end(full_run):
    r, out = full_run
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    res = json.loads((out / "result.json").read_text())
    assert tuple(res) == RESULT_KEYS
    assert res["problem"] == "tiny_ridge"
    assert set(res["hypers"]) == {"lam"} and isinstance(res["hypers"]["lam"], float) and res["hypers"]["lam"] > 0
    assert isinstance(res["upper"], float) and np.isfinite(res["upper"])
    assert res["iterations"] == 6 and res["reason"]
    assert res["lower_iters"] > 0 and res["cg_iters"] > 0 and res["wall_s"] > 0
    assert set(res["versions"]) == {"bil", "jax"} and res["versions"]["bil"] == bil.__version__
    import hashlib

    assert res["spec_sha256"] == hashlib.sha256(SPEC.encode()).hexdigest()

    rows = _history_rows(out / "history.csv")
    assert len(rows) == 6
    assert list(rows[0]) == list(FIELDS) + ["hyper.lam"]
    assert [int(row["iter"]) for row in rows] == list(range(1, 7))
    assert float(rows[-1]["hyper.lam"]) == res["hypers"]["lam"]        # repr round-trips exactly
    assert int(rows[-1]["lower_iters_total"]) == res["lower_iters"]

    with np.load(out / "hypers.npz") as z:
        assert float(z["lam"]) == res["hypers"]["lam"]
    with np.load(out / "lower.npz") as z:
        assert z["w"].shape == (3,)
    for name in ("upper_vs_cost.png", "upper_vs_samples.png", "upper_vs_time.png", "hypers.png"):
        p = out / "plots" / name
        assert p.is_file() and p.stat().st_size > 1000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summary table names what was learned and why it stopped
    assert "hyper lam" in r.stdout and res["reason"] in r.stdout
    # checkpoints: written at iterations 2, 4, 6; the last one survives, no temporary files
    state, meta = checkpoint.load(out / "checkpoint.npz")
    assert state["iteration"] == 6 and meta["spec_sha256"] == res["spec_sha256"]
    assert not list(out.glob(".*.tmp"))


def test_plot_regenerates_from_history(full_run, capsys):
    _, out = full_run
    for p in (out / "plots").glob("*.png"):
        p.unlink()
    code, stdout, err = bil_main(capsys, "plot", out)
    assert code == 0, err
    names = ("upper_vs_cost.png", "upper_vs_samples.png", "upper_vs_time.png", "hypers.png")
    assert sorted(stdout.split()) == sorted(str(out / "plots" / name) for name in names)
    for name in names:
        assert (out / "plots" / name).stat().st_size > 1000


def test_user_errors_exit_2_without_traceback(spec_dir, tmp_path, capsys):
    bad = tmp_path / "bad.bil"
    bad.write_text(SPEC.replace("sumsq(w)\n", "sumsqq(w)\n"))
    cases = [
        ("run", bad),                                                  # error in the spec
        ("run", tmp_path / "missing.bil"),                             # no such file
        ("run", spec_dir / "tiny.bil", "--set", "solve.outer.maxiter=3"),   # unknown key
        ("run", spec_dir / "tiny.bil", "--set", "lower.solver=fisat(mu=1)"),  # unknown solver
        ("run", spec_dir / "tiny.bil", "--set", "noequals"),
        ("run", spec_dir / "tiny.bil", "--out", bad),                  # --out names a file
        ("plot", tmp_path / "nothing-here"),
        ("plot", tmp_path),                                            # a folder without history.csv
        ("run",),                                                      # usage error
    ]
    for args in cases:
        code, out, err = bil_main(capsys, *args)
        assert code == 2, (args, out, err)
        assert "Traceback" not in err and err.strip(), args
    code, _, err = bil_main(capsys, "run", spec_dir / "tiny.bil", "--set", "solve.outer.maxiter=3")
    assert "unknown --set key `solve.outer.maxiter`" in err and "solve.outer.max_iter" in err
    assert not (tmp_path / "runs").exists()
    # and as a process: the spec's diagnostic, exit 2
    r = bil_cmd("run", bad, cwd=tmp_path)
    assert r.returncode == 2 and "sumsqq" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_examples(capsys):
    code, out, _ = bil_main(capsys, "--help")
    assert code == 0 and "examples:" in out and "bil run" in out and "bil plot" in out
    for sub in ("run", "plot"):
        code, out, _ = bil_main(capsys, sub, "--help")
        assert code == 0 and "examples:" in out and f"bil {sub} " in out, sub
    code, out, _ = bil_main(capsys, "--version")
    assert code == 0 and bil.__version__ in out


# ---------------------------------------------------------------- resume
def test_resume_after_sigkill_equals_uninterrupted_run(full_run, spec_dir):
    _, full = full_run
    out = spec_dir / "killed"
    ckpt = out / "checkpoint.npz"
    proc = subprocess.Popen([sys.executable, "-m", "bil", "run", "tiny.bil", "--out", str(out), "--quiet"],
                            cwd=spec_dir, env=_env(BIL_TEST_SLEEP_PER_ITER="1.0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state, meta = checkpoint.load(ckpt)
    assert 2 <= state["iteration"] < 6          # killed mid-run, after a checkpoint
    assert not (out / "result.json").exists()
    partial = _history_rows(out / "history.csv")    # the history up to (at least) the checkpoint is there
    assert len(partial) >= state["iteration"]
    assert _without_wall(partial) == _without_wall(_history_rows(full / "history.csv"))[:len(partial)]

    r = bil_cmd("run", "tiny.bil", "--out", out, "--resume", cwd=spec_dir)
    assert r.returncode == 0, r.stderr
    a = json.loads((full / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    for key in ("hypers", "upper", "iterations", "lower_iters", "cg_iters", "reason", "spec_sha256"):
        assert a[key] == b[key], key                       # bit-identical (exact float equality)
    rows_a, rows_b = _history_rows(full / "history.csv"), _history_rows(out / "history.csv")
    assert len(rows_b) == 6                                 # the history before the kill is restored
    assert _without_wall(rows_a) == _without_wall(rows_b)
    with np.load(full / "lower.npz") as za, np.load(out / "lower.npz") as zb:
        np.testing.assert_array_equal(za["w"], zb["w"])


def test_resume_refuses_a_changed_spec_or_settings(full_run, spec_dir, tmp_path, capsys):
    _, full = full_run
    (tmp_path / "data.npz").write_bytes((spec_dir / "data.npz").read_bytes())
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes((full / "checkpoint.npz").read_bytes())
    changed = tmp_path / "tiny.bil"
    changed.write_text(SPEC.replace("= 1.0", "= 2.0"))
    code, _, err = bil_main(capsys, "run", changed, "--out", out, "--resume")
    assert code == 2 and "changed since" in err and "Traceback" not in err
    changed.write_text(SPEC)
    code, _, err = bil_main(capsys, "run", changed, "--out", out, "--resume", "--set", "lower.tol=1e-3")
    assert code == 2 and "may change only" in err and "`lower.tol`" in err
    changed.write_text(SPEC.replace("maid(max_iter=6)", "hoag(max_iter=6)"))
    code, _, err = bil_main(capsys, "run", changed, "--out", out, "--resume")
    assert code == 2 and "changed since" in err
    (out / "checkpoint.npz").write_bytes(b"not a checkpoint")
    changed.write_text(SPEC)
    code, _, err = bil_main(capsys, "run", changed, "--out", out, "--resume")
    assert code == 2 and "cannot read checkpoint" in err and "Traceback" not in err


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_resume_extends_a_run_with_a_raised_limit_only(full_run, spec_dir, tmp_path):
    """The last checkpoint is the final state: a finished run resumed with a raised limit
    (given alone: the other --set values are the checkpoint's) goes on from there, bit for
    bit as one run with that limit."""
    _, full = full_run
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", "--set", "solve.checkpoint_every=5",
                "--set", "solve.outer.max_iter=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["iteration"] == 3 and meta["finished"] == "max_iter reached"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", "--resume", "--set", "solve.outer.max_iter=5",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    once = tmp_path / "once"
    r = bil_cmd("run", "tiny.bil", "--out", once, "--quiet", "--set", "solve.checkpoint_every=5",
                "--set", "solve.outer.max_iter=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a = json.loads((once / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    assert a["iterations"] == 5
    for key in ("hypers", "upper", "iterations", "lower_iters", "cg_iters", "reason"):
        assert a[key] == b[key], key
    assert _without_wall(_history_rows(once / "history.csv")) == _without_wall(_history_rows(out / "history.csv"))


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_resume_of_a_converged_run_changes_nothing(spec_dir, tmp_path):
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", "--set", "solve.outer.max_iter=200", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = (out / "result.json").read_text(), (out / "history.csv").read_text()
    assert json.loads(before[0])["reason"] == "gradient norm below tol"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "already finished" in r.stderr
    assert ((out / "result.json").read_text(), (out / "history.csv").read_text()) == before


# ------------------------------------------------------------ overrides
def _prog(spec_dir, **overrides):
    return bil.compile(spec_dir / "tiny.bil", overrides=overrides)


def test_set_outer_option(spec_dir):
    st = bil.compile(spec_dir / "tiny.bil", overrides={"solve.outer.max_iter": "20"}).state
    outer = st.options["solve"]["outer"]
    assert outer.name == "maid" and outer.kwargs["max_iter"] == 20
    # a bare word where a string is expected is that string
    st = bil.compile(spec_dir / "tiny.bil", overrides=[("solve.outer", "hoag"),
                                                      ("solve.outer.schedule", "cubic")]).state
    assert st.options["solve"]["outer"].name == "hoag" and st.options["solve"]["outer"].kwargs["schedule"] == "cubic"


TRAIN_SPEC = """\
data X, y = (randn(20, 3, seed=0), randn(20, seed=1))
hyper lr : positive = 0.1
lower {
    w : real[3] = 0
    train 0.5 * sumsq(X @ w - y) with sgd(lr=lr) for 10 steps
}
upper minimize 0.5 * sumsq(X @ w - y)
"""


def test_set_outer_keyword_of_a_defaulted_maid_on_train(tmp_path, capsys):
    """A train goal without `outer:` gets maid (benchmarks/defaults.py): its keywords are
    settable, and adam/gd's limit `steps` points to maid's `max_iter` (CLI and prog.run)."""
    st = bil.compile(TRAIN_SPEC, overrides={"solve.outer.max_iter": 3}).state
    assert st.options["solve"]["outer"].name == "maid" and st.options["solve"]["outer"].kwargs["max_iter"] == 3
    spec = tmp_path / "t.bil"
    spec.write_text(TRAIN_SPEC)
    code, _, err = bil_main(capsys, "run", spec, "--out", tmp_path / "o", "--set", "solve.outer.steps=5")
    assert code == 2 and "did you mean `solve.outer.max_iter`" in err and "adam" not in err
    with pytest.raises(BilError, match="steps") as e:
        bil.compile(TRAIN_SPEC).run(steps=2)
    assert "did you mean `max_iter`" in e.value.hint


def test_set_whole_method(spec_dir):
    st = bil.compile(spec_dir / "tiny.bil", overrides={"solve.outer": 'hoag(schedule="cubic")'}).state
    outer = st.options["solve"]["outer"]
    assert (outer.name, outer.kwargs["schedule"]) == ("hoag", "cubic")
    st = bil.compile(spec_dir / "tiny.bil", overrides={"lower.solver": "fista(mu=1)"}).state
    solver = st.options["lower"]["solver"]
    assert (solver.name, solver.kwargs["mu"]) == ("fista", 1)
    st = bil.compile(spec_dir / "tiny.bil", overrides={"lower.solver.memory": 3}).state
    assert st.options["lower"]["solver"].show() == "lbfgs(memory=3)"


def test_set_lower_and_solve_scalars(spec_dir):
    st = bil.compile(spec_dir / "tiny.bil", overrides={"lower.max_iter": "500", "lower.tol": 1e-6,
                                                      "solve.checkpoint_every": 3,
                                                      "solve.precision": "float32"}).state
    assert st.options["lower"]["max_iter"] == 500 and st.options["lower"]["tol"] == 1e-6
    assert st.options["solve"]["checkpoint_every"] == 3 and st.options["solve"]["precision"] == "float32"


def test_set_hyper_initial_value_in_user_coordinates(spec_dir):
    prog = bil.compile(spec_dir / "tiny.bil", overrides={"hyper.lam": "0.1"})
    assert float(prog.hypers["lam"]) == 0.1
    assert float(bil.compile(spec_dir / "tiny.bil", overrides={"hyper.lam": 2.5}).hypers["lam"]) == 2.5
    with pytest.raises(BilError, match="positive"):               # checked like the spec's own value
        bil.compile(spec_dir / "tiny.bil", overrides={"hyper.lam": "-1"})


def test_set_unknown_key_lists_valid_keys(spec_dir):
    for key in ("hyper.alpha", "solve.outer.maxiter", "lower.solver.mu", "upper.tol", "nonsense"):
        with pytest.raises(BilError) as e:
            bil.compile(spec_dir / "tiny.bil", overrides={key: "1"})
        msg = str(e.value)
        assert f"unknown --set key `{key}`" in msg, msg
        assert "valid keys:" in msg and "hyper.lam" in msg and "solve.outer.{" in msg and "lower.max_iter" in msg
        assert e.value.file == "--set"
    with pytest.raises(BilError, match="did you mean `solve.outer.max_iter`"):
        bil.compile(spec_dir / "tiny.bil", overrides={"solve.outer.maxiter": 1})
    keys = valid_keys(bil.compile(spec_dir / "tiny.bil").state.module)
    assert {"hyper.lam", "lower.solver", "lower.solver.memory", "solve.outer.max_iter",
            "solve.hypergradient.linear", "solve.checkpoint_every"} <= set(keys)


def test_set_bad_values_point_at_the_override(spec_dir):
    with pytest.raises(BilError) as e:
        bil.compile(spec_dir / "tiny.bil", overrides={"solve.outer.max_iter": "-3"})
    assert e.value.file == "--set" and "positive integer" in e.value.message
    with pytest.raises(BilError) as e:
        bil.compile(spec_dir / "tiny.bil", overrides={"solve.outer.max_iter": "3)"})
    assert e.value.file == "--set" and e.value.column == len("solve.outer.max_iter=3)")
    with pytest.raises(BilError, match="KEY=VALUE"):
        parse_assignment("solve.outer.max_iter")
    assert parse_assignment("lower.solver=fista(mu=1)") == ("lower.solver", "fista(mu=1)")


def test_set_on_the_command_line(spec_dir):
    out = spec_dir / "set"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", "--set", "solve.outer.max_iter=3",
                "--set", "hyper.lam=0.5", "--set", "solve.checkpoint_every=1", cwd=spec_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""                # --quiet
    res = json.loads((out / "result.json").read_text())
    hist = read_history_csv(out / "history.csv")
    assert res["iterations"] == 3 and len(hist) == 3
    assert hist[0]["hyper.lam"] != 1.0 and abs(np.log(hist[0]["hyper.lam"] / 0.5)) < 1.0  # started from 0.5
    state, meta = checkpoint.load(out / "checkpoint.npz")
    assert state["iteration"] == 3
    assert meta["overrides"] == [["solve.outer.max_iter", "3"], ["hyper.lam", "0.5"], ["solve.checkpoint_every", "1"]]


# ----------------------------------------------------------- image problems
def test_image_problem_montage(tmp_path):
    pytest.importorskip("skimage")
    from bil.runtime import plots

    prog = bil.compile(IMAGE_SPEC)
    panels = plots.image_panels(prog, prog.solve_lower(tol=1e-6))
    assert panels is not None
    assert list(panels["ref"]) == ["clean"] and list(panels["in"]) == ["noisy"] and list(panels["rec"]) == ["x"]
    plots.write_images(tmp_path, panels)
    path = plots.plot_montage(plots.read_images(tmp_path / plots.IMAGES_NAME), tmp_path / "montage.png")
    assert path.stat().st_size > 1000
    clean, noisy, x = panels["ref"]["clean"][0], panels["in"]["noisy"][0], panels["rec"]["x"][0]
    assert plots.psnr(clean, x) > plots.psnr(clean, noisy)  # denoising helps
    assert plots.image_panels(prog, {}) is None             # no reconstruction, no montage


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_hoag_on_a_capped_lower_solve_fails_and_resume_says_so(spec_dir, tmp_path):
    """HOAG accepted a lower solve stopped at `max_iter: 3` (exit 0, an upper value not at the
    lower solution); it now stops with the located diagnostic (exit 1), and resuming the
    failed run exits 1 too (it exited 0, which a `bil run --resume || ...` reads as success)."""
    # lbfgs: one iteration of an iterative solver is not a solution (direct, the default here, is exact)
    capped = SPEC.replace("lam * sumsq(w)\n}", "lam * sumsq(w)\n    max_iter: 1\n    solver: lbfgs\n}")
    assert capped != SPEC
    _tiny_in(spec_dir, tmp_path, capped.replace("maid(max_iter=6)", "hoag(max_iter=5)"))
    out = tmp_path / "o"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", cwd=tmp_path)
    assert r.returncode == 1 and "did not reach its tolerance within max_iter=1" in r.stderr, r.stderr
    assert "hint:" in r.stderr and "Traceback" not in r.stderr
    r = bil_cmd("run", "tiny.bil", "--out", out, "--resume", cwd=tmp_path)
    assert r.returncode == 1 and "already finished" in r.stderr


@pytest.mark.slow   # (the in-process test_float32_run_stops_at_the_arithmetic_floor runs by default)
def test_float32_tv_stops_at_the_precisions_floor(tmp_path):
    """float32 TV denoising: MAID used to tighten ε below what float32 resolves, and one
    iteration ran 120k lower iterations into the cap (exit 1).  The floors now include
    ‖H‖·eps·‖x‖ (and ‖H‖·eps·‖q‖ for CG), so it stops cleanly near the float64 optimum."""
    (tmp_path / "t.bil").write_text(IMAGE_SPEC.replace("maid(max_iter=2)", "maid(max_iter=40)")
                                    .replace("solve {", 'solve { precision: "float32"\n'))
    prog = bil.compile(tmp_path / "t.bil")
    res = prog.run()
    assert res.error is None and (res.reason.startswith("accuracy floor reached") or res.reason in ("gradient norm below tol", "max_iter reached"))
    assert res.history[-1]["lower_iters_total"] < 20000
    f64 = bil.compile(tmp_path / "t.bil", overrides={"solve.precision": '"float64"'}).run()
    assert res.upper == pytest.approx(f64.upper, rel=1e-3)


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_resume_with_a_limit_already_reached_changes_nothing(spec_dir, tmp_path):
    """A lower max_iter on --resume re-ran the loop and rewrote every output file."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    r = bil_cmd("run", "tiny.bil", "--out", out, "--quiet", "--set", "solve.outer.max_iter=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = (out / "result.json").read_text(), (out / "history.csv").read_text()
    r = bil_cmd("run", "tiny.bil", "--out", out, "--resume", "--set", "solve.outer.max_iter=3", cwd=tmp_path)
    assert r.returncode == 0 and "has already done 4 iterations (limit 3)" in r.stderr, r.stderr
    assert ((out / "result.json").read_text(), (out / "history.csv").read_text()) == before


@pytest.mark.parametrize("limit", ["4", pytest.param("200", marks=pytest.mark.slow)])   # max_iter / converged
def test_resume_writes_outputs_a_kill_before_them_left_missing(spec_dir, tmp_path, limit, capsys):
    """The last checkpoint is saved before the outputs: a kill in between left only
    checkpoint.npz, and --resume said "its results are there"."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q",
                            "--set", f"solve.outer.max_iter={limit}")
    assert code == 0, err
    before = json.loads((out / "result.json").read_text()), _history_rows(out / "history.csv")
    for name in ("result.json", "history.csv", "hypers.npz", "lower.npz"):
        (out / name).unlink()
    shutil.rmtree(out / "plots")
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "--resume")
    assert code == 0 and "written now" in err, err
    after = json.loads((out / "result.json").read_text()), _history_rows(out / "history.csv")
    for key in ("hypers", "upper", "iterations", "lower_iters", "cg_iters", "reason"):
        assert after[0][key] == before[0][key], key
    assert _without_wall(after[1]) == _without_wall(before[1])
    assert (out / "plots" / "upper_vs_cost.png").is_file() and (out / "hypers.npz").is_file()
    # and with the outputs there, it leaves them alone
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "--resume")
    assert code == 0 and "results are there" in err


@pytest.mark.parametrize("outer", ["maid(max_iter=200)", "hoag(max_iter=400, tol=1e-4)"])
def test_a_state_saved_at_the_final_record_resumes_to_nothing(spec_dir, outer):
    """A kill right after the checkpoint of the iteration where the run stopped for good: the
    state had no stop reason, and the resumed run did one more iteration (HOAG: other hypers)."""
    prog = _prog(spec_dir, **{"solve.outer": outer})
    states = []
    full = prog.run(callback=lambda rec, st: states.append(st) and None)
    assert full.reason == "gradient norm below tol"
    last = states[-1]
    assert last["stop"] == "gradient norm below tol" and "stop" not in states[0]
    again = prog.run(state=last)
    assert again.reason == full.reason and again.converged
    assert len(again.history) == len(full.history)
    assert again.hypers == full.hypers and again.upper == pytest.approx(full.upper, rel=1e-12)


def test_cli_and_outer_loops_agree_on_the_resumable_stops():
    from bil.run import _RESUMABLE_STOPS
    from bil.runtime.outer.history import RESUMABLE_STOPS

    assert _RESUMABLE_STOPS == RESUMABLE_STOPS


def test_an_unwritable_output_folder_is_refused_before_the_run(spec_dir, tmp_path, capsys, monkeypatch):
    """The folder existed but could not be written: the whole run ran, then crashed (exit 3)."""
    _tiny_in(spec_dir, tmp_path)
    real = Path.write_bytes

    def deny(self, data):
        if self.name == ".bil-write-test":
            raise PermissionError(13, "Permission denied")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", deny)
    ran = []
    monkeypatch.setattr(bil.Program, "run", lambda *a, **k: ran.append(1))
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", tmp_path / "o")
    assert code == 2 and "cannot write to" in err and "Permission denied" in err and not ran


def test_a_fresh_run_removes_the_previous_runs_outputs_first(spec_dir, tmp_path, capsys, monkeypatch):
    """A fresh run killed in a reused folder left the earlier run's result.json, history.csv
    and plots beside its own checkpoint, with nothing to say they were stale."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q")
    assert code == 0 and (out / "result.json").is_file() and list((out / "plots").glob("*.png"))

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bil.Program, "run", killed)
    code, _, _ = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--set", "hyper.lam=5")
    assert code == 130
    for name in ("result.json", "history.csv", "hypers.npz", "lower.npz"):
        assert not (out / name).exists(), name
    assert not list((out / "plots").glob("*.png"))


def test_resume_refuses_changed_data(spec_dir, tmp_path, capsys):
    """The spec's `load(...)` read other numbers of the same shape: the resume went on silently
    and the history jumped (same spec, same spec_sha256)."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--set", "solve.outer.max_iter=1")
    assert code == 0, err
    with np.load(tmp_path / "data.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["ytr"] = arrays["ytr"] + 1.0
    np.savez(tmp_path / "data.npz", **arrays)
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "--resume", "--set",
                            "solve.outer.max_iter=2")
    assert code == 2 and "changed since" in err and "data" in err, err


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_resume_extends_a_run_whose_method_was_set_on_the_command_line(spec_dir, tmp_path, capsys):
    """`--set solve.outer=adam(..., steps=2)` then `--set solve.outer.steps=3 --resume`: the limit
    was checked against the spec's own maid (no `steps`) before the checkpoint's --set applied;
    then `--set solve.outer.max_iter=4 --resume` (the same count by its other name)."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q",
                            "--set", "solve.outer=adam(lr=0.05, steps=2)")
    assert code == 0, err
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--resume",
                            "--set", "solve.outer.steps=3")
    assert code == 0, err
    res = json.loads((out / "result.json").read_text())
    assert res["iterations"] == 3 and res["reason"] == "max_iter reached"
    # `max_iter` is every outer method's count (issue 17; adam's `steps` is its alias): it
    # replaces the `steps` given before and extends the run again
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--resume",
                            "--set", "solve.outer.max_iter=4")
    assert code == 0, err
    res = json.loads((out / "result.json").read_text())
    assert res["iterations"] == 4 and res["reason"] == "max_iter reached"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes(full_run, spec_dir, tmp_path):
    """SIGTERM (a job scheduler's stop) was not handled: the iterations since the last periodic
    checkpoint were lost, without a word.  Now it ends the run like Ctrl-C."""
    _, full = full_run
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "bil", "run", "tiny.bil", "--out", str(out),
                             "--set", "solve.checkpoint_every=100"],
                            cwd=tmp_path, env=_env(BIL_TEST_SLEEP_PER_ITER="1.0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:          # the progress lines (not a terminal: one per iteration)
            if line.lstrip().startswith("iter") and line.split()[1] == "2":
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143 and "SIGTERM" in err, err
    state, _ = checkpoint.load(out / "checkpoint.npz")
    assert state["iteration"] >= 1
    r = bil_cmd("run", "tiny.bil", "--out", out, "--resume", "--set", "solve.checkpoint_every=100", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a = json.loads((full / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    for key in ("hypers", "upper", "iterations", "reason"):
        assert a[key] == b[key], key


def test_a_damaged_checkpoint_is_a_cli_error(spec_dir, tmp_path, capsys):
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--set", "solve.outer.max_iter=1")
    assert code == 0, err
    state, meta = checkpoint.load(out / "checkpoint.npz")
    del state["eps"]
    meta.pop("finished")
    checkpoint.save(out / "checkpoint.npz", state, meta)
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "--resume",
                            "--set", "solve.outer.max_iter=3")
    assert code == 2 and "cannot resume" in err and "eps" in err and "Traceback" not in err, err


def test_resume_in_another_problems_folder_names_it(spec_dir, tmp_path, capsys):
    """It said "`other.bil` changed since ..." for a folder written by a different problem."""
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--set", "solve.outer.max_iter=1")
    assert code == 0, err
    other = tmp_path / "other.bil"
    other.write_text(SPEC.replace("problem tiny_ridge", "problem other_ridge"))
    code, _, err = bil_main(capsys, "run", other, "--out", out, "--resume")
    assert code == 2 and "belongs to problem `tiny_ridge`" in err, err
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", "", "-q")
    assert code == 2 and "--out needs a folder name" in err


def test_plots_of_an_all_nan_history_and_of_many_entries(tmp_path, monkeypatch):
    """An all-NaN history (a run whose first solve failed) drew empty axes with a made-up range
    and no word; a hyper with 10 entries had no legend; short runs had fractional iteration ticks."""
    import bil.runtime.plots as plots

    figs = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.__setitem__(path.name, fig), real(fig, path))[1])
    hist = [dict(iter=i, upper=float("nan"), lower_iters_total=3 * i, cg_iters_total=i, wall_s=0.1 * i,
                 **{f"hyper.l[{j}]": float(j + i) for j in range(10)}) for i in (1, 2)]
    plots.plot_history(hist, tmp_path, "t")
    upper = figs["upper_vs_cost.png"].axes[0]
    assert any(t.get_text() == "no finite upper values recorded" for t in upper.texts)
    hyp = figs["hypers.png"].axes[0]
    assert hyp.get_legend() is not None and len(hyp.get_legend().get_texts()) == 10
    hyp.figure.canvas.draw()
    assert all(float(t).is_integer() for t in hyp.get_xticks() if 1 <= t <= 2)


@pytest.mark.slow  # suite time on 2 cores; run with pytest -m slow
def test_resume_may_change_how_often_it_checkpoints(spec_dir, tmp_path, capsys):
    _tiny_in(spec_dir, tmp_path)
    out = tmp_path / "o"
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q",
                            "--set", "solve.outer.max_iter=1", "--set", "solve.checkpoint_every=1")
    assert code == 0, err
    code, _, err = bil_main(capsys, "run", tmp_path / "tiny.bil", "--out", out, "-q", "--resume",
                            "--set", "solve.outer.max_iter=2", "--set", "solve.checkpoint_every=5")
    assert code == 0, err
    assert json.loads((out / "result.json").read_text())["iterations"] == 2
