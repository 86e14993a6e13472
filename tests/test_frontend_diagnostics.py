"""Several diagnostics per check: every independent error of a spec (at most
MAX_ERRORS), none that only follows from another, each printed once."""

import traceback

import bil
import bil.cli
import jax
import pytest
from bil.core.errors import MAX_ERRORS

SEVERAL = """\
data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
def f(a, b) = a * b
hyper lam : positive = sqrt(lamda0)
hyper lam : positive = 2.0
hyper mu = 1.0
lower {
    w = zeros(3, sed=0)
    minimize sumsq(X @ w - y) + lam * sumsq(w) + f(mu) + norm2(w)
}
upper minimize sumsq(X @ w - y) + mean(w, 0, 1, 2)
"""


def test_independent_errors_are_reported_together(tmp_path):
    path = tmp_path / "several.bil"
    path.write_text(SEVERAL)
    with pytest.raises(bil.BilError) as info:
        bil.compile(path)
    err = info.value
    found = [(e.line, e.column, e.message) for e in err.errors]
    assert found == [  # in source order
        (4, 29, "unknown name `lamda0`"),
        (5, 7, "`lam` is already defined"),
        (8, 18, "`zeros` has no parameter `sed`"),
        (9, 50, "`f` is missing argument(s) `b`"),
        (9, 58, "unknown function `norm2`"),
        (11, 49, "`mean` takes 3 positional arguments but 4 were given"),
    ]
    # the first error is the exception's own; str() renders each, then the count
    assert (err.line, err.column, err.hint) == (4, 29, "did you mean `lam`?")
    text = str(err)
    assert text.count(f"{path}:") == 7 and text.count(" error: ") == 6 and text.count("\nhint: ") == 6
    assert text.endswith(f"{path}: 6 errors")


def test_cli_prints_each_diagnostic_and_the_count(tmp_path, capsys):
    path = tmp_path / "several.bil"
    path.write_text(SEVERAL)
    assert bil.cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    blocks = err.split(f"{path}:")[1:]
    assert len(blocks) == 7  # six diagnostics, then the count
    for block in blocks[:-1]:
        lines = block.splitlines()
        assert " error: " in lines[0] and " | " in lines[1] and "^" in lines[2] and lines[3].startswith("hint: ")
    assert blocks[-1].strip() == "6 errors"


def test_shape_errors_do_not_cascade(tmp_path):
    """A hyper or lower variable whose declaration fails is not checked again through the
    statements that use it; independent ones are."""
    with pytest.raises(bil.BilError) as info:
        bil.compile("""
data X = randn(10, 3, seed=0)
data y = randn(10, seed=1)
hyper a : real[2] = zeros(3)
hyper lam : positive = 1.0
hyper mu : positive = -1.0
lower {
    w = zeros(4)
    v = zeros(3) + a
    minimize sumsq(X @ w - y) + lam * sumsq(w)
}
upper minimize sumsq(y - X) + sumsq(v) + mu
""")
    found = [(e.line, e.message.split(":")[0]) for e in info.value.errors]
    # `v` (uses `a`) and the upper objective (uses `v` and `mu`) are not reported
    assert found == [(4, "initial value of shape (3,) does not fit the domain shape (2,)"),
                     (6, "`mu` is `positive` but its initial value is not > 0"),
                     (10, "shape mismatch in `@`")]


def test_an_error_inside_a_def_is_reported_once():
    with pytest.raises(bil.BilError) as info:
        bil.compile("""
def loss(r) = sumsq(r) * scale
hyper lam : positive = 1.0
lower {
    w = zeros(3)
    minimize loss(w - 1) + lam * loss(w)
}
upper minimize loss(w)
""")
    assert [(e.line, e.message) for e in info.value.errors] == [(2, "unknown name `scale`")]


def test_an_unknown_name_is_reported_at_its_first_use_only():
    with pytest.raises(bil.BilError) as info:
        bil.compile("""
hyper lam : positive = 1.0
lower {
    w = zeros(ncols(X))
    minimize sumsq(X @ w - y) + lam * sumsq(w)
}
upper minimize sumsq(X @ w - y)
""")
    assert [(e.line, e.column, e.message) for e in info.value.errors] == [
        (4, 21, "unknown name `X`"), (5, 28, "unknown name `y`")]


def test_errors_stop_at_the_cap():
    terms = " + ".join(f"u{i}" for i in range(MAX_ERRORS + 5))
    with pytest.raises(bil.BilError) as info:
        bil.compile(f"hyper lam = 1.0\nlower {{\n    w = 0\n    minimize (w - lam)^2 + {terms}\n}}\n"
                    "upper minimize w^2\n")
    err = info.value
    assert [e.message for e in err.errors] == [f"unknown name `u{i}`" for i in range(MAX_ERRORS)]
    assert str(err).endswith(f"<string>: {MAX_ERRORS} errors (stopped at this many; fix these first)")


def test_did_you_mean_prefers_the_specs_own_names():
    """`sqr` is nearer to the stdlib's `sqrt` than to the spec's `sq` (difflib ratios 0.86 and
    0.8; both were candidates together, and `sqrt` won); a name of the spec is suggested first."""
    src = ("def sq(r) = sum(r * r)\nhyper lam = 1.0\nlower {\n    w = 0\n    minimize sqr(w - lam)\n}\n"
           "upper minimize sq(w)\n")
    with pytest.raises(bil.BilError, match="unknown function `sqr`") as info:
        bil.compile(src)
    assert info.value.hint == "did you mean `sq`?"
    with pytest.raises(bil.BilError) as info:
        bil.compile(src.replace("def sq", "def loss").replace("sq(w)", "loss(w)"))
    assert info.value.hint == "did you mean `sqrt`?"


@pytest.mark.parametrize("mode", ["remove_frames", "quiet_remove_frames"])
def test_a_shape_error_is_printed_once(mode):
    """A shape error found under jax.eval_shape reached the user through JAX, which (with
    JAX_TRACEBACK_FILTERING=remove_frames, as under IPython) chained a copy of it: the
    traceback showed the diagnostic twice."""
    before = jax.config.jax_traceback_filtering
    jax.config.update("jax_traceback_filtering", mode)
    try:
        with pytest.raises(bil.BilError) as info:
            bil.compile("""
data X = randn(3, 10, 4, seed=0) per sample
data y = randn(3, 10, seed=1) per sample
hyper lam : positive = 1.0
lower {
    w = zeros(rows(X))
    minimize sumsq(X @ w - y) + lam * sumsq(w)
}
upper minimize sumsq(w)
""")
    finally:
        jax.config.update("jax_traceback_filtering", before)
    err = info.value
    shown = "".join(traceback.format_exception(err))
    assert shown.count("error: shape mismatch in `@`") == 1, shown
    assert err.__cause__ is None and not getattr(err, "__notes__", None)
