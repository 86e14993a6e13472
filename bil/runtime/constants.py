"""Estimates of the lower problem's constants: μ (Lanczos), ‖∇²F‖, ‖J‖, L_H, L_J (power iteration),
the stationarity measure, and the accuracy floor of the arithmetic.

μ, unless the spec gives it, is estimated at θ₀ and re-estimated as θ moves; the
lower tolerances ‖∇g‖ ≤ μ·ε use the current value."""

from __future__ import annotations

import functools

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
        solves, an early "eps floor reached") or too large (‖x̃ − x*‖ ≤ ε no longer holds).
        One program computes them with μ and the accuracy floor's norms (kept for the
        :meth:`accuracy_floor` at the same point that follows)."""
        L_f, J, L_H, L_J, L_ft = self._estimates(u, x, constants=True)
        return Constants(mu=self.mu(), L_f=L_f, J_norm=J, L_H=L_H, L_J=L_J, L_ftheta=L_ft)

    def _estimates(self, u, x, *, constants: bool) -> tuple[float, ...]:
        """Run the one estimates program at (u, x): the accuracy floor's norms (kept in
        ``self._floor_at``), μ where it is estimated (at θ₀ and the start there while it is
        unknown, else at (u, x) when ``constants``; stored), and the constants when asked (returned).
        The parts not asked for are skipped at run time (``lax.cond``), not compiled apart."""
        estimated = self.mu_given is None and self.low.optimizer is None
        at_start = self._mu is None and not constants
        want_mu = estimated and (constants or at_start)
        full = constants or self._refreshes_constants()
        fn = self._jit("estimates+constants" if full else "estimates",
                       functools.partial(self._estimates_impl, full=full))
        floor, mu, consts = jax.device_get(fn(u, x, self.low.theta0, self.low.data, want_mu, at_start, constants))
        self._floor_at = (_leaves(u), _leaves(x), tuple(float(v) for v in floor))
        if want_mu:
            # Lanczos' smallest Ritz value is an upper bound: take a margin.
            self._mu = max(0.5 * float(mu), 1e-8)
            if at_start:
                self._mu0 = self._mu
        return tuple(float(v) for v in consts)

    def _refreshes_constants(self) -> bool:
        """Whether the spec's outer loop asks for the constants as θ moves (MAID, HOAG): then the
        estimates program includes them from the start, and a run compiles one program, not two."""
        outer = self.low.options.get("solve", {}).get("outer")
        return getattr(outer, "name", outer) in ("maid", "hoag")

    def _estimates_impl(self, u, X, theta0, d, want_mu, at_start, want_consts, *, full: bool):
        """(floor norms, μ estimate, constants) at (u, X); μ at (θ₀, start) when ``at_start``."""
        theta = self.low.transform.to_user(u)
        floor = self._floor_impl(u, X, d)
        zero = jnp.zeros((), self.low.dtype)
        mu = zero
        if self.mu_given is None and self.low.optimizer is None:
            def mu_inputs_at_start():
                return theta0, self.X_init(theta0, d)

            def estimate():
                th, Xm = jax.lax.cond(at_start, mu_inputs_at_start, lambda: (theta, X))
                return self._mu_impl(th, Xm, d).astype(self.low.dtype)

            mu = jax.lax.cond(want_mu, estimate, lambda: zero)
        consts = (zero,) * 5
        if full:
            consts = jax.lax.cond(want_consts, lambda: tuple(c.astype(self.low.dtype) for c in
                                                              self._constants_impl(u, X, d)), lambda: consts)
        return floor, mu, consts

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
        kept, self._floor_at = getattr(self, "_floor_at", None), None
        if kept is not None and _same(kept[0], _leaves(u)) and _same(kept[1], _leaves(x)):
            gn, L, xn, fx = kept[2]   # computed with the constants at this very point
        else:
            self._estimates(u, x, constants=False)
            gn, L, xn, fx = self._floor_at[2]
            self._floor_at = None
        eps = float(jnp.finfo(self.low.dtype).eps)
        mu = self.mu()
        # ‖∇ₓg‖ cannot be resolved below what one rounding of x moves it by, ‖H‖·eps·‖x‖, nor
        # CG's residual below ‖H‖·eps·‖q‖ with ‖q‖ ≈ ‖∇ₓf‖/μ: on float32 TV denoising these are
        # ~1e-4 where eps·‖∇g‖ was 2e-7, and MAID tightened ε, δ into solves that ran to their cap
        return eps * max(gn, L * xn) / mu, eps * fx * max(1.0, L / mu)

    def _floor_impl(self, u, X, d):
        """‖∇ₓg‖, ‖∇²ₓₓg‖ (float32 only), ‖x‖, ‖∇ₓf‖ at (u, X): what :meth:`accuracy_floor` scales."""
        # the Hessian's norm only where it matters: in float64, ‖H‖·eps·‖x‖ is ~1e-12 and never
        # binds, and its power iteration would add to every run's compilation
        theta = self.low.transform.to_user(u)
        L = (_power_norm(lambda v: jax.jvp(lambda y: jax.grad(self.G)(y, theta, d), (X,), (v,))[1], X, 20)
             if self.low.dtype == jnp.float32 else jnp.zeros((), self.low.dtype))
        return _norm(jax.grad(self.G)(X, theta, d)), L, _norm(X), _norm(jax.grad(self.F)(X, theta, d))


def _leaves(tree) -> list:
    return jax.tree.leaves(tree)


def _same(a: list, b: list) -> bool:
    """The same arrays (the very objects: the floor kept by constants() is for this point only)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


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
