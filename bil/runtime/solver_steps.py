"""The machinery the lower solvers share: the loop carry, the stopping measure (projected or
prox-gradient residual), the run loop, step acceptance and the proximal backtracking line search.

Split from :mod:`bil.runtime.solvers` (which holds the solvers themselves) so that each file
reads in one sitting; the conventions (status codes, the measure) are stated there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from .solve_result import CONVERGED, MAX_ITER, NONFINITE, SolveResult

_MAX_LS = 50          # line-search trials per iteration (L doubles / step halves)
_L_SHRINK = 0.9       # L *= 0.9 before each test so L does not stay pessimistic
_ROUNDOFF = 100.0     # slack, in units of eps*|f|, for decrease tests near roundoff


class _Carry(NamedTuple):
    x: Any
    f: jax.Array
    g: Any
    gnorm: jax.Array
    k: jax.Array       # iterations so far
    flag: jax.Array    # -1 running, 1 stalled, 2 non-finite
    aux: Any           # method-specific state


# ----------------------------------------------------------------------------
# helpers


def _norm(t):
    return jnp.sqrt(otu.tree_vdot(t, t))


def _finite(f, g):
    return jnp.isfinite(f) & jnp.isfinite(_norm(g))


def _eps(f):
    return jnp.finfo(jnp.result_type(f)).eps


def projector(bounds):
    """The projection onto box ``bounds`` = (lo, hi) (pytrees or scalars); identity if None."""
    if bounds is None:
        return lambda z: z
    lo, hi = bounds
    return lambda z: jax.tree.map(jnp.clip, z, lo, hi)


def prox_operator(bounds, prox, params):
    """``(z, t) -> x``: the prox of t·h (``prox(z, t, params)``, or none) followed by the
    projection onto ``bounds``; None when there is neither (plain gradient steps).  The
    composition is the prox of t·h + the box's indicator for a separable h (in one
    dimension the prox of a convex function restricted to an interval is its clipped prox)."""
    if bounds is None and prox is None:
        return None
    proj = projector(bounds)
    if prox is None:
        return lambda z, t: proj(z)
    return lambda z, t: proj(prox(z, t, params))


def _measure(op):
    """``(x, f, g) -> (measure, finite)``: stationarity measure and :func:`_finite`.

    The measure is the gradient norm, or ``||x - op(x - g, 1)||`` (the projected-
    gradient norm if bounded, the prox-gradient residual with a non-smooth term).  Unbounded, the measure *is* ``||g||``,
    so the finiteness test reads it instead of making another pass over ``g``.
    Bounded it cannot: an infinite component of ``g`` pushing against an
    active finite bound is clipped out of the projected gradient, and such a
    point must still count as non-finite.
    """
    if op is None:
        def measure(x, f, g):
            gn = _norm(g)
            return gn, jnp.isfinite(f) & jnp.isfinite(gn)
    else:
        def measure(x, f, g):
            return _norm(otu.tree_sub(x, op(otu.tree_sub(x, g), 1.0))), _finite(f, g)
    return measure


def _value_and_grad(fun, params):
    vg = jax.value_and_grad(fun)
    return lambda x: vg(x, params)


def _start(vg, measure, x0, aux):
    """Initial carry; a non-finite start is flagged before any iteration."""
    f0, g0 = vg(x0)
    gn0, finite = measure(x0, f0, g0)
    flag = jnp.where(finite, -1, NONFINITE).astype(jnp.int32)
    return _Carry(x0, f0, g0, gn0.astype(f0.dtype), jnp.int32(0), flag, aux)


def _run(step, carry0, tol, max_iter, with_grad: bool = False):
    """Iterate ``step`` while not converged, under budget and not flagged; with ``with_grad``,
    also the gradient at the final iterate (the solver has it: no extra evaluation)."""
    tol = jnp.asarray(tol)

    def cond(c):
        return (c.flag < 0) & (c.gnorm > tol) & (c.k < max_iter)

    c = jax.lax.while_loop(cond, step, carry0)
    status = jnp.where(c.flag == NONFINITE, NONFINITE,
                       jnp.where(c.gnorm <= tol, CONVERGED, MAX_ITER))
    res = SolveResult(x=c.x, iters=c.k, grad_norm=c.gnorm, status=status.astype(jnp.int32))
    return (res, c.g) if with_grad else res


def _accept(c, ok, x1, f1, g1, gn1, fail_flag, aux):
    """Next carry: move to x1 if ``ok``, else keep x and raise ``fail_flag``."""
    keep = ~ok
    return _Carry(
        x=otu.tree_where(keep, c.x, x1),
        f=jnp.where(keep, c.f, f1),
        g=otu.tree_where(keep, c.g, g1),
        gnorm=jnp.where(keep, c.gnorm, gn1),
        k=c.k + 1,
        flag=jnp.where(keep, fail_flag, c.flag).astype(jnp.int32),
        aux=aux,
    )


def _prox_backtrack(vg, op, measure, y, fy, gy, L):
    """Proximal (or projected) gradient step from ``y`` with backtracking on ``L``.

    Tries ``x = op(y - grad/L, 1/L)`` (the prox of h/L, then the projection)
    and doubles ``L`` until the sufficient-decrease test ``f(x) <= f(y) + <g, x-y> + L/2 ||x-y||^2`` holds.  Near convergence
    that test compares numbers equal up to roundoff, so a step is also
    accepted when it holds within ``_ROUNDOFF*eps*|f|`` *and* the gradient
    (curvature) version ``<grad f(x) - g, x-y> <= L ||x-y||^2``, which is
    computed accurately, holds (as in TFOCS).  Each trial's finiteness test
    comes with the stopping measure at its ``x`` (``measure`` from
    :func:`_measure`), which is returned so the caller need not recompute it.
    ``y`` must lie in the box.  Returns (x, f, g, gnorm, L, ok).
    """
    eps = _eps(fy)

    def trial(L):
        x = op(otu.tree_add_scale(y, -1.0 / L, gy), 1.0 / L)
        f, g = vg(x)
        d = otu.tree_sub(x, y)
        dd = otu.tree_vdot(d, d)
        gyd = otu.tree_vdot(gy, d)
        lhs = f - fy - gyd
        quad = 0.5 * L * dd
        curv = otu.tree_vdot(otu.tree_sub(g, gy), d)
        slack = _ROUNDOFF * eps * (jnp.abs(f) + jnp.abs(fy))
        ok = (lhs <= quad) | ((lhs <= quad + slack) & (curv <= L * dd))
        gn, finite = measure(x, f, g)
        return (x, f, g, gn, ok & finite), gyd

    L = jnp.asarray(L, dtype=jnp.result_type(fy))
    first, gyd = trial(L)
    # No step is taken from a non-finite f(y) or gy (searching on could spend
    # all _MAX_LS trials, or accept an infinite x).  gy's finiteness is read
    # off the first trial's <gy, x - y> instead of a separate pass over gy:
    # y is in the box, so each x_i - y_i is 0 or of opposite sign to gy_i,
    # every term is <= 0, and an infinite or NaN gy_i makes the sum -inf or
    # NaN (a prox step moves an infinite gy_i's entry infinitely too: its term
    # is again infinite or NaN).  (A finite gy overflows the sum only at extreme scales, about
    # ||gy||^2 / L beyond the largest float.)
    start_ok = jnp.isfinite(fy) & jnp.isfinite(gyd)

    def cond(c):
        return start_ok & ~c[5] & (c[6] < _MAX_LS)

    def body(c):
        L = 2.0 * c[0]
        return (L, *trial(L)[0], c[6] + 1)

    L, x, f, g, gn, ok, _ = jax.lax.while_loop(cond, body, (L, *first, 0))
    return x, f, g, gn, L, ok & start_ok
