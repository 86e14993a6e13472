"""HOAG (Pedregosa, ICML 2016) on the driver: θ ← clip(θ − z/L) with a fixed tolerance schedule.

The schedule, the conversion of its relative tolerances to the oracles' absolute ones, the
step control of L and the records are in docs/ALGORITHMS.md, "HOAG".  A capped solve after
θ₀ ends the run at its accuracy floor (the schedule asked for more than the solver delivers);
at θ₀ it is a failure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.driver import Tracker, hypergrad_step, pytree_state
from bil.runtime.outer.floor import floor_reason
from bil.runtime.outer.history import (OuterResult, arithmetic_floor, host_copy, pack_iterates, pack_tree,
                                       start_iterates, tree_axpy, tree_norm, unpack_iterates, unpack_tree)
from bil.runtime.outer.stops import Stop

__all__ = ["SCHEDULES", "schedule_eps", "step_control", "first_L", "HoagState", "Hoag"]

SCHEDULES = ("quadratic", "cubic", "exponential")
EPS_FLOOR = 1e-12


def schedule_eps(schedule: str, eps0: float, j: int) -> float:
    """Relative tolerance of evaluation j (j = 0 at the initial hypers)."""
    if schedule == "quadratic":
        e = eps0 / (j + 1) ** 2
    elif schedule == "cubic":
        e = eps0 / (j + 1) ** 3
    elif schedule == "exponential":
        e = eps0 * 0.9 ** j
    else:
        raise ValueError(f"hoag: unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")
    return max(e, EPS_FLOOR)


def step_control(L: float, f_new: float, eps_new: float, f_old: float, eps_old: float, dtheta: float) -> float:
    """HOAG's update of the inverse step size L (docs/ALGORITHMS.md, "HOAG")."""
    if f_new - eps_new <= f_old + eps_old + eps_old * dtheta - 0.5 * L * dtheta * dtheta:
        return 0.95 * L
    if f_new <= f_old:
        return L
    return 2.0 * L


def first_L(z_norm: float, n_hypers: int) -> float:
    return z_norm * n_hypers if z_norm > 1e-3 else 1.0


def _clip(u, clip, log_hypers):
    if clip is None:
        return u
    lo, hi = float(clip[0]), float(clip[1])
    out = {}
    for name, val in u.items():
        if log_hypers is None or log_hypers.get(name, False):
            out[name] = jax.tree.map(lambda a: np.clip(a, lo, hi), val)
        else:
            out[name] = val
    return out


@pytree_state
@dataclasses.dataclass
class HoagState:
    u: Any
    x: Any
    q: Any
    z: Any                  # hypergradient at u (the next step's)
    f: float                # upper value at u
    eps: float              # its schedule tolerance
    L: float                # inverse step size
    abs_scale: float        # relative lower tolerance -> absolute ε
    delta_scale: float      # relative CG tolerance -> absolute δ
    failed_at: Any = None   # user-coordinate hypers of a failed step (not checkpointed)


