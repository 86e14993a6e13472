"""``--set KEY=VALUE``: override an option or a hyper's initial value before compiling.

Overrides are applied to the parsed module, before any pass runs, so an
overridden value is checked exactly like one written in the spec (the same
signatures, ranges and "did you mean" hints); diagnostics point at the
``--set`` text itself (reported as ``--set:1:COL``).

Keys::

    hyper.NAME                 initial value, user coordinates   hyper.alpha=0.1
    lower.solver | tol | max_iter                                 lower.solver=fista(mu=1)
    lower.solver.KW            one keyword of the lower solver    lower.solver.memory=20
    lower.steps                training steps of a `train` goal   lower.steps=50
    solve.OPTION               any `solve` option                 solve.outer=hoag(schedule="cubic")
    solve.outer.KW             one keyword of the outer method    solve.outer.max_iter=20
    solve.hypergradient.KW     one keyword of the hypergradient   solve.hypergradient.linear="direct"

VALUE is a `.bil` expression (``fista(mu=1)``, ``[0.1, 0.2]``, ``1e-3``).  A
bare word where a string is expected (``solve.precision=float32``,
``solve.outer.schedule=cubic``) is read as that string.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from bil.core import ir
from bil.core.errors import BilError, BilUsageError
from bil.core.source import Source, Span

__all__ = ["parse_assignment", "apply_overrides", "valid_keys", "value_source"]

#: method-valued options: key -> registry namespace
_METHOD_OPTIONS = {("lower", "solver"): "solver", ("solve", "outer"): "outer",
                   ("solve", "hypergradient"): "hypergradient"}
#: string-valued options where a bare word is read as the string
_STRING_OPTIONS = {("solve", "precision")}

_PREFIX = "solve { v: "


def parse_assignment(text: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``; a :class:`BilError` when there is no ``=``."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip() or not value.strip():
        raise BilError(f"`--set {text}` is not of the form KEY=VALUE", None,
                       "e.g. `--set solve.outer.max_iter=20`, `--set lower.solver=fista(mu=1)`, "
                       "`--set hyper.alpha=0.1`")
    return key.strip(), value.strip()


def value_source(value: Any) -> str:
    """The `.bil` source text of an override value given from Python."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise BilUsageError(f"an override value must be finite, got {value!r}", None,
                            "give a finite number (a hyper's initial value lies inside its domain, e.g. 0.1)")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_source(v) for v in value) + "]"
    raise BilUsageError(f"cannot use {type(value).__name__} {value!r:.60} as an override value", None,
                   "give a number, a list of numbers, a string, or `.bil` source text such as \"fista(mu=1)\"")


