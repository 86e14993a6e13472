"""Diagnoses of a finished run: where an Inf/NaN came from, and whether the lower solution is a minimum.

A failed solve reports *what* stopped (the adjoint produced NaN, CG hit its cap), which is
not always *why*: an upper objective that overflows makes the adjoint's right-hand side
Inf, and the adjoint then fails although the lower Hessian is fine.  :func:`run_failure`
goes back to the hypers where the run failed, solves the lower problem there and probes
the objectives: the first of the upper value, its derivatives, and the lower objective's
first and second derivatives that is not finite is traced down the expression tree to the
innermost sub-expression that turns finite inputs into Inf/NaN (:func:`culprit`), and the
error names that sub-expression (in a ``def`` body when it came from one) with a hint for
the function involved.  A finite but astronomically large upper gradient, whose roundoff
alone exceeds the residual the adjoint solve was asked for, is named too.

:func:`curvature_warning` estimates the smallest eigenvalue of the lower Hessian (on the
free variables) at the returned solution with a few Lanczos steps on Hessian-vector
products; a clearly negative one means the solver stopped at a saddle point or a maximum
of a nonconvex lower problem, where implicit differentiation does not apply: a warning.
Negative curvature at the lower variables' initial values (the problem is not convex, the
solution may be a local minimum only) gets a milder warning.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bil.compiler import ir
from bil.compiler.errors import BilError, BilRuntimeError, Warning_
from bil.compiler.evaluate import Evaluator

#: stop reasons whose message :func:`run_failure` may improve
_NOT_PD = "adjoint solve failed: lower Hessian not positive definite"
_NUMERIC_STOPS = frozenset({"non-finite hypergradient", "lower solve produced non-finite values",
                            "adjoint solve produced non-finite values", "CG hit its iteration cap", _NOT_PD})

_HINTS = {
    "exp": "exp overflows above about 709 (88 in float32): scale its argument down, bound the hyper that "
           "drives it (`hyper a : real in [lo, hi]`), or use a log-domain form (logsumexp, softplus)",
    "log": "log needs arguments > 0: add a margin (`log(x + 1e-8)`), use `log1p`/softplus, or bound the "
           "variable (`x : real[n] in [1e-6, 10]`)",
    "sqrt": "sqrt needs arguments >= 0 and its derivative is infinite at 0: use `sqrt(x + 1e-12)`, or "
            "`sumsq`/`norm` forms that are smooth where you need them",
    "/": "a denominator reaches 0: add a margin (`a / (b + 1e-12)`) or keep it away from 0 with a bound",
    "^": "a power of a value near 0 with a negative or fractional exponent is infinite (or its derivative "
         "is): add a margin, or bound the variable",
}
_GENERIC = ("check the domain of this expression over the values the lower variables and the hypers take "
            "(log/sqrt of non-positive values, division by 0, overflow)")


# ------------------------------------------------------------------ probing
def _bad(a) -> str | None:
    """'NaN', 'Inf', '-Inf' or None for a numeric value (non-numeric values are never bad)."""
    try:
        arr = np.asarray(a)
    except Exception:  # noqa: BLE001 - strings, tuples of names: not numbers
        return None
    if not np.issubdtype(arr.dtype, np.inexact) or np.all(np.isfinite(arr)):
        return None
    return "NaN" if np.any(np.isnan(arr)) else "-Inf" if np.any(arr == -np.inf) else "Inf"


def _huge(limit: float):
    """A ``bad`` test for :func:`culprit`: finite values beyond ``limit`` in magnitude."""
    def bad(a):
        arr = np.asarray(a)
        if not np.issubdtype(arr.dtype, np.inexact) or arr.size == 0 or not np.all(np.isfinite(arr)):
            return None
        return "huge" if float(np.max(np.abs(arr))) > limit else None

    return bad


def _directions(tree, seed: int):
    """A fixed pseudo-random direction like ``tree`` (float leaves only; others get zeros)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: np.asarray(rng.standard_normal(np.shape(a)), np.asarray(a).dtype)
                        if np.issubdtype(np.asarray(a).dtype, np.inexact) else np.zeros_like(a), tree)


