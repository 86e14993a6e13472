"""Hostile and careless input (issue 18, front end): every reproducer a prober found ends
in a located :class:`bil.BilError` (or compiles), never an abort, a hang, or another exception.

Sizes are refused before anything is allocated, so the specs below that ask for 10^10
elements are cheap; each test runs in about a second.
"""

import subprocess
import sys
import time

import bil
import bil.cli
import numpy as np
import pytest
from bil.core.errors import BilInternalError, BilUsageError

BASE = """data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
hyper lam : positive = 1.0
lower {
    w = zeros(3)
    minimize sumsq(X @ w - y) + lam * sumsq(w)
}
upper minimize sumsq(X @ w - y)
"""


def error_of(text, **kw) -> bil.BilError:
    with pytest.raises(bil.BilError) as info:
        bil.compile(text, **kw)
    err = info.value
    assert not isinstance(err, BilInternalError), str(err)
    assert err.hint, str(err)
    return err


def located(text, line, col, message, **kw) -> bil.BilError:
    err = error_of(text, **kw)
    assert (err.line, err.column) == (line, col) and message in err.message, str(err)
    assert f"<string>:{line}:{col}: error: " in str(err) and "^" in str(err)
    return err


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("expr, col", [
    ("diag(zeros(100000))", 10),
    ("zeros(100000, 1) + zeros(1, 100000)", 10),
    ("randn(100000, 1) @ randn(1, 100000)", 10),
])
def test_a_huge_result_of_small_arguments_is_refused_before_it_is_computed(expr, col):
    t0 = time.process_time()
    located(f"data Z = {expr}\n" + BASE, 1, col, "asks for 10,000,000,000 elements, more than the 100,000,000")
    assert time.process_time() - t0 < 20  # CPU time, generous: nothing of 80 GB was touched


def test_a_result_size_is_exact_not_a_guess_from_the_arguments():
    # onehot(y, n) has len(y) * n elements, not n * n
    bil.compile("data Z = onehot([0, 1], 10^5)\n" + BASE)
    located("data Z = onehot([0, 1], 10^8)\n" + BASE, 1, 10, "`onehot` (shape (2, 100000000)) asks for 200,000,000")


def test_a_float_size_is_checked_like_an_integer():
    located("data Z = randn(1e10)\n" + BASE, 1, 16, "`randn` asks for 10,000,000,000 elements")
    located("data Z = zeros(1e5, 1e5)\n" + BASE, 1, 16, "`zeros` asks for 10,000,000,000 elements")


def test_the_limits_are_configurable():
    spec = "data Z = zeros(2000, 2000)\n" + BASE
    bil.compile(spec)  # 4e6 elements: fine by default
    located(spec, 1, 16, "more than the 1,000,000 allowed", max_elements=10**6)
    located(spec, 1, 1, "the data of this spec reaches", max_spec_elements=10**6)
    with pytest.raises(BilUsageError):
        bil.compile(spec, max_elements=0)
    # the limit reaches lower-variable domains too
    located(BASE.replace("w = zeros(3)", "w : real[2000, 2000] = 0"), 5, 9, "the domain of", max_elements=10**6)


def test_max_elements_on_the_command_line(tmp_path, capsys):
    spec = tmp_path / "big.bil"
    spec.write_text("data Z = zeros(2000, 2000)\n" + BASE)
    assert bil.cli.main(["check", str(spec)]) == 0
    assert bil.cli.main(["check", "--max-elements", "1e6", str(spec)]) == 2
    assert f"{spec}:1:16: error:" in capsys.readouterr().err
    assert bil.cli.main(["check", "--max-elements", "many", str(spec)]) == 2


# ---------------------------------------------------------------- literals
def test_huge_number_literals():
    err = located("data Z = " + "9" * 4301 + "\n" + BASE, 1, 10, "is too large")
    assert len(str(err).splitlines()[0]) < 200  # the message does not repeat 4301 digits
    err = located("data Z = 1" + "0" * 400 + ".0\n" + BASE, 1, 10, "overflows a float64")
    assert len(str(err).splitlines()[0]) < 200


