"""The hypergradient engine: jitted oracles for one lowered program.

Per-sample work (lower solves, adjoint solves) is written for one sample and
batched with ``jax.vmap``; per-sample tolerances are the global ones divided by
√N so the stacked problem meets them exactly (‖∇G‖² = Σᵢ‖∇gᵢ‖²).  The upper
objective of a ``per sample`` problem is the mean over samples.

Implicit differentiation (docs/ALGORITHMS.md, "Hypergradients"): with x̃ and q solving H q = ∇ₓf,
z = ∇θ f − Jᵀq, the gradient over θ of the adjoint Lagrangian
f(x̃, θ) − ⟨∇ₓg(x̃, θ), q⟩ with x̃ and q held fixed, taken in two reverse
passes (∇θ f, and Jᵀq = ∇θ⟨∇ₓg, q⟩) because MAID's bound needs ‖Jᵀq‖; H is
never formed.  Accuracies (``tol`` of the lower solve, ``delta`` of CG) are
traced arguments of every jitted function: changing them never recompiles.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from bil.core.errors import BilRuntimeError
from bil.runtime.lowered import Lowered
from bil.runtime import linear, quadratic, solvers, train
from bil.runtime.oracles import BUDGET, AbstractOracles, Constants, HyperGrad, UpperValue

IMPLICIT_METHODS = ("implicit", "neumann")

#: relative accuracy (of ‖∇g‖ at the start) of the reference solve that sets the
#: unrolled AGD's step: only its curvature is used
_AGD_REF_RTOL = 1e-3

#: power iterations for Neumann's 1/L when ``neumann(alpha=...)`` is not given
_NEUMANN_POWER_ITERS = 30


class Solved(NamedTuple):
    x: Any
    iters: Any
    grad_norm: Any
    status: Any
    #: the lower Hessian's factorisation (solver ``direct``: the adjoint reuses it), else None
    factor: Any = None


def _norm(t):
    return otu.tree_norm(t)


def _scalar(v, dtype):
    """A tolerance as a jit argument: host numbers become numpy scalars.

    ``jnp.asarray`` on a Python float dispatches a device op (~0.05-0.3 ms on
    CPU) on every oracle call; a numpy scalar is passed straight through.
    """
    if isinstance(v, (int, float, np.number, np.ndarray)):
        return np.asarray(v, dtype)
    return jnp.asarray(v, dtype)


#: ``cap=None``: no per-call limit beyond the solvers' own ``max_iter``
_NO_CAP = np.iinfo(np.int32).max


def _cap(cap):
    """A per-call iteration cap as a jit argument (an int32, so None and any
    number share one compiled function)."""
    return np.asarray(_NO_CAP if cap is None else max(0, min(int(cap), _NO_CAP)), np.int32)


def _budget_status(status, iters, cap, own_max):
    """Status 4 (``BUDGET``) where a solve stopped at a per-call cap below its own max_iter."""
    cut = (status == 1) & (iters >= cap) & (cap < own_max)
    return jnp.where(cut, BUDGET, status).astype(jnp.int32)


class Engine(AbstractOracles):
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
        if self.solver is not None and self.solver.kwargs.get("mu"):
            self.mu_given = float(self.solver.kwargs["mu"])
        self._mu = self.mu_given  # given, or estimated by mu() at θ₀, then by constants() as θ moves
        self._mu0 = None          # the estimate at θ₀ (set_strong_convexity(None) returns to it)
        self._jitted: dict = {}
        #: a training procedure's value and hypergradient do not depend on ε, δ
        self.exact = low.optimizer is not None

    # ------------------------------------------------------------ helpers
    def _theta(self, p, coords: str):
        return self.low.transform.to_user(p) if coords == "u" else p

    def _vmap(self, fn, in_axes):
        """Map ``fn`` over samples when the problem is per sample."""
        return jax.vmap(fn, in_axes=in_axes) if self.low.batched else fn

    def _g1(self, x, params):
        theta, d = params
        return self.low.g(x, theta, d)

    def _s1(self, x, params):
        """The smooth part of g (all of g without non-smooth terms): what the solvers differentiate."""
        theta, d = params
        return (self.low.g_smooth or self.low.g)(x, theta, d)

    @property
    def _prox(self):
        """``prox(z, t, (θ, d))`` of the non-smooth terms, or None."""
        return None if self.low.nonsmooth is None else self.low.nonsmooth.prox

    @property
    def _reduced(self) -> bool:
        """Implicit derivatives live on an active set: bounds, or non-smooth terms pinning entries at 0."""
        return self.low.bounds is not None or self.low.nonsmooth is not None

    def F(self, X, theta, d):
        """The upper objective: mean over samples of f."""
        if not self.low.batched:
            return self.low.f(X, theta, d)
        return jnp.mean(jax.vmap(self.low.f, in_axes=(0, None, self.low.data_axes))(X, theta, d))

    def G(self, X, theta, d):
        """The stacked lower objective: sum over samples of g."""
        if not self.low.batched:
            return self.low.g(X, theta, d)
        return jnp.sum(jax.vmap(self.low.g, in_axes=(0, None, self.low.data_axes))(X, theta, d))

    def X_init(self, theta, d):
        return self._vmap(self.low.x_init, (None, self.low.data_axes))(theta, d)

    def _sum(self, v):
        return jnp.sum(v) if self.low.batched else v

    def _max(self, v):
        return jnp.max(v) if self.low.batched else v

    def _rss(self, v):
        return jnp.sqrt(jnp.sum(v ** 2)) if self.low.batched else v

    # --------------------------------------------------------- lower solve
    def _solve(self, theta, d, X0, tol, cap=None) -> Solved:
        """Solve every sample's lower problem to ‖∇g‖ ≤ tol/√N, warm-started at X0.

        ``cap`` (traced int, optional) limits the iterations summed over samples:
        each sample gets ``cap // N``; a solve stopped there has status ``BUDGET``."""
        low = self.low
        per_tol = tol / math.sqrt(self.n)
        if low.optimizer is not None:
            return self._train(theta, d, X0)
        per_cap = None if cap is None else cap // self.n
        max_iter = self.max_iter if cap is None else jnp.minimum(per_cap, self.max_iter)

        def one(theta, d, x0):
            r = solvers.solve(self.solver.name, self._s1, x0, (theta, d), per_tol, max_iter,
                              options=self.solver.kwargs, bounds=low.bounds, prox=self._prox)
            st = r.status if cap is None else _budget_status(r.status, r.iters, per_cap, self.max_iter)
            return r.x, r.iters, r.grad_norm, st, r.factor

        x, it, gn, stt, fac = self._vmap(one, (None, low.data_axes, 0))(theta, d, X0)
        return Solved(x, self._sum(it), self._rss(gn), self._max(stt), fac)

    def _train(self, theta, d, X0, truncate=None, from_init=True) -> Solved:
        """A training procedure: `steps` optimizer steps from the initial values."""
        low = self.low

        # bounded variables are trained by projected steps (each update clipped to the box)
        proj = None if low.bounds is None else solvers.projector(low.bounds)

        def one(theta, d, x0):
            x, _ = train.train(self._g1, x0, (theta, d), low.optimizer, low.opt_kwargs(theta, d),
                               low.train_steps, truncate, project=proj)
            g_end, gx = jax.value_and_grad(self._g1)(x, (theta, d))
            gn = _norm(gx)
            # diverged: the training loss ended above where it started (a learning rate past
            # the stable range; 1e-8 of slack for a start that is already a minimiser), or NaN/Inf.
            # Its end point and hypergradient are garbage, not a result (status 2)
            g_start = jax.lax.stop_gradient(self._g1(x0, (theta, d)))
            diverged = jax.lax.stop_gradient(g_end) > g_start + 1e-8 * jnp.maximum(1.0, jnp.abs(g_start))
            ok = jnp.isfinite(gn) & jnp.isfinite(g_end) & ~diverged
            status = jnp.where(ok, 0, 2).astype(jnp.int32)
            return x, jnp.int32(low.train_steps), gn, status

        # Training always starts from the spec's initial values (that is the
        # procedure being differentiated); X0 is ignored.
        X0 = self.X_init(theta, d)
        x, it, gn, stt = self._vmap(one, (None, low.data_axes, 0))(theta, d, X0)
        return Solved(x, self._sum(it), self._rss(gn), self._max(stt))

    # ------------------------------------------------------------ adjoint
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
        kind = method.name
        kw = method.kwargs
        by_factor = kind == "implicit" and self.solver is not None and self.solver.name == "direct"

        def one(theta, d, x, b, q0, fac):
            def hv(v):
                return linear.hvp(self._g1, x, (theta, d), v)

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
            if kind == "implicit" and kw.get("linear") == "direct":
                q = linear.direct_solve(hv, b)
                res = _norm(jax.tree.map(jnp.subtract, hv(q), b))
                ok = jnp.isfinite(res)
                return q, jnp.int32(0), res, jnp.where(ok, 0, 2).astype(jnp.int32)
            if kind == "neumann":
                return self._neumann(hv, b, kw)
            own = int(kw.get("max_iter", 1000))
            per_cap = None if cap is None else cap // self.n
            r = linear.cg(hv, b, q0, per_delta, own if cap is None else jnp.minimum(per_cap, own))
            st = r.status if cap is None else _budget_status(r.status, r.iters, per_cap, own)
            return r.x, r.iters, r.residual, st

        q, it, res, stt = self._vmap(one, (None, low.data_axes, 0, 0, 0, 0))(theta, d, X, B, Q0, factor)
        return q, self._sum(it), self._rss(res), self._max(stt)

    @staticmethod
    def _neumann(hv, b, kw):
        """q = α Σ_{j<k} (I − αH)^j b, α = 1/L by power iteration unless given."""
        k = int(kw["k"])
        alpha = kw.get("alpha")
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

    # ----------------------------------------------------- hypergradients
    def _implicit(self, p, coords, d, X, Q0, delta, method, cap=None, factor=None):
        """The adjoint and z = ∇ₚf − Jᵀq at a lower solution X (held fixed).

        One reverse pass of f gives f, B = ∇ₓf and ∇ₚf together; q solves
        H q = B (warm-started at Q0, residual delta); Jᵀq = ∇ₚ⟨∇ₓg, q⟩.
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
        if method.name == "unroll":
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

    def unrolled_objective(self, p, coords, d, method):
        """(f, Solved): the upper value through the unrolled lower iterations; differentiable in p."""
        truncate = method.kwargs.get("truncate")
        theta = self._theta(p, coords)
        if self.low.optimizer is not None:
            sol = self._train(theta, d, None, truncate=truncate)
        else:
            sol = self._agd(theta, d, int(method.kwargs.get("steps") or 1000), truncate)
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
        return Solved(x, self._sum(it), self._rss(gn), self._max(stt))

    # ---------------------------------------------------- jitted oracles
    def _jit(self, key, fn, static=()):
        if key not in self._jitted:
            self._jitted[key] = jax.jit(fn, static_argnames=static)
        return self._jitted[key]

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

    def solve_lower(self, theta: dict, X0, tol: float) -> Solved:
        fn = self._jit("solve", lambda th, X0, tol, d: self._solve(th, d, X0, tol))
        return fn(theta, X0, _scalar(tol, self.low.dtype), self.low.data)

    def hypergradient(self, p, X0, Q0, tol, delta, coords="u", method=None, cap=None):
        """(HyperGrad, (lower grad norm, CG residual)) — one jitted call.

        ``cap``: at most this many lower + CG iterations (summed over samples) in
        this call; a solve it stops has status ``BUDGET``.  Traced: any cap, or
        none, runs the same compiled code."""
        method = method or self.method
        key = ("hg", coords, method.name, tuple(sorted((k, repr(v)) for k, v in method.kwargs.items())))
        fn = self._jit(key, lambda p, X0, Q0, tol, delta, cap, d: self._hypergrad_impl(
            p, X0, Q0, tol, delta, d, coords, method, cap))
        dt = self.low.dtype
        return fn(p, X0, Q0, _scalar(tol, dt), _scalar(delta, dt), _cap(cap), self.low.data)

    # AbstractOracles --------------------------------------------------
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
            cache[key] = jax.tree.map(jnp.zeros_like, x)
        return cache[key]

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

    def log_hypers(self) -> dict:
        return {n: how == "exp" for n, (how, _) in self.low.transform.maps.items()}

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

    # ------------------------------------------------------ error checks
    def check(self, lower_status, grad_norm, cg_status=0, residual=0.0, what="lower solve", method=None):
        """Raise :class:`BilRuntimeError` at the ``lower`` block for a failed solve."""
        err = self.failure(lower_status, grad_norm, cg_status, residual, what, method)
        if err is not None:
            raise err

    def failure(self, lower_status, grad_norm=None, cg_status=0, residual=None, what="lower solve", method=None):
        """The :class:`BilRuntimeError` (at the ``lower`` block, with a hint) for these solver
        statuses, or None when both solves succeeded.  Norms may be None when unknown.
        ``method``: the hypergradient method that ran the adjoint (default: the spec's)."""
        span = self.low.lower_span
        f32 = self.low.dtype == jnp.float32
        f32_hint = ("float32 cannot resolve residuals much below 1e-6 of their scale: loosen the tolerance or use "
                    "`precision: \"float64\"`")

        def norm(label, v):
            return "" if v is None else f" ({label} = {float(v):.3g})"

        s, c = int(lower_status), int(cg_status)
        if BUDGET in (s, c):
            return BilRuntimeError(f"the {what} was stopped by the iteration budget", span,
                                   "raise `budget=` in `outer:`, or resume the run with a larger one")
        if s == 2 and self.low.optimizer is not None:
            return BilRuntimeError("the training procedure diverged: its loss ended above where it started, or "
                                   "NaN/Inf", span,
                                   "lower the learning rate (`lr=`) or bound the hyper that sets it "
                                   "(`hyper lr : positive in [1e-4, 1]`), or train for fewer steps")
        if s == 2:
            return BilRuntimeError(f"the {what} produced NaN or Inf", span,
                                   "check the objective's domain (log/sqrt of non-positive values, division by 0) "
                                   "and that it is bounded below in the lower variables (convex, e.g. with a "
                                   "`+ c * sumsq(w)` term)"
                                   + (", lower the initial hypers, or use `precision: \"float64\"`" if f32 else
                                      ", or lower the initial hypers"))
        if s == 1 and self.low.nonsmooth is not None and not f32:
            return BilRuntimeError(f"the {what} did not reach its tolerance within max_iter={self.max_iter} "
                                   f"iterations{norm('‖x − prox(x − ∇s)‖', grad_norm)}", span,
                                   "raise `max_iter:` in the lower block or loosen the tolerance; proximal gradient "
                                   "is slow when the smooth part is ill-conditioned: a ridge term "
                                   "(`+ c * sumsq(w)`, the elastic net) or `fista(mu=...)` speeds it up")
        if s == 1 and self.solver is not None and self.solver.name == "direct":
            return BilRuntimeError(f"the {what} (direct) did not reach its tolerance after "
                                   f"{quadratic.MAX_REFINE} refinement steps{norm('‖∇g‖', grad_norm)}", span,
                                   "the lower Hessian is singular or too ill-conditioned for this tolerance: "
                                   "loosen `tol:`, or add a strongly convex term (`+ c * sumsq(w)`)")
        if s == 1:
            return BilRuntimeError(f"the {what} did not reach its tolerance within max_iter={self.max_iter} "
                                   f"iterations{norm('‖∇g‖', grad_norm)}", span,
                                   (f32_hint if f32 else
                                    "raise `max_iter:` in the lower block, loosen the tolerance, or try another "
                                    "`solver:` (e.g. lbfgs or newton_cg); if the objective is unbounded below "
                                    "in the lower variables, add a strongly convex term (`+ c * sumsq(w)`)"))
        if c == 3:
            return BilRuntimeError("the lower objective's Hessian is not positive definite at the solution, so the "
                                   "implicit hypergradient is undefined", span,
                                   "add a strongly convex term (e.g. `+ 1e-3 * sumsq(x)`), or use "
                                   "`hypergradient: unroll` in the solve block")
        m = method or self.method
        if c == 2 and m.name == "neumann":
            return BilRuntimeError("the Neumann series for the adjoint diverged (NaN or Inf)", span,
                                   "its step must be below 2/L, L the lower Hessian's largest eigenvalue: lower "
                                   "`neumann(alpha=...)` or leave it out (then it is estimated), or use `implicit`")
        if c == 2:
            how = "direct" if m.name == "implicit" and m.kwargs.get("linear") == "direct" else "CG"
            return BilRuntimeError(f"the adjoint ({how}) solve produced NaN or Inf", span,
                                   "the lower Hessian may be singular: add a strongly convex term")
        if c == 1:
            return BilRuntimeError(f"CG did not reach the requested residual{norm('‖Hq − ∇ₓf‖', residual)}",
                                   span, (f32_hint if f32 else
                                          "raise `implicit(max_iter=...)`, loosen the tolerance, or use "
                                          "`implicit(linear=\"direct\")` for a small problem"))
        return None


def reduced_operator(hv, mask):
    """The Hessian restricted to the free coordinates (``mask`` 1 where a bounded variable is
    free, 0 at an active bound), identity on the active ones: v ↦ m·H(m·v) + (1 − m)·v.
    Symmetric, so CG applies; with a right-hand side masked the same way, the solution is 0
    on the active coordinates (they stay at their bound)."""
    def op(v):
        hmv = hv(jax.tree.map(jnp.multiply, mask, v))
        return jax.tree.map(lambda m, h, w: m * h + (1 - m) * w, mask, hmv, v)

    return op


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
