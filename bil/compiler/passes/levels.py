"""Level analysis on the dependency graph (networkx reachability).

Every symbol gets a level: ``const`` (depends on nothing: data, defs of data),
``theta`` (depends on hypers only) or ``lower`` (depends on lower variables).
Const sub-expressions were already hoisted by :class:`HoistConstants`; theta
ones are left to XLA's loop-invariant code motion inside the solver loops.
Also warns about a hyper that cannot influence the upper objective, and
rejects a ``minimize`` goal that leaves a lower variable out (its minimiser,
and so the hypergradient, would be undefined).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from bil.core import ir
from bil.core.errors import BilError, BilUsageError, Warning_
from bil.compiler.passes.resolve import LOWER_NODE, UPPER_NODE
from bil.compiler.state import CONST, LOWER, THETA, CompileState
from bil.stdlib import closest

_ORDER = {CONST: 0, THETA: 1, LOWER: 2}


@dataclass(frozen=True)
class Levels:
    name: str = "levels"

    def apply(self, st: CompileState) -> None:
        g = st.graph
        base = {"data": CONST, "hyper": THETA, "lower_var": LOWER}
        for n in nx.topological_sort(g):
            kind = g.nodes[n].get("kind")
            if kind in base:
                level = base[kind]
            else:
                preds = [st.levels[p] for p in g.predecessors(n) if p in st.levels]
                level = max(preds, key=_ORDER.get, default=CONST)
            st.levels[n] = level
            g.nodes[n]["level"] = level
        if not st.is_train:
            used = ir.free_names(st.goal)
            for v in st.lower.vars:
                if v.name not in used:
                    raise BilError(f"lower variable `{v.name}` does not appear in the lower objective, so its "
                                   "minimiser is undefined", v.span,
                                   f"use `{v.name}` in the `minimize` expression, or remove it")
        # Which hypers move the upper value?  For an argmin, a lower variable's
        # initial value does not change x*(θ), so those edges do not count;
        # for a training procedure it does.
        view = g
        if not st.is_train:
            init_edges = [(h, v.name) for v in st.lower.vars for h in ir.free_names(v.init) if g.has_edge(h, v.name)]
            view = nx.restricted_view(g, [], init_edges)
        reach = nx.ancestors(view, UPPER_NODE)
        via_init = nx.ancestors(g, UPPER_NODE) - reach
        for h in st.hypers.values():
            if h.name not in reach:
                where = ("it only sets a lower variable's initial value, which does not change the minimiser"
                         if h.name in via_init else
                         "it appears neither in the upper objective nor in the lower problem")
                st.warnings.append(Warning_(f"hyper `{h.name}` does not affect the upper objective", h.node.span,
                                            f"{where}; its hypergradient is 0"))
        # an array given from Python (`bil.compile(..., data=...)`) under a name the spec never
        # uses is a typo more often than not: it would be ignored and the run use other data
        bound = {n for d in st.data_stmts for n in d.names}
        for n in st.data_override:
            if n not in bound and g.has_node(n) and g.out_degree(n) == 0:
                names = sorted(bound | {k for k in st.data_override if k != n})
                guess = closest(n, names)
                raise BilUsageError(f"`{n}` given in `data=` is not used by the spec", None,
                                    (f"did you mean `{guess}`? " if guess else "")
                                    + ("the spec's data names: " + ", ".join(names) if names else
                                       "the spec has no data names"))
        if not any(v.name in reach for v in st.lower.vars):
            st.warnings.append(Warning_("the upper objective does not depend on the lower variables", st.upper.span,
                                        "then the lower problem plays no part: the hypergradient is ∂f/∂θ "
                                        "alone; use the lower variables in `upper minimize ...`"))
        st.structure["hypers_in_lower"] = sorted(h for h in st.hypers if nx.has_path(g, h, LOWER_NODE))
        st.structure["hypers_in_upper"] = sorted(h for h in st.hypers if g.has_edge(h, UPPER_NODE) or any(
            g.has_edge(h, d) and nx.has_path(g, d, UPPER_NODE) and g.nodes[d]["kind"] == "def" for d in g.successors(h)))
