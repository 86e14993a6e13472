"""Method option classes (bil/stdlib/methods.py): validation by construction, located errors,
the outer iteration count `max_iter` with `steps` as gd/adam's alias, and the generated tables."""

import dataclasses
from pathlib import Path

import bil
import pytest

from bil.compiler.overrides import valid_keys
from bil.runtime.outer import outer_options
from bil.stdlib.methods import (AdamOuter, GdOuter, Hoag, Implicit, Maid, OptionError, Unroll, method_class,
                                option_table)
from bil.stdlib.registry import names

ROOT = Path(__file__).parent.parent

SPEC = """\
data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
hyper lam : positive = 1.0
lower {{
    w = zeros(3)
    minimize sumsq(X @ w - y) + lam * sumsq(w)
}}
upper minimize sumsq(X @ w - y)
solve {{ outer: {outer} }}
"""


@pytest.mark.parametrize("kind", ["solver", "optimizer", "hypergradient", "outer"])
def test_every_method_is_one_frozen_class_with_defaults(kind):
    for name in names(kind):
        cls = method_class(name, kind)
        obj = cls(lr=0.1) if kind == "optimizer" else cls()   # optimizers need their learning rate
        assert obj.name == name and obj.kind == kind and obj.span is None
        assert dict(obj.kwargs) == {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        for f in dataclasses.fields(obj)[:1]:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(obj, f.name, 1)


def test_construction_validates_and_names_the_argument():
    with pytest.raises(OptionError, match=r"`maid\(eps0=...\)` must be > 0, got -1") as e:
        Maid(eps0=-1)
    assert e.value.arg == "eps0" and isinstance(e.value, ValueError)
    with pytest.raises(OptionError, match=r"`implicit\(linear=...\)` must be \"cg\" or \"direct\"") as e:
        Implicit(linear="lu")
    assert e.value.arg == "linear"
    with pytest.raises(OptionError, match="positive integer") as e:
        Unroll(truncate=0)
    assert e.value.arg == "truncate"
    with pytest.raises(OptionError, match="pair") as e:
        Hoag(clip=(1, 0))
    assert e.value.arg == "clip" and e.value.hint
    assert Maid(eps0=0.5).replace(max_iter=7).kwargs["max_iter"] == 7


@pytest.mark.parametrize("outer,arg,message", [
    ("maid(eps0=-1)", "-1", "`maid(eps0=...)` must be > 0, got -1"),
    ("hoag(max_iter=0)", "0", "`hoag(max_iter=...)` must be a positive integer, got 0"),
    ("adam(lr=0.1, steps=-2)", "-2", "`adam(steps=...)` must be a positive integer, got -2"),
])
def test_compile_error_is_located_at_the_argument(outer, arg, message):
    src = SPEC.format(outer=outer)
    with pytest.raises(bil.BilError) as e:
        bil.compile(src)
    line = src.splitlines()[e.value.line - 1]
    assert e.value.line == 9 and line.index(outer) + outer.index(arg) + 1 == e.value.column, str(e.value)
    assert message in e.value.message and e.value.hint


def test_steps_is_an_alias_of_max_iter_for_gd_and_adam():
    for cls in (GdOuter, AdamOuter):
        m = cls(steps=7)
        assert m.max_iter == 7 and m.kwargs["steps"] == 7 and "steps" not in m.show()
        assert cls(max_iter=7).kwargs["steps"] == 7
        assert cls(**m.kwargs) == m                      # its own keywords construct it again
        assert m.replace(max_iter=3).steps == 3          # replacing one replaces its alias
        with pytest.raises(OptionError, match="alias") as e:
            cls(max_iter=5, steps=6)
        assert e.value.arg == "steps"
    assert outer_options("gd", {"steps": 4})["max_iter"] == 4
    outer = bil.compile(SPEC.format(outer="adam(lr=0.1, steps=5)")).state.options["solve"]["outer"]
    assert (outer.max_iter, outer.kwargs["steps"]) == (5, 5)


def test_both_names_of_the_count_is_a_located_error():
    src = SPEC.format(outer="gd(max_iter=5, steps=5)")
    with pytest.raises(bil.BilError, match="both `max_iter` and its alias `steps`") as e:
        bil.compile(src)
    assert (e.value.line, e.value.column) == (9, src.splitlines()[8].index("steps") + 1) and e.value.hint


def test_set_max_iter_on_a_spec_that_counts_steps():
    """examples/learned_lr.bil writes `adam(lr=0.05, steps=100)`: `--set solve.outer.max_iter=2` replaces it."""
    spec = ROOT / "examples" / "learned_lr.bil"
    st = bil.compile(spec, overrides={"solve.outer.max_iter": 2}).state
    outer = st.options["solve"]["outer"]
    assert (outer.name, outer.max_iter, outer.kwargs["steps"]) == ("adam", 2, 2)
    assert bil.compile(spec, overrides={"solve.outer.steps": 3}).state.options["solve"]["outer"].max_iter == 3
    assert {"solve.outer.max_iter", "solve.outer.steps"} <= set(valid_keys(st.module))


def test_run_override_is_validated_like_the_spec():
    prog = bil.compile(SPEC.format(outer="gd(lr=0.1, steps=5)"))
    with pytest.raises(bil.BilError, match="positive integer") as e:
        prog.run(max_iter=0)
    assert e.value.line == 9 and e.value.hint


@pytest.mark.parametrize("kind", ["solver", "optimizer", "hypergradient", "outer"])
def test_language_reference_tables_are_generated_from_the_classes(kind):
    assert option_table(kind) in (ROOT / "docs" / "LANGUAGE.md").read_text()
