"""Validate every option of the ``lower``, ``upper`` and ``solve`` blocks.

Method-valued options (``solver: fista(mu=1)``, ``outer: maid(...)``) are
bound against the stdlib registry's namespaces, so arity and keyword errors
and "did you mean" hints come from the same machinery as function calls.
Each method's option class (:mod:`bil.stdlib.methods`) is constructed here, which
validates its values; an :class:`OptionError` becomes a located error at the
argument it names.  The result, with every default filled in, is ``state.options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bil.core import ir
from bil.core.errors import BilError, Warning_
from bil.compiler.evaluate import Evaluator, arg_span, is_concrete, to_static
from bil.compiler.state import CompileState
from bil.stdlib import closest, lookup, names
from bil.stdlib.method_options import MAX_COUNT, MethodOptions, OptionError, check_count  # noqa: F401 (re-exported)
from bil.stdlib.methods import IMPLICIT_METHODS, PROX_SOLVERS, Implicit, make_method

# key -> (what it is, validator).  Validators take (value, span) and return the
# normalised value.


def _pos_number(v, span, key):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise BilError(f"`{key}` must be a positive number, got {v!r}", span)
    return float(v)


def _pos_int(v, span, key):
    try:
        check_count(v, key)
    except OptionError as err:
        raise BilError(err.message, span, err.hint) from None
    return int(v)


def _choice(*choices):
    def check(v, span, key):
        if v not in choices:
            raise BilError(f"`{key}` must be one of {', '.join(repr(c) for c in choices)}, got {v!r}", span)
        return v

    return check


LOWER_OPTIONS: dict[str, tuple[str, Callable | str]] = {
    "solver": ("lower solver: " + " | ".join(["lbfgs(...)", "fista(mu=..)", "gd(...)", "newton_cg(...)", "direct()",
                                              "cg()"]), "solver"),
    "tol": ("accuracy of a standalone lower solve (gradient norm), default 1e-8", _pos_number),
    "max_iter": ("iteration cap of one lower solve, default 10000", _pos_int),
}
SOLVE_OPTIONS: dict[str, tuple[str, Callable | str]] = {
    "hypergradient": ("implicit(linear=\"cg\") | neumann(k=..) | unroll | unroll(truncate=K)", "hypergradient"),
    "outer": ("maid(...) | hoag(...) | gd(lr=.., max_iter=..) | adam(lr=.., max_iter=..)", "outer"),
    "precision": ("\"float64\" | \"float32\"", _choice("float64", "float32")),
    "seed": ("integer seed", lambda v, s, k: _int(v, s, k)),
    "checkpoint_every": ("outer iterations between checkpoints, default 10", _pos_int),
}
UPPER_OPTIONS: dict[str, tuple[str, Callable | str]] = {}

#: iteration counts by their other name, for "did you mean": every outer loop counts `max_iter`
#: (gd/adam also accept `steps`, their alias); `unroll` counts `steps`
LIMIT_ALIASES = {"max_iter": "steps", "steps": "max_iter"}

DEFAULTS = {"tol": 1e-8, "max_iter": 10000, "precision": "float64", "seed": 0, "checkpoint_every": 10}
#: the lower `tol:` default under `precision: "float32"`: ‖∇g‖ ≤ 1e-8 is below what float32
#: resolves on most problems (every solve would hit max_iter and the objective be NaN)
FLOAT32_TOL = 1e-4


def _int(v, span, key):
    if isinstance(v, bool) or not isinstance(v, int):
        raise BilError(f"`{key}` must be an integer, got {v!r}", span)
    return v


def method_value(e: ir.Expr, namespace: str, key: str) -> MethodOptions:
    """Bind ``name(k=v, ...)`` (or a bare ``name``) against a registry namespace and
    construct its option class: the validated object, located at the call."""
    if isinstance(e, ir.Name):
        e = ir.Call(e.span, e.id, (), (), name_span=e.span)
    known = names(namespace)
    if not isinstance(e, ir.Call):
        raise BilError(f"`{key}` must name a method, e.g. `{known[0]}(...)`", e.span, "known: " + ", ".join(known))
    fn = lookup(e.func, namespace)
    if fn is None:
        guess = closest(e.func, known)
        raise BilError(f"unknown {key} `{e.func}`", e.name_span or e.span,
                       (f"did you mean `{guess}`? " if guess else "") + "known: " + ", ".join(known))
    from bil.compiler.passes.resolve import check_signature

    check_signature(fn, e, f"`{e.func}`")
    cls = fn.impl
    given = {k.name: k for k in e.kwargs}
    for alias, target in cls.aliases.items():
        if alias in given and target in given:
            second = max(given[alias], given[target], key=lambda k: (k.span.line, k.span.column))
            raise BilError(f"`{e.func}` got both `{target}` and its alias `{alias}`", second.span,
                           f"`{alias}` is another name for `{target}`: give one of them")
    const = Evaluator({})
    args = [_static(const, a) for a in e.args]
    kwargs = {k.name: _static(const, k.value) for k in e.kwargs}
    try:
        bound = fn.bind(tuple(args), kwargs)
    except TypeError as err:
        params = ", ".join(fn.signature.parameters)
        raise BilError(f"{err} in `{e.func}`", e.span, f"`{e.func}` accepts: {params}") from None
    try:
        return cls(*bound.args, **bound.kwargs).at(e.span)
    except OptionError as err:
        raise BilError(err.message, arg_span(e, fn, err.arg), err.hint or method_hint(cls)) from None


def _static(const: Evaluator, e: ir.Expr):
    v = const(e)
    if not is_concrete(v):
        raise BilError("option values must be constants", e.span)
    return to_static(v)


def with_options(m: MethodOptions, changes: dict) -> MethodOptions:
    """``m`` with keyword ``changes`` (``prog.run(max_iter=20)``), validated like the spec's own
    options: a bad value is a :class:`BilError` at the method's span."""
    try:
        return m.replace(**changes)
    except OptionError as err:
        raise BilError(err.message, m.span, err.hint or method_hint(type(m))) from None


