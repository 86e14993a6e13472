"""MAID's state (what a checkpoint holds) and one iteration's working values.

:class:`MaidState` is everything an iteration reads from the ones before it; its
checkpoint entries (:func:`flatten_state`, :func:`restore_state`) keep the names of the
format written since checkpoints exist, and entries an older checkpoint lacks take the
values a fresh run starts with.  :class:`Iteration` holds what lives for one outer
iteration only (its hypergradient, trials, the values of its record).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bil.runtime.outer.driver import pytree_state
from bil.runtime.outer.error_model import RunningConstants, SecantConstants
from bil.runtime.outer.history import pack_iterates, unpack_iterates

__all__ = ["MaidState", "Iteration", "flatten_state", "restore_state"]


@pytree_state
@dataclasses.dataclass
class MaidState:
    u: Any                      # hypers, unconstrained coordinates
    x: Any                      # lower iterate (warm start)
    q: Any                      # adjoint (warm start)
    eps: float                  # lower accuracy of the next hypergradient
    delta: float                # adjoint residual of the next hypergradient
    step: float                 # α of the next −z step (NaN before the first)
    f_cur: float                # best estimate of F at u
    consts: RunningConstants | None
    ks: SecantConstants
    eps_min: float              # the floors in force (refreshed with the constants)
    delta_min: float
    since_iters: int = 0        # accepted iterations since the constants were refreshed
    since_dist: float = 0.0     # distance moved since then
    since_probe: int = 0        # accepted iterations since the secant constants were re-measured
    probes: dict = dataclasses.field(default_factory=lambda: {"eps": 0, "delta": 0})
    pairs: list = dataclasses.field(default_factory=list)        # L-BFGS (s, y), oldest first
    last: tuple | None = None   # (θ, z) flat at the last accepted point: the next pair
    last_f: float = math.nan    # the upper value's best estimate there (cubic cap)
    unexplored_len: float = math.nan  # step length along unexplored directions
    error_dirs: list = dataclasses.field(default_factory=list)   # z(ε₁, δ₁) − z(ε₂, δ₂) at one θ
    #: (ε, δ) of the last hypergradient certified in this run (not checkpointed: a resumed run had one)
    last_ok: tuple | None = None
    #: (‖z‖, ω, ε, δ, backtracks) of the last iteration, for a record without a step (not checkpointed)
    report: tuple = (math.nan, math.nan, math.nan, math.nan, 0)

    def copy(self) -> "MaidState":
        """A copy a step may change (lists and dicts are replaced, never changed in place)."""
        return dataclasses.replace(self, probes=dict(self.probes))


@dataclasses.dataclass
class Iteration:
    """The working values of one outer iteration."""

    refresh: bool               # re-estimate the constants at the next certified point
    eps_used: float
    delta_used: float
    retries: int = 0            # failed backtracking rounds
    backtracks: int = 0         # rejected trials
    zn: float = math.nan        # ‖z‖ of the certified hypergradient
    omega: float = math.nan     # its error bound
    accepted: Any = None        # the accepted trial
    stop: str | None = None
    prev: tuple | None = None   # (ε, δ, z) of the last hypergradient at this point: secant pairs
    undo: dict = dataclasses.field(default_factory=lambda: {"eps": 0, "delta": 0})  # probe tightenings
    tried: list = dataclasses.field(default_factory=list)   # (u, warm start) of finite trials
    segment: tuple | None = None  # (s, t* − 1): the last accepted step and the cubic's minimum beyond it
    pair_li: int = 0            # lower/CG iterations since the last certified hypergradient
    pair_ci: int = 0
    # the certified hypergradient at the current point
    z: Any = None
    f_raw: float = math.nan     # f(x̃)
    qr_cur: float = math.nan    # ⟨q̃, ∇ₓg(x̃)⟩
    gx: float = math.nan        # ‖∇ₓf(x̃)‖
    qn: float = math.nan        # ‖q̃‖
    # the current round's bracket and first trial
    adj_cur: tuple | None = None
    f_minus: float = math.nan
    f_plus_cur: float = math.nan
    expanded_alpha0: float | None = None


def flatten_state(s: MaidState) -> dict:
    """The checkpoint entries of ``s`` (beside the driver's common ones)."""
    st: dict = {}
    pack_iterates(st, s.u, s.x, s.q)
    st.update(eps=float(s.eps), delta=float(s.delta), step=float(s.step), upper=float(s.f_cur),
              has_constants=s.consts is not None, const_since_iters=int(s.since_iters),
              const_since_dist=float(s.since_dist), eps_min=float(s.eps_min), delta_min=float(s.delta_min))
    for k in RunningConstants._fields:
        st[f"const/{k}"] = float(getattr(s.consts, k)) if s.consts is not None else math.nan
    for k in SecantConstants._fields:
        st[f"secant/{k}"] = float(getattr(s.ks, k))
    for k, n in s.probes.items():
        st[f"probes/{k}"] = int(n)
    st["secant_since_probe"] = int(s.since_probe)
    if s.pairs:
        st["lbfgs/s"] = np.stack([a for a, _ in s.pairs])
        st["lbfgs/y"] = np.stack([b for _, b in s.pairs])
    if s.last is not None:
        st["lbfgs/last_u"], st["lbfgs/last_z"] = s.last
    st["lbfgs/last_f"] = float(s.last_f)
    st["lbfgs/unexplored_len"] = float(s.unexplored_len)
    if s.error_dirs:
        st["secant/error_dirs"] = np.stack(s.error_dirs)
    return st


def restore_state(saved: dict, oracles, u0, memory: int, step0: float, floors: tuple[float, float],
                  exact: bool) -> MaidState:
    """The state a checkpoint holds; ``floors`` are θ₀'s, for a checkpoint without its own."""
    u, x, q = unpack_iterates(saved, oracles, u0)
    consts = None
    if bool(saved["has_constants"]):
        consts = RunningConstants(*(float(saved[f"const/{k}"]) for k in RunningConstants._fields))
    eps_min, delta_min = floors
    if not exact and "eps_min" in saved:
        # the floors as last refreshed (they follow μ and ‖x‖ as θ moves); θ₀'s would let a
        # float32 run tighten past what its arithmetic resolves (123585 lower iterations
        # into the cap, where the uninterrupted run stopped at its floor)
        eps_min, delta_min = float(saved["eps_min"]), float(saved["delta_min"])
    S = np.asarray(saved.get("lbfgs/s", np.zeros((0, 0))))
    Y = np.asarray(saved.get("lbfgs/y", np.zeros((0, 0))))
    last = None
    if "lbfgs/last_u" in saved:
        last = (np.asarray(saved["lbfgs/last_u"], np.float64), np.asarray(saved["lbfgs/last_z"], np.float64))
    return MaidState(
        u=u, x=x, q=q, eps=float(saved["eps"]), delta=float(saved["delta"]), step=float(saved["step"]),
        f_cur=float(saved["upper"]), consts=consts,
        ks=SecantConstants(*(float(saved.get(f"secant/{k}", math.nan)) for k in SecantConstants._fields)),
        eps_min=eps_min, delta_min=delta_min,
        since_iters=int(saved["const_since_iters"]), since_dist=float(saved["const_since_dist"]),
        since_probe=int(saved.get("secant_since_probe", 0)),
        probes={k: int(saved.get(f"probes/{k}", 0)) for k in ("eps", "delta")},
        pairs=[(np.array(a, np.float64), np.array(b, np.float64)) for a, b in zip(S, Y)][-memory:],
        last=last, last_f=float(saved.get("lbfgs/last_f", math.nan)),
        unexplored_len=float(saved.get("lbfgs/unexplored_len", step0)),
        error_dirs=[np.array(v, np.float64) for v in np.asarray(saved.get("secant/error_dirs", np.zeros((0, 0))))])
