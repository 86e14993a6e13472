"""A sound upper bound on the polynomial degree of an expression in chosen variables.

``degree(e, xs)`` walks the IR once and returns an integer ``d`` such that
``e`` is a polynomial of total degree at most ``d`` in the variables ``xs``
(elementwise, over every entry of every array), or ``None`` when it cannot
prove ``e`` polynomial at all.  It never cancels terms: ``x[1:] - x[:-1]`` is
degree 1 (the two slices are different entries, so nothing may cancel),
``x - x`` is bounded by 1 too.  An upper bound is what the solver choice needs:
"degree <= 2" then really means the Hessian is constant and one linear solve
is exact.  The bound is never expanded symbolically, so ``(w - y)^1000`` or an
exponent of 2**63 costs one multiplication.

Rules: sums take the max, products (``*``, ``@``) add, an integer power
multiplies, indexing or slicing keeps the degree of the array.  A stdlib call
follows the degree rule its function registered beside its implementation
(:mod:`bil.stdlib.rules`: ``sum`` is linear, ``sumsq`` squares, ``dot``
multiplies, ``where(c, a, b)`` takes the max when ``c`` is constant ...).
Everything else (``exp``, ``sqrt``, ``abs``, division by an expression in
``xs``, non-integer powers, a function without a rule) is degree 0 when none
of its arguments depends on ``xs`` and not polynomial (``None``) otherwise.
"""

from __future__ import annotations

from bil.core import ir
from bil.stdlib import lookup

#: larger bounds are clamped here (they only ever need to be compared with 2)
CAP = 1 << 20


def degree(e: ir.Expr, xs) -> int | None:
    """Upper bound on the degree of ``e`` in the names ``xs``; ``None``: not provably polynomial."""
    return _Degree(frozenset(xs))(e)


class _Degree:
    def __init__(self, xs: frozenset):
        self.xs = xs

    def __call__(self, e) -> int | None:
        if e is None or isinstance(e, (ir.Num, ir.Str, ir.Bool, ir.Const)):
            return 0
        if isinstance(e, ir.Name):
            return 1 if e.id in self.xs else 0
        if isinstance(e, ir.Unary):
            return self(e.operand)
        if isinstance(e, ir.Binary):
            return self._binary(e)
        if isinstance(e, ir.Index):
            # any entries of a polynomial are polynomials of the same degree; indices must be constant
            return self(e.base) if self._const(*e.indices) else None
        if isinstance(e, ir.Slice):
            return 0 if self._const(e.lo, e.hi, e.step) else None
        if isinstance(e, ir.Call):
            return self._call(e)
        if isinstance(e, (ir.TupleExpr, ir.ListExpr)):
            return _max(*(self(i) for i in e.items))
        return None  # an expression kind this analysis does not know: claim nothing

    def _const(self, *es) -> bool:
        return all(self(x) == 0 for x in es if x is not None)

    def _binary(self, e: ir.Binary) -> int | None:
        a, b = self(e.left), self(e.right)
        if a is None or b is None:
            return None
        if e.op in ("+", "-"):
            return max(a, b)
        if e.op in ("*", "@"):
            return min(a + b, CAP)
        if e.op == "/":
            return a if b == 0 else None
        if e.op == "^":
            if b != 0:
                return None
            if a == 0:
                return 0
            k = _exponent(e.right)
            return None if k is None else min(a * k, CAP)
        return None

    def _call(self, e: ir.Call) -> int | None:
        args = [self(a) for a in e.args]
        if not self._const(*(k.value for k in e.kwargs)):
            return None
        if all(a == 0 for a in args):
            return 0   # constant in xs, whatever the function
        d = degree_rule(e.func)(args)
        return None if d is None else min(d, CAP)


def degree_rule(name: str):
    """The degree rule registered for the stdlib function ``name``; without one, "not polynomial"."""
    fn = lookup(name)
    rule = fn.degree if fn is not None else None
    return rule if rule is not None else _not_polynomial


def _not_polynomial(ds) -> None:
    return None


def _max(*ds) -> int | None:
    return None if None in ds else max(ds, default=0)


def _exponent(e: ir.Expr) -> int | None:
    """A non-negative integer literal exponent (``2``, ``2.0``), else None."""
    if isinstance(e, ir.Num) and not isinstance(e.value, bool):
        v = e.value
        if isinstance(v, int) and v >= 0:
            return v
        if isinstance(v, float) and v >= 0 and v.is_integer() and v < CAP:
            return int(v)
    return None
