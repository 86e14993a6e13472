"""Inline every def call (defs are pure and non-recursive; Resolve checked that)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.state import CompileState


def substitute(e: ir.Expr, env: dict[str, ir.Expr]) -> ir.Expr:
    """Replace names bound in ``env`` (simultaneously; no re-substitution)."""
    if isinstance(e, ir.Name):
        return env.get(e.id, e)
    return _map_children(e, lambda c: substitute(c, env))


def inline(e: ir.Expr, defs: dict[str, ir.Def]) -> ir.Expr:
    """``e`` with every call to a def replaced by the def's body."""
    e = _map_children(e, lambda c: inline(c, defs))
    if isinstance(e, ir.Call) and e.func in defs:
        d = defs[e.func]
        if len(e.args) > len(d.params):
            raise BilError(f"`{d.name}` takes {len(d.params)} argument(s) but {len(e.args)} were given", e.span,
                           f"`def {d.name}({', '.join(d.params)})` at line {d.span.line}")
        bound = dict(zip(d.params, e.args))
        for k in e.kwargs:
            if k.name not in d.params:
                raise BilError(f"`{d.name}` has no parameter `{k.name}`", k.span,
                               f"`def {d.name}({', '.join(d.params)})`")
            if k.name in bound:
                raise BilError(f"`{d.name}` got parameter `{k.name}` twice", k.span,
                               f"give each parameter once, by position or by keyword: `def {d.name}({', '.join(d.params)})`")
            bound[k.name] = k.value
        missing = [p for p in d.params if p not in bound]
        if missing:
            raise BilError(f"`{d.name}` is missing argument(s) {', '.join('`'+m+'`' for m in missing)}", e.span,
                           f"`def {d.name}({', '.join(d.params)})` at line {d.span.line}")
        body = inline(d.body, defs)
        return substitute(body, bound)
    return e


def _map_children(e: ir.Expr, f) -> ir.Expr:
    if isinstance(e, ir.Unary):
        return replace(e, operand=f(e.operand))
    if isinstance(e, ir.Binary):
        return replace(e, left=f(e.left), right=f(e.right))
    if isinstance(e, ir.Call):
        return replace(e, args=tuple(f(a) for a in e.args),
                       kwargs=tuple(replace(k, value=f(k.value)) for k in e.kwargs))
    if isinstance(e, ir.Index):
        return replace(e, base=f(e.base), indices=tuple(f(i) for i in e.indices))
    if isinstance(e, ir.Slice):
        return replace(e, lo=e.lo and f(e.lo), hi=e.hi and f(e.hi), step=e.step and f(e.step))
    if isinstance(e, ir.TupleExpr):
        return replace(e, items=tuple(f(i) for i in e.items))
    if isinstance(e, ir.ListExpr):
        return replace(e, items=tuple(f(i) for i in e.items))
    return e


def _domain(dom, defs):
    if dom is None:
        return None
    return replace(dom, shape=dom.shape and tuple(inline(x, defs) for x in dom.shape),
                   bounds=dom.bounds and tuple(inline(x, defs) for x in dom.bounds))


@dataclass(frozen=True)
class Inline:
    name: str = "inline"

    def apply(self, st: CompileState) -> None:
        defs = st.defs
        st.data_stmts = [replace(d, expr=inline(d.expr, defs)) for d in st.data_stmts]
        for n, s in list(st.symbols.items()):
            if isinstance(s, ir.Hyper):
                st.symbols[n] = replace(s, init=inline(s.init, defs), domain=_domain(s.domain, defs))
        lo = st.lower
        vars_ = tuple(replace(v, init=inline(v.init, defs), domain=_domain(v.domain, defs)) for v in lo.vars)
        goal = lo.goal
        if isinstance(goal, ir.Minimize):
            goal = replace(goal, expr=inline(goal.expr, defs))
        else:
            goal = replace(goal, expr=inline(goal.expr, defs), optimizer=inline(goal.optimizer, defs),
                           steps=inline(goal.steps, defs))
        st.lower = replace(lo, vars=vars_, goal=goal)
        for v in vars_:
            st.symbols[v.name] = v
        st.goal = goal.expr
        st.upper_expr = inline(st.upper.expr, defs)
