"""Name resolution and the dependency graph.

Names resolve, in order, to lower variables, hypers, data, defs (and a def's
own parameters inside its body), then the standard library.  Every resolved
reference becomes an edge ``dependency -> user`` of the networkx graph, which
later passes use for cycles, levels and reachability.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.state import CompileState
from bil.stdlib import closest, lookup, names

#: graph node names for the blocks
LOWER_NODE, UPPER_NODE = "<lower>", "<upper>"


def kind_of(node) -> str:
    return {ir.Data: "data", ir.Hyper: "hyper", ir.LowerVar: "lower_var", ir.Def: "def"}[type(node)]


@dataclass(frozen=True)
class Resolve:
    name: str = "resolve"

    def apply(self, st: CompileState) -> None:
        g = st.graph
        for n, node in st.symbols.items():
            g.add_node(n, kind=kind_of(node), node=node)
        g.add_node(LOWER_NODE, kind="lower", node=st.lower)
        g.add_node(UPPER_NODE, kind="upper", node=st.upper)

        # data: constants only; may use earlier data and defs
        for d in st.data_stmts:
            for e in [d.expr]:
                for dep in self._refs(st, e, allowed=("data", "def"), where="a `data` statement"):
                    for n in d.names:
                        g.add_edge(dep, n)
        for s in st.module.statements:
            if isinstance(s, ir.Hyper):
                exprs = [s.init] + self._domain_exprs(s.domain)
                for e in exprs:
                    for dep in self._refs(st, e, allowed=("data", "def"), where="a hyper's initial value or domain",
                                          hint="a hyper's initial value must be a constant"):
                        g.add_edge(dep, s.name)
            elif isinstance(s, ir.Def):
                for dep in self._refs(st, s.body, allowed=("data", "hyper", "lower_var", "def"),
                                      where="a def", local=set(s.params)):
                    g.add_edge(dep, s.name)
        lo = st.lower
        for v in lo.vars:
            for e in self._domain_exprs(v.domain):
                for dep in self._refs(st, e, allowed=("data", "def"), where="a domain"):
                    g.add_edge(dep, v.name)
            for dep in self._refs(st, v.init, allowed=("data", "hyper", "def"), where="a lower variable's initial value",
                                  hint="initial values may use data and hypers"):
                g.add_edge(dep, v.name)
        goal_exprs = [lo.goal.expr] + ([lo.goal.optimizer, lo.goal.steps] if isinstance(lo.goal, ir.Train) else [])
        for e in goal_exprs:
            if e is not goal_exprs[0] and _method_name(st, e):
                continue  # `with sgd for ...`: checked against the optimizer table later
            for dep in self._refs(st, e, allowed=("data", "hyper", "lower_var", "def"), where="the lower problem",
                                  calls_ok=(e is not goal_exprs[0])):
                for src in self._lower_inputs(g, dep, {v.name for v in lo.vars}):
                    g.add_edge(src, LOWER_NODE)
        # The lower variables are *defined* by the lower problem.
        for v in lo.vars:
            g.add_edge(LOWER_NODE, v.name)
        for opt in lo.options + st.upper.options + (st.solve.options if st.solve else ()):
            if not _method_name(st, opt.value):  # `hypergradient: unroll` names a method
                self._refs(st, opt.value, allowed=("data",), where="an option", calls_ok=True)
        for dep in self._refs(st, st.upper.expr, allowed=("data", "hyper", "lower_var", "def"), where="the upper objective"):
            g.add_edge(dep, UPPER_NODE)

        # Cycles: recursion among defs, or a lower variable's init using itself.
        # A plain copy in source order: a subgraph view iterates a set, whose
        # order (and so the reported cycle) would change from run to run.
        order = list(st.defs)
        defs_graph = nx.DiGraph()
        defs_graph.add_nodes_from(order)
        defs_graph.add_edges_from((u, v) for u in order for v in g.successors(u) if v in st.defs)
        try:
            cycle = [u for u, _ in nx.find_cycle(defs_graph)]
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            rank = {d: i for i, d in enumerate(order)}
            k = min(range(len(cycle)), key=lambda i: rank[cycle[i]])  # start at the first-defined def
            cycle = cycle[k:] + cycle[:k]
            first = cycle[0]
            path = " -> ".join(cycle + [first])
            raise BilError(f"recursive definition: {path}", st.defs[first].span,
                           "defs are inlined, so they cannot call themselves")

    @staticmethod
    def _lower_inputs(g, dep: str, lower_vars: set) -> set:
        """The inputs of the lower problem behind a name its goal uses.  The lower variables
        are bound by the argmin, not inputs to it; so is a def that uses them (it is inlined
        into the goal): its own inputs are the problem's inputs instead (an edge from the def
        would close a cycle def -> lower -> variable -> def)."""
        if dep in lower_vars:
            return set()
        if g.nodes[dep].get("kind") != "def" or not (nx.ancestors(g, dep) & lower_vars):
            return {dep}
        out: set = set()
        for p in g.predecessors(dep):
            out |= Resolve._lower_inputs(g, p, lower_vars)
        return out

    @staticmethod
    def _domain_exprs(dom) -> list:
        if dom is None:
            return []
        out = list(dom.shape or ())
        if dom.bounds:
            out += list(dom.bounds)
        return out

    def _refs(self, st: CompileState, e: ir.Expr, allowed, where: str, local=frozenset(), hint=None,
              calls_ok=False) -> set[str]:
        """Check every name and call in ``e`` (each on its own: its errors are recorded in
        ``st.diag``, and the others are still checked); return the user symbols it uses."""
        deps: set[str] = set()
        for node in ir.walk(e):
            with st.diag.guard():
                if isinstance(node, ir.Name) and node.id not in local:
                    deps.add(self._name(st, node, allowed, where, local, hint))
                    deps.discard(None)
                elif isinstance(node, ir.Call):
                    check_call_syntax(node)
                    if node.func in st.defs:
                        deps.add(node.func)
                        check_def_call(st.defs[node.func], node)
                    elif node.func in st.symbols:
                        raise BilError(f"`{node.func}` is not a function", node.name_span or node.span,
                                       "only defs and standard-library functions can be called")
                    elif lookup(node.func) is None and not calls_ok:
                        guess = closest(node.func, list(st.defs)) or closest(node.func, names())
                        raise BilError(f"unknown function `{node.func}`", node.name_span or node.span,
                                       f"did you mean `{guess}`?" if guess else "see the standard library in the README")
                    elif not calls_ok:
                        check_signature(lookup(node.func), node)
        return deps

    @staticmethod
    def _name(st: CompileState, node: ir.Name, allowed, where: str, local, hint) -> str | None:
        """The user symbol ``node`` names, if it may be used here (None: an unknown name,
        reported at its first use only)."""
        sym = st.symbols.get(node.id)
        if sym is None:
            if not st.diag.once(("unknown name", node.id)):
                return None
            if lookup(node.id) is not None:
                raise BilError(f"`{node.id}` is a function; call it with arguments", node.span,
                               f"e.g. `{node.id}(...)`")
            raise _unknown(st, node.id, node.span, local)
        kind = kind_of(sym)
        if kind == "def":
            raise BilError(f"`{node.id}` is a def; call it with arguments", node.span,
                           f"`def {node.id}({', '.join(sym.params)})`")
        if kind not in allowed:
            raise BilError(f"{_article(kind)} `{node.id}` cannot be used in {where}", node.span,
                           hint or f"only {', '.join(allowed)} may appear here")
        return node.id


def _method_name(st: CompileState, e: ir.Expr) -> bool:
    return isinstance(e, ir.Name) and e.id not in st.symbols


def check_call_syntax(call: ir.Call) -> None:
    """Keywords given once each, and after every positional argument."""
    seen: dict[str, ir.Keyword] = {}
    for k in call.kwargs:
        if k.name in seen:
            raise BilError(f"keyword argument `{k.name}` is given twice in the call to `{call.func}`", k.span,
                           "keep one of them")
        seen[k.name] = k
    if call.kwargs and call.args:
        first_kw = call.kwargs[0].span
        for a in call.args:
            if (a.span.line, a.span.column) > (first_kw.line, first_kw.column):
                raise BilError(f"positional argument after a keyword argument in the call to `{call.func}`", a.span,
                               "put positional arguments first, e.g. `sum(x, axis=0)`")


def check_def_call(d: ir.Def, call: ir.Call) -> None:
    """Raise a :class:`BilError` when ``call`` does not bind each parameter of ``def d`` once."""
    params = f"`def {d.name}({', '.join(d.params)})`"
    if len(call.args) > len(d.params):
        raise BilError(f"`{d.name}` takes {len(d.params)} argument(s) but {len(call.args)} were given", call.span,
                       f"{params} at line {d.span.line}")
    bound = set(d.params[: len(call.args)])
    for k in call.kwargs:
        if k.name not in d.params:
            guess = closest(k.name, list(d.params))
            raise BilError(f"`{d.name}` has no parameter `{k.name}`", k.span,
                           (f"did you mean `{guess}`? " if guess else "") + params)
        if k.name in bound:
            raise BilError(f"`{d.name}` got parameter `{k.name}` twice", k.span,
                           f"give each parameter once, by position or by keyword: {params}")
        bound.add(k.name)
    missing = [p for p in d.params if p not in bound]
    if missing:
        raise BilError(f"`{d.name}` is missing argument(s) {', '.join('`' + m + '`' for m in missing)}", call.span,
                       f"{params} at line {d.span.line}")


def check_signature(fn, call: ir.Call, what: str = "") -> None:
    """Raise a :class:`BilError` at the offending argument when ``call`` does
    not fit the registered signature of ``fn`` (arity, unknown keyword)."""
    import inspect

    params = fn.signature.parameters.values()
    label = what or f"`{call.func}`"
    hint = f"signature: {fn.describe()}"
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        for k in call.kwargs:
            if k.name not in named:
                guess = closest(k.name, named)
                raise BilError(f"{label} has no parameter `{k.name}`", k.span,
                               (f"did you mean `{guess}`? " if guess else "") + hint)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not any(p.kind == p.VAR_POSITIONAL for p in params) and len(call.args) > len(positional):
        n = len(positional)
        raise BilError(f"{label} takes {n} positional argument{'s' if n != 1 else ''} but {len(call.args)} "
                       f"were given", call.args[n].span, hint)
    for i, k in enumerate(call.kwargs):
        idx = [p.name for p in positional].index(k.name) if k.name in [p.name for p in positional] else None
        if idx is not None and idx < len(call.args):
            raise BilError(f"{label} got argument `{k.name}` twice (by position and by keyword)", k.span, hint)
    given = {p.name for p in positional[: len(call.args)]} | {k.name for k in call.kwargs}
    missing = [p.name for p in params if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in given]
    if missing:
        listed = ", ".join(f"`{m}`" for m in missing)
        raise BilError(f"{label} is missing argument{'s' if len(missing) > 1 else ''} {listed}", call.span, hint)


def _article(kind: str) -> str:
    return {"data": "data name", "hyper": "hyper", "lower_var": "lower variable", "def": "def"}[kind]


def _unknown(st: CompileState, name: str, span, local) -> BilError:
    """An unknown name; the hint suggests a name in scope (a def's parameter, then a lower
    variable, hyper, data name or def) before a standard-library function."""
    if name in ("True", "False"):
        return BilError(f"unknown name `{name}`", span, f"booleans are written `{name.lower()}`")
    guess = closest(name, list(local)) or closest(name, list(st.symbols)) or closest(name, names())
    return BilError(f"unknown name `{name}`", span, f"did you mean `{guess}`?" if guess else
                    "names must be declared by `data`, `hyper`, `def` or a lower variable before use "
                    "(data may also come from Python: `bil.compile(spec, data={...})`)")
