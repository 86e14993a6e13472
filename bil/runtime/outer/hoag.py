"""HOAG (Pedregosa, ICML 2016) on the same compiled oracles as MAID.

Follows ``docs/ALGORITHMS.md`` (section HOAG) and the public reference code:

* Tolerance schedule over evaluations j = 0, 1, 2, ... (j = 0 is the
  evaluation at the initial hypers): quadratic ε₀/(j+1)², cubic ε₀/(j+1)³,
  exponential ε₀·0.9ʲ; floor 1e-12.  Every schedule starts at ε₀.
* Relative tolerances, converted to the oracles' absolute ones:
  the lower solve must reach ‖∇ₓg‖ ≤ ε_j·‖∇ₓg(x₀, θ₀)‖ (relative to the very
  first lower iterate's gradient norm, as in the reference); the oracles stop
  at ‖∇ₓg‖ ≤ μ·eps, so eps = ε_j·‖∇ₓg(x₀, θ₀)‖/μ, with μ from
  ``oracles.constants`` and ‖∇ₓg(x₀, θ₀)‖ from the optional
  ``oracles.lower_grad_norm`` (when that is unavailable, NaN, eps = ε_j).
  CG stops at ‖Hq − ∇ₓf‖ ≤ ε_j·‖∇ₓf‖₀ (the first outer step's ‖∇ₓf‖, obtained
  by one ``value`` call at θ₀ before the first hypergradient; that call's
  lower iterations are counted, and the hypergradient warm-started from its
  iterate then costs no further lower iterations).
* θ ← clip(θ − z/L): the hypers that ``oracles.log_hypers()`` marks as log
  coordinates (all of them when it returns None, as in the reference) are
  clipped to the box ``clip`` ([-10, 6] by default); ``clip=None`` disables it.
* Step control after evaluating f_k = f(θ_k) at tolerance ε_k:
  if f_k − ε_k ≤ f_{k−1} + ε_{k−1} + ε_{k−1}‖Δθ‖ − (L/2)‖Δθ‖² then L ← 0.95L
  (longer steps); elif f_k ≤ f_{k−1}, keep L; else L ← 2L; Δθ = θ_k − θ_{k−1}.
  (The reference code pairs f_k with the *next* step's Δθ and shifted
  tolerances; here the test is applied to the step that produced f_k.)
  The first L is ‖z₀‖ times the number of scalar hypers (1 if ‖z₀‖ ≤ 1e-3).
* A lower solve or CG that hits its cap at the initial hypers stops the run
  (a failure); one at a later step ends the run at the last point, whose
  values were certified at the previous tolerance: the schedule asked for an
  accuracy the solver does not deliver (the accuracy floor,
  :mod:`bil.runtime.outer.floor`; the reference code steps on from capped solves).
  Non-finite values stop the run.

Iteration k (k = 1, 2, ...): step θ_{k−1} → θ_k with the pending z_{k−1};
hypergradient at θ_k (tolerance index j = k); step control; record k
(``upper`` = f(θ_k), ``grad_norm`` = ‖z_k‖, ``eps`` = ``delta`` = ε_k,
``step`` = 1/L used, ``omega`` = NaN; ε = δ = 0 on exact oracles, a training
procedure, whose values the schedule does not change).  The work at θ₀ is counted in record 1.
Stops when ‖z_k‖ ≤ tol, after max_iter records, or when the budget is spent
(each oracle call is capped by what is left; a step is never taken from a
solve the budget cut short).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.floor import floor_reason
from bil.runtime.outer.history import (OuterResult, Tracker, arithmetic_floor, host_copy, hypergrad_step,
                                       pack_iterates, pack_tree, start_iterates, tree_axpy, tree_norm,
                                       unpack_iterates, unpack_tree)

__all__ = ["SCHEDULES", "schedule_eps", "step_control", "first_L", "run_hoag"]

SCHEDULES = ("quadratic", "cubic", "exponential")
#: hypergrad_step's reasons for a solve stopped by its iteration cap
_CAPPED = ("lower solve hit its iteration cap", "CG hit its iteration cap")
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
    """HOAG's update of the inverse step size L (see the module docstring)."""
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


