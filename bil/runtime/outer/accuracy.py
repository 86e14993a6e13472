"""MAID's accuracy control: tightening (ε, δ) when a test fails, loosening after a step.

The floors below which nothing is tightened are :mod:`bil.runtime.outer.floor`'s.  A failed
round of backtracking tightens as far as the last trial's values predict is needed
(:func:`after_failed_round`); docs/ALGORITHMS.md, MAID, "Tightening only the accuracy that
matters" and "Iteration".
"""

from __future__ import annotations

from bil.runtime.outer.bracket import point_bracket, sufficient_decrease
from bil.runtime.outer.floor import floor_reason
from bil.runtime.outer.stops import Stop

__all__ = ["update_accuracies", "tighten_until", "tighten_dominant", "after_failed_round", "MAX_RETRIES"]

#: failed backtracking rounds (each followed by a tightening) in one iteration before the run
#: stops at its accuracy floor
MAX_RETRIES = 8
#: most powers of ν applied at once after an accuracy-limited round (the prediction
#: trusts the trial's central values, which a poor direction makes tiny)
_MAX_PREDICTED = 4


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


def after_failed_round(loop, s, it, dr, t) -> None:
    """A round of backtracking certified no decrease (``t`` its last trial, or None): tighten
    (ε, δ) and count a retry from the same point, or set ``it.stop`` (a floor, or on exact
    values no decrease along −z)."""
    o = loop.opts
    limited = t is not None and t.accuracy_bound
    # the round ended on trials the lower solver could not solve to ε: tightening further
    # cannot help (a trial failing at a point is a failed trial; the run keeps its point)
    capped = t is not None and t.capped
    if loop.exact:
        # exact values: no accuracy to tighten.  A failed quasi-Newton direction (its
        # curvature pairs may be stale) is dropped for a retry along −z; a failed −z round
        # ends the run (a truncated unroll's hypergradient need not be a descent direction)
        if dr.quasi_newton:
            s.pairs = []
            it.retries += 1
        else:
            it.stop = Stop.NO_DECREASE
        return
    if s.eps <= s.eps_min and (not limited or s.delta <= s.delta_min):
        it.stop = floor_reason(s.eps, "ε at its floor eps_min and no certified decrease")
    elif capped:
        it.stop = floor_reason(s.eps, "the lower solves at the trial steps hit their iteration cap")
    elif it.retries >= MAX_RETRIES:
        it.stop = floor_reason(s.eps, f"no certified decrease after {it.retries + 1} rounds of backtracking at "
                                      "tightened accuracies")
    if it.stop is not None:
        return
    if limited:
        # the bracket's width is driven by ε (the corrected one's δε term too, and
        # halving ε halves it as well): tighten ε as far as the last trial's values
        # say is needed
        fv, gv, fc, gc, a, at, rt = t.f, t.gx, it.f_raw, it.gx, t.alpha, t.adj, dr.rate
        ac = it.adj_cur if at is not None else None
        c, lam = s.consts, o.lam
        s.eps, _ = tighten_until(
            s.eps, s.delta, o.nu, max(s.eps_min, s.eps * o.nu ** _MAX_PREDICTED), s.delta,
            lambda e, d: sufficient_decrease(point_bracket(fv, gv, e, c, at)[0],
                                             point_bracket(fc, gc, e, c, ac)[1], lam, a, rt))
        # a poor direction also looks accuracy-limited (its central decrease is real but
        # small): δ, which z depends on and the value bracket does not, is tightened too
        s.delta = max(s.delta * o.nu, s.delta_min)
    else:
        s.eps, s.delta = update_accuracies(s.eps, s.delta, o.nu, s.eps_min, s.delta_min)
    it.retries += 1
