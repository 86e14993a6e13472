"""``adaptive``: growing minibatches and a line search, no step-size grid.

The run optimises the sample-average problem on a batch S (the first b rows of one
seeded permutation: batches are nested) by L-BFGS steps with Armijo backtracking on
the batch's upper value, and grows S when the estimated sampling error of the batch
hypergradient exceeds a fraction ``theta`` of its norm (the norm test of adaptive
sampling).  Lower and adjoint solves are warm-started and stopped at a fraction
``kappa`` of the sampling noise of their own residuals, so their accuracy follows the
batch size; at b = n the method is a deterministic inexact descent.  Derivation,
assumptions and defaults: docs/ALGORITHMS.md, "adaptive: growing minibatches".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bil.runtime.outer.adaptive_ops import BatchOps, RowProblem
from bil.runtime.outer.floor import floor_reason
from bil.runtime.outer.stops import Status, Stop

__all__ = ["AdaptiveOptions", "AdaptiveRun", "run_adaptive", "chunk_counts", "chunk_rows"]


@dataclass(frozen=True)
class AdaptiveOptions:
    """The rule's constants (docs/ALGORITHMS.md gives their roles and why these values)."""

    batch0: int = 1024         # first batch (rows of the lower set; the upper set in proportion)
    theta: float = 0.5         # norm test: sampling sd of z ≤ theta·‖z‖
    kappa: float = 0.5         # solves stop at kappa × the sampling noise of their residual
    replicates: int = 4        # disjoint sub-batches that estimate the sampling variance of z
    c1: float = 1e-4           # Armijo constant
    rho: float = 0.5           # backtracking factor
    max_backtracks: int = 8
    step0: float = 1.0         # length of the first step (unconstrained coordinates)
    max_step: float = 4.0      # trust region ‖αd‖ ≤ max_step
    memory: int = 10           # L-BFGS pairs
    tol: float = 1e-8          # stop when b = n and ‖z‖ ≤ tol
    max_iter: int = 200
    budget: float | None = None  # sample gradients
    seed: int = 0


