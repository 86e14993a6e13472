"""Validate every option of the ``lower``, ``upper`` and ``solve`` blocks.

Method-valued options (``solver: fista(mu=1)``, ``outer: maid(...)``) are
bound against the stdlib registry's namespaces, so arity and keyword errors
and "did you mean" hints come from the same machinery as function calls.
The result, with every default filled in, is ``state.options``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from bil.core import ir
from bil.core.errors import BilError, Warning_
from bil.compiler.evaluate import Evaluator, is_concrete, to_static
from bil.compiler.state import CompileState, Method
from bil.stdlib import closest, lookup, names

# key -> (what it is, validator).  Validators take (value, span) and return the
# normalised value.


def _pos_number(v, span, key):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise BilError(f"`{key}` must be a positive number, got {v!r}", span)
    return float(v)


#: the most iterations, steps or terms any count may ask for: loops count in int32
MAX_COUNT = 10**9


def _pos_int(v, span, key):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BilError(f"`{key}` must be a positive integer, got {v!r}", span)
    if v > MAX_COUNT:
        raise BilError(f"`{key}` is {v:,}, more than the {MAX_COUNT:,} iterations a loop can count", span,
                       "iteration counts are capped at 10^9 (loops count in int32); use a tolerance to stop "
                       "earlier, or a smaller count")
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
    "outer": ("maid(...) | hoag(...) | gd(lr=.., steps=..) | adam(lr=.., steps=..)", "outer"),
    "precision": ("\"float64\" | \"float32\"", _choice("float64", "float32")),
    "seed": ("integer seed", lambda v, s, k: _int(v, s, k)),
    "checkpoint_every": ("outer iterations between checkpoints, default 10", _pos_int),
}
UPPER_OPTIONS: dict[str, tuple[str, Callable | str]] = {}

#: the outer loops' iteration limits: `max_iter` for maid/hoag, `steps` for adam/gd (each is
#: the other's "did you mean")
LIMIT_ALIASES = {"max_iter": "steps", "steps": "max_iter"}

DEFAULTS = {"tol": 1e-8, "max_iter": 10000, "precision": "float64", "seed": 0, "checkpoint_every": 10}
#: the lower `tol:` default under `precision: "float32"`: ‖∇g‖ ≤ 1e-8 is below what float32
#: resolves on most problems (every solve would hit max_iter and the objective be NaN)
FLOAT32_TOL = 1e-4


def _int(v, span, key):
    if isinstance(v, bool) or not isinstance(v, int):
        raise BilError(f"`{key}` must be an integer, got {v!r}", span)
    return v


def method_value(e: ir.Expr, namespace: str, key: str) -> Method:
    """Bind ``name(k=v, ...)`` (or a bare ``name``) against a registry namespace."""
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
    const = Evaluator({})
    args = [_static(const, a) for a in e.args]
    kwargs = {k.name: _static(const, k.value) for k in e.kwargs}
    try:
        bound = fn.bind(tuple(args), kwargs)
    except TypeError as err:
        params = ", ".join(fn.signature.parameters)
        raise BilError(f"{err} in `{e.func}`", e.span, f"`{e.func}` accepts: {params}") from None
    bound.apply_defaults()
    return Method(e.func, dict(bound.arguments), e.span)


def _static(const: Evaluator, e: ir.Expr):
    v = const(e)
    if not is_concrete(v):
        raise BilError("option values must be constants", e.span)
    return to_static(v)


def check_method(m: Method) -> None:
    """Per-method argument checks with messages in Optimistix' style."""
    kw = m.kwargs
    span = m.span
    if m.name == "implicit" and kw["linear"] not in ("cg", "direct"):
        raise BilError(f"`implicit(linear=...)` must be \"cg\" or \"direct\", got {kw['linear']!r}", span)
    if m.name == "hoag" and kw["schedule"] not in ("quadratic", "cubic", "exponential"):
        raise BilError(f"`hoag(schedule=...)` must be \"quadratic\", \"cubic\" or \"exponential\", got "
                       f"{kw['schedule']!r}", span)
    if m.name == "maid" and kw["omega"] not in ("secant", "bound"):
        raise BilError(f"`maid(omega=...)` must be \"secant\" or \"bound\", got {kw['omega']!r}", span)
    if m.name == "maid" and kw["bracket"] not in ("value", "adjoint"):
        raise BilError(f"`maid(bracket=...)` must be \"value\" or \"adjoint\", got {kw['bracket']!r}", span)
    if m.name == "maid" and kw["direction"] not in ("lbfgs", "gradient"):
        raise BilError(f"`maid(direction=...)` must be \"lbfgs\" or \"gradient\", got {kw['direction']!r}", span,
                       "\"gradient\" is the published method (steps along the hypergradient)")
    if m.name == "maid" and kw["h0"] not in ("auto", "subspace", "scalar"):
        raise BilError(f"`maid(h0=...)` must be \"auto\", \"subspace\" or \"scalar\", got {kw['h0']!r}", span,
                       "\"scalar\" is the textbook L-BFGS scaling <s, y>/<y, y> in every direction")
    for flag in ("screen", "cubic"):
        if m.name == "maid" and not isinstance(kw[flag], bool):
            raise BilError(f"`maid({flag}=...)` must be true or false, got {kw[flag]!r}", span)
    if m.name == "unroll" and kw["truncate"] is not None:
        _pos_int(kw["truncate"], span, "unroll(truncate=...)")
    for name in ("eps0", "delta0", "lr", "mu", "L0", "step0", "max_step", "tol", "eta", "lam", "alpha", "budget",
                 "eps_min", "delta_min", "safety"):
        if name in ("eps_min", "delta_min") and kw.get(name) == "auto":
            continue   # maid's floors from the precision and the problem's scale
        if kw.get(name) is not None and not _is_number(kw[name], lambda v: v > 0):
            raise BilError(f"`{m.name}({name}=...)` must be > 0, got {kw[name]!r}", span)
    for name in ("max_iter", "steps", "k", "memory", "max_backtracks", "cg_max_iter", "constants_every"):
        if kw.get(name) is not None:
            _pos_int(kw[name], span, f"{m.name}({name}=...)")
    for name in ("rho", "nu"):
        if name in kw and not _is_number(kw[name], lambda v: 0 < v < 1):
            raise BilError(f"`{m.name}({name}=...)` must lie in (0, 1), got {kw[name]!r}", span)
    for name in ("nu_plus", "rho_plus"):
        if name in kw and not _is_number(kw[name], lambda v: v >= 1):
            raise BilError(f"`{m.name}({name}=...)` must be >= 1, got {kw[name]!r}", span)
    clip = kw.get("clip")
    if clip is not None and not (isinstance(clip, (tuple, list)) and len(clip) == 2
                                 and all(_is_number(c) for c in clip) and clip[0] < clip[1]):
        raise BilError(f"`{m.name}(clip=...)` must be a pair `(lo, hi)` of numbers with lo < hi, got {clip!r}", span,
                       "e.g. `clip=(-10, 6)` (the box for log-coordinate hypers)")


