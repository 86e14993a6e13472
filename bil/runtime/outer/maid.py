r"""MAID: the method of adaptive inexact descent (Salehi, Mukherjee, Roberts, Ehrhardt).

Learns the hypers by descent steps on inexact hypergradients: each iteration
computes z at lower accuracy ε and adjoint residual δ, tightens them until an
error estimate ω certifies a descent direction (L-BFGS where ω allows, else −z),
and accepts a step only when brackets of the upper value certify a decrease;
ε, δ and the step adapt from iteration to iteration.  The loop is a host-side
Python loop over the compiled oracles; their accuracies are traced, so adapting
them never recompiles.  The derivations (certified and a-posteriori ω, the
adjoint-corrected bracket, unexplored directions, the cubic cap, coarse-to-fine
trials), the iteration step by step and the measurements behind each default
are in ``docs/ALGORITHMS.md`` (section MAID).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.floor import floor_reason, resolve_floors
from bil.runtime.outer.history import (OuterResult, Tracker, arithmetic_floor, host_copy, is_finite_tree,
                                       pack_iterates, start_iterates, to_host, tree_axpy, tree_norm, unpack_iterates)

__all__ = ["RunningConstants", "merge_constants", "error_bound", "bounds_upper_lower", "sufficient_decrease",
           "adjoint_norm_bound", "descent_test", "update_accuracies", "tighten_until", "first_trial_step",
           "SecantConstants", "secant_update", "secant_terms", "bound_terms", "tighten_dominant", "OMEGA_MODES",
           "adjoint_bracket", "point_bracket", "BRACKET_MODES", "DIRECTIONS", "curvature_pair_ok",
           "lbfgs_direction", "H0_MODES", "direction_certified", "diagonal_scaling",
           "cubic_extrapolation", "secant_extrapolation", "cubic_limit", "cap_along", "screening_accuracy", "run_maid"]

#: consecutive continuations of a capped lower/CG solve at the current point
_MAX_CONTINUATIONS = 3
#: the same once the run has certified a point: a cap then means the accuracy asked for is
#: below what the solver delivers (the accuracy floor, :mod:`bil.runtime.outer.floor`)
_MAX_FLOOR_CONTINUATIONS = 1
#: consecutive trials of one round whose lower solves hit their cap: the round ends there
_MAX_CAPPED_TRIALS = 2
#: failed backtracking rounds (each followed by a tightening) in one iteration before the run
#: stops at its accuracy floor
_MAX_RETRIES = 8
#: a direction counts as explored by the L-BFGS steps when its singular value in the stacked
#: steps is at least this fraction of the largest (:func:`lbfgs_direction`)
_EXPLORED = 0.1
#: the initial inverse Hessians of :func:`lbfgs_direction` (``maid(h0=...)``)
H0_MODES = ("auto", "subspace", "scalar")
#: :func:`diagonal_scaling`: a coordinate is fitted when the steps moved it by at least this
#: fraction (in Σ s_i²) of the most-moved one, and its scale stays within this factor of γ
_INFORMED = 0.01
_DIAG_RANGE = 1e3
#: the cubic cap never shortens the move along the last step below this fraction of it, and
#: applies only where the cubic extrapolates less than this fraction of the quadratic model
_CUBIC_FLOOR = 0.1
_CUBIC_DISAGREE = 0.5
#: error directions (hypergradient differences at one θ) kept for :func:`lbfgs_direction`
_ERROR_DIRS = 8


# ------------------------------------------------------------ pure pieces
class RunningConstants(NamedTuple):
    """Running estimates used in ω: min of μ, max of the others."""

    mu: float
    L_f: float
    J_norm: float
    L_H: float
    L_J: float
    L_ftheta: float = 0.0


def merge_constants(running: RunningConstants | None, new) -> RunningConstants:
    """Fold a fresh estimate (an ``oracles.Constants``) into the running values.

    μ is the fresh (local) value: strong convexity belongs to the current θ, and the
    oracles convert ε to a lower tolerance with that same μ.  The others are running
    maxima.  Non-finite or negative fresh values are ignored where a running value exists.
    """
    fresh = RunningConstants(float(new.mu), float(new.L_f), float(new.J_norm), float(new.L_H),
                             float(new.L_J), float(getattr(new, "L_ftheta", 0.0) or 0.0))
    if running is None:
        return fresh

    def ok(v):
        return math.isfinite(v) and v >= 0

    mu = fresh.mu if ok(fresh.mu) and fresh.mu > 0 else running.mu
    rest = [max(r, f) if ok(f) else r for r, f in zip(running[1:], fresh[1:])]
    return RunningConstants(mu, *rest)


def adjoint_norm_bound(eps: float, delta: float, gx_norm: float, c: RunningConstants,
                       q_norm: float | None = None) -> float:
    """An upper bound Q on ‖q*‖ (docs/ALGORITHMS.md, MAID): min of (‖∇ₓf(x̃)‖ + L_f ε)/μ and,
    when L_H ε < μ and ‖q̃‖ is known, (‖q̃‖ + δ/μ + L_f ε/μ)/(1 − L_H ε/μ)."""
    mu = c.mu
    Q = (gx_norm + c.L_f * eps) / mu
    if q_norm is not None and math.isfinite(q_norm) and c.L_H * eps < mu:
        Q = min(Q, (q_norm + delta / mu + c.L_f * eps / mu) / (1.0 - c.L_H * eps / mu))
    return Q


def error_bound(eps: float, delta: float, gx_norm: float, c: RunningConstants, q_norm: float | None = None) -> float:
    """ω = L_fθ ε + (‖J‖/μ) δ + (‖J‖L_f/μ) ε + (‖J‖L_H/μ + L_J)·ε·Q (docs/ALGORITHMS.md, MAID).

    With Q = (‖∇ₓf(x̃)‖ + L_f ε)/μ this is c·ε + (‖J‖/μ)·δ + c₂·ε²; passing the
    computed adjoint's norm ``q_norm`` can only tighten it.
    """
    mu = c.mu
    if not (mu > 0) or not math.isfinite(mu):
        return math.inf
    Q = adjoint_norm_bound(eps, delta, gx_norm, c, q_norm)
    return (c.L_ftheta * eps + (c.J_norm / mu) * delta + (c.J_norm * c.L_f / mu) * eps
            + (c.J_norm * c.L_H / mu + c.L_J) * eps * Q)


def bounds_upper_lower(f: float, gx_norm: float, eps: float, L_f: float) -> tuple[float, float]:
    """(f̄⁺, f̄⁻) = f ± (‖∇ₓf‖ε + (L_f/2)ε²): a bracket of the exact upper value."""
    slack = gx_norm * eps + 0.5 * L_f * eps * eps
    return f + slack, f - slack


def adjoint_bracket(f: float, qr: float, q_norm: float, eps: float, delta: float, L_f: float,
                    L_H: float) -> tuple[float, float, float]:
    """(f̄⁺, f̄⁻, f_c): the adjoint-corrected value f_c = f(x̃) − ⟨q̃, ∇ₓg(x̃)⟩ and its
    bracket f_c ± (δε + ½(L_f + L_H‖q̃‖)ε²) (docs/ALGORITHMS.md, MAID, "Adjoint-corrected
    bracket")."""
    fc = f - qr
    slack = delta * eps + 0.5 * (L_f + L_H * q_norm) * eps * eps
    return fc + slack, fc - slack, fc


def point_bracket(f: float, gx_norm: float, eps: float, c: RunningConstants, adjoint=None
                  ) -> tuple[float, float, float]:
    """(f̄⁺, f̄⁻, central value) at one point.  ``adjoint`` = (⟨q̃, ∇ₓg⟩, ‖q̃‖, δ) when a
    certified adjoint is known there: both brackets hold, so their intersection is
    used, centred on the corrected value."""
    hi, lo = bounds_upper_lower(f, gx_norm, eps, c.L_f)
    if adjoint is None:
        return hi, lo, f
    qr, qn, delta = adjoint
    if not (math.isfinite(qr) and math.isfinite(qn)):
        return hi, lo, f
    ahi, alo, fc = adjoint_bracket(f, qr, qn, eps, delta, c.L_f, c.L_H)
    return min(hi, ahi), max(lo, alo), fc


def sufficient_decrease(f_plus_new: float, f_minus_old: float, lam: float, alpha: float, rate: float) -> bool:
    """MAID's acceptance test f̄⁺(θ − αd) − f̄⁻(θ) + λα⟨z, d⟩ ≤ 0.

    ``rate`` = ⟨z, d⟩ is the first-order decrease rate of the step direction d:
    ‖z‖² for the paper's d = z.
    """
    return f_plus_new - f_minus_old + lam * alpha * rate <= 0.0


def descent_test(omega: float, z_norm: float, eta: float) -> bool:
    """ω ≤ (1 − η)‖z‖: −z is a certified descent direction."""
    return omega <= (1.0 - eta) * z_norm


def update_accuracies(eps: float, delta: float, factor: float, eps_min: float = 0.0,
                      delta_min: float = 0.0) -> tuple[float, float]:
    """(ε, δ) ← (factor·ε, factor·δ), floored at (eps_min, delta_min).

    ``factor`` = ν < 1 tightens (failed descent test or backtracking), ν̄ > 1
    loosens (after an accepted step).
    """
    return max(eps * factor, eps_min), max(delta * factor, delta_min)


def tighten_until(eps: float, delta: float, nu: float, eps_min: float, delta_min: float,
                  passes=None, max_halvings: int = 200) -> tuple[float, float]:
    """Tighten (ε, δ) by the smallest power ν^m, m ≥ 1, for which ``passes(ε, δ)`` predicts
    success (or both reach their floors).  Without ``passes`` this is one factor ν.

    The prediction re-uses the last oracle values at the tighter accuracies; the
    real test is repeated after the recomputation, so it only saves calls that
    would certainly fail again.
    """
    for _ in range(max_halvings):
        eps, delta = update_accuracies(eps, delta, nu, eps_min, delta_min)
        if passes is None or (eps <= eps_min and delta <= delta_min) or passes(eps, delta):
            break
    return eps, delta


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


class SecantConstants(NamedTuple):
    """A-posteriori constants of the error model ‖z(ε, δ) − ∇F‖ ≈ k_eps·ε + k_delta·δ.

    NaN means "not observed yet".  Each is the smallest value consistent with
    every pair of hypergradients computed at the same θ (:func:`secant_update`).
    """

    k_eps: float = math.nan
    k_delta: float = math.nan


def secant_update(k: SecantConstants, d_eps: float, d_delta: float, dz_norm: float) -> SecantConstants:
    """Fold one pair z₁ = z(ε₁, δ₁), z₂ = z(ε₂, δ₂) at the same θ into the estimates.

    ``d_eps`` = ε₁ − ε₂ ≥ 0 and ``d_delta`` = δ₁ − δ₂ ≥ 0 are the accuracy changes
    that actually took effect (0 for a solve that did no iterations) and
    ``dz_norm`` = ‖z₁ − z₂‖.  Under the linear error model e(ε, δ) = z − ∇F ≈
    a·ε + b·δ (the form of the a-priori bound to first order) the pair gives
    ‖z₁ − z₂‖ ≈ a·d_eps + b·d_delta.  A pair that changed one accuracy sets a
    running max of that constant (ε only: k_eps ≥ ‖Δz‖/d_eps; δ only:
    k_delta ≥ ‖Δz‖/d_delta); a pair that changed both scales both known
    constants by the factor needed to explain ‖Δz‖ (a constant not known yet
    takes the pair's joint slope ‖Δz‖/(d_eps + d_delta)).
    """
    if not (math.isfinite(dz_norm) and dz_norm >= 0):
        return k
    d_eps = d_eps if d_eps > 0 else 0.0
    d_delta = d_delta if d_delta > 0 else 0.0
    ke, kd = k.k_eps, k.k_delta
    if d_eps > 0 and d_delta == 0:
        return k._replace(k_eps=max(ke, dz_norm / d_eps) if math.isfinite(ke) else dz_norm / d_eps)
    if d_delta > 0 and d_eps == 0:
        return k._replace(k_delta=max(kd, dz_norm / d_delta) if math.isfinite(kd) else dz_norm / d_delta)
    if d_eps == 0 and d_delta == 0:
        return k
    joint = dz_norm / (d_eps + d_delta)
    ke = ke if math.isfinite(ke) else joint
    kd = kd if math.isfinite(kd) else joint
    pred = ke * d_eps + kd * d_delta
    scale = dz_norm / pred if pred > 0 else 1.0
    if scale > 1.0:
        ke, kd = ke * scale, kd * scale
    return SecantConstants(ke, kd)


def secant_terms(eps: float, delta: float, k: SecantConstants, safety: float) -> tuple[float, float]:
    """(safety·k_eps·ε, safety·k_delta·δ): the two terms of the a-posteriori ω."""
    return safety * k.k_eps * eps, safety * k.k_delta * delta


def bound_terms(eps: float, delta: float, gx_norm: float, c: RunningConstants,
                q_norm: float | None = None) -> tuple[float, float]:
    """The a-priori ω (:func:`error_bound`) split into its ε-part and its δ-part (‖J‖/μ)·δ.

    The δ-part is exact; the small cross term of Q_q in δ stays in the ε-part.
    """
    omega = error_bound(eps, delta, gx_norm, c, q_norm)
    d_part = (c.J_norm / c.mu) * delta if c.mu > 0 else math.inf
    return max(omega - d_part, 0.0), d_part


def tighten_dominant(eps: float, delta: float, nu: float, eps_min: float, delta_min: float, terms,
                     passes, max_halvings: int = 200) -> tuple[float, float]:
    """Tighten only the accuracy whose term of ω dominates, by powers of ν, until ``passes``.

    ``terms(ε, δ)`` gives ω's (ε-part, δ-part).  Each round multiplies by ν the
    accuracy with the larger part (both when the parts are within a factor 2,
    the other one when the larger one is at its floor), so the cost goes where
    the error is: the published rule "ε, δ ← νε, νδ" applied to the term that
    matters.  At least one round is made.
    """
    for _ in range(max_halvings):
        te, td = terms(eps, delta)
        e_ok, d_ok = eps > eps_min, delta > delta_min
        if not (e_ok or d_ok):
            break
        do_e = e_ok and (te >= 0.5 * td or not d_ok)
        do_d = d_ok and (td >= 0.5 * te or not e_ok)
        if do_e:
            eps = max(eps * nu, eps_min)
        if do_d:
            delta = max(delta * nu, delta_min)
        if passes(eps, delta):
            break
    return eps, delta


def curvature_pair_ok(s: np.ndarray, y: np.ndarray) -> bool:
    """Keep an L-BFGS pair only with positive curvature ⟨s, y⟩ > 10⁻⁸‖s‖‖y‖ (keeps H ≻ 0).

    (Stricter cosines, 10⁻⁴ and 10⁻², changed nothing on the TV benchmark problems; skipping
    pairs whose ‖y‖ is below the hypergradients' estimated errors starved the memory.)"""
    sy = float(s @ y)
    return math.isfinite(sy) and sy > 1e-8 * float(np.linalg.norm(s) * np.linalg.norm(y))


def diagonal_scaling(pairs: list, gamma: float) -> np.ndarray:
    """Per-coordinate scaling D of an L-BFGS H₀: the least-squares fit of s ≈ D y over the
    stored pairs, D_i = Σ s_i y_i / Σ y_i², for each coordinate with positive curvature
    that the steps have moved (Σ s_i² at least :data:`_INFORMED` of the largest); γ for the
    others; within [γ/:data:`_DIAG_RANGE`, γ·:data:`_DIAG_RANGE`] (docs/ALGORITHMS.md, MAID,
    "Unexplored directions")."""
    S = np.stack([p[0] for p in pairs])
    Y = np.stack([p[1] for p in pairs])
    sy, yy, ss = (S * Y).sum(0), (Y * Y).sum(0), (S * S).sum(0)
    ok = (sy > 0) & (yy > 0) & (ss >= _INFORMED * ss.max())
    D = np.where(ok, sy / np.where(ok, yy, 1.0), gamma)
    return np.clip(D, gamma / _DIAG_RANGE, gamma * _DIAG_RANGE)


def lbfgs_direction(z: np.ndarray, pairs: list, unexplored: tuple[float, float] | None = None,
                    error_dirs: list | None = None, expanded: list | None = None) -> np.ndarray:
    """d = H z, H the L-BFGS inverse-Hessian approximation of ``pairs`` [(s, y), ...]
    (oldest first; two-loop recursion).  Without pairs, d = z.

    H₀ = γ·I, γ = ⟨s, y⟩/⟨y, y⟩ from the newest pair (Nocedal–Wright), when
    ``unexplored`` is None.  With ``unexplored`` = (length, ω), H₀ = P·D·P + γ⊥·(I − P):
    P projects on the span of the stored steps s (right singular vectors of the stacked
    steps whose singular values are at least :data:`_EXPLORED` times the largest), D is
    the per-coordinate fit :func:`diagonal_scaling` there, and γ⊥ = max(γ, length/‖z⊥‖)
    on the directions none of them has explored, z⊥ the part of z there; only when
    ‖z⊥‖ > ω⊥, i.e. that part of z is above its estimated error (docs/ALGORITHMS.md, MAID,
    "Unexplored directions").  ω⊥ = ω times the largest fraction of an ``error_dirs``
    vector (differences of hypergradients at one θ: the directions of z's error) that
    lies outside the explored span; ω when none is known.  Either H₀ is symmetric
    positive definite, so H is, and the newest pair's secant condition H y = s holds."""
    q = np.array(z, dtype=np.float64)
    if not pairs:
        return q
    coef = []
    for s, y in reversed(pairs):
        a = float(s @ q) / float(s @ y)
        coef.append(a)
        q -= a * y
    s, y = pairs[-1]
    gamma = float(s @ y) / float(y @ y)
    basis = None
    scale = gamma
    if unexplored is not None:
        length, omega = unexplored
        scale = diagonal_scaling(pairs, gamma)
        _, sig, vt = np.linalg.svd(np.stack([p[0] for p in pairs]), full_matrices=False)
        basis = vt[sig >= _EXPLORED * sig[0]].T           # orthonormal: the explored directions

        def outside(v):
            return float(np.linalg.norm(v - basis @ (basis.T @ v)))

        z_perp = outside(z)
        dirs = [v for v in (error_dirs or ()) if np.linalg.norm(v) > 0]
        if dirs:
            # z's error lies along the measured error directions: only their part outside the
            # explored span can hide the part of z there (TV: the error is ~100x larger in the
            # weight than in the smoothing)
            omega = omega * max(outside(v) / float(np.linalg.norm(v)) for v in dirs)
        gamma_perp = length / z_perp if z_perp > omega and z_perp > 0 else gamma
        if not gamma_perp > gamma:
            basis = None
    if expanded is not None:
        expanded[0] = basis is not None
    if basis is None:
        q = scale * q
    else:
        q_in = basis @ (basis.T @ q)
        q = basis @ (basis.T @ (scale * q_in)) + gamma_perp * (q - q_in)
    for (s, y), a in zip(pairs, reversed(coef)):
        q += (a - float(y @ q) / float(s @ y)) * s
    return q


def cubic_extrapolation(f0: float, g0: float, f1: float, g1: float) -> float:
    """How far beyond t = 1 the cubic p with p(0) = f0, p'(0) = g0, p(1) = f1, p'(1) = g1
    has its local minimum, in units of the interval: t* − 1.

    inf when p keeps decreasing beyond t = 1, 0 when p already rises there (g1 ≥ 0),
    NaN when a datum is not finite.  Along the last accepted step s (t = 0 its start,
    t = 1 the current point; values F, slopes ⟨z, s⟩) this is the cubic interpolation
    of line searches (Moré–Thuente) used to extrapolate (docs/ALGORITHMS.md, MAID, "Cubic cap
    on the first trial")."""
    if not all(math.isfinite(v) for v in (f0, g0, f1, g1)):
        return math.nan
    if g1 >= 0:
        return 0.0
    c = 3.0 * (f1 - f0) - 2.0 * g0 - g1
    e = g0 + g1 - 2.0 * (f1 - f0)
    # p'(t) = g0 + 2c·t + 3e·t²; the local minimum is the root where p'' = 2c + 6e·t > 0
    if abs(e) <= 1e-12 * (abs(c) + abs(g0) + abs(g1)):
        t = -g0 / (2.0 * c) if c > 0 else math.inf
    else:
        disc = c * c - 3.0 * e * g0
        if disc < 0:
            return math.inf
        t = (-c + math.sqrt(disc)) / (3.0 * e)
        if e < 0 and not t > 1:
            return math.inf
    # (p'(1) = g1 < 0, so a local minimum of p lies beyond 1 or p decreases for ever)
    return t - 1.0 if t > 1 else math.inf


def secant_extrapolation(g0: float, g1: float) -> float:
    """How far beyond t = 1 the quadratic model with slopes p'(0) = g0, p'(1) = g1 has its
    minimum, t* − 1: 0 when p already rises at t = 1, inf without positive curvature."""
    if g1 >= 0:
        return 0.0
    return -g1 / (g1 - g0) if g1 > g0 else math.inf


def cubic_limit(f0: float, g0: float, f1: float, g1: float) -> float:
    """The cap on the next step's move along the last step s, in units of ‖s‖ (inf: none).

    The cubic's extrapolation (:func:`cubic_extrapolation`, values and slopes) where it
    is below :data:`_CUBIC_DISAGREE` times the quadratic model's (:func:`secant_extrapolation`,
    slopes only: what a quasi-Newton step assumes along s), i.e. where the values show
    that F is far from quadratic along s; never below :data:`_CUBIC_FLOOR`.  On a
    quadratic the two agree and nothing is capped (the quasi-Newton step, which accounts
    for the coupling of s with the other directions, stands)."""
    ext = cubic_extrapolation(f0, g0, f1, g1)
    if not (math.isfinite(ext) and ext < _CUBIC_DISAGREE * secant_extrapolation(g0, g1)):
        return math.inf
    return max(ext, _CUBIC_FLOOR)


def cap_along(d: np.ndarray, alpha: float, s: np.ndarray, limit: float) -> np.ndarray:
    """The direction d' for which the step −α·d' moves at most ``limit`` along s (unit ŝ =
    s/‖s‖) and is otherwise −α·d: d' = d + ((⟨−αd, ŝ⟩ − limit)/α)·ŝ when it moves further.
    """
    sn = float(np.linalg.norm(s))
    if not (sn > 0 and alpha > 0):
        return d
    sh = s / sn
    along = -alpha * float(sh @ d)
    if not along > limit:
        return d
    return d + ((along - limit) / alpha) * sh


def direction_certified(omega: float, z: np.ndarray, d: np.ndarray, eta: float) -> bool:
    """Is −d a certified descent direction?  ⟨∇F, d⟩ ≥ ⟨z, d⟩ − ω‖d‖, so ω ≤ (1 − η)⟨z, d⟩/‖d‖
    suffices (for d = z this is the descent test ω ≤ (1 − η)‖z‖)."""
    zd, dn = float(z @ d), float(np.linalg.norm(d))
    return zd > 0 and dn > 0 and descent_test(omega, zd / dn, eta)


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


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])


