"""Front end: golden IR dumps (tests/golden/*.bil -> *.ir) and the Python API.

``pytest --update-golden`` rewrites the ``.ir`` files from the current output;
review the diff before committing it.
"""

from pathlib import Path

import bil  # noqa: F401
import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).parent.parent / "examples"
SPECS = sorted(GOLDEN.glob("*.bil"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_golden_ir(path: Path, update_golden: bool):
    got = bil.compile(path).ir()
    expected_file = path.with_suffix(".ir")
    if update_golden:
        expected_file.write_text(got)
        return
    assert expected_file.exists(), f"no golden file {expected_file.name}; run pytest --update-golden"
    assert got == expected_file.read_text(), f"IR of {path.name} changed; if intended, run pytest --update-golden"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.bil")), ids=lambda p: p.stem)
def test_every_example_has_a_golden_copy(example: Path):
    copy = GOLDEN / example.name
    assert copy.exists(), f"copy {example} to {copy} and run pytest --update-golden"
    assert copy.read_text() == example.read_text(), f"{copy} is out of date with {example}"


def test_ir_is_deterministic():
    path = GOLDEN / "defs_bounds.bil"
    assert bil.compile(path).ir() == bil.compile(path).ir()


def test_compile_from_source_text_and_path_agree():
    path = GOLDEN / "hoisted.bil"
    from_text = bil.compile(path.read_text()).ir()
    from_path = bil.compile(path).ir()
    # the only difference: a spec given as text has no file stem to name it by
    assert from_text.replace("problem hoisted", "") == from_path.replace("problem hoisted", "")


def test_problem_defaults_to_file_stem():
    assert bil.compile(GOLDEN / "load_csv.bil").name == "load_csv"


def test_data_override_replaces_a_data_statement():
    path = GOLDEN / "hoisted.bil"
    X = np.ones((40, 6))
    program = bil.compile(path, data={"X": X})
    assert np.array_equal(program.state.data["X"], X)
    assert "const c0 : float64[6, 6] = transpose(X) @ X" in program.ir()


def test_hoisted_constants_are_computed_once():
    st = bil.compile(GOLDEN / "hoisted.bil").state
    X, y = st.data["X"], st.data["y"]
    labels = {c.label: c for c in st.consts.values()}
    np.testing.assert_allclose(labels["transpose(X) @ X"].value, X.T @ X)
    np.testing.assert_allclose(labels["transpose(X) @ y"].value, X.T @ y)


def test_per_sample_constant_has_a_sample_axis():
    st = bil.compile(GOLDEN / "per_sample.bil").state
    assert st.n_samples == 5
    (c,) = st.consts.values()
    assert c.per_sample and np.shape(c.value) == (5,)
    np.testing.assert_allclose(c.value, st.data["Y"].mean(axis=1) * 8)


def test_structure_detects_quadratic_lower_problems():
    assert bil.compile(GOLDEN / "ridge.bil").state.structure["lower_quadratic"] is True
    assert bil.compile(GOLDEN / "tv_denoise.bil").state.structure["lower_quadratic"] is False


def test_levels():
    st = bil.compile(GOLDEN / "ridge.bil").state
    assert st.levels["Xtr"] == "const" and st.levels["lam"] == "theta" and st.levels["w"] == "lower"


def test_error_attributes():
    with pytest.raises(bil.BilError) as info:
        bil.compile("hyper a = 1\nlower { w = 0 minimize (w - a)^2 }\nupper minimize sumq(w)\n")
    err = info.value
    assert (err.file, err.line, err.column) == ("<string>", 3, 16)
    assert err.message == "unknown function `sumq`"
    assert err.hint == "did you mean `sumsq`?"
    assert str(err).splitlines()[0] == "<string>:3:16: error: unknown function `sumq`"


def test_keywords_are_allowed_as_keyword_argument_names():
    bil.compile(GOLDEN / "learned_lr.bil")  # `adam(lr=0.05, steps=100)`
    with pytest.raises(bil.BilError, match="reserved keyword"):
        bil.compile("hyper steps = 1\nlower { w = 0 minimize (w - 1)^2 }\nupper minimize w^2\n")


@pytest.mark.parametrize("text", [
    "hyper a = " + "-" * 5000 + "1\n",
    "hyper a = " + "abs(" * 5000 + "1" + ")" * 5000 + "\n",
], ids=["unary", "calls"])
def test_deep_nesting_is_a_diagnostic(text):
    # (a long flat sum is no longer deep: see tests/test_hostile.py)
    with pytest.raises(bil.BilError, match="nested more than 200 levels deep") as info:
        bil.compile(text + "lower { w = 0 minimize (w - a)^2 }\nupper minimize w^2\n")
    assert info.value.line == 1 and info.value.column > 100


def test_deep_parentheses_are_fine():
    text = "hyper a = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
    bil.compile(text + "lower { w = 0 minimize (w - a)^2 }\nupper minimize w^2\n")


def test_data_given_from_python_only_can_be_used_by_the_spec():
    src = """
hyper lam : positive = 1.0
lower {
    w = zeros(3)
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * sumsq(X @ w - y)
"""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), rng.normal(size=30)
    program = bil.compile(src, data={"X": X, "y": y})
    assert np.array_equal(program.state.data["X"], X)
    assert "X" in program.graph_text() and program.ir()
    w = program.solve_lower({"lam": 2.0})["w"]
    np.testing.assert_allclose(w, np.linalg.solve(X.T @ X + 2.0 * np.eye(3), X.T @ y), rtol=1e-6)
    with pytest.raises(bil.BilError, match="not a data name of the spec"):
        bil.compile(src, data={"X": X, "y": y, "lam": 1.0})
    # a misspelt name is not silently ignored (the run would use other data)
    with pytest.raises(bil.BilUsageError, match="`Xx` given in `data=` is not used by the spec") as info:
        bil.compile(src, data={"Xx": X, "X": X, "y": y})
    assert "did you mean `X`" in info.value.hint


_DEF_SPECS = {
    "inline": "",
    "def_no_params": "def r2() = 0.5 * sumsq(X @ w - y)\n",
    "def_with_params": "def resid(A) = A @ w - y\n",
}
_GOALS = {
    "inline": "0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)",
    "def_no_params": "r2() + 0.5 * lam * sumsq(w)",
    "def_with_params": "0.5 * sumsq(resid(X)) + 0.5 * lam * sumsq(w)",
}


def test_defs_may_use_lower_variables_in_the_lower_objective():
    """A def that names a lower variable (not as a parameter), called in the goal, made the
    dependency graph cyclic (def -> lower -> variable -> def): an internal error."""
    out = {}
    for k in _DEF_SPECS:
        src = ("data X, y = (randn(30, 4, seed=0), randn(30, seed=1))\nhyper lam : positive = 1.0\n"
               + _DEF_SPECS[k] + "lower {\n    w : real[4] = 0\n    minimize " + _GOALS[k]
               + "\n}\nupper minimize 0.5 * sumsq(X @ w - y + 0.1)\n")
        prog = bil.compile(src)
        assert prog.state.structure["hypers_in_lower"] == ["lam"]
        out[k] = prog.value_and_hypergrad({"lam": 2.0}, tol=1e-12)
    for k in ("def_no_params", "def_with_params"):
        assert out[k][0] == pytest.approx(out["inline"][0], rel=1e-12)
        assert float(out[k][1]["lam"]) == pytest.approx(float(out["inline"][1]["lam"]), rel=1e-9)


def test_nclasses_of_data_inside_objectives():
    """`nclasses(y)` is a compile-time constant of data wherever it appears (it used to work
    only in domains, data and hyper statements)."""
    src = """
data X, y = dataset("digits", split=0.5, seed=0, standardize=true)
hyper t : real = -1
lower {
    W : real[ncols(Xtr), nclasses(ytr)] = 0
    minimize cross_entropy(Xtr @ W, ytr) + exp(t) * sumsq(W) + 0 * sum(onehot(ytr, nclasses(ytr)))
}
upper minimize cross_entropy(Xval @ W, yval) + 0 * nclasses(yval)
""".replace("data X, y", "data Xtr, ytr, Xval, yval")
    prog = bil.compile(src)
    f, g = prog.value_and_hypergrad(tol=1e-8)
    assert np.isfinite(f) and np.isfinite(float(g["t"]))


def test_lower_variable_sizes_are_per_sample(tmp_path):
    """docs/LANGUAGE.md, Batching: the lower problem, its variables' domains and initial values
    included, is written for one sample.  ncols(X) of a per-sample X[3, 20, 4] is 4 (it was
    the stacked array's 20, a shape error in a correct spec)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3, 20, 4)), rng.normal(size=(3, 20))
    np.savez(tmp_path / "ps.npz", X=X, y=y)
    (tmp_path / "ps.bil").write_text(
        'data X, y = (load("ps.npz", "X"), load("ps.npz", "y")) per sample\n'
        "hyper lam : positive = 1.0\n"
        "lower {\n"
        "    w : real[ncols(X)] = zeros(rows(X)) @ X\n"
        "    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)\n"
        "}\n"
        "upper minimize 0.5 * sumsq(X @ w - y) / rows(X)\n")
    prog = bil.compile(tmp_path / "ps.bil")
    assert prog.state.lower_vars["w"].shape == (4,)
    f, _ = prog.value_and_hypergrad({"lam": 1.0})
    ref = np.mean([0.5 * np.sum((X[i] @ np.linalg.solve(X[i].T @ X[i] + np.eye(4), X[i].T @ y[i]) - y[i]) ** 2) / 20
                   for i in range(3)])
    assert f == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow
def test_a_long_sum_does_not_exhaust_the_python_stack():
    """A 300-term sum, evaluated under jax.jacfwd (the direct linear solve builds the Hessian
    that way), raised RecursionError (exit 3): the evaluator recursed once per `+`."""
    src = (Path(__file__).resolve().parent.parent / "examples" / "ridge.bil").read_text()
    long = bil.compile(src.replace("+ 0.5 * lam * sumsq(w)", "+ 0.5 * lam * sumsq(w)" + " + 0.001 * w[0]^2" * 300))
    short = bil.compile(src.replace("+ 0.5 * lam * sumsq(w)", "+ 0.5 * lam * sumsq(w) + 0.3 * w[0]^2"))
    f_cg, g_cg = short.value_and_hypergrad({"lam": 2.0})
    f_d, g_d = long.value_and_hypergrad({"lam": 2.0}, method="direct")
    assert f_d == pytest.approx(f_cg, rel=1e-10)
    assert float(g_d["lam"]) == pytest.approx(float(g_cg["lam"]), rel=1e-7)


def test_data_may_use_names_bound_later():
    """Statements may come in any order; data used to be evaluated in source order, so a
    `data` naming a later one was an "unknown name" error with no hint."""
    prog = bil.compile("""
        data Y = X * 2
        data X, y = (randn(10, 3, seed=0), randn(10, seed=1))
        hyper a = 1.0
        lower {
            w : real[3] = 0
            minimize sumsq(Y @ w - y) + a * sumsq(w)
        }
        upper minimize sumsq(X @ w - y)
    """)
    np.testing.assert_array_equal(prog.state.data["Y"],
                                  2 * prog.state.data["X"])


@pytest.mark.parametrize("literal, value", [("1_000", 1000), ("0x10", 16), ("0o17", 15), ("0b101", 5),
                                            ("1_000.5", 1000.5), ("2.5e-3", 0.0025), (".5", 0.5), ("3.", 3.0)])
def test_numbers_as_in_python(literal, value):
    prog = bil.compile(f"hyper a = {literal}\nlower {{\n    x = 0\n    minimize (x - a)^2\n}}\nupper minimize x^2\n")
    assert float(prog.hypers["a"]) == value


def test_shape_entries_and_integer_sigmoid():
    prog = bil.compile("""
        data X = randn(10, 3, seed=0)
        data r = sigmoid(0)
        hyper a = 1.0
        lower {
            w : real[shape(X)[1]] = 0
            minimize sumsq(X @ w - 1) + a * sumsq(w) + r * sum(w)
        }
        upper minimize sumsq(w)
    """)
    assert prog.state.lower_vars["w"].shape == (3,) and float(prog.state.data["r"]) == 0.5


def test_per_sample_and_in_are_not_reserved():
    """docs/LANGUAGE.md reserves only the statement and block keywords: `sample`, `per` and `in`
    may be names (they were reserved keywords)."""
    prog = bil.compile("""
        data sample = randn(4, 3, seed=0) per sample
        data y = randn(4, 3, seed=1) per sample
        hyper in : positive in [0, 2] = 0.5
        def per(a) = 2 * a
        lower {
            w : real[3] in [-5, 5] = 0
            minimize sumsq(w - sample) + in * sumsq(per(w))
        }
        upper minimize sumsq(w - y)
    """)
    assert prog.state.per_sample == {"sample", "y"} and prog.state.lower_vars["w"].bounds == (-5.0, 5.0)
    assert prog.state.hypers["in"].bounds == (0.0, 2.0)


def test_per_sample_labels_and_steps_are_one_samples(tmp_path):
    """Label checks and `for N steps` see one sample, like the lower problem: `Y[:, 0]` of a
    per-sample Y[2, 5, 2] is that sample's column (it was the stacked array's first rows, a
    false "labels range over 0..7" error), and rows(X) of X[3, 20, 4] is 20 steps, not 3."""
    rng = np.random.default_rng(0)
    Y = np.stack([np.stack([rng.integers(0, 3, 5), np.full(5, 7)], axis=1) for _ in range(2)])
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(2, 5, 4)), Y=Y)
    prog = bil.compile("""
        data X = load("d.npz", "X") per sample
        data Y = load("d.npz", "Y") per sample
        hyper lam : positive = 1.0
        lower {
            W : real[4, 3] = 0
            minimize cross_entropy(X @ W, Y[:, 0]) + lam * sumsq(W)
        }
        upper minimize cross_entropy(X @ W, Y[:, 0])
    """, base_dir=tmp_path)
    assert prog.state.lower_vars["W"].shape == (4, 3)
    train = bil.compile("""
        data X = randn(3, 20, 4, seed=0) per sample
        data y = randn(3, 20, seed=1) per sample
        hyper lr : positive = 0.01
        lower {
            w : real[ncols(X)] = 0
            train 0.5 * sumsq(X @ w - y) with sgd(lr=lr) for rows(X) steps
        }
        upper minimize 0.5 * sumsq(X @ w - y)
    """)
    assert train.state.train_steps == 20


def test_non_finite_data_from_python_is_a_usage_error():
    src = """hyper lam : positive = 1.0
