"""MAID's first phase of a round: a certified hypergradient at the current point.

Computes z at (ε, δ), continues a capped solve, re-estimates the constants when due, folds
each pair of hypergradients at one θ into the secant constants (probing an accuracy when no
informative pair exists yet), and tightens (ε, δ) until ω certifies −z a descent direction,
or ‖z‖ + ω ≤ tol (converged), or a floor ends the run (docs/ALGORITHMS.md, MAID, "Iteration").
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bil.runtime.outer.accuracy import tighten_dominant, update_accuracies
from bil.runtime.outer.direction import ERROR_DIRS, flat
from bil.runtime.outer.error_model import SecantConstants, descent_test, merge_constants, secant_update
from bil.runtime.outer.floor import floor_reason, resolve_floors
from bil.runtime.outer.history import arithmetic_floor, is_finite_tree, to_host, tree_norm
from bil.runtime.outer.stops import Status, Stop

__all__ = ["certify", "qr_of", "tree_dist", "MAX_CONTINUATIONS", "MAX_FLOOR_CONTINUATIONS", "MAX_PROBES"]

#: consecutive continuations of a capped lower/CG solve at the current point
MAX_CONTINUATIONS = 3
#: the same once the run has certified a point: a cap then means the accuracy asked for is
#: below what the solver delivers (the accuracy floor, :mod:`bil.runtime.outer.floor`)
MAX_FLOOR_CONTINUATIONS = 1
#: tightenings of one accuracy at the first point to find an informative pair
MAX_PROBES = 4


def qr_of(hg) -> float:
    """⟨q̃, ∇ₓg(x̃)⟩ of a hypergradient result (NaN where the oracles do not give it)."""
    qr = getattr(hg, "qr", None)
    return math.nan if qr is None else float(np.asarray(jax.device_get(qr)))


def tree_dist(a, b) -> float:
    return tree_norm(jax.tree.map(lambda p, q: np.asarray(p, np.float64) - np.asarray(q, np.float64), a, b))


def certify(loop, s, it, tr) -> None:
    """Phase 1 on the working state ``s`` and iteration ``it``: returns with ``it.z`` certified,
    or with ``it.stop`` set (converged, a failure, a floor, the budget)."""
    conts = 0
    while True:
        if tr.exhausted():
            it.stop = Stop.BUDGET
            return
        hg = loop.oracles.hypergrad(s.u, s.x, s.q, s.eps, s.delta, cap=tr.remaining())
        f, li, ci, ls, cs, gx, qn = (np.asarray(v) for v in jax.device_get(
            (hg.f, hg.lower_iters, hg.cg_iters, hg.lower_status, hg.cg_status, hg.gx_norm, hg.q_norm)))
        f, gx, qn, ls, cs = float(f), float(gx), float(qn), int(ls), int(cs)
        tr.spend(int(li), int(ci), ls, cs, upper=1, cross=1, solves=1)
        if tr.cut:
            # cut short by the budget: keep the partial iterates as the warm start of a resume
            s.x, s.q = hg.x, hg.q
            it.stop = Stop.BUDGET
            return
        it.pair_li += int(li)
        it.pair_ci += int(ci)
        it.stop = _failed(ls, cs)
        if it.stop is not None:
            return
        s.x, s.q = hg.x, hg.q
        if ls == Status.CAP or cs == Status.CAP:
            conts += 1
            it.stop = _capped(s, ls, conts)
            if it.stop is not None:
                return
            continue
        conts = 0
        z = to_host(hg.z)
        if not (math.isfinite(f) and math.isfinite(gx) and is_finite_tree(z)):
            it.stop = Stop.NONFINITE_HYPERGRAD
            return
        _fold(loop, s, it, hg, z, f, gx, qn)
        if it.stop is not None:
            return
        if _probe(loop, s, it):
            continue
        if _certified(loop, s, it):
            return


def _failed(ls: int, cs: int) -> str | None:
    """The stop of a solve that failed outright (non-finite values, a Hessian not PD), else None."""
    if ls == Status.NONFINITE:
        return Stop.LOWER_NONFINITE
    if cs in (Status.NONFINITE, Status.NOT_PD) and ls == Status.OK:
        # (an adjoint at a lower iterate that stopped at its cap says nothing about the
        # Hessian at the solution: an unbounded-below objective looked "not positive
        # definite"; the capped solve is continued, and reported, below)
        return Stop.CG_NONFINITE if cs == Status.NONFINITE else Stop.NOT_PD
    return None


def _capped(s, ls: int, conts: int) -> str | None:
    """After the ``conts``-th capped solve in a row at this point: the stop, or None to continue it."""
    if s.last_ok is not None and conts > MAX_FLOOR_CONTINUATIONS:
        # a point is certified already: the accuracy asked for is below what the
        # solver delivers.  The run ends at its best certified point, not in an error
        what = (f"the lower solve did not reach ε = {s.eps:.2g}" if ls == Status.CAP else
                f"CG did not reach δ = {s.delta:.2g}")
        return floor_reason(s.last_ok[0], f"{what} within its iteration cap")
    if conts > MAX_CONTINUATIONS:
        return Stop.LOWER_CAP if ls == Status.CAP else Stop.CG_CAP
    return None


def _fold(loop, s, it, hg, z, f: float, gx: float, qn: float) -> None:
    """Take a finite hypergradient as the point's: its values, the constants when due, the
    secant pair it makes with the previous one at this θ."""
    o = loop.opts
    s.last_ok = (s.eps, s.delta)
    it.qr_cur = qr_of(hg) if o.bracket == "adjoint" else math.nan
    it.f_raw = f
    # the best estimate of F here: the adjoint-corrected value (second order in ε, δ)
    s.f_cur = f - it.qr_cur if (math.isfinite(it.qr_cur) and math.isfinite(qn)) else f
    if it.refresh:
        s.consts = merge_constants(s.consts, loop.oracles.constants(s.u, s.x))
        it.refresh = False
        # μ may have changed: so has the arithmetic's floor on ε (and so may ‖H‖·‖x‖, ‖x‖)
        s.eps_min, s.delta_min = resolve_floors(o.eps_min, o.delta_min, s.x,
                                                arithmetic_floor(loop.oracles, s.u, s.x), gx)
        s.since_iters, s.since_dist = 0, 0.0
        if not (s.consts.mu > 0 and math.isfinite(s.consts.mu)):
            it.stop = Stop.invalid_mu(s.consts.mu)
            return
    if o.omega == "secant" and it.prev is not None:
        # a pair at the same θ: an accuracy that did no iterations did not take effect
        # (z sees a change of x̃ through the re-solved adjoint: without CG iterations the
        # ε-change is invisible, and would wrongly read as "ε does not matter")
        prev = it.prev
        s.ks = secant_update(s.ks, (prev[0] - s.eps) if (it.pair_li > 0 and it.pair_ci > 0) else 0.0,
                             (prev[1] - s.delta) if it.pair_ci > 0 else 0.0, tree_dist(z, prev[2]))
        dz = flat(z) - flat(prev[2])
        if it.pair_ci > 0 and np.linalg.norm(dz) > 0:
            s.error_dirs = (s.error_dirs + [dz])[-ERROR_DIRS:]
    it.prev = (s.eps, s.delta, z)
    it.pair_li = it.pair_ci = 0
    it.z, it.gx, it.qn = z, gx, qn
    it.zn = tree_norm(z)
    it.eps_used, it.delta_used = s.eps, s.delta


def _probe(loop, s, it) -> bool:
    """No informative secant pair yet: tighten that accuracy for a recomputation (True).

    δ first (a CG-only pair); then ε, together with δ after an ε-probe that showed nothing."""
    nu = loop.opts.nu
    if loop.opts.omega != "secant":
        return False
    probe = None
    if not math.isfinite(s.ks.k_delta) and s.probes["delta"] < MAX_PROBES and s.delta > s.delta_min:
        probe = "delta"
    elif not math.isfinite(s.ks.k_eps) and s.probes["eps"] < MAX_PROBES and s.eps > s.eps_min:
        probe = "eps"
    if probe is None:
        return False
    joint = probe == "eps" and it.undo["eps"] >= 1 and s.delta > s.delta_min
    s.probes[probe] += 1
    if probe == "eps":
        s.eps = max(s.eps * nu, s.eps_min)
        it.undo["eps"] += 1
    if probe == "delta" or joint:
        s.delta = max(s.delta * nu, s.delta_min)
        it.undo["delta"] += 1
    return True


def _certified(loop, s, it) -> bool:
    """The descent test on ω: True when the round may go on (certified) or the run stops;
    False after tightening (ε, δ) for another hypergradient."""
    o = loop.opts
    gx, qn, zn = it.gx, it.qn, it.zn
    it.omega = sum(loop.omega_terms(s, s.eps, s.delta, gx, qn))
    certified = descent_test(it.omega, zn, o.eta)
    if zn + it.omega <= o.tol or (zn <= o.tol and certified):
        it.stop = Stop.CONVERGED
        return True
    if certified:
        return True
    if s.eps <= s.eps_min and s.delta <= s.delta_min:
        it.stop = floor_reason(s.eps, "ε and δ at their floors eps_min, delta_min, and ω still too large "
                                      "for a certified descent direction")
        return True
    if zn > 0:
        s.eps, s.delta = tighten_dominant(
            s.eps, s.delta, o.nu, s.eps_min, s.delta_min, lambda e, d: loop.omega_terms(s, e, d, gx, qn),
            lambda e, d: descent_test(sum(loop.omega_terms(s, e, d, gx, qn)), zn, o.eta))
    else:
        # z = 0 exactly (e.g. a start x₀ = 0 already within a loose tolerance, so
        # nothing moved): no prediction can pass, which used to send ε straight to
        # its floor (1e-14) and keep every later solve needlessly tight
        s.eps, s.delta = update_accuracies(s.eps, s.delta, o.nu, s.eps_min, s.delta_min)
    return False
