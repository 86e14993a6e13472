"""Image operators: forward differences ``dx``/``dy``, total variation ``tv``, ``conv2d``."""

from __future__ import annotations

import jax.numpy as jnp

from bil.stdlib import rules
from bil.stdlib.functions.common import _ndim_error
from bil.stdlib.registry import register


@register("dx", degree=rules.linear, latex=r"\nabla_{x} #(1)")
def dx(u):
    """Forward difference along columns (last axis), 0 in the last column (Neumann boundary)."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("dx", "an image (a 2-D array)", u, hint="dx and dy act on the last two axes")
    # Appending the last column makes its difference exactly 0.
    return jnp.diff(u, axis=-1, append=u[..., -1:])


@register("dy", degree=rules.linear, latex=r"\nabla_{y} #(1)")
def dy(u):
    """Forward difference along rows (second-to-last axis), 0 in the last row (Neumann boundary)."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("dy", "an image (a 2-D array)", u, hint="dx and dy act on the last two axes")
    return jnp.diff(u, axis=-2, append=u[..., -1:, :])


@register("tv", latex=r"\operatorname{TV}_{#2}\left(#1\right)")
def tv(u, eps):
    """Smoothed isotropic total variation sum(sqrt(dx(u)^2 + dy(u)^2 + eps^2))."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("tv", "an image (a 2-D array)", u)
    return jnp.sum(jnp.sqrt(jnp.square(dx(u)) + jnp.square(dy(u)) + jnp.square(eps)))


@register("conv2d", static=("padding",), degree=rules.bilinear)
def conv2d(x, kernels, padding="zero"):
    """2-D correlation x [H, W], kernels [F, h, w] -> [F, H, W], same size with `padding` = "zero" (default), "reflect", "symmetric", "edge" or "wrap"; "valid" shrinks it."""
    from bil.stdlib.imaging import correlate  # imaging imports this package's helpers

    x, k = jnp.asarray(x), jnp.asarray(kernels)
    if x.ndim != 2:
        raise _ndim_error("conv2d", "an image x of shape [H, W]", x, arg=0)
    single = k.ndim == 2  # one kernel [h, w] gives one map [H, W]
    if single:
        k = k[None]
    if k.ndim != 3:
        raise _ndim_error("conv2d", "kernels of shape [F, h, w] (or one kernel [h, w])", k, arg=1)
    dtype = jnp.result_type(x, k)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    # out[f, i, j] = sum_ab x[i + a - (h-1)//2, j + b - (w-1)//2] k[f, a, b] ("SAME" at stride 1)
    out = correlate(x.astype(dtype), k.astype(dtype), padding)
    return out[0] if single else out
