"""Choose the lower solver from the detected structure, and check an explicit choice.

A lower objective proved quadratic (degree bound 2, :mod:`bil.compiler.degree`)
in unbounded lower variables is minimised by one linear solve: ``direct()``
(factor the Hessian; the adjoint reuses the factor) up to :data:`DIRECT_MAX_N`
variables per sample, matrix-free ``cg()`` above.  Anything else keeps the
default of :class:`~bil.compiler.passes.options.CheckOptions` (``lbfgs``, or
``fista`` with bounds).  ``direct``/``cg`` named on an objective not proved
quadratic is a compile-time error at the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bil.core.errors import BilError
from bil.compiler.state import CompileState
from bil.stdlib.methods import QUADRATIC_SOLVERS, make_method

#: the largest number of lower variables (per sample) for which ``direct`` is the default:
#: its Hessian is n×n (32 MB at 2000 in float64) and its factorisation n³/3 flops
DIRECT_MAX_N = 2000


def lower_size(st: CompileState) -> int:
    """Number of scalar lower variables per sample."""
    return sum(math.prod(v.shape) for v in st.lower_vars.values())


def _given(st: CompileState) -> bool:
    return any(o.key == "solver" for o in st.lower.options)


def _bounded(st: CompileState) -> bool:
    return any(v.bounds is not None for v in st.lower_vars.values())


@dataclass(frozen=True)
class ChooseSolver:
    name: str = "choose-solver"

    def apply(self, st: CompileState) -> None:
        if st.is_train:
            return
        solver = st.options["lower"]["solver"]
        quadratic = st.structure.get("lower_quadratic", False)
        if _given(st):
            if isinstance(solver, QUADRATIC_SOLVERS) and not quadratic:
                deg = st.structure.get("lower_degree")
                what = "not polynomial" if deg is None else f"of degree up to {deg}"
                raise BilError(f"`{solver.name}()` needs a lower objective quadratic in the lower variables; this one "
                               f"is {what}", solver.span,
                               "use an iterative solver (`lbfgs`, `newton_cg`, `fista(mu=..)`), or write the "
                               "objective as a quadratic (sums, products, sumsq, @, slices of the variables)")
            return
        if st.structure.get("lower_degree") == 2 and not _bounded(st):
            name = "direct" if lower_size(st) <= DIRECT_MAX_N else "cg"
            st.options["lower"]["solver"] = make_method("solver", name)


def solver_reason(st: CompileState) -> str:
    """Why the lower solver is the one it is (a line of ``bil show``)."""
    solver = st.options["lower"]["solver"]
    n = lower_size(st)
    if _given(st):
        return f"solved by {solver.show()} (given in the spec)"
    if solver.name == "direct":
        return (f"solved by direct(): one factorisation of the {n}×{n} Hessian is exact (n ≤ {DIRECT_MAX_N}); "
                "the adjoint reuses it")
    if solver.name == "cg":
        return f"solved by cg(): matrix-free CG on Hessian products ({n} variables > {DIRECT_MAX_N} for direct)"
    if st.structure.get("lower_degree") == 2 and _bounded(st):
        return f"solved by {solver.show()}: bounds on the lower variables need a projected method"
    return f"solved iteratively by {solver.show()} (the default)"
