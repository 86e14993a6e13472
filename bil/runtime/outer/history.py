"""Per-iteration history records, stopping bookkeeping and resumable state.

Every outer method (MAID, HOAG, gd, adam) reports one record per outer
iteration, with exactly these fields (the same names in the API and in
``history.csv``):

``iter``
    1-based outer iteration.
``upper``
    upper value f(x̃, θ) at the iteration's accepted point (the point in the
    ``hyper.*`` fields), at the lower accuracy ``eps`` of that evaluation.
``grad_norm``, ``omega``
    ‖z‖ of the latest hypergradient computed in this iteration and MAID's
    certified bound ω on ‖z − ∇F‖ (NaN for methods without one).  For MAID, z is
    the hypergradient at the previous point that produced this step; for HOAG,
    gd and adam it is the hypergradient at the new point (the next step's).
``eps``, ``delta``
    lower and adjoint accuracies of the iteration (MAID: the absolute ones used
    for the accepted step; HOAG: its relative tolerance ε_k in both; gd/adam:
    the fixed ``tol``).
``step``
    accepted step length α (0 when the iteration ended without a step);
    HOAG: 1/L; gd/adam: the learning rate.
``backtracks``
    rejected trial steps in this iteration (MAID only; 0 elsewhere).
``lower_iters``, ``cg_iters``
    lower-solver and CG iterations spent in this iteration, every rejected
    trial and recomputation included.
``lower_iters_total``, ``cg_iters_total``
    the same, cumulative over the run (and over resumed runs).
``wall_s``
    cumulative wall time in seconds, excluding time spent in the callback.
``hyper.NAME`` / ``hyper.NAME[i]``
    the hypers in user coordinates: scalars as ``hyper.NAME``; arrays of up to
    16 elements flattened (C order) as ``hyper.NAME[i]``; larger arrays are left
    out of the record.

A run's *state* (``OuterResult.state`` and the callback's second argument) is a
flat ``dict`` whose values are NumPy arrays or Python scalars/strings, so
``np.savez(path, **state)`` stores it and ``dict(np.load(path))`` gives it back
(0-d arrays are accepted wherever a scalar is expected).  Pytrees (u, x, q, the
optimiser state) are stored as their leaves ``"u/0"``, ``"u/1"``, ...; their
structure is recovered from the oracles on resume.  The history is stored as
columns ``"history/FIELD"`` with the field order in ``"history_fields"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np

from bil.runtime.oracles import BUDGET

__all__ = ["FIELDS", "INT_FIELDS", "MAX_FLAT_HYPER", "OuterResult", "hyper_fields", "make_record",
           "Tracker", "pack_tree", "unpack_tree", "to_host", "tree_norm", "is_finite_tree"]

FIELDS = ("iter", "upper", "grad_norm", "omega", "eps", "delta", "step", "backtracks",
          "lower_iters", "cg_iters", "lower_iters_total", "cg_iters_total", "wall_s")
INT_FIELDS = frozenset({"iter", "backtracks", "lower_iters", "cg_iters", "lower_iters_total", "cg_iters_total"})
#: arrays with more elements than this are left out of the record
MAX_FLAT_HYPER = 16


@dataclass
class OuterResult:
    """What :func:`bil.runtime.outer.run_outer` returns."""

    u: dict            # final hypers, unconstrained coordinates (NumPy)
    hypers: dict       # final hypers, user coordinates
    x: Any             # lower iterate at the final hypers
    q: Any             # adjoint at the final hypers (warm start)
    upper: float       # upper value at (x, hypers)
    history: list      # one record (dict) per outer iteration
    converged: bool    # True only for the gradient-norm test
    reason: str        # why the run stopped
    state: dict = field(repr=False, default_factory=dict)  # resumable state
    failed_at: dict | None = None  # user-coordinate hypers where a failed solve ran, if not ``hypers``


# ------------------------------------------------------------------ records
def hyper_fields(hypers: dict, prefix: str = "hyper.") -> dict:
    """``{"hyper.NAME": v}`` / ``{"hyper.NAME[i]": v}`` for the record (see module doc)."""
    out: dict[str, float] = {}
    for name, val in hypers.items():
        if isinstance(val, dict):
            out.update(hyper_fields(val, f"{prefix}{name}."))
            continue
        a = np.asarray(val)
        if a.ndim == 0:
            out[f"{prefix}{name}"] = float(a)
        elif a.size <= MAX_FLAT_HYPER:
            for i, v in enumerate(a.ravel()):
                out[f"{prefix}{name}[{i}]"] = float(v)
    return out


def make_record(*, iter, upper, grad_norm, omega, eps, delta, step, backtracks, lower_iters, cg_iters,
                lower_iters_total, cg_iters_total, wall_s, hypers) -> dict:
    """One history record with exactly the fields of :data:`FIELDS` plus the hyper fields."""
    rec = dict(iter=int(iter), upper=float(upper), grad_norm=float(grad_norm), omega=float(omega),
               eps=float(eps), delta=float(delta), step=float(step), backtracks=int(backtracks),
               lower_iters=int(lower_iters), cg_iters=int(cg_iters), lower_iters_total=int(lower_iters_total),
               cg_iters_total=int(cg_iters_total), wall_s=float(wall_s))
    rec.update(hyper_fields(hypers))
    return rec


# -------------------------------------------------------------- host trees
def to_host(tree):
    """A pytree of (device) arrays as a pytree of NumPy arrays (one transfer)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def host_copy(tree):
    """A pytree of (device) arrays as writable NumPy copies (the hypers an outer loop owns)."""
    return jax.tree.map(lambda a: np.array(a), jax.device_get(tree))


