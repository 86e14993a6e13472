"""A compiled ``.bil`` program: the checked IR, its lowering and its oracles.

A :class:`Program` is what :func:`bil.compile` returns.  Its methods are
ordinary JAX: ``prog.objective`` is a differentiable function of the hypers
(the lower solution carries an implicit-function JVP rule,
:mod:`bil.runtime.implicit`), so ``jax.grad``, ``jax.jvp``, ``jax.hessian``,
``jax.jit`` and ``jax.vmap`` work on it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bil.compiler.render.graph import dump_graph
from bil.compiler.render.ir import dump_ir
from bil.core.errors import BilError, BilRuntimeError, BilUsageError
from bil.compiler.state import CompileState
from bil.stdlib.methods import MethodOptions, Unroll
from bil.diagnosis import numerics as diagnose
from bil.diagnosis.curvature import curvature_warnings
from bil.diagnosis.support import empty_support_warnings


class Program:
    """A compiled ``.bil`` program."""

    def __init__(self, state: CompileState):
        self.state = state

    # ------------------------------------------------------------ front end
    @property
    def name(self) -> str:
        return self.state.problem

    @property
    def warnings(self):
        return list(self.state.warnings)

    def ir(self) -> str:
        """The deterministic IR dump (``bil emit --stage ir``)."""
        return dump_ir(self.state)

    def graph_text(self, fmt: str = "text") -> str:
        return dump_graph(self.state, fmt)

    # ------------------------------------------------------------- lowering
    @functools.cached_property
    def lowered(self):
        from bil.compiler.lower import lower
        from bil.runtime.sharding import place

        # with several devices, the data laid out over them (bil.runtime.sharding); else as lowered
        return place(lower(self.state))

    @functools.cached_property
    def engine(self):
        from bil.runtime.engine import Engine

        return Engine(self.lowered)

    @property
    def hypers(self) -> dict[str, np.ndarray]:
        """Initial hypers, name -> array, in user coordinates."""
        return {n: np.array(h.init) for n, h in self.state.hypers.items()}

    @property
    def data(self) -> dict[str, np.ndarray]:
        """The spec's data, name -> array (copies), as its ``data`` statements (or ``data=``) made
        them: ``per sample`` names with their sample axis first.  E.g. held-out data a spec
        declares but does not use, to score the learned hypers on."""
        return {n: np.array(v) for n, v in self.state.data.items()}

    @functools.cached_property
    def _theta0(self) -> dict:
        """The initial hypers as numpy arrays: what :meth:`_theta` passes for hypers left out, so
        that every concrete call reaches the jitted functions with arguments of one kind (numpy
        and jax arrays are separate entries of jit's cache)."""
        return {k: np.asarray(v) for k, v in self.lowered.theta0.items()}

    def _theta(self, hypers: Mapping[str, Any] | None) -> dict:
        if hypers is not None and not isinstance(hypers, Mapping):
            raise BilUsageError(f"hypers must be a dict name -> value, got {type(hypers).__name__}", None,
                                f"e.g. {{{', '.join(repr(k) + ': ...' for k in self.lowered.theta0)}}}")
        theta = dict(self._theta0)
        for k, v in (hypers or {}).items():
            if k not in theta:
                raise _unknown_hypers([k], theta)
            h = self.state.hypers[k]
            tracer = isinstance(v, jax.core.Tracer)
            try:
                # concrete values are checked and passed on as numpy arrays: jnp here cost device
                # dispatches (~0.3 ms per value_and_hypergrad call on ridge) for a value jit copies anyway
                theta[k] = (jnp.broadcast_to(jnp.asarray(v, self.lowered.dtype), theta[k].shape) if tracer else
                            np.broadcast_to(np.asarray(v, self.lowered.dtype), theta[k].shape))
            except (TypeError, ValueError, OverflowError):   # (OverflowError: an int beyond float range)
                raise BilUsageError(f"hyper `{k}` must be a number or an array broadcastable to shape "
                                    f"{tuple(theta[k].shape)}", h.node.span,
                                    f"its spec line declares it; got {v!r:.60}") from None
            if not tracer:  # concrete values only (traced ones: NaN from ``objective``, :meth:`_in_domain`)
                for ok, message, hint in _domain(k, h, theta[k], np):
                    if not ok:
                        raise BilUsageError(message, h.node.span, hint)
        return theta

    def _in_domain(self, theta: dict, given: Mapping[str, Any] | None):
        """A traced boolean: do the traced hypers of ``given`` lie in their domains (the conditions
        :meth:`_theta` checks on concrete values)?  None where none is traced."""
        oks = [ok for k, v in (given or {}).items() if isinstance(v, jax.core.Tracer)
               for ok, _, _ in _domain(k, self.state.hypers[k], theta[k], jnp)]
        return jnp.all(jnp.stack(oks)) if oks else None

    def _method(self, method: str | MethodOptions | None) -> MethodOptions:
        """A hypergradient method given as text (``"unroll(steps=3000)"``, ``"direct"``), parsed and checked
        exactly like the spec's ``hypergradient:`` option."""
        if method is None:
            return self.engine.method
        if isinstance(method, MethodOptions):
            return method
        from bil.compiler.overrides import method_from_text

        return method_from_text('implicit(linear="direct")' if method == "direct" else method)

    def _api_tol(self, tol: float | None) -> float:
        """The API's default accuracy: 1e-10 in float64; in float32, which cannot resolve
        that, the spec's lower ``tol:`` (default 1e-4 there)."""
        if tol is not None:
            try:
                t = float(tol)
            except (TypeError, ValueError):
                t = math.nan
            if not (t > 0 and math.isfinite(t)):
                # (0 or a negative tolerance ran every solve into max_iter and then said "raise max_iter")
                raise BilUsageError(f"tol must be a positive number, got {tol!r}", None,
                                    "e.g. tol=1e-10 (float64) or 1e-4 (float32)")
            return t
        if self.lowered.dtype == jnp.float32:
            return float(self.state.options["lower"]["tol"])
        return 1e-10

    def solve_lower(self, hypers: Mapping[str, Any] | None = None, tol: float | None = None) -> dict[str, np.ndarray]:
        """Solve the lower problem until ‖∇ₓg‖ ≤ tol (default 1e-10; the spec's ``tol:`` in
        float32); dict lower-variable name -> array.

        For ``per sample`` problems each array has a leading sample axis.
        """
        tol = self._api_tol(tol)
        eng = self.engine
        theta = self._theta(hypers)
        X0 = eng.init_lower_user(theta)
        sol = eng.solve_lower(theta, X0, tol)
        diagnose.check(self, theta, sol.status, sol.grad_norm, solved=(X0, sol.x))
        return {k: np.asarray(v) for k, v in sol.x.items()}

    def value_and_hypergrad(self, hypers: Mapping[str, Any] | None = None, tol: float | None = None,
                            method: str | None = None):
        """``(upper value, {hyper: gradient})``, gradients in user coordinates.

        The lower problem is solved to ‖∇ₓg‖ ≤ tol and the adjoint to
        ‖Hq − ∇ₓf‖ ≤ tol (default 1e-10; the spec's ``tol:`` in float32; ``neumann``
        runs its k terms whatever the residual).  ``method`` overrides the spec's ``hypergradient:``
        (``"implicit"``, ``"direct"``, ``"neumann"``, ``"unroll"``, ``"unroll(truncate=5)"``).
        """
        fast = self._public_call(hypers, tol, method)   # one jitted call (bil.runtime.public_call)
        if fast is not None:
            return fast
        hg = self._hypergrad(hypers, self._api_tol(tol), self._method(method))
        # a scalar hyper's gradient a numpy scalar (a float), as the one jitted call gives it
        return float(hg.f), {k: np.asarray(v)[()] for k, v in hg.z.items()}

    @functools.cached_property
    def _public_call(self):
        from bil.runtime.public_call import PublicCall

        return PublicCall(self)

    def _hypergrad(self, hypers, tol: float, m: MethodOptions):
        """The engine's :class:`HyperGrad` at ``hypers`` (user coordinates) from the initial
        lower values, lower and adjoint solved to ``tol``; a failed solve raises."""
        eng = self.engine
        theta = self._theta(hypers)
        X0 = eng.init_lower_user(theta)
        hg, (gn, res) = eng.hypergradient(theta, X0, eng.init_adjoint(X0), tol, tol, coords="theta", method=m)
        diagnose.check(self, theta, hg.lower_status, gn, hg.cg_status, res, requested=tol, solved=(X0, hg.x),
                       method=m)
        return hg

    @functools.cached_property
    def objective(self):
        """Hypers dict (user coordinates) -> upper value at the lower solution.

        Hypers left out of the dict keep their initial values.  An ordinary JAX
        function: ``jax.grad``, ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``,
        ``jax.jit`` and ``jax.vmap`` all work.  Implicit methods differentiate the
        lower solution by the implicit function theorem
        (:mod:`bil.runtime.implicit`: reverse mode is the adjoint method, second
        derivatives differentiate that rule); ``unroll`` differentiates the
        unrolled iterations.  The lower problem is solved to the spec's ``tol:``
        and every linear system to a residual of ``tol:`` relative to its
        right-hand side (at least 1), so derivatives stay linear in the tangent
        and do not depend on the scale of the upper objective; where a solve does
        not get there (iteration cap, NaN) the value, or the derivative, is NaN.
        Traced hypers (under ``jax.jit``) outside their domain give NaN, value and derivatives.
        Two methods are approximations by choice, and their derivatives are not
        those of the value: ``neumann(k=..)`` truncates the series for H⁻¹ (its
        residual is not checked), and ``unroll(truncate=K)`` differentiates only
        the last K steps.  Inputs are cast to the program's precision and the
        hypers' declared shapes; an unknown name, a shape that does not fit, or
        (for concrete values) a value outside the hyper's domain is a
        :class:`BilUsageError`.
        """
        eng = self.engine
        tol = float(self.state.options["lower"]["tol"])
        method = eng.method

        if isinstance(method, Unroll):
            def full_objective(theta, d):
                return eng.unrolled_objective(theta, "theta", d, method)[0]
        else:
            from bil.runtime.implicit import lower_solution

            solution = lower_solution(eng, tol)

            def full_objective(theta, d):
                return eng.F(solution(theta, d), theta, d)

        # jitted on the full dict of hypers, each cast to the program's dtype and declared shape:
        # one compilation whatever form the caller passes (2.0, np.float32, a list, a subset of
        # the hypers), and eager calls, or jax.grad/jax.hessian of it called eagerly, reuse the
        # compiled solver loops (0.9 s per eager value on ridge before, 0.3 ms now).  The data
        # is an argument, as for the engine's oracles: closed over, it was baked into the
        # compiled program as constants (13 MB of HLO for 4000×200 data)
        jitted = jax.jit(full_objective)

        def objective(theta):
            # _theta: unknown names, shapes and (for concrete values) domains are BilUsageErrors
            th = self._theta(theta)
            value = jitted(th, self.lowered.data)
            ok = self._in_domain(th, theta)
            # traced values outside their domain: NaN, and so are the derivatives (a product, not a
            # select, whose derivative would be a plausible 0)
            return value if ok is None else value * jnp.where(ok, 1.0, jnp.nan).astype(value.dtype)

        objective.__doc__ = Program.objective.__doc__
        objective._jitted = jitted  # the one compiled function (tests count its cache entries)
        return objective

    def emit(self, stage: str = "ir") -> str:
        """Text of a compilation stage: ``ir``, ``jaxpr`` or ``hlo``.

        ``jaxpr`` and ``hlo`` show the hypergradient oracle (lower solve,
        adjoint solve and z in one function) at the initial hypers.
        """
        if stage == "ir":
            return self.ir()
        eng = self.engine
        d = self.lowered.data
        theta = dict(self.lowered.theta0)
        X0 = eng.X_init(theta, d)
        tol = jnp.asarray(1e-8, self.lowered.dtype)

        def hypergradient(theta, X0, Q0, tol, delta, d):
            return eng._hypergrad_impl(theta, X0, Q0, tol, delta, d, "theta", eng.method)[0]

        args = (theta, X0, eng.init_adjoint(X0), tol, tol, d)
        if stage == "jaxpr":
            return str(jax.make_jaxpr(hypergradient)(*args))
        if stage == "hlo":
            return jax.jit(hypergradient).lower(*args).as_text()
        raise ValueError(f"unknown stage {stage!r}; stages are ir, jaxpr, hlo")

    # ------------------------------------------------------------ outer loop
    def run(self, *, callback=None, state: dict | None = None, **overrides) -> "Result":
        """Learn the hypers with the spec's ``outer:`` method; return a :class:`Result`.

        ``overrides`` replace keyword options of the outer method
        (``prog.run(max_iter=20)``).  ``callback(record, state)`` runs after
        every outer iteration (return True to stop); ``state`` is a resumable
        state from a previous run's ``Result.state`` or a checkpoint.
        """
        from bil.runtime.outer import run_outer

        m = self.state.options["solve"]["outer"]
        unknown = sorted(set(overrides) - set(m.kwargs))
        if unknown:
            from bil.compiler.passes.options import LIMIT_ALIASES

            guess = [LIMIT_ALIASES[k] for k in unknown if LIMIT_ALIASES.get(k) in m.kwargs]
            raise BilError(f"unknown option(s) {', '.join(f'`{k}`' for k in unknown)} for outer `{m.name}`",
                           m.span, (f"did you mean `{guess[0]}`? " if guess else "")
                           + f"`{m.name}` takes: {', '.join(sorted(m.kwargs))}")
        if overrides:  # checked like the spec's own options (`max_iter=0` is an error, not an empty run)
            from bil.compiler.passes.options import with_options

            m = with_options(m, overrides)
        return self._result(run_outer(self.engine, m.name, m, callback=callback, state=state))

    def _result(self, res) -> "Result":
        """The :class:`Result` of an outer loop's ``OuterResult`` (upper value re-solved to ``lower.tol``)."""
        upper, x = self._final_value(res)
        lower = {k: np.asarray(v) for k, v in x.items()}
        return Result(hypers=res.hypers, lower=lower, upper=upper, history=list(res.history),
                      converged=bool(res.converged), reason=str(res.reason), state=res.state,
                      error=self._failure(str(res.reason), hypers=getattr(res, "failed_at", None) or res.hypers,
                                          res=res),
                      warnings=(curvature_warnings(self, res.hypers, x) + empty_support_warnings(self, res.hypers, x)
                                if np.isfinite(upper) else []))

    def result_from_state(self, state: dict, reason: str) -> "Result":
        """The :class:`Result` of a run that ended with the resumable ``state`` and stop
        ``reason``, rebuilt without running an iteration (``bil run --resume`` writes it when
        a run was killed after its last checkpoint but before its outputs were on disk)."""
        from bil.runtime.outer.history import finished_result

        return self._result(finished_result(self.engine, state, reason))

    def _final_value(self, res) -> tuple[float, Any]:
        """(upper value, lower variables) at the learned hypers, the lower problem solved to
        ``lower.tol`` (warm-started from the run's last iterate).  Each outer method records
        f(x̃) at its own accuracy, which for HOAG's loose early solves can be percents off;
        the result a user reads is the upper objective at the lower solution.  Where that
        solve fails (or for a training procedure, whose result is its last step) the run's
        own values are kept."""
        from bil.runtime.outer.stops import Status

        upper, x = float(res.upper), res.x
        eng = self.engine
        if self.state.is_train or not all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(x)):
            return upper, x   # (a run whose own upper was not finite may still end at a finite point: θ₀)
        # never below what the precision resolves (float32: the default tol may not be reachable)
        tol = max(float(self.state.options["lower"]["tol"]), eng.mu() * eng.accuracy_floor(res.u, res.x)[0])
        v = eng.value(res.u, res.x, tol / eng.mu())
        f, status = float(v.f), int(v.lower_status)
        if status == Status.OK and np.isfinite(f):
            return f, v.x
        return upper, x

    def _failure(self, reason: str, prefix: str = "the run stopped: ", hypers: dict | None = None, res=None):
        """The spec-located error for an outer loop that stopped on a failed solve, else None;
        its message names the (user-coordinate) ``hypers`` at which the solve failed, if given.
        With the run's result ``res``, an Inf/NaN is traced to the sub-expression that made it
        (:mod:`bil.diagnosis.numerics`)."""
        from bil.runtime.outer.stops import Stop

        stop = Stop.of(reason)
        if stop is None or not stop.failed:
            return None
        if hypers:
            from bil.runtime.outer.floor import hypers_text

            prefix = f"{prefix.rstrip(': ')} at {hypers_text(hypers)}: "
        located = diagnose.run_failure(self, res, prefix) if res is not None else None
        if located is not None:
            return located
        if stop is Stop.NONFINITE_HYPERGRAD:
            # the lower solve was finite (that stop has its own reason): the upper objective,
            # or its gradient, is not finite at the lower solution
            return BilRuntimeError(
                f"{prefix}the upper objective or its gradient is NaN or Inf at the lower solution",
                self.engine.low.upper_span, stop.hint)
        if stop is Stop.INVALID_MU:
            # MAID's certificates (‖x̃ − x*‖ ≤ ε from ‖∇ₓg‖ ≤ μ·ε) need μ > 0
            return BilRuntimeError(
                f"{prefix}the lower objective is not strongly convex there ({reason.split(' ', 3)[-1]}), "
                "which MAID's accuracy certificates need", self.engine.low.lower_span, stop.hint)
        lower_status, cg_status = stop.statuses
        err = self.engine.failure(int(lower_status), cg_status=int(cg_status))
        return BilRuntimeError(f"{prefix}{err.message}", err.span, err.hint)


