"""SOBA and SABA as outer loops on the driver (:mod:`bil.runtime.outer.driver`).

One driver iteration runs ``chunk`` stochastic iterations as one compiled ``lax.scan``
(no host round trip per minibatch) and makes one history record.  The minibatch of
iteration t is drawn from ``fold_in(PRNGKey(seed), t)``: the sequence depends on the seed
and t only, so a run resumed from a checkpoint (which stores t, the iterates and SABA's
memories) continues bit-identically.  Records and costs: docs/ALGORITHMS.md, "SOBA and SABA".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bil.runtime.outer.driver import Tracker, pytree_state
from bil.runtime.outer.history import (OuterResult, host_copy, is_finite_tree, pack_iterates, pack_tree, to_host,
                                       unpack_iterates, unpack_tree)
from bil.runtime.outer.stops import Stop
from bil.core.errors import BilUsageError
from bil.runtime.stochastic.oracles import NotFiniteSum, StochasticOracles
from bil.runtime.stochastic.steps import saba_directions, saba_memory, soba_directions, tree_axpy

__all__ = ["StochasticLoop", "StochasticState"]

#: SABA's memories hold every row's oracle values: refuse more elements than this (use soba)
MAX_MEMORY = 10**8


@pytree_state
@dataclasses.dataclass
class StochasticState:
    u: Any        # hypers, unconstrained coordinates
    z: Any        # lower variables
    v: Any        # linear-system variable
    mem: Any      # SABA's memories ({} for SOBA)
    t: int        # stochastic iterations done
    f: float      # upper value f(z, θ) on all rows at the last record
    d_norm: float  # ‖D_u‖ of the last iteration
    step: float   # γ_t of the last iteration


def _oracles(low, name: str) -> StochasticOracles:
    """The minibatch oracles of ``low``, or a usage error at the spec's ``outer:`` method."""
    span = getattr(low.options["solve"]["outer"], "span", None)
    try:
        so = StochasticOracles(low)
    except NotFiniteSum as e:
        raise BilUsageError(f"`{name}` cannot run on this spec: {e}", span,
                            "use a full-batch method (`maid`), which handles it") from None
    for level, groups in (("lower", so.lower_groups), ("upper", so.upper_groups)):
        if name == "saba" and len(groups) > 1:
            raise BilUsageError(f"`saba` keeps one memory row per row of data, but the {level} objective averages "
                                f"over several `sampled` statements ({', '.join(groups)})", span,
                                "use `soba`, or bind those rows in one `sampled` statement")
    return so


def _steps(rho, gamma, t, decay: bool):
    """(ρ_t, γ_t): constant, or ρ/(t+1)^(2/5) and γ/(t+1)^(3/5) with ``decay`` (SOBA's schedule)."""
    if not decay:
        return rho, gamma
    t1 = (t + 1).astype(rho.dtype)
    return rho / t1 ** 0.4, gamma / t1 ** 0.6


def _chunk(so: StochasticOracles, name: str, batch: int, decay: bool, u, z, v, mem, t0, rho, gamma, seed, d,
           length: int):
    """``length`` iterations from iteration ``t0``: (u, z, v, mem, ‖D_u‖, γ_t) after them."""
    o = so.at_data(d)
    key = jax.random.PRNGKey(seed)

    def body(carry, k):
        u, z, v, mem, _, _ = carry
        t = t0 + k
        idx = o.sample(jax.random.fold_in(key, t), batch)
        if name == "saba":
            (dz, dv, du), mem = saba_directions(o, u, z, v, idx, idx, mem)
        else:
            dz, dv, du = soba_directions(o, u, z, v, idx, idx)
        rho_t, gamma_t = _steps(rho, gamma, t, decay)
        norm = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(du)))
        return (tree_axpy(u, gamma_t, du), tree_axpy(z, rho_t, dz), tree_axpy(v, rho_t, dv), mem, norm,
                gamma_t.astype(norm.dtype)), None

    zero = jnp.zeros((), jax.tree.leaves(z)[0].dtype)
    out, _ = jax.lax.scan(body, (u, z, v, mem, zero, zero), jnp.arange(length))
    return out


