"""A test double of :class:`bil.runtime.oracles.AbstractOracles`: a quadratic bilevel problem.

    lower  g(x, θ) = ½ xᵀAx − xᵀ(Bθ + c),   A SPD          x*(θ) = A⁻¹(Bθ + c)
    upper  f(x, θ) = ½‖Cx − d‖² + ½ρ‖θ‖²

F(θ) = ½‖Mθ + r‖² + ½ρ‖θ‖² with M = CA⁻¹B, r = CA⁻¹c − d, so
θ* = −(MᵀM + ρI)⁻¹Mᵀr in closed form.  H = A, J = ∇²ₓθ g = −B, hence
z = ∇θf − Jᵀq = ρθ + Bᵀq with Aq = ∇ₓf = Cᵀ(Cx − d).

The oracles are honest: the lower "solve" is jitted gradient descent (step
1/λ_max(A)) that stops at ‖∇ₓg‖ ≤ μ·eps (so ‖x̃ − x*‖ ≤ eps) or at its cap and
counts its iterations; the adjoint is jitted CG on Aq = ∇ₓf stopping at the
absolute residual ‖Aq − ∇ₓf‖ ≤ delta, warm-started from q0.  The constants are
exact: μ = λ_min(A), L_f = ‖CᵀC‖, ‖J‖ = ‖B‖, L_H = L_J = L_fθ = 0.

θ is the concatenation of the hypers in ``shapes`` (unconstrained coordinates,
``to_user`` is the identity).  ``traces`` counts how often each jitted
function is traced (a Python side effect that runs only while tracing).
"""

from __future__ import annotations

import collections

import bil  # noqa: F401  (float64)
import jax
import jax.numpy as jnp
import numpy as np

from bil.runtime.engine import _cap
from bil.runtime.oracles import BUDGET, AbstractOracles, Constants, HyperGrad, UpperValue