def _domain(name: str, h, a, xp) -> list:
    """The domain conditions of hyper ``name`` (declared as ``h``) on its values ``a``, each
    ``(holds, message, hint)``; ``xp`` is numpy for concrete values, jax.numpy for traced ones."""
    out = [(xp.all(xp.isfinite(a)), f"hyper `{name}` must be finite", "got NaN or Inf")]
    if h.bounds is not None:
        out.append((xp.all((a > h.bounds[0]) & (a < h.bounds[1])),
                    f"hyper `{name}` must lie strictly inside [{h.bounds[0]:g}, {h.bounds[1]:g}]",
                    "its domain is declared here"))
    if h.kind == "positive":
        out.append((xp.all(a > 0), f"hyper `{name}` is positive; got a value <= 0",
                    "positive hypers are optimised in log coordinates: give a value > 0"))
    return out


def _unknown_hypers(names, known) -> BilUsageError:
    from bil.stdlib import closest

    guess = closest(names[0], sorted(known))
    word = "hyper" if len(names) == 1 else "hypers"
    return BilUsageError(f"unknown {word} {', '.join(f'`{n}`' for n in names)}", None,
                         (f"did you mean `{guess}`? " if guess else "")
                         + f"the spec's hypers: {', '.join(f'`{k}`' for k in sorted(known))}")