def check_block(options: tuple[ir.Option, ...], table: dict, block: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, ir.Option] = {}
    for opt in options:
        if opt.key not in table:
            known = sorted(table)
            guess = closest(opt.key, known)
            hint = (f"did you mean `{guess}`? " if guess else "") + (
                "known options: " + ", ".join(known) if known else f"`{block}` takes no options")
            raise BilError(f"unknown option `{opt.key}` in `{block}`", opt.span, hint)
        if opt.key in seen:
            raise BilError(f"option `{opt.key}` given twice", opt.span, f"first at line {seen[opt.key].span.line}")
        seen[opt.key] = opt
        what, check = table[opt.key]
        if isinstance(check, str):
            out[opt.key] = method_value(opt.value, check, opt.key)
        else:
            try:
                out[opt.key] = check(_static(Evaluator({}), opt.value), opt.value.span, opt.key)
            except BilError as err:
                if err.hint is None:
                    err.hint = f"`{opt.key}`: {what}"
                raise
    return out


def method_hint(cls: type[MethodOptions]) -> str:
    """``name`` takes k=default, ...: the defaults, as the hint of a bad keyword value."""
    shown = cls.call_text()[len(cls.name) + 1:-1]
    return f"`{cls.name}` takes {shown}" if shown else f"see `bil show FILE` for the options of `{cls.name}`"


@dataclass(frozen=True)
class CheckOptions:
    name: str = "check-options"

    def apply(self, st: CompileState) -> None:
        lower = check_block(st.lower.options, LOWER_OPTIONS, "lower")
        solve = check_block(st.solve.options if st.solve else (), SOLVE_OPTIONS, "solve")
        check_block(st.upper.options, UPPER_OPTIONS, "upper")
        bounded = any(v.bounds is not None for v in st.lower_vars.values())
        if st.is_train:
            for key in ("solver",):
                if key in lower:
                    raise BilError(f"`{key}` does not apply to a `train` goal", lower[key].span,
                                   "the optimizer is given by `train ... with OPT for N steps`")
        elif "solver" not in lower:
            lower["solver"] = make_method("solver", "fista" if bounded else "lbfgs")
        elif bounded and not isinstance(lower["solver"], PROX_SOLVERS):
            raise BilError(f"`{lower['solver'].name}` cannot handle bounded lower variables", lower["solver"].span,
                           "use `solver: fista(...)` or `solver: gd(...)` (projected methods)")
        if "hypergradient" not in solve:
            solve["hypergradient"] = make_method("hypergradient", "unroll" if st.is_train else "implicit")
        if "outer" not in solve:
            # MAID for both: on a training procedure (exact values and
            # hypergradients) it is backtracking with L-BFGS directions, which
            # reached lower validation losses than adam(lr=0.02..0.5, steps=100)
            # at fewer training steps on 3 procedures (benchmarks/defaults.py).
            solve["outer"] = make_method("outer", "maid")
        for k in ("precision", "seed", "checkpoint_every"):
            solve.setdefault(k, DEFAULTS[k])
        lower.setdefault("tol", FLOAT32_TOL if solve["precision"] == "float32" else DEFAULTS["tol"])
        lower.setdefault("max_iter", DEFAULTS["max_iter"])
        hg = solve["hypergradient"]
        if st.is_train:
            # a training procedure runs its N steps: no tolerance or cap applies to it (only
            # implicit differentiation's CG or direct solves use `tol`; Neumann runs k terms)
            unused = ["max_iter"] + (["tol"] if not isinstance(hg, Implicit) else [])
            for opt in st.lower.options:
                if opt.key in unused:
                    st.warnings.append(Warning_(
                        f"`{opt.key}` has no effect on a `train` goal", opt.span,
                        "the procedure runs its `for N steps`; change N to train longer"))
        if st.is_train and isinstance(hg, IMPLICIT_METHODS):
            st.warnings.append(Warning_(
                f"`{hg.name}` differentiates the argmin of the training loss, not the training steps",
                hg.span or st.lower.span,
                "the derivative is right only where training has converged (‖∇g‖ ≈ 0 at the last step); "
                "`hypergradient: unroll` differentiates the steps themselves"))
        st.options = {"lower": lower, "solve": solve}

