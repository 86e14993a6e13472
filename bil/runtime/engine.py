"""The hypergradient engine: jitted oracles for one lowered program.

:class:`Engine` implements :class:`bil.runtime.oracles.AbstractOracles`; each job
lives in a module named for it, mixed in here:

* :mod:`bil.runtime.batching`: per-sample F, G, vmapped maps, the jit cache;
* :mod:`bil.runtime.lower_solve`: the lower solve (tolerances per sample, caps);
* :mod:`bil.runtime.train`: a ``train`` goal's procedure;
* :mod:`bil.runtime.adjoint`: the adjoint solve (CG, direct, Neumann);
* :mod:`bil.runtime.hypergrad`: implicit hypergradients and upper values;
* :mod:`bil.runtime.unroll`: unrolled hypergradients;
* :mod:`bil.runtime.constants`: μ and the other constants, the accuracy floor;
* :mod:`bil.runtime.failures`: failed solves as located errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bil.runtime.lowered import Lowered
from bil.runtime.adjoint import Adjoint, reduced_operator
from bil.runtime.batching import Batching
from bil.runtime.constants import ConstantEstimates
from bil.runtime.failures import SolveFailures
from bil.runtime.hypergrad import Hypergradients
from bil.runtime.lower_solve import LowerSolve, Solved, _cap, _scalar
from bil.runtime.oracles import AbstractOracles
from bil.runtime.train import Training
from bil.runtime.unroll import Unrolling
from bil.stdlib.methods import IMPLICIT_METHODS, Direct, Fista

__all__ = ["Engine", "Solved", "reduced_operator", "IMPLICIT_METHODS", "_cap", "_scalar"]


class Engine(Batching, LowerSolve, Training, Adjoint, Hypergradients, Unrolling, ConstantEstimates, SolveFailures,
             AbstractOracles):
    """Oracles of a lowered program (see :class:`bil.runtime.oracles.AbstractOracles`)."""

    def __init__(self, low: Lowered):
        self.low = low
        opts = low.options
        self.solver = opts["lower"].get("solver")
        self.max_iter = int(opts["lower"]["max_iter"])
        self.method = opts["solve"]["hypergradient"]
        self.n = low.n_samples or 1
        self.u0 = low.transform.from_user(low.theta0)
        #: the strong-convexity modulus the spec gives (``fista(mu=..)``), else None
        self.mu_given = None
        if isinstance(self.solver, Fista) and self.solver.mu:
            self.mu_given = float(self.solver.mu)
        self._mu = self.mu_given  # given, or estimated by mu() at θ₀, then by constants() as θ moves
        self._mu0 = None          # the estimate at θ₀ (set_strong_convexity(None) returns to it)
        self._jitted: dict = {}
        #: a training procedure's value and hypergradient do not depend on ε, δ
        self.exact = low.optimizer is not None

    def to_user(self, u):
        return {k: np.asarray(v) for k, v in self.low.transform.to_user(u).items()}

    def init_lower(self, u):
        fn = self._jit("init", lambda u, d: self.X_init(self.low.transform.to_user(u), d))
        return fn(u, self.low.data)

    def init_lower_user(self, theta):
        """The lower variables' initial values at hypers in user coordinates (jitted)."""
        return self._jit("init_user", self.X_init)(theta, self.low.data)

    def init_adjoint(self, x):
        """Zeros like ``x``, made once per shape structure (arrays are immutable: sharing is safe;
        a fresh ``zeros_like`` per call cost ~0.1 ms of dispatch per hypergradient on ridge)."""
        key = jax.tree.structure(x), tuple((jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(x))
        cache = self.__dict__.setdefault("_zeros", {})
        if key not in cache:
            cache[key] = jax.tree.map(_zeros_like, x)
        return cache[key]

    def row_costs(self) -> tuple[int, int]:
        """Sample gradients of one full lower gradient and of one full upper gradient: the rows
        of the ``sampled`` data each objective averages over (1 for one without)."""
        rows = self.low.rows
        if rows is None:
            return 1, 1
        return (sum(rows.row_counts[g] for g in rows.lower_groups) or 1,
                sum(rows.row_counts[g] for g in rows.upper_groups) or 1)

    def factor_cost(self) -> int:
        """Hessian-vector products one lower solve spends forming the dense Hessian: one per lower
        variable (of one sample) with ``direct``, else 0 (the cost axis, docs/ALGORITHMS.md)."""
        if not isinstance(self.solver, Direct):
            return 0
        shapes = jax.eval_shape(self.init_lower, self.u0)
        return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) // max(self.n, 1)

    def log_hypers(self) -> dict:
        return {n: how == "exp" for n, (how, _) in self.low.transform.maps.items()}


def _zeros_like(a):
    """Zeros like ``a`` (its shape, dtype and placement), made on the host and placed: a
    ``jnp.zeros_like`` compiles two small programs the first time."""
    if isinstance(a, jax.core.Tracer):
        return jnp.zeros_like(a)
    sharding = getattr(a, "sharding", None)
    # laid out over several devices: the same layout; else uncommitted, as zeros_like makes them
    # (a committed argument is another jit cache entry: the oracles would compile twice)
    if sharding is None or len(sharding.device_set) < 2:
        sharding = None
    return jax.device_put(np.zeros(jnp.shape(a), jnp.result_type(a)), sharding)
