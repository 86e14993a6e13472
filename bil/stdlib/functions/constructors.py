"""Array constructors (every argument a compile-time constant): ``zeros``, ``ones``, ``randn``."""

from __future__ import annotations

import operator

import jax.numpy as jnp
import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _shape_arg
from bil.stdlib.registry import register


@register("zeros", static=("shape",))
def zeros(*shape):
    """Array of zeros of the given shape: zeros(3, 4) or zeros(shape(x))."""
    return jnp.zeros(_shape_arg(shape, "zeros"))


@register("ones", static=("shape",))
def ones(*shape):
    """Array of ones of the given shape: ones(3, 4) or ones(shape(x))."""
    return jnp.ones(_shape_arg(shape, "ones"))


@register("randn", static=("shape", "seed"))
def randn(*shape, seed=0):
    """Standard normal samples of the given shape, reproducible from `seed`."""
    dims = _shape_arg(shape, "randn")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise StdlibError(f"randn: seed must be an integer, got {seed!r}", arg="seed") from None
    # All arguments are compile-time constants, so NumPy draws the samples:
    # jax.random would compile a kernel for every new shape (~1 s each).
    return np.random.default_rng(seed).standard_normal(dims)