# ----------------------------------------------------------------- parsing
def _remap(obj, source: Source, shift: int):
    """Copy an IR tree with every span moved into ``source`` (columns shifted)."""
    if isinstance(obj, Span):
        if obj.line != 1:  # the wrapper's closing line: point at the end of the value
            end = len(source.text) + 1
            return Span(source, 1, end, 1, end + 1)
        col = max(1, obj.column + shift)
        end_col = max(col + 1, (obj.end_column if obj.end_line == 1 else len(source.text) + 1 - shift) + shift)
        return Span(source, 1, col, 1, end_col)
    if isinstance(obj, tuple):
        return tuple(_remap(o, source, shift) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and not isinstance(obj, ir.Const):
        changes = {f.name: _remap(getattr(obj, f.name), source, shift) for f in dataclasses.fields(obj)
                   if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def method_from_text(text: str, namespace: str = "hypergradient"):
    """A method given to the Python API as text (``"unroll(steps=3000)"``): exactly one
    expression, checked like the spec's option; anything else (``"implicit() } solve { ..."``)
    is a :class:`BilUsageError`, never silently cut short."""
    from bil.core.errors import BilUsageError
    from bil.compiler.passes.options import method_value

    try:
        if not isinstance(text, str):
            raise BilError(f"a method is given as text, not {type(text).__name__}", None,
                           'e.g. "unroll(steps=3000)" or "direct"')
        expr, _ = _parse_value("method", text, "<method>")
        return method_value(expr, namespace, namespace)
    except BilUsageError:
        raise
    except BilError as e:
        raise BilUsageError(e.message, e.span, e.hint) from None


def _parse_value(key: str, value: str, file: str = "--set") -> tuple[ir.Expr, Span]:
    """Parse ``value`` as one expression; spans point into ``--set KEY=VALUE``."""
    from bil.grammar import parse

    value = " ".join(value.split("\n"))
    display = Source(f"{key}={value}", file)
    shift = (len(key) + 2) - (len(_PREFIX) + 1)
    try:
        module = parse(f"{_PREFIX}{value}\n}}", file)
    except BilError as e:
        where = _remap(e.span, display, shift) if e.span is not None else None
        raise BilError(f"cannot read `{value}` as a .bil expression", where,
                       "VALUE is an expression: `20`, `1e-3`, `[0.1, 0.2]`, `fista(mu=1)`, "
                       "`hoag(schedule=\"cubic\")` (quote it for the shell)") from None
    stmts = module.statements
    if len(stmts) != 1 or not isinstance(stmts[0], ir.Solve) or len(stmts[0].options) != 1:
        raise BilError(f"`{value}` is not a single expression", Span(display, 1, len(key) + 2, 1,
                                                                        len(display.text) + 1),
                       "give one expression, e.g. `fista(mu=1)`: braces and further options are not allowed")
    expr = _remap(stmts[0].options[0].value, display, shift)
    return expr, Span(display, 1, 1, 1, len(display.text) + 1)


# ------------------------------------------------------------------- keys
def _method_of(module: ir.Module, block: str, opt: str) -> str | None:
    """The method name an option currently holds (the default when absent)."""
    value = _option(module, block, opt)
    if isinstance(value, ir.Call):
        return value.func
    if isinstance(value, ir.Name):
        return value.id
    if value is None:
        return _default_method(module, block, opt)
    return None


def _default_method(module: ir.Module, block: str, opt: str) -> str | None:
    lower = _find(module, ir.Lower)
    train = lower is not None and isinstance(lower.goal, ir.Train)
    if (block, opt) == ("solve", "outer"):
        return "maid"   # as passes/options.py fills it in (train goals too)
    if (block, opt) == ("solve", "hypergradient"):
        return "unroll" if train else "implicit"
    if (block, opt) == ("lower", "solver"):
        if train:
            return None
        bounded = any(v.domain is not None and v.domain.bounds is not None for v in lower.vars)
        return "fista" if bounded else "lbfgs"
    return None


def _find(module: ir.Module, cls):
    for s in module.statements:
        if isinstance(s, cls):
            return s
    return None


def _option(module: ir.Module, block: str, key: str) -> ir.Expr | None:
    stmt = _find(module, ir.Lower if block == "lower" else ir.Solve)
    for o in (stmt.options if stmt is not None else ()):
        if o.key == key:
            return o.value
    return None


def _params(namespace: str, method: str | None) -> list[str]:
    from bil.stdlib import lookup

    fn = lookup(method, namespace) if method else None
    if fn is None:
        return []
    return [p.name for p in fn.signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _same_option(namespace: str, method: str, kw: str) -> set[str]:
    """``kw`` and every keyword of ``method`` that names the same option (its aliases)."""
    from bil.stdlib.methods import method_class

    aliases = method_class(method, namespace).aliases
    target = aliases.get(kw, kw)
    return {target} | {a for a, t in aliases.items() if t == target}


def valid_keys(module: ir.Module, compact: bool = False) -> list[str]:
    """Every key ``--set`` accepts for this spec (method keywords for the current methods).

    ``compact`` groups a method's keywords as ``solve.outer.{eps0, delta0, ...}``.
    """
    from bil.compiler.passes.options import LOWER_OPTIONS, SOLVE_OPTIONS

    keys: list[str] = [f"hyper.{s.name}" for s in module.statements if isinstance(s, ir.Hyper)]
    lower = _find(module, ir.Lower)
    train = lower is not None and isinstance(lower.goal, ir.Train)
    for block, table in (("lower", LOWER_OPTIONS), ("solve", SOLVE_OPTIONS)):
        for opt in table:
            if block == "lower" and opt == "solver" and train:
                continue
            keys.append(f"{block}.{opt}")
            ns = _METHOD_OPTIONS.get((block, opt))
            if ns:
                params = _params(ns, _method_of(module, block, opt))
                if compact and params:
                    keys.append(f"{block}.{opt}.{{{', '.join(params)}}}")
                else:
                    keys.extend(f"{block}.{opt}.{p}" for p in params)
        if block == "lower" and train:
            keys.append("lower.steps")
    return keys


def _unknown_key(module: ir.Module, key: str, span: Span) -> BilError:
    from bil.stdlib import closest

    keys = valid_keys(module)
    from bil.compiler.passes.options import LIMIT_ALIASES

    head, _, last = key.rpartition(".")
    alias = f"{head}.{LIMIT_ALIASES[last]}" if last in LIMIT_ALIASES else None
    guess = alias if alias in keys else closest(key, keys)
    return BilError(f"unknown --set key `{key}`", Span(span.source, 1, 1, 1, len(key) + 1),
                    (f"did you mean `{guess}`? " if guess else "") + "valid keys: " +
                    ", ".join(valid_keys(module, compact=True)))


# ----------------------------------------------------------------- applying
def apply_overrides(module: ir.Module, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> ir.Module:
    """A copy of ``module`` with each override applied in order."""
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        module = _apply_one(module, str(key).strip(), value_source(value).strip())
    return module


def _apply_one(module: ir.Module, key: str, value: str) -> ir.Module:
    from bil.compiler.passes.options import LOWER_OPTIONS, SOLVE_OPTIONS

    expr, span = _parse_value(key, value)
    parts = key.split(".")
    head = parts[0]
    if head == "hyper" and len(parts) == 2:
        for i, s in enumerate(module.statements):
            if isinstance(s, ir.Hyper) and s.name == parts[1]:
                return _replace_stmt(module, i, dataclasses.replace(s, init=expr))
        raise _unknown_key(module, key, span)
    if head in ("lower", "solve") and len(parts) in (2, 3):
        table = LOWER_OPTIONS if head == "lower" else SOLVE_OPTIONS
        opt = parts[1]
        lower = _find(module, ir.Lower)
        train = lower is not None and isinstance(lower.goal, ir.Train)
        if head == "lower" and opt == "steps" and train and len(parts) == 2:
            i = module.statements.index(lower)
            return _replace_stmt(module, i, dataclasses.replace(lower, goal=dataclasses.replace(lower.goal,
                                                                                                  steps=expr)))
        if opt not in table or (head == "lower" and opt == "solver" and train):
            raise _unknown_key(module, key, span)
        ns = _METHOD_OPTIONS.get((head, opt))
        if len(parts) == 2:
            if (head, opt) in _STRING_OPTIONS and isinstance(expr, ir.Name):
                expr = ir.Str(expr.span, expr.id)
            return _set_option(module, head, opt, expr, span)
        if ns is None:
            raise _unknown_key(module, key, span)
        method = _method_of(module, head, opt)
        current = _option(module, head, opt)
        if method is None or not isinstance(current, (ir.Call, ir.Name, type(None))):
            raise BilError(f"cannot set `{key}`: `{head}.{opt}` is not a method call", span,
                           f"set the whole option instead, e.g. `--set {head}.{opt}=NAME(...)`")
        kw = parts[2]
        params = _params(ns, method)
        if kw not in params:
            raise _unknown_key(module, key, span)
        if isinstance(expr, ir.Name):
            expr = ir.Str(expr.span, expr.id)  # `schedule=cubic` -> "cubic"
        if isinstance(current, ir.Call):
            same = _same_option(ns, method, kw)   # the keyword and its aliases (`steps` for `max_iter`)
            kwargs = tuple(k for k in current.kwargs if k.name not in same) + (ir.Keyword(kw, expr, span),)
            call = dataclasses.replace(current, kwargs=kwargs, span=span)
        else:
            call = ir.Call(span, method, (), (ir.Keyword(kw, expr, span),), name_span=span)
        return _set_option(module, head, opt, call, span)
    raise _unknown_key(module, key, span)


def _replace_stmt(module: ir.Module, i: int, stmt) -> ir.Module:
    stmts = list(module.statements)
    stmts[i] = stmt
    return dataclasses.replace(module, statements=tuple(stmts))


def _set_option(module: ir.Module, block: str, key: str, value: ir.Expr, span: Span) -> ir.Module:
    cls = ir.Lower if block == "lower" else ir.Solve
    stmt = _find(module, cls)
    if stmt is None:  # no `solve` block: add one (a spec always has a `lower` block)
        if cls is ir.Lower:
            return module
        return dataclasses.replace(module, statements=module.statements + (ir.Solve((ir.Option(key, value, span),),
                                                                                     span),))
    options = []
    done = False
    for o in stmt.options:
        if o.key == key and not done:
            options.append(ir.Option(key, value, span))
            done = True
        elif o.key != key:
            options.append(o)
    if not done:
        options.append(ir.Option(key, value, span))
    return _replace_stmt(module, module.statements.index(stmt), dataclasses.replace(stmt, options=tuple(options)))