def _is_number(v, test=lambda v: True) -> bool:
    """``v`` is a real number (not a bool or a string) and passes ``test``."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and bool(test(v))


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
            m = method_value(opt.value, check, opt.key)
            try:
                check_method(m)
            except BilError as err:
                if err.hint is None:  # every diagnostic says what to write instead
                    err.hint = method_hint(m, check)
                raise
            out[opt.key] = m
        else:
            try:
                out[opt.key] = check(_static(Evaluator({}), opt.value), opt.value.span, opt.key)
            except BilError as err:
                if err.hint is None:
                    err.hint = f"`{opt.key}`: {what}"
                raise
    return out


def method_hint(m: Method, namespace: str) -> str:
    """``name`` takes k=default, ...: the defaults, as a hint for a bad keyword value."""
    fn = lookup(m.name, namespace)
    params = fn.signature.parameters.values() if fn is not None else ()
    shown = ", ".join(f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty)
    return f"`{m.name}` takes {shown}" if shown else f"see `bil show FILE` for the options of `{m.name}`"


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
            lower["solver"] = Method("fista" if bounded else "lbfgs", dict(lookup(
                "fista" if bounded else "lbfgs", "solver").signature.bind().arguments), None)
            _fill(lower["solver"])
        elif bounded and lower["solver"].name in ("lbfgs", "newton_cg", "direct", "cg"):
            raise BilError(f"`{lower['solver'].name}` cannot handle bounded lower variables", lower["solver"].span,
                           "use `solver: fista(...)` or `solver: gd(...)` (projected methods)")
        if "hypergradient" not in solve:
            solve["hypergradient"] = _default("unroll" if st.is_train else "implicit", "hypergradient")
        if "outer" not in solve:
            # MAID for both: on a training procedure (exact values and
            # hypergradients) it is backtracking with L-BFGS directions, which
            # reached lower validation losses than adam(lr=0.02..0.5, steps=100)
            # at fewer training steps on 3 procedures (benchmarks/defaults.py).
            solve["outer"] = _default("maid", "outer")
        for k in ("precision", "seed", "checkpoint_every"):
            solve.setdefault(k, DEFAULTS[k])
        lower.setdefault("tol", FLOAT32_TOL if solve["precision"] == "float32" else DEFAULTS["tol"])
        lower.setdefault("max_iter", DEFAULTS["max_iter"])
        hg = solve["hypergradient"]
        if st.is_train:
            # a training procedure runs its N steps: no tolerance or cap applies to it (only
            # implicit differentiation's CG or direct solves use `tol`; Neumann runs k terms)
            unused = ["max_iter"] + (["tol"] if hg.name in ("unroll", "neumann") else [])
            for opt in st.lower.options:
                if opt.key in unused:
                    st.warnings.append(Warning_(
                        f"`{opt.key}` has no effect on a `train` goal", opt.span,
                        "the procedure runs its `for N steps`; change N to train longer"))
        if st.is_train and hg.name in ("implicit", "neumann"):
            st.warnings.append(Warning_(
                f"`{hg.name}` differentiates the argmin of the training loss, not the training steps",
                hg.span or st.lower.span,
                "the derivative is right only where training has converged (‖∇g‖ ≈ 0 at the last step); "
                "`hypergradient: unroll` differentiates the steps themselves"))
        st.options = {"lower": lower, "solve": solve}


def _default(name: str, namespace: str) -> Method:
    m = Method(name, {}, None)
    fn = lookup(name, namespace)
    bound = fn.signature.bind()
    bound.apply_defaults()
    m.kwargs = dict(bound.arguments)
    return m


def _fill(m: Method) -> None:
    fn = lookup(m.name, "solver")
    bound = fn.signature.bind(**m.kwargs)
    bound.apply_defaults()
    m.kwargs = dict(bound.arguments)
