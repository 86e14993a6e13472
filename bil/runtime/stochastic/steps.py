"""One iteration of SOBA and SABA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022), as pure JAX.

With z the lower variables, v the linear-system variable, u the hypers (unconstrained
coordinates), i a minibatch of lower rows and j one of upper rows (docs/ALGORITHMS.md,
"SOBA and SABA"):

    D_z = ∇ₓg_i(z, u)
    D_v = ∇²ₓₓg_i(z, u) v + ∇ₓf_j(z, u)
    D_u = ∇²_ux g_i(z, u) v + ∇_u f_j(z, u)
    z ← z − ρ_t D_z,   v ← v − ρ_t D_v,   u ← u − γ_t D_u

all from the same iterate.  SOBA uses the minibatch values; SABA replaces each of the five
oracle values by its SAGA estimate from a memory of every row's last value (:func:`saga`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bil.runtime.stochastic.oracles import StochasticOracles

__all__ = ["soba_directions", "saba_directions", "saba_memory", "saga", "tree_axpy"]


def tree_axpy(a, t, d):
    """a − t·d leaf by leaf."""
    return jax.tree.map(lambda x, y: x - t * y, a, d)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def soba_directions(o: StochasticOracles, u, z, v, il: dict, iu: dict):
    """(D_z, D_v, D_u) from the minibatches ``il`` (lower rows) and ``iu`` (upper rows)."""
    gx, hv, jv = o.lower_terms(z, u, v, il)
    fx, fu = o.upper_grads(z, u, iu)
    return gx, _add(hv, fx), _add(jv, fu)


def saga(new, mem: dict, idx):
    """The SAGA estimate of a mean over N rows from the values ``new`` (leading axis: the rows
    ``idx``, repeats allowed) and the memory ``mem = {"rows": every row's last value,
    "mean": their mean}``; returns (estimate, updated memory).

    estimate = mean over the batch of (new − remembered) + mean of the memory: unbiased.  The
    memory's mean is updated by Σ (new − old) / N over the *distinct* rows of the batch (a row
    drawn twice has one value: each copy is weighted by 1 / its count)."""
    n = jax.tree.leaves(mem["rows"])[0].shape[0]
    old = jax.tree.map(lambda m: m.at[idx].get(mode="promise_in_bounds"), mem["rows"])
    diff = jax.tree.map(jnp.subtract, new, old)
    est = jax.tree.map(lambda d, m: jnp.mean(d, axis=0) + m, diff, mem["mean"])
    w = 1.0 / jnp.sum(idx[:, None] == idx[None, :], axis=1)
    mean = jax.tree.map(lambda m, d: m + jnp.tensordot(w.astype(d.dtype), d, axes=1) / n, mem["mean"], diff)
    # the memory gets new − old added (each copy of a repeated row weighted 1/its count): the write
    # then depends on the read, so XLA updates the memory in place; a plain `set` let it copy
    # the whole memory every iteration (O(N) per step)
    rows = jax.tree.map(lambda m, d: m.at[idx].add(_rows_scaled(w, d), mode="promise_in_bounds"), mem["rows"], diff)
    return est, {"rows": rows, "mean": mean}


def _rows_scaled(w, d):
    return d * w.astype(d.dtype).reshape((-1,) + (1,) * (d.ndim - 1))


def _level(o: StochasticOracles, level: str):
    """(the level's one row group or None, its oracle, the oracle on one row each)."""
    groups = o.lower_groups if level == "lower" else o.upper_groups
    if len(groups) > 1:
        raise ValueError(f"saba needs the {level} objective to average over the rows of one `sampled` statement; "
                         f"it uses {', '.join(groups)}")
    oracle = o.lower_terms if level == "lower" else o.upper_grads
    group = groups[0] if groups else None
    return group, oracle, (o.per_row(oracle, group) if group else None)


def saba_memory(o: StochasticOracles, u, z, v) -> dict:
    """SABA's memories at the start: every row's oracle values at (z, u, v) (one full pass)."""
    mem = {}
    for level, args in (("lower", (z, u, v)), ("upper", (z, u))):
        group, _, rows_fn = _level(o, level)
        if group is not None:
            rows = rows_fn(*args, jnp.arange(o.row_counts[group], dtype=jnp.int32))
            mem[level] = {"rows": rows, "mean": jax.tree.map(lambda a: jnp.mean(a, axis=0), rows)}
    return mem


def saba_directions(o: StochasticOracles, u, z, v, il: dict, iu: dict, mem: dict):
    """(D_z, D_v, D_u) with SAGA estimates, and the updated memories."""
    out, new_mem = {}, {}
    for level, args, idx in (("lower", (z, u, v), il), ("upper", (z, u), iu)):
        group, oracle, rows_fn = _level(o, level)
        if group is None:   # an objective without sampled data: its exact value
            out[level] = oracle(*args, {})
            continue
        out[level], new_mem[level] = saga(rows_fn(*args, idx[group]), mem[level], idx[group])
    (gx, hv, jv), (fx, fu) = out["lower"], out["upper"]
    return (gx, _add(hv, fx), _add(jv, fu)), new_mem
