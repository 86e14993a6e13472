"""The dependency graph of a checked program as text (one node per line) or Graphviz dot (``bil graph``)."""

from __future__ import annotations

import networkx as nx

from bil.compiler.state import CompileState


def dump_graph(st: CompileState, fmt: str = "text") -> str:
    """Nodes in a fixed (lexicographic topological) order with their kind, level and dependencies."""
    g = st.graph
    order = list(nx.lexicographical_topological_sort(g))
    if fmt == "dot":
        shapes = {"data": "cylinder", "hyper": "diamond", "lower_var": "ellipse", "def": "note",
                  "lower": "box", "upper": "doubleoctagon"}
        lines = [f'digraph "{st.problem}" {{', "  rankdir=LR;"]
        for n in order:
            a = g.nodes[n]
            lines.append(f'  "{n}" [shape={shapes.get(a.get("kind"), "box")}, '
                         f'label="{n}\\n{a.get("kind")} / {a.get("level", "?")}"];')
        for u, v in sorted(g.edges):
            lines.append(f'  "{u}" -> "{v}";')
        lines.append("}")
        return "\n".join(lines) + "\n"
    lines = []
    for n in order:
        a = g.nodes[n]
        deps = sorted(g.predecessors(n))
        lines.append(f"{n} [{a.get('kind')}, {a.get('level', '?')}] <- {', '.join(deps) if deps else '-'}")
    return "\n".join(lines) + "\n"
