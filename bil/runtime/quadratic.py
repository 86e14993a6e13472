"""Lower solvers for objectives the compiler proved quadratic in the lower variables.

For such a g the gradient is affine, ∇g(x) = H x − b with H constant, so the
minimiser solves one linear system:

* :func:`direct` materialises H (directional derivatives of the gradient along the
  unit vectors of the flattened variables: n forward passes), factors it once (Cholesky; LU where
  Cholesky breaks down, e.g. a near-singular H that roundoff made indefinite)
  and takes Newton steps x ← x − H⁻¹∇g(x) with that factor until
  ‖∇g(x)‖ ≤ tol.  The first step is exact up to roundoff; the following ones
  are iterative refinement with the *true* gradient as residual, which is
  what brings an ill-conditioned system (kernel ridge) to its tolerance.  The
  factor is returned so the adjoint H q = ∇ₓf reuses it (:func:`factor_adjoint`).
* :func:`cg` runs conjugate gradients on Hessian-vector products, warm
  started at x0: the residual of H d = −∇g(x0) *is* ∇g(x0 + d), so CG stops at
  the solver's own tolerance.  Matrix-free, for large n.

Both follow :mod:`bil.runtime.solvers`' conventions (traced ``tol``, status 0/1/2,
iterations reported: factorisation and refinement steps for ``direct``, Hessian
products for ``cg``).  Neither supports bounds.

Inside :func:`one_pass` (a trace-time switch) ``direct`` and :func:`factor_adjoint` take
one Cholesky solve each, with no refinement loop and no LU fallback, and report status
0 only where the same certificates hold (‖∇g‖ ≤ tol, ‖Hq − b‖ ≤ tol, both from the true
gradient and Hessian products): the public ``value_and_hypergrad`` traces its program
so and repeats a call whose certificate failed on the general path.  On a small problem
(ridge, 10 features) the refinement loops and the fallback conds cost more than the
solves, even where the fallback is never taken (measured in README, "Against jaxopt and
optimistix").
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.flatten_util import ravel_pytree

from .linear import cg as _cg
from .solve_result import CONVERGED, MAX_ITER, NONFINITE, SolveResult

#: refinement steps after the first solve (each costs one gradient and two triangular solves)
MAX_REFINE = 5

_ONE_PASS = contextvars.ContextVar("bil_direct_one_pass", default=False)


@contextlib.contextmanager
def one_pass():
    """While tracing inside this context, ``direct`` and :func:`factor_adjoint` make one
    Cholesky solve each and only certify it (module docstring); the caller must repeat a
    call with a non-zero status without it."""
    token = _ONE_PASS.set(True)
    try:
        yield
    finally:
        _ONE_PASS.reset(token)


def _certified(norm, tol):
    """Status of a one-pass solve: 0 where ``norm`` ≤ tol, 2 where it is not finite, else 1."""
    return jnp.where(norm <= tol, CONVERGED, jnp.where(jnp.isfinite(norm), MAX_ITER, NONFINITE)).astype(jnp.int32)


class Factor(NamedTuple):
    """A factorisation of the (flattened) Hessian: Cholesky ``L`` (``chol`` true) or LU with pivots."""

    mat: jax.Array
    piv: jax.Array
    chol: jax.Array


def factor(H) -> Factor:
    """Cholesky of H, or its LU where Cholesky is not finite (H indefinite in roundoff)."""
    n = H.shape[0]
    L = jnp.linalg.cholesky(H)
    ok = jnp.all(jnp.isfinite(L))

    def lu(_):
        m, piv = jsl.lu_factor(H)
        return Factor(m, piv.astype(jnp.int32), jnp.bool_(False))

    def chol(_):
        return Factor(L, jnp.arange(n, dtype=jnp.int32), jnp.bool_(True))

    return jax.lax.cond(ok, chol, lu, None)


def factor_solve(F: Factor, b):
    """H⁻¹ b from a :class:`Factor` (b flat)."""
    return jax.lax.cond(F.chol, lambda b: jsl.cho_solve((F.mat, True), b),
                        lambda b: jsl.lu_solve((F.mat, F.piv), b), b)


def refine(residual, F: Factor, x, tol, max_steps):
    """Steps x ← x − H⁻¹ r(x) until ‖r(x)‖ ≤ tol (checked first) or ``max_steps``.

    Returns (x, steps, ‖r(x)‖, status): 0 met, 1 not met, 2 non-finite."""
    tol = jnp.asarray(tol)

    def cond(c):
        _, _, rn, k, bad = c
        return (rn > tol) & (k < max_steps) & ~bad

    def body(c):
        x, r, _, k, _ = c
        x1 = x - factor_solve(F, r)
        r1 = residual(x1)
        rn1 = jnp.linalg.norm(r1)
        return x1, r1, rn1, k + 1, ~jnp.isfinite(rn1)

    r0 = residual(x)
    rn0 = jnp.linalg.norm(r0)
    x, _, rn, k, bad = jax.lax.while_loop(cond, body, (x, r0, rn0, jnp.int32(0), ~jnp.isfinite(rn0)))
    status = jnp.where(bad, NONFINITE, jnp.where(rn <= tol, CONVERGED, MAX_ITER)).astype(jnp.int32)
    return x, k, rn, status


#: below this many variables the Hessian's columns are products with a literal identity,
#: which XLA folds with constant data (XᵀX of a problem whose data is baked in)
_LITERAL_EYE = 256


def _flat(fun, x0, params):
    flat0, unravel = ravel_pytree(x0)
    grad = jax.grad(lambda z: fun(unravel(z), params))
    return flat0, unravel, grad


def _hessian(grad, flat):
    """The symmetrised Hessian, column i the directional derivative of ``grad`` along eᵢ."""
    n = flat.shape[0]
    if n > _LITERAL_EYE:
        H = jax.jacfwd(grad)(flat)
    else:
        H = jax.vmap(lambda v: jax.jvp(grad, (flat,), (v,))[1], out_axes=1)(np.eye(n, dtype=flat.dtype))
    return 0.5 * (H + H.T)


def direct(fun, x0, params, tol, max_iter, bounds=None):
    """Minimise a quadratic ``fun(x, params)`` with a factorisation of its Hessian (module docstring).

    Returns a :class:`~bil.runtime.solve_result.SolveResult` whose ``factor`` is the :class:`Factor`."""
    if bounds is not None:
        raise ValueError("direct does not support bounded variables; use fista or gd")
    flat0, unravel, grad = _flat(fun, x0, params)
    H = _hessian(grad, flat0)
    if _ONE_PASS.get() and not (isinstance(max_iter, int) and max_iter < 1):
        L = jnp.linalg.cholesky(H)   # not finite where H is not positive definite: status 2
        x = flat0 - jsl.cho_solve((L, True), grad(flat0))
        gn = jnp.linalg.norm(grad(x))
        F = Factor(L, jnp.arange(flat0.shape[0], dtype=jnp.int32), jnp.bool_(True))
        return SolveResult(x=unravel(x), iters=jnp.int32(1), grad_norm=gn.astype(flat0.dtype),
                           status=_certified(gn, tol), factor=F)
    F = factor(H)
    steps = jnp.minimum(jnp.asarray(max_iter), 1 + MAX_REFINE)
    x, k, gn, status = refine(grad, F, flat0, tol, steps)
    return SolveResult(x=unravel(x), iters=k, grad_norm=gn.astype(flat0.dtype), status=status, factor=F)


def cg(fun, x0, params, tol, max_iter, bounds=None):
    """Minimise a quadratic ``fun(x, params)`` by CG on Hessian-vector products (module docstring)."""
    if bounds is not None:
        raise ValueError("cg does not support bounded variables; use fista or gd")
    flat0, unravel, grad = _flat(fun, x0, params)
    g0, hv = jax.linearize(grad, flat0)
    r = _cg(hv, -g0, jnp.zeros_like(flat0), tol, max_iter)
    x = flat0 + r.x
    gn = jnp.linalg.norm(grad(x))
    # CG's residual is ∇g(x) up to roundoff; the reported norm is the true gradient's
    status = jnp.where(~jnp.isfinite(gn) | (r.status == 2), NONFINITE,
                       jnp.where((r.status == 0) | (gn <= tol), CONVERGED, MAX_ITER)).astype(jnp.int32)
    return SolveResult(x=unravel(x), iters=r.iters, grad_norm=gn, status=status)


def factor_adjoint(F: Factor, hv, b, tol):
    """Solve H q = b (b a pytree) with the lower solve's factor, refined on ``hv`` products to
    ‖Hq − b‖ ≤ tol.  Returns (q, refinement steps, residual, status) like the engine's CG."""
    flat_b, unravel = ravel_pytree(b)

    def residual(q):
        return ravel_pytree(hv(unravel(q)))[0] - flat_b

    if _ONE_PASS.get():
        # the factor is the one-pass solve's Cholesky (a failed one was reported there)
        q = jsl.cho_solve((F.mat, True), flat_b)
        res = jnp.linalg.norm(residual(q))
        return unravel(q), jnp.int32(1), res, _certified(res, tol)
    q, k, res, status = refine(residual, F, jnp.zeros_like(flat_b), tol, 1 + MAX_REFINE)
    return unravel(q), k, res, status


def hessian_factor(fun, x, params) -> Any:
    """The :class:`Factor` of ∇²ₓₓ fun at ``x`` (for an adjoint without a lower factor at hand)."""
    flat, _, grad = _flat(fun, x, params)
    H = _hessian(grad, flat)
    if _ONE_PASS.get():
        return Factor(jnp.linalg.cholesky(H), jnp.arange(flat.shape[0], dtype=jnp.int32), jnp.bool_(True))
    return factor(H)
