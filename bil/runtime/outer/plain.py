"""Plain outer optimisers: ``gd`` (optax.sgd) and ``adam`` (optax.adam) on the driver.

They step on the hypergradient z in unconstrained coordinates, computed at the fixed
accuracy eps = delta = ``tol`` (never below what the arithmetic resolves), with warm-started
lower solves and CG.  A capped solve stops the run: its z is not at the accuracy asked for.
Records and iteration numbering: docs/ALGORITHMS.md, "gd and adam".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import optax

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.driver import Tracker, hypergrad_step, pytree_state
from bil.runtime.outer.history import (OuterResult, arithmetic_floor, host_copy, pack_iterates, pack_tree,
                                       start_iterates, to_host, tree_axpy, tree_norm, unpack_iterates, unpack_tree)

__all__ = ["make_optimizer", "PlainState", "Plain"]


def make_optimizer(method: str, lr: float) -> optax.GradientTransformation:
    if method == "gd":
        return optax.sgd(lr)
    if method == "adam":
        return optax.adam(lr)
    raise ValueError(f"unknown plain outer method {method!r}")


@pytree_state
@dataclasses.dataclass
class PlainState:
    u: Any             # hypers, unconstrained coordinates
    x: Any             # lower iterate at u
    q: Any             # adjoint at u
    z: Any             # hypergradient at u (the next step's)
    opt: Any           # the optax state
    f: float           # upper value at u


class Plain:
    """gd / adam: ``u ← u + optax update(z)`` and a hypergradient at the new point per iteration."""

    def __init__(self, oracles: AbstractOracles, name: str, lr: float, max_iter: int, tol: float, budget=None):
        self.oracles, self.name, self.lr, self.max_iter, self.tol = oracles, name, lr, max_iter, tol
        self.budget = budget
        self.opt = make_optimizer(name, lr)
        self.update = jax.jit(self.opt.update)

    @classmethod
    def from_options(cls, oracles: AbstractOracles, name: str, o: dict) -> "Plain":
        """The loop for the full ``gd(...)``/``adam(...)`` options (``max_iter``, or ``steps``)."""
        limit = o["max_iter"] if "max_iter" in o else o["steps"]
        return cls(oracles, name, float(o["lr"]), int(limit), float(o["tol"]), o.get("budget"))

    def _setup(self) -> None:
        self.u0 = host_copy(self.oracles.u0)
        self.oracles.set_strong_convexity(None)   # θ₀'s μ, whatever ran before on these oracles
        floor_eps, floor_delta = arithmetic_floor(self.oracles, self.u0)
        self.eps, self.delta = max(self.tol, floor_eps), max(self.tol, floor_delta)
        if self.oracles.exact:
            self.eps = self.delta = 0.0   # a training procedure: nothing to be accurate to (recorded as 0)

    def init(self, tr: Tracker):
        self._setup()
        u, x, q = start_iterates(self.oracles, self.u0)
        tr.begin()
        hg, f, z, reason = hypergrad_step(self.oracles, tr, u, x, q, self.eps, self.delta)
        if reason is not None:
            f = math.nan  # no good point yet: a capped or cut-short solve's value is not F(θ₀)
        return PlainState(u, hg.x, hg.q, z, to_host(self.opt.init(u)), f), reason

    def restore(self, tr: Tracker, saved: dict) -> PlainState:
        self._setup()
        u, x, q = unpack_iterates(saved, self.oracles, self.u0)
        return PlainState(u, x, q, unpack_tree("z", saved, self.u0), unpack_tree("opt", saved, self.opt.init(self.u0)),
                          float(saved["upper"]))

    def step(self, s: PlainState, tr: Tracker):
        tr.begin()
        updates, opt = self.update(s.z, s.opt, s.u)
        u = tree_axpy(s.u, -1.0, to_host(updates))
        hg, f, z, why = hypergrad_step(self.oracles, tr, u, s.x, s.q, self.eps, self.delta)
        if why is not None:  # no step from a cut-short, capped or non-finite solve
            return s, None, why
        s = PlainState(u, hg.x, hg.q, z, to_host(opt), f)
        return s, {**self.stop_record(s), "step": self.lr}, None

    def stop_record(self, s: PlainState) -> dict:
        return dict(upper=s.f, grad_norm=tree_norm(s.z), omega=math.nan, eps=self.eps, delta=self.delta,
                    step=0.0, backtracks=0, hypers=self.oracles.to_user(s.u))

    def flatten(self, s: PlainState) -> dict:
        st: dict = {}
        pack_iterates(st, s.u, s.x, s.q)
        pack_tree("z", s.z, st)
        pack_tree("opt", s.opt, st)
        st["upper"] = float(s.f)
        return st

    def result(self, s: PlainState, tr: Tracker, reason: str) -> OuterResult:
        return OuterResult(u=s.u, hypers=self.oracles.to_user(s.u), x=s.x, q=s.q, upper=s.f, history=tr.history,
                           converged=False, reason=reason)