class StochasticLoop:
    """``soba(...)`` / ``saba(...)`` (options: :mod:`bil.stdlib.stochastic_methods`)."""

    def __init__(self, oracles, name: str, o: dict):
        self.oracles, self.name = oracles, name
        self.so = _oracles(oracles.low, name)
        self.batch, self.rho, self.gamma = int(o["batch"]), float(o["rho"]), float(o["gamma"])
        self.total, self.chunk, self.seed = int(o["max_iter"]), int(o["chunk"]), int(o["seed"])
        self.decay = bool(o.get("decay", False))
        self.sample_budget = o.get("budget")
        self.budget = None                   # the driver's budget counts iterations; ours, sample gradients
        self.max_iter = math.ceil(self.total / self.chunk)   # driver iterations: one per chunk
        # compiled once per engine and (method, batch, decay): steps and seed are arguments
        so, batch, decay = self.so, self.batch, self.decay
        self._run = oracles._jit(("stochastic", name, batch, decay),
                                 lambda *a, length: _chunk(so, name, batch, decay, *a, length=length),
                                 static=("length",))
        self._upper = oracles._jit(("stochastic-upper",),
                                   lambda z, u, d: so.at_data(d).upper_value(z, u, so.all_rows()))
        idx = self.so.sample(jax.random.PRNGKey(0), self.batch)
        #: sample gradients of one iteration: 3 lower products and one upper gradient per row
        self.cost = 3 * self.so.rows(idx, "lower") + self.so.rows(idx, "upper")

    # ------------------------------------------------------------ the loop
    def _start(self, u, z, v, shapes_only: bool = False):
        """SABA's memories at (u, z, v) (their structure only with ``shapes_only``); {} for SOBA."""
        if self.name != "saba":
            return {}
        nz, nu = (sum(int(np.size(a)) for a in jax.tree.leaves(t)) for t in (z, u))
        rows = {lv: sum(self.so.row_counts[g] for g in gs) for lv, gs in (("lower", self.so.lower_groups),
                                                                          ("upper", self.so.upper_groups))}
        n = rows["lower"] * (2 * nz + nu) + rows["upper"] * (nz + nu)
        if n > MAX_MEMORY:
            raise BilUsageError(f"saba's memories would hold {n:,} values (more than {MAX_MEMORY:,}): use soba, "
                                "which keeps none", getattr(self.oracles.low.options["solve"]["outer"], "span", None))
        so = self.so
        fill = self.oracles._jit(("saba-memory",), lambda u, z, v, d: saba_memory(so.at_data(d), u, z, v))
        if shapes_only:
            return jax.eval_shape(fill, u, z, v, so.data)
        return fill(u, z, v, so.data)

    def init(self, tr: Tracker):
        u = host_copy(self.oracles.u0)
        z = self.so.x_init(u)
        v = jax.tree.map(jnp.zeros_like, z)
        mem = self._start(u, z, v)
        tr.begin()
        if mem:   # one full pass of per-row values: 3 products per lower row, 1 gradient per upper row
            tr.spend_samples(3 * self.so.full_rows("lower") + self.so.full_rows("upper"))
        return StochasticState(u, to_host(z), to_host(v), mem, 0, math.nan, math.nan, 0.0), None

    def step(self, s: StochasticState, tr: Tracker):
        left = self.total - s.t
        if self.sample_budget is not None:   # strict: the iterations and the record's upper value fit
            room = int(self.sample_budget) - tr.sample_total - self.so.full_rows("upper")
            if room < self.cost:
                return s, None, Stop.BUDGET
            left = min(left, room // self.cost)
        length = min(self.chunk, left)
        dt = jax.tree.leaves(s.z)[0].dtype
        u, z, v, mem, norm, gamma = self._run(s.u, s.z, s.v, s.mem, jnp.asarray(s.t, jnp.int32),
                                              jnp.asarray(self.rho, dt), jnp.asarray(self.gamma, dt),
                                              jnp.asarray(self.seed, jnp.uint32), self.so.data, length=length)
        f = float(self._upper(z, u, self.so.data))
        tr.spend_samples(length * self.cost + self.so.full_rows("upper"), lower=length, cg=length)
        s = StochasticState(to_host(u), to_host(z), to_host(v), mem, s.t + length, f, float(norm), float(gamma))
        why = None if math.isfinite(f) and is_finite_tree((s.u, s.z, s.v)) else Stop.NONFINITE_HYPERGRAD
        full = self.sample_budget is not None and (
            int(self.sample_budget) - tr.sample_total - self.so.full_rows("upper") < self.cost)
        stop = why or (Stop.BUDGET if full else None)
        return s, self.stop_record(s), stop

    def stop_record(self, s: StochasticState) -> dict:
        return dict(upper=s.f, grad_norm=s.d_norm, omega=math.nan, eps=math.nan, delta=math.nan, step=s.step,
                    backtracks=0, hypers=self.oracles.to_user(s.u))

    # ------------------------------------------------------------ state
    def flatten(self, s: StochasticState) -> dict:
        st: dict = {}
        pack_iterates(st, s.u, s.z, s.v)
        pack_tree("mem", s.mem, st)
        st.update(t=int(s.t), upper=float(s.f), d_norm=float(s.d_norm), step_last=float(s.step))
        return st

    def restore(self, tr: Tracker, saved: dict) -> StochasticState:
        u0 = host_copy(self.oracles.u0)
        u, z, v = unpack_iterates(saved, self.oracles, u0)
        mem = self._start(u, z, v, shapes_only=True)
        mem = unpack_tree("mem", saved, mem) if mem else {}
        return StochasticState(u, z, v, mem, int(saved["t"]), float(saved["upper"]), float(saved["d_norm"]),
                               float(saved["step_last"]))

    def result(self, s: StochasticState, tr: Tracker, reason: str) -> OuterResult:
        return OuterResult(u=s.u, hypers=self.oracles.to_user(s.u), x=s.z, q=s.v, upper=s.f, history=tr.history,
                           converged=False, reason=reason)

