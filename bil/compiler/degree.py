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

Rules: sums take the max, products (``*``, ``@``, ``dot``, ``conv2d``) add,
``sumsq``/``square``/``mse`` double, linear stdlib maps (``sum``, ``mean``,
``dx``, ``dy``, ``transpose``, ``reshape``, ``diag``, ``trace``) and indexing
or slicing keep the degree of their array argument, ``where(c, a, b)`` takes
the max when ``c`` does not depend on ``xs``.  Everything else (``exp``,
``sqrt``, ``abs``, division by an expression in ``xs``, non-integer powers,
any function not listed) is degree 0 when none of its arguments depends on
``xs`` and not polynomial (``None``) otherwise.
"""

from __future__ import annotations

from bil.core import ir

#: stdlib calls linear in their first argument (the others must be constants)
LINEAR = frozenset({"sum", "mean", "dx", "dy", "transpose", "reshape", "diag", "trace"})
#: calls that multiply their two array arguments (bilinear)
PRODUCTS = frozenset({"dot", "conv2d"})
#: calls that square (the difference of) their arguments
SQUARES = frozenset({"sumsq", "square", "mse"})
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
        kw_const = self._const(*(k.value for k in e.kwargs))
        if not args or not kw_const:
            return 0 if kw_const and not args else None
        first, rest = args[0], args[1:]
        rest_const = all(r == 0 for r in rest)
        if e.func in LINEAR:
            return first if rest_const else None
        if e.func in ("sumsq", "square"):
            return None if first is None or not rest_const else min(2 * first, CAP)
        if e.func == "mse" and len(args) == 2:
            m = _max(*args)
            return None if m is None else min(2 * m, CAP)
        if e.func in PRODUCTS and len(args) == 2 and None not in args:
            return min(args[0] + args[1], CAP)
        if e.func == "where" and len(args) == 3:
            return _max(args[1], args[2]) if args[0] == 0 else None
        return 0 if all(a == 0 for a in args) else None


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