def prober(low, theta: dict, x: dict):
    """``probe(e) -> (value, first, second)``: an IR expression at hypers ``theta`` (user
    coordinates) and lower values ``x``, with its first and second derivatives along one
    fixed direction in (θ, x) (nested JVPs, run eagerly); None where ``e`` is not numeric.
    Per-sample problems are probed for every sample at once."""
    d = low.data
    dt, dx = _directions(theta, 1), _directions(x, 2)
    batched = low.batched

    def probe(e):
        def one(th, xx, dd, tx):
            def f(th, xx):
                return jnp.asarray(Evaluator({**dd["names"], **th, **xx}, dd["consts"])(e), low.dtype)

            def first(th, xx):
                return jax.jvp(f, (th, xx), (dt, tx))

            (v, t1), (_, t2) = jax.jvp(first, (th, xx), (dt, tx))
            return v, t1, t2

        try:
            if batched:
                return jax.vmap(one, in_axes=(None, 0, low.data_axes, 0))(theta, x, d, dx)
            return one(theta, x, d, dx)
        except (BilError, TypeError, ValueError):
            return None   # not a number (a string, a tuple of sizes) or not valid on its own

    return probe


def culprit(e: ir.Expr, probe, bad=_bad) -> tuple[ir.Expr, int, str] | None:
    """(node, order, what) for the innermost sub-expression of ``e`` whose value (order 0),
    first (1) or second (2) derivative is ``what`` (``bad``'s word: NaN/Inf) while its
    operands' are not (at that order or below); None when nothing in ``e`` is bad."""
    def first_bad(node):
        r = probe(node)
        if r is None:
            return None
        for k, part in enumerate(r):
            what = bad(part)
            if what:
                return k, what
        return None

    top = first_bad(e)
    if top is None:
        return None
    node, (order, what) = e, top
    while True:
        for c in ir.children(node):
            got = first_bad(c)
            if got is not None and got[0] <= order:
                node, (order, what) = c, got
                break
        else:
            return node, order, what


# ----------------------------------------------------------------- messages
def _var(st) -> str:
    """The first lower variable's name (for hints such as `+ c * sumsq(w)`)."""
    return next(iter(st.lower_vars), "x")


def _name(node: ir.Expr) -> str:
    if isinstance(node, ir.Call):
        return node.func
    if isinstance(node, ir.Binary):
        return node.op
    return ""


def _ranges(node: ir.Expr, probe) -> str:
    """' (its argument ranges over [a, b])' for the finite numeric operands of ``node``."""
    parts = []
    for c in ir.children(node):
        r = probe(c)
        if r is None or _bad(r[0]) or np.size(r[0]) == 0:
            continue
        v = np.asarray(r[0])
        lo, hi = float(v.min()), float(v.max())
        parts.append(f"{lo:.3g}" if lo == hi else f"[{lo:.3g}, {hi:.3g}]")
    if not parts:
        return ""
    return f" (its argument is {parts[0]})" if len(parts) == 1 else f" (its operands are {' and '.join(parts)})"


def located(node: ir.Expr, order: int, what: str, objective: str, where: str, probe, prefix: str = ""):
    """The :class:`BilRuntimeError` at ``node`` for a culprit found by :func:`culprit`."""
    name = _name(node)
    shown = f"`{name}`" if name else f"`{ir.show(node)[:40]}`"
    if isinstance(node, ir.Name):
        msg = f"{objective} is {what} {where}: `{node.id}` itself is {what} there"
    elif order == 0:
        msg = f"{objective} is {what} {where}: {shown} gives {what} here{_ranges(node, probe)}"
    else:
        deriv = "first derivative" if order == 1 else "second derivative (the Hessian)"
        msg = (f"the {deriv} of {objective} is {what} {where}: {shown} has a {what} {deriv.split(' (')[0]} "
               f"here{_ranges(node, probe)}")
    return BilRuntimeError(prefix + msg, node.span, _HINTS.get(name, _GENERIC))


# --------------------------------------------------------------- the entries
def _lower_at(program, theta):
    """(x, status) of the lower problem solved at ``theta`` from its initial values."""
    eng = program.engine
    x0 = eng.init_lower_user(theta)
    sol = eng.solve_lower(theta, x0, float(program.state.options["lower"]["tol"]))
    return x0, sol.x, int(np.max(np.asarray(sol.status)))


