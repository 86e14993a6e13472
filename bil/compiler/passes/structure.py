"""Detect structure the runtime can exploit; today: a lower objective that is
quadratic in the lower variables (then one linear solve is exact: the ``direct``
and ``cg`` lower solvers).  Uses the sound degree bound of :mod:`bil.compiler.degree`."""

from __future__ import annotations

from dataclasses import dataclass

from bil.compiler.degree import degree
from bil.compiler.state import CompileState


@dataclass(frozen=True)
class DetectStructure:
    name: str = "detect-structure"

    def apply(self, st: CompileState) -> None:
        deg = degree(st.goal, st.lower_vars)
        st.structure["lower_degree"] = deg
        st.structure["lower_quadratic"] = deg is not None and deg <= 2
        deg_u = degree(st.upper_expr, st.lower_vars)
        st.structure["upper_quadratic"] = deg_u is not None and deg_u <= 2