def tree_norm(tree) -> float:
    """Euclidean norm of a pytree of NumPy arrays, computed on the host."""
    s = 0.0
    with np.errstate(over="ignore", invalid="ignore"):   # a huge z gives inf, reported as such
        for leaf in jax.tree.leaves(tree):
            a = np.asarray(leaf, dtype=np.float64)
            s += float(np.sum(a * a))
    return math.sqrt(s)


def is_finite_tree(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(l)))) for l in jax.tree.leaves(tree))


def tree_axpy(u, alpha: float, z):
    """u − αz leaf by leaf on the host, keeping each leaf's dtype (the outer step)."""
    return jax.tree.map(lambda a, b: np.asarray(a - alpha * b, dtype=np.result_type(a, b)), u, z)


def arithmetic_floor(oracles, u, x=None) -> tuple[float, float]:
    """(ε, δ) floors of a run: what the arithmetic resolves at hypers ``u`` and lower values
    ``x`` (default: the start at ``u``; :meth:`~bil.runtime.oracles.AbstractOracles.accuracy_floor`),
    with the oracles' current μ."""
    return oracles.accuracy_floor(u, oracles.init_lower(u) if x is None else x)


def hypergrad_step(oracles, tr: "Tracker", u, x, q, eps: float, delta: float):
    """One hypergradient call, capped by the remaining budget, whose iterations are
    spent on ``tr``.

    Returns ``(hg, f, z, why)``: the oracle's result, f(x̃) as a float, z on the
    host, and None, or why the loop must stop without using this result
    ("budget exhausted" when the budget cut a solve short, "lower solve
    produced non-finite values", "non-finite hypergradient": the upper value
    or z; a lower or CG solve that hit its iteration cap: z is not at the accuracy asked for)."""
    hg = oracles.hypergrad(u, x, q, eps, delta, cap=tr.remaining())
    f, li, ci, ls, cs = jax.device_get((hg.f, hg.lower_iters, hg.cg_iters, hg.lower_status, hg.cg_status))
    tr.spend(int(li), int(ci), ls, cs)
    f = float(f)
    z = to_host(hg.z)
    if tr.cut:
        return hg, f, z, "budget exhausted"
    if int(ls) == 2:
        return hg, f, z, "lower solve produced non-finite values"
    if int(ls) == 1:
        return hg, f, z, "lower solve hit its iteration cap"
    if int(cs) == 1:
        return hg, f, z, "CG hit its iteration cap"
    ok = math.isfinite(f) and is_finite_tree(z)
    return hg, f, z, None if ok else "non-finite hypergradient"


def pack_tree(prefix: str, tree, out: dict) -> None:
    """Store a pytree's leaves as ``out["prefix/i"]`` (NumPy copies)."""
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(tree))):
        out[f"{prefix}/{i}"] = np.array(leaf)


def unpack_tree(prefix: str, state: dict, like):
    """Rebuild a pytree stored by :func:`pack_tree`; ``like`` gives its structure."""
    treedef = jax.tree.structure(like)
    leaves = []
    for i in range(treedef.num_leaves):
        key = f"{prefix}/{i}"
        if key not in state:
            raise ValueError(f"resume state lacks {key!r}")
        leaves.append(np.array(state[key]))
    return jax.tree.unflatten(treedef, leaves)


