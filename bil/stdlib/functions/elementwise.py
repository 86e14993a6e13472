"""Element-wise functions: ``exp``, ``log``, ``abs``, activations, ``clip``, ``where`` ..."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bil.stdlib import rules
from bil.stdlib.registry import register


@register("exp", latex=r"e^{#1}")
def exp(x):
    """Element-wise exponential."""
    return jnp.exp(x)


@register("log", latex=r"\log{\left(#1 \right)}")
def log(x):
    """Element-wise natural logarithm."""
    return jnp.log(x)


@register("log1p")
def log1p(x):
    """Element-wise log(1 + x), accurate for small x."""
    return jnp.log1p(x)


@register("sqrt", latex=r"\sqrt{#1}")
def sqrt(x):
    """Element-wise square root."""
    return jnp.sqrt(x)


@register("abs", latex=r"\left|{#1}\right|")
def abs_(x):
    """Element-wise absolute value."""
    return jnp.abs(x)


@register("square", degree=rules.square)
def square(x):
    """Element-wise square, x^2."""
    return jnp.square(x)


@register("sign")
def sign(x):
    """Element-wise sign (-1, 0 or 1); its gradient is 0."""
    return jnp.sign(x)


@register("cos")
def cos(x):
    """Element-wise cosine."""
    return jnp.cos(x)


@register("sin")
def sin(x):
    """Element-wise sine."""
    return jnp.sin(x)


@register("tanh")
def tanh(x):
    """Element-wise hyperbolic tangent."""
    return jnp.tanh(x)


@register("sigmoid")
def sigmoid(x):
    """Element-wise logistic sigmoid 1 / (1 + exp(-x))."""
    x = jnp.asarray(x)
    # integers are promoted like exp(0) is (jax.nn.sigmoid itself rejects them)
    return jax.nn.sigmoid(x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float)))


@register("softplus")
def softplus(x):
    """Element-wise log(1 + exp(x)), computed stably."""
    return jax.nn.softplus(x)


@register("relu")
def relu(x):
    """Element-wise max(x, 0)."""
    return jax.nn.relu(x)


@register("smooth_abs")
def smooth_abs(x, eps):
    """Element-wise smooth absolute value sqrt(x^2 + eps^2)."""
    return jnp.sqrt(jnp.square(x) + jnp.square(eps))


@register("soft_threshold")
def soft_threshold(x, t):
    """Element-wise shrinkage sign(x) * max(abs(x) - t, 0) (the prox of t*l1)."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


@register("maximum")
def maximum(a, b):
    """Element-wise maximum of two arrays (broadcast)."""
    return jnp.maximum(a, b)


@register("minimum")
def minimum(a, b):
    """Element-wise minimum of two arrays (broadcast)."""
    return jnp.minimum(a, b)


@register("clip")
def clip(x, lo, hi):
    """Element-wise clamp of x to [lo, hi]."""
    return jnp.clip(x, lo, hi)


@register("where", degree=rules.select)
def where(c, a, b):
    """Element-wise choice: a where c is true (nonzero), else b."""
    return jnp.where(c, a, b)