class Result:
    """The outcome of :meth:`Program.run`.

    ``hypers`` (user coordinates), ``lower`` (lower variables at the learned
    hypers), ``upper`` (upper value at the learned hypers, the lower problem
    solved to ``lower.tol``), ``history`` (one record per outer
    iteration: ``iter, upper, grad_norm, omega, eps, delta, step, backtracks,
    lower_iters, cg_iters, lower_iters_total, cg_iters_total, wall_s,
    sample_grads, hyper.NAME...``), ``converged``, ``reason``, ``state`` (resumable),
    ``error`` (a spec-located :class:`bil.BilRuntimeError` when a solve failed),
    ``warnings`` (e.g. a nonconvex lower problem).
    """

    def __init__(self, *, hypers, lower, upper, history, converged, reason, state, error=None, warnings=None):
        self.hypers = {k: np.asarray(v) for k, v in hypers.items()}
        self.lower = lower
        self.upper = upper
        self.history = history
        self.converged = converged
        self.reason = reason
        self.state = state
        #: a :class:`bil.BilRuntimeError` at the ``lower`` block when the run
        #: stopped on a failed solve (NaN, cap, non-PD Hessian), else None
        self.error = error
        #: :class:`bil.core.errors.Warning_` about the result: a lower problem with negative
        #: curvature at its solution or its start (:mod:`bil.diagnosis.numerics`)
        self.warnings = list(warnings or [])

    def __repr__(self) -> str:
        hy = ", ".join(f"{k}={np.array2string(v, precision=4, threshold=4)}" for k, v in self.hypers.items())
        return f"Result(upper={self.upper:.6g}, {hy}, iterations={len(self.history)}, reason={self.reason!r})"
