"""The rules a stdlib function registers beside its implementation (``register(degree=, latex=,
check=)``, bil/stdlib/rules.py) are what the compiler uses: every array function resolves to an
explicit rule or the sound default, and a newly registered function is analysed, printed and
checked by its own rules without any edit to the compiler."""

import bil  # noqa: F401  (float64 before any array is created)

import inspect
import re

import jax.numpy as jnp
import pytest

from bil.core import ir
from bil.compiler.degree import degree, degree_rule
from bil.core.errors import BilError
from bil.compiler.render.expr_latex import latex, latex_rule
from bil.stdlib import names, registry, rules
from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import REGISTRY

X = ir.Name(None, "x")


def _call(name: str, *args: ir.Expr) -> ir.Call:
    return ir.Call(None, name, args, ())


def _required(name: str) -> int:
    params = REGISTRY[name].signature.parameters.values()
    return sum(p.default is p.empty and p.kind is not p.VAR_POSITIONAL for p in params)


@pytest.mark.parametrize("name", names("array"))
def test_every_array_function_has_a_degree_and_latex_rule(name):
    """Explicit or default: the degree of f(x, 1, ...) is None or a bound ≥ 0 (never an error),
    and f(x, 1, ...) prints, by its template when one is registered, else as \\operatorname."""
    args = (X,) + (ir.Num(None, 1),) * max(_required(name) - 1, 0)
    d = degree_rule(name)([1] + [0] * (len(args) - 1))
    assert d is None or (isinstance(d, int) and d >= 0)
    assert degree(_call(name, *args), {"x"}) == (None if d is None else min(d, 1 << 20))
    assert degree(_call(name, *args), {"y"}) == 0   # constant in the variables: degree 0
    rule, tex = latex_rule(name), latex(_call(name, *args))
    if isinstance(rule, str):
        # a template is reachable: its highest placeholder is an arity the function accepts
        top = max(int(a or b) for a, b in re.findall(r"#(\d)|#\((\d)\)", rule))
        params = REGISTRY[name].signature.parameters.values()
        assert _required(name) <= top <= len(params) or any(p.kind is p.VAR_POSITIONAL for p in params)
        if top == len(args):
            assert r"\operatorname{%s}" % name.replace("_", r"\_") not in tex
    elif rule is None:
        assert tex.startswith(r"\operatorname{%s}\left(x" % name.replace("_", r"\_"))
    check = REGISTRY[name].check
    if check is not None:   # called like the implementation
        assert inspect.signature(check).parameters.keys() == REGISTRY[name].signature.parameters.keys()


def test_unregistered_functions_default_soundly():
    assert degree(_call("not_a_stdlib_fn", X), {"x"}) is None
    assert degree(_call("not_a_stdlib_fn", ir.Num(None, 2)), {"x"}) == 0
    assert latex(_call("not_a_stdlib_fn", X)) == r"\operatorname{not\_a\_stdlib\_fn}\left(x\right)"


def test_registration_rejects_misplaced_rules():
    with pytest.raises(ValueError, match="array functions"):
        registry.register("some_solver", kind="solver", degree=rules.linear)
    with pytest.raises(ValueError, match="callables"):
        registry.register("some_fn", degree=2)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test (a test may register new functions)."""
    import bil.stdlib  # noqa: F401  (the implementations are registered)
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    monkeypatch.setattr(registry, "_KEYS", set(registry._KEYS))


SPEC = """
problem custom
data y = randn(6, seed=0)
data labels = [0, 1, 2, 1]
hyper lam : positive = 1.0
lower {
    w : real[6] = 0
    minimize half_energy(w - y) + lam * half_energy(w) + 0 * tagged(w[0:4], LABELS)
}
upper minimize sumsq(w - 1)
"""


def _tagged_check(x, labels):
    if labels.value is not None and labels.value.max() > 1:
        raise StdlibError(f"tagged: `{labels.text}` must be 0/1", hint="binary tags", arg=1)


def _register_new_functions():
    @registry.register("half_energy", degree=rules.square, latex=r"\tfrac12 \left\|#1\right\|^2")
    def half_energy(x):
        """Half the sum of squares."""
        return 0.5 * jnp.sum(jnp.square(x))

    @registry.register("tagged", check=_tagged_check)
    def tagged(x, labels):
        """A sum weighted by 0/1 tags."""
        return jnp.sum(x * labels)


def test_a_newly_registered_function_is_analysed_printed_and_checked_by_its_rules(scratch_registry):
    _register_new_functions()
    prog = bil.compile(SPEC.replace("LABELS", "[0, 1, 1, 0]"))
    st = prog.state
    # degree: half_energy squares, tagged has no rule, but `0 * tagged(...)` is still not polynomial
    assert degree(ir.Call(None, "half_energy", (ir.Name(None, "w"),), ()), {"w"}) == 2
    assert st.structure["lower_degree"] is None
    # latex: the registered template
    assert latex(_call("half_energy", X)) == r"\tfrac12 \left\|x\right\|^2"
    # check: run at compile time on the data argument, reported at that argument
    bad = SPEC.replace("LABELS", "labels")
    with pytest.raises(BilError) as err:
        bil.compile(bad)
    assert "tagged: `labels` must be 0/1" in err.value.message
    assert err.value.span.line == 8 and bad.split("\n")[7][err.value.span.column - 1:].startswith("labels)")


def test_a_new_degree_rule_chooses_the_direct_solver(scratch_registry):
    """The solver choice follows a new function's rule: degree 2 → one linear solve."""
    _register_new_functions()
    spec = SPEC.replace(" + 0 * tagged(w[0:4], LABELS)", "")
    st = bil.compile(spec).state
    assert st.structure["lower_degree"] == 2
    assert st.options["lower"]["solver"].name == "direct"


def test_rules_of_the_builtin_functions():
    """The rules the README's degree table describes (docs/ALGORITHMS.md, Quadratic lower problems)."""
    assert rules.linear([3, 0, 0]) == 3 and rules.linear([1, 1]) is None
    assert rules.square([2]) == 4 and rules.square([None]) is None and rules.square([1, 1]) is None
    assert rules.squared_difference([1, 0]) == 2 and rules.squared_difference([1]) is None
    assert rules.bilinear([1, 2]) == 3 and rules.bilinear([1, None]) is None
    assert rules.select([0, 1, 2]) == 2 and rules.select([1, 1, 1]) is None
    for name, rule in [("sum", rules.linear), ("sumsq", rules.square), ("mse", rules.squared_difference),
                       ("dot", rules.bilinear), ("conv2d", rules.bilinear), ("where", rules.select)]:
        assert REGISTRY[name].degree is rule


def test_a_latex_rule_may_be_a_callable_of_the_printed_arguments(scratch_registry):
    @registry.register("pair_dist", latex=lambda a: rf"d\left({a[0]}, {a[1]}\right)" if len(a) == 2 else None)
    def pair_dist(a, b):
        """Distance between a and b."""
        return jnp.sqrt(jnp.sum(jnp.square(a - b)))

    two = _call("pair_dist", X, ir.Binary(None, "+", ir.Name(None, "y"), ir.Num(None, 1)))
    assert latex(two) == r"d\left(x, y + 1\right)"
    assert latex(_call("pair_dist", X)) == r"\operatorname{pair\_dist}\left(x\right)"   # None: the default
    assert degree(two, {"x"}) is None   # no degree rule: not polynomial
