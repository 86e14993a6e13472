"""Compiled minibatch operations of the adaptive stochastic outer loop (``adaptive``).

A *row problem* is a bilevel problem whose lower objective is the mean over the
rows of ``inner`` of ``g_row(x, u, row)`` and whose upper objective is the mean over
the rows of ``outer`` of ``f_row(x, u, row)`` (a share of a regulariser may sit in
every row).  The rows are permuted once with the run's seed; a batch of size b is
the first b rows (nested batches: growing a batch adds rows, so every solve on the
new batch is warm-started close to its solution).  Each operation is jitted once
per batch size; the batch sizes are b₀·2ʲ (and n), so a run compiles O(log n/b₀)
times.  Sample-gradient cost is counted per row: a lower gradient, a Hessian-vector
product, a cross-derivative product and an upper gradient of one row each count 1.
Derivation and rules: docs/ALGORITHMS.md, "adaptive: growing minibatches".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import math

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bil.runtime.linear import cg
from bil.runtime.solvers import lbfgs

__all__ = ["RowProblem", "BatchOps", "first_rows", "tree_norm"]


def tree_norm(t):
    return jnp.sqrt(otu.tree_vdot(t, t))


def first_rows(data, frac: float):
    """The first ⌈frac·N⌉ rows of every leaf of ``data`` (N its row count; a static slice)."""
    if data is None:
        return None
    return jax.tree_util.tree_map(lambda a: a[: max(1, min(a.shape[0], math.ceil(frac * a.shape[0] - 1e-9)))], data)


@dataclass(frozen=True)
class RowProblem:
    """Minibatch lower and upper objectives over two row sets (see the module docstring).

    ``g(x, u, rows)`` and ``f(x, u, rows)`` are the objectives on a batch ``rows``: a pytree
    whose leaves have a leading row axis (the data rows themselves, or row indices into
    them); every leaf of ``inner`` (``outer``) lists all rows of the lower (upper) set.  A
    batch holds the same fraction of every leaf's rows.  ``outer`` is None when the upper
    objective reads no sampled rows (then ``f`` ignores its batch)."""

    g: Callable[[Any, Any, Any], Any]
    f: Callable[[Any, Any, Any], Any]
    inner: Any
    outer: Any
    x0: Any
    u0: Any

    @classmethod
    def from_rows(cls, g_row, f_row, inner, outer, x0, u0) -> "RowProblem":
        """A problem whose objectives are the means of per-row losses ``g_row(x, u, row)``."""
        return cls(_mean_loss(g_row), _mean_loss(f_row), inner, outer, x0, u0)

    @property
    def n(self) -> int:
        return _count(self.inner)

    @property
    def m(self) -> int:
        return _count(self.outer) if self.outer is not None else 0


def _count(data) -> int:
    return max(int(a.shape[0]) for a in jax.tree_util.tree_leaves(data))


def _mean_loss(row_fn):
    def loss(x, u, rows):
        return jnp.mean(jax.vmap(row_fn, in_axes=(None, None, 0))(x, u, rows))
    return loss


def _one_row(row):
    """A batch of the single row ``row`` (its leaves get a leading axis of 1)."""
    return jax.tree_util.tree_map(lambda a: a[None], row)


class BatchOps:
    """The jitted batch operations of one :class:`RowProblem` (cached per batch size)."""

    def __init__(self, problem: RowProblem, *, lower_max_iter: int = 1000, cg_max_iter: int = 1000,
                 memory: int = 10):
        self.p = problem
        self.g, self.f = problem.g, problem.f
        self.lower_max_iter, self.cg_max_iter, self.memory = lower_max_iter, cg_max_iter, memory
        self._solve = jax.jit(self._solve_impl)
        self._adjoint = jax.jit(self._adjoint_impl)
        self._spread = jax.jit(self._spread_impl)
        self._value = jax.jit(lambda x, u, rows_out: self.f(x, u, rows_out))

    # ---- lower solve on a batch: ‖∇ₓg_S(x)‖ ≤ tol
    def _solve_impl(self, u, x0, rows_in, tol):
        fun = lambda x, p: self.g(x, p[0], p[1])  # noqa: E731
        r = lbfgs(fun, x0, (u, rows_in), tol, self.lower_max_iter, memory=self.memory)
        return r.x, r.iters, r.status

    # ---- adjoint on a batch: ‖H_S v − ∇ₓf_T‖ ≤ tol, then z = ∇θf_T − J_Sᵀv and f_T
    def _adjoint_impl(self, u, x, v0, rows_in, rows_out, tol):
        gx = lambda xx: jax.grad(self.g, 0)(xx, u, rows_in)  # noqa: E731
        mv = lambda w: jax.jvp(gx, (x,), (w,))[1]  # noqa: E731
        fval, (fx, fu) = jax.value_and_grad(self.f, (0, 1))(x, u, rows_out)
        r = cg(mv, fx, v0, tol, self.cg_max_iter)
        jtv = jax.grad(lambda uu: otu.tree_vdot(jax.grad(self.g, 0)(x, uu, rows_in), r.x))(u)
        z = otu.tree_sub(fu, jtv)
        return fval, z, r.x, r.iters, r.status

    # ---- per-row spreads at (x, v): traces of the per-row covariances of ∇ₓg_i, H_i v and ∇ₓf_j
    def _spread_impl(self, u, x, v, rows_in, rows_out):
        def row_in(row):
            gi = lambda xx: jax.grad(self.g, 0)(xx, u, _one_row(row))  # noqa: E731
            g, hv = jax.jvp(gi, (x,), (v,))
            return g, hv

        def row_out(row):
            return jax.grad(self.f, 0)(x, u, _one_row(row))

        g, hv = jax.vmap(row_in)(rows_in)
        vfx = _trace_cov(jax.vmap(row_out)(rows_out)) if rows_out is not None else jnp.zeros(())
        return _trace_cov(g), _trace_cov(hv), vfx

    # ---- host-facing calls
    def rows(self, frac: float):
        """The batch holding the fraction ``frac`` of the (permuted) rows: (lower rows, upper rows)."""
        return first_rows(self.inner_perm, frac), first_rows(self.outer_perm, frac)

    def block(self, frac: float, j: int, k: int):
        """The j-th of k equal disjoint blocks of the batch ``rows(frac)`` (lower rows, upper rows)."""
        def cut(data):
            if data is None:
                return None

            def leaf(a):
                size = max(1, min(a.shape[0], math.ceil(frac * a.shape[0] - 1e-9))) // k
                return a[j * size:(j + 1) * size]
            return jax.tree_util.tree_map(leaf, data)
        return cut(self.inner_perm), cut(self.outer_perm)

    def permute(self, seed: int) -> None:
        """Permute the rows of every leaf once with ``seed`` (batches are then prefixes)."""
        key = jax.random.PRNGKey(int(seed))

        def shuffle(data, key):
            if data is None:
                return None
            leaves, tree = jax.tree_util.tree_flatten(data)
            keys = jax.random.split(key, len(leaves))
            # leaves of one row count share one permutation (their rows stay aligned)
            perms = {}
            out = []
            for a, kk in zip(leaves, keys):
                nrow = int(a.shape[0])
                if nrow not in perms:
                    perms[nrow] = jax.random.permutation(kk, nrow)
                out.append(a[perms[nrow]])
            return jax.tree_util.tree_unflatten(tree, out)

        k_in, k_out = jax.random.split(key)
        self.inner_perm = shuffle(self.p.inner, k_in)
        self.outer_perm = shuffle(self.p.outer, k_out)


def _trace_cov(a):
    """tr Cov over the leading axis (unbiased), for a pytree of per-row values."""
    leaves = jax.tree_util.tree_leaves(a)
    n = leaves[0].shape[0]
    tot = sum(jnp.sum((l - jnp.mean(l, axis=0)) ** 2) for l in leaves)
    return tot / max(n - 1, 1)
