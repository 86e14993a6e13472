"""Building arrays from arrays: ``concat``, ``stack``, ``outer``; and ``logdet``."""

from __future__ import annotations

import jax.numpy as jnp

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _ndim_error
from bil.stdlib import rules
from bil.stdlib.registry import register


def _several(fname, arrays):
    # `[a, b]` in a spec is already one stacked array: concat([a, b]) would see one argument
    if len(arrays) < 2:
        raise StdlibError(f"{fname} needs at least two arrays, got {len(arrays)}",
                          hint=f"pass them as separate arguments: {fname}(a, b, axis=0)")
    return [jnp.asarray(a) for a in arrays]


def _axis_in(fname, axis, ndim):
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise StdlibError(f"{fname}: axis {axis!r} is out of range for the result's {ndim} dimension(s)",
                          hint=f"valid axes are {-ndim}..{ndim - 1}", arg="axis")
    return axis


@register("concat", static=("axis",), degree=rules.joined)
def concat(*arrays, axis=0):
    """Join arrays along an existing axis: concat(a, b, axis=0); the other axes must agree."""
    arrays = _several("concat", arrays)
    ndims = {a.ndim for a in arrays}
    if len(ndims) != 1 or 0 in ndims:
        raise StdlibError("concat: the arrays must have the same number (>= 1) of dimensions, got shapes "
                          + ", ".join(str(tuple(a.shape)) for a in arrays),
                          hint="reshape(x, 1, n) makes a row of a vector; stack(...) adds a new axis")
    ax = _axis_in("concat", axis, arrays[0].ndim) % arrays[0].ndim
    for i, a in enumerate(arrays[1:], 1):
        if a.shape[:ax] + a.shape[ax + 1:] != arrays[0].shape[:ax] + arrays[0].shape[ax + 1:]:
            raise StdlibError(f"concat: array {i} of shape {tuple(a.shape)} does not fit array 0 of shape "
                              f"{tuple(arrays[0].shape)} along axis {axis}",
                              hint="all axes but the joined one must have equal sizes", arg=i)
    return jnp.concatenate(arrays, axis=ax)


@register("stack", static=("axis",), degree=rules.joined)
def stack(*arrays, axis=0):
    """Stack arrays of one shape along a new axis: stack(a, b, axis=0) has shape [2, *shape(a)]."""
    arrays = _several("stack", arrays)
    for i, a in enumerate(arrays[1:], 1):
        if a.shape != arrays[0].shape:
            raise StdlibError(f"stack: array {i} of shape {tuple(a.shape)} differs from array 0 of shape "
                              f"{tuple(arrays[0].shape)}", hint="stacked arrays must have one shape", arg=i)
    return jnp.stack(arrays, axis=_axis_in("stack", axis, arrays[0].ndim + 1))


@register("outer", degree=rules.bilinear)
def outer(a, b):
    """Outer product of two vectors: outer(a, b)[i, j] = a[i] * b[j]."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    for i, v in enumerate((a, b)):
        if v.ndim != 1:
            raise _ndim_error("outer", "vectors (1-D arrays)", v, arg=i, hint="reshape(x, -1) flattens an array")
    return jnp.outer(a, b)


@register("logdet", latex=r"\log\det #(1)")
def logdet(A):
    """log det A of a small dense square matrix with positive determinant (e.g. symmetric positive definite); NaN otherwise."""
    A = jnp.asarray(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise _ndim_error("logdet", "a square matrix", A, arg=0)
    sign, logabs = jnp.linalg.slogdet(A)
    return jnp.where(sign > 0, logabs, jnp.nan)
