"""The one driver of every outer loop: iteration limit, budget, history, callback and resume.

An outer loop (:class:`OuterLoop`: MAID, HOAG, gd, adam) says how to start
(``init``), how to continue from a checkpoint (``restore``), what one outer iteration
does (``step``) and how its state is flattened into a checkpoint (``flatten``); its
state is a typed dataclass registered as a pytree (:func:`pytree_state`).  :func:`drive`
runs it: it checks ``max_iter`` and the budget before each iteration, appends the
record a step reports, calls the callback with the flattened state, and records the
stop.  A resumed run is bit-identical to an uninterrupted one because everything a step
reads lives in the state and its checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Protocol

import jax

from bil.runtime.outer.history import (OuterResult, history_columns, history_from_state, is_finite_tree,
                                       make_record, to_host)
from bil.runtime.outer.stops import RESUMABLE, Status, Stop

__all__ = ["OuterLoop", "Tracker", "drive", "hypergrad_step", "pytree_state"]


def pytree_state(cls):
    """Register a dataclass as a pytree whose every field is a child (the states of the loops)."""
    names = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
    return cls


class OuterLoop(Protocol):
    """What :func:`drive` needs of an outer loop (see the module docstring)."""

    name: str
    max_iter: int
    budget: float | None

    def init(self, tr: "Tracker") -> tuple[Any, str | None]:
        """A fresh run's state, and a stop reason when the work at θ₀ already ends it."""

    def restore(self, tr: "Tracker", saved: dict) -> Any:
        """The state a checkpoint ``saved`` (a flattened state) holds."""

    def step(self, state, tr: "Tracker") -> tuple[Any, dict | None, str | None]:
        """One outer iteration: (new state, the record's fields or None without a step, stop reason)."""

    def stop_record(self, state) -> dict:
        """The record's fields of an iteration that did work but ended without a step (``step`` 0)."""

    def flatten(self, state) -> dict:
        """The method's checkpoint entries of ``state`` (the driver adds the common ones)."""

    def result(self, state, tr: "Tracker", reason: str) -> OuterResult:
        """The run's result (its ``state`` is filled in by the driver)."""


def drive(loop: OuterLoop, callback: Callable | None = None, saved: dict | None = None) -> OuterResult:
    """Run ``loop`` to its stop, from the checkpoint ``saved`` when given."""
    tr = Tracker(loop.name, loop.budget, callback, saved)
    tr.rows = row_costs(getattr(loop, "oracles", None))
    tr.factor = factor_cost(getattr(loop, "oracles", None))
    if saved is None:
        state, reason = loop.init(tr)
    else:
        state, reason = loop.restore(tr, saved), None

    def flat() -> dict:
        st = tr.common_state()
        st.update(loop.flatten(state))
        return st

    while reason is None:
        reason = tr.limit_reason(loop.max_iter)
        if reason is not None:
            break
        state, fields, stop = loop.step(state, tr)
        if fields is None:        # no step: the iteration's work (if any) gets the final record
            reason = stop
            break
        if stop is not None:      # (known before the callback, so that the state it saves says so)
            reason = tr.stop = str(stop)
        rec = tr.emit(**fields)
        if tr.notify(rec, flat) and reason is None:
            reason = Stop.CALLBACK
    reason = str(reason)
    tr.stop = reason
    if tr.spent_this_iteration:   # work without a step (a failure, max_iter=0 after the work at θ₀)
        rec = tr.emit(**loop.stop_record(state))
        tr.notify(rec, flat)
    res = loop.result(state, tr, reason)
    res.state = flat()
    return res


def hypergrad_step(oracles, tr: "Tracker", u, x, q, eps: float, delta: float):
    """One hypergradient call, capped by the remaining budget, whose iterations are
    spent on ``tr``.

    Returns ``(hg, f, z, why)``: the oracle's result, f(x̃) as a float, z on the
    host, and None, or why the loop must stop without using this result (the
    budget cut a solve short, non-finite lower values, a non-finite upper value or z,
    a lower or CG solve that hit its iteration cap: z is not at the accuracy asked for)."""
    hg = oracles.hypergrad(u, x, q, eps, delta, cap=tr.remaining())
    f, li, ci, ls, cs = jax.device_get((hg.f, hg.lower_iters, hg.cg_iters, hg.lower_status, hg.cg_status))
    tr.spend(int(li), int(ci), ls, cs, upper=1, cross=1, solves=1)
    f = float(f)
    z = to_host(hg.z)
    if tr.cut:
        return hg, f, z, Stop.BUDGET
    if int(ls) == Status.NONFINITE:
        return hg, f, z, Stop.LOWER_NONFINITE
    if int(ls) == Status.CAP:
        return hg, f, z, Stop.LOWER_CAP
    if int(cs) == Status.CAP:
        return hg, f, z, Stop.CG_CAP
    ok = math.isfinite(f) and is_finite_tree(z)
    return hg, f, z, None if ok else Stop.NONFINITE_HYPERGRAD


def row_costs(oracles) -> tuple[int, int]:
    """(rows of one full lower gradient, rows of one full upper gradient) of ``oracles``: the
    sample gradients a lower or CG iteration and an upper evaluation count (1, 1 when unknown)."""
    fn = getattr(oracles, "row_costs", None)
    return fn() if fn is not None else (1, 1)


def factor_cost(oracles) -> int:
    """Hessian-vector products one lower solve spends forming a dense Hessian (``direct``), 0 for
    iterative solvers: in sample gradients, each costs as much as a lower iteration."""
    fn = getattr(oracles, "factor_cost", None)
    return int(fn()) if fn is not None else 0


