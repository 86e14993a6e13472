"""The ``adaptive`` outer method's options (a module of its own beside ``methods.py``).

Registered like every method (:func:`bil.stdlib.methods.register_method`); the loop is
:mod:`bil.runtime.outer.adaptive_loop`, the rule and its derivation docs/ALGORITHMS.md,
"adaptive: growing minibatches".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from bil.stdlib.method_options import MethodOptions, OptionError, count, fraction, positive
from bil.stdlib.methods import register_method

__all__ = ["AdaptiveOuter"]


@register_method("adaptive", kind="outer")
@dataclass(frozen=True)
class AdaptiveOuter(MethodOptions):
    """Stochastic, no step-size grid: L-BFGS steps with Armijo backtracking on a minibatch problem
    whose batch grows when the estimated sampling error of the hypergradient exceeds `theta`·‖z‖;
    lower and adjoint solves stop at `kappa` × their sampling noise.  Needs `sampled` data.

    `batch0`: first batch (rows of the largest lower row group; others in proportion).
    `replicates`: disjoint sub-batches whose hypergradients estimate the sampling variance.
    `c1`, `rho`, `max_backtracks`: the Armijo test and backtracking.  `step0`: length of the
    first step (unconstrained coordinates), `max_step` the trust region.  `tol`: stop when the
    batch is every row and ‖z‖ ≤ tol.  `seed`: the row permutation (same seed, same run).
    `budget`: total sample gradients, as in `soba`."""

    stochastic: ClassVar[bool] = True   # needs `sampled` data (checked by the compiler)

    batch0: int = 1024
    theta: float = 0.5
    kappa: float = 0.5
    replicates: int = 4
    c1: float = 1e-4
    rho: float = 0.5
    max_backtracks: int = 8
    step0: float = 1.0
    max_step: float = 4.0
    memory: int = 10
    tol: float = 1e-8
    max_iter: int = 200
    budget: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        count(self, "batch0", "memory", "max_iter")
        count(self, "max_backtracks", least=0)
        count(self, "replicates", least=2)
        count(self, "seed", least=0)
        positive(self, "theta", "kappa", "c1", "step0", "max_step", "tol", "budget")
        fraction(self, "rho")
        if not self.c1 < 0.5:
            raise OptionError(f"`c1` must be < 0.5 (an Armijo constant), got {self.c1:g}", arg="c1")
