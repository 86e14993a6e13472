"""Compiled minibatch operations of the adaptive stochastic outer loop (``adaptive``).

A *row problem* is a bilevel problem whose lower objective is the mean over the
rows of ``inner`` of ``g_row(x, u, row)`` and whose upper objective is the mean over
the rows of ``outer`` of ``f_row(x, u, row)`` (a share of a regulariser may sit in
every row).  The rows are permuted once with the run's seed (the data themselves, so
that a batch is a contiguous slice) and cut into Q equal *chunks*; a batch is a run
of consecutive chunks (the first k of them for the run's batches, nested: growing a
batch adds rows, so every solve on the new batch is warm-started close to its
solution), or every row.  The mean over a batch is the mean of its chunks' means, a
``lax.fori_loop`` whose start and length are arguments (the full batch adds the rows the
chunks leave over): each operation is compiled once per problem, whatever the batch
sizes a run goes through.
Sample-gradient cost is counted per row by the caller: a lower gradient, a
Hessian-vector product, a cross-derivative product and an upper gradient of one row
each count 1.  Derivation and rules: docs/ALGORITHMS.md, "adaptive: growing minibatches".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from jax.flatten_util import ravel_pytree

from bil.runtime.linear import CG_MAX_ITER, cg
from bil.runtime.quadratic import MAX_REFINE
from bil.runtime.solve_result import CONVERGED, MAX_ITER, NONFINITE
from bil.runtime.solvers import lbfgs

__all__ = ["RowProblem", "BatchOps", "Batch"]


@dataclass(frozen=True)
class RowProblem:
    """Minibatch lower and upper objectives over two row sets (see the module docstring).

    ``g(x, u, rows)`` and ``f(x, u, rows)`` are the objectives on a batch ``rows``: a pytree
    whose leaves have a leading row axis (the data rows themselves, with whatever else a
    row carries, e.g. its index); every leaf of ``inner`` (``outer``) lists all rows of the
    lower (upper) set.  A batch holds the same fraction of every leaf's rows.  ``outer`` is
    None when the upper objective reads no sampled rows (then ``f`` ignores its batch)."""

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


class Batch(NamedTuple):
    """Which rows an operation reads: ``count`` chunks of the lower rows from chunk ``start`` and
    ``ocount`` chunks of the upper rows from ``ostart``; or, with ``full``, every row.  ``rows`` and
    ``orows`` are the numbers of rows read (the cost of one pass)."""

    full: bool
    start: int
    count: int
    ostart: int
    ocount: int
    rows: int
    orows: int


class _Chunks:
    """One row set cut into ``q`` chunks: every leaf's rows are permuted, then leaf ℓ's chunk j
    is its rows [j·cℓ, (j+1)·cℓ) (cℓ = Nℓ // q).  The Nℓ − q·cℓ rows left over are read only
    by the full batch: as a last block of the loop's mean when every leaf has the same row
    count (``uniform``), else by a program of its own over all rows."""

    def __init__(self, data, q: int):
        self.data = data
        self.q = q
        self.sizes = jax.tree_util.tree_map(lambda a: int(a.shape[0]) // q, data)
        self.n = _count(data)
        self.chunk = self.n // q
        self.uniform = len({int(a.shape[0]) for a in jax.tree_util.tree_leaves(data)}) == 1
        self.rest = self.n - q * self.chunk if self.uniform else 0

    def take(self, data, j):
        return jax.tree_util.tree_map(lambda a, c: jax.lax.dynamic_slice_in_dim(a, j * c, c), data, self.sizes)

    def mean(self, fn, data, start, count, rest=None):
        """The mean over the rows of chunks [start, start + count) of ``fn`` (a mean over the rows
        it is given: a pytree of arrays), and of the left-over rows where ``rest`` (traced 0/1)."""
        shape = jax.eval_shape(fn, self.take(data, 0))
        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)

        def body(j, acc):
            return jax.tree_util.tree_map(jnp.add, acc, fn(self.take(data, j)))

        tot = jax.lax.fori_loop(start, start + count, body, zero)
        if rest is None or self.rest == 0:
            return jax.tree_util.tree_map(lambda t: t / count, tot)
        left = jax.tree_util.tree_map(lambda a: a[self.q * self.chunk:], data)
        extra = jax.lax.cond(rest > 0, lambda: fn(left), lambda: zero)
        c, r = float(self.chunk), float(self.rest) * rest
        return jax.tree_util.tree_map(lambda t, e: (c * t + r * e) / (c * count + r), tot, extra)


class BatchOps:
    """The jitted batch operations of one :class:`RowProblem` (see the module docstring).

    ``chunk`` is the number of lower rows per chunk (batches hold whole chunks).  ``direct``
    (a lower objective proved quadratic, whose spec solves it with ``direct()``): a batch
    solve that L-BFGS has not finished within n_x iterations (what forming the batch's
    Hessian costs: n_x products per row) forms that Hessian and takes Newton steps with its
    Cholesky factor, refined on the batch's true gradient; an adjoint CG not finished within
    n_x iterations restarts from the factor's solution.  So a batch solve costs at most about
    twice the cheaper of the two, and an ill-conditioned batch (penalties learned towards 0)
    no longer takes thousands of L-BFGS iterations."""

    def __init__(self, problem: RowProblem, *, chunk: int = 256, lower_max_iter: int = 1000,
                 cg_max_iter: int = 1000, memory: int = 10, direct: bool = False):
        self.p = problem
        self.direct = bool(direct)
        #: Hessian-vector products per row of forming a batch's Hessian (n_x)
        self.factor_passes = int(ravel_pytree(problem.x0)[0].shape[0])
        self.g, self.f = problem.g, problem.f
        self.lower_max_iter, self.cg_max_iter, self.memory = lower_max_iter, cg_max_iter, memory
        n = problem.n
        leaves = jax.tree_util.tree_leaves(problem.inner)
        q = max(1, min(n // max(1, min(int(chunk), n)), min(int(a.shape[0]) for a in leaves)))
        self.q = q
        self.chunk = n // q
        self.inner_chunks = _Chunks(problem.inner, q)
        if problem.outer is not None:
            m_leaves = jax.tree_util.tree_leaves(problem.outer)
            self.oq = max(1, min(q, min(int(a.shape[0]) for a in m_leaves)))
            self.outer_chunks = _Chunks(problem.outer, self.oq)
        else:
            self.oq, self.outer_chunks = 0, None
        self.seed = None
        jit = partial(jax.jit, static_argnames=("full",))
        self._trial = jit(self._trial_impl)
        self._adjoint = jit(self._adjoint_impl)
        self._spread = jit(self._spread_impl)

    # ---- batches
    def batch(self, count: int, start: int = 0) -> Batch:
        """``count`` lower chunks from ``start`` (every row when they are all of them), the upper rows in
        the same proportion."""
        if start == 0 and count >= self.q:
            return Batch(True, 0, self.q, 0, self.oq, self.p.n, self.p.m)
        o0 = (start * self.oq) // self.q
        o1 = max(o0 + 1, ((start + count) * self.oq) // self.q) if self.oq else 0
        return Batch(False, start, count, o0, o1 - o0, count * self.chunk,
                     (o1 - o0) * self.outer_chunks.chunk if self.oq else 0)

    def permute(self, seed: int) -> None:
        """Permute the rows of every leaf once with ``seed`` (batches are then runs of chunks); the
        leaves of one row count share one permutation (their rows stay aligned)."""
        if self.seed == int(seed):
            return
        rng = np.random.default_rng([int(seed), 0x6164])   # host-side: nothing to compile

        def shuffle(data):
            if data is None:
                return None
            leaves, tree = jax.tree_util.tree_flatten(data)
            perms, out = {}, []
            for a in leaves:
                nrow = int(a.shape[0])
                if nrow not in perms:
                    perms[nrow] = rng.permutation(nrow)
                out.append(jnp.asarray(np.asarray(a)[perms[nrow]]))
            return jax.tree_util.tree_unflatten(tree, out)

        self.inner_perm = shuffle(self.p.inner)
        self.outer_perm = shuffle(self.p.outer)
        self.seed = int(seed)

    # ---- means over a batch (``full``: the separate program over every row, only for a set whose
    #      leaves have several row counts; otherwise the full batch is the loop's with ``b.rest``)
    def _lower_mean(self, fn, rows, b: Batch, full: bool):
        if full:
            return fn(rows)
        return self.inner_chunks.mean(fn, rows, b.start, b.count, b.rest)

    def _upper_mean(self, fn, rows, b: Batch, full: bool):
        if rows is None:
            return fn(None)
        if full:
            return fn(rows)
        return self.outer_chunks.mean(fn, rows, b.ostart, b.ocount, b.rest)

    def _static_full(self, b: Batch) -> bool:
        """Does ``b`` need the program over every row (a set whose leaves differ in row count)?"""
        sets = [self.inner_chunks] + ([self.outer_chunks] if self.outer_chunks is not None else [])
        return b.full and not all(c.uniform for c in sets)

    def _lower_fun(self, u, rows, b, full):
        """g_S(·, u) as a function of x with a reverse-mode rule (the mean over chunks is a loop
        of dynamic length, which JAX cannot differentiate in reverse by itself)."""

        @jax.custom_vjp
        def fun(x):
            return self._lower_mean(lambda r: self.g(x, u, r), rows, b, full)

        def fwd(x):
            val, grad = self._lower_mean(lambda r: jax.value_and_grad(self.g)(x, u, r), rows, b, full)
            return val, grad

        def bwd(grad, ct):
            return (jax.tree_util.tree_map(lambda t: ct * t, grad),)

        fun.defvjp(fwd, bwd)
        return fun

    # ---- the lower solve on a batch (‖∇ₓg_S(x)‖ ≤ tol), then f_S and f_S − vᵀ∇ₓg_S at its end: the upper
    #      value and its first-order correction for an inexact lower solution (with H v = ∇ₓf it
    #      removes the term linear in x − x*; the solver's last gradient, no extra pass).  One
    #      program for every solve: the lower solver is the largest thing to compile.
    def _trial_impl(self, u, x0, v, rows, orows, b, tol, *, full):
        fun = self._lower_fun(u, rows, b, full)
        cap = min(self.lower_max_iter, self.factor_passes) if self.direct else self.lower_max_iter
        r, gx = lbfgs(lambda x, _: fun(x), x0, None, tol, cap, memory=self.memory, with_grad=True)
        x, iters, status, factored = r.x, r.iters, r.status, jnp.int32(0)
        if self.direct:   # L-BFGS at its cap of n_x iterations: Newton steps from where it stopped
            def newton(_):
                xn, k, st, g = self._newton(u, x, rows, b, tol, full)
                return xn, iters + k, st, g, jnp.int32(1)

            x, iters, status, gx, factored = jax.lax.cond(
                status == MAX_ITER, newton, lambda _: (x, iters, status, gx, factored), None)
        f = self._upper_mean(lambda rw: self.f(x, u, rw), orows, b, full)
        return x, iters, status, f, f - otu.tree_vdot(v, gx), factored

    def _cholesky(self, u, x, rows, b, full):
        """The Cholesky factor of the batch's Hessian at x (flat; NaN where it is not positive
        definite) and the flattening's inverse: one pass, each chunk's Hessian summed."""
        flat, unravel = ravel_pytree(x)

        def hess(r):
            return jax.hessian(lambda z: self.g(unravel(z), u, r))(flat)

        H = self._lower_mean(hess, rows, b, full)
        return jnp.linalg.cholesky(0.5 * (H + H.T)), unravel

    def _newton(self, u, x0, rows, b, tol, full):
        """Newton steps x ← x − H⁻¹∇g_S(x) with the batch's Cholesky factor until ‖∇g_S‖ ≤ tol (the
        first exact for a quadratic, the rest refinement); (x, steps, status, last gradient)."""
        L, unravel = self._cholesky(u, x0, rows, b, full)

        def grad(z):
            return ravel_pytree(self._lower_mean(lambda r: jax.grad(self.g)(unravel(z), u, r), rows, b, full))[0]

        def cond(c):
            _, g, k = c
            gn = jnp.linalg.norm(g)
            return (gn > tol) & jnp.isfinite(gn) & (k < 1 + MAX_REFINE)

        def body(c):
            z, g, k = c
            z1 = z - jax.scipy.linalg.cho_solve((L, True), g)
            return z1, grad(z1), k + 1

        z0 = ravel_pytree(x0)[0]
        z, g, k = jax.lax.while_loop(cond, body, (z0, grad(z0), jnp.int32(0)))
        gn = jnp.linalg.norm(g)
        status = jnp.where(gn <= tol, CONVERGED, jnp.where(jnp.isfinite(gn), MAX_ITER, NONFINITE)).astype(jnp.int32)
        return unravel(z), k, status, unravel(g)

    # ---- adjoint on a batch: ‖H_S v − ∇ₓf_T‖ ≤ tol, then z = ∇θf_T − J_Sᵀv, f_T and its corrected value
    def _adjoint_impl(self, u, x, v0, rows, orows, b, tol, *, full):
        def hvp(w):
            return self._lower_mean(lambda r: jax.jvp(lambda xx: jax.grad(self.g)(xx, u, r), (x,), (w,))[1],
                                    rows, b, full)

        fval, (fx, fu) = self._upper_mean(lambda r: jax.value_and_grad(self.f, (0, 1))(x, u, r), orows, b, full)
        factored = jnp.int32(0)
        if self.direct:   # CG capped at n_x iterations, then from the factor's solution (CG certifies it)
            r = cg(hvp, fx, v0, tol, min(self.cg_max_iter, self.factor_passes))

            def restart(_):
                L, unravel = self._cholesky(u, x, rows, b, full)
                vd = unravel(jax.scipy.linalg.cho_solve((L, True), ravel_pytree(fx)[0]))
                ok = jnp.all(jnp.isfinite(L))       # else: on from CG's iterate
                start = jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), vd, r.x)
                r2 = cg(hvp, fx, start, tol, self.cg_max_iter)
                return r2._replace(iters=r.iters + r2.iters), jnp.int32(1)

            r, factored = jax.lax.cond(r.status == CG_MAX_ITER, restart, lambda _: (r, factored), None)
        else:
            r = cg(hvp, fx, v0, tol, self.cg_max_iter)

        def cross(rw):   # (∇ₓg, J_Sᵀv) of a chunk: one VJP of ∇ₓg in u with cotangent v
            gx, back = jax.vjp(lambda uu: jax.grad(self.g)(x, uu, rw), u)
            return gx, back(r.x)[0]

        gx, jtv = self._lower_mean(cross, rows, b, full)
        z = otu.tree_sub(fu, jtv)
        return fval, fval - otu.tree_vdot(r.x, gx), z, r.x, r.iters, r.status, factored

    # ---- per-row spreads at (x, v): traces of the per-row covariances of ∇ₓg_i, H_i v and ∇ₓf_j
    def _spread_impl(self, u, x, v, rows, orows, b, *, full):
        def moments(fn):   # per output of fn: (mean over the chunk's rows, mean squared norm)
            def chunk(r):
                vals = jax.vmap(lambda row: fn(_one_row(row)))(r)
                return tuple(_moments(a) for a in vals)
            return chunk

        def row_in(r1):
            gi = lambda xx: jax.grad(self.g)(xx, u, r1)  # noqa: E731
            return jax.jvp(gi, (x,), (v,))

        def row_out(r1):
            return (jax.grad(self.f)(x, u, r1),)

        m_g, m_hv = self._lower_mean(moments(row_in), rows, b, full)
        vg, vhv = _trace_cov(*m_g, b.rows), _trace_cov(*m_hv, b.rows)
        if orows is None:
            return vg, vhv, jnp.zeros(())
        (m_f,) = self._upper_mean(moments(row_out), orows, b, full)
        return vg, vhv, _trace_cov(*m_f, b.orows)

    # ---- host-facing calls (b: a Batch)
    def _rows(self):
        return self.inner_perm, self.outer_perm

    def trial(self, u, x0, v, tol, b: Batch):
        rows, orows = self._rows()
        return self._trial(u, x0, v, rows, orows, _dyn(b), tol, full=self._static_full(b))

    def adjoint(self, u, x, v0, tol, b: Batch):
        rows, orows = self._rows()
        return self._adjoint(u, x, v0, rows, orows, _dyn(b), tol, full=self._static_full(b))

    def spread(self, u, x, v, b: Batch):
        rows, orows = self._rows()
        return self._spread(u, x, v, rows, orows, _dyn(b), full=self._static_full(b))


class _Range(NamedTuple):
    """A :class:`Batch` without ``full``, every field an int32 array: what the compiled operations
    take (arguments, not constants, so that no batch size recompiles them)."""

    start: Any
    count: Any
    ostart: Any
    ocount: Any
    rows: Any
    orows: Any
    rest: Any     # 1 for the full batch: the rows left over by the chunks are read too


def _dyn(b: Batch) -> _Range:
    i = lambda k: jnp.asarray(k, jnp.int32)  # noqa: E731
    return _Range(i(b.start), i(b.count), i(b.ostart), i(b.ocount), i(b.rows), i(b.orows), i(int(b.full)))


def _moments(vals):
    """(mean over rows, mean over rows of the squared norm) of a pytree of per-row values."""
    leaves = jax.tree_util.tree_leaves(vals)
    mean = [jnp.mean(l, axis=0) for l in leaves]
    sq = sum(jnp.mean(jnp.sum(jnp.reshape(l, (l.shape[0], -1)) ** 2, axis=1)) for l in leaves)
    return mean, sq


def _trace_cov(mean, mean_sq, n):
    """tr Cov over n rows (unbiased) from the mean and the mean squared norm."""
    tot = mean_sq - sum(jnp.sum(m ** 2) for m in mean)
    return jnp.maximum(tot, 0.0) * n / jnp.maximum(n - 1, 1)
