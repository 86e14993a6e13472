"""An empty support at the learned hypers: every entry a non-smooth term acts on is held at 0.

On the support of the non-smooth terms the implicit derivative of x(θ) is taken over the
free entries only (docs/ALGORITHMS.md, "Non-smooth lower problems"); where no entry is
free, x(θ) is constant (zero) near θ, the hypergradient through x vanishes identically, and
a run started there stops at once with "gradient norm below tol" although a smaller penalty
may be far better.  :func:`empty_support_warnings` says so after a run.
"""

from __future__ import annotations

import jax
import numpy as np

from bil.core.errors import Warning_


def empty_support_warnings(program, hypers: dict, x: dict) -> list[Warning_]:
    """A warning at the lower objective when every entry that a non-smooth term acts on is 0
    at the learned ``hypers`` (user coordinates) and lower solution ``x``; else none.  Best
    effort: it never costs the run its result."""
    try:
        return _empty_support(program, hypers, x)
    except Exception:  # noqa: BLE001 - a warning, never a failure
        return []


def _empty_support(program, hypers: dict, x: dict) -> list[Warning_]:
    low, st = program.lowered, program.state
    split = st.structure.get("nonsmooth")
    if low.nonsmooth is None or split is None:
        return []
    theta = {k: np.asarray(v, low.dtype) for k, v in hypers.items()}

    def support(xv, d):
        return low.nonsmooth.support(xv, (theta, d))

    if low.batched:
        support = jax.vmap(support, in_axes=(0, low.data_axes))
    mask = support({k: np.asarray(v, low.dtype) for k, v in x.items()}, low.data)
    acted_on = [k for k in low.nonsmooth.terms]
    if any(np.any(np.asarray(mask[k]) > 0) for k in acted_on):
        return []
    names = ", ".join(acted_on)
    terms = "; ".join(str(p) for p in split.penalties)
    return [Warning_(
        f"at the learned hypers the non-smooth terms hold every entry of {names} at 0 ({terms}): the "
        f"lower solution does not change for nearby hypers, so the hypergradient through {names} is exactly "
        "0 here: the run stops in this flat region, although smaller weights may give a lower upper value", st.lower.goal.span,
        "start the hypers that weight the non-smooth terms smaller (e.g. 10–100× smaller), so that some "
        "entries are nonzero at the start")]