class QuadraticOracles(AbstractOracles):
    def __init__(self, n: int = 8, shapes=None, rho: float = 0.1, seed: int = 0, cond: float = 4.0,
                 s_range=(0.7, 1.5), noise: float = 0.3, lower_max_iter: int = 100000,
                 cg_max_iter: int = 1000, theta0: float = 0.0):
        rng = np.random.default_rng(seed)
        self.shapes = dict(shapes if shapes is not None else {"a": (), "b": (3,)})
        self.sizes = {k: int(np.prod(s, dtype=int)) for k, s in self.shapes.items()}
        p = sum(self.sizes.values())
        assert p <= n, "need p <= n for the well-conditioned construction"
        Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        A = Q @ np.diag(np.linspace(1.0, cond, n)) @ Q.T
        U, _ = np.linalg.qr(rng.normal(size=(n, p)))
        S = np.diag(np.linspace(s_range[0], s_range[1], p))
        B = A @ U @ S                     # so that M = A⁻¹B = US is well conditioned
        C = np.eye(n)
        c = rng.normal(size=n)
        theta_true = rng.normal(size=p)
        d = np.linalg.solve(A, B @ theta_true + c) + noise * rng.normal(size=n)
        self.A, self.B, self.C, self.c, self.d, self.rho = A, B, C, c, d, float(rho)
        self.n, self.p = n, p
        self.lower_max_iter, self.cg_max_iter = int(lower_max_iter), int(cg_max_iter)
        self.mu = float(np.linalg.eigvalsh(A).min())
        self.L_A = float(np.linalg.eigvalsh(A).max())
        self._consts = Constants(mu=self.mu, L_f=float(np.linalg.norm(C.T @ C, 2)),
                                 J_norm=float(np.linalg.norm(B, 2)), L_H=0.0, L_J=0.0)
        self.u0 = self.unflatten(np.full(p, float(theta0)))
        self.traces: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._value = jax.jit(self._value_impl)
        self._hypergrad = jax.jit(self._hypergrad_impl)
        self._gnorm = jax.jit(self._gnorm_impl)

    # ------------------------------------------------------------ coordinates
    def flatten(self, u) -> jnp.ndarray:
        return jnp.concatenate([jnp.ravel(jnp.asarray(u[k])) for k in self.shapes])

    def unflatten(self, theta):
        out, i = {}, 0
        for k, s in self.shapes.items():
            n = self.sizes[k]
            out[k] = np.asarray(theta[i:i + n]).reshape(s).copy() if isinstance(theta, np.ndarray) \
                else theta[i:i + n].reshape(s)
            i += n
        return out

    # ------------------------------------------------------------ closed form
    def x_star(self, theta):
        return np.linalg.solve(self.A, self.B @ np.asarray(theta) + self.c)

    def F(self, theta) -> float:
        """The exact upper objective F(θ) = f(x*(θ), θ)."""
        theta = np.asarray(theta, dtype=float)
        r = self.C @ self.x_star(theta) - self.d
        return 0.5 * float(r @ r) + 0.5 * self.rho * float(theta @ theta)

    def grad_F(self, theta):
        theta = np.asarray(theta, dtype=float)
        gx = self.C.T @ (self.C @ self.x_star(theta) - self.d)
        return self.rho * theta + self.B.T @ np.linalg.solve(self.A, gx)

    def theta_star(self):
        M = self.C @ np.linalg.solve(self.A, self.B)
        r = self.C @ np.linalg.solve(self.A, self.c) - self.d
        return -np.linalg.solve(M.T @ M + self.rho * np.eye(self.p), M.T @ r)

    def theta_of(self, u):
        return np.concatenate([np.ravel(np.asarray(u[k])) for k in self.shapes])

    # ------------------------------------------------------------ jitted parts
    def _lower(self, theta, x0, eps, cap):
        A, b = jnp.asarray(self.A), jnp.asarray(self.B) @ theta + jnp.asarray(self.c)
        tol = self.mu * eps
        step = 1.0 / self.L_A

        def cond(c):
            x, k, gn = c
            return (gn > tol) & (k < jnp.minimum(self.lower_max_iter, cap)) & jnp.isfinite(gn)

        def body(c):
            x, k, _ = c
            x = x - step * (A @ x - b)
            return x, k + 1, jnp.linalg.norm(A @ x - b)

        x, k, gn = jax.lax.while_loop(cond, body, (x0, jnp.int32(0), jnp.linalg.norm(A @ x0 - b)))
        status = jnp.where(~jnp.isfinite(gn), 2, jnp.where(gn > tol, 1, 0))
        status = jnp.where((status == 1) & (k >= cap) & (cap < self.lower_max_iter), BUDGET, status)
        return x, k, status.astype(jnp.int32)

    def _upper(self, x, theta):
        r = jnp.asarray(self.C) @ x - jnp.asarray(self.d)
        f = 0.5 * jnp.dot(r, r) + 0.5 * self.rho * jnp.dot(theta, theta)
        gx = jnp.asarray(self.C).T @ r
        return f, gx

    def _value_impl(self, u, x0, eps, cap):
        self.traces["value"] += 1
        theta = self.flatten(u)
        x, k, status = self._lower(theta, x0, eps, cap)
        f, gx = self._upper(x, theta)
        return UpperValue(f=f, x=x, lower_iters=k, lower_status=status, gx_norm=jnp.linalg.norm(gx))

    def _cg(self, b, q0, delta, cap):
        A = jnp.asarray(self.A)
        r0 = b - A @ q0

        def cond(c):
            q, r, p, rr, k, st = c
            return (st < 0) & (jnp.sqrt(rr) > delta) & (k < jnp.minimum(self.cg_max_iter, cap))

        def body(c):
            q, r, p, rr, k, st = c
            Ap = A @ p
            pAp = jnp.dot(p, Ap)
            bad = ~jnp.isfinite(pAp)
            neg = pAp <= 0
            a = rr / jnp.where(neg | bad, 1.0, pAp)
            q2 = q + a * p
            r2 = r - a * Ap
            rr2 = jnp.dot(r2, r2)
            p2 = r2 + (rr2 / rr) * p
            st2 = jnp.where(bad, 2, jnp.where(neg, 3, -1)).astype(jnp.int32)
            keep = (st2 >= 0)
            return (jnp.where(keep, q, q2), jnp.where(keep, r, r2), jnp.where(keep, p, p2),
                    jnp.where(keep, rr, rr2), k + 1, st2)

        q, r, p, rr, k, st = jax.lax.while_loop(
            cond, body, (q0, r0, r0, jnp.dot(r0, r0), jnp.int32(0), jnp.int32(-1)))
        res = jnp.linalg.norm(b - A @ q)
        st = jnp.where(st >= 0, st, jnp.where(res > delta, 1, 0))
        st = jnp.where((st == 1) & (k >= cap) & (cap < self.cg_max_iter), BUDGET, st)
        return q, k, st.astype(jnp.int32)

    def _hypergrad_impl(self, u, x0, q0, eps, delta, cap):
        self.traces["hypergrad"] += 1
        theta = self.flatten(u)
        x, k, status = self._lower(theta, x0, eps, cap)
        f, gx = self._upper(x, theta)
        q, kc, cst = self._cg(gx, q0, delta, jnp.maximum(cap - k, 0))
        jtq = jnp.asarray(self.B).T @ q          # −Jᵀq
        z = self.rho * theta + jtq
        return HyperGrad(f=f, z=self.unflatten(z), x=x, q=q, lower_iters=k, cg_iters=kc, lower_status=status,
                         cg_status=cst, gx_norm=jnp.linalg.norm(gx), q_norm=jnp.linalg.norm(q),
                         jtq_norm=jnp.linalg.norm(jtq),
                         qr=jnp.dot(q, jnp.asarray(self.A) @ x - jnp.asarray(self.B) @ theta - jnp.asarray(self.c)))

    def _gnorm_impl(self, u, x):
        self.traces["gnorm"] += 1
        theta = self.flatten(u)
        return jnp.linalg.norm(jnp.asarray(self.A) @ x - jnp.asarray(self.B) @ theta - jnp.asarray(self.c))

    # ------------------------------------------------------------ interface
    def to_user(self, u):
        return {k: np.asarray(v) for k, v in u.items()}

    def init_lower(self, u):
        return jnp.zeros(self.n)

    def init_adjoint(self, x):
        return jnp.zeros_like(x)

    def value(self, u, x0, eps, cap=None):
        self.calls["value"] += 1
        return self._value(u, x0, eps, _cap(cap))

    def hypergrad(self, u, x0, q0, eps, delta, cap=None):
        self.calls["hypergrad"] += 1
        return self._hypergrad(u, x0, q0, eps, delta, _cap(cap))

    def constants(self, u, x):
        self.calls["constants"] += 1
        return self._consts

    def lower_grad_norm(self, u, x):
        return float(self._gnorm(u, x))

    def log_hypers(self):
        return {k: False for k in self.shapes}
