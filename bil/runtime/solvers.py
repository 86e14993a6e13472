"""Lower-level solvers: pure-JAX iterative minimizers over pytrees.

Every solver minimizes ``fun(x, params)`` over ``x`` (a pytree), is jittable
and vmappable (a single ``lax.while_loop``), takes its tolerance as a traced
value (changing ``tol`` never recompiles; ``max_iter`` is a Python int or a
traced integer) and
reports the iterations it took, which the runtime counts as cost.

Stopping rule (docs/ALGORITHMS.md, "Lower solvers"): ``grad_norm <= tol``,
checked before the first iteration so an accurate warm start costs nothing.
With box ``bounds`` the measure is the projected-gradient norm
``||x - P(x - grad)||``; with a non-smooth term h (``prox``, fista and gd only)
``fun`` is the smooth part and the measure is the prox-gradient residual
``||x - prox_h(x - grad)||`` (step 1), which is 0 exactly at a minimiser of fun + h.

Status codes: 0 converged; 1 stopped without reaching ``tol`` (``max_iter``
reached, or the line search could make no progress); 2 a non-finite value or
gradient was met (the last finite iterate is returned).
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from . import quadratic
from .linear import cg
from .solve_result import MAX_ITER, NONFINITE, SolveResult
from .solver_steps import (_L_SHRINK, _MAX_LS, _ROUNDOFF, _accept, _eps, _measure, _norm, _prox_backtrack, _run,
                           _start, _value_and_grad, projector, prox_operator)

__all__ = ["SolveResult", "SOLVERS", "solve", "projector", "strong_convexity_estimate"]

# ----------------------------------------------------------------------------
# solvers


def lbfgs(fun, x0, params, tol, max_iter: int, bounds=None, prox=None, *, memory: int = 10,
          with_grad: bool = False):
    """L-BFGS with optax's zoom (strong Wolfe) line search. Unbounded and smooth only.
    ``with_grad``: return (result, the gradient at its final iterate)."""
    if bounds is not None or prox is not None:
        raise ValueError("lbfgs does not support bounded variables or non-smooth terms; use fista or gd")
    opt = optax.lbfgs(memory_size=int(memory))
    value_fn = lambda z: fun(z, params)  # noqa: E731
    vg = _value_and_grad(fun, params)
    measure = _measure(None)

    def step(c):
        updates, s = opt.update(c.g, c.aux, c.x, value=c.f, grad=c.g,
                                value_fn=value_fn)
        x1 = optax.apply_updates(c.x, updates)
        # The zoom line search stores value and gradient at the new iterate.
        # This is what optax.value_and_grad_from_state returns; we read the
        # state directly because that helper's lax.cond (recompute if the
        # stored value is inf) becomes a select under vmap and would evaluate
        # the gradient twice per iteration.
        f1 = otu.tree_get(s, "value")
        g1 = otu.tree_get(s, "grad")
        gn1, finite = measure(x1, f1, g1)
        moved = _norm(updates) > 0
        ok = finite & moved
        fail = jnp.where(finite, MAX_ITER, NONFINITE)
        return _accept(c, ok, x1, f1, g1, gn1, fail, s)

    return _run(step, _start(vg, measure, x0, opt.init(x0)), tol, max_iter, with_grad)


def fista(fun, x0, params, tol, max_iter: int, bounds=None, prox=None, *, mu=None, L0=1.0):
    """FISTA (accelerated proximal gradient) with backtracking and restart.

    optax has no FISTA (nor any proximal/projected accelerated method), hence
    this implementation.  ``L`` is shrunk by 0.9 before each sufficient-
    decrease test and doubled on failure.  Momentum is the classical
    ``(t_k - 1)/t_{k+1}``, or ``(sqrt(L)-sqrt(mu))/(sqrt(L)+sqrt(mu))`` when
    the strong-convexity modulus ``mu`` is given.  Adaptive gradient restart
    (O'Donoghue & Candès 2015) drops the momentum whenever
    ``<y - x_{k+1}, x_{k+1} - x_k> > 0``.  ``fun`` is the smooth part; the step
    is the prox of ``prox(z, t, params)`` (a non-smooth term, optional) followed by
    the projection onto ``bounds`` (optional).
    """
    proj = projector(bounds)
    op = prox_operator(bounds, prox, params)
    measure = _measure(op)
    op = op or (lambda z, t: z)
    vg = _value_and_grad(fun, params)
    x0 = proj(x0)

    def step(c):
        y, t, L, y_is_x = c.aux
        fy, gy = vg(y)
        x1, f1, g1, gn1, L1, ok = _prox_backtrack(vg, op, measure, y, fy, gy,
                                                  _L_SHRINK * L)
        x, dx = c.x, otu.tree_sub(x1, c.x)
        if mu is None:
            t1 = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            beta = (t - 1.0) / t1
        else:
            q = jnp.sqrt(jnp.clip(mu / L1, 0.0, 1.0))
            beta = (1.0 - q) / (1.0 + q)
            t1 = t
        restart = otu.tree_vdot(otu.tree_sub(y, x1), dx) > 0
        beta = jnp.where(restart, 0.0, beta)
        t1 = jnp.where(restart, 1.0, t1)
        # y is projected too, so fun is only ever evaluated inside the box
        # (objectives such as log-barriers may be undefined outside it).
        y1 = proj(otu.tree_add_scale(x1, beta, dx))
        aux_ok = (y1, t1.astype(t.dtype), L1, beta == 0)
        # A failed search from an extrapolated y restarts from x; from y == x
        # it is a genuine stall.
        aux_fail = (x, jnp.ones_like(t), L, jnp.bool_(True))
        aux = jax.tree.map(lambda a, b: jnp.where(ok, a, b), aux_ok, aux_fail)
        fail_flag = jnp.where(y_is_x, MAX_ITER, -1)
        return _accept(c, ok, x1, f1, g1, gn1, fail_flag, aux)

    c0 = _start(vg, measure, x0, None)
    dt = c0.f.dtype
    aux0 = (x0, jnp.ones((), dt), jnp.asarray(L0, dt), jnp.bool_(True))
    return _run(step, c0._replace(aux=aux0), tol, max_iter)


def gd(fun, x0, params, tol, max_iter: int, bounds=None, prox=None, *, lr=None):
    """(Projected or proximal) gradient descent: fixed step ``lr``, or backtracking if None.

    The backtracking test is the projected-gradient sufficient decrease (Armijo
    with constant 1/2 when unbounded) on the step 1/L, with L shrunk by 0.9
    before each test and doubled on failure.  With ``prox`` (a non-smooth term)
    ``fun`` is the smooth part and each step is a proximal step (ISTA).
    """
    proj = projector(bounds)
    op = prox_operator(bounds, prox, params)
    measure = _measure(op)
    op = op or (lambda z, t: z)
    vg = _value_and_grad(fun, params)
    x0 = proj(x0)

    if lr is not None:
        def step(c):
            x1 = op(otu.tree_add_scale(c.x, -lr, c.g), lr)
            f1, g1 = vg(x1)
            gn1, ok = measure(x1, f1, g1)
            return _accept(c, ok, x1, f1, g1, gn1, NONFINITE, c.aux)

        return _run(step, _start(vg, measure, x0, None), tol, max_iter)

    def step(c):
        x1, f1, g1, gn1, L1, ok = _prox_backtrack(vg, op, measure, c.x, c.f, c.g,
                                                  _L_SHRINK * c.aux)
        return _accept(c, ok, x1, f1, g1, gn1, MAX_ITER, jnp.where(ok, L1, c.aux))

    c0 = _start(vg, measure, x0, None)
    return _run(step, c0._replace(aux=jnp.ones((), c0.f.dtype)), tol, max_iter)


def newton_cg(fun, x0, params, tol, max_iter: int, bounds=None, prox=None, *, cg_max_iter: int = 50):
    """Truncated Newton: CG on Hessian-vector products + Armijo backtracking.

    CG solves ``H d = -g`` to the Eisenstat–Walker forcing tolerance
    ``min(0.5, sqrt(||g||)) * ||g||``.  If CG meets non-positive curvature at
    its first step, or returns a non-descent direction, ``d = -g``.  Hessian
    products are forward-over-reverse via ``jax.linearize`` of the gradient
    (linearized once per outer iteration).  Unbounded only.
    """
    if bounds is not None or prox is not None:
        raise ValueError("newton_cg does not support bounded variables or non-smooth terms; use fista or gd")
    vg = _value_and_grad(fun, params)
    grad = jax.grad(fun)
    measure = _measure(None)
    c1 = 1e-4

    def step(c):
        x, f = c.x, c.f
        g, hv = jax.linearize(lambda z: grad(z, params), x)
        neg_g = otu.tree_scale(-1.0, g)
        gn = _norm(g)
        cgtol = jnp.minimum(0.5, jnp.sqrt(gn)) * gn
        d = cg(hv, neg_g, otu.tree_zeros_like(x), cgtol, cg_max_iter).x
        gd_ = otu.tree_vdot(g, d)
        # CG stops before a negative-curvature step, so d == 0 there: fall back.
        sd = ~(gd_ < 0)
        d = otu.tree_where(sd, neg_g, d)
        gd_ = jnp.where(sd, -gn * gn, gd_)
        eps = _eps(f)

        def trial(t):
            x1 = otu.tree_add_scale(x, t, d)
            f1, g1 = vg(x1)
            # Armijo, or (near roundoff) no visible increase and a directional
            # derivative reduced in magnitude (approximate Wolfe).
            slack = _ROUNDOFF * eps * jnp.abs(f)
            ok = (f1 <= f + c1 * t * gd_) | (
                (f1 <= f + slack) & (jnp.abs(otu.tree_vdot(g1, d)) <= 0.9 * jnp.abs(gd_)))
            gn1, finite = measure(x1, f1, g1)
            return x1, f1, g1, gn1, ok & finite

        def cond(s):
            return ~s[5] & (s[6] < _MAX_LS)

        def body(s):
            t = 0.5 * s[0]
            return (t, *trial(t), s[6] + 1)

        t0 = jnp.ones((), f.dtype)
        _, x1, f1, g1, gn1, ok, _ = jax.lax.while_loop(cond, body, (t0, *trial(t0), 0))
        return _accept(c, ok, x1, f1, g1, gn1, MAX_ITER, c.aux)

    return _run(step, _start(vg, measure, x0, None), tol, max_iter)


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "lbfgs": lbfgs,
    "fista": fista,
    "gd": gd,
    "newton_cg": newton_cg,
    # quadratic objectives only (the compiler checks): bil/runtime/quadratic.py
    "direct": quadratic.direct,
    "cg": quadratic.cg,
}


def _option_names(fn) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def solve(method: str, fun: Callable, x0, params, tol, max_iter: int,
          options: dict | None = None, bounds=None, prox=None) -> SolveResult:
    """Minimize ``fun(x, params)`` over ``x`` starting from ``x0``.

    Args:
      method: one of ``SOLVERS`` ("lbfgs", "fista", "gd", "newton_cg"; "direct", "cg"
        for quadratic objectives).
      fun: scalar objective ``fun(x, params)``.
      x0: initial pytree (warm start); projected onto ``bounds`` if given.
      params: pytree of (possibly traced) parameters passed to ``fun``.
      tol: stop when the (projected) gradient norm is ``<= tol``; may be traced.
      max_iter: iteration budget: a Python int, or a traced integer scalar
        (then changing it does not recompile either).
      options: solver keyword arguments: lbfgs(memory=10), fista(mu=None,
        L0=1.0), gd(lr=None), newton_cg(cg_max_iter=50).
      bounds: None or a pair ``(lo, hi)`` of pytrees shaped like ``x0``
        (entries may be +-inf); supported by fista and gd.
      prox: None, or ``prox(z, t, params)``, the proximal operator of t·h for a
        non-smooth term h (``fun`` is then the smooth part); fista and gd only.

    Returns:
      :class:`SolveResult` (x, iters, grad_norm, status).
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; expected one of {sorted(SOLVERS)}")
    fn = SOLVERS[method]
    options = dict(options or {})
    unknown = set(options) - _option_names(fn)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for solver {method!r}; "
                         f"accepted: {sorted(_option_names(fn))}")
    if prox is None:
        return fn(fun, x0, params, tol, max_iter, bounds, **options)
    return fn(fun, x0, params, tol, max_iter, bounds, prox, **options)


