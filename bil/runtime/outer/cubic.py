"""MAID's cubic cap: how far the first trial may move along the last accepted step, from the
cubic through that step's end values and slopes (docs/ALGORITHMS.md, MAID, "Cubic cap on the
first trial").
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cubic_extrapolation", "secant_extrapolation", "cubic_limit", "cap_along"]


#: the cubic cap never shortens the move along the last step below this fraction of it, and
#: applies only where the cubic extrapolates less than this fraction of the quadratic model
_CUBIC_FLOOR = 0.1
_CUBIC_DISAGREE = 0.5


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
