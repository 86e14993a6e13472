"""The lower solution x*(θ) as an ordinary, differentiable JAX function.

``prog.objective`` is f(x*(θ), θ).  Differentiating it through the lower
solver's iterations would be slow and wrong (a while loop has no reverse mode,
and a solution's derivative is not the derivative of the iterations that
found it), so x*(θ) gets a custom JVP from the implicit function theorem:
∇ₓg(x*(θ), θ) = 0 gives

    H ẋ = −∂θ∇ₓg · θ̇,        H = ∇²ₓₓg(x*, θ).

The tangent system is solved with ``jax.lax.custom_linear_solve`` (H is
symmetric), by the spec's linear method (CG, direct or Neumann) through the
engine's adjoint solver.  That single rule gives every mode JAX has:

* reverse mode (``jax.grad``) transposes the rule: one solve with H against
  ∇ₓf, which is the adjoint method;
* forward mode (``jax.jvp``, ``jax.jacfwd``) runs it as written;
* second derivatives (``jax.hessian``, grad of grad) differentiate the rule
  itself: the Hessian-vector product in it depends on θ directly and through
  x*(θ), which is this same function again, and ``custom_linear_solve``
  differentiates its operator.

With box bounds on the lower variables the active ones stay at their bound
(ẋ = 0 there) and the system is the reduced one on the free coordinates, as
for the adjoint; likewise entries that a non-smooth term (l1, group lasso)
holds at 0 stay there, and on the rest of the support the term is smooth
(:mod:`bil.runtime.prox`).  Where the lower solve or a tangent solve fails (iteration
cap, non-finite values) the result is NaN, never a plausible wrong number.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bil.runtime.adjoint import reduced_operator


def _nan_unless(ok, tree):
    return jax.tree.map(lambda a: jnp.where(ok, a, jnp.nan), tree)


def lower_solution(eng, tol: float, method=None) -> Callable[[dict, Any], Any]:
    """(θ, data) -> x*(θ), θ every hyper in user coordinates and data the engine's
    (``eng.low.data``: an argument, not a constant baked into the compiled program), solved
    to ‖∇ₓg‖ ≤ ``tol`` from the spec's initial values; derivatives in θ of any order by the
    implicit function theorem (module docstring; data has none), the tangent systems solved
    by ``method`` (default: the spec's hypergradient method) to a residual of
    ``tol``·max(1, ‖right-hand side‖)."""
    method = method or eng.method
    reduced = eng._reduced  # active bounds, or entries a non-smooth term holds at 0

    def grad_x(X, theta, d):
        return jax.grad(eng.G)(X, theta, d)

    def free_mask(X, theta, d):
        return eng._vmap(eng._free_mask, (0, None, eng.low.data_axes))(X, theta, d)

    @jax.custom_jvp
    def solution(theta, d):
        sol = eng._solve(theta, d, eng.X_init(theta, d), tol)
        return _nan_unless(sol.status == 0, sol.x)

    @solution.defjvp
    def solution_jvp(primals, tangents):
        (theta, d), (theta_dot, _) = primals, tangents  # data is constant: its tangent is ignored
        X = solution(theta, d)  # this function again: its own rule applies under a second derivative
        rhs = jax.jvp(lambda th: grad_x(X, th, d), (theta,), (theta_dot,))[1]
        rhs = jax.tree.map(jnp.negative, rhs)

        def matvec(v):
            return jax.jvp(lambda y: grad_x(y, theta, d), (X,), (v,))[1]

        if reduced:
            # the reduced system on the free coordinates, identity on the active ones
            # (whose right-hand side is 0: they stay at their bound, or at 0)
            mask = jax.lax.stop_gradient(free_mask(X, theta, d))
            matvec = reduced_operator(matvec, mask)
            rhs = jax.tree.map(jnp.multiply, mask, rhs)

        def solve(_, b):
            # residual relative to the right-hand side (at least 1): the tangent (or, in reverse
            # mode, the cotangent ∇ₓf) may have any scale, and an absolute 1e-8 against a 1e8
            # tangent failed (NaN) where the derivative is perfectly defined
            zero = jax.tree.map(jnp.zeros_like, b)
            rtol = tol * jnp.maximum(1.0, otu.tree_norm(b))
            q, _, _, status = eng._adjoint(theta, d, X, b, zero, rtol, method)
            return _nan_unless(status == 0, q)

        X_dot = jax.lax.custom_linear_solve(matvec, rhs, solve, symmetric=True)
        return X, X_dot

    return solution