def run_hoag(oracles: AbstractOracles, o: dict, *, callback=None, state=None) -> OuterResult:
    """HOAG on ``oracles`` with options ``o`` (the full ``hoag(...)`` dict)."""
    schedule, eps0 = str(o["schedule"]), float(o["eps0"])
    schedule_eps(schedule, eps0, 0)  # validate
    # exact oracles (a training procedure) ignore the tolerances: record ε = δ = 0 as gd and
    # adam do, not a schedule that had no effect
    def shown(e: float) -> float:
        return 0.0 if oracles.exact else e
    max_iter, tol = int(o["max_iter"]), float(o["tol"])
    clip = o.get("clip")
    log_hypers = oracles.log_hypers()

    tr = Tracker("hoag", o.get("budget"), callback, state)
    u0 = host_copy(oracles.u0)
    oracles.set_strong_convexity(None)   # θ₀'s μ, whatever ran before on these oracles
    # never below what the arithmetic resolves (float32 especially)
    floor_eps, floor_delta = arithmetic_floor(oracles, u0)

    def accuracies(e: float) -> tuple[float, float]:
        """Schedule value ε_k -> absolute (lower accuracy, CG residual)."""
        return max(e * abs_scale, floor_eps), max(e * delta_scale, floor_delta)

    n_hypers = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(u0))
    reason = None
    converged = False
    failed_at = None   # the hypers of a failed step (the run stays at the last good point)

    if state is None:
        u, x, q = start_iterates(oracles, u0)
        tr.begin()
        mu = float(oracles.constants(u, x).mu)
        g0 = float(oracles.lower_grad_norm(u, x))
        abs_scale = g0 / mu if (math.isfinite(g0) and g0 > 0 and mu > 0 and math.isfinite(mu)) else 1.0
        e = schedule_eps(schedule, eps0, 0)
        v = oracles.value(u, x, max(e * abs_scale, floor_eps), cap=tr.remaining())
        vli, vgx, vls = jax.device_get((v.lower_iters, v.gx_norm, v.lower_status))
        tr.spend(int(vli), 0, vls)
        gx0 = float(vgx)
        delta_scale = gx0 if (math.isfinite(gx0) and gx0 > 0) else 1.0
        x = v.x
        eps_prev = e
        if tr.cut:
            reason, f_prev, z = "budget exhausted", float(v.f), jax.tree.map(np.zeros_like, u0)
        else:
            hg, f_prev, z, reason = hypergrad_step(oracles, tr, u, x, q, *accuracies(e))
            x, q = hg.x, hg.q
            if reason is not None:
                f_prev = math.nan  # no good point yet: a capped solve's value is not F(θ₀)
        L = first_L(tree_norm(z), n_hypers)
    else:
        u, x, q = unpack_iterates(state, oracles, u0)
        z = unpack_tree("z", state, u0)
        f_prev, eps_prev = float(state["upper"]), float(state["eps"])
        L = float(state["L"])
        abs_scale, delta_scale = float(state["abs_scale"]), float(state["delta_scale"])

    def make_state() -> dict:
        st = tr.common_state()
        pack_iterates(st, u, x, q)
        pack_tree("z", z, st)
        st.update(upper=float(f_prev), eps=float(eps_prev), L=float(L), abs_scale=float(abs_scale),
                  delta_scale=float(delta_scale))
        return st

    while reason is None:
        reason = tr.limit_reason(max_iter)
        if reason is not None:
            break
        k = tr.iteration + 1
        tr.begin()
        alpha = 1.0 / L
        u_new = _clip(tree_axpy(u, alpha, z), clip, log_hypers)
        dtheta = tree_norm(jax.tree.map(lambda a, b: a - b, u_new, u))
        e = schedule_eps(schedule, eps0, k)
        hg, f, z_new, why = hypergrad_step(oracles, tr, u_new, x, q, *accuracies(e))
        if why in _CAPPED and math.isfinite(f_prev):
            # the schedule asks for more than the solver delivers: the run ends at its last
            # point (certified at the previous tolerance), not in an error
            what = "lower solve" if why.startswith("lower") else "CG solve"
            why = floor_reason(eps_prev, f"the {what} did not reach the schedule's next tolerance {e:.2g} "
                                         f"within its iteration cap")
        if why is not None:  # the step is not taken from a cut-short, capped or non-finite solve
            reason = tr.stop = why
            failed_at = oracles.to_user(u_new)
            rec = tr.emit(upper=f_prev, grad_norm=tree_norm(z), omega=math.nan,
                          eps=shown(eps_prev), delta=shown(eps_prev),
                          step=0.0, backtracks=0, hypers=oracles.to_user(u))
            tr.notify(rec, make_state)
            break
        u, x, q, z = u_new, hg.x, hg.q, z_new
        L_used = L
        L = step_control(L, f, e, f_prev, eps_prev, dtheta)
        f_prev, eps_prev = f, e
        zn = tree_norm(z)
        rec = tr.emit(upper=f, grad_norm=zn, omega=math.nan, eps=shown(e), delta=shown(e),
                      step=1.0 / L_used, backtracks=0,
                      hypers=oracles.to_user(u))
        if zn <= tol:   # (known before the callback, so that the state it saves says so)
            converged, reason = True, "gradient norm below tol"
            tr.stop = reason
        if tr.notify(rec, make_state) and not converged:
            reason = "stopped by callback"

    if tr.spent_this_iteration:  # work at θ₀ without a step (failure there, or max_iter=0)
        tr.stop = reason
        rec = tr.emit(upper=f_prev, grad_norm=tree_norm(z), omega=math.nan,
                      eps=shown(eps_prev), delta=shown(eps_prev),
                      step=0.0, backtracks=0, hypers=oracles.to_user(u))
        tr.notify(rec, make_state)

    return OuterResult(u=u, hypers=oracles.to_user(u), x=x, q=q, upper=f_prev, history=tr.history,
                       converged=converged, reason=reason, state=make_state(), failed_at=failed_at)
