"""What a failed lower, training or adjoint solve means for the user: a located error with a hint."""

from __future__ import annotations

import jax.numpy as jnp

from bil.core.errors import BilRuntimeError
from bil.runtime import quadratic
from bil.runtime.oracles import BUDGET
from bil.stdlib.methods import Direct, Implicit, Neumann


class SolveFailures:
    """Mixin of :class:`bil.runtime.engine.Engine`."""

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
        if s == 1 and isinstance(self.solver, Direct):
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
        if c == 2 and isinstance(m, Neumann):
            return BilRuntimeError("the Neumann series for the adjoint diverged (NaN or Inf)", span,
                                   "its step must be below 2/L, L the lower Hessian's largest eigenvalue: lower "
                                   "`neumann(alpha=...)` or leave it out (then it is estimated), or use `implicit`")
        if c == 2:
            how = "direct" if isinstance(m, Implicit) and m.linear == "direct" else "CG"
            return BilRuntimeError(f"the adjoint ({how}) solve produced NaN or Inf", span,
                                   "the lower Hessian may be singular: add a strongly convex term")
        if c == 1:
            return BilRuntimeError(f"CG did not reach the requested residual{norm('‖Hq − ∇ₓf‖', residual)}",
                                   span, (f32_hint if f32 else
                                          "raise `implicit(max_iter=...)`, loosen the tolerance, or use "
                                          "`implicit(linear=\"direct\")` for a small problem"))
        return None
