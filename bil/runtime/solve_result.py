"""The result of a lower solve and its status codes, shared by every lower solver
(:mod:`bil.runtime.solvers`, and the quadratic ones in :mod:`bil.runtime.quadratic`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2


class SolveResult(NamedTuple):
    """Result of a lower solve (:func:`bil.runtime.solvers.solve`).

    x: final iterate (pytree like ``x0``).
    iters: int32, outer iterations taken.
    grad_norm: ``||grad fun(x)||`` at ``x`` (projected-gradient norm if bounded).
    status: int32, 0 converged, 1 stopped short of ``tol`` (max_iter or
        stalled line search), 2 non-finite value/gradient encountered.
    factor: the Hessian's factorisation (``direct`` only; the adjoint reuses it), else None.
    """

    x: Any
    iters: jax.Array
    grad_norm: jax.Array
    status: jax.Array
    factor: Any = None
