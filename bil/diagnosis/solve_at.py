"""The lower problem solved at given hypers, for the diagnoses (its start, solution and status)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def lower_at(program, theta, solved=None):
    """(x0, x, status): the lower problem's start and solution at ``theta`` (user coordinates),
    solved from its initial values unless the caller has them already (``solved``)."""
    if solved is not None:
        x0, x, status = solved
        return x0, x, int(np.max(np.asarray(status)))
    eng = program.engine
    x0 = eng.init_lower_user(theta)
    sol = eng.solve_lower(theta, x0, float(program.state.options["lower"]["tol"]))
    return x0, sol.x, int(np.max(np.asarray(sol.status)))


def solution_at(program, theta: dict, solved=None):
    """(θ in the program's dtype, the lower solution) at ``theta``, or None for a training
    procedure or a lower solve that met Inf/NaN (nothing to diagnose there)."""
    if program.state.is_train:
        return None
    theta = {k: jnp.asarray(v, program.lowered.dtype) for k, v in theta.items()}
    _, x, status = lower_at(program, theta, solved)
    return None if status == 2 else (theta, x)