class Tracker:
    """Counters, wall time, history and the callback protocol of one run."""

    def __init__(self, method: str, budget, callback: Callable | None, state: dict | None):
        self.method = method
        self.budget = None if budget is None else float(budget)
        self.callback = callback
        self.lower_total = 0
        self.cg_total = 0
        self.sample_total = 0
        #: (rows of a full lower gradient, of a full upper gradient): see :func:`row_costs`
        self.rows = (1, 1)
        #: Hessian-vector products of one lower solve's factorisation: see :func:`factor_cost`
        self.factor = 0
        self.iteration = 0
        self.wall_prev = 0.0
        self.history: list[dict] = []
        #: the final stop reason, set by the driver before its last record's callback so that
        #: the state saved there says the run is over (a resume then runs nothing)
        self.stop: str | None = None
        if state is not None:
            got = str(state.get("method", ""))
            if got != method:
                raise ValueError(f"resume state belongs to outer method {got!r}, not {method!r}")
            self.lower_total = int(state["lower_iters_total"])
            self.cg_total = int(state["cg_iters_total"])
            self.sample_total = int(state.get("sample_grads_total", 0))   # (states saved before the cost axis)
            self.iteration = int(state["iteration"])
            self.wall_prev = float(state["wall_s"])
            self.history = history_from_state(state)
        self._t0 = time.perf_counter()
        self._excluded = 0.0          # time spent in callbacks / state building
        self.in_iteration = False
        self.cut = False              # an oracle call was stopped by the budget
        self.it_lower = 0
        self.it_cg = 0

    # -- cost accounting
    def begin(self) -> None:
        """Start an outer iteration (idempotent until the next :meth:`emit`)."""
        if not self.in_iteration:
            self.in_iteration = True
            self.it_lower = 0
            self.it_cg = 0

    def spend(self, lower: int, cg: int = 0, *statuses, upper: int = 0, cross: int = 0, solves: int = 0) -> None:
        """Count an oracle call's iterations; ``statuses`` are its lower/CG statuses:
        one that says the budget cut the call short ends the run (:meth:`exhausted`).
        ``upper``: upper values/gradients it computed, ``cross``: cross products Jᵀq, ``solves``:
        lower solves (each forms the Hessian with a direct solver: :attr:`factor`); with the
        lower and CG iterations they are counted in sample gradients (:attr:`rows`)."""
        self.begin()
        passes = int(lower) + int(cg) + int(cross) + int(solves) * self.factor
        self.sample_total += passes * self.rows[0] + int(upper) * self.rows[1]
        if any(int(s) == Status.BUDGET for s in statuses):
            self.cut = True
        self.it_lower += int(lower)
        self.it_cg += int(cg)
        self.lower_total += int(lower)
        self.cg_total += int(cg)

    def spend_samples(self, n: int, lower: int = 0, cg: int = 0) -> None:
        """Count ``n`` sample gradients computed on minibatches (stochastic methods), with
        ``lower`` / ``cg`` the iterations of the lower and linear-system variables they made."""
        self.begin()
        self.sample_total += int(n)
        self.it_lower += int(lower)
        self.it_cg += int(cg)
        self.lower_total += int(lower)
        self.cg_total += int(cg)

    @property
    def spent_this_iteration(self) -> bool:
        return self.in_iteration

    def remaining(self) -> int | None:
        """Lower + CG iterations left in the budget (the ``cap`` of the next oracle
        call, so that a run never spends more than its budget); None without one."""
        if self.budget is None:
            return None
        return max(0, int(math.floor(self.budget)) - self.lower_total - self.cg_total)

    def exhausted(self) -> bool:
        """True when the total lower + CG iterations reached the budget, or the
        budget cut an oracle call short (what is left is less than one iteration
        per sample)."""
        return self.cut or (self.budget is not None and self.lower_total + self.cg_total >= self.budget)

    def limit_reason(self, max_iter: int) -> str | None:
        """Why the loop must stop before another iteration (iteration cap, budget), else None."""
        if self.iteration >= max_iter:
            return Stop.MAX_ITER
        if self.exhausted():
            return Stop.BUDGET
        return None

    def wall(self) -> float:
        return self.wall_prev + (time.perf_counter() - self._t0) - self._excluded

    # -- records
    def emit(self, *, upper, grad_norm, omega, eps, delta, step, backtracks, hypers) -> dict:
        """Close the current iteration with a record and append it to the history."""
        self.iteration += 1
        rec = make_record(iter=self.iteration, upper=upper, grad_norm=grad_norm, omega=omega, eps=eps,
                          delta=delta, step=step, backtracks=backtracks, lower_iters=self.it_lower,
                          cg_iters=self.it_cg, lower_iters_total=self.lower_total,
                          cg_iters_total=self.cg_total, wall_s=self.wall(), hypers=hypers,
                          sample_grads=self.sample_total)
        self.history.append(rec)
        self.in_iteration = False
        self.it_lower = 0
        self.it_cg = 0
        return rec

    def notify(self, record: dict, make_state: Callable[[], dict]) -> bool:
        """Call the user's callback; True when it asks to stop."""
        if self.callback is None:
            return False
        t = time.perf_counter()
        try:
            return bool(self.callback(record, make_state()))
        finally:
            self._excluded += time.perf_counter() - t

    # -- state
    def common_state(self) -> dict:
        """The checkpoint entries every method shares: counters, wall time, final stop, history."""
        st: dict[str, Any] = {
            "method": self.method,
            "iteration": int(self.iteration),
            "lower_iters_total": int(self.lower_total),
            "cg_iters_total": int(self.cg_total),
            "sample_grads_total": int(self.sample_total),
            "wall_s": float(self.wall()),
        }
        if self.stop is not None and self.stop not in RESUMABLE:
            st["stop"] = str(self.stop)
        st.update(history_columns(self.history))
        return st
