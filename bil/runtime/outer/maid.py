"""MAID: the method of adaptive inexact descent (Salehi, Mukherjee, Roberts, Ehrhardt).

Descent steps on inexact hypergradients: each iteration certifies z at accuracies (ε, δ)
(:mod:`~bil.runtime.outer.certify`, with the error model ω of
:mod:`~bil.runtime.outer.error_model`), picks a direction (:mod:`~bil.runtime.outer.direction`),
and backtracks until a bracket of the upper value certifies a decrease
(:mod:`~bil.runtime.outer.search`, :mod:`~bil.runtime.outer.bracket`); a failed round tightens
(ε, δ) (:mod:`~bil.runtime.outer.accuracy`), an accepted step loosens them.  This module holds
the options and the iteration that ties those together; the derivations and measurements are
in docs/ALGORITHMS.md (section MAID).
"""

from __future__ import annotations

import dataclasses
import math

from bil.runtime.oracles import AbstractOracles
# (the pure pieces of each concern are re-exported here: MAID's public vocabulary in one import)
from bil.runtime.outer.accuracy import (MAX_RETRIES, after_failed_round, tighten_dominant, tighten_until,  # noqa: F401
                                        update_accuracies)
from bil.runtime.outer.bracket import (BRACKET_MODES, adjoint_bracket, bounds_upper_lower,  # noqa: F401
                                       point_bracket, sufficient_decrease)
from bil.runtime.outer.certify import certify
from bil.runtime.outer.cubic import cap_along, cubic_extrapolation, cubic_limit, secant_extrapolation  # noqa: F401
from bil.runtime.outer.direction import (DIRECTIONS, H0_MODES, choose_direction, curvature_pair_ok,  # noqa: F401
                                         diagonal_scaling, direction_certified, flat, lbfgs_direction)
from bil.runtime.outer.driver import Tracker
from bil.runtime.outer.error_model import (OMEGA_MODES, RunningConstants, SecantConstants,  # noqa: F401
                                           adjoint_norm_bound, bound_terms, descent_test, error_bound,
                                           merge_constants, secant_terms, secant_update)
from bil.runtime.outer.floor import resolve_floors
from bil.runtime.outer.history import OuterResult, arithmetic_floor, host_copy, start_iterates
from bil.runtime.outer.maid_state import Iteration, MaidState, flatten_state, restore_state
from bil.runtime.outer.search import backtrack, first_trial_step, nearest_start, screening_accuracy  # noqa: F401
from bil.runtime.outer.stops import Stop

__all__ = ["MaidOptions", "Maid"]


@dataclasses.dataclass(frozen=True)
class MaidOptions:
    """The options of ``maid(...)`` (``bil/stdlib/methods.py`` documents each)."""

    eta: float
    lam: float
    rho: float
    nu: float
    nu_plus: float
    rho_plus: float
    max_step: float | None
    max_iter: int
    max_backtracks: int
    tol: float
    eps0: float
    delta0: float
    eps_min: object             # a number or "auto" (floor.resolve_floors)
    delta_min: object
    constants_every: int
    step0: float
    omega: str
    safety: float
    bracket: str
    direction: str
    memory: int
    screen: bool
    h0: str
    cubic: bool
    budget: float | None = None

    @classmethod
    def from_options(cls, o: dict) -> "MaidOptions":
        """From the full ``maid(...)`` keyword dict; checks what the loop relies on."""
        opts = cls(
            eta=float(o["eta"]), lam=float(o["lam"]), rho=float(o["rho"]), nu=float(o["nu"]),
            nu_plus=float(o["nu_plus"]), rho_plus=float(o["rho_plus"]),
            max_step=None if o.get("max_step") is None else float(o["max_step"]),
            max_iter=int(o["max_iter"]), max_backtracks=int(o["max_backtracks"]), tol=float(o["tol"]),
            eps0=float(o["eps0"]), delta0=float(o["delta0"]), eps_min=o["eps_min"], delta_min=o["delta_min"],
            constants_every=max(1, int(o.get("constants_every", 5) or 1)), step0=float(o["step0"]),
            omega=str(o.get("omega", "secant")), safety=float(o.get("safety", 2.0)),
            bracket=str(o.get("bracket", "adjoint")), direction=str(o.get("direction", "lbfgs")),
            memory=int(o.get("memory", 5)), screen=bool(o.get("screen", True)), h0=str(o.get("h0", "auto")),
            cubic=bool(o.get("cubic", True)), budget=o.get("budget"))
        opts.check()
        return opts

    def check(self) -> None:
        if not (0 < self.rho < 1 and 0 < self.nu < 1):
            raise ValueError("maid: rho and nu must lie in (0, 1)")
        self._one_of("omega", OMEGA_MODES)
        self._one_of("bracket", BRACKET_MODES)
        if not (self.safety > 0):
            raise ValueError("maid: safety must be > 0")
        self._one_of("direction", DIRECTIONS)
        self._one_of("h0", H0_MODES)
        if self.direction == "lbfgs" and self.memory < 1:
            raise ValueError("maid: memory must be >= 1")

    def _one_of(self, name: str, allowed: tuple) -> None:
        if getattr(self, name) not in allowed:
            raise ValueError(f"maid: {name} must be one of {', '.join(map(repr, allowed))}, not {getattr(self, name)!r}")

    @property
    def refresh_dist(self) -> float:
        """Distance moved after which the constants are re-estimated."""
        return 1.0 if self.max_step is None else self.max_step


