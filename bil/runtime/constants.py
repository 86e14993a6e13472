"""Estimates of the lower problem's constants: μ (Lanczos), ‖∇²F‖, ‖J‖, L_H, L_J (power iteration),
the stationarity measure, and the accuracy floor of the arithmetic.

μ, unless the spec gives it, is estimated at θ₀ and re-estimated as θ moves; the
lower tolerances ‖∇g‖ ≤ μ·ε use the current value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bil.runtime import solvers
from bil.runtime.oracles import Constants


def _norm(t):
    return otu.tree_norm(t)


class ConstantEstimates:
    """Mixin of :class:`bil.runtime.engine.Engine`."""

    def mu(self) -> float:
        """The strong-convexity modulus: given (``fista(mu=..)``) or estimated once."""
        if self._mu is None:
            theta = self.low.theta0
            self._mu = self._mu0 = self._mu_at(theta, self.init_lower_user(theta))
        return self._mu

    def _mu_at(self, theta, X) -> float:
        """μ estimated at hypers ``theta`` (user coordinates) and lower values ``X``."""
        est = self._jit("mu", self._mu_impl)(theta, X, self.low.data)
        # Lanczos' smallest Ritz value is an upper bound: take a margin.
        return max(0.5 * float(est), 1e-8)

    def _mu_impl(self, theta, X, d):
        def one(x, d):
            return solvers.strong_convexity_estimate(self._g1, x, (theta, d), iters=30)

        return jnp.min(jnp.atleast_1d(self._vmap(one, (0 if self.low.batched else None, self.low.data_axes))(X, d)))

    def _lower_tol(self, eps):
        """‖∇g‖ ≤ μ·eps gives ‖x̃ − x*‖ ≤ eps.  A training procedure has no
        tolerance (it runs its steps), so μ is not estimated for it."""
        return eps if self.low.optimizer is not None else self.mu() * eps

    def constants(self, u, x) -> Constants:
        """Estimates at (u, x).  μ, unless the spec gives it, is re-estimated here, and the
        lower tolerances (‖∇g‖ ≤ μ·ε) use the new value from now on: strong convexity is a
        property of g(·, θ) at the current θ, and a hyper that moves it (a penalty weight)
        would make the estimate from θ₀ wrong either way, too small (needlessly tight
        solves, an early "eps floor reached") or too large (‖x̃ − x*‖ ≤ ε no longer holds)."""
        vals = self._jit("constants", self._constants_impl)(u, x, self.low.data)
        L_f, J, L_H, L_J, L_ft = (float(v) for v in vals)
        if self.mu_given is None and self.low.optimizer is None:
            self._mu = self._mu_at(self.low.transform.to_user(u), x)
        return Constants(mu=self.mu(), L_f=L_f, J_norm=J, L_H=L_H, L_J=L_J, L_ftheta=L_ft)

    def _constants_impl(self, u, X, d):
        """Power-iteration estimates of ‖∇²ₓₓF‖ and ‖J‖; directional third derivatives for L_H, L_J."""
        theta = self.low.transform.to_user(u)
        key = jax.random.PRNGKey(0)
        v = _random_like(key, X)

        def Hf(w):
            return jax.jvp(lambda y: jax.grad(self.F)(y, theta, d), (X,), (w,))[1]

        L_f = _power_norm(Hf, v, 20)

        def Jt(w):  # x-space -> θ-space:  Jᵀw = ∇θ ⟨∇ₓG, w⟩
            return jax.grad(lambda uu: otu.tree_vdot(jax.grad(self.G)(X, self.low.transform.to_user(uu), d), w))(u)

        def J(w):  # θ-space -> x-space
            return jax.jvp(lambda uu: jax.grad(self.G)(X, self.low.transform.to_user(uu), d), (u,), (w,))[1]

        J_norm = jnp.sqrt(_power_norm(lambda w: Jt(J(w)), _random_like(key, u), 20))

        def hv_at(y, w):
            return jax.jvp(lambda z: jax.grad(self.G)(z, theta, d), (y,), (w,))[1]

        vn = jax.tree.map(lambda a: a / _norm(v), v)
        dH = jax.jvp(lambda y: hv_at(y, vn), (X,), (vn,))[1]
        w_u = _random_like(key, u)
        w_u = jax.tree.map(lambda a: a / jnp.maximum(_norm(w_u), 1e-30), w_u)
        dJ = jax.jvp(lambda y: jax.jvp(lambda uu: jax.grad(self.G)(y, self.low.transform.to_user(uu), d),
                                       (u,), (w_u,))[1], (X,), (vn,))[1]
        # ‖∇²θₓ F‖: the same power iteration on the upper objective's mixed block.
        def Ft(w):
            return jax.grad(lambda uu: otu.tree_vdot(jax.grad(self.F)(X, self.low.transform.to_user(uu), d), w))(u)

        def Fx(w):
            return jax.jvp(lambda uu: jax.grad(self.F)(X, self.low.transform.to_user(uu), d), (u,), (w,))[1]

        L_ft = jnp.sqrt(_power_norm(lambda w: Ft(Fx(w)), _random_like(key, u), 20))
        return L_f, J_norm, _norm(dH), _norm(dJ), L_ft

    def lower_grad_norm(self, u, x) -> float:
        fn = self._jit("gnorm", lambda u, X, d: self._stationarity(X, self.low.transform.to_user(u), d))
        return float(fn(u, x, self.low.data))

    def _stationarity(self, X, theta, d):
        """‖∇ₓG‖, or with non-smooth terms the prox-gradient residual ‖x − prox_h(x − ∇s)‖ (the
        solvers' stopping measure, 0 exactly at the minimiser), root-sum-square over samples."""
        if self.low.nonsmooth is None:
            return _norm(jax.grad(self.G)(X, theta, d))

        def one(x, d):
            op = solvers.prox_operator(self.low.bounds, self._prox, (theta, d))
            return _norm(otu.tree_sub(x, op(otu.tree_sub(x, jax.grad(self._s1)(x, (theta, d))), 1.0)))

        return self._rss(self._vmap(one, (0, self.low.data_axes))(X, d))

    def set_strong_convexity(self, mu: float | None) -> None:
        if self.mu_given is not None:
            return
        # None: back to θ₀'s estimate (made again by mu() if it never was)
        self._mu = self._mu0 if mu is None else float(mu)

    def accuracy_floor(self, u, x) -> tuple[float, float]:
        if self.low.optimizer is not None:  # a training procedure has no tolerance
            return 0.0, 0.0

        # the Hessian's norm only where it matters: in float64, ‖H‖·eps·‖x‖ is ~1e-12 and never
        # binds, and its power iteration would add a compilation to every run
        sensitive = self.low.dtype == jnp.float32

        def impl(u, X, d):
            theta = self.low.transform.to_user(u)
            L = (_power_norm(lambda v: jax.jvp(lambda y: jax.grad(self.G)(y, theta, d), (X,), (v,))[1], X, 20)
                 if sensitive else jnp.zeros((), self.low.dtype))
            return _norm(jax.grad(self.G)(X, theta, d)), L, _norm(X), _norm(jax.grad(self.F)(X, theta, d))

        gn, L, xn, fx = (float(v) for v in self._jit("floor", impl)(u, x, self.low.data))
        eps = float(jnp.finfo(self.low.dtype).eps)
        mu = self.mu()
        # ‖∇ₓg‖ cannot be resolved below what one rounding of x moves it by, ‖H‖·eps·‖x‖, nor
        # CG's residual below ‖H‖·eps·‖q‖ with ‖q‖ ≈ ‖∇ₓf‖/μ: on float32 TV denoising these are
        # ~1e-4 where eps·‖∇g‖ was 2e-7, and MAID tightened ε, δ into solves that ran to their cap
        return eps * max(gn, L * xn) / mu, eps * fx * max(1.0, L / mu)


def _random_like(key, tree):
    leaves, tdef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tdef, [jax.random.normal(k, jnp.shape(l), jnp.result_type(l))
                                     for k, l in zip(keys, leaves)])


def _power_norm(op, v0, iters: int):
    """Largest eigenvalue magnitude of a symmetric PSD operator, by power iteration."""
    v0 = jax.tree.map(lambda a: a + 1e-3, v0)  # avoid a zero start

    def body(v, _):
        w = op(v)
        n = _norm(w)
        return jax.tree.map(lambda a: a / jnp.maximum(n, 1e-30), w), n

    v = jax.tree.map(lambda a: a / jnp.maximum(_norm(v0), 1e-30), v0)
    _, ns = jax.lax.scan(body, v, None, length=iters)
    return ns[-1]