#: stop reasons a resumed run continues from (a raised limit, a callback that said stop)
RESUMABLE_STOPS = frozenset({"max_iter reached", "budget exhausted", "stopped by callback"})


def finished_result(oracles, state: dict, reason: str | None = None) -> "OuterResult":
    """The result a run ended with, rebuilt from its resumable ``state`` without running an
    iteration: a state that records a final stop (converged, failed; :attr:`Tracker.stop`), or
    any state with the stop ``reason`` given."""
    u, x, q = unpack_iterates(state, oracles, host_copy(oracles.u0))
    history = _history_from_state(state)
    reason = str(state["stop"] if reason is None else reason)
    upper = float(history[-1]["upper"]) if history else float(state.get("upper", math.nan))
    return OuterResult(u=u, hypers=oracles.to_user(u), x=x, q=q, upper=upper, history=history,
                       converged=reason == "gradient norm below tol", reason=reason, state=dict(state))


# ----------------------------------------------------------------- tracker
class Tracker:
    """Counters, wall time, history and the callback protocol of one run."""

    def __init__(self, method: str, budget, callback: Callable | None, state: dict | None):
        self.method = method
        self.budget = None if budget is None else float(budget)
        self.callback = callback
        self.lower_total = 0
        self.cg_total = 0
        self.iteration = 0
        self.wall_prev = 0.0
        self.history: list[dict] = []
        #: the final stop reason, set by the outer loop before its last record's callback so that
        #: the state saved there says the run is over (a resume then runs nothing)
        self.stop: str | None = None
        if state is not None:
            got = str(state.get("method", ""))
            if got != method:
                raise ValueError(f"resume state belongs to outer method {got!r}, not {method!r}")
            self.lower_total = int(state["lower_iters_total"])
            self.cg_total = int(state["cg_iters_total"])
            self.iteration = int(state["iteration"])
            self.wall_prev = float(state["wall_s"])
            self.history = _history_from_state(state)
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

    def spend(self, lower: int, cg: int = 0, *statuses) -> None:
        """Count an oracle call's iterations; ``statuses`` are its lower/CG statuses:
        one that says the budget cut the call short ends the run (:meth:`exhausted`)."""
        self.begin()
        if any(int(s) == BUDGET for s in statuses):
            self.cut = True
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
            return "max_iter reached"
        if self.exhausted():
            return "budget exhausted"
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
                          cg_iters_total=self.cg_total, wall_s=self.wall(), hypers=hypers)
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
        st: dict[str, Any] = {
            "method": self.method,
            "iteration": int(self.iteration),
            "lower_iters_total": int(self.lower_total),
            "cg_iters_total": int(self.cg_total),
            "wall_s": float(self.wall()),
        }
        if self.stop is not None and self.stop not in RESUMABLE_STOPS:
            st["stop"] = self.stop
        names = list(self.history[0]) if self.history else []
        st["history_fields"] = np.array(names, dtype=str)
        for name in names:
            dtype = np.int64 if name in INT_FIELDS else np.float64
            st[f"history/{name}"] = np.array([rec[name] for rec in self.history], dtype=dtype)
        return st


def pack_iterates(st: dict, u, x, q) -> None:
    """Store the hypers and the lower/adjoint warm starts in a resumable state."""
    pack_tree("u", u, st)
    pack_tree("x", x, st)
    pack_tree("q", q, st)


def start_iterates(oracles, u0):
    """``(u, x, q)`` of a fresh run: the initial hypers, lower values and a zero adjoint."""
    x = oracles.init_lower(u0)
    return u0, x, oracles.init_adjoint(x)


def unpack_iterates(state: dict, oracles, u0):
    """``(u, x, q)`` from a resumable state (shapes taken from the oracles)."""
    u = unpack_tree("u", state, u0)
    x = unpack_tree("x", state, oracles.init_lower(u))
    q = unpack_tree("q", state, oracles.init_adjoint(x))
    return u, x, q


def _history_from_state(state: dict) -> list[dict]:
    names = [str(n) for n in np.asarray(state.get("history_fields", np.array([], dtype=str))).ravel()]
    if not names:
        return []
    cols = {n: np.asarray(state[f"history/{n}"]) for n in names}
    n = len(cols[names[0]])
    out = []
    for i in range(n):
        rec = {}
        for name in names:
            v = cols[name][i]
            rec[name] = int(v) if name in INT_FIELDS else float(v)
        out.append(rec)
    return out
