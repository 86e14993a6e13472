"""MAID's error model: the bound ω on ‖z − ∇F‖ of a hypergradient computed at accuracies (ε, δ).

A-priori (``omega="bound"``): from running estimates of the problem's constants
(:class:`RunningConstants`).  A-posteriori (``omega="secant"``, the default): from the
slopes of ‖Δz‖ over pairs of hypergradients at one θ (:class:`SecantConstants`).
Derivations: docs/ALGORITHMS.md, MAID, "Certified error bound".
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["OMEGA_MODES", "RunningConstants", "merge_constants", "adjoint_norm_bound", "error_bound",
           "descent_test", "SecantConstants", "secant_update", "secant_terms", "bound_terms"]

OMEGA_MODES = ("secant", "bound")


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


def descent_test(omega: float, z_norm: float, eta: float) -> bool:
    """ω ≤ (1 − η)‖z‖: −z is a certified descent direction."""
    return omega <= (1.0 - eta) * z_norm


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
