"""The ``adaptive`` outer method on the outer driver, over a program's minibatch oracles.

:class:`AdaptiveLoop` adapts :class:`bil.runtime.outer.adaptive.Adaptive` (the rule) to
the driver's loop protocol (:mod:`bil.runtime.outer.driver`): its minibatch objectives
are those of :class:`bil.runtime.stochastic.oracles.StochasticOracles` on row-index
batches (prefixes of one seeded permutation of every row group), every iteration's
sample gradients, lower and CG iterations are spent on the tracker, and the state is
checkpointed so that a resumed run continues exactly.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from bil.runtime.outer.adaptive import Adaptive, AdaptiveOptions, AdaptiveRun, chunk_rows
from bil.runtime.outer.adaptive_ops import BatchOps, RowProblem
from bil.runtime.outer.driver import Tracker
from bil.runtime.outer.history import OuterResult, pack_tree, unpack_tree
from bil.runtime.outer.stops import Stop
from bil.stdlib.methods import Direct

__all__ = ["AdaptiveLoop", "rows_problem"]

_OPTION_NAMES = ("batch0", "theta", "kappa", "replicates", "c1", "rho", "max_backtracks", "step0", "max_step",
                 "memory", "tol", "max_iter", "seed")


def rows_problem(oracles) -> RowProblem:
    """The :class:`RowProblem` of a :class:`StochasticOracles`.  A row of group ``gr`` is its index
    (``__i``, which reads the hypers given per row) and its rows of every `sampled` statement of
    ``gr``: batches carry the data themselves, permuted once, never gathered again."""
    names = oracles.data["names"]

    def group(gr):
        row = {"__i": jnp.arange(oracles.row_counts[gr], dtype=jnp.int32)}
        row.update({n: names[n] for n, g in oracles.rows_of.sampled.items() if g == gr})
        return row

    lower = {gr: group(gr) for gr in oracles.lower_groups}
    upper = {gr: group(gr) for gr in oracles.upper_groups} or None
    if not lower:
        raise ValueError("adaptive: the lower objective reads no `sampled` data (nothing to sample)")

    def objective(rows_fn):
        def fn(x, u, rows):
            rows = rows or {}
            idx = {gr: r["__i"] for gr, r in rows.items()}
            taken = {n: a for r in rows.values() for n, a in r.items() if n != "__i"}
            return rows_fn(x, oracles.to_user(u), oracles.data, idx, taken)
        return fn

    return RowProblem(objective(oracles.rows_of.g), objective(oracles.rows_of.f),
                      lower, upper, oracles.x_init(oracles.u0), oracles.u0)


class AdaptiveLoop:
    """``adaptive(...)`` on the driver (init / restore / step / flatten / result)."""

    name = "adaptive"

    def __init__(self, oracles, opts: AdaptiveOptions, budget=None, problem: RowProblem | None = None,
                 ops: BatchOps | None = None):
        self.oracles, self.opts, self.sample_budget = oracles, opts, budget
        self.max_iter = opts.max_iter
        self.core = Adaptive(problem if problem is not None else rows_problem(oracles), opts, ops)

    @classmethod
    def from_options(cls, oracles, o: dict) -> "AdaptiveLoop":
        """The loop for the full ``adaptive(...)`` options; ``oracles`` are minibatch oracles, or a
        full-batch engine whose program's minibatch oracles are built here."""
        owner = oracles
        opts = AdaptiveOptions(**{k: o[k] for k in _OPTION_NAMES})
        cache = owner.__dict__.setdefault("_adaptive_cache", {})   # compiled batch operations, reused by later runs
        if "problem" not in cache:
            if not hasattr(oracles, "lower_terms"):
                from bil.runtime.stochastic.loop import _oracles

                oracles = _oracles(oracles.low, "adaptive")
            cache["problem"] = (oracles, rows_problem(oracles))
        oracles, problem = cache["problem"]
        chunk = chunk_rows(opts, problem.n)
        if chunk not in cache:
            # the spec's ``direct()`` (a quadratic lower objective) gives Newton solves on each batch
            cache[chunk] = BatchOps(problem, chunk=chunk, direct=isinstance(getattr(owner, "solver", None), Direct))
        cached = (oracles, problem, cache[chunk])
        return cls(cached[0], opts, o.get("budget"), cached[1], cached[2])

    @property
    def budget(self):   # the driver's budget counts lower + CG iterations; ours, sample gradients (step)
        return None

    def _spend(self, tr: Tracker, s: AdaptiveRun, before: tuple[int, int, int]) -> None:
        n, li, ci = s.samples - before[0], s.lower_iters - before[1], s.cg_iters - before[2]
        if hasattr(tr, "spend_samples"):
            tr.spend_samples(n, li, ci)
        else:   # a driver without the sample-gradient column
            tr.spend(li, ci)

    def init(self, tr: Tracker):
        tr.begin()
        s = self.core.init()
        self._spend(tr, s, (0, 0, 0))
        return s, s.reason

    def step(self, s: AdaptiveRun, tr: Tracker):
        tr.begin()
        before = (s.samples, s.lower_iters, s.cg_iters)
        rec = self.core.step(s)
        self._spend(tr, s, before)
        stop = s.reason
        if stop is None and self.sample_budget is not None and s.samples >= self.sample_budget:
            stop = s.reason = Stop.BUDGET
        if stop is not None and stop != Stop.CONVERGED and rec["step"] == 0.0:
            return s, None, stop
        return s, self._fields(s, rec["step"], rec["backtracks"]), stop

    def _fields(self, s: AdaptiveRun, step: float, backtracks: int) -> dict:
        zn = float(np.linalg.norm(s.z)) if s.z is not None else math.nan
        return dict(upper=s.f, grad_norm=zn, omega=s.sigma_z * self.core.factor(s.level), eps=s.tol_x,
                    delta=s.tol_v, step=float(step), backtracks=int(backtracks),
                    hypers=self.oracles.to_user(self.core.unravel(jnp.asarray(s.u))))

    def stop_record(self, s: AdaptiveRun) -> dict:
        return self._fields(s, 0.0, 0)

    # ---- checkpoints: every entry a step reads
    def flatten(self, s: AdaptiveRun) -> dict:
        st = {"adaptive/u": np.asarray(s.u), "adaptive/z": np.asarray(s.z if s.z is not None else s.u * np.nan)}
        pack_tree("u", self.core.unravel(jnp.asarray(s.u)), st)
        pack_tree("x", s.x, st)
        pack_tree("q", s.v, st)
        for k in ("f", "fhat", "level", "sigma_z", "sigma_g", "sigma_r", "kappa", "samples", "lower_iters", "cg_iters",
                  "tol_x", "tol_v"):
            st[f"adaptive/{k}"] = getattr(s, k)
        p = len(s.u)
        st["adaptive/pairs_s"] = np.array([a for a, _ in s.pairs]).reshape(-1, p)
        st["adaptive/pairs_y"] = np.array([b for _, b in s.pairs]).reshape(-1, p)
        return st

    def restore(self, tr: Tracker, saved: dict) -> AdaptiveRun:
        s = AdaptiveRun(u=np.asarray(saved["adaptive/u"], dtype=float), x=unpack_tree("x", saved, self.core.p.x0),
                        v=unpack_tree("q", saved, self.core.p.x0))
        s.z = np.asarray(saved["adaptive/z"], dtype=float)
        for k, cast in (("f", float), ("fhat", float), ("level", int), ("sigma_z", float), ("sigma_g", float), ("sigma_r", float),
                        ("kappa", float), ("samples", int), ("lower_iters", int), ("cg_iters", int),
                        ("tol_x", float), ("tol_v", float)):
            setattr(s, k, cast(saved[f"adaptive/{k}"]))
        ps, py = np.asarray(saved["adaptive/pairs_s"]), np.asarray(saved["adaptive/pairs_y"])
        s.pairs = [(ps[i].copy(), py[i].copy()) for i in range(ps.shape[0])]
        return s

    def result(self, s: AdaptiveRun, tr: Tracker, reason: str) -> OuterResult:
        u = self.core.unravel(jnp.asarray(s.u))
        return OuterResult(u=u, hypers=self.oracles.to_user(u), x=s.x, q=s.v, upper=s.f, history=tr.history,
                           converged=reason == "converged", reason=reason)
