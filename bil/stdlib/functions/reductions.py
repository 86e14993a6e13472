"""Reductions: sums, norms, extrema, ``logsumexp`` and ``trace`` (over ``axis`` where given)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp as _jax_logsumexp

from bil.stdlib import rules
from bil.stdlib.functions.common import _axis, _ndim_error
from bil.stdlib.registry import register


@register("sum", static=("axis", "keepdims"), degree=rules.linear, latex=r"\sum \left(#1\right)")
def sum_(x, axis=None, keepdims=False):
    """Sum of the elements (over `axis` if given)."""
    return jnp.sum(x, axis=_axis(x, axis, "sum"), keepdims=keepdims)


@register("mean", static=("axis", "keepdims"), degree=rules.linear)
def mean(x, axis=None, keepdims=False):
    """Mean of the elements (over `axis` if given)."""
    return jnp.mean(x, axis=_axis(x, axis, "mean"), keepdims=keepdims)


@register("sumsq", static=("axis", "keepdims"), degree=rules.square, latex=r"\left\|#1\right\|_2^{2}")
def sumsq(x, axis=None, keepdims=False):
    """Sum of squares of the elements, sum(x^2) (over `axis` if given)."""
    return jnp.sum(jnp.square(x), axis=_axis(x, axis, "sumsq"), keepdims=keepdims)


@register("norm", static=("axis", "keepdims"), latex=r"\left\|#1\right\|_2")
def norm(x, axis=None, keepdims=False):
    """Euclidean norm sqrt(sum(x^2)) (over `axis` if given); its gradient at 0 is 0."""
    s = jnp.sum(jnp.square(x), axis=_axis(x, axis, "norm"), keepdims=keepdims)
    # Double `where`: sqrt's infinite slope at 0 would give 0 * inf = NaN gradients.
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


@register("group_l1")
def group_l1(x, groups, weights=1.0):
    """Group lasso sum_g weights_g * norm(x[groups[:, g] == 1]) for a 0/1 matrix groups [n, G] (e.g. onehot(labels, G))."""
    if jnp.ndim(x) != 1:
        raise _ndim_error("group_l1", "a 1-D array", x)
    if jnp.ndim(groups) != 2 or jnp.shape(groups)[0] != jnp.shape(x)[0]:
        raise _ndim_error("group_l1", f"a 0/1 matrix of shape ({jnp.shape(x)[0]}, G)", groups, arg=1,
                          hint="one row per entry of x, one column per group: onehot(labels, G)")
    if jnp.ndim(weights) > 1 or (jnp.ndim(weights) == 1 and jnp.shape(weights)[0] not in (1, jnp.shape(groups)[1])):
        raise _ndim_error("group_l1", f"a scalar or {jnp.shape(groups)[1]} group weights", weights, arg=2)
    s = jnp.asarray(groups, jnp.result_type(x, float)).T @ jnp.square(x)
    # Double `where`, as in `norm`: a group at 0 has gradient 0, never 0 * inf = NaN.
    pos = s > 0
    return jnp.sum(weights * jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0))


@register("max", static=("axis", "keepdims"))
def max_(x, axis=None, keepdims=False):
    """Largest element (over `axis` if given)."""
    return jnp.max(x, axis=_axis(x, axis, "max"), keepdims=keepdims)


@register("min", static=("axis", "keepdims"))
def min_(x, axis=None, keepdims=False):
    """Smallest element (over `axis` if given)."""
    return jnp.min(x, axis=_axis(x, axis, "min"), keepdims=keepdims)


@register("logsumexp", static=("axis", "keepdims"))
def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) computed stably (over `axis` if given)."""
    return _jax_logsumexp(x, axis=_axis(x, axis, "logsumexp"), keepdims=keepdims)


@register("l1", static=("axis", "keepdims"))
def l1(x, axis=None, keepdims=False):
    """Sum of absolute values, sum(abs(x)) (over `axis` if given)."""
    return jnp.sum(jnp.abs(x), axis=_axis(x, axis, "l1"), keepdims=keepdims)


@register("trace", degree=rules.linear)
def trace(x):
    """Sum of the diagonal of a square or rectangular 2-D array."""
    if jnp.ndim(x) != 2:
        raise _ndim_error("trace", "a 2-D array", x)
    return jnp.trace(x)
