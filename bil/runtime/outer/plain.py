"""Plain outer optimisers: ``gd`` (optax.sgd) and ``adam`` (optax.adam).

They run on the hypergradient z in unconstrained coordinates, computed at the
fixed accuracy eps = delta = ``tol`` (absolute, as the oracles define it), for
``steps`` iterations (or until ``budget`` lower + CG iterations are spent).
Lower solves and CG are warm-started from the previous iterate and adjoint.

Iteration k: u_k = u_{k−1} + optax update of z_{k−1}; hypergradient at u_k;
record k (``upper`` = f(u_k), ``grad_norm`` = ‖z_k‖, ``omega`` = NaN,
``eps`` = ``delta`` = tol, ``step`` = lr).  The evaluation at u₀ is counted in
record 1.  There is no gradient-norm test: ``tol`` is the accuracy here.  A
lower or CG solve that hits its iteration cap stops the run with that reason
(and a diagnostic at the ``lower`` block): its z is not at the accuracy asked
for, and stepping on (a learning rate that drives a penalty to 0, say) would
only hide that.
"""

from __future__ import annotations

import math

import jax
import optax

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.history import (OuterResult, Tracker, arithmetic_floor, host_copy, hypergrad_step,
                                       pack_iterates, pack_tree, start_iterates, to_host, tree_axpy, tree_norm,
                                       unpack_iterates, unpack_tree)

__all__ = ["make_optimizer", "run_plain"]


def make_optimizer(method: str, lr: float) -> optax.GradientTransformation:
    if method == "gd":
        return optax.sgd(lr)
    if method == "adam":
        return optax.adam(lr)
    raise ValueError(f"unknown plain outer method {method!r}")


def run_plain(oracles: AbstractOracles, method: str, o: dict, *, callback=None, state=None) -> OuterResult:
    """gd / adam on ``oracles`` with options ``o`` (the full ``gd(...)``/``adam(...)`` dict)."""
    lr, steps, acc = float(o["lr"]), int(o["max_iter"]), float(o["tol"])
    u0 = host_copy(oracles.u0)
    oracles.set_strong_convexity(None)   # θ₀'s μ, whatever ran before on these oracles
    # never below what the arithmetic resolves (float32 especially)
    floor_eps, floor_delta = arithmetic_floor(oracles, u0)
    eps, delta = max(acc, floor_eps), max(acc, floor_delta)
    if oracles.exact:
        eps = delta = 0.0   # a training procedure: nothing to be accurate to (recorded as 0, not `tol`)
    opt = make_optimizer(method, lr)
    update = jax.jit(opt.update)

    tr = Tracker(method, o.get("budget"), callback, state)
    reason = None

    if state is None:
        u, x, q = start_iterates(oracles, u0)
        tr.begin()
        hg, f, z, reason = hypergrad_step(oracles, tr, u, x, q, eps, delta)
        x, q = hg.x, hg.q
        if reason is not None:
            f = math.nan  # no good point yet: a capped or cut-short solve's value is not F(θ₀)
        opt_state = to_host(opt.init(u))
    else:
        u, x, q = unpack_iterates(state, oracles, u0)
        z = unpack_tree("z", state, u0)
        opt_state = unpack_tree("opt", state, opt.init(u0))
        f = float(state["upper"])

    def make_state() -> dict:
        st = tr.common_state()
        pack_iterates(st, u, x, q)
        pack_tree("z", z, st)
        pack_tree("opt", opt_state, st)
        st["upper"] = float(f)
        return st

    while reason is None:
        reason = tr.limit_reason(steps)
        if reason is not None:
            break
        tr.begin()
        updates, new_opt_state = update(z, opt_state, u)
        updates = to_host(updates)
        u_new = tree_axpy(u, -1.0, updates)
        hg, fn, z_new, why = hypergrad_step(oracles, tr, u_new, x, q, eps, delta)
        if why is not None:  # no step from a cut-short, capped or non-finite solve
            reason = why
            break
        u, x, q, z, f = u_new, hg.x, hg.q, z_new, fn
        opt_state = to_host(new_opt_state)
        rec = tr.emit(upper=f, grad_norm=tree_norm(z), omega=math.nan, eps=eps, delta=delta, step=lr,
                      backtracks=0, hypers=oracles.to_user(u))
        if tr.notify(rec, make_state):
            reason = "stopped by callback"

    if tr.spent_this_iteration:  # work without a step (failure, or steps=0)
        tr.stop = reason
        rec = tr.emit(upper=f, grad_norm=tree_norm(z), omega=math.nan, eps=eps, delta=delta, step=0.0,
                      backtracks=0, hypers=oracles.to_user(u))
        tr.notify(rec, make_state)

    return OuterResult(u=u, hypers=oracles.to_user(u), x=x, q=q, upper=f, history=tr.history,
                       converged=False, reason=reason, state=make_state())
