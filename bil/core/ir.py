"""The typed IR: frozen dataclasses, each carrying the :class:`Span` it came from.

Expressions are small trees; statements become nodes of a ``networkx.DiGraph``
(``CompileState.graph``, built by :mod:`bil.compiler.passes.resolve`) whose edges are
dependencies.  :func:`show` gives an expression's deterministic text, from which
:mod:`bil.compiler.render.ir` builds the dump used by golden tests and ``bil emit --stage ir``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from bil.core.source import Span

_span = dict(repr=False, compare=False)
_sspan = dict(default=None, repr=False, compare=False)


# ------------------------------------------------------------------ expressions
@dataclass(frozen=True)
class Expr:
    span: Span = field(**_span)


@dataclass(frozen=True)
class Num(Expr):
    value: Union[int, float] = 0


@dataclass(frozen=True)
class Str(Expr):
    value: str = ""


@dataclass(frozen=True)
class Bool(Expr):
    value: bool = False


@dataclass(frozen=True)
class Name(Expr):
    id: str = ""


@dataclass(frozen=True)
class Unary(Expr):
    op: str = "-"
    operand: Expr = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Binary(Expr):
    op: str = "+"  # one of + - * / ^ @
    left: Expr = None  # type: ignore[assignment]
    right: Expr = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Call(Expr):
    func: str = ""
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    #: span of the function name alone (for "unknown function" carets)
    name_span: Optional[Span] = field(default=None, **_span)


@dataclass(frozen=True)
class Slice(Expr):
    lo: Optional[Expr] = None
    hi: Optional[Expr] = None
    step: Optional[Expr] = None


@dataclass(frozen=True)
class Index(Expr):
    base: Expr = None  # type: ignore[assignment]
    indices: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Const(Expr):
    """A sub-expression folded at compile time (hoisted out of every solver loop).

    ``key`` names it among the program's constants, ``label`` is the source
    text it came from, and ``per_sample`` says whether its leading axis is the
    sample axis (it was computed from ``per sample`` data).
    """

    key: str = ""
    label: str = ""
    value: Any = field(default=None, compare=False, repr=False)
    per_sample: bool = False


# ------------------------------------------------------------------- statements
@dataclass(frozen=True)
class Domain:
    """``real|positive [shape] [in [lo, hi]]``."""

    base: str
    shape: Optional[tuple[Expr, ...]] = None
    bounds: Optional[tuple[Expr, Expr]] = None
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Option:
    key: str
    value: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Problem:
    name: str
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Data:
    names: tuple[str, ...]
    expr: Expr
    per_sample: bool = False
    span: Span = field(**_sspan)
    name_spans: tuple[Span, ...] = field(default=(), **_span)
    #: ``sampled``: the leading axis of every name is a row axis the objectives are means over
    sampled: bool = False


@dataclass(frozen=True)
class Hyper:
    name: str
    domain: Optional[Domain]
    init: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Def:
    name: str
    params: tuple[str, ...]
    body: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class LowerVar:
    name: str
    domain: Optional[Domain]
    init: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Minimize:
    expr: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Train:
    expr: Expr
    optimizer: Expr
    steps: Expr
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Lower:
    name: Optional[str]
    vars: tuple[LowerVar, ...]
    goal: Union[Minimize, Train]
    options: tuple[Option, ...] = ()
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Upper:
    expr: Expr
    options: tuple[Option, ...] = ()
    span: Span = field(**_sspan)


@dataclass(frozen=True)
class Solve:
    options: tuple[Option, ...] = ()
    span: Span = field(**_sspan)


Statement = Union[Problem, Data, Hyper, Def, Lower, Upper, Solve]


@dataclass(frozen=True)
class Module:
    """The parsed file: statements in source order."""

    statements: tuple[Statement, ...]
    span: Span = field(**_sspan)


# ------------------------------------------------------------------- traversal
def children(e: Expr) -> tuple[Expr, ...]:
    """Direct sub-expressions of ``e`` (keyword values included)."""
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Call):
        return e.args + tuple(k.value for k in e.kwargs)
    if isinstance(e, Index):
        return (e.base,) + e.indices
    if isinstance(e, Slice):
        return tuple(x for x in (e.lo, e.hi, e.step) if x is not None)
    if isinstance(e, (TupleExpr, ListExpr)):
        return e.items
    return ()


def walk(e: Expr):
    """Pre-order iteration over ``e`` and all its sub-expressions."""
    yield e
    for c in children(e):
        yield from walk(c)


def free_names(e: Expr) -> set[str]:
    """Names referenced by ``e`` (call targets excluded)."""
    return {n.id for n in walk(e) if isinstance(n, Name)}


def called(e: Expr) -> set[str]:
    return {n.func for n in walk(e) if isinstance(n, Call)}


# ------------------------------------------------------------------- text dump
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "neg": 3, "^": 4}


#: a constant's source text that needs no parentheses inside a larger expression
_ATOM = re.compile(r"[\w.]+(\[[^\]]*\]|\([^()]*\))?")


def show(e: Expr, parent: int = 0, keys: bool = False) -> str:
    """Deterministic, fully parenthesised-where-needed text of an expression.  A folded constant
    shows as the source text it came from (what a user wrote), or with ``keys`` (the IR dump) as
    ``key<source text>``."""
    if isinstance(e, Num):
        return repr(e.value)
    if isinstance(e, Str):
        return '"' + e.value + '"'
    if isinstance(e, Bool):
        return "true" if e.value else "false"
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Const):
        if keys:
            return f"{e.key}<{e.label}>"
        return f"({e.label})" if parent > 0 and not _ATOM.fullmatch(e.label) else e.label
    if isinstance(e, Unary):
        s = e.op + show(e.operand, _PREC["neg"], keys)
        return f"({s})" if parent > _PREC["neg"] else s
    if isinstance(e, Binary):
        p = _PREC[e.op]
        right_p = p + (0 if e.op == "^" else 1)
        left_p = p + (1 if e.op == "^" else 0)
        s = f"{show(e.left, left_p, keys)} {e.op} {show(e.right, right_p, keys)}"
        return f"({s})" if parent > p else s
    if isinstance(e, Call):
        parts = [show(a, 0, keys) for a in e.args] + [f"{k.name}={show(k.value, 0, keys)}" for k in e.kwargs]
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, Index):
        return f"{show(e.base, 9, keys)}[{', '.join(show(i, 0, keys) for i in e.indices)}]"
    if isinstance(e, Slice):
        lo = show(e.lo, 0, keys) if e.lo else ""
        hi = show(e.hi, 0, keys) if e.hi else ""
        return f"{lo}:{hi}" + (f":{show(e.step, 0, keys)}" if e.step else "")
    if isinstance(e, TupleExpr):
        inner = ", ".join(show(i, 0, keys) for i in e.items)
        return f"({inner},)" if len(e.items) == 1 else f"({inner})"
    if isinstance(e, ListExpr):
        return "[" + ", ".join(show(i, 0, keys) for i in e.items) + "]"
    raise TypeError(f"not an expression: {e!r}")


def show_domain(d: Optional[Domain]) -> str:
    if d is None:
        return "real"
    s = d.base
    if d.shape is not None:
        s += "[" + ", ".join(show(x) for x in d.shape) + "]"
    if d.bounds is not None:
        s += f" in [{show(d.bounds[0])}, {show(d.bounds[1])}]"
    return s


def node_fields(node: Any) -> dict[str, Any]:
    return {f.name: getattr(node, f.name) for f in fields(node) if f.name != "span"}
