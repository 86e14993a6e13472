"""`bil run`'s lifecycle driven in-process through its library API (:mod:`bil.run`), no CLI.

The default run keeps the cheap refusal test; the whole run and resume is marked slow
(tests/test_cli_run.py runs the same lifecycle through the command by default)."""

import bil  # noqa: F401  (float64)

import json

import numpy as np
import pytest

from bil.run import RunError, RunRequest, run_spec
from test_cli_run import SPEC  # the tiny ridge problem of the CLI tests (maid, 6 iterations)


@pytest.fixture
def spec(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.standard_normal(40)
    np.savez(tmp_path / "data.npz", Xtr=X[:20], ytr=y[:20], Xval=X[20:], yval=y[20:])
    (tmp_path / "tiny.bil").write_text(SPEC)
    return tmp_path / "tiny.bil"


@pytest.mark.slow  # a whole run (compiles MAID's oracles, draws the plots); the CLI tests cover it by default
def test_run_then_resume_with_nothing_left(spec, tmp_path, capsys):
    out = tmp_path / "out"
    two = (("solve.outer.max_iter", "2"),)
    assert run_spec(RunRequest(str(spec), two, out=str(out), quiet=True)) is True
    res = json.loads((out / "result.json").read_text())
    assert res["iterations"] == 2 and (out / "history.csv").is_file() and (out / "checkpoint.npz").is_file()
    capsys.readouterr()
    # the limit is reached: a resume writes nothing new and says so
    assert run_spec(RunRequest(str(spec), two, out=str(out), resume=True, quiet=True)) is True
    assert "has already done 2 iterations (limit 2)" in capsys.readouterr().err


def test_a_folder_bil_did_not_write_is_refused_before_running(spec, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not bil's")
    with pytest.raises(RunError, match="not empty"):
        run_spec(RunRequest(str(spec), out=str(foreign)))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