def strong_convexity_estimate(fun: Callable, x, params, iters: int = 20):
    """Estimate the smallest eigenvalue of ``∇²ₓₓ fun(x, params)``.

    Runs ``iters`` steps (at most dim x) of Lanczos with full
    reorthogonalization on Hessian-vector products from a fixed pseudo-random
    start, and returns the smallest Ritz value.  Ritz values approach the
    extreme eigenvalues from inside the spectrum, so this is an *upper* bound
    on the true modulus (tight once the Krylov space captures the bottom
    eigenvector); callers that need a safe lower bound should apply a margin.
    """
    flat_x, unravel = ravel_pytree(x)
    n = flat_x.shape[0]
    m = max(1, min(int(iters), n))
    _, hv = jax.linearize(lambda z: jax.grad(fun)(z, params), x)

    def mv(v):
        return ravel_pytree(hv(unravel(v)))[0]

    dt = flat_x.dtype
    q0 = jax.random.normal(jax.random.PRNGKey(0), (n,), dt)
    q0 = q0 / jnp.linalg.norm(q0)
    tiny = jnp.sqrt(jnp.finfo(dt).eps)

    def body(c, j):
        Q, q, q_prev, beta_prev, scale, active = c
        Q = Q.at[j].set(q)
        w = mv(q)
        alpha = q @ w
        w = w - alpha * q - beta_prev * q_prev
        w = w - Q.T @ (Q @ w)  # full reorthogonalization (rows > j are zero)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        nxt_active = active & (beta > tiny * scale)
        q_next = jnp.where(nxt_active, w / jnp.where(nxt_active, beta, 1.0), 0.0)
        return (Q, q_next, q, beta, scale, nxt_active), (alpha, beta, active)

    init = (jnp.zeros((m, n), dt), q0, jnp.zeros_like(q0), jnp.zeros((), dt),
            jnp.zeros((), dt), jnp.bool_(True))
    _, (alphas, betas, active) = jax.lax.scan(body, init, jnp.arange(m))
    # After a breakdown the remaining rows are decoupled copies of alpha_0,
    # which (a Rayleigh quotient of T) cannot lower the smallest Ritz value.
    alphas = jnp.where(active, alphas, alphas[0])
    off = jnp.where(active[1:], betas[:-1], 0.0)
    T = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(T)[0]