def chunk_rows(opts: AdaptiveOptions, n: int | None = None) -> int:
    """Rows per chunk: the first batch's sub-batches (``batch0 / replicates`` rows, or n / replicates
    when there are fewer than ``batch0`` rows) are whole chunks."""
    b0 = int(opts.batch0) if n is None else min(int(opts.batch0), int(n))
    return max(1, b0 // max(1, int(opts.replicates)))


def chunk_counts(q: int, k0: int) -> list[int]:
    """The batches a run may use, in chunks of a problem cut into q: k₀·2ʲ below q, then q (every row)."""
    out, k = [], max(1, min(int(k0), q))
    while k < q:
        out.append(k)
        k *= 2
    return out + [q]


def _cg_products(iters, restarted=0) -> int:
    """Hessian-vector products of a warm-started CG of ``iters`` iterations: its iterations, its first
    residual and, after iterations, its closing residual check (each twice where it ``restarted``
    from a factor's solution)."""
    return int(iters) + (2 if int(iters) else 1) + 2 * int(restarted)


@dataclass
class AdaptiveRun:
    """Everything the run has done: the iterate, the batch, the estimates and the records."""

    u: Any
    x: Any
    v: Any
    z: Any = None
    f: float = math.nan
    fhat: float = math.nan                  # f corrected for the lower solve's error (the line search's value)
    level: int = 0                          # index into the run's batches (Adaptive.batches)
    sigma_z: float = math.nan               # per-row sd of z (sd of z_S = sigma_z·s(b))
    sigma_g: float = math.nan               # per-row sd of ∇ₓg_i
    sigma_r: float = math.nan               # per-row sd of the adjoint residual's rows
    kappa: float = 0.5
    pairs: list = field(default_factory=list)
    samples: int = 0                        # sample gradients so far
    lower_iters: int = 0                    # lower-solver iterations so far (replicates included)
    cg_iters: int = 0                       # CG iterations so far
    tol_x: float = math.nan                 # the last tolerances used (records' eps / delta)
    tol_v: float = math.nan
    records: list = field(default_factory=list)
    reason: str | None = None


class Adaptive:
    """The host loop over :class:`BatchOps` (one jitted call at a time)."""

    def __init__(self, problem: RowProblem, opts: AdaptiveOptions = AdaptiveOptions(), ops: BatchOps | None = None):
        self.p, self.o = problem, opts
        self.ops = ops if ops is not None else BatchOps(problem, chunk=chunk_rows(opts, problem.n))
        self.ops.permute(opts.seed)
        k0 = max(1, round(opts.batch0 / self.ops.chunk))
        self.batches = [self.ops.batch(k) for k in chunk_counts(self.ops.q, k0)]
        u0, self.unravel = ravel_pytree(problem.u0)
        self.u0 = np.asarray(u0)

    # ---- sizes and noise levels
    def size(self, level: int) -> tuple[int, int]:
        """(lower rows, upper rows) of the batch at ``level`` (the upper set in the same fraction)."""
        b = self.batches[level]
        return b.rows, b.orows

    def factor(self, level: int) -> float:
        """s(b) = √(1/b − 1/n): the sd of a batch mean relative to the per-row sd (without replacement)."""
        b, _ = self.size(level)
        return math.sqrt(max(1.0 / b - 1.0 / self.p.n, 0.0))

    def tolerances(self, s: AdaptiveRun, znorm: float) -> tuple[float, float]:
        """(tol on ‖∇ₓg_S‖, tol on the CG residual): kappa × max(sampling noise, what the norm test needs)."""
        sf = self.factor(s.level)
        need = self.o.theta * znorm / s.sigma_z if s.sigma_z > 0 and math.isfinite(znorm) else 0.0
        rel = max(sf, need, 1e-10)   # (the floor: a problem without sampling noise still stops)
        return s.kappa * s.sigma_g * rel, s.kappa * s.sigma_r * rel

    # ---- evaluations on the current batch
    def spend(self, s: AdaptiveRun, n: int) -> None:
        s.samples += int(n)

    def trial(self, s: AdaptiveRun, u, tol: float, batch=None):
        """The lower solve at ``u`` (warm-started at s.x) on ``batch`` (the current one by default),
        and the corrected upper value there."""
        b = self.batches[s.level] if batch is None else batch
        x, it, st, f, fhat, factored = self.ops.trial(self.unravel(u), s.x, s.v, tol, b)
        # one gradient per iteration (the cost axis' convention) and the start's, the upper value,
        # and the n_x products per row of a batch Hessian formed (``direct()``)
        self.spend(s, (int(it) + 1 + int(factored) * self.ops.factor_passes) * b.rows + b.orows)
        s.lower_iters += int(it)
        return x, int(st), float(f), float(fhat)

    def adjoint(self, s: AdaptiveRun, u, x, v, tol: float):
        b, t = self.size(s.level)
        f, fhat, z, v, it, st, factored = self.ops.adjoint(self.unravel(u), x, v, tol, self.batches[s.level])
        # CG, the cross product Jᵀv (with ∇ₓg), ∇f, and a batch Hessian formed (``direct()``)
        self.spend(s, (_cg_products(it, factored) + 1 + int(factored) * self.ops.factor_passes) * b + t)
        s.cg_iters += int(it)
        return float(f), float(fhat), np.asarray(ravel_pytree(z)[0]), v, int(st)

    def estimate(self, s: AdaptiveRun, blocks: int | None = None) -> None:
        """Per-row spreads at (x, v), and σ_z from K disjoint sub-batches of the batch at level
        ``blocks`` (the current one by default; a growing run passes the level it grew from: σ_z
        is a per-row quantity, which sub-batches of the smaller batch estimate at a fraction of
        the cost)."""
        self.estimate_spreads_only(s)
        b, t = self.size(s.level)
        k = self.o.replicates
        per = self.batches[s.level if blocks is None else blocks].count // k     # chunks per sub-batch
        if (b < self.p.n or not s.sigma_z > 0) and per >= 1 and per * self.ops.chunk >= 2:
            tol_x, tol_v = self.tolerances(s, math.nan)
            u, zs = self.unravel(s.u), []
            for j in range(k):
                blk = self.ops.batch(per, start=j * per)
                xk, _, _, _ = self.trial(s, s.u, tol_x, blk)
                _, _, zk, _, ci, _, fac = self.ops.adjoint(u, xk, s.v, tol_v, blk)
                self.spend(s, (_cg_products(ci, fac) + 1 + int(fac) * self.ops.factor_passes) * blk.rows + blk.orows)
                s.cg_iters += int(ci)
                zs.append(np.asarray(ravel_pytree(zk)[0]))
            flat = np.stack(zs)
            var_sub = float(np.sum(np.var(flat, axis=0, ddof=1)))
            bk = per * self.ops.chunk                   # rows of one sub-batch
            s.sigma_z = math.sqrt(var_sub / max(1.0 / bk - 1.0 / self.p.n, 1e-300))

    def evaluate(self, s: AdaptiveRun, znorm: float, solved=None) -> str | None:
        """x, v, f and z at (s.u, current batch), warm-started; a stop reason on a failed solve.
        ``solved``: (x, f) of a converged lower solve at s.u on this batch to these tolerances
        (an accepted line-search trial), which is then not repeated."""
        tol_x, tol_v = self.tolerances(s, znorm)
        s.tol_x, s.tol_v = tol_x, tol_v
        if solved is not None:
            (x, f), st = solved, Status.OK
        else:
            x, st, f, _ = self.trial(s, s.u, tol_x)
        if st == Status.NONFINITE:
            return Stop.LOWER_NONFINITE
        if st == Status.CAP:
            s.f = f
            return self.limit(s, Stop.LOWER_CAP, f"the lower solve hit its iteration cap at tolerance {tol_x:.2g}")
        f, fhat, z, v, cst = self.adjoint(s, s.u, x, s.v, tol_v)
        if not (math.isfinite(f) and np.all(np.isfinite(z))):
            return Stop.NONFINITE_HYPERGRAD
        if cst != Status.OK:
            s.x, s.f = x, f
            if cst == Status.CAP:
                return self.limit(s, Stop.CG_CAP, f"CG hit its iteration cap at tolerance {tol_v:.2g}")
            return Stop.NOT_PD if cst == Status.NOT_PD else Stop.CG_NONFINITE
        s.x, s.v, s.f, s.fhat, s.z = x, v, f, fhat, z
        return None

    def limit(self, s: AdaptiveRun, failure: Stop, why: str) -> str:
        """A solve that cannot reach the accuracy asked for: after accepted steps, the run has reached
        the accuracy this problem allows (a success); before any, a failure."""
        if any(r["step"] > 0 for r in s.records):
            return floor_reason(s.tol_x, why)
        return failure

    # ---- the loop
    def init(self) -> AdaptiveRun:
        x0 = self.p.x0
        v0 = jax.tree_util.tree_map(jnp.zeros_like, x0)
        s = AdaptiveRun(u=self.u0.copy(), x=x0, v=v0, kappa=self.o.kappa)
        self.estimate_spreads_only(s)
        s.reason = self.evaluate(s, math.nan)
        if s.reason is None:
            self.estimate(s)
        return s

    def estimate_spreads_only(self, s: AdaptiveRun) -> None:
        """σ_g, σ_r: per-row statistics at (x, v), estimated on the first batch's rows (a subset of
        every batch; their accuracy does not improve with the batch size in any way that matters)."""
        first = self.batches[0]
        vg, vhv, vfx = (float(a) for a in self.ops.spread(self.unravel(s.u), s.x, s.v, first))
        self.spend(s, 2 * first.rows + first.orows)
        s.sigma_g = math.sqrt(vg)
        s.sigma_r = math.sqrt(vhv + (vfx * self.p.n / self.p.m if self.p.m else 0.0))

    def norm_test_level(self, s: AdaptiveRun) -> int:
        """The smallest batch level whose sampling sd of z is ≤ theta·‖z‖ (at least the current one)."""
        zn = float(np.linalg.norm(s.z))
        lvl = s.level
        while lvl < len(self.batches) - 1 and s.sigma_z * self.factor(lvl) > self.o.theta * zn:
            lvl += 1
        return lvl

    def grow(self, s: AdaptiveRun, level: int) -> str | None:
        old, s.level = s.level, level
        why = self.evaluate(s, float(np.linalg.norm(s.z)))
        if why is None:
            self.estimate(s, blocks=old)
        return why

    def direction(self, s: AdaptiveRun) -> tuple[np.ndarray, bool]:
        """L-BFGS two-loop product H·z (scaled by the newest pair), or z when not a descent direction;
        and whether it is the quasi-Newton product."""
        q = s.z.copy()
        if not s.pairs:
            return q, False
        alphas = []
        for sv, yv in reversed(s.pairs):
            a = float(sv @ q) / float(yv @ sv)
            alphas.append(a)
            q = q - a * yv
        sv, yv = s.pairs[-1]
        q = q * (float(sv @ yv) / float(yv @ yv))
        for (sv, yv), a in zip(s.pairs, reversed(alphas)):
            bcoef = float(yv @ q) / float(yv @ sv)
            q = q + (a - bcoef) * sv
        return (q, True) if float(q @ s.z) > 0 else (s.z.copy(), False)

    def step(self, s: AdaptiveRun) -> dict:
        """One iteration: grow the batch if the norm test says so, then one backtracking step."""
        t0 = time.perf_counter()
        grown = False
        lvl = self.norm_test_level(s)
        if lvl > s.level:
            s.reason, grown = self.grow(s, lvl), True
            if s.reason is not None:
                return self.record(s, 0.0, 0, t0)
        zn = float(np.linalg.norm(s.z))
        if s.level == len(self.batches) - 1 and zn <= self.o.tol:
            s.reason = Stop.CONVERGED
            return self.record(s, 0.0, 0, t0)
        d, qn = self.direction(s)
        slope = float(s.z @ d)
        alpha = 1.0 if qn else self.o.step0 / max(zn, 1e-300)
        alpha = min(alpha, self.o.max_step / max(float(np.linalg.norm(d)), 1e-300))
        tol_x, _ = self.tolerances(s, zn)
        for k in range(self.o.max_backtracks + 1):
            u1 = s.u - alpha * d
            x1, st, f1raw, f1 = self.trial(s, u1, tol_x)
            # only a converged solve can certify the decrease (a capped one's value is not at tol_x)
            if st == Status.OK and math.isfinite(f1) and f1 <= s.fhat - self.o.c1 * alpha * slope:
                return self.accept(s, u1, (x1, f1raw), alpha, k, t0)
            alpha *= self.o.rho
        # the batch's values cannot certify a decrease along d: more samples, or tighter solves at b = n
        if s.level < len(self.batches) - 1:
            s.reason = self.grow(s, s.level + 1)
        else:
            s.kappa *= 0.1
            if s.kappa < 1e-8:
                s.reason = Stop.NO_DECREASE
            else:
                s.reason = self.evaluate(s, zn)
        return self.record(s, 0.0, self.o.max_backtracks + 1, t0)

    def accept(self, s: AdaptiveRun, u1, solved, alpha: float, backtracks: int, t0) -> dict:
        """Move to u1, whose lower solve ``solved`` = (x, f) the search made to the evaluation's
        tolerance (the same ‖z‖ sets both), then the adjoint and z there."""
        z0, u0 = s.z, s.u
        s.u, s.x = u1, solved[0]
        s.reason = self.evaluate(s, float(np.linalg.norm(z0)), solved)
        if s.reason is None:
            sv, yv = s.u - u0, s.z - z0
            if float(sv @ yv) > 1e-12 * float(np.linalg.norm(sv) * np.linalg.norm(yv)):
                s.pairs = (s.pairs + [(sv, yv)])[-self.o.memory:]
        return self.record(s, alpha, backtracks, t0)

    def record(self, s: AdaptiveRun, alpha: float, backtracks: int, t0) -> dict:
        b, t = self.size(s.level)
        rec = dict(upper=s.f, grad_norm=float(np.linalg.norm(s.z)) if s.z is not None else math.nan,
                   omega=s.sigma_z * self.factor(s.level), step=alpha, backtracks=backtracks, batch=b,
                   samples=s.samples, u=s.u.copy())
        s.records.append(rec)
        return rec


def run_adaptive(problem: RowProblem, opts: AdaptiveOptions = AdaptiveOptions(), ops: BatchOps | None = None,
                 callback=None) -> AdaptiveRun:
    """Run ``adaptive`` on a row problem to its stop (max_iter, budget, convergence, a failure)."""
    loop = Adaptive(problem, opts, ops)
    t0 = time.perf_counter()
    s = loop.init()
    for _ in range(opts.max_iter):
        if s.reason is not None or (opts.budget is not None and s.samples >= opts.budget):
            break
        rec = loop.step(s)
        rec["wall_s"] = time.perf_counter() - t0
        if callback is not None and callback(rec):
            break
    return s
