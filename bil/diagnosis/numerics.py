"""Diagnoses of a failed solve: where an Inf/NaN came from.

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

Whether the lower solution is a minimum at all is :mod:`bil.diagnosis.curvature`'s question.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bil.core import ir
from bil.core.errors import BilError, BilRuntimeError
from bil.compiler.evaluate import Evaluator
from bil.diagnosis.solve_at import lower_at, solution_at

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
def _name(node: ir.Expr) -> str:
    if isinstance(node, ir.Call):
        return node.func
    if isinstance(node, ir.Binary):
        return node.op
    return ""


def _ranges(node: ir.Expr, probe) -> str:
    """' (its argument is [a, b])' (min and max) for the finite numeric operands of ``node``."""
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
    hint = _HINTS.get(name)
    domain = (f"check {objective.split(' (')[0]}'s domain over the values the lower variables and the hypers take "
              "(log/sqrt of non-positive values, division by 0, overflow)")
    return BilRuntimeError(prefix + msg, node.span, f"{hint}; {domain}" if hint else domain)


# --------------------------------------------------------------- the entries
def locate_nonfinite(program, theta: dict, prefix: str = "", solved=None) -> BilRuntimeError | None:
    """The located error for an Inf/NaN met at hypers ``theta`` (user coordinates), or None
    when the objectives and their derivatives are finite there (then the caller's message stands)."""
    st, low = program.state, program.lowered
    if st.is_train:
        return None
    theta = {k: jnp.asarray(v, low.dtype) for k, v in theta.items()}
    x0, x, status = lower_at(program, theta, solved)
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


def gradient_too_large(program, theta: dict, residual: float, prefix: str = "",
                       solved=None) -> BilRuntimeError | None:
    """The error for an adjoint solve asked for a residual below the roundoff of its right-hand
    side ∇ₓf (an upper objective of astronomical scale), or None."""
    st, low, eng = program.state, program.lowered, program.engine
    at = solution_at(program, theta, solved)
    if at is None:
        return None
    theta, x = at
    gx = jax.grad(lambda xx: jnp.sum(eng.F(xx, theta, low.data)))(x)
    flat = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(gx)])
    top = float(np.max(np.abs(flat))) if flat.size else 0.0
    norm = top * float(np.linalg.norm(flat / top)) if top > 0 and math.isfinite(top) else top  # no overflow
    info = jnp.finfo(low.dtype)
    eps = float(info.eps)
    # huge (beyond 1/√eps: 7e7 in float64) and too large for the residual asked for; an ordinary
    # gradient with a residual below what the precision resolves is the engine's float32 message
    if not (math.isfinite(norm) and norm > 1 / math.sqrt(eps) and norm * eps > max(residual, 0.0)):
        return None
    why = (f"its square overflows {low.dtype.__name__ if hasattr(low.dtype, '__name__') else low.dtype}, "
           "so the adjoint solve's inner products are Inf" if norm > math.sqrt(float(info.max)) else
           f"its roundoff alone ({norm * eps:.2g}) exceeds the residual {residual:.2g} the adjoint solve was "
           "asked for")
    found = culprit(st.upper_expr, prober(low, theta, x), bad=_huge(max(residual / eps, 1 / math.sqrt(eps))))
    node = found[0] if found is not None else st.upper_expr
    here = f": `{_name(node)}` grows that large here" if found is not None and _name(node) else ""
    return BilRuntimeError(
        f"{prefix}the upper objective's gradient in the lower variables is {norm:.3g} at the lower solution "
        f"(line {st.upper.span.line}){here}; {why}", node.span,
        "rescale the upper objective (a term like exp(1000 * w) grows astronomically), or bound the values "
        "that drive it; the lower Hessian is not the problem")


def run_failure(program, res, prefix: str) -> BilRuntimeError | None:
    """A better error than the stop reason's for a run that stopped on an Inf/NaN or an adjoint that
    could not converge: located at the sub-expression responsible (None: keep the reason's message)."""
    reason = str(res.reason)
    if reason not in _NUMERIC_STOPS:
        return None
    theta = getattr(res, "failed_at", None) or res.hypers
    try:
        if reason == _NOT_PD:
            from bil.diagnosis.curvature import not_positive_definite

            return not_positive_definite(program, theta, prefix)
        err = locate_nonfinite(program, theta, prefix)
        if err is None and reason in ("CG hit its iteration cap", "adjoint solve produced non-finite values"):
            delta = [float(r.get("delta", math.nan)) for r in res.history[-1:]]
            requested = delta[0] if delta and delta[0] > 0 else float(program.state.options["lower"]["tol"])
            err = gradient_too_large(program, theta, requested, prefix)
    except Exception:  # noqa: BLE001 - a diagnosis that cannot run leaves the stop reason's message
        return None
    return err


def check(program, theta: dict, lower_status, grad_norm=None, cg_status=0, residual=None, requested=None,
          solved=None, **kw) -> None:
    """:meth:`Engine.failure <bil.runtime.engine.Engine.failure>` raised, for the API's solves at
    hypers ``theta``: an Inf/NaN traced to its sub-expression, an adjoint short of the
    ``requested`` residual checked against the upper gradient's roundoff; otherwise the
    engine's own error.  ``solved``: (lower start, lower result), which saves a solve."""
    err = program.engine.failure(lower_status, grad_norm, cg_status, residual, **kw)
    if err is None:
        return
    s, c = int(np.max(np.asarray(lower_status))), int(np.max(np.asarray(cg_status)))
    solved = None if solved is None else (*solved, lower_status)
    better = None
    try:
        if c == 3 and s == 0:
            from bil.diagnosis.curvature import not_positive_definite

            better = not_positive_definite(program, theta, solved=solved)
        if 2 in (s, c):
            better = locate_nonfinite(program, theta, solved=solved)
        if better is None and c in (1, 2):
            tol = float(requested if requested is not None else program.state.options["lower"]["tol"])
            better = gradient_too_large(program, theta, tol, solved=solved)
    except Exception:  # noqa: BLE001 - a diagnosis that cannot run leaves the engine's message
        better = None
    raise better or err
