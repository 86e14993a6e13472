"""MAID's line search: backtracking on certified brackets from a capped first trial.

The first trial's α comes from the last accepted step (or ``step0``), a quasi-Newton step's
natural length, the trust region ``max_step`` and the cubic cap (:mod:`bil.runtime.outer.cubic`).
Each trial is solved coarse to fine (:func:`screening_accuracy`), and certified by the value
bracket or, where that is too wide, the adjoint-corrected one (docs/ALGORITHMS.md, MAID,
"Inexact backtracking", "Coarse-to-fine trials").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from bil.runtime.outer.bracket import point_bracket, sufficient_decrease
from bil.runtime.outer.certify import qr_of, tree_dist
from bil.runtime.outer.cubic import cap_along
from bil.runtime.outer.direction import Direction, direction_certified, unflat
from bil.runtime.outer.history import tree_axpy
from bil.runtime.outer.stops import Status, Stop

__all__ = ["first_trial_step", "screening_accuracy", "nearest_start", "Trial", "evaluate_trial", "backtrack",
           "MAX_CAPPED_TRIALS"]

#: consecutive trials of one round whose lower solves hit their cap: the round ends there
MAX_CAPPED_TRIALS = 2
#: refinement factor of a trial's accuracy between coarse-to-fine evaluations
_SCREEN_FACTOR = 0.25


def first_trial_step(step: float, z_norm: float, max_step: float | None, step0: float | None = None) -> float:
    """α₀ = min(step, max_step/‖z‖): the trust region ‖α₀ z‖ ≤ max_step.

    ``step`` is NaN before the first accepted step: the first trial then moves θ
    by ``step0`` (α₀ = step0/‖z‖), so its length does not depend on the scale
    of the hypergradient.
    """
    if not math.isfinite(step):
        step = step0 / z_norm if (step0 is not None and z_norm > 0) else 1.0
    if max_step is None or not (z_norm > 0):
        return step
    return min(step, max_step / z_norm)


def screening_accuracy(eps: float, alpha: float, rate: float, gx_norm: float,
                       max_ratio: float = 64.0) -> float:
    """First accuracy of a trial at θ − αd: the ε at which the value bracket's slack
    ‖∇ₓf‖ε equals the first-order decrease α⟨z, d⟩, within [ε, max_ratio·ε].

    A trial far worse than predicted is rejected there, one as good as predicted
    is decided after one or two refinements (docs/ALGORITHMS.md, MAID, "Coarse-to-fine
    trials")."""
    if not (gx_norm > 0 and math.isfinite(gx_norm) and rate > 0 and math.isfinite(rate)):
        return eps
    return min(max(eps, alpha * rate / gx_norm), max_ratio * eps)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def nearest_start(u_try, u, x, tried):  # x: the warm start (any pytree: (x̃, q̃) in adjoint mode)
    """Warm start for a trial at ``u_try``: the lower iterate of the nearest point evaluated
    in this iteration (the current point ``u`` or an earlier trial), so that a trial
    retried after tightening continues from its own previous iterate."""
    best, best_d = x, tree_dist(u_try, u)
    for ut, xt in tried:
        d = tree_dist(u_try, ut)
        if d < best_d:
            best, best_d = xt, d
    return best


class Trial(NamedTuple):
    """One evaluated trial point θ − αd of the backtracking."""

    u: object
    alpha: float
    f: float                    # f(x̃) there (at the accuracy that decided it)
    gx: float                   # ‖∇ₓf(x̃)‖
    x: object                   # its lower iterate
    q: object                   # its adjoint (the warm start, unless ``adj`` is set)
    adj: tuple | None = None    # (⟨q̃, ∇ₓg⟩, ‖q̃‖, δ) when the adjoint was computed there
    center: float = math.nan    # the bracket's centre: the best estimate of F there
    ok: bool = False            # certified sufficient decrease
    accuracy_bound: bool = False  # central values pass, the bracket's width fails
    capped: bool = False        # its lower solve hit its iteration cap (at the accuracy asked for)


def _screened_value(loop, s, it, dr: Direction, u_try, alpha: float, xs, tr):
    """The value at ``u_try``, coarse to fine: first at the accuracy where the bracket decides a
    trial far worse (or as good) as predicted, refined from its own iterate down to ε.
    Returns (value result, f, ‖∇ₓf‖, lower status, accuracy of the last evaluation)."""
    o = loop.opts
    e_t = screening_accuracy(s.eps, alpha, dr.rate, it.gx) if o.screen else s.eps
    while True:
        v = loop.oracles.value(u_try, xs, e_t, cap=tr.remaining())
        vf, vli, vls, vgx = (np.asarray(a) for a in jax.device_get((v.f, v.lower_iters, v.lower_status, v.gx_norm)))
        vf, vgx, vls = float(vf), float(vgx), int(vls)
        tr.spend(int(vli), 0, vls, upper=1, solves=1)
        if e_t <= s.eps or vls != Status.OK or not (math.isfinite(vf) and math.isfinite(vgx)):
            return v, vf, vgx, vls, e_t
        hi_t, lo_t, _ = point_bracket(vf, vgx, e_t, s.consts)
        if (sufficient_decrease(hi_t, it.f_minus, o.lam, alpha, dr.rate)           # accepted already
                # certainly no decrease (its lower end fails even against the current
                # point's upper end: tightening ε at θ could not save it either)
                or not sufficient_decrease(lo_t, it.f_plus_cur, o.lam, alpha, dr.rate)):
            return v, vf, vgx, vls, e_t
        e_t = max(s.eps, e_t * _SCREEN_FACTOR)
        xs = v.x


def evaluate_trial(loop, s, it, dr: Direction, u_try, alpha: float, tr) -> Trial:
    """Evaluate θ − αd: lower solve (coarse to fine), bracket test, and where only the
    value bracket is too wide, the adjoint-corrected one."""
    o, lam, rate = loop.opts, loop.opts.lam, dr.rate
    xs, qs = nearest_start(u_try, s.u, (s.x, s.q), it.tried)
    v, vf, vgx, vls, e_t = _screened_value(loop, s, it, dr, u_try, alpha, xs, tr)
    t = Trial(u=u_try, alpha=alpha, f=vf, gx=vgx, x=v.x, q=qs, capped=vls == Status.CAP)
    if vls in (Status.OK, Status.CAP) and math.isfinite(vf):
        it.tried.append((u_try, (t.x, t.q)))
    if not (vls == Status.OK and math.isfinite(vf) and math.isfinite(vgx)):
        return t
    f_plus_new, f_lo_new, vc = point_bracket(vf, vgx, e_t, s.consts)
    ok = sufficient_decrease(f_plus_new, it.f_minus, lam, alpha, rate)
    # the central values pass, only the accuracy slack fails:
    # shorter steps cannot help, tighten instead
    limited = not ok and e_t <= s.eps and sufficient_decrease(vf, it.f_raw, lam, alpha, rate)
    t = t._replace(center=vc, ok=ok, accuracy_bound=limited)
    if (not ok and o.bracket == "adjoint" and math.isfinite(it.qr_cur) and e_t <= s.eps
            and sufficient_decrease(f_lo_new, it.f_minus, lam, alpha, rate)):
        # the value bracket is too wide, but the trial's true value may pass (its
        # lower end does): certify with the corrected value, which needs the
        # adjoint at the trial (CG only: x̃ already meets ε)
        t = _adjoint_trial(loop, s, it, t, qs, rate, tr)
    return t


def _adjoint_trial(loop, s, it, t: Trial, qs, rate: float, tr) -> Trial:
    """``t`` certified with the adjoint-corrected bracket (its adjoint computed there)."""
    lam = loop.opts.lam
    h2 = loop.oracles.hypergrad(t.u, t.x, qs, s.eps, s.delta, cap=tr.remaining())
    hf, hli, hci, hls, hcs, hgx, hqn = (np.asarray(a) for a in jax.device_get(
        (h2.f, h2.lower_iters, h2.cg_iters, h2.lower_status, h2.cg_status, h2.gx_norm, h2.q_norm)))
    tr.spend(int(hli), int(hci), hls, hcs, upper=1, cross=1, solves=1)
    if int(hls) == Status.OK and int(hcs) == Status.OK and math.isfinite(float(hf)):
        adj = (qr_of(h2), float(hqn), s.delta)
        it.tried[-1] = (t.u, (h2.x, h2.q))
        f_plus_new, _, vc = point_bracket(float(hf), float(hgx), s.eps, s.consts, adj)
        ok = sufficient_decrease(f_plus_new, it.f_minus, lam, t.alpha, rate)
        t = t._replace(f=float(hf), gx=float(hgx), x=h2.x, q=h2.q, adj=adj, center=vc, ok=ok,
                       accuracy_bound=not ok and sufficient_decrease(vc, s.f_cur, lam, t.alpha, rate))
    return t


def _capped_first_trial(loop, it, dr: Direction, alpha: float) -> tuple[Direction, float]:
    """The cubic cap: move along the last step at most to where the cubic through its two
    ends' values and slopes has its minimum (docs/ALGORITHMS.md, MAID)."""
    o = loop.opts
    sv, ext = it.segment
    limit = ext * float(np.linalg.norm(sv))
    dc = cap_along(dr.df, alpha, sv, limit)
    if dc is dr.df:
        return dr, alpha
    if direction_certified(it.omega, dr.zf, dc, o.eta):
        dr = dr._replace(df=dc, d=unflat(dc, it.z), dn=float(np.linalg.norm(dc)), rate=float(dr.zf @ dc))
        if dr.quasi_newton:
            alpha = first_trial_step(1.0, dr.dn, o.max_step, o.step0)
    else:
        # (the capped direction is not certified: shorten the whole step instead)
        alpha *= limit / (-alpha * float(sv @ dr.df) / float(np.linalg.norm(sv)))
    return dr, alpha


def backtrack(loop, s, it, dr: Direction, tr) -> tuple[Direction, Trial | None]:
    """One round of backtracking along ``dr`` from the current point: sets ``it.accepted`` or
    ``it.stop``, or returns with neither after a failed round (and its last trial)."""
    o = loop.opts
    it.adj_cur = (it.qr_cur, it.qn, s.delta) if o.bracket == "adjoint" else None
    it.f_plus_cur, it.f_minus, s.f_cur = point_bracket(it.f_raw, it.gx, s.eps, s.consts, it.adj_cur)
    # a quasi-Newton step is tried at its natural length first
    alpha = first_trial_step(1.0 if dr.quasi_newton else s.step, dr.dn, o.max_step, o.step0)
    if it.segment is not None and it.retries == 0 and math.isfinite(it.segment[1]):
        dr, alpha = _capped_first_trial(loop, it, dr, alpha)
    # (the first trial's α, against which the accepted α measures backtracking)
    it.expanded_alpha0 = alpha if (dr.quasi_newton and dr.expanded) else None
    t = None
    caps = 0           # consecutive trials whose lower solves hit their cap
    for i in range(o.max_backtracks + 1 + it.retries):
        if tr.exhausted():
            it.stop = Stop.BUDGET
            break
        u_try = tree_axpy(s.u, alpha, dr.d)
        if _same(u_try, s.u):
            if i == 0:
                it.stop = Stop.STEP_TOO_SMALL
            break
        t = evaluate_trial(loop, s, it, dr, u_try, alpha, tr)
        if t.ok:
            it.accepted = t
            break
        it.backtracks += 1
        caps = caps + 1 if t.capped else 0
        if t.accuracy_bound or caps >= MAX_CAPPED_TRIALS:
            break
        alpha *= o.rho
    return dr, t
