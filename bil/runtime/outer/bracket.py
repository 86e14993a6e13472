"""MAID's value brackets: certified bounds [f̄⁻, f̄⁺] on the exact upper value F at a point,
from f(x̃) at lower accuracy ε (``bracket="value"``) or the adjoint-corrected value
(``bracket="adjoint"``, the default), and the sufficient-decrease test on them
(docs/ALGORITHMS.md, MAID, "Inexact backtracking", "Adjoint-corrected bracket").
"""

from __future__ import annotations

import math

from bil.runtime.outer.error_model import RunningConstants

__all__ = ["BRACKET_MODES", "bounds_upper_lower", "adjoint_bracket", "point_bracket", "sufficient_decrease"]

BRACKET_MODES = ("value", "adjoint")


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
