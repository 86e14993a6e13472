"""Unrolled hypergradients: reverse mode through a training procedure or through accelerated
gradient descent on the lower problem (``hypergradient: unroll``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bil.runtime import linear, solvers
from bil.runtime.constants import _norm, _power_norm
from bil.runtime.lower_solve import Solved
from bil.runtime.oracles import HyperGrad

#: relative accuracy (of ‖∇g‖ at the start) of the reference solve that sets the
#: unrolled AGD's step: only its curvature is used
_AGD_REF_RTOL = 1e-3


class Unrolling:
    """Mixin of :class:`bil.runtime.engine.Engine`."""

    def unrolled_objective(self, p, coords, d, method):
        """(f, Solved): the upper value through the unrolled lower iterations; differentiable in p."""
        truncate = method.truncate
        theta = self._theta(p, coords)
        if self.low.optimizer is not None:
            sol = self._train(theta, d, None, truncate=truncate)
        else:
            sol = self._agd(theta, d, int(method.steps), truncate)
        return self.F(sol.x, theta, d), sol

    def _unrolled(self, p, coords, d, method):
        (f, sol), z = jax.value_and_grad(lambda p: self.unrolled_objective(p, coords, d, method), has_aux=True)(p)
        X = jax.lax.stop_gradient(sol.x)
        zero = jax.tree.map(jnp.zeros_like, X)
        B = jax.grad(self.F)(X, self._theta(p, coords), d)
        return HyperGrad(f=f, z=z, x=X, q=zero, lower_iters=sol.iters, cg_iters=jnp.int32(0),
                         lower_status=sol.status, cg_status=jnp.int32(0), gx_norm=_norm(B), q_norm=jnp.zeros(()),
                         jtq_norm=jnp.zeros(())), (sol.grad_norm, jnp.zeros(()))

    def _agd(self, theta, d, steps, truncate) -> Solved:
        """Unrollable lower solve: `steps` of accelerated (projected) gradient descent.

        Step 1/L, L the largest Hessian norm (power iteration) at the start and
        at a solution from the spec's solver, not differentiated and counted in
        the iterations: the curvature can grow along the path (smoothed TV is
        most curved where the image is flat, i.e. near the solution), and a step
        safe only at the start makes the unrolled derivatives blow up (TV at
        α=0.08, ν=0.004: 1e18 after 300 steps) while the values still look
        plausible.  L is held constant (a step size, not part of the model);
        momentum
        (√L−√μ)/(√L+√μ) when the spec gives μ, else Nesterov's k/(k+3) with
        adaptive restart (k counts from the last restart).  Only
        a given μ counts: the estimate of :meth:`mu` is a heuristic, and the
        unrolled map must not depend on whether an outer loop asked for it.
        """
        low = self.low
        proj = solvers.projector(low.bounds)
        mu = self.mu_given

        def one(theta, d):
            # with non-smooth terms: proximal steps on the smooth part (ISTA/FISTA unrolled)
            op = solvers.prox_operator(low.bounds, self._prox, (theta, d)) or (lambda z, t: z)
            x0 = proj(low.x_init(theta, d))
            grad = jax.grad(self._s1)
            th = jax.lax.stop_gradient(theta)
            g0 = _norm(grad(jax.lax.stop_gradient(x0), (th, d)))
            ref = solvers.solve(self.solver.name, self._s1, jax.lax.stop_gradient(x0), (th, d),
                                _AGD_REF_RTOL * g0, self.max_iter, options=self.solver.kwargs, bounds=low.bounds,
                                prox=self._prox)

            def hess_norm(at):
                return _power_norm(lambda v: linear.hvp(self._s1, at, (th, d), v), at, 30)

            L = jax.lax.stop_gradient(1.05 * jnp.maximum(hess_norm(x0), hess_norm(ref.x)))

            def step(carry, k):
                x, x_prev, j = carry
                beta = ((jnp.sqrt(L) - jnp.sqrt(mu)) / (jnp.sqrt(L) + jnp.sqrt(mu))) if mu else j / (j + 3.0)
                y = jax.tree.map(lambda a, b: a + beta * (a - b), x, x_prev)
                gy = grad(y, (theta, d))
                x_new = op(jax.tree.map(lambda a, g_: a - g_ / L, y, gy), 1.0 / L)
                # adaptive restart (O'Donoghue & Candès): drop the momentum when the step turns
                # against it.  Without μ, k/(k+3) momentum is sublinear on ill-conditioned
                # problems (ridge: 1% off after 1000 steps); restarted it converges linearly.
                # The restart is a discrete decision, not differentiated.
                turn = jax.lax.stop_gradient(otu.tree_vdot(otu.tree_sub(y, x_new), otu.tree_sub(x_new, x)) > 0)
                return (x_new, x, jnp.where(turn, 0.0, j + 1.0)), None

            step = jax.checkpoint(step)
            ks = jnp.arange(steps, dtype=low.dtype)
            carry = (x0, x0, jnp.zeros((), low.dtype))
            if truncate is not None and truncate < steps:
                carry, _ = jax.lax.scan(step, carry, ks[: steps - truncate])
                carry = jax.lax.stop_gradient(carry)
                ks = ks[steps - truncate:]
            (x, _, _), _ = jax.lax.scan(step, carry, ks)
            gn = _norm(grad(x, (theta, d)))
            return x, jnp.int32(steps) + ref.iters, gn, jnp.where(jnp.isfinite(gn), 0, 2).astype(jnp.int32)

        x, it, gn, stt = self._vmap(one, (None, low.data_axes))(theta, d)
        return Solved(self._laid(x), self._sum(it), self._rss(gn), self._max(stt))
