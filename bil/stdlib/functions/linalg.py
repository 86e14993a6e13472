"""Linear algebra and shape manipulation: ``dot``, ``transpose``, ``reshape``, ``eye``, ``diag``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bil.stdlib import rules
from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _dim, _ndim_error, _shape_arg
from bil.stdlib.registry import register


@register("dot", degree=rules.bilinear)
def dot(a, b):
    """Dot product of vectors, or matrix product (like numpy.dot)."""
    return jnp.dot(a, b)


@register("transpose", degree=rules.linear)
def transpose(x):
    """Reverse the axes (the matrix transpose for a 2-D array)."""
    return jnp.transpose(x)


@register("reshape", static=("shape",), degree=rules.linear)
def reshape(x, *shape):
    """Reshape to the given sizes (one size may be -1); sizes or one tuple."""
    dims = _shape_arg(shape, "reshape")
    size = int(np.prod(jnp.shape(x), dtype=np.int64))
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if dims.count(-1) > 1 or (-1 not in dims and known != size) or (-1 in dims and (known == 0 or size % known)):
        raise StdlibError(
            f"reshape: cannot reshape an array of shape {tuple(jnp.shape(x))} ({size} elements) to {dims}",
            hint="the sizes must multiply to the number of elements; at most one size may be -1",
        )
    return jnp.reshape(x, dims)


@register("eye", static=("n",))
def eye(n):
    """The n-by-n identity matrix."""
    return jnp.eye(_dim(n, "eye", "n"))


@register("diag", degree=rules.linear)
def diag(x):
    """Diagonal matrix from a 1-D array, or the diagonal of a 2-D array."""
    if jnp.ndim(x) not in (1, 2):
        raise _ndim_error("diag", "a 1-D or 2-D array", x)
    return jnp.diag(x)
