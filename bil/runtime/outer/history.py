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
``sample_grads``
    cumulative sample-gradient evaluations, counted per row of ``sampled`` data
    (docs/ALGORITHMS.md, "Cost axis"): a lower gradient (one lower iteration), a
    Hessian-vector product (one CG iteration), a cross product Jᵀq and an upper
    value or gradient each count the rows they touch (N for a full-batch one, B for a
    minibatch; 1 for an objective without ``sampled`` data); over resumed runs too.
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
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from bil.runtime.outer.stops import RESUMABLE, Stop

__all__ = ["FIELDS", "INT_FIELDS", "MAX_FLAT_HYPER", "OuterResult", "hyper_fields", "make_record",
           "pack_tree", "unpack_tree", "to_host", "tree_norm", "is_finite_tree", "history_columns",
           "history_from_state", "finished_result", "RESUMABLE_STOPS"]

FIELDS = ("iter", "upper", "grad_norm", "omega", "eps", "delta", "step", "backtracks",
          "lower_iters", "cg_iters", "lower_iters_total", "cg_iters_total", "wall_s", "sample_grads")
INT_FIELDS = frozenset({"iter", "backtracks", "lower_iters", "cg_iters", "lower_iters_total", "cg_iters_total",
                        "sample_grads"})
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
                lower_iters_total, cg_iters_total, wall_s, hypers, sample_grads=0) -> dict:
    """One history record with exactly the fields of :data:`FIELDS` plus the hyper fields."""
    rec = dict(iter=int(iter), upper=float(upper), grad_norm=float(grad_norm), omega=float(omega),
               eps=float(eps), delta=float(delta), step=float(step), backtracks=int(backtracks),
               lower_iters=int(lower_iters), cg_iters=int(cg_iters), lower_iters_total=int(lower_iters_total),
               cg_iters_total=int(cg_iters_total), wall_s=float(wall_s), sample_grads=int(sample_grads))
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
RESUMABLE_STOPS = RESUMABLE


def finished_result(oracles, state: dict, reason: str | None = None) -> "OuterResult":
    """The result a run ended with, rebuilt from its resumable ``state`` without running an
    iteration: a state that records a final stop (converged, failed; :attr:`bil.runtime.outer.driver.Tracker.stop`), or
    any state with the stop ``reason`` given."""
    u, x, q = unpack_iterates(state, oracles, host_copy(oracles.u0))
    history = history_from_state(state)
    reason = str(state["stop"] if reason is None else reason)
    upper = float(history[-1]["upper"]) if history else float(state.get("upper", math.nan))
    return OuterResult(u=u, hypers=oracles.to_user(u), x=x, q=q, upper=upper, history=history,
                       converged=reason == Stop.CONVERGED, reason=reason, state=dict(state))


def history_columns(history: list[dict]) -> dict:
    """The history as state entries: ``history_fields`` and one column ``history/FIELD`` each."""
    names = list(history[0]) if history else []
    st: dict[str, Any] = {"history_fields": np.array(names, dtype=str)}
    for name in names:
        dtype = np.int64 if name in INT_FIELDS else np.float64
        st[f"history/{name}"] = np.array([rec[name] for rec in history], dtype=dtype)
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


def history_from_state(state: dict) -> list[dict]:
    """The records stored by :func:`history_columns`."""
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
