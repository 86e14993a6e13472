"""An expression as LaTeX (``bil show --latex``): the IR as sympy Functions, printed by
a LaTeX printer that asks the stdlib registry for each function's form (``sumsq(e)``
registers ``\\|e\\|_2^2``; :mod:`bil.stdlib.rules`), ``\\operatorname{name}(...)`` otherwise.
Only display: whether an objective is quadratic is proved by :mod:`bil.compiler.degree`.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.conventions import split_super_sub
from sympy.printing.latex import LatexPrinter, translate

from bil.core import ir
from bil.stdlib import lookup

#: a template's placeholders: ``#1`` (the argument), ``#(1)`` (parenthesised as an operand)
_PLACEHOLDER = re.compile(r"#(\d)|#\((\d)\)")


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
        if name == "matmul":
            return " ".join(self.parenthesize(x, 50) for x in expr.args)
        a = [self._print(x) for x in expr.args]
        if name == "index":
            return r"%s_{%s}" % (a[0], ",".join(a[1:]))
        rule = latex_rule(name)
        if isinstance(rule, str):
            tex = self._template(rule, expr.args, a)
        else:
            tex = rule(a) if rule is not None else None
        if tex is not None:
            return tex
        return r"\operatorname{%s}\left(%s\right)" % (name.replace("_", r"\_"), ", ".join(a))

    def _template(self, template: str, args, printed: list[str]) -> str | None:
        """``template`` filled with the printed arguments when their number is its highest placeholder."""
        slots = [int(m.group(1) or m.group(2)) for m in _PLACEHOLDER.finditer(template)]
        if max(slots, default=0) != len(printed):
            return None

        def fill(m: re.Match) -> str:
            if m.group(1):
                return printed[int(m.group(1)) - 1]
            return self.parenthesize(args[int(m.group(2)) - 1], 60)   # a power's precedence

        return _PLACEHOLDER.sub(fill, template)

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


def latex_rule(name: str):
    """The LaTeX template or callable registered for the stdlib function ``name``, or None (default form)."""
    fn = lookup(name)
    return fn.latex if fn is not None else None


def latex(e: ir.Expr) -> str:
    """``e`` as LaTeX, in the order the spec wrote it."""
    # order="none": terms and factors print in the order the spec wrote them.
    return BilLatexPrinter(dict(order="none")).doprint(display(e))