def _unflat(v: np.ndarray, like):
    leaves, treedef = jax.tree.flatten(like)
    out, i = [], 0
    for a in leaves:
        a = np.asarray(a)
        out.append(np.asarray(v[i:i + a.size].reshape(a.shape), dtype=a.dtype))
        i += a.size
    return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------------ loop
def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_dist(a, b) -> float:
    return tree_norm(jax.tree.map(lambda p, q: np.asarray(p, np.float64) - np.asarray(q, np.float64), a, b))


def _nearest_start(u_try, u, x, tried):  # x: the warm start (any pytree: (x̃, q̃) in adjoint mode)
    """Warm start for a trial at ``u_try``: the lower iterate of the nearest point evaluated
    in this iteration (the current point ``u`` or an earlier trial), so that a trial
    retried after tightening continues from its own previous iterate."""
    best, best_d = x, _tree_dist(u_try, u)
    for ut, xt in tried:
        d = _tree_dist(u_try, ut)
        if d < best_d:
            best, best_d = xt, d
    return best


#: most powers of ν applied at once after an accuracy-limited round (the prediction
#: trusts the trial's central values, which a poor direction makes tiny)
_MAX_PREDICTED = 4
#: tightenings of one accuracy at the first point to find an informative pair
_MAX_PROBES = 4
OMEGA_MODES = ("secant", "bound")
BRACKET_MODES = ("value", "adjoint")
DIRECTIONS = ("lbfgs", "gradient")
#: refinement factor of a trial's accuracy between coarse-to-fine evaluations
_SCREEN_FACTOR = 0.25