def locate_nonfinite(program, theta: dict, prefix: str = "") -> BilRuntimeError | None:
    """The located error for an Inf/NaN met at hypers ``theta`` (user coordinates), or None
    when the objectives and their derivatives are finite there (then the caller's message stands)."""
    st, low = program.state, program.lowered
    if st.is_train:
        return None
    theta = {k: jnp.asarray(v, low.dtype) for k, v in theta.items()}
    x0, x, status = _lower_at(program, theta)
    upper = f"the upper objective (line {st.upper.span.line})"
    lower = f"the lower objective (line {st.lower.goal.span.line})"
    checks = [(x0, st.goal, lower, "at the lower variables' initial values")] if status == 2 else []
    checks += [(x, st.upper_expr, upper, "at the lower solution"),
               (x, st.goal, lower, "at the lower solution" if status != 2 else "where the lower solve stopped")]
    for xv, expr, objective, where in checks:
        probe = prober(low, theta, xv)
        found = culprit(expr, probe)
        if found is not None:
            return located(*found, objective, where, probe, prefix)
    return None


def gradient_too_large(program, theta: dict, residual: float, prefix: str = "") -> BilRuntimeError | None:
    """The error for an adjoint solve asked for a residual below the roundoff of its right-hand
    side ∇ₓf (an upper objective of astronomical scale), or None."""
    st, low, eng = program.state, program.lowered, program.engine
    if st.is_train:
        return None
    theta = {k: jnp.asarray(v, low.dtype) for k, v in theta.items()}
    _, x, status = _lower_at(program, theta)
    if status == 2:
        return None
    gx = jax.grad(lambda xx: jnp.sum(eng.F(xx, theta, low.data)))(x)
    flat = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(gx)])
    top = float(np.max(np.abs(flat))) if flat.size else 0.0
    norm = top * float(np.linalg.norm(flat / top)) if top > 0 and math.isfinite(top) else top  # no overflow
    info = jnp.finfo(low.dtype)
    eps = float(info.eps)
    if not (math.isfinite(norm) and norm * eps > max(residual, 0.0)):
        return None
    why = (f"its square overflows {low.dtype.__name__ if hasattr(low.dtype, '__name__') else low.dtype}, "
           "so the adjoint solve's inner products are Inf" if norm > math.sqrt(float(info.max)) else
           f"its roundoff alone ({norm * eps:.2g}) exceeds the residual {residual:.2g} the adjoint solve was "
           "asked for")
    found = culprit(st.upper_expr, prober(low, theta, x), bad=_huge(residual / eps))
    node = found[0] if found is not None else st.upper_expr
    here = f": `{_name(node)}` grows that large here" if found is not None and _name(node) else ""
    return BilRuntimeError(
        f"{prefix}the upper objective's gradient in the lower variables is {norm:.3g} at the lower solution "
        f"(line {st.upper.span.line}){here}; {why}", node.span,
        "rescale the upper objective (a term like exp(1000 * w) grows astronomically), or bound the values "
        "that drive it; the lower Hessian is not the problem")


def not_positive_definite(program, theta: dict, prefix: str = "") -> BilRuntimeError | None:
    """The error for an adjoint CG that met pᵀHp ≤ 0, at the lower objective's line, with the
    smallest eigenvalue of the lower Hessian (on the free variables) at the solution."""
    st, low = program.state, program.lowered
    if st.is_train:
        return None
    theta = {k: jnp.asarray(v, low.dtype) for k, v in theta.items()}
    _, x, status = _lower_at(program, theta)
    if status == 2:
        return None
    lo, hi = lower_curvature(program, theta, x)
    shape = (f"has a negative eigenvalue (about {lo:.3g})" if lo < 0 else
             f"is singular or nearly so (smallest eigenvalue about {lo:.3g}, largest {hi:.3g})")
    return BilRuntimeError(
        f"{prefix}the adjoint solve met non-positive curvature (pᵀHp ≤ 0): the lower Hessian at the solution "
        f"{shape}, so the lower problem (line {st.lower.goal.span.line}) has no isolated minimum there and the "
        "implicit hypergradient is undefined", st.lower.goal.span,
        "make the lower objective strongly convex in the lower variables ("
        + (f"`+ c * sumsq({_var(st)})` with c above {-lo / 2:.3g}" if lo < 0 else f"e.g. `+ 1e-3 * sumsq({_var(st)})`")
        + "), or use `hypergradient: unroll` in the solve block")