class Maid:
    """MAID as an outer loop of :func:`bil.runtime.outer.driver.drive`."""

    name = "maid"

    def __init__(self, oracles: AbstractOracles, opts: MaidOptions):
        # exact oracles (a training procedure): there is no accuracy to adapt; ε = δ = 0 makes
        # ω and the brackets' slack 0, and MAID is backtracking on exact values (no probes, no
        # constants to estimate); the adjoint correction f − ⟨q, ∇ₓg⟩ estimates f at a
        # minimiser, while a training procedure's value is f at its last step, exactly
        self.exact = oracles.exact
        self.oracles = oracles
        self.opts = dataclasses.replace(opts, bracket="value") if self.exact else opts
        self.max_iter, self.budget = opts.max_iter, opts.budget

    @classmethod
    def from_options(cls, oracles: AbstractOracles, o: dict) -> "Maid":
        return cls(oracles, MaidOptions.from_options(o))

    def _floors(self, saved: dict | None) -> tuple[float, float]:
        """Set the μ that turns ε into lower tolerances (θ₀'s, or the checkpoint's) and return
        θ₀'s (ε, δ) floors."""
        mu = float(saved.get("const/mu", math.nan)) if saved is not None and bool(saved.get("has_constants")) \
            else math.nan
        self.oracles.set_strong_convexity(mu if math.isfinite(mu) else None)
        self.u0 = host_copy(self.oracles.u0)
        if self.exact:
            return 0.0, 0.0
        x_start = self.oracles.init_lower(self.u0)
        return resolve_floors(self.opts.eps_min, self.opts.delta_min, x_start,
                              arithmetic_floor(self.oracles, self.u0, x_start))

    def init(self, tr: Tracker):
        o = self.opts
        eps_min, delta_min = self._floors(None)
        u, x, q = start_iterates(self.oracles, self.u0)
        eps, delta = (0.0, 0.0) if self.exact else (o.eps0, o.delta0)
        consts = RunningConstants(1.0, 0.0, 0.0, 0.0, 0.0) if self.exact else None
        return MaidState(u=u, x=x, q=q, eps=eps, delta=delta, step=math.nan, f_cur=math.nan, consts=consts,
                         ks=SecantConstants(), eps_min=eps_min, delta_min=delta_min,
                         unexplored_len=o.step0), None

    def restore(self, tr: Tracker, saved: dict) -> MaidState:
        floors = self._floors(saved)
        s = restore_state(saved, self.oracles, self.u0, self.opts.memory, self.opts.step0, floors, self.exact)
        s.last_ok = (s.eps, s.delta) if tr.history else None
        return s

    def omega_terms(self, s: MaidState, e: float, d: float, gx: float, qn: float) -> tuple[float, float]:
        """ω's (ε-part, δ-part): a-posteriori where estimated, a-priori otherwise."""
        be, bd = bound_terms(e, d, gx, s.consts, qn)
        if self.opts.omega == "bound":
            return be, bd
        se, sd = secant_terms(e, d, s.ks, self.opts.safety)
        return (se if math.isfinite(se) else be), (sd if math.isfinite(sd) else bd)

    def _begin(self, s: MaidState) -> Iteration:
        """A new iteration's working values; the secant constants restart when due (re-measured
        from scratch every ``constants_every`` accepted iterations, so that one measured far
        away, or at a loose accuracy where the linear model fails, does not stay forever)."""
        o = self.opts
        refresh = not self.exact and (s.consts is None or s.since_iters >= o.constants_every
                                      or s.since_dist >= o.refresh_dist)
        if o.omega == "secant" and s.since_probe >= o.constants_every:
            s.since_probe = 0
            s.ks = SecantConstants()
            s.probes = {"eps": 0, "delta": 0}
            s.error_dirs = []
        return Iteration(refresh=refresh, eps_used=s.eps, delta_used=s.delta)

    def step(self, state: MaidState, tr: Tracker):
        """One iteration: rounds of (certify, direction, backtrack) until a step is accepted."""
        s = state.copy()
        it = self._begin(s)
        dr = None
        while it.stop is None and it.accepted is None:
            certify(self, s, it, tr)
            if it.stop is not None:
                break
            dr = choose_direction(self.opts, s, it)
            dr, t = backtrack(self, s, it, dr, tr)
            if it.stop is not None or it.accepted is not None:
                break
            after_failed_round(self, s, it, dr, t)
        s.report = (it.zn, it.omega, it.eps_used, it.delta_used, it.backtracks)
        if it.accepted is None:
            return s, None, it.stop
        return s, self._accept(s, it, dr), None

    def _accept(self, s: MaidState, it: Iteration, dr) -> dict:
        """Move to the accepted trial; the record's fields.  (ε, δ) loosen, and a probe's
        tightening, which was for measuring only, does not carry over."""
        o, t = self.opts, it.accepted
        if o.direction == "lbfgs":
            s.last, s.last_f = (flat(s.u), dr.zf), s.f_cur
        s.u, s.x, s.f_cur = t.u, t.x, t.center
        if t.adj is not None:
            s.q = t.q
        if not dr.quasi_newton:
            s.step = o.rho_plus * t.alpha
        if it.expanded_alpha0 is not None:
            # the unexplored directions' step length follows backtracking, as a −z step's α does
            s.unexplored_len = min(o.step0, o.rho_plus * s.unexplored_len * t.alpha / it.expanded_alpha0)
        s.since_iters += 1
        s.since_dist += t.alpha * dr.dn
        s.since_probe += 1
        rec = dict(upper=s.f_cur, grad_norm=it.zn, omega=it.omega, eps=it.eps_used, delta=it.delta_used,
                   step=t.alpha, backtracks=it.backtracks, hypers=self.oracles.to_user(s.u))
        s.eps, s.delta = update_accuracies(s.eps / o.nu ** it.undo["eps"], s.delta / o.nu ** it.undo["delta"],
                                           o.nu_plus)
        return rec

    def stop_record(self, s: MaidState) -> dict:
        zn, omega, eps, delta, backtracks = s.report
        return dict(upper=s.f_cur, grad_norm=zn, omega=omega, eps=eps, delta=delta, step=0.0,
                    backtracks=backtracks, hypers=self.oracles.to_user(s.u))

    def flatten(self, s: MaidState) -> dict:
        return flatten_state(s)

    def result(self, s: MaidState, tr: Tracker, reason: str) -> OuterResult:
        return OuterResult(u=s.u, hypers=self.oracles.to_user(s.u), x=s.x, q=s.q, upper=s.f_cur,
                           history=tr.history, converged=reason == Stop.CONVERGED, reason=reason)
