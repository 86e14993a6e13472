"""sympy view of the IR for ``bil show --latex``: sympy Functions printed with a
custom LaTeX printer (``sumsq(e)`` -> ``\\|e\\|_2^2``).

(Structure detection, "is the lower objective quadratic", is not done here but
by the sound degree bound of :mod:`bil.compiler.degree`: a scalar sympy
surrogate mapped every entry ``x[i]`` of an array to one symbol, so
``x[1:] - x[:-1]`` cancelled to 0 and smoothed TV passed for quadratic.)
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.conventions import split_super_sub
from sympy.printing.latex import LatexPrinter, translate

from bil.core import ir


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name)


# ----------------------------------------------------------------- display
def display(e: ir.Expr) -> sp.Expr:
    """A sympy expression that prints like the spec (functions kept by name)."""
    if isinstance(e, ir.Num):
        return sp.Integer(e.value) if isinstance(e.value, int) else sp.Float(e.value, 4)
    if isinstance(e, ir.Name):
        return _sym(e.id)
    if isinstance(e, ir.Const):
        return _sym(e.label if len(e.label) < 24 else e.key)
    if isinstance(e, ir.Str):
        return sp.Symbol(f'"{e.value}"')
    if isinstance(e, ir.Unary):
        return -display(e.operand)
    if isinstance(e, ir.Binary):
        a, b = display(e.left), display(e.right)
        if e.op == "@":
            return sp.Function("matmul")(a, b)
        if e.op == "/":
            return a * sp.Pow(b, -1, evaluate=False)
        # Flatten left-nested sums and products (`a + b + c` prints without
        # parentheses); evaluate=False keeps the spec's order and constants.
        left_add = a.args if isinstance(a, sp.Add) else (a,)
        left_mul = a.args if isinstance(a, sp.Mul) and not _is_neg(a) else (a,)
        return {"+": lambda: sp.Add(*left_add, b, evaluate=False),
                "-": lambda: sp.Add(*left_add, -b, evaluate=False),
                "*": lambda: sp.Mul(*left_mul, b, evaluate=False),
                "^": lambda: sp.Pow(a, b, evaluate=False)}[e.op]()
    if isinstance(e, ir.Index):
        return sp.Function("index")(display(e.base), *[sp.Symbol(ir.show(i)) for i in e.indices])
    if isinstance(e, ir.Call):
        args = [display(a) for a in e.args] + [sp.Eq(sp.Symbol(k.name), display(k.value)) for k in e.kwargs]
        return sp.Function(e.func)(*args)
    return sp.Symbol(ir.show(e))


def _is_neg(x: sp.Expr) -> bool:
    return isinstance(x, sp.Mul) and x.args and x.args[0] == -1


class BilLatexPrinter(LatexPrinter):
    """LaTeX for the stdlib's common functions in standard notation."""

    def _print_Function(self, expr, exp=None):
        # sympy passes the exponent in when printing ``f(x)**k``.
        body = self._function(expr)
        return r"\left(%s\right)^{%s}" % (body, exp) if exp is not None else body

    def _function(self, expr):
        name = expr.func.__name__
        a = [self._print(x) for x in expr.args]
        if name == "sumsq" and len(a) == 1:
            return r"\left\|%s\right\|_2^{2}" % a[0]
        if name == "norm" and len(a) == 1:
            return r"\left\|%s\right\|_2" % a[0]
        if name == "sum" and len(a) == 1:
            return r"\sum \left(%s\right)" % a[0]
        if name == "mean" and len(a) == 1:
            return r"\operatorname{mean}\left(%s\right)" % a[0]
        if name == "matmul":
            return " ".join(self.parenthesize(x, 50) for x in expr.args)
        if name == "index":
            return r"%s_{%s}" % (a[0], ",".join(a[1:]))
        if name in ("dx", "dy"):
            return r"\nabla_{%s} %s" % (name[1], self.parenthesize(expr.args[0], 60))
        if name == "tv" and len(a) >= 1:
            return r"\operatorname{TV}_{%s}\left(%s\right)" % (a[1] if len(a) > 1 else "", a[0])
        if name in ("exp", "log", "sqrt", "abs") and len(a) == 1:
            # sympy's own printers (sqrt is a Pow, not a Function), unevaluated.
            f = {"exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs}[name]
            return self._print(f(expr.args[0], evaluate=False))
        return r"\operatorname{%s}\left(%s\right)" % (name.replace("_", r"\_"), ", ".join(a))

    def _print_Symbol(self, expr, style="plain"):
        name = expr.name
        if name.startswith('"'):
            return r"\text{%s}" % name
        base, sups, subs = split_super_sub(name)
        if len(base) > 1 and translate(base) == base and base.isidentifier():
            # a multi-letter name (Xtr, lr, clean) is one symbol, not a product of letters;
            # Greek names (alpha, nu) keep sympy's \alpha, \nu
            tex = r"\mathrm{%s}" % base
            if subs:
                tex += "_{%s}" % " ".join(translate(t) for t in subs)
            if sups:
                tex += "^{%s}" % " ".join(translate(t) for t in sups)
            return tex
        return super()._print_Symbol(expr, style)


def latex(e: ir.Expr) -> str:
    # order="none": terms and factors print in the order the spec wrote them.
    return BilLatexPrinter(dict(order="none")).doprint(display(e))