def run_failure(program, res, prefix: str) -> BilRuntimeError | None:
    """A better error than the stop reason's for a run that stopped on an Inf/NaN or an adjoint that
    could not converge: located at the sub-expression responsible (None: keep the reason's message)."""
    reason = str(res.reason)
    if reason not in _NUMERIC_STOPS:
        return None
    theta = getattr(res, "failed_at", None) or res.hypers
    try:
        if reason == _NOT_PD:
            return not_positive_definite(program, theta, prefix)
        err = locate_nonfinite(program, theta, prefix)
        if err is None and reason in ("CG hit its iteration cap", "adjoint solve produced non-finite values"):
            delta = [float(r.get("delta", math.nan)) for r in res.history[-1:]]
            requested = delta[0] if delta and delta[0] > 0 else float(program.state.options["lower"]["tol"])
            err = gradient_too_large(program, theta, requested, prefix)
    except (BilError, FloatingPointError, ValueError, TypeError):
        return None   # the diagnosis could not run: the stop reason's own message stands
    return err


def check(program, theta: dict, lower_status, grad_norm=None, cg_status=0, residual=None, requested=None,
          **kw) -> None:
    """:meth:`Engine.failure <bil.runtime.engine.Engine.failure>` raised, for the API's solves at
    hypers ``theta``: an Inf/NaN traced to its sub-expression, an adjoint short of the
    ``requested`` residual checked against the upper gradient's roundoff; otherwise the
    engine's own error."""
    err = program.engine.failure(lower_status, grad_norm, cg_status, residual, **kw)
    if err is None:
        return
    s, c = int(np.max(np.asarray(lower_status))), int(np.max(np.asarray(cg_status)))
    better = None
    try:
        if c == 3 and s == 0:
            better = not_positive_definite(program, theta)
        if 2 in (s, c):
            better = locate_nonfinite(program, theta)
        if better is None and c in (1, 2):
            tol = float(requested if requested is not None else program.state.options["lower"]["tol"])
            better = gradient_too_large(program, theta, tol)
    except (BilError, FloatingPointError, ValueError, TypeError):
        better = None
    raise better or err


# ---------------------------------------------------------------- curvature
def _hvp_fn(program):
    """Jitted (θ, x, v, d) -> ∇²ₓₓ s(x, θ) v, s the lower objective's smooth part (per sample
    for per-sample problems): a small compilation, unlike a traced Lanczos loop (0.17 s of CPU
    against 1.4 s on a 3-variable ridge)."""
    fn = program.__dict__.get("_diagnose_hvp")
    if fn is None:
        low = program.lowered
        smooth = low.g_smooth or low.g

        def hvp(theta, x, v, d):
            return jax.jvp(jax.grad(lambda z: smooth(z, theta, d)), (x,), (v,))[1]

        if low.batched:
            hvp = jax.vmap(hvp, in_axes=(None, 0, 0, low.data_axes))
        fn = program.__dict__["_diagnose_hvp"] = jax.jit(hvp)
    return fn


def _free_mask(program, theta, x):
    """1 on the lower variables that are free at x: no bound active, no non-smooth term pinning them at 0."""
    low = program.lowered
    mask = {k: np.ones(np.shape(v)) for k, v in x.items()}
    if low.bounds is not None:
        lo, hi = low.bounds
        mask = {k: ((np.asarray(v) > np.asarray(lo[k]) + 1e-10) & (np.asarray(v) < np.asarray(hi[k]) - 1e-10))
                .astype(float) for k, v in x.items()}
    if low.nonsmooth is not None:
        support = (jax.vmap(low.nonsmooth.support, in_axes=(0, (None, low.data_axes))) if low.batched
                   else low.nonsmooth.support)(x, (theta, low.data))
        mask = {k: mask[k] * np.asarray(support[k], float) for k in mask}
    return mask


