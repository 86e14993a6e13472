"""The lower solve of every sample to ‖∇g‖ ≤ tol/√N, and the jit arguments of accuracies and caps.

Per-sample tolerances are the global ones divided by √N so the stacked problem
meets them exactly (‖∇G‖² = Σᵢ‖∇gᵢ‖²).  Accuracies and iteration caps are traced
arguments of every jitted function: changing them never recompiles."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from bil.runtime import solvers
from bil.runtime.oracles import BUDGET


class Solved(NamedTuple):
    x: Any
    iters: Any
    grad_norm: Any
    status: Any
    #: the lower Hessian's factorisation (solver ``direct``: the adjoint reuses it), else None
    factor: Any = None


def _scalar(v, dtype):
    """A tolerance as a jit argument: host numbers become numpy scalars.

    ``jnp.asarray`` on a Python float dispatches a device op (~0.05-0.3 ms on
    CPU) on every oracle call; a numpy scalar is passed straight through.
    """
    if isinstance(v, (int, float, np.number, np.ndarray)):
        return np.asarray(v, dtype)
    return jnp.asarray(v, dtype)


#: ``cap=None``: no per-call limit beyond the solvers' own ``max_iter``
_NO_CAP = np.iinfo(np.int32).max


def _cap(cap):
    """A per-call iteration cap as a jit argument (an int32, so None and any
    number share one compiled function)."""
    return np.asarray(_NO_CAP if cap is None else max(0, min(int(cap), _NO_CAP)), np.int32)


def _budget_status(status, iters, cap, own_max):
    """Status 4 (``BUDGET``) where a solve stopped at a per-call cap below its own max_iter."""
    cut = (status == 1) & (iters >= cap) & (cap < own_max)
    return jnp.where(cut, BUDGET, status).astype(jnp.int32)


class LowerSolve:
    """Mixin of :class:`bil.runtime.engine.Engine`: the lower solve (a training procedure's is
    :class:`bil.runtime.train.Training`'s ``_train``)."""

    def _solve(self, theta, d, X0, tol, cap=None) -> Solved:
        """Solve every sample's lower problem to ‖∇g‖ ≤ tol/√N, warm-started at X0.

        ``cap`` (traced int, optional) limits the iterations summed over samples:
        each sample gets ``cap // N``; a solve stopped there has status ``BUDGET``."""
        low = self.low
        per_tol = tol / math.sqrt(self.n)
        if low.optimizer is not None:
            return self._train(theta, d, X0)
        per_cap = None if cap is None else cap // self.n
        max_iter = self.max_iter if cap is None else jnp.minimum(per_cap, self.max_iter)

        def one(theta, d, x0):
            r = solvers.solve(self.solver.name, self._s1, x0, (theta, d), per_tol, max_iter,
                              options=self.solver.kwargs, bounds=low.bounds, prox=self._prox)
            st = r.status if cap is None else _budget_status(r.status, r.iters, per_cap, self.max_iter)
            return r.x, r.iters, r.grad_norm, st, r.factor

        x, it, gn, stt, fac = self._vmap(one, (None, low.data_axes, 0))(theta, d, X0)
        return Solved(self._laid(x), self._sum(it), self._rss(gn), self._max(stt), fac)

    def solve_lower(self, theta: dict, X0, tol: float) -> Solved:
        fn = self._jit("solve", lambda th, X0, tol, d: self._solve(th, d, X0, tol))
        return fn(theta, X0, _scalar(tol, self.low.dtype), self.low.data)