class Hoag:
    """HOAG: one step and one hypergradient at the schedule's next tolerance per iteration."""

    name = "hoag"

    def __init__(self, oracles: AbstractOracles, schedule: str, eps0: float, max_iter: int, tol: float,
                 clip=(-10.0, 6.0), budget=None):
        schedule_eps(schedule, eps0, 0)  # validate
        self.oracles, self.schedule, self.eps0 = oracles, schedule, eps0
        self.max_iter, self.tol, self.clip, self.budget = max_iter, tol, clip, budget
        self.log_hypers = oracles.log_hypers()

    @classmethod
    def from_options(cls, oracles: AbstractOracles, o: dict) -> "Hoag":
        """The loop for the full ``hoag(...)`` options."""
        return cls(oracles, str(o["schedule"]), float(o["eps0"]), int(o["max_iter"]), float(o["tol"]),
                   o.get("clip"), o.get("budget"))

    def _setup(self) -> None:
        self.u0 = host_copy(self.oracles.u0)
        self.oracles.set_strong_convexity(None)   # θ₀'s μ, whatever ran before on these oracles
        # never below what the arithmetic resolves (float32 especially)
        self.floor = arithmetic_floor(self.oracles, self.u0)
        self.n_hypers = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(self.u0))

    def _shown(self, e: float) -> float:
        """ε as recorded: 0 on exact oracles (a training procedure ignores the schedule)."""
        return 0.0 if self.oracles.exact else e

    def _accuracies(self, s: HoagState, e: float) -> tuple[float, float]:
        """Schedule value ε_k -> absolute (lower accuracy, CG residual)."""
        return max(e * s.abs_scale, self.floor[0]), max(e * s.delta_scale, self.floor[1])

    def init(self, tr: Tracker):
        """The work at θ₀: μ and ‖∇ₓg‖ for the scales, a value call for ‖∇ₓf‖₀, a hypergradient."""
        self._setup()
        o = self.oracles
        u, x, q = start_iterates(o, self.u0)
        tr.begin()
        mu = float(o.constants(u, x).mu)
        g0 = float(o.lower_grad_norm(u, x))
        abs_scale = g0 / mu if (math.isfinite(g0) and g0 > 0 and mu > 0 and math.isfinite(mu)) else 1.0
        e = schedule_eps(self.schedule, self.eps0, 0)
        v = o.value(u, x, max(e * abs_scale, self.floor[0]), cap=tr.remaining())
        vli, vgx, vls = jax.device_get((v.lower_iters, v.gx_norm, v.lower_status))
        tr.spend(int(vli), 0, vls, upper=1, solves=1)
        gx0 = float(vgx)
        delta_scale = gx0 if (math.isfinite(gx0) and gx0 > 0) else 1.0
        s = HoagState(u, v.x, q, None, math.nan, e, math.nan, abs_scale, delta_scale)
        if tr.cut:
            reason, s.f, s.z = Stop.BUDGET, float(v.f), jax.tree.map(np.zeros_like, self.u0)
        else:
            hg, s.f, s.z, reason = hypergrad_step(o, tr, u, s.x, q, *self._accuracies(s, e))
            s.x, s.q = hg.x, hg.q
            if reason is not None:
                s.f = math.nan  # no good point yet: a capped solve's value is not F(θ₀)
        s.L = first_L(tree_norm(s.z), self.n_hypers)
        return s, reason

    def restore(self, tr: Tracker, saved: dict) -> HoagState:
        self._setup()
        u, x, q = unpack_iterates(saved, self.oracles, self.u0)
        return HoagState(u, x, q, unpack_tree("z", saved, self.u0), float(saved["upper"]), float(saved["eps"]),
                         float(saved["L"]), float(saved["abs_scale"]), float(saved["delta_scale"]))

    def step(self, s: HoagState, tr: Tracker):
        k = tr.iteration + 1
        tr.begin()
        u_new = _clip(tree_axpy(s.u, 1.0 / s.L, s.z), self.clip, self.log_hypers)
        dtheta = tree_norm(jax.tree.map(lambda a, b: a - b, u_new, s.u))
        e = schedule_eps(self.schedule, self.eps0, k)
        hg, f, z, why = hypergrad_step(self.oracles, tr, u_new, s.x, s.q, *self._accuracies(s, e))
        if why in (Stop.LOWER_CAP, Stop.CG_CAP) and math.isfinite(s.f):
            # the schedule asks for more than the solver delivers: the run ends at its last
            # point (certified at the previous tolerance), not in an error
            what = "lower solve" if why is Stop.LOWER_CAP else "CG solve"
            why = floor_reason(s.eps, f"the {what} did not reach the schedule's next tolerance {e:.2g} "
                                      f"within its iteration cap")
        if why is not None:  # the step is not taken from a cut-short, capped or non-finite solve
            return dataclasses.replace(s, failed_at=self.oracles.to_user(u_new)), None, why
        L = step_control(s.L, f, e, s.f, s.eps, dtheta)
        new = HoagState(u_new, hg.x, hg.q, z, f, e, L, s.abs_scale, s.delta_scale)
        zn = tree_norm(z)
        rec = dict(upper=f, grad_norm=zn, omega=math.nan, eps=self._shown(e), delta=self._shown(e),
                   step=1.0 / s.L, backtracks=0, hypers=self.oracles.to_user(u_new))
        return new, rec, (Stop.CONVERGED if zn <= self.tol else None)

    def stop_record(self, s: HoagState) -> dict:
        return dict(upper=s.f, grad_norm=tree_norm(s.z), omega=math.nan, eps=self._shown(s.eps),
                    delta=self._shown(s.eps), step=0.0, backtracks=0, hypers=self.oracles.to_user(s.u))

    def flatten(self, s: HoagState) -> dict:
        st: dict = {}
        pack_iterates(st, s.u, s.x, s.q)
        pack_tree("z", s.z, st)
        st.update(upper=float(s.f), eps=float(s.eps), L=float(s.L), abs_scale=float(s.abs_scale),
                  delta_scale=float(s.delta_scale))
        return st

    def result(self, s: HoagState, tr: Tracker, reason: str) -> OuterResult:
        return OuterResult(u=s.u, hypers=self.oracles.to_user(s.u), x=s.x, q=s.q, upper=s.f, history=tr.history,
                           converged=reason == Stop.CONVERGED, reason=reason, failed_at=s.failed_at)
