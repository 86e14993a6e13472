"""Robust penalties and norms: ``charbonnier``, ``log_cosh``, ``pnorm``.

Each sums over the elements (over ``axis`` if given), as ``huber`` and ``sum``
do, so ``sum(w * log_cosh(conv2d(x, K), axis=(1, 2)))`` weights one penalty per
filter.  All are smooth (``pnorm`` away from 0 for p = 1) with finite
gradients everywhere, so lower solvers and implicit hypergradients can use
them; parameters (``eps``, ``p``) may be hypers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _axis
from bil.stdlib.registry import register


def _positive_constant(value, fname, arg, lo=0.0, what="> 0"):
    """Check a parameter that is a compile-time number (a hyper arrives traced and is left alone)."""
    if isinstance(value, (int, float, np.number)) and not value > lo:
        raise StdlibError(f"{fname}: {arg} must be {what}, got {value}", arg=arg)


@register("charbonnier", static=("axis", "keepdims"))
def charbonnier(x, eps=1e-3, axis=None, keepdims=False):
    """Charbonnier penalty sum(sqrt(x^2 + eps^2) - eps): ~|x| for |x| >> eps, ~x^2 / (2 eps) near 0."""
    _positive_constant(eps, "charbonnier", "eps")
    x = jnp.asarray(x)
    return jnp.sum(jnp.sqrt(jnp.square(x) + jnp.square(eps)) - eps, axis=_axis(x, axis, "charbonnier"),
                   keepdims=keepdims)


@register("log_cosh", static=("axis", "keepdims"))
def log_cosh(x, axis=None, keepdims=False):
    """Sum of log(cosh(x)), computed stably: ~x^2 / 2 near 0, ~|x| - log 2 for large |x|."""
    x = jnp.asarray(x)
    a = jnp.abs(x)
    # log cosh x = |x| + log(1 + exp(-2|x|)) - log 2, which never overflows
    return jnp.sum(a + jax.nn.softplus(-2.0 * a) - jnp.log(2.0), axis=_axis(x, axis, "log_cosh"), keepdims=keepdims)


@register("pnorm", static=("axis", "keepdims"))
def pnorm(x, p, axis=None, keepdims=False):
    """The p-norm (sum |x|^p)^(1/p) for p >= 1 (over `axis` if given); its gradient at 0 is 0."""
    _positive_constant(p, "pnorm", "p", lo=1.0 - 1e-12, what=">= 1")
    x = jnp.asarray(x)
    a = jnp.abs(x)
    # Double `where`s, as in `norm`: 0^p and s^(1/p) at 0 have infinite or NaN slopes in p and x.
    nz = a > 0
    t = jnp.where(nz, jnp.where(nz, a, 1.0) ** p, 0.0)
    s = jnp.sum(t, axis=_axis(x, axis, "pnorm"), keepdims=keepdims)
    pos = s > 0
    return jnp.where(pos, jnp.where(pos, s, 1.0) ** (1.0 / p), 0.0)
