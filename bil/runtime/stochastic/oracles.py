"""Minibatch oracles of a program with ``sampled`` data: what a stochastic bilevel method asks for.

Every oracle is a pure JAX function (usable inside ``jit``/``lax.scan``) of

* ``x`` the lower variables (a dict name -> array, like the full-batch oracles' ``x``),
* ``u`` the hypers in *unconstrained* coordinates (``to_user`` maps back),
* ``v`` the linear-system variable, shaped like ``x``,
* ``idx`` a batch: a dict row group -> int32 array of row indices (:meth:`sample`,
  :meth:`all_rows`), repeats allowed.

With g_B and f_B the minibatch objectives (:mod:`bil.runtime.stochastic.rows`: means over
the batch's rows, sums scaled by N/B):

=================================  ==========================================  =============
oracle                             value                                       rows it costs
=================================  ==========================================  =============
``lower_value(x, u, idx)``         g_B(x, θ)                                   B_lower
``lower_grad(x, u, idx)``          ∇ₓg_B(x, θ)                                 B_lower
``lower_terms(x, u, v, idx)``      (∇ₓg_B, ∇²ₓₓg_B v, ∇²_ux g_B v)             3 B_lower
``upper_value(x, u, idx)``         f_B(x, θ)                                   B_upper
``upper_grads(x, u, idx)``         (∇ₓf_B, ∇_u f_B)                            B_upper
=================================  ==========================================  =============

∇_u is the derivative in unconstrained coordinates (the chain rule through ``to_user`` is
applied).  ``lower_terms`` is one forward and one reverse pass (a VJP of ∇ₓg_B in (x, u)
with cotangent v: the Hessian is symmetric).  :meth:`per_row` turns an oracle into one that
returns each row's value (stacked on a leading axis; SAGA-style memories need them).

Cost accounting (the ``sample_grads`` history column, docs/ALGORITHMS.md): a gradient,
Hessian-vector product or cross product of a minibatch objective on B rows counts B sample
gradients; a level whose objective uses no sampled data counts 1 per evaluation.
:meth:`rows` gives the count of a batch.  Sampling (:meth:`sample`) is uniform with
replacement, from ``jax.random`` keys: the same key gives the same batch on every run.
"""

from __future__ import annotations

import copy
from typing import Callable

import jax
import jax.numpy as jnp

from bil.runtime.lowered import Lowered

__all__ = ["StochasticOracles", "NotFiniteSum"]


class NotFiniteSum(ValueError):
    """The program cannot run a stochastic method (why in the message)."""


class StochasticOracles:
    """The minibatch oracles of a lowered program (see the module docstring)."""

    def __init__(self, low: Lowered):
        why = _unsupported(low)
        if why:
            raise NotFiniteSum(why)
        self.low = low
        self.data = low.data
        self.rows_of = low.rows
        self.u0 = low.transform.from_user(low.theta0)
        self.row_counts = dict(low.rows.row_counts)
        self.lower_groups = tuple(low.rows.lower_groups)
        self.upper_groups = tuple(low.rows.upper_groups)

    def at_data(self, d) -> "StochasticOracles":
        """These oracles reading the data ``d`` (``Lowered.data``'s structure): pass the data as
        an argument of a jitted function and call ``at_data`` inside, so that it is never baked
        into the compiled code as a constant."""
        other = copy.copy(self)
        other.data = d
        return other

    # ------------------------------------------------------------ coordinates
    def to_user(self, u: dict) -> dict:
        return self.low.transform.to_user(u)

    def x_init(self, u: dict):
        """The lower variables' initial values at ``u`` (full data)."""
        return self.low.x_init(self.to_user(u), self.data)

    # ---------------------------------------------------------------- batches
    def all_rows(self) -> dict:
        """The batch of every row of every group, once (a minibatch oracle on it is the full one)."""
        return {gr: jnp.arange(n, dtype=jnp.int32) for gr, n in self.row_counts.items()}

    def sample(self, key, batch: int, groups: tuple[str, ...] | None = None) -> dict:
        """``batch`` rows (at most N) of each group, uniformly with replacement; one sub-key per
        group (``jax.random.fold_in(key, i)``, i its position in ``row_counts``)."""
        out = {}
        for i, (gr, n) in enumerate(self.row_counts.items()):
            if groups is None or gr in groups:
                out[gr] = jax.random.randint(jax.random.fold_in(key, i), (min(batch, n),), 0, n, dtype=jnp.int32)
        return out

    def rows(self, idx: dict, level: str) -> int:
        """Sample gradients one oracle call of ``level`` ("lower" or "upper") on ``idx`` costs."""
        groups = self.lower_groups if level == "lower" else self.upper_groups
        return sum(int(idx[gr].shape[0]) for gr in groups) if groups else 1

    def full_rows(self, level: str) -> int:
        """Sample gradients one full-batch oracle call of ``level`` costs (Σ N over its groups, or 1)."""
        return self.rows(self.all_rows(), level)

    # ---------------------------------------------------------------- oracles
    def lower_value(self, x, u, idx):
        return self.rows_of.g(x, self.to_user(u), self.data, idx)

    def lower_grad(self, x, u, idx):
        return jax.grad(self.lower_value)(x, u, idx)

    def lower_terms(self, x, u, v, idx):
        """(∇ₓg_B, ∇²ₓₓg_B v, ∇²_ux g_B v) at (x, u): one VJP of ∇ₓg_B with cotangent v."""
        gx, back = jax.vjp(lambda x_, u_: self.lower_grad(x_, u_, idx), x, u)
        hv, jv = back(v)
        return gx, hv, jv

    def upper_value(self, x, u, idx):
        return self.rows_of.f(x, self.to_user(u), self.data, idx)

    def upper_grads(self, x, u, idx):
        """(∇ₓf_B, ∇_u f_B) at (x, u)."""
        return jax.grad(self.upper_value, argnums=(0, 1))(x, u, idx)

    def per_row(self, oracle: Callable, group: str) -> Callable:
        """``oracle`` as a function whose ``idx`` is a vector of rows of ``group`` and whose
        outputs have a leading axis: each row's own value (``oracle`` on a batch of that row)."""

        def rows_fn(*args):
            *head, idx = args
            return jax.vmap(lambda i: oracle(*head, {group: i[None]}))(idx)

        return rows_fn


def _unsupported(low: Lowered) -> str | None:
    """Why ``low`` cannot have minibatch oracles, or None."""
    if low.rows is None:
        return "the spec declares no `sampled` data: say which data rows the objectives average over"
    if low.optimizer is not None:
        return "the lower problem is a `train` procedure, not an objective to minimise"
    if low.bounds is not None:
        return "a lower variable is bounded (stochastic methods take plain gradient steps on the lower variables)"
    if low.nonsmooth is not None:
        return "the lower objective has non-smooth terms (stochastic methods take plain gradient steps)"
    return None
