"""MAID's search direction: L-BFGS (with the subspace-scaled H₀ on unexplored directions)
where ω certifies it a descent direction, else the hypergradient z (docs/ALGORITHMS.md, MAID,
"Quasi-Newton directions", "Unexplored directions").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from bil.runtime.outer.cubic import cubic_limit
from bil.runtime.outer.error_model import descent_test

__all__ = ["DIRECTIONS", "H0_MODES", "curvature_pair_ok", "diagonal_scaling", "lbfgs_direction",
           "direction_certified", "Direction", "choose_direction", "flat", "unflat"]

DIRECTIONS = ("lbfgs", "gradient")


#: a direction counts as explored by the L-BFGS steps when its singular value in the stacked
#: steps is at least this fraction of the largest (:func:`lbfgs_direction`)
_EXPLORED = 0.1
#: the initial inverse Hessians of :func:`lbfgs_direction` (``maid(h0=...)``)
H0_MODES = ("auto", "subspace", "scalar")
#: :func:`diagonal_scaling`: a coordinate is fitted when the steps moved it by at least this
#: fraction (in Σ s_i²) of the most-moved one, and its scale stays within this factor of γ
_INFORMED = 0.01
_DIAG_RANGE = 1e3


#: error directions (hypergradient differences at one θ) kept for :func:`lbfgs_direction`
ERROR_DIRS = 8


def curvature_pair_ok(s: np.ndarray, y: np.ndarray) -> bool:
    """Keep an L-BFGS pair only with positive curvature ⟨s, y⟩ > 10⁻⁸‖s‖‖y‖ (keeps H ≻ 0).

    (Stricter cosines, 10⁻⁴ and 10⁻², changed nothing on the TV benchmark problems; skipping
    pairs whose ‖y‖ is below the hypergradients' estimated errors starved the memory.)"""
    sy = float(s @ y)
    return math.isfinite(sy) and sy > 1e-8 * float(np.linalg.norm(s) * np.linalg.norm(y))


def diagonal_scaling(pairs: list, gamma: float) -> np.ndarray:
    """Per-coordinate scaling D of an L-BFGS H₀: the least-squares fit of s ≈ D y over the
    stored pairs, D_i = Σ s_i y_i / Σ y_i², for each coordinate with positive curvature
    that the steps have moved (Σ s_i² at least :data:`_INFORMED` of the largest); γ for the
    others; within [γ/:data:`_DIAG_RANGE`, γ·:data:`_DIAG_RANGE`] (docs/ALGORITHMS.md, MAID,
    "Unexplored directions")."""
    S = np.stack([p[0] for p in pairs])
    Y = np.stack([p[1] for p in pairs])
    sy, yy, ss = (S * Y).sum(0), (Y * Y).sum(0), (S * S).sum(0)
    ok = (sy > 0) & (yy > 0) & (ss >= _INFORMED * ss.max())
    D = np.where(ok, sy / np.where(ok, yy, 1.0), gamma)
    return np.clip(D, gamma / _DIAG_RANGE, gamma * _DIAG_RANGE)


def lbfgs_direction(z: np.ndarray, pairs: list, unexplored: tuple[float, float] | None = None,
                    error_dirs: list | None = None, expanded: list | None = None) -> np.ndarray:
    """d = H z, H the L-BFGS inverse-Hessian approximation of ``pairs`` [(s, y), ...]
    (oldest first; two-loop recursion).  Without pairs, d = z.

    H₀ = γ·I, γ = ⟨s, y⟩/⟨y, y⟩ from the newest pair (Nocedal–Wright), when
    ``unexplored`` is None.  With ``unexplored`` = (length, ω), H₀ = P·D·P + γ⊥·(I − P):
    P projects on the span of the stored steps s (right singular vectors of the stacked
    steps whose singular values are at least :data:`_EXPLORED` times the largest), D is
    the per-coordinate fit :func:`diagonal_scaling` there, and γ⊥ = max(γ, length/‖z⊥‖)
    on the directions none of them has explored, z⊥ the part of z there; only when
    ‖z⊥‖ > ω⊥, i.e. that part of z is above its estimated error (docs/ALGORITHMS.md, MAID,
    "Unexplored directions").  ω⊥ = ω times the largest fraction of an ``error_dirs``
    vector (differences of hypergradients at one θ: the directions of z's error) that
    lies outside the explored span; ω when none is known.  Either H₀ is symmetric
    positive definite, so H is, and the newest pair's secant condition H y = s holds."""
    q = np.array(z, dtype=np.float64)
    if not pairs:
        return q
    coef = []
    for s, y in reversed(pairs):
        a = float(s @ q) / float(s @ y)
        coef.append(a)
        q -= a * y
    s, y = pairs[-1]
    gamma = float(s @ y) / float(y @ y)
    basis = None
    scale = gamma
    if unexplored is not None:
        length, omega = unexplored
        scale = diagonal_scaling(pairs, gamma)
        _, sig, vt = np.linalg.svd(np.stack([p[0] for p in pairs]), full_matrices=False)
        basis = vt[sig >= _EXPLORED * sig[0]].T           # orthonormal: the explored directions

        def outside(v):
            return float(np.linalg.norm(v - basis @ (basis.T @ v)))

        z_perp = outside(z)
        dirs = [v for v in (error_dirs or ()) if np.linalg.norm(v) > 0]
        if dirs:
            # z's error lies along the measured error directions: only their part outside the
            # explored span can hide the part of z there (TV: the error is ~100x larger in the
            # weight than in the smoothing)
            omega = omega * max(outside(v) / float(np.linalg.norm(v)) for v in dirs)
        gamma_perp = length / z_perp if z_perp > omega and z_perp > 0 else gamma
        if not gamma_perp > gamma:
            basis = None
    if expanded is not None:
        expanded[0] = basis is not None
    if basis is None:
        q = scale * q
    else:
        q_in = basis @ (basis.T @ q)
        q = basis @ (basis.T @ (scale * q_in)) + gamma_perp * (q - q_in)
    for (s, y), a in zip(pairs, reversed(coef)):
        q += (a - float(y @ q) / float(s @ y)) * s
    return q


def direction_certified(omega: float, z: np.ndarray, d: np.ndarray, eta: float) -> bool:
    """Is −d a certified descent direction?  ⟨∇F, d⟩ ≥ ⟨z, d⟩ − ω‖d‖, so ω ≤ (1 − η)⟨z, d⟩/‖d‖
    suffices (for d = z this is the descent test ω ≤ (1 − η)‖z‖)."""
    zd, dn = float(z @ d), float(np.linalg.norm(d))
    return zd > 0 and dn > 0 and descent_test(omega, zd / dn, eta)


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])