@pytest.mark.parametrize("literal, message", [
    (r'"\x"', "bad escape `\\x`"),
    (r'"\N{DIGIT ONE}"', "unknown escape `\\N`"),
    (r'"\u12"', "bad escape `\\u12`"),
    (r'"\ud800"', "surrogate"),
    ('"a\x00b"', "NUL"),
    (r'"a\x00b"', "NUL"),
])
def test_bad_strings(literal, message):
    located(f"data Z = load({literal})\n" + BASE, 1, 15, message)


def test_good_escapes_still_work():
    from bil.grammar import parse

    stmt = parse('problem p\ndata Z = load("a\\\\b\\"c\\n\\x41\\u00e9")').statements[1]
    assert stmt.expr.args[0].value == 'a\\b"c\nAé'


def test_the_same_through_overrides():
    for value in ['maid(max_iter=' + "9" * 5000 + ')', '"\\x"', 'maid(max_iter=1' + "0" * 400 + '.0)']:
        err = error_of(BASE, overrides={"solve.outer": value})
        assert err.file == "--set", str(err)


def test_an_array_literal_nested_too_deeply():
    err = error_of("data Z = sum(" + "[" * 65 + "1" + "]" * 65 + ")\n" + BASE)
    assert err.line == 1 and "nested more than 32 levels" in err.message, str(err)


# ------------------------------------------------------------ iteration caps
@pytest.mark.parametrize("edit, line, message", [
    (("lam * sumsq(w)\n", "lam * sumsq(w)\n    max_iter: 10^15\n"), 7, "`max_iter` is 1,000,000,000,000,000"),
    (("upper", "solve { outer: maid(max_iter=10^15) }\nupper"), 8, "`maid(max_iter=...)` is"),
    (("upper", "solve { hypergradient: neumann(k=10^15) }\nupper"), 8, "`neumann(k=...)` is"),
])
def test_iteration_counts_are_capped_at_compile_time(edit, line, message):
    err = error_of(BASE.replace(*edit))
    assert err.line == line and message in err.message and "10^9" in err.hint, str(err)


def test_training_steps_are_capped():
    spec = BASE.replace("minimize sumsq(X @ w - y) + lam * sumsq(w)",
                        "train sumsq(X @ w - y) + lam * sumsq(w) with sgd(lr=0.01) for 10^12 steps")
    located(spec, 6, 67, "steps are more than the 1,000,000,000")
    spec = spec.replace("10^12", "10") + "solve { hypergradient: unroll(steps=10^15) }\n"
    located(spec, 9, 37, "`unroll(steps=...)` is")   # at the argument


# -------------------------------------------------------------- line breaks
@pytest.mark.parametrize("brk", ["\f", "\r", "\x1c", "\u2028", "\x0b", "\x85"])
def test_only_newline_ends_a_line(brk):
    # in a comment any character is allowed: the error is on line 4 as the parser counts, and
    # the line shown is that line
    spec = f"# a comment{brk}with a break\nproblem p\ndata X = randn(3)\ndata Y = X $ 2\n"
    err = error_of(spec)
    assert (err.line, err.column) == (4, 12) and "data Y = X $ 2" in str(err), str(err)
    # \f and \r are whitespace between tokens too
    if brk in "\f\r":
        err = error_of(f"problem p{brk}data X = randn(3)\ndata Y = X $ 2\n")
        assert (err.line, err.column) == (2, 12) and "data Y = X $ 2" in str(err), str(err)
    else:  # elsewhere they are stray characters, on their own line
        err = error_of(f"problem p{brk}\ndata X = randn(3)\n")
        assert (err.line, err.column) == (1, 10) and "unexpected character" in err.message, str(err)


def test_crlf_and_bom():
    bil.compile("\ufeff" + BASE)
    bil.compile(BASE.replace("\n", "\r\n"))
    bad = BASE.replace("sumsq(w)\n", "sumsq(v)\n")
    lf = error_of(bad)
    crlf = error_of("\ufeff" + bad.replace("\n", "\r\n"))
    assert (crlf.line, crlf.column, crlf.message) == (lf.line, lf.column, lf.message)
    assert "\r" not in str(crlf)


def test_a_spec_file_with_a_bom(tmp_path):
    p = tmp_path / "bom.bil"
    p.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    bil.compile(p)
    assert bil.cli.main(["check", str(p)]) == 0


