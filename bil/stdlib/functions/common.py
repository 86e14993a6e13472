"""Argument helpers shared by the stdlib's functions: axes, sizes, shapes, dimension errors.

They look at shapes and dtypes only (the compiler runs the functions under
``jax.eval_shape``) and raise :class:`StdlibError` naming the argument at fault.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from bil.stdlib.errors import StdlibError


def _axis(x, axis, fname):
    """Normalise ``axis`` (None, int, or a list/tuple of ints) and check its range."""
    if axis is None:
        return None
    ndim = x.ndim if hasattr(x, "ndim") else np.ndim(x)   # (a tuple from a spec: jnp.ndim warns on it)
    many = isinstance(axis, (list, tuple))
    axes = tuple(axis) if many else (axis,)
    for a in axes:
        try:
            a = operator.index(a)
        except TypeError:
            raise StdlibError(f"{fname}: axis must be an integer, got {a!r}", arg="axis") from None
        if not -ndim <= a < ndim:
            raise StdlibError(
                f"{fname}: axis {a} is out of range for an array with {ndim} dimension(s)",
                hint=f"valid axes are {-ndim}..{ndim - 1}" if ndim else "a scalar has no axes; drop axis=",
                arg="axis",
            )
    axes = tuple(operator.index(a) for a in axes)
    return axes if many else axes[0]


def _dim(d, fname, arg):
    """One size: a non-negative compile-time integer (-1 allowed for reshape)."""
    # numpy integers and integral floats from constant folding are accepted
    if isinstance(d, (float, np.floating)) and float(d).is_integer():
        d = int(d)
    try:
        d = operator.index(d)
    except TypeError:
        raise StdlibError(
            f"{fname}: size {d!r} is not an integer",
            hint="sizes must be compile-time integers, e.g. rows(x) or 64",
            arg=arg,
        ) from None
    if d < 0 and not (fname == "reshape" and d == -1):
        raise StdlibError(f"{fname}: size {d} is negative", arg=arg)
    return d


def _shape_arg(shape, fname):
    """Shape given as ints ``f(2, 3)`` or as one tuple ``f(shape(x))``."""
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    return tuple(_dim(d, fname, i) for i, d in enumerate(shape))


def _ndim_error(fname, what, x, arg=0, hint=None):
    return StdlibError(f"{fname} expects {what}, got an array of shape {tuple(jnp.shape(x))}", hint=hint, arg=arg)


def _is_abstract(x):
    return isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))
