"""Where an adaptive outer loop's achievable accuracy ends, and how a run says so.

MAID tightens ε (lower accuracy) and δ (adjoint residual) until its tests pass;
HOAG's schedule tightens them regardless.  Below some accuracy the lower solver
or CG cannot deliver what is asked (its iteration cap, the precision's roundoff,
a line search that stagnates): a run that has certified a point by then has
reached its *accuracy floor*, not failed.  It stops there with exit 0, keeping
its best certified point, and says at which accuracy (:func:`floor_reason`).
A run that never certified a point (the very first solve fails), NaN/Inf, and a
Hessian that is not positive definite stay failures.

``eps_min="auto"`` / ``delta_min="auto"`` (the defaults) put the static floors
at what the precision and the problem's scale resolve (:func:`auto_floors`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bil.runtime.outer.stops import Stop

__all__ = ["AUTO", "ROUNDOFF_UNITS", "FLOOR_PREFIX", "floor_reason", "is_floor_stop", "machine_eps",
           "auto_floors", "resolve_floors", "hypers_text"]

AUTO = "auto"
#: ``"auto"`` floors in float64: this many roundoff units of the lower iterate's norm (ε) and of
#: ‖∇ₓf‖ (δ).  (float64's arithmetic floor leaves out ‖H‖, whose power iteration would cost a
#: compilation in every run; the factor stands in for the conditioning.  float32's includes
#: ‖H‖·‖x‖/μ, and one unit is used there.)
ROUNDOFF_UNITS = 100.0
FLOOR_PREFIX = Stop.FLOOR.value


def floor_reason(eps: float, why: str) -> str:
    """The stop reason of a run that reached its accuracy floor at ε = ``eps``."""
    return (f"{FLOOR_PREFIX} at ε = {eps:.2g} ({why}); F cannot be decreased further at this accuracy")


def is_floor_stop(reason: str | None) -> bool:
    return Stop.of(reason) is Stop.FLOOR


def machine_eps(tree) -> float:
    """The roundoff unit of the precision of ``tree``'s floating leaves (float64 without any)."""
    eps = [float(np.finfo(np.asarray(a).dtype).eps) for a in jax.tree.leaves(tree)
           if np.issubdtype(np.asarray(a).dtype, np.floating)]
    return max(eps) if eps else float(np.finfo(np.float64).eps)


def _norm(tree) -> float:
    s = 0.0
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.asarray(leaf, np.float64)
        s += float(np.sum(a * a))
    return math.sqrt(s)


def auto_floors(x, arithmetic: tuple[float, float], gx_norm: float = math.nan) -> tuple[float, float]:
    """(ε, δ) floors for ``eps_min``/``delta_min="auto"``.

    ε: :data:`ROUNDOFF_UNITS` roundoff units of ‖x̃‖ in float64, one in lower precisions (a
    lower iterate cannot be certified much closer to x* than its own rounding, times the
    conditioning that a solver's stopping test sees), and never below ``arithmetic[0]`` (roundoff of ‖∇ₓg‖/μ and
    ‖H‖‖x‖/μ, :meth:`~bil.runtime.oracles.AbstractOracles.accuracy_floor`).  δ: the same
    units of ‖∇ₓf(x̃)‖ (the right-hand side of the adjoint system) where known, never
    below ``arithmetic[1]``."""
    eps = machine_eps(x)
    u = eps * (ROUNDOFF_UNITS if eps <= float(np.finfo(np.float64).eps) else 1.0)
    e = max(arithmetic[0], u * _norm(x))
    d = arithmetic[1]
    if math.isfinite(gx_norm):
        d = max(d, u * gx_norm)
    return e, d


def resolve_floors(eps_opt, delta_opt, x, arithmetic: tuple[float, float],
                   gx_norm: float = math.nan) -> tuple[float, float]:
    """The (ε, δ) floors in force: an explicit number is kept (but never below what the
    arithmetic resolves), ``"auto"`` follows :func:`auto_floors`."""
    ae, ad = auto_floors(x, arithmetic, gx_norm)
    e = ae if eps_opt == AUTO else max(float(eps_opt), arithmetic[0])
    d = ad if delta_opt == AUTO else max(float(delta_opt), arithmetic[1])
    return e, d


def hypers_text(hypers: dict, limit: int = 6) -> str:
    """``name = value, ...`` of user-coordinate hypers for a message (arrays abbreviated)."""
    parts = []
    for name, val in hypers.items():
        if isinstance(val, dict):
            parts.append(f"{name}: ({hypers_text(val, limit)})")
            continue
        a = np.asarray(val, np.float64)
        if a.ndim == 0:
            parts.append(f"{name} = {float(a):.4g}")
        else:
            flat = a.ravel()
            shown = ", ".join(f"{v:.4g}" for v in flat[:limit])
            parts.append(f"{name} = [{shown}{', ...' if flat.size > limit else ''}]")
    return ", ".join(parts)