class _Trial(NamedTuple):
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


def _qr_of(hg) -> float:
    qr = getattr(hg, "qr", None)
    return math.nan if qr is None else float(np.asarray(jax.device_get(qr)))


def run_maid(oracles: AbstractOracles, o: dict, *, callback=None, state=None) -> OuterResult:
    """MAID on ``oracles`` with options ``o`` (the full ``maid(...)`` dict)."""
    eta, lam, rho, nu = float(o["eta"]), float(o["lam"]), float(o["rho"]), float(o["nu"])
    nu_plus, rho_plus = float(o["nu_plus"]), float(o["rho_plus"])
    max_step = None if o.get("max_step") is None else float(o["max_step"])
    max_iter, max_bt = int(o["max_iter"]), int(o["max_backtracks"])
    tol = float(o["tol"])
    eps_opt, delta_opt = o["eps_min"], o["delta_min"]     # numbers or "auto" (floor.resolve_floors)
    every = max(1, int(o.get("constants_every", 5) or 1))
    step0 = float(o["step0"])
    mode = str(o.get("omega", "secant"))
    safety = float(o.get("safety", 2.0))
    bracket = str(o.get("bracket", "adjoint"))
    direction = str(o.get("direction", "lbfgs"))
    memory = int(o.get("memory", 5))
    screen = bool(o.get("screen", True))
    h0 = str(o.get("h0", "auto"))
    cubic = bool(o.get("cubic", True))
    refresh_dist = 1.0 if max_step is None else max_step
    if not (0 < rho < 1 and 0 < nu < 1):
        raise ValueError("maid: rho and nu must lie in (0, 1)")
    if mode not in OMEGA_MODES:
        raise ValueError(f"maid: omega must be one of {', '.join(map(repr, OMEGA_MODES))}, not {mode!r}")
    if bracket not in BRACKET_MODES:
        raise ValueError(f"maid: bracket must be one of {', '.join(map(repr, BRACKET_MODES))}, not {bracket!r}")
    if not (safety > 0):
        raise ValueError("maid: safety must be > 0")
    if direction not in DIRECTIONS:
        raise ValueError(f"maid: direction must be one of {', '.join(map(repr, DIRECTIONS))}, not {direction!r}")
    if h0 not in H0_MODES:
        raise ValueError(f"maid: h0 must be one of {', '.join(map(repr, H0_MODES))}, not {h0!r}")
    if direction == "lbfgs" and memory < 1:
        raise ValueError("maid: memory must be >= 1")

    tr = Tracker("maid", o.get("budget"), callback, state)
    u0 = host_copy(oracles.u0)
    # the μ that turns ε into lower tolerances: θ₀'s for a fresh run, the saved one on resume
    saved_mu = float(state.get("const/mu", math.nan)) if state is not None and bool(state.get("has_constants")) \
        else math.nan
    oracles.set_strong_convexity(saved_mu if math.isfinite(saved_mu) else None)
    # never below what the arithmetic resolves (float32 especially); refreshed with μ
    # exact oracles (a training procedure): there is no accuracy to adapt; ε = δ = 0 makes
    # ω and the brackets' slack 0, and MAID is backtracking on exact values (no probes,
    # no constants to estimate)
    exact = oracles.exact
    if exact:
        eps_min = delta_min = 0.0
        # the adjoint correction f − ⟨q, ∇ₓg⟩ estimates f at a minimiser; a training procedure's
        # value is f at its last step, exactly
        bracket = "value"
    else:
        x_start = oracles.init_lower(u0)
        eps_min, delta_min = resolve_floors(eps_opt, delta_opt, x_start, arithmetic_floor(oracles, u0, x_start))
    if state is None:
        u, x, q = start_iterates(oracles, u0)
        eps, delta, step = (0.0, 0.0, math.nan) if exact else (float(o["eps0"]), float(o["delta0"]), math.nan)
        consts: RunningConstants | None = RunningConstants(1.0, 0.0, 0.0, 0.0, 0.0) if exact else None
        ks = SecantConstants()
        f_cur = math.nan
        since_iters, since_dist = 0, 0.0     # since the last refresh of the constants
        since_probe = 0                      # accepted iterations since the last secant probes
        pairs: list = []                     # L-BFGS (s, y), oldest first
        last = None                          # (θ, z) flat at the last accepted point: the next pair
        last_f = math.nan                    # the upper value's best estimate there (cubic cap)
        unexplored_len = step0
        error_dirs: list = []                # z(ε₁, δ₁) − z(ε₂, δ₂) at one θ: where z's error lies
    else:
        u, x, q = unpack_iterates(state, oracles, u0)
        eps, delta, step = float(state["eps"]), float(state["delta"]), float(state["step"])
        f_cur = float(state["upper"])
        consts = None
        if bool(state["has_constants"]):
            consts = RunningConstants(*(float(state[f"const/{k}"]) for k in RunningConstants._fields))
        ks = SecantConstants(*(float(state.get(f"secant/{k}", math.nan)) for k in SecantConstants._fields))
        since_iters, since_dist = int(state["const_since_iters"]), float(state["const_since_dist"])
        since_probe = int(state.get("secant_since_probe", 0))
        if not exact and "eps_min" in state:
            # the floors as last refreshed (they follow μ and ‖x‖ as θ moves); θ₀'s would let a
            # float32 run tighten past what its arithmetic resolves (123585 lower iterations
            # into the cap, where the uninterrupted run stopped at its floor)
            eps_min, delta_min = float(state["eps_min"]), float(state["delta_min"])
        S, Y = np.asarray(state.get("lbfgs/s", np.zeros((0, 0)))), np.asarray(state.get("lbfgs/y", np.zeros((0, 0))))
        pairs = [(np.array(a, np.float64), np.array(b, np.float64)) for a, b in zip(S, Y)][-memory:]
        last = None
        if "lbfgs/last_u" in state:
            last = (np.asarray(state["lbfgs/last_u"], np.float64), np.asarray(state["lbfgs/last_z"], np.float64))
        last_f = float(state.get("lbfgs/last_f", math.nan))
        unexplored_len = float(state.get("lbfgs/unexplored_len", step0))
        error_dirs = [np.array(v, np.float64) for v in np.asarray(state.get("secant/error_dirs", np.zeros((0, 0))))]
    probes = {k: (0 if state is None else int(state.get(f"probes/{k}", 0))) for k in ("eps", "delta")}
    # (ε, δ) of the last hypergradient certified in this run (a resumed run had one)
    last_ok = (eps, delta) if (state is not None and tr.history) else None

    def make_state() -> dict:
        st = tr.common_state()
        pack_iterates(st, u, x, q)
        st.update(eps=float(eps), delta=float(delta), step=float(step), upper=float(f_cur),
                  has_constants=consts is not None, const_since_iters=int(since_iters),
                  const_since_dist=float(since_dist), eps_min=float(eps_min), delta_min=float(delta_min))
        for k in RunningConstants._fields:
            st[f"const/{k}"] = float(getattr(consts, k)) if consts is not None else math.nan
        for k in SecantConstants._fields:
            st[f"secant/{k}"] = float(getattr(ks, k))
        for k, n in probes.items():
            st[f"probes/{k}"] = int(n)
        st["secant_since_probe"] = int(since_probe)
        if pairs:
            st["lbfgs/s"] = np.stack([a for a, _ in pairs])
            st["lbfgs/y"] = np.stack([b for _, b in pairs])
        if last is not None:
            st["lbfgs/last_u"], st["lbfgs/last_z"] = last
        st["lbfgs/last_f"] = float(last_f)
        st["lbfgs/unexplored_len"] = float(unexplored_len)
        if error_dirs:
            st["secant/error_dirs"] = np.stack(error_dirs)
        return st

    def omega_terms(e: float, d: float, gx: float, qn: float) -> tuple[float, float]:
        """ω's (ε-part, δ-part): a-posteriori where estimated, a-priori otherwise."""
        be, bd = bound_terms(e, d, gx, consts, qn)
        if mode == "bound":
            return be, bd
        se, sd = secant_terms(e, d, ks, safety)
        return (se if math.isfinite(se) else be), (sd if math.isfinite(sd) else bd)

    converged = False
    reason = None
    while reason is None:
        reason = tr.limit_reason(max_iter)
        if reason is not None:
            break
        refresh = not exact and (consts is None or since_iters >= every or since_dist >= refresh_dist)
        retries = backtracks = 0
        zn = omega = math.nan
        eps_used, delta_used = eps, delta
        accepted = None    # the accepted _Trial
        stop = None
        prev = None        # (ε, δ, z) of the last hypergradient at this point: secant pairs
        # every `constants_every` accepted iterations the secant constants are re-measured
        # with one fresh pair each (the probes' extra tightening is undone afterwards)
        due = mode == "secant" and since_probe >= every
        if due:
            # re-measured from scratch: the max over the pairs since the last re-measurement,
            # so that a constant measured far away (or at a loose accuracy where the linear
            # model fails) does not stay forever
            since_probe = 0
            ks = SecantConstants()
            probes = {"eps": 0, "delta": 0}
            error_dirs = []
        undo = {"eps": 0, "delta": 0}
        tried = []         # (u, x̃) of this iteration's finite trials: warm starts for retries
        segment = None     # (s, t* − 1): the last accepted step and the cubic's minimum beyond it
        pair_li = pair_ci = 0
        while stop is None and accepted is None:
            # ---- 1. certified hypergradient at the current point
            conts = 0
            while True:
                if tr.exhausted():
                    stop = "budget exhausted"
                    break
                hg = oracles.hypergrad(u, x, q, eps, delta, cap=tr.remaining())
                f, li, ci, ls, cs, gx, qn = (np.asarray(v) for v in jax.device_get(
                    (hg.f, hg.lower_iters, hg.cg_iters, hg.lower_status, hg.cg_status, hg.gx_norm, hg.q_norm)))
                f, gx, qn, ls, cs = float(f), float(gx), float(qn), int(ls), int(cs)
                tr.spend(int(li), int(ci), ls, cs)
                if tr.cut:
                    # cut short by the budget: keep the partial iterates as the warm start of a resume
                    x, q = hg.x, hg.q
                    stop = "budget exhausted"
                    break
                pair_li += int(li)
                pair_ci += int(ci)
                if ls == 2:
                    stop = "lower solve produced non-finite values"
                    break
                if cs in (2, 3) and ls == 0:
                    # (an adjoint at a lower iterate that stopped at its cap says nothing about the
                    # Hessian at the solution: an unbounded-below objective looked "not positive
                    # definite"; the capped solve is continued, and reported, below)
                    stop = ("adjoint solve produced non-finite values" if cs == 2 else
                            "adjoint solve failed: lower Hessian not positive definite")
                    break
                x, q = hg.x, hg.q
                if ls == 1 or cs == 1:
                    conts += 1
                    if last_ok is not None and conts > _MAX_FLOOR_CONTINUATIONS:
                        # a point is certified already: the accuracy asked for is below what the
                        # solver delivers.  The run ends at its best certified point, not in an error
                        what = (f"the lower solve did not reach ε = {eps:.2g}" if ls == 1 else
                                f"CG did not reach δ = {delta:.2g}")
                        stop = floor_reason(last_ok[0], f"{what} within its iteration cap")
                        break
                    if conts > _MAX_CONTINUATIONS:
                        stop = ("lower solve hit its iteration cap" if ls == 1 else "CG hit its iteration cap")
                        break
                    continue
                conts = 0
                z = to_host(hg.z)
                if not (math.isfinite(f) and math.isfinite(gx) and is_finite_tree(z)):
                    stop = "non-finite hypergradient"
                    break
                last_ok = (eps, delta)
                qr_cur = _qr_of(hg) if bracket == "adjoint" else math.nan
                f_raw = f
                # the best estimate of F here: the adjoint-corrected value (second order in ε, δ)
                f_cur = f - qr_cur if (math.isfinite(qr_cur) and math.isfinite(qn)) else f
                if refresh:
                    consts = merge_constants(consts, oracles.constants(u, x))
                    refresh = False
                    # μ may have changed: so has the arithmetic's floor on ε (and so may ‖H‖·‖x‖, ‖x‖)
                    eps_min, delta_min = resolve_floors(eps_opt, delta_opt, x, arithmetic_floor(oracles, u, x), gx)
                    since_iters, since_dist = 0, 0.0
                    if not (consts.mu > 0 and math.isfinite(consts.mu)):
                        stop = f"invalid strong-convexity estimate mu={consts.mu!r}"
                        break
                if mode == "secant" and prev is not None:
                    # a pair at the same θ: an accuracy that did no iterations did not take effect
                    # (z sees a change of x̃ through the re-solved adjoint: without CG iterations the
                    # ε-change is invisible, and would wrongly read as "ε does not matter")
                    ks = secant_update(ks, (prev[0] - eps) if (pair_li > 0 and pair_ci > 0) else 0.0,
                                       (prev[1] - delta) if pair_ci > 0 else 0.0, _tree_dist(z, prev[2]))
                    dz = _flat(z) - _flat(prev[2])
                    if pair_ci > 0 and np.linalg.norm(dz) > 0:
                        error_dirs = (error_dirs + [dz])[-_ERROR_DIRS:]
                prev = (eps, delta, z)
                pair_li = pair_ci = 0
                zn = tree_norm(z)
                eps_used, delta_used = eps, delta
                if mode == "secant":
                    # probe: no informative pair yet, tighten that accuracy and recompute (δ
                    # first: a CG-only pair; then ε, together with δ after an ε-probe that
                    # showed nothing)
                    probe = None
                    if not math.isfinite(ks.k_delta) and probes["delta"] < _MAX_PROBES and delta > delta_min:
                        probe = "delta"
                    elif not math.isfinite(ks.k_eps) and probes["eps"] < _MAX_PROBES and eps > eps_min:
                        probe = "eps"
                    if probe is not None:
                        joint = probe == "eps" and undo["eps"] >= 1 and delta > delta_min
                        probes[probe] += 1
                        if probe == "eps":
                            eps = max(eps * nu, eps_min)
                            undo["eps"] += 1
                        if probe == "delta" or joint:
                            delta = max(delta * nu, delta_min)
                            undo["delta"] += 1
                        continue
                omega = sum(omega_terms(eps, delta, gx, qn))
                certified = descent_test(omega, zn, eta)
                if zn + omega <= tol or (zn <= tol and certified):
                    converged = True
                    stop = "gradient norm below tol"
                    break
                if certified:
                    break
                if eps <= eps_min and delta <= delta_min:
                    stop = floor_reason(eps, "ε and δ at their floors eps_min, delta_min, and ω still too large "
                                             "for a certified descent direction")
                    break
                if zn > 0:
                    eps, delta = tighten_dominant(
                        eps, delta, nu, eps_min, delta_min, lambda e, d: omega_terms(e, d, gx, qn),
                        lambda e, d: descent_test(sum(omega_terms(e, d, gx, qn)), zn, eta))
                else:
                    # z = 0 exactly (e.g. a start x₀ = 0 already within a loose tolerance, so
                    # nothing moved): no prediction can pass, which used to send ε straight to
                    # its floor (1e-14) and keep every later solve needlessly tight
                    eps, delta = update_accuracies(eps, delta, nu, eps_min, delta_min)
            if stop is not None:
                break

            # ---- 2. direction: L-BFGS where certified, else the hypergradient
            zf = _flat(z)
            if direction == "lbfgs" and last is not None:
                # the pair of the last accepted step, with this point's certified z
                sv, yv = _flat(u) - last[0], zf - last[1]
                if cubic:
                    segment = (sv, cubic_limit(last_f, float(last[1] @ sv), f_cur, float(zf @ sv)))
                if curvature_pair_ok(sv, yv):
                    pairs = (pairs + [(sv, yv)])[-memory:]
                last = None
            df, quasi_newton = zf, False
            expanded = [False]   # set by lbfgs_direction: did it expand unexplored directions?
            if direction == "lbfgs" and pairs:
                # ("auto": the subspace scaling only where the stored steps can span every
                # direction; with more hypers than pairs it cost more on the digits example)
                sub = h0 == "subspace" or (h0 == "auto" and zf.size <= memory)
                dq = lbfgs_direction(zf, pairs, (unexplored_len, omega) if sub else None, error_dirs, expanded)
                if direction_certified(omega, zf, dq, eta):
                    df, quasi_newton = dq, True
            d = _unflat(df, z) if quasi_newton else z
            dn = float(np.linalg.norm(df))
            rate = float(zf @ df)
            # ---- 3. backtracking on the inexact upper values
            adj_cur = (qr_cur, qn, delta) if bracket == "adjoint" else None
            f_plus_cur, f_minus, f_cur = point_bracket(f_raw, gx, eps, consts, adj_cur)

            def trial(u_try, alpha) -> _Trial:
                """Evaluate θ − αd: lower solve (coarse to fine), bracket test, and where only the
                value bracket is too wide, the adjoint-corrected one."""
                xs, qs = _nearest_start(u_try, u, (x, q), tried)
                # coarse to fine: first at the accuracy where the bracket decides a trial that is
                # far worse (or as good) as predicted, refined from its own iterate down to ε
                e_t = screening_accuracy(eps, alpha, rate, gx) if screen else eps
                while True:
                    v = oracles.value(u_try, xs, e_t, cap=tr.remaining())
                    vf, vli, vls, vgx = (np.asarray(a) for a in jax.device_get(
                        (v.f, v.lower_iters, v.lower_status, v.gx_norm)))
                    vf, vgx, vls = float(vf), float(vgx), int(vls)
                    tr.spend(int(vli), 0, vls)
                    if e_t <= eps or vls != 0 or not (math.isfinite(vf) and math.isfinite(vgx)):
                        break
                    hi_t, lo_t, _ = point_bracket(vf, vgx, e_t, consts)
                    if (sufficient_decrease(hi_t, f_minus, lam, alpha, rate)           # accepted already
                            # certainly no decrease (its lower end fails even against the current
                            # point's upper end: tightening ε at θ could not save it either)
                            or not sufficient_decrease(lo_t, f_plus_cur, lam, alpha, rate)):
                        break
                    e_t = max(eps, e_t * _SCREEN_FACTOR)
                    xs = v.x
                t = _Trial(u=u_try, alpha=alpha, f=vf, gx=vgx, x=v.x, q=qs, capped=vls == 1)
                if vls in (0, 1) and math.isfinite(vf):
                    tried.append((u_try, (t.x, t.q)))
                if not (vls == 0 and math.isfinite(vf) and math.isfinite(vgx)):
                    return t
                f_plus_new, f_lo_new, vc = point_bracket(vf, vgx, e_t, consts)
                ok = sufficient_decrease(f_plus_new, f_minus, lam, alpha, rate)
                # the central values pass, only the accuracy slack fails:
                # shorter steps cannot help, tighten instead
                limited = not ok and e_t <= eps and sufficient_decrease(vf, f_raw, lam, alpha, rate)
                t = t._replace(center=vc, ok=ok, accuracy_bound=limited)
                if (not ok and bracket == "adjoint" and math.isfinite(qr_cur) and e_t <= eps
                        and sufficient_decrease(f_lo_new, f_minus, lam, alpha, rate)):
                    # the value bracket is too wide, but the trial's true value may pass (its
                    # lower end does): certify with the corrected value, which needs the
                    # adjoint at the trial (CG only: x̃ already meets ε)
                    h2 = oracles.hypergrad(u_try, t.x, qs, eps, delta, cap=tr.remaining())
                    hf, hli, hci, hls, hcs, hgx, hqn = (np.asarray(a) for a in jax.device_get(
                        (h2.f, h2.lower_iters, h2.cg_iters, h2.lower_status, h2.cg_status, h2.gx_norm,
                         h2.q_norm)))
                    tr.spend(int(hli), int(hci), hls, hcs)
                    if int(hls) == 0 and int(hcs) == 0 and math.isfinite(float(hf)):
                        adj = (_qr_of(h2), float(hqn), delta)
                        tried[-1] = (u_try, (h2.x, h2.q))
                        f_plus_new, _, vc = point_bracket(float(hf), float(hgx), eps, consts, adj)
                        ok = sufficient_decrease(f_plus_new, f_minus, lam, alpha, rate)
                        t = t._replace(f=float(hf), gx=float(hgx), x=h2.x, q=h2.q, adj=adj, center=vc, ok=ok,
                                       accuracy_bound=not ok and sufficient_decrease(vc, f_cur, lam, alpha, rate))
                return t

            # a quasi-Newton step is tried at its natural length first
            alpha = first_trial_step(1.0 if quasi_newton else step, dn, max_step, step0)
            if segment is not None and retries == 0 and math.isfinite(segment[1]):
                # the cubic cap: move along the last step at most to where the cubic through its
                # two ends' values and slopes has its minimum (docs/ALGORITHMS.md, MAID)
                sv, ext = segment
                limit = ext * float(np.linalg.norm(sv))
                dc = cap_along(df, alpha, sv, limit)
                if dc is not df:
                    if direction_certified(omega, zf, dc, eta):
                        df, d = dc, _unflat(dc, z)
                        dn, rate = float(np.linalg.norm(dc)), float(zf @ dc)
                        if quasi_newton:
                            alpha = first_trial_step(1.0, dn, max_step, step0)
                    else:
                        # (the capped direction is not certified: shorten the whole step instead)
                        alpha *= limit / (-alpha * float(sv @ df) / float(np.linalg.norm(sv)))
            # (the first trial's α, against which the accepted α measures backtracking)
            expanded_alpha0 = alpha if (quasi_newton and expanded[0]) else None
            t = None
            caps = 0           # consecutive trials whose lower solves hit their cap
            for i in range(max_bt + 1 + retries):
                if tr.exhausted():
                    stop = "budget exhausted"
                    break
                u_try = tree_axpy(u, alpha, d)
                if _same(u_try, u):
                    if i == 0:
                        stop = "step too small"
                    break
                t = trial(u_try, alpha)
                if t.ok:
                    accepted = t
                    break
                backtracks += 1
                caps = caps + 1 if t.capped else 0
                if t.accuracy_bound or caps >= _MAX_CAPPED_TRIALS:
                    break
                alpha *= rho
            if stop is not None or accepted is not None:
                break
            # ---- failed backtracking: tighten and retry from the same point
            limited = t is not None and t.accuracy_bound
            # the round ended on trials the lower solver could not solve to ε: tightening further
            # cannot help (a trial failing at a point is a failed trial; the run keeps its point)
            capped = t is not None and t.capped
            if exact:
                # exact values: no accuracy to tighten.  A failed quasi-Newton direction (its
                # curvature pairs may be stale) is dropped for a retry along −z; a failed −z round
                # ends the run (a truncated unroll's hypergradient need not be a descent direction)
                if quasi_newton:
                    pairs = []
                    retries += 1
                    continue
                stop = "no decrease along the search direction"
                break
            if eps <= eps_min and (not limited or delta <= delta_min):
                stop = floor_reason(eps, "ε at its floor eps_min and no certified decrease")
                break
            if capped:
                stop = floor_reason(eps, "the lower solves at the trial steps hit their iteration cap")
                break
            if retries >= _MAX_RETRIES:
                stop = floor_reason(eps, f"no certified decrease after {retries + 1} rounds of backtracking at "
                                         "tightened accuracies")
                break
            if limited:
                # the bracket's width is driven by ε (the corrected one's δε term too, and
                # halving ε halves it as well): tighten ε as far as the last trial's values
                # say is needed
                fv, gv, fc, gc, a, at, rt = t.f, t.gx, f_raw, gx, t.alpha, t.adj, rate
                ac = adj_cur if at is not None else None
                eps, _ = tighten_until(
                    eps, delta, nu, max(eps_min, eps * nu ** _MAX_PREDICTED), delta,
                    lambda e, d: sufficient_decrease(point_bracket(fv, gv, e, consts, at)[0],
                                                     point_bracket(fc, gc, e, consts, ac)[1], lam, a, rt))
                # a poor direction also looks accuracy-limited (its central decrease is real but
                # small): δ, which z depends on and the value bracket does not, is tightened too
                delta = max(delta * nu, delta_min)
            else:
                eps, delta = update_accuracies(eps, delta, nu, eps_min, delta_min)
            retries += 1

        if accepted is not None:
            if direction == "lbfgs":
                last, last_f = (_flat(u), zf), f_cur
            u, x, f_cur = accepted.u, accepted.x, accepted.center
            if accepted.adj is not None:
                q = accepted.q
            if not quasi_newton:
                step = rho_plus * accepted.alpha
            if expanded_alpha0 is not None:
                # the unexplored directions' step length follows backtracking, as a −z step's α does
                unexplored_len = min(step0, rho_plus * unexplored_len * accepted.alpha / expanded_alpha0)
            since_iters += 1
            since_dist += accepted.alpha * dn
            since_probe += 1
            rec = tr.emit(upper=f_cur, grad_norm=zn, omega=omega, eps=eps_used, delta=delta_used,
                          step=accepted.alpha, backtracks=backtracks, hypers=oracles.to_user(u))
            # loosen; a probe's tightening was for measuring only and does not carry over
            eps, delta = update_accuracies(eps / nu ** undo["eps"], delta / nu ** undo["delta"], nu_plus)
            if tr.notify(rec, make_state):
                reason = "stopped by callback"
            continue

        reason = stop
        tr.stop = reason
        if tr.spent_this_iteration:
            rec = tr.emit(upper=f_cur, grad_norm=zn, omega=omega, eps=eps_used, delta=delta_used, step=0.0,
                          backtracks=backtracks, hypers=oracles.to_user(u))
            tr.notify(rec, make_state)

    return OuterResult(u=u, hypers=oracles.to_user(u), x=x, q=q, upper=f_cur, history=tr.history,
                       converged=converged, reason=reason, state=make_state())
