"""Hypergradients and upper values: the jitted oracles ``value``, ``hypergrad`` and ``hypergradient``.

Implicit differentiation (docs/ALGORITHMS.md, "Hypergradients"): with x̃ and q solving H q = ∇ₓf,
z = ∇θ f − Jᵀq, the gradient over θ of the adjoint Lagrangian
f(x̃, θ) − ⟨∇ₓg(x̃, θ), q⟩ with x̃ and q held fixed, taken in two reverse
passes (∇θ f, and Jᵀq = ∇θ⟨∇ₓg, q⟩) because MAID's bound needs ‖Jᵀq‖; H is
never formed.  ``unroll`` is :mod:`bil.runtime.unroll`'s."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bil.runtime.constants import _norm
from bil.runtime.lower_solve import _cap, _scalar
from bil.runtime.oracles import HyperGrad, UpperValue
from bil.stdlib.methods import Unroll


class Hypergradients:
    """Mixin of :class:`bil.runtime.engine.Engine`."""

    def _implicit(self, p, coords, d, X, Q0, delta, method, cap=None, factor=None):
        """The adjoint and z = ∇ₚf − Jᵀq at a lower solution X (held fixed).

        One reverse pass of f gives f, B = ∇ₓf and ∇ₚf together; q solves
        H q = B (warm-started at Q0, None: from 0; residual delta); Jᵀq = ∇ₚ⟨∇ₓg, q⟩.
        Returns (f, z, B, Q, (cg iters, residual, cg status), ‖Jᵀq‖, ⟨q, ∇ₓg⟩).
        """
        X = jax.lax.stop_gradient(X)
        f, (B, zf) = jax.value_and_grad(lambda X, p: self.F(X, self._theta(p, coords), d), argnums=(0, 1))(X, p)
        Q, cg_it, res, cg_st = self._adjoint(self._theta(p, coords), d, X, B, Q0, delta, method, cap, factor)
        Q = jax.lax.stop_gradient(Q)

        def jq(p):
            return otu.tree_vdot(jax.grad(self.G)(X, self._theta(p, coords), d), Q)

        # The value of the Jᵀq pass is ⟨q, ∇ₓg(x̃)⟩, MAID's adjoint-weighted residual: free.
        qr, jtq = jax.value_and_grad(jq)(p)
        z = jax.tree.map(jnp.subtract, zf, jtq)
        return f, z, B, Q, (cg_it, res, cg_st), _norm(jtq), qr

    def _hypergrad_impl(self, p, X0, Q0, tol, delta, d, coords, method, cap=None):
        if isinstance(method, Unroll):
            return self._unrolled(p, coords, d, method)
        sol = self._solve(self._theta(p, coords), d, X0, tol, cap)
        cg_cap = None if cap is None else jnp.maximum(cap - sol.iters, 0)
        f, z, B, Q, (cg_it, res, cg_st), jtq, qr = self._implicit(p, coords, d, sol.x, Q0, delta, method, cg_cap,
                                                                  jax.lax.stop_gradient(sol.factor))
        # ⟨q, ∇ₓg(x̃)⟩ for MAID's adjoint-corrected value; with active bounds (or a non-smooth
        # term, whose support x̃ may not share with x*) it is not a residual: unknown
        if self._reduced:
            qr = jnp.full((), jnp.nan, self.low.dtype)
        return HyperGrad(f=f, z=z, x=sol.x, q=Q, lower_iters=sol.iters, cg_iters=cg_it, lower_status=sol.status,
                         cg_status=cg_st, gx_norm=_norm(B), q_norm=_norm(Q), jtq_norm=jtq,
                         qr=qr), (sol.grad_norm, res)

    def hypergradient(self, p, X0, Q0, tol, delta, coords="u", method=None, cap=None):
        """(HyperGrad, (lower grad norm, CG residual)) — one jitted call.

        ``cap``: at most this many lower + CG iterations (summed over samples) in
        this call; a solve it stops has status ``BUDGET``.  Traced: any cap, or
        none, runs the same compiled code."""
        method = method or self.method
        key = ("hg", coords, repr(method))   # the class and every option: one compiled function each
        fn = self._jit(key, lambda p, X0, Q0, tol, delta, cap, d: self._hypergrad_impl(
            p, X0, Q0, tol, delta, d, coords, method, cap))
        dt = self.low.dtype
        return fn(p, X0, Q0, _scalar(tol, dt), _scalar(delta, dt), _cap(cap), self.low.data)

    def value(self, u, x0, eps, cap=None) -> UpperValue:
        def impl(u, X0, tol, cap, d):
            theta = self.low.transform.to_user(u)
            sol = self._solve(theta, d, X0, tol, cap)
            B = jax.grad(self.F)(sol.x, theta, d)
            return UpperValue(self.F(sol.x, theta, d), sol.x, sol.iters, sol.status, _norm(B))

        fn = self._jit("value", impl)
        return fn(u, x0, _scalar(self._lower_tol(eps), self.low.dtype), _cap(cap), self.low.data)

    def hypergrad(self, u, x0, q0, eps, delta, cap=None) -> HyperGrad:
        if self.exact and delta <= 0:
            # exact oracles are asked for δ = 0; a CG adjoint (implicit differentiation of a
            # training procedure's end point) cannot reach a zero residual: give it the spec's tol
            delta = float(self.low.options["lower"]["tol"])
        hg, _ = self.hypergradient(u, x0, q0, self._lower_tol(eps), delta, coords="u", cap=cap)
        return hg
