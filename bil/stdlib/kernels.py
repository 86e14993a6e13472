"""Kernels between the rows of two data matrices: ``sq_dists``, ``rbf_kernel``."""

from __future__ import annotations

import jax.numpy as jnp

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _ndim_error
from bil.stdlib import rules
from bil.stdlib.registry import register


def _rows_pair(fname, X, Z):
    """X [n, d] and Z [m, d] (Z defaults to X); a located error otherwise."""
    X = jnp.asarray(X)
    Z = X if Z is None else jnp.asarray(Z)
    if X.ndim != 2:
        raise _ndim_error(fname, "a matrix X [n, d] (one row per point)", X, arg=0,
                          hint="one point per row; a 1-D array of n points is reshape(x, n, 1)")
    if Z.ndim != 2 or Z.shape[1] != X.shape[1]:
        raise StdlibError(f"{fname}: Z of shape {tuple(Z.shape)} does not match X of shape {tuple(X.shape)}",
                          hint=f"Z needs {X.shape[1]} columns, like X (one point per row)", arg=1)
    return X, Z


def _sq_dists(fname, X, Z):
    X, Z = _rows_pair(fname, X, Z)
    # |x|^2 + |z|^2 - 2 x.z needs no [n, m, d] temporary; cancellation can go slightly below 0
    d = jnp.sum(jnp.square(X), 1)[:, None] + jnp.sum(jnp.square(Z), 1)[None, :] - 2.0 * X @ Z.T
    return jnp.maximum(d, 0.0)


@register("sq_dists", degree=rules.squared_difference)
def sq_dists(X, Z=None):
    """Squared Euclidean distances between the rows of X [n, d] and Z [m, d] (default X): [n, m]."""
    return _sq_dists("sq_dists", X, Z)


@register("rbf_kernel")
def rbf_kernel(X, Z, gamma):
    """Gaussian (RBF) kernel matrix exp(-gamma * sq_dists(X, Z)) of the rows of X [n, d], Z [m, d]: [n, m]."""
    if jnp.ndim(gamma) != 0:
        raise _ndim_error("rbf_kernel", "a scalar gamma", gamma, arg=2, hint="gamma = 1 / (2 bandwidth^2)")
    return jnp.exp(-gamma * _sq_dists("rbf_kernel", X, Z))