def lanczos_extremes(mv, n: int, iters: int = 20) -> tuple[float, float]:
    """(smallest, largest) Ritz value of the symmetric operator ``mv`` on R^n: ``iters`` steps
    of Lanczos with full reorthogonalisation from a fixed pseudo-random start, on the host.
    Each Ritz value is a Rayleigh quotient, so a negative smallest one proves negative curvature."""
    m = max(1, min(iters, n))
    q = np.random.default_rng(0).standard_normal(n)
    q /= np.linalg.norm(q)
    Q, alphas, betas = np.zeros((m, n)), [], []
    q_prev, beta_prev, scale = np.zeros(n), 0.0, 0.0
    for j in range(m):
        Q[j] = q
        w = mv(q)
        a = float(q @ w)
        w = w - a * q - beta_prev * q_prev
        w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        b = float(np.linalg.norm(w))
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.nan, math.nan
        alphas.append(a)
        scale = max(scale, abs(a), b)
        if b <= 1e-10 * scale or j == m - 1:
            break
        betas.append(b)
        q_prev, q, beta_prev = q, w / b, b
    ev = np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
    return float(ev[0]), float(ev[-1])


def lower_curvature(program, theta: dict, x: dict) -> tuple[float, float]:
    """(smallest, largest) Ritz value of the lower Hessian at hypers ``theta`` (user
    coordinates) and lower values ``x``, restricted to the free variables."""
    from jax.flatten_util import ravel_pytree

    low = program.lowered
    hvp, mask = _hvp_fn(program), _free_mask(program, theta, x)
    flat_mask, _ = ravel_pytree({k: jnp.asarray(v, low.dtype) for k, v in mask.items()})
    flat_x, unravel = ravel_pytree(x)
    fm = np.asarray(flat_mask, np.float64)

    def mv(v):
        hv = hvp(theta, x, unravel(jnp.asarray(fm * v, low.dtype)), low.data)
        return fm * np.asarray(ravel_pytree(hv)[0], np.float64)

    return lanczos_extremes(mv, int(flat_x.size))


def curvature_warnings(program, hypers: dict, x: dict) -> list[Warning_]:
    """Warnings for a lower problem that is not convex: the lower Hessian at the learned
    ``hypers`` (user coordinates) has clearly negative curvature at the returned solution
    ``x`` (not a minimum: the implicit hypergradient does not apply), or else at the lower
    variables' initial values (the solution found may be a local minimum only).  A Ritz value
    is a Rayleigh quotient, so a negative one is proof, not an estimate's artefact."""
    st, low = program.state, program.lowered
    if st.is_train:
        return []
    theta = {k: jnp.asarray(v, low.dtype) for k, v in hypers.items()}
    x = {k: jnp.asarray(v, low.dtype) for k, v in x.items()}
    line = st.lower.goal.span
    tol = math.sqrt(float(jnp.finfo(low.dtype).eps))
    for xv, at_solution in ((x, True), (program.engine.init_lower_user(theta), False)):
        lo, hi = lower_curvature(program, theta, xv)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= -tol * max(abs(hi), abs(lo)):
            continue
        if at_solution:
            return [Warning_(
                f"the lower problem is not convex: at the learned hypers its Hessian has a negative eigenvalue "
                f"at the solution returned (about {lo:.3g}; the largest is {hi:.3g}), so that point is not a minimum "
                "(a saddle point or a maximum), and the implicit hypergradient (which assumes a minimum with a positive definite "
                "Hessian) is not valid there", line,
                f"make the lower objective convex in the lower variables (e.g. `+ c * sumsq({_var(st)})` with c above "
                f"{-lo / 2:.3g}), start the lower variables elsewhere, or use `hypergradient: unroll`")]
        return [Warning_(
            f"the lower problem is not convex: at the learned hypers its Hessian has a negative eigenvalue at "
            f"the lower variables' initial values (about {lo:.3g}), so the solution found may be a local "
            "minimum only; the hypergradient is that of the minimum the solver reached", line,
            "check the result from other initial values of the lower variables, or make the lower objective "
            f"convex (e.g. `+ c * sumsq({_var(st)})` with c above {-lo / 2:.3g})")]
    return []