lower {
    w = zeros(3)
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)
}
upper minimize 0.5 * sumsq(X @ w - y)
"""
    X = np.ones((5, 3))
    X[3, 1] = np.nan
    with pytest.raises(bil.BilUsageError, match=r"data `X` given in `data=` contains NaN at index \(3, 1\)"):
        bil.compile(src, data={"X": X, "y": np.ones(5)})


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "x"])
def test_api_tolerances_must_be_positive(bad):
    """solve_lower(tol=0) or tol=-1 ran 10000 iterations into max_iter and then advised raising it."""
    prog = bil.compile(Path(__file__).resolve().parent.parent / "examples" / "ridge.bil")
    with pytest.raises(bil.BilUsageError, match="tol must be a positive number"):
        prog.solve_lower({"lam": 1.0}, tol=bad)
    with pytest.raises(bil.BilUsageError, match="tol must be a positive number"):
        prog.value_and_hypergrad({"lam": 1.0}, tol=bad)


def test_a_data_scalar_is_a_size_in_initial_values_and_objectives():
    """`data H = 4` sizes `zeros(H)` in a lower variable's initial value and `ones(H)` in the
    objective, as it sizes `real[H]` (it used to be refused as "not a constant")."""
    prog = bil.compile("""
        data X, y = (randn(30, 4, seed=0), randn(30, seed=1))
        data H = 4
        hyper lam : positive = 1.0
        lower {
            w : real[H] = zeros(H) + 0.1 * randn(H, seed=3)
            minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w - 0.1 * ones(H))
        }
        upper minimize sumsq(w)
    """)
    X = np.asarray(prog.state.data["X"])
    y = np.asarray(prog.state.data["y"])
    w = prog.solve_lower({"lam": 2.0})["w"]
    np.testing.assert_allclose(w, np.linalg.solve(X.T @ X + 2 * np.eye(4), X.T @ y + 0.2 * np.ones(4)), rtol=1e-8)


def test_program_data_gives_the_specs_data():
    """`prog.data`: every data name with its values (copies), held-out names included."""
    prog = bil.compile(EXAMPLES / "ridge.bil")
    d = prog.data
    assert {"Xtr", "ytr", "Xval", "yval", "Xte", "yte"} <= set(d)
    assert d["Xte"].shape[1] == d["Xtr"].shape[1] == 10
    d["Xtr"][0, 0] = 1e9                                      # a copy: the program is untouched
    assert prog.data["Xtr"][0, 0] != 1e9
