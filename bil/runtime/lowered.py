"""The problem the runtime solves: JAX functions of (x, θ, d) and the arrays they take.

:func:`bil.compiler.lower.lower` builds a :class:`Lowered` from a checked spec; the
runtime (the engine, the solvers, the outer loops) works on it alone and knows nothing of
the spec, its IR or the compiler's state.  For one sample (the whole problem when nothing
is ``per sample``): ``g(x, theta, d)`` the lower objective (or training loss),
``f(x, theta, d)`` the upper objective, ``x_init(theta, d)`` the lower variables'
initial values and ``opt_kwargs(theta, d)`` a training optimizer's arguments, where ``x``
and ``theta`` are dicts name -> array (theta in *user* coordinates) and
``d = {"names": data, "consts": hoisted constants}`` is an argument (never baked into a
jaxpr) with the sample axis removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from bil.core.source import Span


# ------------------------------------------------------------ coordinates
@dataclass(frozen=True)
class Transform:
    """User <-> unconstrained coordinates for every hyper.

    ``positive`` hypers are optimised in log-coordinates (``exp``), bounded ones through
    a sigmoid onto ``[lo, hi]`` (``sigmoid``), ``real`` ones as they are (``identity``).
    """

    #: hyper name -> (bijection from unconstrained to user coordinates, bounds (lo, hi) or None)
    maps: dict[str, tuple[str, Optional[tuple[float, float]]]]

    def to_user(self, u: dict) -> dict:
        out = {}
        for n, (how, bounds) in self.maps.items():
            v = u[n]
            if how == "exp":
                out[n] = jnp.exp(v)
            elif how == "sigmoid":
                lo, hi = bounds
                out[n] = lo + (hi - lo) * jax.nn.sigmoid(v)
            else:
                out[n] = v
        return out

    def from_user(self, theta: dict) -> dict:
        out = {}
        for n, (how, bounds) in self.maps.items():
            v = jnp.asarray(theta[n])
            if how == "exp":
                out[n] = jnp.log(v)
            elif how == "sigmoid":
                lo, hi = bounds
                p = (v - lo) / (hi - lo)
                out[n] = jnp.log(p) - jnp.log1p(-p)
            else:
                out[n] = v
        return out


# ----------------------------------------------------------------- lowered
@dataclass
class Lowered:
    """The JAX functions and arrays of one program (see the module docstring)."""

    #: the checked options, block ("lower", "solve") -> key -> value, defaults filled in
    options: dict
    transform: Transform
    dtype: Any
    data: dict            # {"names": {...}, "consts": {...}} with sample axes
    data_axes: dict       # same structure: 0 (per sample) or None
    n_samples: Optional[int]
    var_shapes: dict[str, tuple]
    bounds: Optional[tuple[dict, dict]]
    g: Callable
    f: Callable
    x_init: Callable
    opt_kwargs: Optional[Callable] = None
    train_steps: Optional[int] = None
    optimizer: Optional[str] = None
    lower_span: Optional[Span] = None
    upper_span: Optional[Span] = None
    theta0: dict = field(default_factory=dict)
    #: the smooth part s of g = s + h when the lower objective has separable non-smooth
    #: terms h (then ``nonsmooth`` is their :class:`bil.runtime.prox.Nonsmooth`); else None
    g_smooth: Optional[Callable] = None
    nonsmooth: Any = None
    #: how the data lies over several devices (:class:`bil.runtime.sharding.Layout`); None on one device
    layout: Any = None
    #: the minibatch objectives of a program with ``sampled`` data
    #: (:class:`bil.runtime.stochastic.rows.Rows`), else None; full-batch methods ignore it
    rows: Any = None

    @property
    def batched(self) -> bool:
        return self.n_samples is not None
