"""The adjoint solve H q = ∇ₓF per sample: CG, a direct solve, the direct solver's factor, or Neumann.

With active bounds or entries a non-smooth term holds at 0 the adjoint lives on
the free coordinates (:func:`reduced_operator`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bil.runtime import linear, quadratic
from bil.runtime.constants import _norm, _power_norm
from bil.runtime.lower_solve import _budget_status
from bil.stdlib.methods import Direct, Implicit, Neumann

#: power iterations for Neumann's 1/L when ``neumann(alpha=...)`` is not given
_NEUMANN_POWER_ITERS = 30


class Adjoint:
    """Mixin of :class:`bil.runtime.engine.Engine`."""

    def _free_mask(self, x, theta, d):
        """1 where a lower variable is free, 0 where a bound is active or a non-smooth term
        pins it at 0 (outside the support of an l1 or group term, :mod:`bil.runtime.prox`)."""
        mask = jax.tree.map(jnp.ones_like, x)
        if self.low.bounds is not None:
            lo, hi = self.low.bounds
            gx = jax.grad(self._g1)(x, (theta, d))
            tiny = 1e-10

            def m(xv, gv, l, h):
                at_lo = (xv <= l + tiny) & (gv > 0)
                at_hi = (xv >= h - tiny) & (gv < 0)
                return jnp.where(at_lo | at_hi, 0.0, 1.0).astype(xv.dtype)

            mask = jax.tree.map(m, x, gx, lo, hi)
        if self.low.nonsmooth is not None:
            mask = jax.tree.map(jnp.multiply, mask, self.low.nonsmooth.support(x, (theta, d)))
        return mask

    def _adjoint(self, theta, d, X, B, Q0, delta, method, cap=None, factor=None):
        """Solve H q = b per sample (b = ∇ₓF), to ‖Hq − b‖ ≤ delta overall; CG
        iterations summed over samples at most ``cap`` (traced, optional).  With the
        ``direct`` lower solver an implicit adjoint is solved with the Hessian's factor:
        ``factor`` (the lower solve's), or one made here when it is not at hand."""
        low = self.low
        per_delta = delta / math.sqrt(self.n)
        by_factor = isinstance(method, Implicit) and isinstance(self.solver, Direct)

        def one(theta, d, x, b, q0, fac):
            hv = linear.hessian_operator(self._g1, x, (theta, d))

            if by_factor:
                if fac is None:
                    fac = quadratic.hessian_factor(self._g1, x, (theta, d))
                return quadratic.factor_adjoint(fac, hv, b, per_delta)

            if self._reduced:
                # Active bounds or entries held at 0 by a non-smooth term: the adjoint lives on
                # the free coordinates (the reduced Hessian of g, whose non-smooth terms are
                # smooth there), and is 0 on the others.
                mask = self._free_mask(x, theta, d)
                hv = reduced_operator(hv, mask)
                b = jax.tree.map(jnp.multiply, mask, b)
            if isinstance(method, Implicit) and method.linear == "direct":
                q = linear.direct_solve(hv, b)
                res = _norm(jax.tree.map(jnp.subtract, hv(q), b))
                ok = jnp.isfinite(res)
                return q, jnp.int32(0), res, jnp.where(ok, 0, 2).astype(jnp.int32)
            if isinstance(method, Neumann):
                return self._neumann(hv, b, method)
            own = int(method.max_iter)
            per_cap = None if cap is None else cap // self.n
            r = linear.cg(hv, b, q0, per_delta, own if cap is None else jnp.minimum(per_cap, own))
            st = r.status if cap is None else _budget_status(r.status, r.iters, per_cap, own)
            return r.x, r.iters, r.residual, st

        q, it, res, stt = self._vmap(one, (None, low.data_axes, 0, 0, 0, 0))(theta, d, X, B, Q0, factor)
        return self._laid(q), self._sum(it), self._rss(res), self._max(stt)

    @staticmethod
    def _neumann(hv, b, method: Neumann):
        """q = α Σ_{j<k} (I − αH)^j b, α = 1/L by power iteration unless given."""
        k = int(method.k)
        alpha = method.alpha
        products = k
        if alpha is None:
            L = _power_norm(hv, b, _NEUMANN_POWER_ITERS)
            alpha = 1.0 / (1.05 * L)
            # the power iteration's Hessian products cost like CG iterations: count them
            products += _NEUMANN_POWER_ITERS

        def body(carry, _):
            q, term = carry
            term = jax.tree.map(lambda t, ht: t - alpha * ht, term, hv(term))
            return (jax.tree.map(jnp.add, q, term), term), None

        (s, _), _ = jax.lax.scan(body, (b, b), None, length=k - 1)
        q = jax.tree.map(lambda v: alpha * v, s)
        res = _norm(jax.tree.map(jnp.subtract, hv(q), b))
        return q, jnp.int32(products), res, jnp.where(jnp.isfinite(res), 0, 2).astype(jnp.int32)


def reduced_operator(hv, mask):
    """The Hessian restricted to the free coordinates (``mask`` 1 where a bounded variable is
    free, 0 at an active bound), identity on the active ones: v ↦ m·H(m·v) + (1 − m)·v.
    Symmetric, so CG applies; with a right-hand side masked the same way, the solution is 0
    on the active coordinates (they stay at their bound)."""
    def op(v):
        hmv = hv(jax.tree.map(jnp.multiply, mask, v))
        return jax.tree.map(lambda m, h, w: m * h + (1 - m) * w, mask, hmv, v)

    return op