def unflat(v: np.ndarray, like):
    leaves, treedef = jax.tree.flatten(like)
    out, i = [], 0
    for a in leaves:
        a = np.asarray(a)
        out.append(np.asarray(v[i:i + a.size].reshape(a.shape), dtype=a.dtype))
        i += a.size
    return jax.tree.unflatten(treedef, out)


class Direction(NamedTuple):
    """One round's search direction d: the trials are θ − αd (``tree_axpy(u, α, d)``)."""

    zf: np.ndarray        # z, flat
    df: np.ndarray        # d, flat
    d: object             # d as a pytree like z
    dn: float             # ‖d‖
    rate: float           # ⟨z, d⟩: the first-order decrease rate
    quasi_newton: bool    # d is the L-BFGS direction (else z)
    expanded: bool        # lbfgs_direction expanded unexplored directions


def choose_direction(o, s, it) -> Direction:
    """The direction at the current point of state ``s`` (options ``o``, iteration ``it``).

    With L-BFGS, the pair of the last accepted step (with this point's certified z) is
    stored first, and the cubic cap's segment set on ``it`` (both mutate the iteration's
    working state: ``s.pairs``, ``s.last``, ``it.segment``)."""
    zf = flat(it.z)
    if o.direction == "lbfgs" and s.last is not None:
        # the pair of the last accepted step, with this point's certified z
        sv, yv = flat(s.u) - s.last[0], zf - s.last[1]
        if o.cubic:
            it.segment = (sv, cubic_limit(s.last_f, float(s.last[1] @ sv), s.f_cur, float(zf @ sv)))
        if curvature_pair_ok(sv, yv):
            s.pairs = (s.pairs + [(sv, yv)])[-o.memory:]
        s.last = None
    df, quasi_newton = zf, False
    expanded = [False]   # set by lbfgs_direction: did it expand unexplored directions?
    if o.direction == "lbfgs" and s.pairs:
        # ("auto": the subspace scaling only where the stored steps can span every
        # direction; with more hypers than pairs it cost more on the digits example)
        sub = o.h0 == "subspace" or (o.h0 == "auto" and zf.size <= o.memory)
        dq = lbfgs_direction(zf, s.pairs, (s.unexplored_len, it.omega) if sub else None, s.error_dirs, expanded)
        if direction_certified(it.omega, zf, dq, o.eta):
            df, quasi_newton = dq, True
    d = unflat(df, it.z) if quasi_newton else it.z
    return Direction(zf, df, d, float(np.linalg.norm(df)), float(zf @ df), quasi_newton, expanded[0])