# ------------------------------------------------------------ folding errors
def test_division_by_zero_and_log_of_zero_in_data_are_located():
    located("data Z = y / 0\n" + BASE, 1, 10, "division by zero in `/`")
    located("data Z = log(y - y)\n" + BASE, 1, 10, "`log` gives -Inf")
    located("data Z = 1e308 * 10\n" + BASE, 1, 10, "`*` gives Inf")
    # in an objective, where the data part is folded once at compile time
    located(BASE.replace("upper minimize sumsq(X @ w - y)", "upper minimize sumsq(X @ w - y / 0)"),
            8, 30, "division by zero")


# ------------------------------------------------------------------- depth
def test_long_flat_sums_compile():
    for n in (400, 1200):
        terms = " + ".join(f"{i % 7} * sumsq(w)" for i in range(n)) + " - sumsq(w)"
        prog = bil.compile(BASE.replace("lam * sumsq(w)", "lam * sumsq(w) + 1e-6 * (" + terms + ")"))
        assert prog is not None
    # and data sums
    bil.compile("data Z = " + " - ".join(["1"] * 500) + "\n" + BASE)


def test_deep_nesting_is_a_located_error():
    err = error_of("data Z = " + "-" * 300 + "1\n" + BASE)
    assert err.line == 1 and err.column > 150 and "nested more than 200 levels" in err.message, str(err)
    err = error_of("data Z = " + "abs(" * 300 + "1" + ")" * 300 + "\n" + BASE)
    assert err.line == 1 and "nested more than 200 levels" in err.message


def test_many_unused_defs_compile_in_linear_time():
    defs = "".join(f"def f{i}(x) = x + {i}\n" for i in range(3000))
    t0 = time.process_time()
    bil.compile(defs + BASE)
    assert time.process_time() - t0 < 60  # it was quadratic: 16000 defs took 30 s


# --------------------------------------------------------------------- API
def test_a_method_string_is_one_expression():
    prog = bil.compile(BASE)
    for bad in ['implicit() } solve { outer: gd }', 'implicit() implicit()', 'implicit(', 7]:
        with pytest.raises(BilUsageError) as info:
            prog.value_and_hypergrad(method=bad)
        assert info.value.hint, str(info.value)
    f, g = prog.value_and_hypergrad(method="direct")
    assert np.isfinite(f) and np.isfinite(g["lam"])


def test_bad_api_arguments_are_usage_errors():
    with pytest.raises(BilUsageError, match="`data=` must map names"):
        bil.compile(BASE, data=[1, 2])
    with pytest.raises(BilUsageError, match="keys must be names"):
        bil.compile(BASE, data={1: np.zeros(3)})
    with pytest.raises(BilUsageError):
        bil.compile(42)
    for v in (float("inf"), float("nan"), np.array([1.0, np.nan])):
        with pytest.raises(BilUsageError) as info:
            bil.compile(BASE, overrides={"hyper.lam": v})
        assert "finite" in info.value.message and info.value.hint


def test_an_unexpected_exception_is_an_internal_error_naming_the_spec(monkeypatch, tmp_path, capsys):
    from bil.compiler.passes import levels

    def boom(self, st):
        raise KeyError("surprise")

    monkeypatch.setattr(levels.Levels, "apply", boom)
    with pytest.raises(BilInternalError) as info:
        bil.compile(BASE)
    assert "internal error while compiling <string>: KeyError" in str(info.value)
    assert "report" in info.value.hint
    spec = tmp_path / "s.bil"
    spec.write_text(BASE)
    assert bil.cli.main(["check", str(spec)]) == 3
    err = capsys.readouterr().err
    assert str(spec) in err and "bug in bil" in err


def test_the_cli_survives_a_huge_result(tmp_path):
    """The native abort (exit 134) of the prober, through the real CLI in a subprocess."""
    spec = tmp_path / "huge.bil"
    spec.write_text("data Z = diag(zeros(100000))\n" + BASE)
    r = subprocess.run([sys.executable, "-m", "bil", "check", str(spec)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"{spec}:1:10: error: the result of `diag`" in r.stderr
