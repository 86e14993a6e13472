"""Diagnoses that name the right place (issue 18): a compiler pass that runs out of stack,
Inf/NaN located at the objective (and sub-expression) that produced it, and a warning for a
lower problem with negative curvature at its solution.

Each spec is small: every test runs in a couple of seconds.
"""

import bil
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
