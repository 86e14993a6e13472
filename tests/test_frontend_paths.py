"""Relative paths are taken from the spec's folder in every statement (data, hyper
and lower initial values, options, --set values), whatever the working directory;
for a spec given as text, from the current folder or ``base_dir=``."""

import re
from pathlib import Path

import bil
import bil.cli
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
OK_SPECS = sorted((ROOT / "examples").glob("*.bil")) + sorted((ROOT / "tests" / "golden").glob("*.bil"))
EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+):\s*(error|warning):\s*(.+?)\s*$")
# the bad specs that read files: the rest do not depend on the working directory
FILE_ERRORS = [p for p in sorted((ROOT / "tests" / "errors").glob("*.bil")) if "load(" in p.read_text()]

SPEC = """
data X = load("d.npz", "X")
data y = load("d.npz", "y")
hyper w0 = load("d.npz", key="w0")
hyper lam : positive = load("lam.npy")
lower {
    w = load("d.npz", key="w0") * 0
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w - w0)
    tol: load("tol.npy")
}
upper minimize 0.5 * sumsq(X @ w - y)
"""


@pytest.fixture
def spec(tmp_path):
    """A spec in its own folder, loading files in each kind of statement; the cwd elsewhere."""
    folder = tmp_path / "spec"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", X=rng.normal(size=(8, 3)), y=rng.normal(size=8), w0=np.arange(3.0))
    np.savez(folder / "other.npz", w0=np.full(3, 7.0))
    np.save(folder / "lam.npy", np.array(0.25))
    np.save(folder / "tol.npy", np.array(1e-9))
    (folder / "s.bil").write_text(SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return folder / "s.bil", elsewhere


def test_every_statement_reads_from_the_specs_folder(spec, monkeypatch, capsys):
    path, elsewhere = spec
    monkeypatch.chdir(elsewhere)
    prog = bil.compile(path)
    np.testing.assert_array_equal(prog.hypers["w0"], [0.0, 1.0, 2.0])
    assert float(prog.hypers["lam"]) == 0.25 and prog.state.options["lower"]["tol"] == pytest.approx(1e-9)
    # --set values too, also with a relative spec path
    rel = Path("..") / "spec" / "s.bil"
    prog = bil.compile(rel, overrides={"hyper.w0": 'load("other.npz", key="w0")'})
    np.testing.assert_array_equal(prog.hypers["w0"], [7.0, 7.0, 7.0])
    assert bil.cli.main(["check", str(path), str(rel)]) == 0
    assert capsys.readouterr().out.count(": ok") == 2


def test_a_spec_given_as_text_reads_from_the_cwd_or_base_dir(spec, monkeypatch):
    path, elsewhere = spec
    monkeypatch.chdir(elsewhere)
    with pytest.raises(bil.BilError, match="no such file") as info:
        bil.compile(SPEC)
    assert str(elsewhere) in info.value.hint and "given as text" in info.value.hint
    assert float(bil.compile(SPEC, base_dir=path.parent).hypers["lam"]) == 0.25
    assert float(bil.compile(SPEC, base_dir=Path("..") / "spec").hypers["lam"]) == 0.25
    monkeypatch.chdir(path.parent)
    assert float(bil.compile(SPEC).hypers["lam"]) == 0.25


def test_a_missing_file_names_the_specs_folder(spec, monkeypatch):
    path, elsewhere = spec
    (path.parent / "lam.npy").unlink()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(bil.BilError) as info:
        bil.compile(path)
    err = info.value
    assert (err.line, err.column) == (5, 29)   # at the path
    assert f"no such file '{path.parent / 'lam.npy'}'" in err.message
    assert err.hint == f"relative paths are resolved against the spec's folder ({path.parent})"


@pytest.mark.parametrize("path", OK_SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_examples_and_golden_specs_check_from_another_folder(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bil.cli.main(["check", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("path", FILE_ERRORS, ids=lambda p: p.stem)
def test_bad_specs_that_read_files_fail_the_same_from_another_folder(path, tmp_path, monkeypatch):
    line, col, _, message = EXPECT.match(path.read_text().splitlines()[0]).groups()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(bil.BilError) as info:
        bil.compile(path)
    assert (info.value.line, info.value.column) == (int(line), int(col)) and message in info.value.message
